//! Session configuration: what a session negotiates and how it behaves.

use std::sync::Arc;
use std::time::Duration;

use crate::protocol::{
    DEFAULT_CRC_LENGTH, DEFAULT_UDP_LENGTH, EncryptMethod, EncryptionPass, PassCodes, Rc4KeyState,
};

/// How reliable application payloads that begin with `0x00` are escaped.
///
/// UdpLibrary peers (SWG, Free Realms) prefix every such payload with one `0x00` so it
/// cannot be mistaken for an internal packet; `soe-protocol` and the PlanetSide 2
/// references only do it for RC4 ciphertext and deliver unencrypted data verbatim.
/// Both sides of a session must agree. Unreliable payloads are always escaped (on the
/// wire a leading `0x00` would otherwise read as an op code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroEscape {
    /// Escape only encrypted reliable data (`soe-protocol`, PlanetSide 2). Default.
    #[default]
    EncryptedOnly,
    /// Escape every reliable payload that starts with `0x00` (UdpLibrary).
    Always,
}

/// How the lengths of multi-packet (`00 03`) sub-packets and data-bundle (`00 19`)
/// items are written (see `docs/protocol.md` §10.4 and §11.2).
///
/// Every known reader decodes a one-byte length; only some read the longer forms.
/// The h1emu codec (H1Z1 emulator) reads one byte only, UdpLibrary (SWG, Free Realms)
/// and EQEmu never write longer multi-packet lengths, while `soe-protocol` and the
/// PlanetSide 2 references read the v3 varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MultiLength {
    /// One byte per length, readable by every known implementation. Default.
    /// Sub-packets that one byte cannot describe (over 255 bytes, or exactly 255
    /// when they do not start with `00`) are sent as their own datagram; acks and
    /// small packets still share multi-packets around them. Bundle items stay at
    /// most 254 bytes; longer messages get a reliable packet of their own.
    #[default]
    OneByte,
    /// The v3 variable-length form (1, 3 or 7 bytes): full-size reliable packets
    /// share a datagram with acks, and bundle items of any length. Only for peers
    /// that read it: `soe-protocol`, Sanctuary (PlanetSide 2) and soe-uring itself.
    Varint,
}

/// How often clients of the profiles whose servers answer ClockSync send it.
const CLOCK_SYNC_INTERVAL: Duration = Duration::from_secs(45);

