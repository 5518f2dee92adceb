//! The two variable-length integer encodings of the protocol (`docs/protocol.md`
//! §10.3, §11.1).
//!
//! Both use a 1-byte form, a 3-byte form `FF hi lo` and a 7-byte form
//! `FF FF FF b3 b2 b1 b0`; they differ in how `FF` followed by `00` is read:
//!
//! * [`multi_len`] (multi-packet sub-packet lengths, v3 readers): `FF 00` is a
//!   1-byte 255, relying on the sub-packet that follows starting with `00`.
//! * [`bundle_len`] (data-bundle item lengths): `FF 00 FF` is a 3-byte 255.
//!
//! The writers here only produce encodings that *every* known reader of that kind
//! decodes to the same value.

/// A varint ran past the end of its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

fn read_u16_form(buf: &[u8]) -> Result<(u32, usize), Truncated> {
    match buf {
        [_, 0xFF, 0xFF, b3, b2, b1, b0, ..] => Ok((u32::from_be_bytes([*b3, *b2, *b1, *b0]), 7)),
        [_, 0xFF, 0xFF, ..] => Err(Truncated),
        [_, hi, lo, ..] => Ok((u32::from(u16::from_be_bytes([*hi, *lo])), 3)),
        _ => Err(Truncated),
    }
}

fn write_long_forms(value: u32, out: &mut [u8]) -> usize {
    if value < 0xFFFF {
        out[0] = 0xFF;
        out[1..3].copy_from_slice(&(value as u16).to_be_bytes());
        3
    } else {
        out[..3].copy_from_slice(&[0xFF; 3]);
        out[3..7].copy_from_slice(&value.to_be_bytes());
        7
    }
}

/// Multi-packet sub-packet lengths (the v3 "MultiPacket varint").
pub mod multi_len {
    use super::{Truncated, read_u16_form, write_long_forms};

    /// The longest encoding.
    pub const MAX_LEN: usize = 7;

    /// Reads a length; returns `(value, bytes consumed)`.
    pub fn read(buf: &[u8]) -> Result<(u32, usize), Truncated> {
        match buf {
            [b0, ..] if *b0 < 0xFF => Ok((u32::from(*b0), 1)),
            [0xFF, 0x00, ..] => Ok((0xFF, 1)),
            _ => read_u16_form(buf),
        }
    }

    /// Bytes [`write()`] uses for `value` when the sub-packet starts with `first`.
    pub fn encoded_len(value: u32, first: u8) -> usize {
        match value {
            0..0xFF => 1,
            0xFF if first == 0 => 1,
            0xFF => 7,
            0x100..0xFFFF => 3,
            _ => 7,
        }
    }

    /// Writes `value`, the length of a sub-packet whose first byte is `first`, and
    /// returns the bytes written. `out` must hold [`MAX_LEN`] bytes.
    ///
    /// A 255-byte sub-packet that does not start with `00` takes the 7-byte form:
    /// v3 readers take `FF 00` as a 1-byte 255 and `FF x` (x ≠ 0) as a 3-byte form,
    /// so neither shorter encoding would read back correctly.
    pub fn write(value: u32, first: u8, out: &mut [u8]) -> usize {
        match encoded_len(value, first) {
            1 => {
                out[0] = value as u8;
                1
            }
            7 if value < 0xFFFF => {
                out[..3].copy_from_slice(&[0xFF; 3]);
                out[3..7].copy_from_slice(&value.to_be_bytes());
                7
            }
            _ => write_long_forms(value, out),
        }
    }
}

/// Data-bundle (`00 19`) item lengths.
pub mod bundle_len {
    use super::{Truncated, read_u16_form, write_long_forms};

    /// The longest encoding.
    pub const MAX_LEN: usize = 7;

    /// Reads a length; returns `(value, bytes consumed)`.
    pub fn read(buf: &[u8]) -> Result<(u32, usize), Truncated> {
        match buf {
            [b0, ..] if *b0 != 0xFF => Ok((u32::from(*b0), 1)),
            _ => read_u16_form(buf),
        }
    }

    /// Bytes [`write()`] uses for `value`.
    pub fn encoded_len(value: u32) -> usize {
        match value {
            0..0xFF => 1,
            0xFF..0xFFFF => 3,
            _ => 7,
        }
    }

