//! The SOE wire format: op codes, typed packet views and emitters, the seeded CRC,
//! zlib compression, RC4, variable-length integers and disconnect reasons.
//!
//! Nothing here holds session state. Every parser takes `&[u8]`, checks bounds and
//! returns [`DecodeError`] on bad input; none of them panics on any input. Every
//! emitter writes into a caller-supplied buffer and returns the number of bytes
//! written, so the hot path never allocates.
//!
//! Layering of a contextual datagram on the wire (see `docs/protocol.md` §3):
//!
//! ```text
//! [00][op] [compression flag, if negotiated] [body ...] [CRC, 0..=4 bytes]
//! ```
//!
//! [`Framing`] strips and adds the outer layer (CRC and compression flag);
//! [`Packet`] parses and emits the inner ("cooked") packet. Sessions that negotiated
//! encryption passes ([`Passes`]: UdpLibrary's Xor/XorBuffer, EQ's compression,
//! application hooks) run them over everything after the op code (after the first
//! byte of application data) just before the CRC.

mod compress;
mod crc;
mod frame;
mod packet;
mod passes;
mod rc4;
pub(crate) mod varint;

pub use compress::{Compressor, Decompressor, InflateError};
pub use crc::{Crc32, crc_matches, soe_crc32};
pub use frame::{FrameError, Framing, Unframed};
pub use packet::{
    BundleIter, DataBundle, DecodeError, Disconnect, MultiIter, MultiPacket, NetStatusRequest,
    NetStatusResponse, Packet, RemapConnection, SessionRequest, SessionResponse,
};
pub(crate) use packet::{reliable_body, sequence_of};
pub use passes::{
    DecryptError, Deflate, EQ_COMPRESSED, EQ_UNCOMPRESSED, EncryptMethod, EncryptionPass,
    PassBuffers, PassCodes, PassContext, PassError, Passes, UnsupportedPass,
};
pub use rc4::Rc4KeyState;

/// The protocol version sent by v3 peers (Free Realms, PlanetSide 2, H1Z1, `soe-protocol`).
pub const PROTOCOL_VERSION_3: u32 = 3;
/// The protocol version of the original UdpLibrary (Star Wars Galaxies).
pub const PROTOCOL_VERSION_2: u32 = 2;
/// The number of reliable channels a session has.
pub const RELIABLE_CHANNEL_COUNT: usize = 4;
/// The default maximum datagram length both sides advertise.
pub const DEFAULT_UDP_LENGTH: u32 = 512;
/// The default number of CRC bytes a server asks for.
pub const DEFAULT_CRC_LENGTH: u8 = 2;
/// The two bytes that open a data bundle ("multi-data indicator").
pub const DATA_BUNDLE_HEADER: [u8; 2] = [0x00, 0x19];
/// The two bytes that open a multi-packet.
pub const MULTI_PACKET_HEADER: [u8; 2] = [0x00, 0x03];
/// Size of an op code on the wire.
pub const OP_CODE_LEN: usize = 2;
/// The IP TTL (IPv6 hop limit) PortAlive is sent with: enough to pass the
/// client's NAT, too little to reach a server across the internet (UdpLibrary's
/// choice).
pub const PORT_ALIVE_TTL: u32 = 5;

/// Whether `datagram` is a PortAlive as [`crate::session::SoeSession`] sends it
/// (exactly `00 1C`): runtimes send those with [`PORT_ALIVE_TTL`].
pub fn is_port_alive(datagram: &[u8]) -> bool {
    datagram == OpCode::PortAlive.to_bytes()
}

