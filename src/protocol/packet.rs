//! Typed views of cooked packets, and their emitters.
//!
//! A *cooked* packet is what remains of a datagram once [`super::frame`] has checked
//! and removed the CRC and undone compression: the op code followed by the body, or
//! raw application bytes. Contextless packets (SessionRequest, SessionResponse,
//! UnknownSender, RemapConnection) are always cooked as they travel.
//!
//! [`Packet::parse`] borrows from its input and never panics; [`Packet::emit`] writes
//! exactly [`Packet::encoded_len`] bytes. `parse(emit(p)) == p` for every packet this
//! module can represent (checked by property tests).

use super::varint::{Truncated, bundle_len, multi_len};
use super::{DisconnectReason, OpCode};

/// Why a cooked packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer was empty.
    #[error("empty packet")]
    Empty,
    /// `00 xx` with a packet type nobody defines.
    #[error("unknown op code 0x{0:02x}")]
    UnknownOpCode(u8),
    /// The packet is shorter than its type requires.
    #[error("packet too short for its type")]
    TooShort,
    /// A length prefix inside a multi-packet or bundle points past the end, or is
    /// smaller than a sub-packet can be.
    #[error("bad length prefix")]
    BadLength,
}

impl From<Truncated> for DecodeError {
    fn from(_: Truncated) -> Self {
        Self::BadLength
    }
}

/// The sequence (or stamp) that starts the body of reliable data, acks and
/// ordered packets.
#[inline]
pub(crate) fn sequence_of(body: &[u8]) -> Result<u16, DecodeError> {
    match body {
        [hi, lo, ..] => Ok(u16::from_be_bytes([*hi, *lo])),
        _ => Err(DecodeError::TooShort),
    }
}

/// The body of reliable data or a fragment: its sequence and its payload, which is
/// never empty.
#[inline]
pub(crate) fn reliable_body(body: &[u8]) -> Result<(u16, &[u8]), DecodeError> {
    match body {
        [hi, lo, payload @ ..] if !payload.is_empty() => {
            Ok((u16::from_be_bytes([*hi, *lo]), payload))
        }
        _ => Err(DecodeError::TooShort),
    }
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(raw)
}

