//! One peer ([`SoeSession`]): handshake, channels, timers, coalescing.

mod assembler;
mod channels;
mod congestion;
mod io;
mod net_status;
mod params;
mod reliable_rx;
mod reliable_tx;
mod rtt;
mod timestamp;

#[cfg(test)]
mod conversation_tests;

use std::time::{Duration, Instant};

use bytes::Bytes;

use self::assembler::{Assembler, Compression};
use self::channels::Channels;
use self::congestion::Congestion;
use self::net_status::ClockSync;
use self::reliable_rx::{AckPolicy, ReliableReceiver, RxCounters, RxError};
use self::reliable_tx::{
    AckOutcome, LossTimes, MESSAGE_OVERHEAD, PacketRules, RELIABLE_HEADER_LEN, ReliableSender,
};
use self::rtt::RttEstimator;
use self::timestamp::Timestamp;
use crate::protocol::{DataBundle, MultiPacket, RemapConnection, SessionRequest, SessionResponse};
use crate::protocol::{
    DecodeError, Disconnect, DisconnectReason, EncryptMethod, FrameError, Framing,
    NetStatusRequest, NetStatusResponse, OP_CODE_LEN, OpCode, PROTOCOL_VERSION_2,
    PROTOCOL_VERSION_3, Packet, PassContext, Passes, RELIABLE_CHANNEL_COUNT, Rc4KeyState, Unframed,
    UnsupportedPass, reliable_body, sequence_of,
};

pub use self::io::SessionIo;
pub use self::net_status::NetStatus;
pub use self::params::{ApplicationParameters, MultiLength, SessionParameters, ZeroEscape};

/// A session quiet this long frees its channel buffers at its next timer.
const QUIET_RELEASE: Duration = Duration::from_secs(1);

/// RemapConnections a client sends in a row, each answered by UnknownSender, before
/// it gives the session up.
const MAX_REMAP_ATTEMPTS: u8 = 3;

/// At most one RemapConnection per this long (or per retransmission timeout, if
/// shorter).
const REMAP_INTERVAL: Duration = Duration::from_millis(200);

/// Nesting limit for multi-packets and bundles inside multi-packets.
const MAX_NESTING: u8 = 4;

/// A session's timers, by name (see `SoeSession::deadlines`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// A client gives up waiting for the SessionResponse (`ConnectFail`).
    ConnectTimeout,
    /// A client repeats its SessionRequest.
    ConnectRetry,
    /// Nothing heard from the peer for `inactivity_timeout` (`Timeout`).
    Inactivity,
    /// A client's keep-alive.
    Heartbeat,
    /// A client's ClockSync.
    ClockSync,
    /// A client's PortAlive (NAT keep-alive).
    PortAlive,
    /// A reliable channel's retransmission check (done by the next flush).
    Retransmit,
    /// A reliable channel's delayed acknowledgement (sent by the next flush).
    Ack,
    /// Data that waited for pacing may leave (in the next flush).
    Pace,
}

/// What one run of a session's timers found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerRun {
    /// A deadline had passed: what it owes goes out with the next flush.
    Due,
    /// None had (the deadline moved later since the caller's timer was set):
    /// nothing to flush. The session's next deadline, as
    /// [`SoeSession::next_deadline`] gives it.
    NotDue(Option<Instant>),
}

/// Which deadlines have passed, in one call of `handle_timeout`.
#[derive(Debug, Default, Clone, Copy)]
struct Due {
    /// Any deadline at all, those the next flush serves included.
    any: bool,
    connect_timeout: bool,
    connect_retry: bool,
    inactivity: bool,
    heartbeat: bool,
    clock_sync: bool,
    port_alive: bool,
}

impl Due {
    fn mark(&mut self, deadline: Deadline) {
        self.any = true;
        match deadline {
            Deadline::ConnectTimeout => self.connect_timeout = true,
            Deadline::ConnectRetry => self.connect_retry = true,
            Deadline::Inactivity => self.inactivity = true,
            Deadline::Heartbeat => self.heartbeat = true,
            Deadline::ClockSync => self.clock_sync = true,
            Deadline::PortAlive => self.port_alive = true,
            Deadline::Retransmit | Deadline::Ack | Deadline::Pace => {}
        }
    }
}

/// Which side of the handshake a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionMode {
    /// Sends the SessionRequest.
    Client,
    /// Answers a SessionRequest.
    Server,
}

/// Lifecycle of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// A client waiting for the SessionResponse.
    Negotiating,
    /// Established.
    Running,
    /// Ended; see [`SoeSession::termination_reason`].
    Terminated,
}

/// The channel a message is sent or was received on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Reliable, ordered channel 0..=3, each with its own sequence space and cipher.
    Reliable(usize),
    /// Best effort, unordered; RC4 never applies. Payloads larger than a datagram
    /// are promoted to `Reliable(0)`.
    Unreliable,
    /// Best effort, but stale packets are dropped (UdpLibrary "ordered", `00 1B`).
    /// Only UdpLibrary peers understand it: `soe-protocol` ends the session on it.
    Ordered,
}

/// What a session reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The session is established. A server reports it when the first packet after
    /// its SessionResponse arrives (proof the client got the response).
    Opened,
    /// A message arrived.
    DataReceived {
        /// The message.
        data: Bytes,
        /// Where it arrived.
        channel: Channel,
    },
    /// The session ended; always the last event.
    Closed(DisconnectReason),
}

/// Why a message was not queued. The caller keeps the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// There is no session for that address.
    #[error("no session for this address")]
    NoSession,
    /// The session is not established (negotiating) or has ended.
    #[error("session is not running")]
    NotRunning,
    /// `Channel::Reliable(n)` with `n > 3`.
    #[error("reliable channel index out of range (0..=3)")]
    InvalidChannel,
    /// Empty payloads cannot be represented on every channel and are refused.
    #[error("empty payload")]
    Empty,
    /// `max_pending_bytes` would be exceeded: back off until the peer catches up.
    #[error("outgoing queue full")]
    QueueFull,
    /// The message is larger than `max_pending_bytes`: no session can ever take it.
    #[error("message larger than the session's queue (max_pending_bytes)")]
    TooLarge,
    /// A shard's command queue is full (from a `ShardContext` for another shard's
    /// session): back off and retry.
    #[error("command queue of the owning shard is full")]
    CommandQueueFull,
}

/// Per-session counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Datagrams handed to the socket.
    pub datagrams_sent: u64,
    /// Bytes of those datagrams.
    pub bytes_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Bytes of those datagrams.
    pub bytes_received: u64,
    /// Messages accepted by `enqueue`.
    pub messages_enqueued: u64,
    /// Messages delivered to the application.
    pub messages_delivered: u64,
    /// Bytes of those messages.
    pub bytes_delivered: u64,
    /// Reliable packets sent for the first time.
    pub reliable_packets_sent: u64,
    /// Reliable packets retransmitted.
    pub reliable_packets_resent: u64,
    /// Ack and AckAll packets sent.
    pub acks_sent: u64,
    /// Ack and AckAll packets received.
    pub acks_received: u64,
    /// Datagrams dropped for a bad CRC.
    pub crc_failures: u64,
    /// Datagrams dropped as malformed (too short, unknown op code, bad framing).
    pub malformed_datagrams: u64,
    /// Reliable packets received again.
    pub duplicate_packets: u64,
    /// Reliable packets received ahead of a gap.
    pub out_of_order_packets: u64,
    /// Reliable packets dropped for being a whole window ahead.
    pub out_of_window_packets: u64,
    /// Ordered (`00 1A`/`00 1B`) packets dropped as stale.
    pub stale_ordered_packets: u64,
    /// Contextual packets ignored: acks for unsent data, foreign session ids,
    /// handshake packets in the wrong state.
    pub ignored_packets: u64,
    /// Out-of-order packets dropped (unacknowledged) because the multiplexer's
    /// buffer budget was spent.
    pub over_budget_packets: u64,
    /// ClockSyncs sent (clients with `clock_sync_interval`).
    pub clock_syncs_sent: u64,
    /// ClockReflects taken (see [`SoeSession::net_status`]).
    pub clock_reflects_received: u64,
    /// PortAlives sent (clients with `port_alive_interval`).
    pub port_alives_sent: u64,
    /// ICMP port-unreachable reports for the peer's address.
    pub unreachable_reports: u64,
    /// Handshakes refused (with `ProtocolMismatch`) over encryption passes: a
    /// SessionResponse naming a method this side cannot run (an unknown code, a
    /// user-supplied pass without its hook), or a server configured with passes it
    /// cannot name or run.
    pub refused_passes: u64,
}

