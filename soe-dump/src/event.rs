//! What the decoder reports: one [`Event`] per decoded packet, application
//! message, error or session boundary, in capture order.

use std::net::SocketAddr;

use soe_uring::{DisconnectReason, OpCode};

use crate::capture::Timestamp;

/// Which way a datagram travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client (the side that sent the SessionRequest) to the server.
    ClientToServer,
    /// From the server to the client.
    ServerToClient,
}

impl Direction {
    /// `"c2s"` or `"s2c"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientToServer => "c2s",
            Self::ServerToClient => "s2c",
        }
    }

    /// `C>S` or `S>C`, for the text timeline.
    pub fn arrow(self) -> &'static str {
        match self {
            Self::ClientToServer => "C>S",
            Self::ServerToClient => "S>C",
        }
    }
}

/// How multi-packet sub-packet lengths were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthForm {
    /// One plain byte per length (UdpLibrary, EQEmu, h1emu), or a varint body
    /// whose lengths all fit one byte (both readers agree on it).
    OneByte,
    /// The v3 varint (`soe-protocol`, PlanetSide 2, soe-uring's varint profiles),
    /// with at least one length longer than one byte.
    Varint,
}

impl LengthForm {
    /// `"one-byte"` or `"varint"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OneByte => "one-byte",
            Self::Varint => "varint",
        }
    }
}

/// Where a reliable packet stood in its channel's sequence when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The next expected sequence: processed at once.
    InOrder,
    /// Ahead of a gap: held until the gap fills.
    OutOfOrder,
    /// Already processed or already held (a retransmission).
    Duplicate,
    /// Too far ahead to be held: outside the window (16384 packets by default), or the
    /// channel already holds its cap of bytes behind a gap.
    BeyondWindow,
}

impl Order {
    /// `"in-order"`, `"out-of-order"`, `"duplicate"` or `"beyond-window"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InOrder => "in-order",
            Self::OutOfOrder => "out-of-order",
            Self::Duplicate => "duplicate",
            Self::BeyondWindow => "beyond-window",
        }
    }
}

/// The decoded fields of one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketInfo {
    /// `00 01`.
    SessionRequest {
        /// Protocol version.
        version: u32,
        /// The client's session id.
        session_id: u32,
        /// The client's largest datagram.
        udp_length: u32,
        /// Application protocol name (v3).
        protocol: Option<String>,
        /// A repeat of an earlier request with the same id.
        retry: bool,
    },
    /// `00 02`.
    SessionResponse {
        /// Echo of the session id.
        session_id: u32,
        /// CRC seed for the session.
        crc_seed: u32,
        /// CRC bytes per datagram.
        crc_length: u8,
        /// Encryption pass 0 (v3: compression flag).
        compression: u8,
        /// Encryption pass 1.
        encryption: u8,
        /// The server's largest datagram.
        udp_length: u32,
        /// Protocol version (21-byte form only).
        version: Option<u32>,
    },
    /// `00 03`.
    MultiPacket {
        /// Sub-packets found.
        items: usize,
        /// How their lengths were read.
        form: LengthForm,
    },
    /// `00 19` outside reliable data: its items are cooked packets.
    DataBundle {
        /// Items found.
        items: usize,
    },
    /// `00 05`.
    Disconnect {
        /// The session it ends.
        session_id: u32,
        /// Why.
        reason: DisconnectReason,
    },
    /// `00 06`.
    Heartbeat,
    /// `00 07`.
    NetStatusRequest,
    /// `00 08`.
    NetStatusResponse,
    /// `00 09..0C` (whole) or `00 0D..10` (fragment).
    Reliable {
        /// Channel 0..=3.
        channel: u8,
        /// A fragment rather than a whole packet.
        fragment: bool,
        /// The 16-bit wire sequence.
        seq: u16,
        /// The sequence extended to 64 bits (counted from the session start when the
        /// handshake is in the capture, else from the first packet seen).
        seq64: Option<u64>,
        /// Payload bytes after the sequence.
        len: usize,
        /// The whole message length, for the first fragment of a message.
        total: Option<u32>,
        /// In-order, held, duplicate, …
        order: Order,
    },
    /// `00 11..14` (`all == false`) or `00 15..18` (`all == true`).
    Ack {
        /// Channel 0..=3.
        channel: u8,
        /// The acknowledged sequence (every one up to it for `all`).
        seq: u16,
        /// Cumulative (AckAll) rather than selective.
        all: bool,
    },
    /// `00 1A` / `00 1B`: unreliable but ordered data.
    Ordered {
        /// Ordered2 (`1B`) rather than Ordered (`1A`).
        second: bool,
        /// Order stamp.
        stamp: u16,
        /// Payload bytes.
        len: usize,
    },
    /// Unreliable application data (a datagram not starting with `00`, or `00 00`).
    Unreliable {
        /// Payload bytes.
        len: usize,
    },
    /// `00 1C`.
    PortAlive,
    /// `00 1D`.
    UnknownSender,
    /// `00 1E`.
    RemapConnection {
        /// Session id.
        session_id: u32,
        /// CRC seed.
        crc_seed: u32,
    },
}