fn put_u16(out: &mut [u8], at: usize, value: u16) {
    out[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn put_u32(out: &mut [u8], at: usize, value: u32) {
    out[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

fn put_u64(out: &mut [u8], at: usize, value: u64) {
    out[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

/// Where the body starts: after the two op-code bytes. Parsers that get the body
/// alone subtract it from the offsets below.
const BODY: usize = 2;

/// Where each field of the fixed layouts starts, counted from the first op-code
/// byte (`docs/protocol.md` §7, §14, §15, §16). Parsers and emitters both read
/// them, so a layout is written down once.
mod at {
    /// SessionRequest (§7.1).
    pub(super) mod request {
        pub(crate) const VERSION: usize = 2;
        pub(crate) const SESSION_ID: usize = 6;
        pub(crate) const UDP_LENGTH: usize = 10;
    }
    /// SessionResponse (§7.2).
    pub(super) mod response {
        pub(crate) const SESSION_ID: usize = 2;
        pub(crate) const CRC_SEED: usize = 6;
        pub(crate) const CRC_LENGTH: usize = 10;
        pub(crate) const PASS_0: usize = 11;
        pub(crate) const PASS_1: usize = 12;
        pub(crate) const UDP_LENGTH: usize = 13;
        pub(crate) const VERSION: usize = 17;
    }
    /// Disconnect (§14.1).
    pub(super) mod disconnect {
        pub(crate) const SESSION_ID: usize = 2;
        pub(crate) const REASON: usize = 6;
    }
    /// RemapConnection (§15.2).
    pub(super) mod remap {
        pub(crate) const SESSION_ID: usize = 2;
        pub(crate) const CRC_SEED: usize = 6;
    }
    /// NetStatusRequest, "ClockSync" (§16.1).
    pub(super) mod clock_sync {
        pub(crate) const TIMESTAMP: usize = 2;
        pub(crate) const MASTER_PING: usize = 4;
        pub(crate) const AVERAGE_PING: usize = 8;
        pub(crate) const LOW_PING: usize = 12;
        pub(crate) const HIGH_PING: usize = 16;
        pub(crate) const LAST_PING: usize = 20;
        pub(crate) const OUR_SENT: usize = 24;
        pub(crate) const OUR_RECEIVED: usize = 32;
    }
    /// NetStatusResponse, "ClockReflect" (§16.1).
    pub(super) mod clock_reflect {
        pub(crate) const TIMESTAMP: usize = 2;
        pub(crate) const SERVER_STAMP: usize = 4;
        pub(crate) const YOUR_SENT: usize = 8;
        pub(crate) const YOUR_RECEIVED: usize = 16;
        pub(crate) const OUR_SENT: usize = 24;
        pub(crate) const OUR_RECEIVED: usize = 32;
    }
}

/// SessionRequest (`00 01`): a client asks for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRequest<'a> {
    /// Protocol version (3 for v3 peers, 2 for the original UdpLibrary).
    pub protocol_version: u32,
    /// The session id the client chose.
    pub session_id: u32,
    /// The largest datagram the client can receive.
    pub udp_length: u32,
    /// The application protocol name (v3), without its NUL; `None` in the 14-byte
    /// v2 form.
    pub application_protocol: Option<&'a [u8]>,
}

impl<'a> SessionRequest<'a> {
    /// Length of the fixed part (op code included).
    pub const FIXED_LEN: usize = 14;

    fn parse(b: &'a [u8]) -> Result<Self, DecodeError> {
        if b.len() < Self::FIXED_LEN {
            return Err(DecodeError::TooShort);
        }
        let application_protocol = (b.len() > Self::FIXED_LEN).then(|| {
            let name = &b[Self::FIXED_LEN..];
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            &name[..end]
        });
        Ok(Self {
            protocol_version: be_u32(b, at::request::VERSION),
            session_id: be_u32(b, at::request::SESSION_ID),
            udp_length: be_u32(b, at::request::UDP_LENGTH),
            application_protocol,
        })
    }

    /// Bytes on the wire.
    pub fn encoded_len(&self) -> usize {
        Self::FIXED_LEN + self.application_protocol.map_or(0, |n| n.len() + 1)
    }

    fn emit(&self, out: &mut [u8]) -> usize {
        out[..2].copy_from_slice(&OpCode::SessionRequest.to_bytes());
        put_u32(out, at::request::VERSION, self.protocol_version);
        put_u32(out, at::request::SESSION_ID, self.session_id);
        put_u32(out, at::request::UDP_LENGTH, self.udp_length);
        let mut n = Self::FIXED_LEN;
        if let Some(name) = self.application_protocol {
            out[n..n + name.len()].copy_from_slice(name);
            n += name.len();
            out[n] = 0;
            n += 1;
        }
        n
    }
}

/// SessionResponse (`00 02`): the server accepts and states the session parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionResponse {
    /// Echo of the client's session id.
    pub session_id: u32,
    /// The seed of the CRC for the rest of the session.
    pub crc_seed: u32,
    /// Number of CRC bytes per contextual datagram (0..=4).
    pub crc_length: u8,
    /// Byte 11: encryption pass 0 as a method code in the 17-byte UdpLibrary and EQ
    /// forms; in the v3 form a non-zero value means "compression negotiated" (see
    /// [`PassCodes`](super::PassCodes)).
    pub compression: u8,
    /// Byte 12: encryption pass 1 as a method code (always 0 from v3 peers).
    pub encryption_pass_1: u8,
    /// The largest datagram the server will accept.
    pub udp_length: u32,
    /// Protocol version (v3 form, 21 bytes); `None` in the 17-byte v2 form.
    pub protocol_version: Option<u32>,
}

impl SessionResponse {
    /// Length of the v2 form.
    pub const V2_LEN: usize = 17;
    /// Length of the v3 form.
    pub const V3_LEN: usize = 21;

    fn parse(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < Self::V2_LEN {
            return Err(DecodeError::TooShort);
        }
        Ok(Self {
            session_id: be_u32(b, at::response::SESSION_ID),
            crc_seed: be_u32(b, at::response::CRC_SEED),
            crc_length: b[at::response::CRC_LENGTH],
            compression: b[at::response::PASS_0],
            encryption_pass_1: b[at::response::PASS_1],
            udp_length: be_u32(b, at::response::UDP_LENGTH),
            protocol_version: (b.len() >= Self::V3_LEN).then(|| be_u32(b, at::response::VERSION)),
        })
    }

    /// Bytes on the wire.
    pub fn encoded_len(&self) -> usize {
        if self.protocol_version.is_some() {
            Self::V3_LEN
        } else {
            Self::V2_LEN
        }
    }

    fn emit(&self, out: &mut [u8]) -> usize {
        out[..2].copy_from_slice(&OpCode::SessionResponse.to_bytes());
        put_u32(out, at::response::SESSION_ID, self.session_id);
        put_u32(out, at::response::CRC_SEED, self.crc_seed);
        out[at::response::CRC_LENGTH] = self.crc_length;
        out[at::response::PASS_0] = self.compression;
        out[at::response::PASS_1] = self.encryption_pass_1;
        put_u32(out, at::response::UDP_LENGTH, self.udp_length);
        if let Some(version) = self.protocol_version {
            put_u32(out, at::response::VERSION, version);
        }
        self.encoded_len()
    }
}

/// Disconnect (`00 05`) body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    /// The session being ended.
    pub session_id: u32,
    /// Why (UdpLibrary peers may omit it; it then reads as `None`).
    pub reason: DisconnectReason,
}

impl Disconnect {
    /// Bytes on the wire, op code included.
    pub const LEN: usize = 8;

    fn parse_body(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < at::disconnect::REASON - BODY {
            return Err(DecodeError::TooShort);
        }
        let reason = if b.len() >= Self::LEN - BODY {
            DisconnectReason::from_u16(be_u16(b, at::disconnect::REASON - BODY))
        } else {
            DisconnectReason::None
        };
        Ok(Self {
            session_id: be_u32(b, at::disconnect::SESSION_ID - BODY),
            reason,
        })
    }

    fn emit(&self, out: &mut [u8]) -> usize {
        out[..2].copy_from_slice(&OpCode::Disconnect.to_bytes());
        put_u32(out, at::disconnect::SESSION_ID, self.session_id);
        put_u16(out, at::disconnect::REASON, self.reason.as_u16());
        Self::LEN
    }
}

/// RemapConnection (`00 1E`): move a session to the sender's new address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemapConnection {
    /// The session id of the session to move.
    pub session_id: u32,
    /// Its CRC seed (the proof of ownership, with the id).
    pub crc_seed: u32,
}

impl RemapConnection {
    /// Bytes on the wire, op code included.
    pub const LEN: usize = 10;

    fn parse(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < Self::LEN {
            return Err(DecodeError::TooShort);
        }
        Ok(Self {
            session_id: be_u32(b, at::remap::SESSION_ID),
            crc_seed: be_u32(b, at::remap::CRC_SEED),
        })
    }

    fn emit(&self, out: &mut [u8]) -> usize {
        out[..2].copy_from_slice(&OpCode::RemapConnection.to_bytes());
        put_u32(out, at::remap::SESSION_ID, self.session_id);
        put_u32(out, at::remap::CRC_SEED, self.crc_seed);
        Self::LEN
    }
}

/// NetStatusRequest / ClockSync (`00 07`), 40 cooked bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetStatusRequest {
    /// Low 16 bits of the sender's millisecond clock.
    pub timestamp: u16,
    /// Master round-trip estimate (ms).
    pub master_ping: u32,
    /// Average round trip (ms).
    pub average_ping: u32,
    /// Lowest round trip (ms).
    pub low_ping: u32,
    /// Highest round trip (ms).
    pub high_ping: u32,
    /// Last round trip (ms).
    pub last_ping: u32,
    /// Datagrams the sender has sent (including this one).
    pub our_sent: u64,
    /// Datagrams the sender has received.
    pub our_received: u64,
}

impl NetStatusRequest {
    /// Bytes on the wire, op code included.
    pub const LEN: usize = 40;

    fn parse_body(b: &[u8]) -> Result<Self, DecodeError> {
        use at::clock_sync as f;
        if b.len() < Self::LEN - BODY {
            return Err(DecodeError::TooShort);
        }
        Ok(Self {
            timestamp: be_u16(b, f::TIMESTAMP - BODY),
            master_ping: be_u32(b, f::MASTER_PING - BODY),
            average_ping: be_u32(b, f::AVERAGE_PING - BODY),
            low_ping: be_u32(b, f::LOW_PING - BODY),
            high_ping: be_u32(b, f::HIGH_PING - BODY),
            last_ping: be_u32(b, f::LAST_PING - BODY),
            our_sent: be_u64(b, f::OUR_SENT - BODY),
            our_received: be_u64(b, f::OUR_RECEIVED - BODY),
        })
    }

    fn emit(&self, out: &mut [u8]) -> usize {
        use at::clock_sync as f;
        out[..2].copy_from_slice(&OpCode::NetStatusRequest.to_bytes());
        put_u16(out, f::TIMESTAMP, self.timestamp);
        put_u32(out, f::MASTER_PING, self.master_ping);
        put_u32(out, f::AVERAGE_PING, self.average_ping);
        put_u32(out, f::LOW_PING, self.low_ping);
        put_u32(out, f::HIGH_PING, self.high_ping);
        put_u32(out, f::LAST_PING, self.last_ping);
        put_u64(out, f::OUR_SENT, self.our_sent);
        put_u64(out, f::OUR_RECEIVED, self.our_received);
        Self::LEN
    }
}

/// NetStatusResponse / ClockReflect (`00 08`), 40 cooked bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetStatusResponse {
    /// Echo of the request's timestamp.
    pub timestamp: u16,
    /// The responder's 32-bit millisecond clock.
    pub server_stamp: u32,
    /// Echo of the requester's sent count.
    pub your_sent: u64,
    /// Echo of the requester's received count.
    pub your_received: u64,
    /// Datagrams the responder has sent.
    pub our_sent: u64,
    /// Datagrams the responder has received.
    pub our_received: u64,
}