impl SessionStats {
    /// Adds every counter of `other` into `self`.
    pub fn add(&mut self, other: &Self) {
        self.datagrams_sent += other.datagrams_sent;
        self.bytes_sent += other.bytes_sent;
        self.datagrams_received += other.datagrams_received;
        self.bytes_received += other.bytes_received;
        self.messages_enqueued += other.messages_enqueued;
        self.messages_delivered += other.messages_delivered;
        self.bytes_delivered += other.bytes_delivered;
        self.reliable_packets_sent += other.reliable_packets_sent;
        self.reliable_packets_resent += other.reliable_packets_resent;
        self.acks_sent += other.acks_sent;
        self.acks_received += other.acks_received;
        self.crc_failures += other.crc_failures;
        self.malformed_datagrams += other.malformed_datagrams;
        self.duplicate_packets += other.duplicate_packets;
        self.out_of_order_packets += other.out_of_order_packets;
        self.out_of_window_packets += other.out_of_window_packets;
        self.stale_ordered_packets += other.stale_ordered_packets;
        self.ignored_packets += other.ignored_packets;
        self.over_budget_packets += other.over_budget_packets;
        self.clock_syncs_sent += other.clock_syncs_sent;
        self.clock_reflects_received += other.clock_reflects_received;
        self.port_alives_sent += other.port_alives_sent;
        self.unreachable_reports += other.unreachable_reports;
        self.refused_passes += other.refused_passes;
    }
}

/// A copy of one session's state and counters, for operators
/// ([`SoeSession::snapshot`]; the runtimes' handles fetch it by address).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SessionSnapshot {
    /// The session id.
    pub session_id: u32,
    /// Client or server.
    pub mode: SessionMode,
    /// Where it is in its life.
    pub state: SessionState,
    /// Its counters.
    pub stats: SessionStats,
    /// Smoothed round trip, once measured.
    pub rtt: Option<Duration>,
    /// Reliable packets the congestion controller lets be in flight.
    pub congestion_window: u64,
    /// Application bytes queued and not yet cut into packets.
    pub queued_bytes: usize,
    /// What the session holds for its peer, counted against `max_pending_bytes`.
    pub pending_bytes: usize,
    /// What it holds from its peer (out-of-order packets, partial messages).
    pub buffered_bytes: usize,
    /// What ClockSync taught a client about its path.
    pub net_status: Option<NetStatus>,
}

/// How a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// This side ends it and tells the peer: queued data within the window goes
    /// out, then a Disconnect.
    Announced,
    /// This side ends it without a word (timeouts, refusals, a peer that cannot
    /// be reached or must not be answered).
    Silent,
    /// The peer's Disconnect ended it.
    ByPeer,
}

/// Bytes 11 and 12 of a server's SessionResponse, and whether they turn the v3
/// compression flag on.
#[derive(Debug, Clone, Copy)]
struct PassBytes {
    byte_11: u8,
    byte_12: u8,
    compression: bool,
}

/// Contextless and control packets owed to the peer at the next flush.
#[derive(Debug, Default, Clone, Copy)]
struct Owed {
    request: bool,
    response: bool,
    /// A RemapConnection (the server did not know our address).
    remap: bool,
    heartbeat: bool,
    net_status: Option<NetStatusRequest>,
    clock_sync: bool,
    port_alive: bool,
}

/// Unreliable payloads waiting for the next flush.
#[derive(Debug, Default)]
struct UnreliableQueue {
    buf: Vec<u8>,
    /// `(length, ordered)`: ordered entries are cooked `00 1B stamp data` packets.
    items: Vec<(u32, bool)>,
}

impl UnreliableQueue {
    /// Writes every queued payload (ordered ones as the cooked packets they are).
    fn write(&self, coalesce_unreliable: bool, asm: &mut Assembler<'_>) {
        let mut at = 0;
        for &(len, ordered) in &self.items {
            let item = &self.buf[at..at + len as usize];
            at += len as usize;
            if ordered {
                asm.push(item);
            } else {
                asm.push_unreliable(item, coalesce_unreliable);
            }
        }
    }
}

/// Control packets a flush owes the peer.
#[derive(Debug)]
struct OwedControl {
    heartbeat: bool,
    net_status: Option<NetStatusResponse>,
    clock_sync: Option<NetStatusRequest>,
}

impl OwedControl {
    fn write(&self, asm: &mut Assembler<'_>) {
        if self.heartbeat {
            asm.push(&OpCode::Heartbeat.to_bytes());
        }
        if let Some(reply) = self.net_status {
            let mut bytes = [0u8; NetStatusResponse::LEN];
            Packet::NetStatusResponse(reply).emit(&mut bytes);
            asm.push(&bytes);
        }
        if let Some(sync) = self.clock_sync {
            let mut bytes = [0u8; NetStatusRequest::LEN];
            Packet::NetStatusRequest(sync).emit(&mut bytes);
            asm.push(&bytes);
        }
    }
}

/// What one flush did with the reliable channels.
#[derive(Debug, Default)]
struct FlushRound {
    /// New reliable packets sent.
    sent: u64,
    /// Reliable packets sent again.
    resent: u64,
    /// A retransmission timeout fired.
    timed_out: bool,
    /// The send time of the newest packet declared lost.
    lost_sent: Option<Timestamp>,
    /// A packet went unacknowledged past `unacknowledged_timeout`.
    gave_up: bool,
    /// Pacing held new packets back.
    paced: bool,
    datagrams: u64,
    bytes: u64,
}

type Senders = Channels<ReliableSender>;

impl FlushRound {
    /// Retransmissions first: they are not held back (a due one must go, or its
    /// timer would fire again at once), but they use up pacing tokens and, at
    /// their real size, the rate cap's bytes, so new data waits.
    fn resend(
        &mut self,
        senders: &mut Senders,
        (now, times, give_up): (Timestamp, LossTimes, Option<Duration>),
        max_resends: u16,
        congestion: &mut Congestion,
        asm: &mut Assembler<'_>,
    ) {
        let mut budget = max_resends;
        let mut resent_bytes = 0;
        for s in senders.iter_mut() {
            match s.resend_due(now, times, give_up, &mut budget, asm, &mut self.resent) {
                Ok(outcome) => {
                    self.timed_out |= outcome.timed_out;
                    resent_bytes += outcome.bytes;
                    if let Some(t) = outcome.lost_sent {
                        self.lost_sent = Some(self.lost_sent.map_or(t, |l| l.max(t)));
                    }
                }
                Err(_) => {
                    self.gave_up = true;
                    break;
                }
            }
        }
        for _ in budget..max_resends {
            congestion.spend(0);
        }
        congestion.spend_bytes(resent_bytes);
    }

    /// New packets, as far as the congestion window and pacing allow.
    fn send_new(
        &mut self,
        senders: &mut Senders,
        (now, times, rules): (Timestamp, LossTimes, PacketRules),
        congestion: &mut Congestion,
        asm: &mut Assembler<'_>,
    ) {
        let mut in_flight: u64 = senders.iter().map(|s| s.in_flight()).sum();
        for s in senders.iter_mut() {
            let before = in_flight;
            while s.can_send() && congestion.allows(in_flight) {
                if !congestion.may_send(rules.room) {
                    self.paced = true;
                    break;
                }
                let Some(seq) = s.build_next(rules, now) else {
                    break;
                };
                let packet = s.packet(seq);
                congestion.spend(packet.len());
                asm.push(packet);
                self.sent += 1;
                in_flight += 1;
            }
            // Only fresh packets (re)start the timers: a flush that sends nothing
            // must not push the probe back (acks restart it in `handle_ack`); it
            // only arms timers that are not armed.
            if in_flight > before {
                s.arm_timer(now, times);
            } else if s.in_flight() > 0 {
                s.arm_unset_timers(now, times);
            }
        }
    }
}

/// An assembler for a session's framing and parameters; `coalesce: false` writes
/// every packet as its own datagram (handshake, final Disconnect). A free function so
/// callers can borrow other fields of the session alongside it.
fn assembler<'a>(
    params: &'a SessionParameters,
    framing: &'a Framing,
    io: &'a mut SessionIo,
    coalesce: bool,
) -> Assembler<'a> {
    let multi = (coalesce && params.coalesce).then_some(params.multi_length);
    let compresses = framing.compression() || framing.passes().is_some_and(Passes::compresses);
    let compression = (params.compress_outgoing && compresses).then_some(Compression {
        level: params.compression_level,
        min_len: params.compress_min_len,
    });
    Assembler::new(io, framing, params.send_datagram_len(), multi, compression)
}