/// A protocol packet type: the second byte of a datagram whose first byte is `0x00`.
///
/// Reliable-family packets carry their channel (0..=3) in the op code itself:
/// `ReliableData` is `0x09 + channel`, and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// `0x00`: zero-escaped application data (`00 00 app…` delivers `00 app…`).
    ZeroEscape,
    /// `0x01`: a client asks for a session.
    SessionRequest,
    /// `0x02`: the server accepts a session and states its parameters.
    SessionResponse,
    /// `0x03`: several length-prefixed sub-packets in one datagram.
    MultiPacket,
    /// `0x05`: a party ends the session.
    Disconnect,
    /// `0x06`: keep-alive.
    Heartbeat,
    /// `0x07`: clock-sync request (UdpLibrary "ClockSync").
    NetStatusRequest,
    /// `0x08`: clock-sync reply (UdpLibrary "ClockReflect").
    NetStatusResponse,
    /// `0x09..=0x0C`: a whole reliable packet on a channel.
    ReliableData(u8),
    /// `0x0D..=0x10`: a fragment of a large reliable payload on a channel.
    ReliableDataFragment(u8),
    /// `0x11..=0x14`: selective acknowledgement of one sequence.
    Acknowledge(u8),
    /// `0x15..=0x18`: cumulative acknowledgement of every sequence up to one.
    AcknowledgeAll(u8),
    /// `0x19`: a data bundle (normally inside a reliable payload).
    DataBundle,
    /// `0x1A`: unreliable-ordered data (UdpLibrary buffered ordered channel).
    Ordered,
    /// `0x1B`: unreliable-ordered data (UdpLibrary unbuffered ordered channel).
    Ordered2,
    /// `0x1C`: NAT keep-alive; receivers drop it.
    PortAlive,
    /// `0x1D`: "I have no session for you".
    UnknownSender,
    /// `0x1E`: a client asks to move its session to a new port.
    RemapConnection,
}

impl OpCode {
    /// Decodes the packet-type byte (the second byte of an internal packet).
    pub fn from_type_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0x00 => Self::ZeroEscape,
            0x01 => Self::SessionRequest,
            0x02 => Self::SessionResponse,
            0x03 => Self::MultiPacket,
            0x05 => Self::Disconnect,
            0x06 => Self::Heartbeat,
            0x07 => Self::NetStatusRequest,
            0x08 => Self::NetStatusResponse,
            0x09..=0x0C => Self::ReliableData(byte - 0x09),
            0x0D..=0x10 => Self::ReliableDataFragment(byte - 0x0D),
            0x11..=0x14 => Self::Acknowledge(byte - 0x11),
            0x15..=0x18 => Self::AcknowledgeAll(byte - 0x15),
            0x19 => Self::DataBundle,
            0x1A => Self::Ordered,
            0x1B => Self::Ordered2,
            0x1C => Self::PortAlive,
            0x1D => Self::UnknownSender,
            0x1E => Self::RemapConnection,
            _ => return None,
        })
    }

    /// The packet-type byte. Channels above 3 are masked into range.
    pub fn type_byte(self) -> u8 {
        match self {
            Self::ZeroEscape => 0x00,
            Self::SessionRequest => 0x01,
            Self::SessionResponse => 0x02,
            Self::MultiPacket => 0x03,
            Self::Disconnect => 0x05,
            Self::Heartbeat => 0x06,
            Self::NetStatusRequest => 0x07,
            Self::NetStatusResponse => 0x08,
            Self::ReliableData(ch) => 0x09 + (ch & 3),
            Self::ReliableDataFragment(ch) => 0x0D + (ch & 3),
            Self::Acknowledge(ch) => 0x11 + (ch & 3),
            Self::AcknowledgeAll(ch) => 0x15 + (ch & 3),
            Self::DataBundle => 0x19,
            Self::Ordered => 0x1A,
            Self::Ordered2 => 0x1B,
            Self::PortAlive => 0x1C,
            Self::UnknownSender => 0x1D,
            Self::RemapConnection => 0x1E,
        }
    }

    /// The two op-code bytes as they appear on the wire.
    pub fn to_bytes(self) -> [u8; 2] {
        [0, self.type_byte()]
    }

    /// Whether the packet is "contextless": never compressed, encrypted or CRC'd.
    /// All but PortAlive are meaningful without an established session;
    /// PortAlive is sent raw (UdpLibrary) and only ever dropped.
    pub fn is_contextless(self) -> bool {
        matches!(
            self,
            Self::SessionRequest
                | Self::SessionResponse
                | Self::UnknownSender
                | Self::RemapConnection
                | Self::PortAlive
        )
    }

    /// Whether a packet with this op code is read from its body alone (what
    /// follows the op code, [`Packet::parse_contextual`]): every op code but the
    /// contextless ones and the zero-escape, which need the whole packet.
    pub fn reads_from_body(self) -> bool {
        !self.is_contextless() && self != Self::ZeroEscape
    }
}