/// Per-session parameters. Field names and defaults of the first block follow
/// `soe-protocol` 2.3.0's `SessionParameters`; the rest are additions.
///
/// Every buffer a peer can grow is capped here:
/// * out-of-order stash: `max_queued_incoming_reliable` packets per channel, each at
///   most one datagram (1024 × 512 B by default);
/// * reassembly: `max_reassembly_len` bytes per channel;
/// * inflated packets: `max_inflated_len` bytes (one shared buffer per multiplexer);
/// * selective acks owed to the peer: one per stashed packet.
///
/// Across sessions, the multiplexer's `SocketConfig::max_buffered_bytes` bounds
/// what all stashes and reassemblies hold together. What the local application
/// gives a session and the peer has not acknowledged yet is capped by
/// `max_pending_bytes`, which a peer that never acknowledges cannot push past.
#[derive(Debug, Clone)]
pub struct SessionParameters {
    /// Application protocol name; both sides must agree (v3 handshake).
    pub application_protocol: String,
    /// Largest datagram this side accepts (advertised in the handshake).
    pub udp_length: u32,
    /// Largest datagram the remote accepts (learnt in the handshake).
    pub remote_udp_length: u32,
    /// CRC seed (chosen by the server; learnt by the client).
    pub crc_seed: u32,
    /// CRC bytes per contextual datagram (0..=4). A server asks for this many.
    pub crc_length: u8,
    /// Whether contextual packets carry a compression flag. A server offers it; a
    /// client adopts the server's choice. It is byte 11 of the SessionResponse
    /// unless [`PassCodes`] make that byte pass 0 (the 17-byte form with
    /// UdpLibrary or EQ codes), where a server ignores it: compression is then a
    /// pass ([`EncryptMethod::Compression`] in EQ, a user-supplied one in UdpLibrary).
    pub is_compression_enabled: bool,
    /// Raw-packet encryption passes, pass 0 first (`soe-spec.md` §11.3): a server
    /// runs these and names them in bytes 11 and 12 of its SessionResponse; a
    /// client runs what the response names (this field then holds it). Pass 0 can
    /// only be named in the 17-byte response, with UdpLibrary or EQ
    /// [`pass_codes`](Self::pass_codes). A server that cannot name or run its passes
    /// (a user-supplied method without its hook) refuses every session, and a client
    /// refuses a response naming a pass it cannot run; both end with
    /// `ProtocolMismatch`, counted in `SessionStats::refused_passes`. Default: none.
    pub encryption_passes: [EncryptMethod; 2],
    /// How bytes 11 and 12 of the SessionResponse name the passes (see
    /// [`PassCodes`]).
    pub pass_codes: PassCodes,
    /// The application's pass for [`EncryptMethod::UserSupplied`] (method 1).
    /// Without it that method is refused.
    pub user_supplied: Option<Arc<dyn EncryptionPass>>,
    /// The application's pass for [`EncryptMethod::UserSupplied2`] (method 2).
    pub user_supplied_2: Option<Arc<dyn EncryptionPass>>,
    /// Receive window per reliable channel, in packets; packets further ahead are
    /// dropped unacknowledged. Cap of the out-of-order stash. The default, 1024, is
    /// four times `soe-protocol`'s: its go-back-N sender can run well past 256
    /// sequences once selective acks remove packets from its queue, and a smaller
    /// window then stalls it (memory is only used while packets wait for a gap, and
    /// is bounded in total by `SocketConfig::max_buffered_bytes`).
    pub max_queued_incoming_reliable: u16,
    /// Packets in flight per reliable channel (send window). Keep it below the peer's
    /// receive window (256 for `soe-protocol`, 400 for UdpLibrary).
    pub max_queued_outgoing_reliable: u16,
    /// Cumulative acks are sent at the latest after half this many packets.
    pub data_ack_window: u16,
    /// A client sends a heartbeat after this long without receiving; `ZERO` disables.
    /// While the server stays silent it repeats about eight times over the rest of
    /// the inactivity timeout, never more than twice a second.
    pub heartbeat_after: Duration,
    /// Terminate (`Timeout`) after this long without a valid datagram; `ZERO` disables.
    pub inactivity_timeout: Duration,
    /// Acknowledge every reliable packet individually instead of cumulatively.
    pub acknowledge_all_data: bool,
    /// While packets keep arriving, cumulative acks are batched: at most one per
    /// this long (default 2 ms), each riding on any datagram going to the peer
    /// meanwhile. Half of `data_ack_window` packets unacknowledged sends one at once.
    pub max_ack_delay: Duration,
    /// How long the cumulative ack of a packet that arrived alone waits for a
    /// datagram going to the peer to ride on: the application's reply, a client's
    /// next input, the state of a server's next tick. A second packet ends the wait
    /// (the flow is then acknowledged as `max_ack_delay` says); gaps, duplicates
    /// and packets out of the window are acknowledged at once, so loss recovery
    /// does not wait. `ZERO` acknowledges a lone packet in the next flush.
    ///
    /// Default 40 ms: at 25 Hz and more, the ack of every message rides on the
    /// next one. It must stay below what the peer's retransmission timers bear:
    /// soe-uring's `peer_max_ack_delay` (50 ms, which its probe timeout adds),
    /// `soe-protocol`'s 200 ms least RTO; for other peers compare with their
    /// resend timers (`docs/protocol.md` §8.4). Against an older soe-uring peer
    /// (its `peer_max_ack_delay` 25 ms), lower it to 20 ms.
    pub lone_ack_delay: Duration,