/// One SOE session: handshake, reliable and unreliable channels, heartbeats, timers.
///
/// [`SoeSession`] is a deterministic state machine. It never reads a clock or touches
/// a socket: every input carries `now`, and every output is appended to a
/// [`SessionIo`] the caller owns (usually a [`crate::mux::SoeMultiplexer`]).
///
/// # Calls
/// * **Inputs**: [`SoeSession::handle_datagram`] for each datagram from the peer;
///   [`SoeSession::handle_timeout`] when [`SoeSession::next_deadline`] has passed.
/// * **Commands**: [`SoeSession::enqueue`], [`SoeSession::terminate`].
/// * **Output**: [`SoeSession::flush`] writes every datagram due now (handshake,
///   acks, heartbeats, retransmissions, new data) into the `SessionIo`, coalesced.
///   Call it after a batch of inputs and commands; it is cheap when there is
///   nothing to send.
/// * **Queries**: [`SoeSession::next_deadline`], state, ids, [`SoeSession::stats`].
///
/// Time passed in must never go backwards.
///
/// # Dialects
/// The SessionResponse also settles the session's encryption passes (UdpLibrary's
/// Xor and XorBuffer, EQ's compression, application hooks; see
/// [`crate::protocol::Passes`]): a server runs and names the ones in its
/// [`SessionParameters::encryption_passes`], a client adopts what it is told, and a
/// side that cannot run them ends the handshake with `ProtocolMismatch`. Sessions
/// without passes take the same path as before, with no extra buffer or copy.
#[derive(Debug)]
pub struct SoeSession {
    mode: SessionMode,
    state: SessionState,
    params: SessionParameters,
    /// Boxed: 258 bytes that sessions without RC4 (most) would carry inline, and
    /// that spread the hot fields over more cache lines.
    cipher: Option<Box<Rc4KeyState>>,
    session_id: u32,
    secret_seed: u32,
    framing: Framing,
    response: Option<SessionResponse>,
    senders: Channels<ReliableSender>,
    receivers: Channels<ReliableReceiver>,
    unreliable: UnreliableQueue,
    ordered_out: u16,
    ordered_in: [Option<u16>; 2],
    rtt: RttEstimator,
    congestion: Congestion,
    /// Data waits for pacing (or the rate cap) until then.
    paced_until: Option<Timestamp>,
    /// The `Instant` of the session's creation: its clock's zero (see
    /// [`Timestamp`]).
    epoch: Instant,
    /// When the handshake completed.
    running_since: Option<Timestamp>,
    last_received: Timestamp,
    /// When the last datagram (PortAlives aside) went to the peer.
    last_sent: Timestamp,
    last_port_alive: Option<Timestamp>,
    /// The first ICMP port-unreachable report since the peer was last heard.
    unreachable_since: Option<Timestamp>,
    clock_sync: ClockSync,
    last_heartbeat: Option<Timestamp>,
    last_request: Option<Timestamp>,
    owed: Owed,
    open_on_next_packet: bool,
    /// RemapConnections sent since the server last answered with anything else.
    remap_attempts: u8,
    /// When the last one went out.
    last_remap: Option<Timestamp>,
    /// Set while the final flush before a Disconnect runs.
    closing: bool,
    termination_reason: DisconnectReason,
    terminated_by_remote: bool,
    stats: SessionStats,
}

impl SoeSession {
    /// A new session.
    ///
    /// `secret` supplies the random values the handshake needs: its low 32 bits are a
    /// client's session id, its high 32 bits a server's CRC seed. Use a CSPRNG (the
    /// multiplexer does); remapping trusts these values.
    ///
    /// A client queues its SessionRequest at once (sent by the next
    /// [`SoeSession::flush`]); a server waits for one in [`SoeSession::handle_datagram`].
    pub fn new(
        mode: SessionMode,
        params: SessionParameters,
        app: ApplicationParameters,
        secret: u64,
        now: Instant,
    ) -> Self {
        let epoch = now;
        let now = Timestamp::ZERO;
        let rtt = RttEstimator::new(params.initial_rto, params.min_rto, params.max_rto);
        let congestion = Congestion::new(
            params.congestion_control,
            params.initial_window,
            params.max_queued_outgoing_reliable,
            params.max_send_rate,
        );
        let framing = Framing::new(0, 0, false);
        let mut session = Self {
            mode,
            state: SessionState::Negotiating,
            closing: false,
            params,
            cipher: app.encryption_key_state.map(Box::new),
            session_id: 0,
            secret_seed: (secret >> 32) as u32,
            framing,
            response: None,
            senders: Default::default(),
            receivers: Default::default(),
            unreliable: UnreliableQueue::default(),
            ordered_out: 0,
            ordered_in: [None; 2],
            rtt,
            congestion,
            paced_until: None,
            epoch,
            running_since: None,
            last_received: now,
            last_sent: now,
            last_port_alive: None,
            unreachable_since: None,
            clock_sync: ClockSync::default(),
            last_heartbeat: None,
            last_request: None,
            owed: Owed::default(),
            open_on_next_packet: false,
            remap_attempts: 0,
            last_remap: None,
            termination_reason: DisconnectReason::None,
            terminated_by_remote: false,
            stats: SessionStats::default(),
        };
        if mode == SessionMode::Client {
            session.session_id = secret as u32;
            session.owed.request = true;
        }
        session
    }

    /// Client or server.
    #[inline]
    pub fn mode(&self) -> SessionMode {
        self.mode
    }

    /// Current state.
    #[inline]
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// The session id (the client's choice, echoed by the server).
    #[inline]
    pub fn session_id(&self) -> u32 {
        self.session_id
    }

    /// The negotiated CRC seed (0 until negotiated).
    #[inline]
    pub fn crc_seed(&self) -> u32 {
        self.framing.crc_seed()
    }

    /// The parameters, as negotiated so far.
    pub fn params(&self) -> &SessionParameters {
        &self.params
    }

    /// Why the session ended ([`DisconnectReason::None`] while it runs).
    pub fn termination_reason(&self) -> DisconnectReason {
        self.termination_reason
    }

    /// Whether the peer ended the session (with a Disconnect).
    pub fn terminated_by_remote(&self) -> bool {
        self.terminated_by_remote
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        let mut stats = self.stats;
        for r in self.receivers.iter() {
            let c: &RxCounters = &r.counters;
            stats.duplicate_packets += c.duplicates;
            stats.out_of_order_packets += c.out_of_order;
            stats.out_of_window_packets += c.out_of_window;
            stats.messages_delivered += c.delivered;
            stats.bytes_delivered += c.delivered_bytes;
            stats.acks_sent += c.acks_sent;
            stats.over_budget_packets += c.over_budget;
        }
        stats
    }

    /// Bytes this session holds for its peer: out-of-order packets waiting for a
    /// gap, and partly reassembled messages.
    pub fn buffered_bytes(&self) -> usize {
        self.receivers.iter().map(|r| r.held_bytes()).sum()
    }

    /// The smoothed round-trip time, once measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// A copy of the session's state and counters.
    pub fn snapshot(&self) -> SessionSnapshot {
        SessionSnapshot {
            session_id: self.session_id,
            mode: self.mode,
            state: self.state,
            stats: self.stats(),
            rtt: self.rtt(),
            congestion_window: self.congestion_window(),
            queued_bytes: self.queued_bytes(),
            pending_bytes: self.pending_bytes(),
            buffered_bytes: self.buffered_bytes(),
            net_status: self.net_status(),
        }
    }

    /// What ClockSync round trips taught a client about its path (round trip,
    /// clock offset, loss each way); `None` before the first ClockReflect, and
    /// always on servers and on clients without `clock_sync_interval`.
    pub fn net_status(&self) -> Option<NetStatus> {
        self.clock_sync.status()
    }

    /// How many reliable packets the congestion controller lets be in flight now
    /// (the peer's receive window may allow fewer). Always the configured
    /// `max_window` when congestion control is off.
    pub fn congestion_window(&self) -> u64 {
        self.congestion.window()
    }

    /// Whether a server session still waits for the client's first packet after its
    /// SessionResponse (a half-open session).
    #[inline]
    pub fn is_half_open(&self) -> bool {
        self.open_on_next_packet
    }

    /// Memory this session holds for data the application gave it and the peer
    /// has not acknowledged: queued messages with their per-message overhead, and
    /// reliable packets in flight, counted by the buffers' capacity. Capped by
    /// `max_pending_bytes`.
    pub fn pending_bytes(&self) -> usize {
        self.senders.iter().map(|s| s.held_bytes()).sum::<usize>()
            + self.unreliable.buf.capacity()
            + self.unreliable.items.capacity() * std::mem::size_of::<(u32, bool)>()
    }