/// Why a session ended. The `u16` values are the wire values of the Disconnect packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum DisconnectReason {
    /// No reason given.
    None = 0,
    /// ICMP errors persisted past the retry period.
    IcmpError = 1,
    /// Nothing was received for the inactivity timeout.
    Timeout = 2,
    /// The other side sent a Disconnect (local code).
    OtherSideTerminated = 3,
    /// The manager (socket, multiplexer, server) shut down.
    ManagerDeleted = 4,
    /// The connect attempt timed out.
    ConnectFail = 5,
    /// The application closed the session.
    Application = 6,
    /// The peer says it has no session for us.
    UnreachableConnection = 7,
    /// A reliable packet stayed unacknowledged for too long.
    UnacknowledgedTimeout = 8,
    /// The peer reconnected with a new session id.
    NewConnectionAttempt = 9,
    /// The application (or an admission limit) refused the connection.
    ConnectionRefused = 10,
    /// The handshake flow was violated, or both sides connected at once.
    ConnectError = 11,
    /// A connect looped back to its sender.
    ConnectingToSelf = 12,
    /// More reliable data was pending, or a larger message arrived, than the caps allow.
    ReliableOverflow = 13,
    /// The application released the manager.
    ApplicationReleased = 14,
    /// A malformed packet arrived.
    CorruptPacket = 15,
    /// Protocol version or application protocol name mismatch; also a handshake
    /// that negotiates encryption passes this side cannot run (an unknown method
    /// code, a user-supplied pass without a hook) or cannot express.
    ProtocolMismatch = 16,
}

impl DisconnectReason {
    /// Every reason, in wire order.
    pub const ALL: [Self; 17] = [
        Self::None,
        Self::IcmpError,
        Self::Timeout,
        Self::OtherSideTerminated,
        Self::ManagerDeleted,
        Self::ConnectFail,
        Self::Application,
        Self::UnreachableConnection,
        Self::UnacknowledgedTimeout,
        Self::NewConnectionAttempt,
        Self::ConnectionRefused,
        Self::ConnectError,
        Self::ConnectingToSelf,
        Self::ReliableOverflow,
        Self::ApplicationReleased,
        Self::CorruptPacket,
        Self::ProtocolMismatch,
    ];

    /// Decodes a wire value; unknown values become [`DisconnectReason::None`].
    pub fn from_u16(value: u16) -> Self {
        Self::ALL
            .get(usize::from(value))
            .copied()
            .unwrap_or(Self::None)
    }

    /// The wire value.
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_code_round_trips_every_type_byte() {
        for byte in 0..=u8::MAX {
            if let Some(op) = OpCode::from_type_byte(byte) {
                assert_eq!(op.type_byte(), byte);
                assert_eq!(op.to_bytes(), [0, byte]);
            }
        }
        assert_eq!(OpCode::from_type_byte(0x04), None);
        assert_eq!(OpCode::from_type_byte(0x1F), None);
        assert_eq!(OpCode::from_type_byte(0xFF), None);
        assert_eq!(OpCode::from_type_byte(0x0C), Some(OpCode::ReliableData(3)));
        assert_eq!(
            OpCode::from_type_byte(0x16),
            Some(OpCode::AcknowledgeAll(1))
        );
    }

    #[test]
    fn disconnect_reasons_match_wire_values() {
        for (i, reason) in DisconnectReason::ALL.iter().enumerate() {
            assert_eq!(reason.as_u16() as usize, i);
            assert_eq!(DisconnectReason::from_u16(i as u16), *reason);
        }
        assert_eq!(DisconnectReason::from_u16(17), DisconnectReason::None);
        assert_eq!(DisconnectReason::Application.as_u16(), 6);
        assert_eq!(DisconnectReason::ProtocolMismatch.as_u16(), 16);
    }
}