    /// Writes `value` and returns the bytes written; `out` must hold [`MAX_LEN`] bytes.
    pub fn write(value: u32, out: &mut [u8]) -> usize {
        if value < 0xFF {
            out[0] = value as u8;
            1
        } else {
            write_long_forms(value, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Vectors: tests/vectors/v19_multi_varint.txt.
    #[test]
    fn v19_multi_reader() {
        assert_eq!(multi_len::read(&[0xfe, 0x00]), Ok((254, 1)));
        assert_eq!(multi_len::read(&[0xff, 0x00]), Ok((255, 1)));
        assert_eq!(multi_len::read(&[0xff, 0x01, 0x00, 0x00]), Ok((256, 3)));
        assert_eq!(multi_len::read(&[0xff, 0xfe, 0xff, 0x00]), Ok((0xFEFF, 3)));
        assert_eq!(
            multi_len::read(&[0xff, 0xff, 0xff, 0x00, 0x00, 0xff, 0xff, 0x00]),
            Ok((0xFFFF, 7))
        );
        assert_eq!(multi_len::read(&[]), Err(Truncated));
        assert_eq!(multi_len::read(&[0xff]), Err(Truncated));
        assert_eq!(multi_len::read(&[0xff, 0x01]), Err(Truncated));
        assert_eq!(multi_len::read(&[0xff, 0xff, 0xff, 0, 0]), Err(Truncated));
    }

    // Vectors: tests/vectors/v19_multi_varint.txt.
    #[test]
    fn v19_multi_encoded_sizes() {
        assert_eq!(multi_len::encoded_len(0, 0), 1);
        assert_eq!(multi_len::encoded_len(0xFF, 0), 1);
        assert_eq!(multi_len::encoded_len(0x100, 0), 3);
        assert_eq!(multi_len::encoded_len(0xFFFE, 0), 3);
        assert_eq!(multi_len::encoded_len(0xFFFF, 0), 7);
    }

    // Vectors: tests/vectors/v20_bundle_varint.txt.
    #[test]
    fn v20_bundle_lengths() {
        let enc = |v: u32| {
            let mut out = [0u8; 7];
            let n = bundle_len::write(v, &mut out);
            out[..n].to_vec()
        };
        assert_eq!(enc(0xFE), [0xfe]);
        assert_eq!(enc(0xFF), [0xff, 0x00, 0xff]);
        assert_eq!(enc(0xFFFF), [0xff, 0xff, 0xff, 0x00, 0x00, 0xff, 0xff]);
        assert_eq!(bundle_len::read(&[0xfe]), Ok((254, 1)));
        assert_eq!(bundle_len::read(&[0xff, 0x00, 0xff]), Ok((255, 3)));
        assert_eq!(
            bundle_len::read(&[0xff, 0xff, 0xff, 0x00, 0x00, 0xff, 0xff]),
            Ok((0xFFFF, 7))
        );
        // UdpLibrary writes 254 in the 3-byte form; it reads back the same.
        assert_eq!(bundle_len::read(&[0xff, 0x00, 0xfe]), Ok((254, 3)));
        for (v, n) in [(0, 1), (0xFE, 1), (0xFF, 3), (0xFFFE, 3), (0xFFFF, 7)] {
            assert_eq!(bundle_len::encoded_len(v), n);
        }
        assert_eq!(bundle_len::read(&[0xff, 0x00]), Err(Truncated));
    }

    proptest! {
        #[test]
        fn multi_len_round_trips(value: u32, first: u8, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut buf = [0u8; 7];
            let n = multi_len::write(value, first, &mut buf);
            prop_assert_eq!(n, multi_len::encoded_len(value, first));
            // The reader sees the encoding followed by the sub-packet's first byte.
            let mut wire = buf[..n].to_vec();
            wire.push(first);
            wire.extend(tail);
            prop_assert_eq!(multi_len::read(&wire), Ok((value, n)));
        }

        #[test]
        fn bundle_len_round_trips(value: u32, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut buf = [0u8; 7];
            let n = bundle_len::write(value, &mut buf);
            prop_assert_eq!(n, bundle_len::encoded_len(value));
            let mut wire = buf[..n].to_vec();
            wire.extend(tail);
            prop_assert_eq!(bundle_len::read(&wire), Ok((value, n)));
        }

        /// Whatever a reader accepts is one of the three forms, decoded as that
        /// form says; it fails only on a buffer too short for the longest one.
        #[test]
        fn readers_accept_only_their_forms(data in proptest::collection::vec(any::<u8>(), 0..10)) {
            check_readers(&data);
        }

        #[test]
        fn values_at_the_form_edges_round_trip(edge in 0usize..EDGES.len(), delta in 0u32..3, first: u8) {
            let value = EDGES[edge].wrapping_add(delta).wrapping_sub(1);
            let mut buf = [0u8; 8];
            let n = multi_len::write(value, first, &mut buf);
            buf[n] = first;
            prop_assert_eq!(multi_len::read(&buf[..=n]), Ok((value, n)));
            let n = bundle_len::write(value, &mut buf);
            prop_assert_eq!(bundle_len::read(&buf[..n]), Ok((value, n)));
        }
    }

    /// Values at the edges of the 1-, 3- and 7-byte forms.
    const EDGES: [u32; 8] = [0, 0xFE, 0xFF, 0x100, 0xFFFE, 0xFFFF, 0x1_0000, u32::MAX];

    fn check_readers(buf: &[u8]) {
        let long = |buf: &[u8], n: usize| match n {
            3 => {
                assert!(buf[0] == 0xFF && !(buf[1] == 0xFF && buf[2] == 0xFF));
                u32::from(u16::from_be_bytes([buf[1], buf[2]]))
            }
            7 => {
                assert_eq!(buf[..3], [0xFF; 3]);
                u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]])
            }
            _ => panic!("a reader consumed {n} bytes of {buf:02x?}"),
        };
        match multi_len::read(buf) {
            Ok((value, 1)) => {
                assert!(buf[0] < 0xFF || buf[1] == 0);
                assert_eq!(value, u32::from(buf[0]));
            }
            Ok((value, n)) => {
                assert!(buf[1] != 0, "FF 00 is a one-byte 255");
                assert_eq!(value, long(buf, n));
            }
            Err(_) => assert!(
                buf.len() < multi_len::MAX_LEN,
                "multi_len failed on {buf:02x?}"
            ),
        }
        match bundle_len::read(buf) {
            Ok((value, 1)) => assert!(buf[0] != 0xFF && value == u32::from(buf[0])),
            Ok((value, n)) => assert_eq!(value, long(buf, n)),
            Err(_) => assert!(
                buf.len() < bundle_len::MAX_LEN,
                "bundle_len failed on {buf:02x?}"
            ),
        }
    }
}