    /// Application bytes queued and not yet cut into packets, over all channels.
    pub fn queued_bytes(&self) -> usize {
        self.senders.iter().map(|s| s.queued_bytes()).sum::<usize>() + self.unreliable.buf.len()
    }

    /// Whether every reliable message has been sent and acknowledged.
    pub fn is_flushed(&self) -> bool {
        self.senders.iter().all(|s| s.is_idle()) && self.unreliable.items.is_empty()
    }

    /// Every deadline the session has now, by name: the one table that
    /// [`SoeSession::next_deadline`] and [`SoeSession::handle_timeout`] both read.
    /// Visits each deadline that is set, in the table's order. (A visitor rather
    /// than an iterator: this runs after every flush of every session, and the
    /// straight-line form costs a fraction of a chain of adapters.)
    #[inline]
    fn visit_deadlines(&self, mut visit: impl FnMut(Deadline, Timestamp)) {
        let p = &self.params;
        match self.state {
            SessionState::Negotiating => {
                // The session's clock starts at its creation.
                visit(
                    Deadline::ConnectTimeout,
                    Timestamp::ZERO + p.connect_timeout,
                );
                if let Some(t) = self.last_request {
                    visit(Deadline::ConnectRetry, t + p.connect_retry_interval);
                }
                return;
            }
            SessionState::Terminated => return,
            SessionState::Running => {}
        }
        if !p.inactivity_timeout.is_zero() {
            visit(
                Deadline::Inactivity,
                self.last_received + p.inactivity_timeout,
            );
        }
        if self.mode == SessionMode::Client {
            if !p.heartbeat_after.is_zero() {
                visit(Deadline::Heartbeat, self.next_heartbeat());
            }
            if let (Some(interval), Some(since)) = (p.clock_sync_interval, self.running_since) {
                visit(
                    Deadline::ClockSync,
                    self.clock_sync.next_due(since, interval),
                );
            }
            if let Some(interval) = p.port_alive_interval {
                let last = self
                    .last_sent
                    .max(self.last_port_alive.unwrap_or(self.last_sent));
                visit(Deadline::PortAlive, last + interval);
            }
        }
        if let Some(pace) = self.paced_until {
            visit(Deadline::Pace, pace);
        }
        for sender in self.senders.iter() {
            if let Some(at) = sender.deadline() {
                visit(Deadline::Retransmit, at);
            }
        }
        for receiver in self.receivers.iter() {
            if let Some(at) = receiver.ack_deadline() {
                visit(Deadline::Ack, at);
            }
        }
    }

