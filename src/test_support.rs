//! Helpers for the crate's own unit tests.

/// Hex digits to bytes; whitespace is ignored, so bytes may be grouped freely
/// (`"00 09 00 01"`, `"0009 0001"`).
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in {s:?}"
    );
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// The session id the hand-written clients of the conversation tests choose.
pub(crate) const CLIENT_ID: u32 = 0x1122_3344;

/// The v3 SessionRequest of a default client with session id [`CLIENT_ID`]
/// (§7.1): version 3, the empty protocol name of the default parameters.
pub(crate) const REQUEST_V3: &str = concat!(
    "00 01",       // SessionRequest
    "00 00 00 03", // protocol version 3
    "11 22 33 44", // session id
    "00 00 02 00", // udp_length 512
    "00",          // protocol name "" and its terminator
);