    /// The handshake a client uses: 3 (the default) sends the named v3 request and
    /// expects the 21-byte response; 2 sends the 14-byte UdpLibrary request and
    /// expects the 17-byte response. A server answers both forms in kind.
    pub protocol_version: u32,
    /// Whether a client of `protocol_version` 3 names the application protocol in
    /// its SessionRequest (the default). Without it the request is the 14-byte form
    /// carrying version 3, as EQ clients send it, and the server answers with the
    /// 17-byte response.
    pub named_request: bool,
    /// A client repeats its SessionRequest this often until answered.
    pub connect_retry_interval: Duration,
    /// A client gives up (`ConnectFail`) after this long without a SessionResponse.
    pub connect_timeout: Duration,
    /// Initial retransmission timeout, before any round-trip sample.
    pub initial_rto: Duration,
    /// Lower bound of the adaptive retransmission timeout.
    pub min_rto: Duration,
    /// Upper bound of the retransmission timeout (also after backoff).
    pub max_rto: Duration,
    /// Terminate (`UnacknowledgedTimeout`) when a reliable packet stays unacknowledged
    /// this long; `ZERO` disables.
    pub unacknowledged_timeout: Duration,
    /// At most this many packets are retransmitted per flush (over all channels), so a
    /// timeout never turns into a burst of a whole window.
    pub max_resends_per_flush: u16,
    /// Cap on the memory a session holds for data the application gave it and the
    /// peer has not acknowledged: queued messages (5 bytes of overhead each) and
    /// reliable packets in flight, counted by the capacity of their buffers, over
    /// all channels (see [`crate::SoeSession::pending_bytes`]). Beyond it `enqueue`
    /// fails with `QueueFull`; a message that could never fit is `TooLarge`.
    ///
    /// Default 1 MiB: many times a zone-in burst (20–100 KB), while a peer that
    /// stops acknowledging (or never does, on purpose) can make the server hold at
    /// most that much until `unacknowledged_timeout` ends its session. Raise it for
    /// bulk transfers to trusted peers.
    pub max_pending_bytes: usize,
    /// Largest reassembled reliable message accepted; a larger declared length ends
    /// the session with `ReliableOverflow`. Default 1 MiB, for the same reason as
    /// `max_pending_bytes`: a peer decides how much of it we hold.
    pub max_reassembly_len: usize,
    /// Largest inflated contextual packet; a larger one ends the session with
    /// `CorruptPacket`.
    pub max_inflated_len: usize,
    /// Coalesce on send: bundle small reliable messages (`00 19`) and pack acks,
    /// heartbeats and reliable packets for the same peer into multi-packets (`00 03`).
    pub coalesce: bool,
    /// Length form of multi-packet sub-packets (see [`MultiLength`]).
    pub multi_length: MultiLength,
    /// Put unreliable datagrams into multi-packets too. UdpLibrary peers accept it;
    /// `soe-protocol` terminates on it, so it is off by default.
    pub coalesce_unreliable: bool,
    /// Compress outgoing contextual packets when compression is negotiated.
    pub compress_outgoing: bool,
    /// Bodies shorter than this are never compressed.
    pub compress_min_len: usize,
    /// zlib level for outgoing compression (0–9). The default, 1, costs about a third
    /// of level 6's CPU per datagram for slightly larger output.
    pub compression_level: u32,
    /// Zero-escape policy for reliable data (see [`ZeroEscape`]).
    pub zero_escape: ZeroEscape,
    /// Congestion control and pacing of reliable packets (NewReno window over all
    /// channels, paced sending; see `docs`/`session::congestion`). On by default;
    /// off, only the send window (`max_queued_outgoing_reliable`) limits.
    pub congestion_control: bool,
    /// The congestion window a session starts with, in packets.
    pub initial_window: u16,
    /// Cap on the bytes per second a session sends (reliable packets, including
    /// retransmissions); `None`: no cap.
    pub max_send_rate: Option<u64>,
    /// The longest the peer may delay an acknowledgement; part of the probe
    /// timeout (`soe-protocol` and UdpLibrary peers acknowledge on their tick,
    /// soe-uring peers hold the ack of a lone packet up to their
    /// `lone_ack_delay`, 40 ms by default). Default 50 ms.
    pub peer_max_ack_delay: Duration,
    /// A client answers the server's UnknownSender with a RemapConnection (its NAT
    /// mapping moved) and carries on, instead of ending the session at once. It
    /// gives up, with `UnreachableConnection`, after three attempts in a row.
    pub remap_on_unknown_sender: bool,
    /// How long ICMP port-unreachable reports for the peer's address are borne:
    /// a report that arrives this long after the first one (with no valid datagram
    /// from the peer in between) ends the session with `IcmpError`, so a peer that
    /// vanished without a Disconnect is let go in seconds rather than at the
    /// inactivity timeout. The grace rides out a peer restarting or a route
    /// flapping, and makes a forged report alone harmless while the peer talks.
    /// Reports during the handshake are ignored (as UdpLibrary does by default).
    /// `None` ignores them altogether. Default 5 s (UdpLibrary's
    /// `icmpErrorRetryPeriod`).
    pub unreachable_grace: Option<Duration>,
    /// A client sends PortAlive (`00 1C`, with an IP TTL of 5 so it dies on the way)
    /// after this long without sending anything else, to keep its NAT mapping
    /// open at no cost to the server. `None` (the default) sends none; a client
    /// behind a NAT that forgets mappings sooner than `heartbeat_after` wants it.
    pub port_alive_interval: Option<Duration>,
    /// A client sends ClockSync (`00 07`) this often and learns the round trip,
    /// the offset to the server's clock and each direction's loss from the
    /// ClockReflect ([`SoeSession::net_status`](crate::session::SoeSession::net_status)).
    /// `None` (the default) sends none: `soe-protocol` servers ignore ClockSync and
    /// Sanctuary's log an error for each, so only the profiles of peers that
    /// answer it set an interval. Servers never initiate.
    pub clock_sync_interval: Option<Duration>,
}