    /// When [`SoeSession::handle_timeout`] should next run; `None` when ended.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut earliest: Option<Timestamp> = None;
        self.visit_deadlines(|_, at| earliest = Timestamp::earliest(earliest, Some(at)));
        earliest.map(|t| t.to_instant(self.epoch))
    }

    /// `now` on this session's clock.
    #[inline]
    fn timestamp(&self, now: Instant) -> Timestamp {
        Timestamp::since(self.epoch, now)
    }

    /// When a client's next heartbeat is due: `heartbeat_after` after the last
    /// datagram received, then, while the server stays silent, about eight more
    /// spread over what is left before the inactivity timeout (at most two a
    /// second), so a lossy link does not cost the session.
    fn next_heartbeat(&self) -> Timestamp {
        let p = &self.params;
        let first = self.last_received + p.heartbeat_after;
        match self.last_heartbeat {
            // Silent since the last heartbeat (a reply at the same instant counts).
            Some(sent) if sent > self.last_received => {
                let window = p.inactivity_timeout.saturating_sub(p.heartbeat_after);
                let retry = if window.is_zero() {
                    Duration::from_secs(1)
                } else {
                    (window / 8).max(Duration::from_millis(500))
                };
                first.max(sent + retry)
            }
            _ => first,
        }
    }

    /// Queues `data` on `channel`. Returns an error (and queues nothing) when the
    /// session is not running, the channel is invalid, the payload is empty, or the
    /// `max_pending_bytes` cap would be exceeded.
    pub fn enqueue(&mut self, data: &[u8], channel: Channel) -> Result<(), EnqueueError> {
        if self.state != SessionState::Running {
            return Err(EnqueueError::NotRunning);
        }
        if data.is_empty() {
            return Err(EnqueueError::Empty);
        }
        if let Channel::Reliable(ch) = channel
            && ch >= RELIABLE_CHANNEL_COUNT
        {
            return Err(EnqueueError::InvalidChannel);
        }
        let cost = data.len() + MESSAGE_OVERHEAD;
        let cap = self.params.max_pending_bytes;
        if cost > cap {
            return Err(EnqueueError::TooLarge);
        }
        let mut held = self.pending_bytes();
        if held + cost > cap {
            // Idle capacity counts too; give back what is cheap before saying no.
            for s in self.senders.iter_mut() {
                s.compact();
            }
            if self.unreliable.items.is_empty() {
                self.unreliable = UnreliableQueue::default();
            }
            held = self.pending_bytes();
            if held + cost > cap {
                return Err(EnqueueError::QueueFull);
            }
        }
        let room = cap - held - cost;
        let send_len = self.send_datagram_len();
        let channel = match channel {
            Channel::Unreliable => {
                let escape = usize::from(data[0] == 0);
                let overhead = usize::from(self.framing.crc_length()) + self.framing.expansion();
                let fits = escape + data.len() + overhead <= send_len;
                if fits {
                    self.unreliable.buf.extend_from_slice(data);
                    self.unreliable.items.push((data.len() as u32, false));
                    self.stats.messages_enqueued += 1;
                    return Ok(());
                }
                0
            }
            Channel::Ordered => {
                let cooked_len = OP_CODE_LEN + 2 + data.len();
                if cooked_len + self.framing.overhead() <= send_len {
                    let stamp = self.ordered_out;
                    self.ordered_out = stamp.wrapping_add(1);
                    let buf = &mut self.unreliable.buf;
                    buf.extend_from_slice(&OpCode::Ordered2.to_bytes());
                    buf.extend_from_slice(&stamp.to_be_bytes());
                    buf.extend_from_slice(data);
                    self.unreliable.items.push((cooked_len as u32, true));
                    self.stats.messages_enqueued += 1;
                    return Ok(());
                }
                0
            }
            Channel::Reliable(ch) => ch,
        };
        self.sender(channel).enqueue(data, room);
        self.stats.messages_enqueued += 1;
        Ok(())
    }

    fn sender(&mut self, channel: usize) -> &mut ReliableSender {
        let cipher = &self.cipher;
        let params = &self.params;
        self.senders.get_or_insert_with(channel, || {
            ReliableSender::new(
                channel as u8,
                cipher.clone(),
                params.zero_escape == ZeroEscape::Always,
                params.max_queued_outgoing_reliable,
            )
        })
    }

    fn receiver(&mut self, channel: usize) -> &mut ReliableReceiver {
        let cipher = &self.cipher;
        let params = &self.params;
        self.receivers.get_or_insert_with(channel, || {
            ReliableReceiver::new(
                channel as u8,
                cipher.clone(),
                params.zero_escape == ZeroEscape::Always,
                params.max_queued_incoming_reliable,
                params.max_reassembly_len,
            )
        })
    }

    fn send_datagram_len(&self) -> usize {
        self.params.send_datagram_len()
    }

    fn ack_policy(&self) -> AckPolicy {
        AckPolicy {
            every_packet: self.params.acknowledge_all_data,
            max_delay: self.params.max_ack_delay,
            lone_delay: self.params.lone_ack_delay,
            half_window: u64::from(self.params.data_ack_window / 2).max(1),
        }
    }

    /// Ends the session. With `notify_remote` (and an established session) pending
    /// data within the send window goes out first, then a Disconnect carrying
    /// `reason`. Emits [`SessionEvent::Closed`].
    pub fn terminate(
        &mut self,
        reason: DisconnectReason,
        notify_remote: bool,
        now: Instant,
        io: &mut SessionIo,
    ) {
        let now = self.timestamp(now);
        let how = if notify_remote {
            Ending::Announced
        } else {
            Ending::Silent
        };
        self.end(reason, how, now, io);
    }

    fn end(&mut self, reason: DisconnectReason, how: Ending, now: Timestamp, io: &mut SessionIo) {
        if self.state == SessionState::Terminated {
            return;
        }
        if how == Ending::Announced && self.state == SessionState::Running {
            self.closing = true;
            self.flush_at(now, io);
            let packet = Disconnect {
                session_id: self.session_id,
                reason,
            };
            let mut bytes = [0u8; Disconnect::LEN];
            Packet::Disconnect(packet).emit(&mut bytes);
            let mut asm = assembler(&self.params, &self.framing, io, false);
            asm.push(&bytes);
            asm.finish();
        }
        self.state = SessionState::Terminated;
        self.termination_reason = reason;
        self.terminated_by_remote = how == Ending::ByPeer;
        self.open_on_next_packet = false;
        io.emit(SessionEvent::Closed(reason));
    }

    /// Processes one datagram from the peer.
    pub fn handle_datagram(&mut self, datagram: &[u8], now: Instant, io: &mut SessionIo) {
        let now = self.timestamp(now);
        if self.state == SessionState::Terminated {
            return;
        }
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        if self.framing.passes().is_none() {
            let unframed = self.framing.unframe(datagram);
            return self.handle_unframed(unframed, now, io);
        }
        // Passes are undone in a buffer of the io, taken so the session can use the
        // io while it reads the packet.
        let mut opened = std::mem::take(&mut io.opened);
        let unframed = self.framing.open(
            datagram,
            &mut opened,
            &mut io.pass_buffers,
            &mut io.decompressor,
            self.params.max_inflated_len,
        );
        self.handle_unframed(unframed, now, io);
        io.opened = opened;
    }

    fn handle_unframed(
        &mut self,
        unframed: Result<Unframed<'_>, FrameError>,
        now: Timestamp,
        io: &mut SessionIo,
    ) {
        let unframed = match unframed {
            Ok(u) => u,
            Err(FrameError::CrcMismatch) => {
                self.stats.crc_failures += 1;
                return;
            }
            Err(FrameError::Pass(_)) => {
                // The CRC held, so the peer itself sent something we cannot
                // decrypt: corrupt, as UdpLibrary judges it.
                self.stats.malformed_datagrams += 1;
                if self.state == SessionState::Running {
                    self.end(DisconnectReason::CorruptPacket, Ending::Announced, now, io);
                }
                return;
            }
            Err(_) => {
                self.stats.malformed_datagrams += 1;
                return;
            }
        };
        match unframed {
            Unframed::Contextless(_, bytes) => match Packet::parse(bytes) {
                Ok(packet) => self.handle_contextless(packet, bytes.len(), now, io),
                Err(_) => self.stats.malformed_datagrams += 1,
            },
            // A client cannot check a contextual packet before it knows the CRC seed.
            _ if self.state == SessionState::Negotiating => self.stats.ignored_packets += 1,
            Unframed::Application(data) => {
                self.touch(now, io);
                self.deliver_unreliable(data, Channel::Unreliable, io);
            }
            Unframed::Contextual {
                op,
                compressed,
                body,
            } => {
                self.touch(now, io);
                if compressed {
                    let mut inflated = std::mem::take(&mut io.inflated);
                    inflated.clear();
                    let outcome =
                        io.decompressor
                            .inflate(body, &mut inflated, self.params.max_inflated_len);
                    match outcome {
                        Ok(()) => self.handle_contextual(op, &inflated, now, io),
                        Err(_) => {
                            self.end(DisconnectReason::CorruptPacket, Ending::Announced, now, io)
                        }
                    }
                    io.inflated = inflated;
                } else {
                    self.handle_contextual(op, body, now, io);
                }
            }
        }
    }

    /// A valid contextual datagram arrived: the peer is alive, and a server that was
    /// waiting for proof of a completed handshake has it.
    fn touch(&mut self, now: Timestamp, io: &mut SessionIo) {
        self.last_received = now;
        self.remap_attempts = 0;
        self.unreachable_since = None;
        if self.open_on_next_packet {
            self.open_on_next_packet = false;
            io.emit(SessionEvent::Opened);
        }
    }

    fn handle_contextual(&mut self, op: OpCode, body: &[u8], now: Timestamp, io: &mut SessionIo) {
        if self.handle_op(op, body, 0, now, io).is_err() {
            self.end(DisconnectReason::CorruptPacket, Ending::Announced, now, io);
        }
    }

    /// A contextual packet, by its op code and body. The packets of every
    /// exchange (reliable data, acknowledgements, multi-packets) are read in
    /// place; the rest as a [`Packet`]. `Err` when the body is malformed.
    fn handle_op(
        &mut self,
        op: OpCode,
        body: &[u8],
        depth: u8,
        now: Timestamp,
        io: &mut SessionIo,
    ) -> Result<(), DecodeError> {
        if let Some(handled) = self.handle_exchange(op, body, now, io) {
            return handled;
        }
        match op {
            OpCode::MultiPacket => self.handle_container(MultiPacket::new(body), depth, now, io),
            _ => self.handle_packet(Packet::parse_contextual(op, body)?, depth, now, io),
        }
        Ok(())
    }

    /// Reliable data and acknowledgements, the packets of every exchange; `None`
    /// for other op codes. Not recursive, so the multi-packet loop inlines it.
    #[inline]
    fn handle_exchange(
        &mut self,
        op: OpCode,
        body: &[u8],
        now: Timestamp,
        io: &mut SessionIo,
    ) -> Option<Result<(), DecodeError>> {
        Some(match op {
            OpCode::ReliableData(channel) | OpCode::ReliableDataFragment(channel) => {
                reliable_body(body).map(|(sequence, payload)| {
                    let fragment = matches!(op, OpCode::ReliableDataFragment(_));
                    self.handle_reliable(channel, sequence, payload, fragment, now, io);
                })
            }
            OpCode::Acknowledge(channel) | OpCode::AcknowledgeAll(channel) => sequence_of(body)
                .map(|sequence| {
                    let all = matches!(op, OpCode::AcknowledgeAll(_));
                    self.handle_ack(channel, sequence, all, now);
                }),
            _ => return None,
        })
    }

    /// A sub-packet of a multi-packet or data bundle: a cooked contextual packet
    /// goes to [`SoeSession::handle_op`], anything else (application data, a
    /// zero-escape, a contextless packet) through [`Packet::parse`].
    fn handle_sub(
        &mut self,
        sub: &[u8],
        depth: u8,
        now: Timestamp,
        io: &mut SessionIo,
    ) -> Result<(), DecodeError> {
        if let [0, ty, body @ ..] = sub
            && let Some(op) = OpCode::from_type_byte(*ty)
            && op.reads_from_body()
        {
            return match self.handle_exchange(op, body, now, io) {
                Some(handled) => handled,
                None => self.handle_op(op, body, depth, now, io),
            };
        }
        self.handle_packet(Packet::parse(sub)?, depth, now, io);
        Ok(())
    }

    fn handle_packet(&mut self, packet: Packet<'_>, depth: u8, now: Timestamp, io: &mut SessionIo) {
        match packet {
            Packet::MultiPacket(multi) => self.handle_container(multi, depth, now, io),
            Packet::DataBundle(bundle) => self.handle_bundle(bundle, depth, now, io),
            Packet::Disconnect(d) => {
                if d.session_id == self.session_id {
                    self.end(d.reason, Ending::ByPeer, now, io);
                } else {
                    self.stats.ignored_packets += 1;
                }
            }
            Packet::Heartbeat => {
                if self.mode == SessionMode::Server {
                    self.owed.heartbeat = true;
                }
            }
            Packet::NetStatusRequest(request) => self.owed.net_status = Some(request),
            Packet::ReliableData {
                channel,
                sequence,
                payload,
            } => self.handle_reliable(channel, sequence, payload, false, now, io),
            Packet::ReliableDataFragment {
                channel,
                sequence,
                payload,
            } => self.handle_reliable(channel, sequence, payload, true, now, io),
            Packet::Acknowledge { channel, sequence } => {
                self.handle_ack(channel, sequence, false, now)
            }
            Packet::AcknowledgeAll { channel, sequence } => {
                self.handle_ack(channel, sequence, true, now)
            }
            Packet::Ordered {
                second,
                stamp,
                payload,
            } => self.handle_ordered(second, stamp, payload, io),
            Packet::ZeroEscaped(data) | Packet::Application(data) => {
                self.deliver_unreliable(data, Channel::Unreliable, io)
            }
            Packet::NetStatusResponse(reflect) if self.mode == SessionMode::Client => {
                self.handle_clock_reflect(&reflect, now)
            }
            Packet::NetStatusResponse(_)
            | Packet::PortAlive(_)
            | Packet::SessionRequest(_)
            | Packet::SessionResponse(_)
            | Packet::UnknownSender
            | Packet::RemapConnection(_) => self.stats.ignored_packets += 1,
        }
    }

    /// A data bundle outside a reliable payload: its items are cooked packets.
    fn handle_bundle(
        &mut self,
        bundle: DataBundle<'_>,
        depth: u8,
        now: Timestamp,
        io: &mut SessionIo,
    ) {
        if depth >= MAX_NESTING {
            return self.end(DisconnectReason::CorruptPacket, Ending::Announced, now, io);
        }
        for item in bundle.iter() {
            if item
                .and_then(|item| self.handle_sub(item, depth + 1, now, io))
                .is_err()
            {
                return self.end(DisconnectReason::CorruptPacket, Ending::Announced, now, io);
            }
            if self.state == SessionState::Terminated {
                return;
            }
        }
    }

    /// An ordered packet is delivered only if its stamp is 1 to 29,999 ahead of
    /// the last one delivered on that op code (`docs/protocol.md` §12.2); others
    /// are stale and counted.
    fn handle_ordered(&mut self, second: bool, stamp: u16, payload: &[u8], io: &mut SessionIo) {
        let last = &mut self.ordered_in[usize::from(second)];
        let fresh = last.is_none_or(|l| {
            let d = stamp.wrapping_sub(l);
            d != 0 && d < 30_000
        });
        if fresh {
            *last = Some(stamp);
            self.deliver_unreliable(payload, Channel::Ordered, io);
        } else {
            self.stats.stale_ordered_packets += 1;
        }
    }

    /// A client's ClockReflect: the answer to its ClockSync.
    fn handle_clock_reflect(&mut self, reflect: &NetStatusResponse, now: Timestamp) {
        let clock = self.clock_ms(now);
        if self
            .clock_sync
            .on_reflect(reflect, clock, self.stats.datagrams_received)
        {
            self.stats.clock_reflects_received += 1;
        } else {
            self.stats.ignored_packets += 1;
        }
    }

    fn handle_container(
        &mut self,
        multi: MultiPacket<'_>,
        depth: u8,
        now: Timestamp,
        io: &mut SessionIo,
    ) {
        if depth >= MAX_NESTING {
            return self.end(DisconnectReason::CorruptPacket, Ending::Announced, now, io);
        }
        for sub in multi.iter() {
            if sub
                .and_then(|sub| self.handle_sub(sub, depth + 1, now, io))
                .is_err()
            {
                return self.end(DisconnectReason::CorruptPacket, Ending::Announced, now, io);
            }
            // A sub-packet may have ended the session: the rest is not processed.
            if self.state == SessionState::Terminated {
                return;
            }
        }
    }

    fn handle_reliable(
        &mut self,
        channel: u8,
        sequence: u16,
        payload: &[u8],
        fragment: bool,
        now: Timestamp,
        io: &mut SessionIo,
    ) {
        let policy = self.ack_policy();
        let outcome = self
            .receiver(usize::from(channel))
            .on_packet(sequence, payload, fragment, now, policy, io);
        match outcome {
            Ok(()) => {}
            Err(RxError::Corrupt) => {
                self.end(DisconnectReason::CorruptPacket, Ending::Announced, now, io)
            }
            Err(RxError::Overflow) => self.end(
                DisconnectReason::ReliableOverflow,
                Ending::Announced,
                now,
                io,
            ),
        }
    }

    fn handle_ack(&mut self, channel: u8, sequence: u16, all: bool, now: Timestamp) {
        self.stats.acks_received += 1;
        let Some(sender) = self.senders.get_mut(usize::from(channel)) else {
            self.stats.ignored_packets += 1;
            return;
        };
        let outcome = if all {
            sender.on_ack_all(sequence, now, &mut self.rtt)
        } else {
            sender.on_ack(sequence, now, &mut self.rtt)
        };
        match outcome {
            AckOutcome::Invalid => self.stats.ignored_packets += 1,
            AckOutcome::Stale => {}
            AckOutcome::Released(packets) => {
                let srtt = self.rtt.srtt_nanos();
                if let Some(rtt) = self.rtt.take_sample() {
                    self.congestion.on_rtt(rtt, now, srtt);
                }
                self.congestion.on_acked(packets, now, srtt);
                if !all && let Some(sent) = sender.detect_losses(now, self.rtt.loss_delay()) {
                    self.congestion.on_lost(sent, now);
                }
                // Progress restarts the probe timer (RFC 9002 §6.2.1).
                sender.arm_probe(now, self.rtt.pto(self.params.peer_max_ack_delay));
            }
        }
    }

    fn deliver_unreliable(&mut self, data: &[u8], channel: Channel, io: &mut SessionIo) {
        let data = io.deliver(data, |_| {});
        self.stats.messages_delivered += 1;
        self.stats.bytes_delivered += data.len() as u64;
        io.emit(SessionEvent::DataReceived { data, channel });
    }

    fn handle_contextless(
        &mut self,
        packet: Packet<'_>,
        len: usize,
        now: Timestamp,
        io: &mut SessionIo,
    ) {
        match (packet, self.mode) {
            (Packet::SessionRequest(request), SessionMode::Server) => {
                self.handle_request(request, now, io)
            }
            (Packet::SessionRequest(request), SessionMode::Client) => {
                if self.state == SessionState::Negotiating {
                    let reason = if request.session_id == self.session_id {
                        DisconnectReason::ConnectingToSelf
                    } else {
                        DisconnectReason::ConnectError
                    };
                    self.end(reason, Ending::Silent, now, io);
                } else {
                    self.stats.ignored_packets += 1;
                }
            }
            (Packet::SessionResponse(response), SessionMode::Client) => {
                self.handle_response(response, now, io)
            }
            // Exactly `00 1D`: it carries no CRC, so a longer datagram that merely
            // starts like one (a corrupted ack, say) must not end the session.
            (Packet::UnknownSender, mode) if self.state == SessionState::Running && len == 2 => {
                self.unknown_sender(mode, now, io)
            }
            _ => self.stats.ignored_packets += 1,
        }
    }

    fn handle_request(&mut self, request: SessionRequest<'_>, now: Timestamp, io: &mut SessionIo) {
        if self.state == SessionState::Running {
            // A retransmitted request: answer again with the same parameters.
            if request.session_id == self.session_id {
                self.owed.response = true;
            } else {
                self.stats.ignored_packets += 1;
            }
            return;
        }
        let name_ok = match request.application_protocol {
            Some(name) => name == self.params.application_protocol.as_bytes(),
            None => self.params.application_protocol.is_empty(),
        };
        let version_ok = matches!(
            request.protocol_version,
            PROTOCOL_VERSION_2 | PROTOCOL_VERSION_3
        );
        if !(name_ok && version_ok) {
            self.end(DisconnectReason::ProtocolMismatch, Ending::Silent, now, io);
            return;
        }
        self.session_id = request.session_id;
        self.params.remote_udp_length = request.udp_length;
        let crc_length = self.params.crc_length.min(4);
        self.params.crc_seed = self.secret_seed;
        // Answered in the request's form: 21 bytes to a named request, 17 to the
        // 14-byte one.
        let v3_form = request.application_protocol.is_some();
        let (bytes, passes) = match self.offer_passes(v3_form) {
            Ok(offer) => offer,
            Err(e) => return self.refuse_passes(e, now, io),
        };
        self.framing =
            Framing::new(self.secret_seed, crc_length, bytes.compression).with_passes(passes);
        self.params.is_compression_enabled = bytes.compression;
        self.response = Some(SessionResponse {
            session_id: self.session_id,
            crc_seed: self.secret_seed,
            crc_length,
            compression: bytes.byte_11,
            encryption_pass_1: bytes.byte_12,
            udp_length: self.params.udp_length,
            protocol_version: v3_form.then_some(PROTOCOL_VERSION_3),
        });
        self.owed.response = true;
        self.state = SessionState::Running;
        self.running_since = Some(now);
        self.open_on_next_packet = true;
        self.last_received = now;
    }

    fn handle_response(&mut self, response: SessionResponse, now: Timestamp, io: &mut SessionIo) {
        if self.state != SessionState::Negotiating || response.session_id != self.session_id {
            self.stats.ignored_packets += 1;
            return;
        }
        if response
            .protocol_version
            .is_some_and(|v| v != PROTOCOL_VERSION_3)
            || response.crc_length > 4
        {
            self.end(DisconnectReason::ProtocolMismatch, Ending::Silent, now, io);
            return;
        }
        self.params.remote_udp_length = response.udp_length;
        self.params.crc_length = response.crc_length;
        self.params.crc_seed = response.crc_seed;
        let (compression, passes) = match self.adopt_passes(&response) {
            Ok(adopted) => adopted,
            Err(e) => return self.refuse_passes(e, now, io),
        };
        self.params.is_compression_enabled = compression;
        self.framing =
            Framing::new(response.crc_seed, response.crc_length, compression).with_passes(passes);
        self.state = SessionState::Running;
        self.running_since = Some(now);
        self.owed.request = false;
        // Completes the server's side at once: it opens the session on the first
        // packet after its response, and evicts half-open sessions under a flood.
        // Rides in the same datagram as any data sent in this turn.
        self.owed.heartbeat = true;
        self.last_received = now;
        io.emit(SessionEvent::Opened);
    }

    /// Runs the timers due at `now`: connect retries and timeouts, inactivity,
    /// heartbeats. Retransmissions and delayed acks go out in the next
    /// [`SoeSession::flush`]. A session quiet for a second also gives back the
    /// buffers its channels grew.
    pub fn handle_timeout(&mut self, now: Instant, io: &mut SessionIo) {
        self.run_due_timers(now, io);
    }

    /// [`SoeSession::handle_timeout`], telling whether any deadline had passed: one
    /// that has not (it moved later since the caller's timer was set) needs no
    /// flush either, and the same walk over the deadlines gives the new one.
    pub(crate) fn run_due_timers(&mut self, now: Instant, io: &mut SessionIo) -> TimerRun {
        let now = self.timestamp(now);
        if now.saturating_duration_since(self.last_received) >= QUIET_RELEASE {
            for s in self.senders.iter_mut() {
                s.release_memory();
            }
            for r in self.receivers.iter_mut() {
                r.release_memory();
            }
        }
        let mut due = Due::default();
        let mut earliest = None;
        self.visit_deadlines(|name, at| {
            if at <= now {
                due.mark(name);
            }
            earliest = Timestamp::earliest(earliest, Some(at));
        });
        if !due.any {
            // Nothing below would change: `earliest` is `next_deadline`.
            return TimerRun::NotDue(earliest.map(|t| t.to_instant(self.epoch)));
        }
        // In the table's order: an ending beats what else is due.
        if due.connect_timeout {
            self.end(DisconnectReason::ConnectFail, Ending::Silent, now, io);
        } else if due.connect_retry {
            self.owed.request = true;
        } else if due.inactivity {
            self.end(DisconnectReason::Timeout, Ending::Silent, now, io);
        } else {
            if due.heartbeat {
                self.owed.heartbeat = true;
                self.last_heartbeat = Some(now);
            }
            if due.clock_sync {
                self.owed.clock_sync = true;
            }
            if due.port_alive {
                self.owed.port_alive = true;
                self.last_port_alive = Some(now);
            }
        }
        // Retransmissions and delayed acks go out in the next flush.
        TimerRun::Due
    }

    /// Writes every datagram due at `now` into `io`: handshake packets, acks,
    /// heartbeats, retransmissions, new reliable packets and unreliable payloads,
    /// coalesced as configured.
    pub fn flush(&mut self, now: Instant, io: &mut SessionIo) {
        self.flush_at(self.timestamp(now), io);
    }

    fn flush_at(&mut self, now: Timestamp, io: &mut SessionIo) {
        if !self.flush_handshake(now, io) {
            return;
        }
        let srtt = self.rtt.srtt_nanos();
        let times = LossTimes {
            rto: self.rtt.rto_with(self.params.peer_max_ack_delay),
            pto: self.rtt.pto(self.params.peer_max_ack_delay),
            loss_delay: self.rtt.loss_delay(),
        };
        self.congestion.refill(now, srtt);
        let data_ready = self.data_ready(now);
        let policy = self.ack_policy();
        let rules = self.packet_rules();
        let give_up = (!self.closing && !self.params.unacknowledged_timeout.is_zero())
            .then_some(self.params.unacknowledged_timeout);
        let control = self.take_owed_control(now);
        let mut round = FlushRound::default();
        {
            let mut asm = assembler(&self.params, &self.framing, io, true);
            for r in self.receivers.iter_mut() {
                r.write_acks(now, data_ready, policy, &mut asm);
            }
            control.write(&mut asm);
            round.resend(
                &mut self.senders,
                (now, times, give_up),
                self.params.max_resends_per_flush,
                &mut self.congestion,
                &mut asm,
            );
            if !round.gave_up {
                round.send_new(
                    &mut self.senders,
                    (now, times, rules),
                    &mut self.congestion,
                    &mut asm,
                );
                self.unreliable
                    .write(self.params.coalesce_unreliable, &mut asm);
            }
            asm.finish();
            round.datagrams = asm.datagrams;
            round.bytes = asm.bytes;
        }
        self.unreliable.buf.clear();
        self.unreliable.items.clear();
        self.stats.clock_syncs_sent += u64::from(control.clock_sync.is_some());
        self.account(&round, rules, srtt, now, io);
    }

    /// The handshake and remap part of a flush, then PortAlive; whether the
    /// session runs (only a running session sends anything else).
    fn flush_handshake(&mut self, now: Timestamp, io: &mut SessionIo) -> bool {
        if self.state == SessionState::Terminated {
            return false;
        }
        if self.owed.request || self.owed.response {
            self.write_handshake(now, io);
        }
        if std::mem::take(&mut self.owed.remap) {
            self.write_remap(now, io);
        }
        if self.state != SessionState::Running {
            return false;
        }
        if std::mem::take(&mut self.owed.port_alive) {
            self.write_port_alive(io);
        }
        true
    }

    /// Whether this flush sends anything besides acks (acks may then ride along
    /// instead of waiting).
    fn data_ready(&self, now: Timestamp) -> bool {
        self.owed.heartbeat
            || self.owed.clock_sync
            || self.owed.net_status.is_some()
            || !self.unreliable.items.is_empty()
            || self
                .senders
                .iter()
                .any(|s| s.can_send() || s.lost_pending() || s.deadline().is_some_and(|t| now >= t))
    }

    /// How the senders cut packets this flush.
    fn packet_rules(&self) -> PacketRules {
        let room = self.reliable_room();
        PacketRules {
            room,
            coalesce: self.params.coalesce,
            bundle_room: match self.params.multi_length {
                MultiLength::OneByte => 0xFF - RELIABLE_HEADER_LEN,
                MultiLength::Varint => room,
            },
        }
    }

    /// The control packets owed to the peer, taken for this flush.
    fn take_owed_control(&mut self, now: Timestamp) -> OwedControl {
        let net_status = self
            .owed
            .net_status
            .take()
            .map(|r| self.net_status_reply(r, now));
        let heartbeat = std::mem::take(&mut self.owed.heartbeat);
        let clock_sync = std::mem::take(&mut self.owed.clock_sync).then(|| {
            let clock = self.clock_ms(now);
            // The sync counts itself among the datagrams sent.
            let sent = self.stats.datagrams_sent + 1;
            self.clock_sync.request(
                now,
                clock,
                sent,
                self.stats.datagrams_received,
                self.rtt.srtt(),
            )
        });
        OwedControl {
            heartbeat,
            net_status,
            clock_sync,
        }
    }

    /// Counts what a flush sent and feeds its losses and timeouts to the RTT
    /// estimator and the congestion controller; ends the session if a packet went
    /// unacknowledged for too long.
    fn account(
        &mut self,
        round: &FlushRound,
        rules: PacketRules,
        srtt: Option<u64>,
        now: Timestamp,
        io: &mut SessionIo,
    ) {
        self.stats.datagrams_sent += round.datagrams;
        self.stats.bytes_sent += round.bytes;
        if round.datagrams > 0 {
            self.last_sent = now;
        }
        self.stats.reliable_packets_sent += round.sent;
        self.stats.reliable_packets_resent += round.resent;
        self.paced_until = round
            .paced
            .then(|| self.congestion.next_send(now, rules.room, srtt));
        if let Some(sent) = round.lost_sent {
            self.congestion.on_lost(sent, now);
        }
        if round.timed_out {
            let repeated = self.rtt.backed_off();
            self.rtt.backoff();
            self.congestion.on_timeout(now, repeated);
        }
        if round.gave_up {
            self.end(
                DisconnectReason::UnacknowledgedTimeout,
                Ending::Announced,
                now,
                io,
            );
        }
    }

    /// Payload bytes a reliable packet may carry after its sequence. With varint
    /// multi-packets, room is left for one cumulative ack to ride along.
    fn reliable_room(&self) -> usize {
        let max_packet = self.send_datagram_len() - self.framing.overhead();
        let piggyback = match (self.params.coalesce, self.params.multi_length) {
            // Multi header, a 3-byte length for the data packet, a 1+4-byte ack.
            (true, MultiLength::Varint) => OP_CODE_LEN + 3 + 5,
            _ => 0,
        };
        max_packet
            .saturating_sub(piggyback + RELIABLE_HEADER_LEN)
            .max(8)
    }

    fn net_status_reply(&self, request: NetStatusRequest, now: Timestamp) -> NetStatusResponse {
        NetStatusResponse {
            timestamp: request.timestamp,
            // The low 32 bits of the millisecond clock, as the wire carries it.
            server_stamp: self.clock_ms(now) as u32,
            your_sent: request.our_sent,
            your_received: request.our_received,
            our_sent: self.stats.datagrams_sent,
            our_received: self.stats.datagrams_received,
        }
    }

    /// The server says it does not know our address. A client whose NAT mapping
    /// moved (or that moved itself) proves it owns the session from the new
    /// address with a RemapConnection and carries on; after
    /// [`MAX_REMAP_ATTEMPTS`] answered only by more UnknownSenders (the server
    /// has no such session any more, or refuses remaps), the session ends with
    /// `UnreachableConnection`, at once rather than after the inactivity timeout.
    fn unknown_sender(&mut self, mode: SessionMode, now: Timestamp, io: &mut SessionIo) {
        if mode == SessionMode::Client && self.params.remap_on_unknown_sender {
            // Every datagram of a burst draws its own UnknownSender: one attempt per
            // round trip counts.
            let interval = self.rtt.rto().min(REMAP_INTERVAL);
            if self.last_remap.is_some_and(|t| now < t + interval) {
                return;
            }
            if self.remap_attempts < MAX_REMAP_ATTEMPTS {
                self.remap_attempts += 1;
                self.last_remap = Some(now);
                self.owed.remap = true;
                return;
            }
        }
        self.end(
            DisconnectReason::UnreachableConnection,
            Ending::Silent,
            now,
            io,
        );
    }

    /// PortAlive: raw (no CRC, no compression flag), two bytes; the runtimes send
    /// it with a small IP TTL ([`crate::protocol::PORT_ALIVE_TTL`]) so it keeps
    /// the NAT mapping without reaching the server.
    fn write_port_alive(&mut self, io: &mut SessionIo) {
        let mut asm = assembler(&self.params, &self.framing, io, false);
        asm.push_contextless(&OpCode::PortAlive.to_bytes());
        let (d, b) = (asm.datagrams, asm.bytes);
        self.stats.port_alives_sent += 1;
        self.stats.datagrams_sent += d;
        self.stats.bytes_sent += b;
    }

    /// The session's millisecond clock since its creation (ClockSync stamps,
    /// NetStatus replies).
    fn clock_ms(&self, now: Timestamp) -> u64 {
        now.saturating_duration_since(Timestamp::ZERO).as_millis() as u64
    }

    /// The network reported the peer's address unreachable (an ICMP
    /// port-unreachable for a datagram sent there). The first report since the
    /// peer was last heard starts the `unreachable_grace`; a report after it has
    /// passed ends the session with `IcmpError`. Ignored during the handshake and
    /// without a grace configured.
    pub fn handle_unreachable(&mut self, now: Instant, io: &mut SessionIo) {
        let now = self.timestamp(now);
        self.stats.unreachable_reports += 1;
        let Some(grace) = self.params.unreachable_grace else {
            return;
        };
        if self.state != SessionState::Running {
            return;
        }
        match self.unreachable_since {
            None => self.unreachable_since = Some(now),
            Some(since) if now.saturating_duration_since(since) >= grace => {
                self.end(DisconnectReason::IcmpError, Ending::Silent, now, io)
            }
            Some(_) => {}
        }
    }

    fn write_remap(&mut self, now: Timestamp, io: &mut SessionIo) {
        let mut bytes = [0u8; RemapConnection::LEN];
        Packet::RemapConnection(RemapConnection {
            session_id: self.session_id,
            crc_seed: self.framing.crc_seed(),
        })
        .emit(&mut bytes);
        let mut asm = assembler(&self.params, &self.framing, io, false);
        asm.push_contextless(&bytes);
        let (d, b) = (asm.datagrams, asm.bytes);
        self.stats.datagrams_sent += d;
        self.stats.bytes_sent += b;
        self.last_sent = now;
    }

    /// The passes a server runs and how its response names them, in the form it
    /// answers in (pass 0 is refused where byte 11 is the compression flag).
    fn offer_passes(&self, v3_form: bool) -> Result<(PassBytes, Option<Passes>), UnsupportedPass> {
        let p = &self.params;
        let [pass_0, pass_1] = p.encryption_passes;
        let code = |m| {
            p.pass_codes
                .code(m)
                .ok_or(UnsupportedPass::Unexpressible(m))
        };
        let (byte_11, compression) = if p.pass_codes.pass_0_in_byte_11(v3_form) {
            (code(pass_0)?, false)
        } else if pass_0 != EncryptMethod::None {
            return Err(UnsupportedPass::Unexpressible(pass_0));
        } else {
            (u8::from(p.is_compression_enabled), p.is_compression_enabled)
        };
        let bytes = PassBytes {
            byte_11,
            byte_12: code(pass_1)?,
            compression,
        };
        Ok((bytes, self.passes([pass_0, pass_1])?))
    }

    /// What a client runs after `response`: the compression flag and the passes it
    /// names, which must be ones this side can run.
    fn adopt_passes(
        &mut self,
        response: &SessionResponse,
    ) -> Result<(bool, Option<Passes>), UnsupportedPass> {
        let codes = self.params.pass_codes;
        let method = |c| codes.method(c).ok_or(UnsupportedPass::UnknownCode(c));
        let (pass_0, compression) = if codes.pass_0_in_byte_11(response.protocol_version.is_some())
        {
            (method(response.compression)?, false)
        } else {
            (EncryptMethod::None, response.compression != 0)
        };
        let pass_1 = method(response.encryption_pass_1)?;
        let passes = self.passes([pass_0, pass_1])?;
        self.params.encryption_passes = [pass_0, pass_1];
        Ok((compression, passes))
    }

    /// The passes `methods` for this session, once its ids and lengths are known.
    fn passes(&self, methods: [EncryptMethod; 2]) -> Result<Option<Passes>, UnsupportedPass> {
        let p = &self.params;
        Passes::new(
            methods,
            [p.user_supplied.as_ref(), p.user_supplied_2.as_ref()],
            PassContext::new(self.session_id, p.crc_seed),
            p.udp_length.max(p.remote_udp_length) as usize,
        )
    }

    /// Ends a handshake over passes this side cannot name or run.
    fn refuse_passes(&mut self, why: UnsupportedPass, now: Timestamp, io: &mut SessionIo) {
        tracing::debug!(session_id = self.session_id, %why, "refused encryption passes");
        self.stats.refused_passes += 1;
        self.end(DisconnectReason::ProtocolMismatch, Ending::Silent, now, io);
    }

    fn write_handshake(&mut self, now: Timestamp, io: &mut SessionIo) {
        let mut bytes = [0u8; 512];
        let len = if std::mem::take(&mut self.owed.request) {
            if self.state != SessionState::Negotiating {
                return;
            }
            self.last_request = Some(now);
            let named = self.params.names_protocol();
            let request = SessionRequest {
                protocol_version: if self.params.protocol_version >= PROTOCOL_VERSION_3 {
                    PROTOCOL_VERSION_3
                } else {
                    PROTOCOL_VERSION_2
                },
                session_id: self.session_id,
                udp_length: self.params.udp_length,
                application_protocol: named.then_some(self.params.application_protocol.as_bytes()),
            };
            if request.encoded_len() > bytes.len() {
                return self.end(DisconnectReason::ProtocolMismatch, Ending::Silent, now, io);
            }
            Packet::SessionRequest(request).emit(&mut bytes)
        } else {
            self.owed.response = false;
            match self.response {
                Some(response) => Packet::SessionResponse(response).emit(&mut bytes),
                None => return,
            }
        };
        let mut asm = assembler(&self.params, &self.framing, io, false);
        asm.push_contextless(&bytes[..len]);
        let (d, b) = (asm.datagrams, asm.bytes);
        self.stats.datagrams_sent += d;
        self.stats.bytes_sent += b;
        self.last_sent = now;
    }
}