impl PacketInfo {
    /// The packet's name in the timeline (op code name, or `Unreliable`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::SessionRequest { .. } => "SessionRequest",
            Self::SessionResponse { .. } => "SessionResponse",
            Self::MultiPacket { .. } => "MultiPacket",
            Self::DataBundle { .. } => "DataBundle",
            Self::Disconnect { .. } => "Disconnect",
            Self::Heartbeat => "Heartbeat",
            Self::NetStatusRequest => "NetStatusRequest",
            Self::NetStatusResponse => "NetStatusResponse",
            Self::Reliable {
                fragment: false, ..
            } => "ReliableData",
            Self::Reliable { fragment: true, .. } => "Fragment",
            Self::Ack { all: false, .. } => "Ack",
            Self::Ack { all: true, .. } => "AckAll",
            Self::Ordered { second: false, .. } => "Ordered",
            Self::Ordered { second: true, .. } => "Ordered2",
            Self::Unreliable { .. } => "Unreliable",
            Self::PortAlive => "PortAlive",
            Self::UnknownSender => "UnknownSender",
            Self::RemapConnection { .. } => "RemapConnection",
        }
    }
}

/// The name of an op code as the timeline prints it.
pub fn op_name(op: OpCode) -> &'static str {
    match op {
        OpCode::ZeroEscape => "ZeroEscape",
        OpCode::SessionRequest => "SessionRequest",
        OpCode::SessionResponse => "SessionResponse",
        OpCode::MultiPacket => "MultiPacket",
        OpCode::Disconnect => "Disconnect",
        OpCode::Heartbeat => "Heartbeat",
        OpCode::NetStatusRequest => "NetStatusRequest",
        OpCode::NetStatusResponse => "NetStatusResponse",
        OpCode::ReliableData(_) => "ReliableData",
        OpCode::ReliableDataFragment(_) => "Fragment",
        OpCode::Acknowledge(_) => "Ack",
        OpCode::AcknowledgeAll(_) => "AckAll",
        OpCode::DataBundle => "DataBundle",
        OpCode::Ordered => "Ordered",
        OpCode::Ordered2 => "Ordered2",
        OpCode::PortAlive => "PortAlive",
        OpCode::UnknownSender => "UnknownSender",
        OpCode::RemapConnection => "RemapConnection",
    }
}

/// A decoded packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketEvent {
    /// 0 for a whole datagram, 1 inside a multi-packet or bundle, and so on.
    pub depth: u8,
    /// Datagram length on the wire (depth 0 only).
    pub wire_len: Option<usize>,
    /// For a compressed datagram: the length of the body after inflating.
    pub inflated_len: Option<usize>,
    /// The fields.
    pub info: PacketInfo,
}

/// The channel an application message came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageChannel {
    /// Reliable channel 0..=3.
    Reliable(u8),
    /// Unreliable datagrams.
    Unreliable,
    /// Unreliable-ordered (`00 1A`/`00 1B`).
    Ordered,
}

impl std::fmt::Display for MessageChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Reliable(ch) => write!(f, "reliable:{ch}"),
            Self::Unreliable => f.write_str("unreliable"),
            Self::Ordered => f.write_str("ordered"),
        }
    }
}

/// An application message, as the receiving application would get it: reassembled,
/// unbundled, unescaped and (with a key) decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEvent {
    /// Its channel.
    pub channel: MessageChannel,
    /// Its length.
    pub len: usize,
    /// Its first bytes.
    pub preview: Vec<u8>,
    /// The 64-bit sequence of the reliable packet that completed it.
    pub seq: Option<u64>,
    /// Reliable packets it took (more than 1 when fragmented).
    pub fragments: u32,
    /// It was one item of a data bundle.
    pub bundled: bool,
    /// It was decrypted with the RC4 key.
    pub decrypted: bool,
    /// Nesting depth of the packet that delivered it (for indenting).
    pub depth: u8,
}