impl NetStatusResponse {
    /// Bytes on the wire, op code included.
    pub const LEN: usize = 40;

    fn parse_body(b: &[u8]) -> Result<Self, DecodeError> {
        use at::clock_reflect as f;
        if b.len() < Self::LEN - BODY {
            return Err(DecodeError::TooShort);
        }
        Ok(Self {
            timestamp: be_u16(b, f::TIMESTAMP - BODY),
            server_stamp: be_u32(b, f::SERVER_STAMP - BODY),
            your_sent: be_u64(b, f::YOUR_SENT - BODY),
            your_received: be_u64(b, f::YOUR_RECEIVED - BODY),
            our_sent: be_u64(b, f::OUR_SENT - BODY),
            our_received: be_u64(b, f::OUR_RECEIVED - BODY),
        })
    }

    fn emit(&self, out: &mut [u8]) -> usize {
        use at::clock_reflect as f;
        out[..2].copy_from_slice(&OpCode::NetStatusResponse.to_bytes());
        put_u16(out, f::TIMESTAMP, self.timestamp);
        put_u32(out, f::SERVER_STAMP, self.server_stamp);
        put_u64(out, f::YOUR_SENT, self.your_sent);
        put_u64(out, f::YOUR_RECEIVED, self.your_received);
        put_u64(out, f::OUR_SENT, self.our_sent);
        put_u64(out, f::OUR_RECEIVED, self.our_received);
        Self::LEN
    }
}

/// The sub-packets of a multi-packet body (after `00 03`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultiPacket<'a> {
    body: &'a [u8],
}

impl<'a> MultiPacket<'a> {
    /// The longest length prefix of a sub-packet.
    pub const MAX_PREFIX_LEN: usize = multi_len::MAX_LEN;

    /// Wraps a multi-packet body (the bytes after the op code).
    pub fn new(body: &'a [u8]) -> Self {
        Self { body }
    }

    /// Writes the length prefix of a `len`-byte sub-packet whose first byte is
    /// `first` into `out` (at least [`Self::MAX_PREFIX_LEN`] bytes) and returns its
    /// size: one byte below 255, else the long forms that every v3 reader decodes
    /// alike (`docs/protocol.md` §10.3). Readers that take one byte only (UL, EQ,
    /// h1emu) need sub-packets under 256 bytes.
    pub fn write_prefix(len: u32, first: u8, out: &mut [u8]) -> usize {
        multi_len::write(len, first, out)
    }

    /// Reads the length prefix at the start of `buf` as [`Self::iter`] does:
    /// `(length, prefix size)`, or `BadLength` when `buf` ends inside it.
    pub fn read_prefix(buf: &[u8]) -> Result<(u32, usize), DecodeError> {
        Ok(multi_len::read(buf)?)
    }

    /// The raw body.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Iterates the sub-packets. Yields `Err(BadLength)` once and stops if a length
    /// prefix is truncated, shorter than 1 byte, or runs past the end.
    ///
    /// Lengths are read as the v3 varint (`docs/protocol.md` §10.3), which is
    /// what a session does: it also reads every one-byte length below 255 and the
    /// 255-byte sub-packets that start with `00`.
    pub fn iter(&self) -> MultiIter<'a> {
        MultiIter {
            rest: self.body,
            one_byte: false,
        }
    }

    /// Iterates the sub-packets reading every length prefix as one plain byte, as
    /// UdpLibrary, EQEmu and h1emu write them. The two forms differ only when a
    /// prefix is `FF`: here it is always a 255-byte sub-packet, while [`Self::iter`]
    /// reads `FF` followed by anything but `00` as the start of a longer length.
    /// Capture decoders use it for peers that write one-byte lengths; errors as in
    /// [`Self::iter`].
    pub fn iter_one_byte(&self) -> MultiIter<'a> {
        MultiIter {
            rest: self.body,
            one_byte: true,
        }
    }
}