impl Default for SessionParameters {
    fn default() -> Self {
        Self {
            application_protocol: String::new(),
            udp_length: DEFAULT_UDP_LENGTH,
            remote_udp_length: DEFAULT_UDP_LENGTH,
            crc_seed: 0,
            crc_length: DEFAULT_CRC_LENGTH,
            is_compression_enabled: false,
            encryption_passes: [EncryptMethod::None; 2],
            pass_codes: PassCodes::V3,
            user_supplied: None,
            user_supplied_2: None,
            max_queued_incoming_reliable: 1024,
            max_queued_outgoing_reliable: 196,
            data_ack_window: 32,
            heartbeat_after: Duration::from_secs(25),
            inactivity_timeout: Duration::from_secs(30),
            acknowledge_all_data: false,
            max_ack_delay: Duration::from_millis(2),
            lone_ack_delay: Duration::from_millis(40),
            protocol_version: 3,
            named_request: true,
            connect_retry_interval: Duration::from_millis(1000),
            connect_timeout: Duration::from_secs(10),
            initial_rto: Duration::from_millis(500),
            min_rto: Duration::from_millis(100),
            max_rto: Duration::from_secs(3),
            unacknowledged_timeout: Duration::from_secs(60),
            max_resends_per_flush: 64,
            max_pending_bytes: 1 << 20,
            max_reassembly_len: 1 << 20,
            max_inflated_len: 16 << 10,
            coalesce: true,
            multi_length: MultiLength::OneByte,
            coalesce_unreliable: false,
            compress_outgoing: true,
            compress_min_len: 24,
            compression_level: 1,
            zero_escape: ZeroEscape::EncryptedOnly,
            remap_on_unknown_sender: true,
            congestion_control: true,
            initial_window: 10,
            max_send_rate: None,
            peer_max_ack_delay: Duration::from_millis(50),
            unreachable_grace: Some(Duration::from_secs(5)),
            port_alive_interval: None,
            clock_sync_interval: None,
        }
    }
}