/// Traffic counters of one direction of a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Datagrams.
    pub datagrams: u64,
    /// Their bytes on the wire (UDP payload).
    pub bytes: u64,
    /// Datagrams whose body was zlib-compressed.
    pub compressed: u64,
    /// Datagrams whose CRC did not match.
    pub crc_mismatches: u64,
    /// Datagrams, sub-packets or payloads that could not be decoded.
    pub malformed: u64,
    /// Multi-packets.
    pub multi_packets: u64,
    /// Reliable packets (whole and fragments, duplicates included).
    pub reliable: u64,
    /// Of those, fragments.
    pub fragments: u64,
    /// Reliable packets already seen (retransmissions).
    pub duplicates: u64,
    /// Reliable packets that arrived ahead of a gap.
    pub out_of_order: u64,
    /// Reliable packets too far ahead to hold.
    pub beyond_window: u64,
    /// Selective acks.
    pub acks: u64,
    /// Cumulative acks.
    pub ack_alls: u64,
    /// Application messages delivered (all channels).
    pub messages: u64,
    /// Their bytes.
    pub message_bytes: u64,
    /// Messages that came in data bundles.
    pub bundled_messages: u64,
    /// Messages that came as fragments.
    pub fragmented_messages: u64,
    /// Unreliable (and unreliable-ordered) messages.
    pub unreliable_messages: u64,
}

/// The totals of one session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSummary {
    /// The client's address.
    pub client: SocketAddr,
    /// The server's address.
    pub server: SocketAddr,
    /// Both SessionRequest and SessionResponse were in the capture.
    pub handshake: bool,
    /// The session id, when a handshake packet was seen.
    pub session_id: Option<u32>,
    /// Protocol version from the request.
    pub protocol_version: Option<u32>,
    /// Application protocol from the request.
    pub application_protocol: Option<String>,
    /// CRC bytes per datagram used for decoding.
    pub crc_length: u8,
    /// CRC seed used for decoding.
    pub crc_seed: u32,
    /// Whether contextual packets carried a compression flag.
    pub compression: bool,
    /// Seconds from the first to the last datagram.
    pub duration: f64,
    /// Client to server.
    pub c2s: DirStats,
    /// Server to client.
    pub s2c: DirStats,
    /// Who sent a Disconnect, and why.
    pub disconnect: Option<(Direction, DisconnectReason)>,
    /// What was still incomplete at the end (held packets behind a gap, partial
    /// messages).
    pub incomplete: Vec<String>,
}

/// Counters over the whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureSummary {
    /// Frames read.
    pub frames: u64,
    /// UDP datagrams found in them.
    pub udp_datagrams: u64,
    /// Frames that were not IP (ARP, …) or not UDP.
    pub not_udp: u64,
    /// IP fragments (not reassembled).
    pub ip_fragments: u64,
    /// Frames of a link type this tool does not decode.
    pub unsupported_link: u64,
    /// Frames whose headers were cut short or inconsistent.
    pub malformed_frames: u64,
    /// IPv4 headers with a wrong checksum.
    pub bad_ip_checksums: u64,
    /// UDP datagrams with a wrong checksum.
    pub bad_udp_checksums: u64,
    /// UDP flows followed as SOE sessions.
    pub soe_flows: u64,
    /// UDP flows that did not look like SOE.
    pub other_flows: u64,
    /// UDP flows left out by `--port`.
    pub filtered_flows: u64,
    /// Sessions decoded.
    pub sessions: u64,
    /// Why reading stopped early, if it did.
    pub stopped: Option<String>,
}

/// What an [`Event`] says.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// A session begins (its first datagram).
    SessionStart {
        /// The client.
        client: SocketAddr,
        /// The server.
        server: SocketAddr,
        /// The first datagram was a handshake packet.
        handshake: bool,
    },
    /// A decoded packet.
    Packet(PacketEvent),
    /// A delivered application message.
    Message(MessageEvent),
    /// A datagram whose CRC did not match.
    CrcMismatch {
        /// Datagram length.
        len: usize,
        /// The CRC computed over the datagram (low `crc_length` bytes).
        expected: u32,
        /// The CRC the datagram carried.
        found: u32,
    },
    /// Something that could not be decoded.
    Malformed {
        /// Length of the offending bytes.
        len: usize,
        /// Nesting depth (0: a whole datagram).
        depth: u8,
        /// Why.
        reason: String,
    },
    /// A remark about decoding (not an error in the traffic).
    Note(String),
    /// A session's totals (when it is replaced by a new one on its flow, or at the
    /// end of the capture).
    Summary(Box<SessionSummary>),
    /// Totals over the whole file (last event, session 0).
    Capture(CaptureSummary),
}

/// One line of output.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Session number (from 1, in order of appearance; 0 for file-wide events).
    pub session: u32,
    /// When the datagram was captured.
    pub time: Timestamp,
    /// Seconds since the session's first datagram.
    pub offset: f64,
    /// Direction of the datagram (none for session-wide events).
    pub dir: Option<Direction>,
    /// What happened.
    pub kind: EventKind,
}