/// Iterator over multi-packet sub-packets; see [`MultiPacket::iter`] and
/// [`MultiPacket::iter_one_byte`].
#[derive(Debug, Clone)]
pub struct MultiIter<'a> {
    rest: &'a [u8],
    one_byte: bool,
}

impl<'a> Iterator for MultiIter<'a> {
    type Item = Result<&'a [u8], DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let prefix = if self.one_byte {
            Ok((u32::from(self.rest[0]), 1))
        } else {
            multi_len::read(self.rest)
        };
        let item = prefix.map_err(DecodeError::from).and_then(|(len, used)| {
            let len = len as usize;
            let after = &self.rest[used..];
            if len == 0 || len > after.len() {
                return Err(DecodeError::BadLength);
            }
            let (sub, rest) = after.split_at(len);
            self.rest = rest;
            Ok(sub)
        });
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

/// The items of a data bundle (after `00 19`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBundle<'a> {
    body: &'a [u8],
}

impl<'a> DataBundle<'a> {
    /// The longest length prefix of an item.
    pub const MAX_PREFIX_LEN: usize = bundle_len::MAX_LEN;

    /// Wraps a bundle body (the bytes after `00 19`).
    pub fn new(body: &'a [u8]) -> Self {
        Self { body }
    }

    /// Writes the length prefix of a `len`-byte item into `out` (at least
    /// [`Self::MAX_PREFIX_LEN`] bytes) and returns its size (`docs/protocol.md`
    /// §11.1).
    pub fn write_prefix(len: u32, out: &mut [u8]) -> usize {
        bundle_len::write(len, out)
    }

    /// Reads the length prefix at the start of `buf` as [`Self::iter`] does:
    /// `(length, prefix size)`, or `BadLength` when `buf` ends inside it.
    pub fn read_prefix(buf: &[u8]) -> Result<(u32, usize), DecodeError> {
        Ok(bundle_len::read(buf)?)
    }

    /// The raw body.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Iterates the items; yields `Err(BadLength)` once and stops on a bad prefix.
    pub fn iter(&self) -> BundleIter<'a> {
        BundleIter { rest: self.body }
    }
}

/// Iterator over data-bundle items; see [`DataBundle::iter`].
#[derive(Debug, Clone)]
pub struct BundleIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for BundleIter<'a> {
    type Item = Result<&'a [u8], DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = bundle_len::read(self.rest)
            .map_err(DecodeError::from)
            .and_then(|(len, used)| {
                let len = len as usize;
                let after = &self.rest[used..];
                if len > after.len() {
                    return Err(DecodeError::BadLength);
                }
                let (item, rest) = after.split_at(len);
                self.rest = rest;
                Ok(item)
            });
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