impl SessionParameters {
    /// Parameters for peers of one family; `None` for an unknown name. Both sides
    /// of a session need the same family. Names: `default`, `soe-uring`,
    /// `soe-protocol` (or `ps2`), `h1emu` (or `h1z1`), `udp-library` (or `swg`),
    /// `eq` (or `everquest`).
    ///
    /// | profile | handshake | multi-packet lengths | zero-escape | CRC | compression | encryption passes (bytes 11/12) | unreliable in multi-packets | client ClockSync |
    /// |---|---|---|---|---|---|---|---|---|
    /// | default | v3 | one byte | encrypted only | 2 | v3 flag `00`/`01` | pass 1 only (UdpLibrary codes), none offered | no | no |
    /// | `soe_uring` | v3 | varint | encrypted only | 2 | v3 flag | as default | no | 45 s |
    /// | `soe_protocol` (PS2, `soe-protocol`) | v3 | varint | encrypted only | 2 | v3 flag | as default | no | no |
    /// | `h1emu` (H1Z1 emulator) | v3 | one byte | encrypted only | 2 | none | as default | no | no |
    /// | `udp_library` (SWG, Free Realms) | v2 (14-byte request, 17-byte response) | one byte | always | 2 | user-supplied pass | UdpLibrary codes: Xor, XorBuffer, user supplied 1/2; none offered | yes | 45 s |
    /// | `eq` (EQEmu "Daybreak") | 14-byte request with version 3, 17-byte response | one byte | always | 2 | pass, flag `5A`/`A5` | EQ codes: compression, XOR; compression offered | yes | no |
    pub fn profile(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self::default()),
            "soe-uring" => Some(Self::soe_uring()),
            "soe-protocol" | "ps2" => Some(Self::soe_protocol()),
            "h1emu" | "h1z1" => Some(Self::h1emu()),
            "udp-library" | "swg" => Some(Self::udp_library()),
            "eq" | "everquest" => Some(Self::eq()),
            _ => None,
        }
    }

    /// The names [`SessionParameters::profile`] knows.
    pub const PROFILES: [&'static str; 6] = [
        "default",
        "soe-uring",
        "soe-protocol",
        "h1emu",
        "udp-library",
        "eq",
    ];

    /// soe-uring on both sides: full-size packets share datagrams with acks (the
    /// v3 varint lengths), clients sync clocks every 45 s, everything else as by
    /// default.
    pub fn soe_uring() -> Self {
        Self {
            multi_length: MultiLength::Varint,
            clock_sync_interval: Some(CLOCK_SYNC_INTERVAL),
            ..Self::default()
        }
    }

    /// `soe-protocol` 2.3.0 and the PlanetSide 2 references: they read the v3
    /// varint lengths and never send compressed packets (but read them); unreliable
    /// data stays out of multi-packets (they end the session on it).
    pub fn soe_protocol() -> Self {
        Self {
            multi_length: MultiLength::Varint,
            coalesce_unreliable: false,
            zero_escape: ZeroEscape::EncryptedOnly,
            ..Self::default()
        }
    }

    /// The H1Z1 emulator (h1emu-core): one length byte, CRC length 2 whatever is
    /// negotiated, no compression flag.
    pub fn h1emu() -> Self {
        Self {
            multi_length: MultiLength::OneByte,
            crc_length: 2,
            is_compression_enabled: false,
            compress_outgoing: false,
            coalesce_unreliable: false,
            ..Self::default()
        }
    }

    /// SWG's UdpLibrary and its ports: the 14-byte v2 handshake, one length byte,
    /// every reliable payload that starts with `00` escaped, unreliable data
    /// bundled in multi-packets, clients sync clocks every 45 s. The 17-byte
    /// response names encryption passes in UdpLibrary's codes: set
    /// [`encryption_passes`](Self::encryption_passes) on a server to offer Xor or
    /// XorBuffer, and install [`user_supplied`](Self::user_supplied) to run method 1.
    pub fn udp_library() -> Self {
        Self {
            protocol_version: 2,
            pass_codes: PassCodes::UdpLibrary,
            multi_length: MultiLength::OneByte,
            zero_escape: ZeroEscape::Always,
            coalesce_unreliable: true,
            clock_sync_interval: Some(CLOCK_SYNC_INTERVAL),
            ..Self::default()
        }
    }

    /// EQEmu's "Daybreak" stack (EverQuest): the 14-byte request carrying version 3
    /// and no name, the 17-byte response naming passes in EQ's codes, one length
    /// byte, every reliable payload that starts with `00` escaped (EQ's padding
    /// packet), unreliable data in multi-packets. A server offers EQ's compression
    /// pass as zone servers do: bodies over 30 bytes are compressed with zlib at
    /// level 1 behind a `5A` flag when that is no larger, others go behind `A5`;
    /// received packets inflate to at most 4096 bytes, EQ's own cap. Add
    /// [`EncryptMethod::Xor`] as pass 1 (or pass 0, as EQ's "encoded" streams do)
    /// for its XOR pass.
    pub fn eq() -> Self {
        Self {
            protocol_version: 3,
            named_request: false,
            pass_codes: PassCodes::Eq,
            encryption_passes: [EncryptMethod::Compression, EncryptMethod::None],
            is_compression_enabled: false,
            compression_level: 1,
            compress_min_len: 31,
            max_inflated_len: 4096,
            crc_length: 2,
            multi_length: MultiLength::OneByte,
            zero_escape: ZeroEscape::Always,
            coalesce_unreliable: true,
            ..Self::default()
        }
    }

    /// Whether a client with these parameters names the application protocol in
    /// its SessionRequest (a server then compares it with its own).
    pub fn names_protocol(&self) -> bool {
        self.protocol_version >= 3 && self.named_request
    }

    /// The largest message a session with these parameters can ever queue.
    pub fn max_message_len(&self) -> usize {
        self.max_pending_bytes
            .saturating_sub(super::reliable_tx::MESSAGE_OVERHEAD)
    }

    /// The datagram length used for sending: the smaller of both sides' limits, and
    /// never below 64 bytes (the UdpLibrary minimum).
    pub(crate) fn send_datagram_len(&self) -> usize {
        self.udp_length
            .min(self.remote_udp_length)
            .clamp(64, 1 << 16) as usize
    }
}

/// Application parameters shared by every session of a multiplexer.
#[derive(Debug, Clone, Default)]
pub struct ApplicationParameters {
    /// RC4 key state for reliable application data; `None` disables encryption.
    /// Each reliable channel and direction runs its own clone of it.
    pub encryption_key_state: Option<Rc4KeyState>,
}