/// A parsed cooked packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `00 01`.
    SessionRequest(SessionRequest<'a>),
    /// `00 02`.
    SessionResponse(SessionResponse),
    /// `00 03`.
    MultiPacket(MultiPacket<'a>),
    /// `00 05`.
    Disconnect(Disconnect),
    /// `00 06`.
    Heartbeat,
    /// `00 07`.
    NetStatusRequest(NetStatusRequest),
    /// `00 08`.
    NetStatusResponse(NetStatusResponse),
    /// `00 09+ch seq payload`.
    ReliableData {
        /// Channel 0..=3.
        channel: u8,
        /// Wire sequence.
        sequence: u16,
        /// At least one byte.
        payload: &'a [u8],
    },
    /// `00 0D+ch seq chunk`; the first fragment's chunk starts with the total length.
    ReliableDataFragment {
        /// Channel 0..=3.
        channel: u8,
        /// Wire sequence.
        sequence: u16,
        /// At least one byte.
        payload: &'a [u8],
    },
    /// `00 11+ch seq`.
    Acknowledge {
        /// Channel 0..=3.
        channel: u8,
        /// The one sequence acknowledged.
        sequence: u16,
    },
    /// `00 15+ch seq`.
    AcknowledgeAll {
        /// Channel 0..=3.
        channel: u8,
        /// Every sequence up to and including this one is acknowledged.
        sequence: u16,
    },
    /// `00 19 items…`.
    DataBundle(DataBundle<'a>),
    /// `00 1A|1B stamp payload`: unreliable but ordered.
    Ordered {
        /// `true` for `0x1B` (Ordered2), `false` for `0x1A`.
        second: bool,
        /// 16-bit order stamp.
        stamp: u16,
        /// Application bytes.
        payload: &'a [u8],
    },
    /// `00 1C …`: NAT keep-alive.
    PortAlive(&'a [u8]),
    /// `00 1D`.
    UnknownSender,
    /// `00 1E`.
    RemapConnection(RemapConnection),
    /// `00 00 …`: application bytes that began with `00`, with the escape byte removed
    /// (so the slice itself starts with `00`).
    ZeroEscaped(&'a [u8]),
    /// Application bytes (first byte not `00`, or a lone `00`).
    Application(&'a [u8]),
}

impl<'a> Packet<'a> {
    /// Parses a cooked packet.
    pub fn parse(b: &'a [u8]) -> Result<Self, DecodeError> {
        match b {
            [] => Err(DecodeError::Empty),
            [0] => Ok(Self::Application(b)),
            [first, ..] if *first != 0 => Ok(Self::Application(b)),
            [0, ty, ..] => {
                let op = OpCode::from_type_byte(*ty).ok_or(DecodeError::UnknownOpCode(*ty))?;
                Self::parse_internal(op, b)
            }
            _ => unreachable!("slice patterns above are exhaustive"),
        }
    }

    fn parse_internal(op: OpCode, b: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(match op {
            OpCode::ZeroEscape => Self::ZeroEscaped(&b[1..]),
            OpCode::SessionRequest => Self::SessionRequest(SessionRequest::parse(b)?),
            OpCode::SessionResponse => Self::SessionResponse(SessionResponse::parse(b)?),
            OpCode::UnknownSender => Self::UnknownSender,
            OpCode::RemapConnection => Self::RemapConnection(RemapConnection::parse(b)?),
            OpCode::PortAlive => Self::PortAlive(&b[2..]),
            _ => Self::parse_contextual(op, &b[2..])?,
        })
    }

    /// Parses a contextual packet given its op code and the body that follows it
    /// (after the compression flag, if any). Contextless op codes and
    /// [`OpCode::ZeroEscape`] need the whole packet: use [`Packet::parse`] for them.
    pub fn parse_contextual(op: OpCode, body: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(match op {
            OpCode::MultiPacket => Self::MultiPacket(MultiPacket::new(body)),
            OpCode::Disconnect => Self::Disconnect(Disconnect::parse_body(body)?),
            OpCode::Heartbeat => Self::Heartbeat,
            OpCode::NetStatusRequest => Self::NetStatusRequest(NetStatusRequest::parse_body(body)?),
            OpCode::NetStatusResponse => {
                Self::NetStatusResponse(NetStatusResponse::parse_body(body)?)
            }
            OpCode::ReliableData(channel) | OpCode::ReliableDataFragment(channel) => {
                let (sequence, payload) = reliable_body(body)?;
                if matches!(op, OpCode::ReliableData(_)) {
                    Self::ReliableData {
                        channel,
                        sequence,
                        payload,
                    }
                } else {
                    Self::ReliableDataFragment {
                        channel,
                        sequence,
                        payload,
                    }
                }
            }
            OpCode::Acknowledge(channel) => Self::Acknowledge {
                channel,
                sequence: sequence_of(body)?,
            },
            OpCode::AcknowledgeAll(channel) => Self::AcknowledgeAll {
                channel,
                sequence: sequence_of(body)?,
            },
            OpCode::DataBundle => Self::DataBundle(DataBundle::new(body)),
            OpCode::Ordered | OpCode::Ordered2 => Self::Ordered {
                second: op == OpCode::Ordered2,
                stamp: sequence_of(body)?,
                payload: &body[2..],
            },
            OpCode::ZeroEscape
            | OpCode::PortAlive
            | OpCode::SessionRequest
            | OpCode::SessionResponse
            | OpCode::UnknownSender
            | OpCode::RemapConnection => return Err(DecodeError::UnknownOpCode(op.type_byte())),
        })
    }

    /// The op code, or `None` for application data.
    pub fn op_code(&self) -> Option<OpCode> {
        Some(match self {
            Self::SessionRequest(_) => OpCode::SessionRequest,
            Self::SessionResponse(_) => OpCode::SessionResponse,
            Self::MultiPacket(_) => OpCode::MultiPacket,
            Self::Disconnect(_) => OpCode::Disconnect,
            Self::Heartbeat => OpCode::Heartbeat,
            Self::NetStatusRequest(_) => OpCode::NetStatusRequest,
            Self::NetStatusResponse(_) => OpCode::NetStatusResponse,
            Self::ReliableData { channel, .. } => OpCode::ReliableData(*channel),
            Self::ReliableDataFragment { channel, .. } => OpCode::ReliableDataFragment(*channel),
            Self::Acknowledge { channel, .. } => OpCode::Acknowledge(*channel),
            Self::AcknowledgeAll { channel, .. } => OpCode::AcknowledgeAll(*channel),
            Self::DataBundle(_) => OpCode::DataBundle,
            Self::Ordered { second: false, .. } => OpCode::Ordered,
            Self::Ordered { second: true, .. } => OpCode::Ordered2,
            Self::PortAlive(_) => OpCode::PortAlive,
            Self::UnknownSender => OpCode::UnknownSender,
            Self::RemapConnection(_) => OpCode::RemapConnection,
            Self::ZeroEscaped(_) => OpCode::ZeroEscape,
            Self::Application(_) => return None,
        })
    }

    /// Bytes [`Packet::emit`] writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::SessionRequest(p) => p.encoded_len(),
            Self::SessionResponse(p) => p.encoded_len(),
            Self::MultiPacket(m) => 2 + m.body.len(),
            Self::Disconnect(_) => Disconnect::LEN,
            Self::Heartbeat | Self::UnknownSender => 2,
            Self::NetStatusRequest(_) => NetStatusRequest::LEN,
            Self::NetStatusResponse(_) => NetStatusResponse::LEN,
            Self::ReliableData { payload, .. }
            | Self::ReliableDataFragment { payload, .. }
            | Self::Ordered { payload, .. } => 4 + payload.len(),
            Self::Acknowledge { .. } | Self::AcknowledgeAll { .. } => 4,
            Self::DataBundle(b) => 2 + b.body.len(),
            Self::PortAlive(body) => 2 + body.len(),
            Self::RemapConnection(_) => RemapConnection::LEN,
            Self::ZeroEscaped(data) => 1 + data.len(),
            Self::Application(data) => data.len(),
        }
    }

    /// Writes the cooked packet into `out` and returns [`Packet::encoded_len`].
    ///
    /// # Panics
    /// Panics if `out` is shorter than [`Packet::encoded_len`].
    pub fn emit(&self, out: &mut [u8]) -> usize {
        let len = self.encoded_len();
        assert!(out.len() >= len, "emit buffer too small");
        if let Some(op) = self.op_code() {
            out[..2].copy_from_slice(&op.to_bytes());
        }
        match self {
            Self::SessionRequest(p) => {
                p.emit(out);
            }
            Self::SessionResponse(p) => {
                p.emit(out);
            }
            Self::Disconnect(p) => {
                p.emit(out);
            }
            Self::NetStatusRequest(p) => {
                p.emit(out);
            }
            Self::NetStatusResponse(p) => {
                p.emit(out);
            }
            Self::RemapConnection(p) => {
                p.emit(out);
            }
            Self::MultiPacket(MultiPacket { body })
            | Self::DataBundle(DataBundle { body })
            | Self::PortAlive(body) => out[2..len].copy_from_slice(body),
            Self::Heartbeat | Self::UnknownSender => {}
            Self::ReliableData {
                sequence, payload, ..
            }
            | Self::ReliableDataFragment {
                sequence, payload, ..
            }
            | Self::Ordered {
                stamp: sequence,
                payload,
                ..
            } => {
                out[2..4].copy_from_slice(&sequence.to_be_bytes());
                out[4..len].copy_from_slice(payload);
            }
            Self::Acknowledge { sequence, .. } | Self::AcknowledgeAll { sequence, .. } => {
                out[2..4].copy_from_slice(&sequence.to_be_bytes());
            }
            Self::ZeroEscaped(data) => out[1..len].copy_from_slice(data),
            Self::Application(data) => out[..len].copy_from_slice(data),
        }
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `OpCode::reads_from_body` names exactly the op codes `parse_contextual`
    /// takes: the session reads sub-packets by it.
    #[test]
    fn op_codes_read_from_their_body_are_the_ones_parse_contextual_takes() {
        let body = [0u8; 64];
        for ty in 0..=u8::MAX {
            let Some(op) = OpCode::from_type_byte(ty) else {
                continue;
            };
            let taken = !matches!(
                Packet::parse_contextual(op, &body),
                Err(DecodeError::UnknownOpCode(_))
            );
            assert_eq!(op.reads_from_body(), taken, "{op:?}");
        }
    }

    use crate::test_support::hex;

    fn emitted(p: &Packet<'_>) -> Vec<u8> {
        let mut out = vec![0u8; p.encoded_len()];
        assert_eq!(p.emit(&mut out), out.len());
        out
    }

    // Vectors: tests/vectors/v05_session_request.txt.
    #[test]
    fn v5_session_request() {
        let bytes =
            hex("00 01 00 00 00 03 3c 17 8c 63 00 00 02 00 4c 6f 67 69 6e 55 64 70 5f 39 00");
        let p = Packet::parse(&bytes).unwrap();
        let Packet::SessionRequest(req) = p else {
            panic!("{p:?}")
        };
        assert_eq!(req.protocol_version, 3);
        assert_eq!(req.session_id, 1_008_176_227);
        assert_eq!(req.udp_length, 512);
        assert_eq!(req.application_protocol, Some(&b"LoginUdp_9"[..]));
        assert_eq!(emitted(&p), bytes);
        assert_eq!(
            Packet::parse(&hex("00 01 6f 67 69 6e 55 64 70 5f 39 02")),
            Err(DecodeError::TooShort)
        );
    }

    // Vectors: tests/vectors/v06_session_response.txt.
    #[test]
    fn v6_session_response() {
        let bytes = hex("00 02 3c 17 8c 63 00 00 00 00 02 01 00 00 00 02 00 00 00 00 03");
        let p = Packet::parse(&bytes).unwrap();
        assert_eq!(
            p,
            Packet::SessionResponse(SessionResponse {
                session_id: 1_008_176_227,
                crc_seed: 0,
                crc_length: 2,
                compression: 1,
                encryption_pass_1: 0,
                udp_length: 512,
                protocol_version: Some(3),
            })
        );
        assert_eq!(emitted(&p), bytes);
        assert_eq!(
            Packet::parse(&hex("00 02 3c 17 8c 63 00 00 00 00")),
            Err(DecodeError::TooShort)
        );
        // The 17-byte v2 form.
        let v2 = &bytes[..17];
        let Packet::SessionResponse(r) = Packet::parse(v2).unwrap() else {
            panic!()
        };
        assert_eq!(r.protocol_version, None);
        assert_eq!(emitted(&Packet::SessionResponse(r)), v2);
    }

    // Vectors: tests/vectors/v07_packet_round_trips.txt.
    #[test]
    fn v7_round_trip_bytes() {
        let req = Packet::SessionRequest(SessionRequest {
            protocol_version: 3,
            session_id: 5_467_392,
            udp_length: 512,
            application_protocol: Some(b"TestProtocol"),
        });
        assert_eq!(
            emitted(&req),
            hex("00 01 00 00 00 03 00 53 6d 00 00 00 02 00 54 65 73 74 50 72 6f 74 6f 63 6f 6c 00")
        );
        let resp = Packet::SessionResponse(SessionResponse {
            session_id: 531_633,
            crc_seed: 34_322,
            crc_length: 2,
            compression: 1,
            encryption_pass_1: 0,
            udp_length: 512,
            protocol_version: Some(3),
        });
        assert_eq!(
            emitted(&resp),
            hex("00 02 00 08 1c b1 00 00 86 12 02 01 00 00 00 02 00 00 00 00 03")
        );
        let disc = Packet::Disconnect(Disconnect {
            session_id: 5,
            reason: DisconnectReason::Application,
        });
        assert_eq!(emitted(&disc), hex("00 05 00 00 00 05 00 06"));
        let remap = Packet::RemapConnection(RemapConnection {
            session_id: 16,
            crc_seed: 32,
        });
        assert_eq!(emitted(&remap), hex("00 1e 00 00 00 10 00 00 00 20"));
        let ack = Packet::Acknowledge {
            channel: 0,
            sequence: 2,
        };
        assert_eq!(emitted(&ack), hex("00 11 00 02"));
        let ack_all = Packet::AcknowledgeAll {
            channel: 0,
            sequence: 2,
        };
        assert_eq!(emitted(&ack_all), hex("00 15 00 02"));
        assert_eq!(emitted(&Packet::UnknownSender), hex("00 1d"));
    }

    // Vectors: tests/vectors/v08_validation.txt.
    #[test]
    fn v8_validation_outcomes() {
        assert_eq!(Packet::parse(&[0x01]), Ok(Packet::Application(&[0x01])));
        assert_eq!(
            Packet::parse(&[0x00, 0x00]),
            Ok(Packet::ZeroEscaped(&[0x00]))
        );
        assert_eq!(
            Packet::parse(&[0x00, 0x04]),
            Err(DecodeError::UnknownOpCode(4))
        );
        assert_eq!(
            Packet::parse(&[0x00, 0xff]),
            Err(DecodeError::UnknownOpCode(0xff))
        );
        assert_eq!(Packet::parse(&[0x00, 0x1d]), Ok(Packet::UnknownSender));
        assert_eq!(Packet::parse(&[]), Err(DecodeError::Empty));
        assert_eq!(Packet::parse(&[0x00]), Ok(Packet::Application(&[0x00])));
        // A reliable packet needs at least one payload byte.
        assert_eq!(
            Packet::parse(&[0x00, 0x09, 0x00]),
            Err(DecodeError::TooShort)
        );
        assert_eq!(
            Packet::parse(&[0x00, 0x09, 0x00, 0x00]),
            Err(DecodeError::TooShort)
        );
    }

    // Vectors: tests/vectors/v11_data_and_ordered.txt, v25_ordered.txt.
    #[test]
    fn v11_v25_data_and_ordered() {
        let payload = hex("02 01 01 00 00 00 01 01 03 00 00 00 73 6f 65 00 00 00 00");
        let data = Packet::ReliableData {
            channel: 0,
            sequence: 0,
            payload: &payload,
        };
        let mut expected = hex("00 09 00 00");
        expected.extend(&payload);
        assert_eq!(emitted(&data), expected);
        let ordered = Packet::Ordered {
            second: true,
            stamp: 1,
            payload: &payload,
        };
        let mut expected = hex("00 1b 00 01");
        expected.extend(&payload);
        assert_eq!(emitted(&ordered), expected);
        assert_eq!(
            Packet::parse(&hex("00 1b 93 7f 01 00")),
            Ok(Packet::Ordered {
                second: true,
                stamp: 0x937F,
                payload: &[1, 0]
            })
        );
    }

    // Vectors: tests/vectors/v12_multi_packet.txt.
    #[test]
    fn v12_multi_packet_with_bundle() {
        let bytes = hex(
            "00 03 04 00 15 00 ce 43 00 09 00 01 00 19 29 8d 2d bd 55 f1 40 a5 47 e4 72 51 36 05 b8 cd 68 00 7d b8 d2 4a 00 f7 98 e1 a9 66 cc 9e e9 ca e4 22 ca ee 88 1f 03 79 de 6a 0b f7 b1 8a 91 15 dd bb 24 aa 25 ab 06 20 0b b4 61 0a f6",
        );
        let Packet::MultiPacket(multi) = Packet::parse(&bytes).unwrap() else {
            panic!()
        };
        let subs: Vec<_> = multi.iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(
            Packet::parse(subs[0]),
            Ok(Packet::AcknowledgeAll {
                channel: 0,
                sequence: 206
            })
        );
        let Ok(Packet::ReliableData {
            channel: 0,
            sequence: 1,
            payload,
        }) = Packet::parse(subs[1])
        else {
            panic!()
        };
        assert_eq!(payload.len(), 63);
        let Packet::DataBundle(bundle) = Packet::parse(payload).unwrap() else {
            panic!()
        };
        let lens: Vec<_> = bundle.iter().map(|i| i.unwrap().len()).collect();
        assert_eq!(lens, [41, 11, 6]);
    }

    // Vectors: tests/vectors/v14_corrupt_multi.txt, v15_sp_multi.txt.
    #[test]
    fn v14_v15_bad_multi_lengths() {
        let mut bytes = hex(
            "00 03 04 00 15 00 ce 43 00 09 00 01 00 19 29 8d 2d bd 55 f1 40 a5 47 e4 72 51 36 05 b8 cd 68 00 7d b8 d2 4a 00 f7 98 e1 a9 66 cc 9e e9 ca e4 22 ca ee 88 1f 03 79 de 6a 0b f7 b1 8a 91 15 dd bb 24 aa 25 ab 06 20 0b b4 61 0a f6",
        );
        bytes[2] = 0x36;
        let Packet::MultiPacket(multi) = Packet::parse(&bytes).unwrap() else {
            panic!()
        };
        let items: Vec<_> = multi.iter().collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].map(<[u8]>::len), Ok(54));
        assert_eq!(items[1], Err(DecodeError::BadLength));

        let good = hex("04 00 11 00 05 02 00 06");
        let subs: Vec<_> = MultiPacket::new(&good).iter().map(Result::unwrap).collect();
        assert_eq!(subs, [&[0x00, 0x11, 0x00, 0x05][..], &[0x00, 0x06][..]]);
        let bad = hex("0a 00 06");
        assert_eq!(
            MultiPacket::new(&bad).iter().next(),
            Some(Err(DecodeError::BadLength))
        );
    }

    // Vectors: tests/vectors/v16_bundle.txt.
    #[test]
    fn one_byte_multi_lengths() {
        // V12/V13 read the same either way.
        let v13 = hex("04 00 15 00 01 02 00 06");
        let one: Vec<_> = MultiPacket::new(&v13).iter_one_byte().collect();
        let var: Vec<_> = MultiPacket::new(&v13).iter().collect();
        assert_eq!(one, var);
        // A 255-byte application sub-packet after a plain `FF` (as UdpLibrary writes
        // it): only the one-byte reader gets it right.
        let mut body = vec![0xFF];
        body.extend((0..255).map(|i| 1 + (i % 200) as u8));
        body.extend_from_slice(&[0x02, 0x00, 0x06]);
        let subs: Vec<_> = MultiPacket::new(&body)
            .iter_one_byte()
            .map(Result::unwrap)
            .collect();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].len(), 255);
        assert_eq!(subs[1], &[0x00, 0x06][..]);
        assert!(MultiPacket::new(&body).iter().any(|r| r.is_err()));
        // Zero and overlong lengths are errors, once.
        let items: Vec<_> = MultiPacket::new(&[0x00, 0x01]).iter_one_byte().collect();
        assert_eq!(items, [Err(DecodeError::BadLength)]);
        let items: Vec<_> = MultiPacket::new(&[0x05, 0x00]).iter_one_byte().collect();
        assert_eq!(items, [Err(DecodeError::BadLength)]);
    }

    #[test]
    fn v16_bundle_in_reliable_data() {
        let bytes = hex("00 09 00 00 00 19 01 02 01 04");
        let Ok(Packet::ReliableData { payload, .. }) = Packet::parse(&bytes) else {
            panic!()
        };
        let Ok(Packet::DataBundle(bundle)) = Packet::parse(payload) else {
            panic!()
        };
        let items: Vec<_> = bundle.iter().map(Result::unwrap).collect();
        assert_eq!(items, [&[2u8][..], &[4u8][..]]);
    }

    // Vectors: tests/vectors/v26_net_status.txt.
    #[test]
    fn v26_net_status() {
        let req = hex(
            "00 07 fb 5c 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 01 eb d8",
        );
        let Ok(Packet::NetStatusRequest(r)) = Packet::parse(&req) else {
            panic!()
        };
        assert_eq!(r.timestamp, 64348);
        assert_eq!(r.our_sent, 2);
        assert_eq!(r.our_received, 1);
        assert_eq!(emitted(&Packet::NetStatusRequest(r)), req[..40]);
        let reply = hex(
            "00 08 fb 5c 21 27 c5 3c 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 02 83 d4",
        );
        let Ok(Packet::NetStatusResponse(r)) = Packet::parse(&reply) else {
            panic!()
        };
        assert_eq!(r.timestamp, 64348);
        assert_eq!(r.server_stamp, 556_254_524);
        assert_eq!((r.your_sent, r.your_received), (2, 1));
        assert_eq!((r.our_sent, r.our_received), (1, 2));
        assert_eq!(emitted(&Packet::NetStatusResponse(r)), reply[..40]);
    }

    fn arb_reason() -> impl Strategy<Value = DisconnectReason> {
        (0usize..17).prop_map(|i| DisconnectReason::ALL[i])
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = Packet::parse(&data) {
                // Whatever parses re-emits without panicking.
                let mut out = vec![0u8; p.encoded_len()];
                p.emit(&mut out);
                if let Packet::MultiPacket(m) = p { for _ in m.iter() {} }
                if let Packet::DataBundle(b) = p { for _ in b.iter() {} }
            }
        }

        #[test]
        fn fixed_packets_round_trip(
            a: u32, b: u32, c: u32, small: u8, flag: u8, v3: bool, seq: u16, ch in 0u8..4,
            reason in arb_reason(), name in proptest::collection::vec(1u8..=255, 0..32),
            payload in proptest::collection::vec(any::<u8>(), 1..64),
            second: bool, x: u64, y: u64,
        ) {
            let escaped: Vec<u8> = std::iter::once(0).chain(payload.iter().copied()).collect();
            let packets = [
                Packet::SessionRequest(SessionRequest { protocol_version: a, session_id: b, udp_length: c, application_protocol: v3.then_some(&name[..]) }),
                Packet::SessionResponse(SessionResponse { session_id: a, crc_seed: b, crc_length: small, compression: flag, encryption_pass_1: small, udp_length: c, protocol_version: v3.then_some(a ^ b) }),
                Packet::Disconnect(Disconnect { session_id: a, reason }),
                Packet::Heartbeat,
                Packet::NetStatusRequest(NetStatusRequest { timestamp: seq, master_ping: a, average_ping: b, low_ping: c, high_ping: a ^ c, last_ping: b ^ c, our_sent: x, our_received: y }),
                Packet::NetStatusResponse(NetStatusResponse { timestamp: seq, server_stamp: a, your_sent: x, your_received: y, our_sent: y ^ x, our_received: x.wrapping_add(y) }),
                Packet::ReliableData { channel: ch, sequence: seq, payload: &payload },
                Packet::ReliableDataFragment { channel: ch, sequence: seq, payload: &payload },
                Packet::Acknowledge { channel: ch, sequence: seq },
                Packet::AcknowledgeAll { channel: ch, sequence: seq },
                Packet::Ordered { second, stamp: seq, payload: &payload },
                Packet::PortAlive(&payload),
                Packet::UnknownSender,
                Packet::RemapConnection(RemapConnection { session_id: a, crc_seed: b }),
                Packet::ZeroEscaped(&escaped),
            ];
            for p in packets {
                let bytes = emitted(&p);
                prop_assert_eq!(Packet::parse(&bytes), Ok(p));
            }
            if payload[0] != 0 {
                let p = Packet::Application(&payload);
                let bytes = emitted(&p);
                prop_assert_eq!(Packet::parse(&bytes), Ok(p));
            }
        }

        #[test]
        fn containers_round_trip(items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6)) {
            // Bundles hold any items; multi-packets hold internal sub-packets (first byte 0).
            let mut bundle = Vec::new();
            let mut multi = Vec::new();
            let mut len = [0u8; 7];
            for item in &items {
                let n = bundle_len::write(item.len() as u32, &mut len);
                bundle.extend_from_slice(&len[..n]);
                bundle.extend_from_slice(item);
                let mut sub = vec![0u8];
                sub.extend_from_slice(item);
                let n = multi_len::write(sub.len() as u32, 0, &mut len);
                multi.extend_from_slice(&len[..n]);
                multi.extend_from_slice(&sub);
            }
            let p = Packet::DataBundle(DataBundle::new(&bundle));
            let bytes = emitted(&p);
            let Ok(Packet::DataBundle(parsed)) = Packet::parse(&bytes) else { panic!() };
            let back: Vec<&[u8]> = parsed.iter().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(back.len(), items.len());
            for (a, b) in back.iter().zip(&items) { prop_assert_eq!(*a, &b[..]); }

            let p = Packet::MultiPacket(MultiPacket::new(&multi));
            let bytes = emitted(&p);
            let Ok(Packet::MultiPacket(parsed)) = Packet::parse(&bytes) else { panic!() };
            let back: Vec<&[u8]> = parsed.iter().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(back.len(), items.len());
            for (a, b) in back.iter().zip(&items) { prop_assert_eq!(&a[1..], &b[..]); }
        }
    }
}
