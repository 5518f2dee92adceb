//! The multiplexer: many sessions over one socket ([`SoeMultiplexer`]).

mod ids;

#[cfg(test)]
mod conversation_tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use foldhash::fast::RandomState;
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use crate::protocol::{DisconnectReason, OpCode, Packet, SessionRequest};
use crate::session::{
    ApplicationParameters, Channel, EnqueueError, SessionEvent, SessionIo, SessionMode,
    SessionParameters, SessionState, SessionStats, SoeSession, TimerRun,
};

use self::ids::IdSource;

/// An address that keys a session.
///
/// `same_host` guards port remapping: a session may move to another port of the
/// same host, never to another host.
pub trait RemoteAddr: Clone + Eq + Hash + std::fmt::Debug {
    /// Whether both addresses belong to the same host (ignoring ports).
    fn same_host(&self, other: &Self) -> bool;
}

impl RemoteAddr for SocketAddr {
    fn same_host(&self, other: &Self) -> bool {
        self.ip() == other.ip()
    }
}

/// Multiplexer configuration. The first four fields follow `soe-protocol` 2.3.0.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    /// Parameters every new session starts from.
    pub default_session_params: SessionParameters,
    /// Parameters shared by all sessions (RC4 key).
    pub app_params: ApplicationParameters,
    /// Let a server session move to a new port of the same host when the client
    /// proves ownership with its session id and CRC seed (RemapConnection), as
    /// after a NAT rebinding. On by default (see [`SoeMultiplexer`], "Remapping").
    pub allow_port_remaps: bool,
    /// Let a server session move to another address too (CGNAT pools, a phone
    /// going from Wi-Fi to cellular). Off by default: see the
    /// [`SoeMultiplexer`] ("Remapping") for what it trusts.
    pub allow_address_remaps: bool,
    /// Seed for session ids and CRC seeds. `None` (the default) draws them from the
    /// OS CSPRNG; `Some` makes them deterministic, for tests and simulations only.
    pub rng_seed: Option<u64>,
    /// Most sessions at once (default 65 536).
    pub max_sessions: usize,
    /// Most half-open server sessions at once (default 16 384); the oldest is evicted
    /// to admit a new one. Size it above the largest legitimate connect burst: a
    /// session evicted before its client's first packet is lost to that client.
    pub max_half_open_sessions: usize,
    /// Answer contextual datagrams from unknown addresses with UnknownSender
    /// (`00 1D`), as UdpLibrary does, at most `unknown_sender_replies_per_sec` a
    /// second. On by default: a client whose NAT mapping moved learns it at once
    /// (and remaps), and a client of a session the server already ended fails fast
    /// instead of after its inactivity timeout.
    pub reply_unknown_sender: bool,
    /// Cap on UnknownSender replies, and on refused RemapConnections, per second
    /// (default 256 each): neither can be used to flood.
    pub unknown_sender_replies_per_sec: u32,
    /// Bytes all sessions together may hold for their peers: out-of-order packets
    /// waiting for a gap and partly reassembled messages (default 256 MiB). The
    /// per-session caps bound one peer; this bounds many. Past it, out-of-order
    /// packets are dropped unacknowledged (their sender repeats them) and a fragment
    /// that would grow a reassembly ends its session with `ReliableOverflow`.
    pub max_buffered_bytes: usize,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            default_session_params: SessionParameters::default(),
            app_params: ApplicationParameters::default(),
            allow_port_remaps: true,
            allow_address_remaps: false,
            rng_seed: None,
            max_sessions: 65_536,
            max_half_open_sessions: 16_384,
            reply_unknown_sender: true,
            unknown_sender_replies_per_sec: 256,
            max_buffered_bytes: 256 << 20,
        }
    }
}

/// What happened to a session, tagged with its remote address.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketEvent<A> {
    /// A session is established.
    SessionOpened {
        /// The peer.
        remote: A,
    },
    /// A message arrived.
    DataReceived {
        /// The peer.
        remote: A,
        /// The message.
        data: Bytes,
        /// The channel it arrived on.
        channel: Channel,
    },
    /// A session ended.
    SessionClosed {
        /// The peer.
        remote: A,
        /// Why.
        reason: DisconnectReason,
    },
    /// A peer reached the server from a new address (its NAT mapping moved) and
    /// proved it owns the session: from now on the session's events carry `new`,
    /// and commands for it name `new`. Not in `soe-protocol`, which moves sessions
    /// without saying so; see [`SoeMultiplexer`] ("Remapping").
    SessionRemapped {
        /// The address the session had.
        old: A,
        /// The address it has now.
        new: A,
    },
}

/// Why a session was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// A session with that address exists already.
    #[error("a session with this address exists")]
    AlreadyConnected,
    /// `max_sessions` reached.
    #[error("session limit reached")]
    TooManySessions,
    /// The command queue of the shard that owns the address is full (from a
    /// `ShardContext` for another shard's address): back off and retry.
    #[error("command queue of the owning shard is full")]
    CommandQueueFull,
    /// The server is stopping.
    #[error("the server is stopping")]
    Stopped,
}

/// Multiplexer counters. Session counters include sessions that have ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MuxStats {
    /// Sum of every session's counters.
    pub sessions: SessionStats,
    /// Sessions live now.
    pub sessions_live: u64,
    /// Sessions that reached `SessionOpened`.
    pub sessions_opened: u64,
    /// Sessions ended, indexed by [`DisconnectReason`] wire value.
    pub sessions_closed: [u64; 17],
    /// SessionRequests dropped because `max_sessions` was reached.
    pub refused_session_limit: u64,
    /// Half-open sessions evicted to admit newer SessionRequests.
    pub evicted_half_open: u64,
    /// SessionRequests refused for a protocol name or version mismatch.
    pub refused_protocol_mismatch: u64,
    /// SessionRequests too short or otherwise unreadable: dropped before any
    /// session exists for them.
    pub refused_malformed: u64,
    /// SessionRequests dropped unanswered while admission was closed (overload).
    pub refused_admission_closed: u64,
    /// SessionRequests refused while draining: answered with a SessionResponse
    /// and a Disconnect (`ConnectionRefused`), as UdpLibrary refuses.
    pub refused_draining: u64,
    /// Datagrams from addresses without a session (other than SessionRequest).
    pub unknown_sender_datagrams: u64,
    /// Sessions moved to a new port.
    pub remaps: u64,
    /// RemapConnection requests refused.
    pub remaps_refused: u64,
    /// ICMP port-unreachable reports for addresses without a session (those for
    /// sessions count in `sessions.unreachable_reports`).
    pub unreachable_unknown: u64,
    /// Gauge: entries in the timer heap now (about one per live session).
    pub timer_entries: u64,
    /// Session timers that ran ([`SoeSession::handle_timeout`]): something was due.
    pub timers_run: u64,
    /// Timer entries that came due after their session's deadline had moved later
    /// (the ack a retransmission waited for arrived, a delayed ack rode on data):
    /// moved to the new deadline without running the session or flushing it.
    pub timers_moved: u64,
    /// Gauge: slots of the session table now (live and free); it shrinks back
    /// after a flood of short-lived sessions.
    pub table_slots: u64,
}

impl MuxStats {
    /// Adds every counter of `other` into `self`.
    pub fn add(&mut self, other: &Self) {
        self.sessions.add(&other.sessions);
        self.sessions_live += other.sessions_live;
        self.sessions_opened += other.sessions_opened;
        for (a, b) in self.sessions_closed.iter_mut().zip(other.sessions_closed) {
            *a += b;
        }
        self.refused_session_limit += other.refused_session_limit;
        self.evicted_half_open += other.evicted_half_open;
        self.refused_protocol_mismatch += other.refused_protocol_mismatch;
        self.refused_malformed += other.refused_malformed;
        self.refused_admission_closed += other.refused_admission_closed;
        self.refused_draining += other.refused_draining;
        self.unknown_sender_datagrams += other.unknown_sender_datagrams;
        self.remaps += other.remaps;
        self.remaps_refused += other.remaps_refused;
        self.unreachable_unknown += other.unreachable_unknown;
        self.timer_entries += other.timer_entries;
        self.timers_run += other.timers_run;
        self.timers_moved += other.timers_moved;
        self.table_slots += other.table_slots;
    }

    /// Sessions closed for `reason`.
    pub fn closed_by(&self, reason: DisconnectReason) -> u64 {
        self.sessions_closed[usize::from(reason.as_u16())]
    }
}

#[derive(Debug)]
struct Entry<A> {
    addr: A,
    session: SoeSession,
    scheduled: Option<Instant>,
    dirty: bool,
    opened: bool,
    half_open: bool,
}

/// The lane a server session's CRC seed names (see
/// [`SoeMultiplexer::set_seed_lane`]): a sharded server's shard index.
pub fn seed_lane(crc_seed: u32, lanes: u32) -> u32 {
    crc_seed % lanes.max(1)
}

/// A session on its way from one multiplexer to another (see
/// [`SoeMultiplexer::take_session`]).
#[derive(Debug)]
pub struct SessionTransfer<A: RemoteAddr> {
    entry: Box<Entry<A>>,
}

impl<A: RemoteAddr> SessionTransfer<A> {
    /// The address the session is bound to.
    pub fn remote(&self) -> &A {
        &self.entry.addr
    }
}

/// Session removals between checks whether the containers should shrink.
const SHRINK_CHECK_EVERY: usize = 1024;

/// Shrinks `v` when at most a quarter of its capacity is in use.
fn shrink_vec<T>(v: &mut Vec<T>) {
    if v.capacity() > 4 * v.len() + SHRINK_CHECK_EVERY {
        v.shrink_to(v.len() * 3 / 2);
    }
}

/// Many sessions over one socket, keyed by remote address.
///
/// [`SoeMultiplexer`] owns the sessions of one socket (or one shard). It is sans-IO:
/// the caller feeds datagrams with their source address and the time, and drains
/// datagrams to send and events to handle.
///
/// # Driving it
/// 1. For each received datagram: [`SoeMultiplexer::process_incoming`].
/// 2. Application commands: [`SoeMultiplexer::connect`],
///    [`SoeMultiplexer::enqueue_data_on`], [`SoeMultiplexer::terminate`].
/// 3. Once per loop turn: [`SoeMultiplexer::run_tick`] runs the timers that are due
///    and flushes every session touched since the last call. This is where datagrams
///    are produced, so messages enqueued in one turn share datagrams.
/// 4. Send [`SoeMultiplexer::outgoing`] and [`SoeMultiplexer::consume_outgoing`]
///    what went out; handle [`SoeMultiplexer::poll_event`].
/// 5. Sleep until [`SoeMultiplexer::next_deadline`] or the next datagram.
///
/// Timers live in a heap keyed by each session's next deadline, so a tick costs
/// O(sessions due · log n), not O(sessions). Outgoing datagrams accumulate in one
/// reusable buffer and delivered messages are slices of a shared arena: the steady
/// state does not allocate per datagram.
///
/// # Limits
/// * `max_sessions` sessions; further SessionRequests are dropped and counted.
/// * `max_half_open_sessions` server sessions that answered a request but have not
///   heard from the client since. When full, the oldest half-open session makes room
///   for the new request (counted as `evicted_half_open`): a flood of forged
///   SessionRequests churns this pool instead of locking clients out. Half-open
///   sessions otherwise expire with the inactivity timeout, as in `soe-protocol`.
/// * Per-session caps: see [`SessionParameters`].
///
/// # Remapping
/// A client behind a NAT may reach the server from a new port (or address) in the
/// middle of a session. The server answers its first datagrams with UnknownSender;
/// the client proves it owns the session with a RemapConnection carrying the
/// session id (the client's random choice) and the CRC seed (the server's), and the
/// session moves to the new address. Both values are secret to anyone off the
/// path: guessing them takes about 2^60 tries with soe-uring on both sides (both
/// from a CSPRNG; a sharded server spends a few seed bits on the shard number),
/// and refused attempts are capped at `unknown_sender_replies_per_sec`, so blind
/// guessing does not finish in the life of a session. Anyone on the path sees both
/// values, but can already read and inject the session's traffic. Moving to the
/// same host needs nothing more; moving to another host is also what a hijacker
/// off the path would want, so it is a separate switch (`allow_address_remaps`),
/// off by default: turn it on where players switch networks (mobile, CGNAT) and a
/// client's session ids are random (ids from a predictable generator, as in
/// `soe-protocol`, leave only the seed's bits).
///
/// A sharded server spreads sessions by address, so the session's shard is
/// recorded in its CRC seed ([`SoeMultiplexer::set_seed_lane`], [`seed_lane`]): a
/// RemapConnection that arrives elsewhere is sent to that shard, which moves the
/// session ([`SoeMultiplexer::take_session`]) to the shard that owns the new
/// address ([`SoeMultiplexer::adopt_session`]).
///
/// # Events
/// Per session, `SessionOpened` comes before any `DataReceived` and `SessionClosed`
/// after all of them. A server session the application never saw opened (a
/// rejected handshake, an expired half-open session) closes silently; a client
/// session always reports its `SessionClosed` (e.g. `ConnectFail`).
#[derive(Debug)]
pub struct SoeMultiplexer<A: RemoteAddr> {
    config: SocketConfig,
    /// Keyed by peer-chosen addresses: a randomly seeded hasher.
    index: HashMap<A, u32, RandomState>,
    by_credentials: HashMap<(u32, u32), A, RandomState>,
    /// Boxed, so a free slot costs a pointer and the table can shrink after a flood.
    slots: Vec<Option<Box<Entry<A>>>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    dirty: Vec<u32>,
    io: SessionIo,
    out_addrs: Vec<A>,
    events: VecDeque<SocketEvent<A>>,
    ids: IdSource,
    half_open: usize,
    /// Half-open sessions in admission order (entries may be stale).
    half_open_order: VecDeque<(u32, u32)>,
    stats: MuxStats,
    retired: SessionStats,
    /// Whether SessionRequests from new addresses open sessions.
    admitting: bool,
    /// Whether SessionRequests are refused for good (shutting down).
    draining: bool,
    /// Where a refused request's session writes its two datagrams.
    refusal_io: Option<Box<SessionIo>>,
    /// New server sessions get CRC seeds ≡ `lane.0` (mod `lane.1`).
    lane: (u32, u32),
    /// Addresses sessions moved to since the last `drain_remapped`.
    remapped: Vec<A>,
    /// Token bucket for UnknownSender replies and refused remaps: tokens, and when
    /// it was last refilled.
    reply_tokens: f64,
    reply_refill: Option<Instant>,
    /// Sessions removed since the containers were last checked for shrinking.
    removed_since_shrink: usize,
    /// Table slots and timer entries given back since `take_released`.
    released: usize,
}

impl<A: RemoteAddr> SoeMultiplexer<A> {
    /// An empty multiplexer.
    pub fn new(config: SocketConfig) -> Self {
        let ids = IdSource::new(config.rng_seed);
        let budget = config.max_buffered_bytes;
        Self {
            config,
            index: HashMap::default(),
            by_credentials: HashMap::default(),
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            io: SessionIo::with_buffer_budget(budget),
            out_addrs: Vec::new(),
            events: VecDeque::new(),
            ids,
            half_open: 0,
            half_open_order: VecDeque::new(),
            stats: MuxStats::default(),
            retired: SessionStats::default(),
            admitting: true,
            draining: false,
            refusal_io: None,
            removed_since_shrink: 0,
            released: 0,
            lane: (0, 1),
            remapped: Vec::new(),
            reply_tokens: 0.0,
            reply_refill: None,
        }
    }

    /// Makes every new server session's CRC seed name lane `lane` of `lanes`
    /// ([`seed_lane`]): a sharded server passes its shard index and count, so any
    /// shard can tell whose session a RemapConnection is for.
    pub fn set_seed_lane(&mut self, lane: u32, lanes: u32) {
        let lanes = lanes.max(1);
        self.lane = (lane % lanes, lanes);
    }

    /// The addresses sessions moved to since the last call (RemapConnection).
    pub fn drain_remapped(&mut self) -> std::vec::Drain<'_, A> {
        self.remapped.drain(..)
    }

    /// Takes a session out of this multiplexer, with its state, timers to come and
    /// counters, to hand to another with [`SoeMultiplexer::adopt_session`]. No event
    /// is produced: for the application the session simply goes on.
    pub fn take_session(&mut self, remote: &A) -> Option<SessionTransfer<A>> {
        let slot = *self.index.get(remote)?;
        let entry = self.slots[slot as usize].take()?;
        self.index.remove(remote);
        if entry.half_open {
            self.half_open -= 1;
        }
        let credentials = (entry.session.session_id(), entry.session.crc_seed());
        if self.by_credentials.get(&credentials) == Some(&entry.addr) {
            self.by_credentials.remove(&credentials);
        }
        self.io.held = self.io.held.saturating_sub(entry.session.buffered_bytes());
        self.generations[slot as usize] = self.generations[slot as usize].wrapping_add(1);
        self.free.push(slot);
        self.removed_since_shrink += 1;
        Some(SessionTransfer { entry })
    }

    /// Ends a session [`SoeMultiplexer::adopt_session`] could not take: its
    /// `SessionClosed` (with `NewConnectionAttempt`: another session has its
    /// address) goes to the application; its peer hears nothing and times out.
    pub fn reject_session(&mut self, transfer: SessionTransfer<A>) {
        let reason = DisconnectReason::NewConnectionAttempt;
        self.retired.add(&transfer.entry.session.stats());
        self.stats.sessions_closed[usize::from(reason.as_u16())] += 1;
        self.events.push_back(SocketEvent::SessionClosed {
            remote: transfer.entry.addr,
            reason,
        });
    }

    /// Takes over a session another multiplexer gave up with
    /// [`SoeMultiplexer::take_session`]. It comes back when a session with its
    /// address exists here already or `max_sessions` is reached.
    pub fn adopt_session(
        &mut self,
        transfer: SessionTransfer<A>,
    ) -> Result<(), SessionTransfer<A>> {
        let addr = transfer.entry.addr.clone();
        if self.index.contains_key(&addr) || self.index.len() >= self.config.max_sessions {
            return Err(transfer);
        }
        let mut entry = transfer.entry;
        // Timers, the flush list and the half-open count are this multiplexer's:
        // the next flush schedules the session here.
        entry.scheduled = None;
        entry.dirty = false;
        entry.half_open = false;
        self.io.held += entry.session.buffered_bytes();
        let credentials = (entry.session.session_id(), entry.session.crc_seed());
        let opened = entry.opened;
        let slot = self.insert_entry(addr.clone(), entry);
        if opened {
            self.by_credentials.insert(credentials, addr);
        }
        self.mark(slot);
        Ok(())
    }

    /// Opens or closes admission: while closed, SessionRequests from addresses
    /// without a session are dropped unanswered and counted in
    /// [`MuxStats::refused_admission_closed`]; live sessions are served as before.
    /// A server closes it under overload, so that its sessions keep their service.
    pub fn set_admitting(&mut self, open: bool) {
        self.admitting = open;
    }

    /// Whether SessionRequests open sessions (see [`SoeMultiplexer::set_admitting`]).
    pub fn is_admitting(&self) -> bool {
        self.admitting
    }

    /// Starts (or ends) draining, before a shutdown: live sessions are served as
    /// before, while every SessionRequest from a new address is refused the way
    /// UdpLibrary refuses one, with a SessionResponse followed by a Disconnect
    /// (`ConnectionRefused`), so the client learns at once instead of retrying
    /// until its connect timeout. Counted in [`MuxStats::refused_draining`]; the
    /// replies share the rate limit of UnknownSender replies. Independent of
    /// [`SoeMultiplexer::set_admitting`].
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Whether the multiplexer is draining (see [`SoeMultiplexer::set_draining`]).
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// The configuration.
    pub fn config(&self) -> &SocketConfig {
        &self.config
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.index.len()
    }

    /// Bytes all sessions hold for their peers now (see
    /// [`SocketConfig::max_buffered_bytes`]).
    pub fn buffered_bytes(&self) -> usize {
        self.io.buffered_bytes()
    }

    /// Half-open server sessions.
    pub fn half_open_count(&self) -> usize {
        self.half_open
    }

    /// The session with `remote`, if any.
    pub fn session(&self, remote: &A) -> Option<&SoeSession> {
        let slot = *self.index.get(remote)?;
        self.slots[slot as usize].as_ref().map(|e| &e.session)
    }

    /// Remote addresses of every live session.
    pub fn remotes(&self) -> impl Iterator<Item = &A> {
        self.index.keys()
    }

    /// Counters, summed over live and ended sessions.
    pub fn stats(&self) -> MuxStats {
        let mut stats = self.stats.clone();
        stats.sessions = self.retired;
        for entry in self.slots.iter().flatten() {
            stats.sessions.add(&entry.session.stats());
        }
        stats.sessions_live = self.index.len() as u64;
        stats.timer_entries = self.timers.len() as u64;
        stats.table_slots = self.slots.len() as u64;
        stats
    }

    /// Opens a client session to `remote`; its SessionRequest goes out with the next
    /// [`SoeMultiplexer::run_tick`] and is repeated until answered or
    /// `connect_timeout` passes (then `SessionClosed(ConnectFail)`).
    pub fn connect(&mut self, remote: A, now: Instant) -> Result<(), ConnectError> {
        if self.index.contains_key(&remote) {
            return Err(ConnectError::AlreadyConnected);
        }
        if self.index.len() >= self.config.max_sessions {
            return Err(ConnectError::TooManySessions);
        }
        let session = self.new_session(SessionMode::Client, now);
        let slot = self.insert(remote, session);
        self.mark(slot);
        Ok(())
    }

    /// Queues `data` for `remote` on reliable channel 0.
    pub fn enqueue_data(&mut self, remote: &A, data: &[u8]) -> Result<(), EnqueueError> {
        self.enqueue_data_on(remote, data, Channel::Reliable(0))
    }

    /// Queues `data` for `remote` on `channel`. It is sent at the next
    /// [`SoeMultiplexer::run_tick`] (or [`SoeMultiplexer::flush`]), together with
    /// whatever else is due for that peer. On error nothing was queued.
    pub fn enqueue_data_on(
        &mut self,
        remote: &A,
        data: &[u8],
        channel: Channel,
    ) -> Result<(), EnqueueError> {
        let slot = *self.index.get(remote).ok_or(EnqueueError::NoSession)?;
        let entry = self.slots[slot as usize]
            .as_mut()
            .ok_or(EnqueueError::NoSession)?;
        entry.session.enqueue(data, channel)?;
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(slot);
        }
        Ok(())
    }

    /// Ends the session with `remote`, sending it a Disconnect with `reason`.
    pub fn terminate(&mut self, remote: &A, reason: DisconnectReason, now: Instant) {
        if let Some(&slot) = self.index.get(remote) {
            if let Some(entry) = self.slots[slot as usize].as_mut() {
                self.io.set_owner(slot);
                entry.session.terminate(reason, true, now, &mut self.io);
            }
            self.mark(slot);
        }
    }

    /// Ends every session (Disconnect with `reason` to each peer) and returns every
    /// datagram still waiting, as `soe-protocol` does. For graceful shutdown.
    pub fn terminate_all(&mut self, reason: DisconnectReason, now: Instant) -> Vec<(A, Bytes)> {
        self.close_all(reason, now);
        self.take_outgoing()
    }

    /// Ends every session (Disconnect with `reason` to each peer); the datagrams
    /// stay in the outgoing queue.
    pub fn close_all(&mut self, reason: DisconnectReason, now: Instant) {
        let slots: Vec<u32> = self.index.values().copied().collect();
        for slot in slots {
            if let Some(entry) = self.slots[slot as usize].as_mut() {
                self.io.set_owner(slot);
                entry.session.terminate(reason, true, now, &mut self.io);
            }
            self.mark(slot);
        }
    }

    /// The network reported `remote` unreachable: an ICMP port-unreachable for a
    /// datagram sent there (runtimes read them with `IP_RECVERR`). Its session
    /// ends with `IcmpError` if the reports outlast its `unreachable_grace`
    /// ([`SoeSession::handle_unreachable`]).
    pub fn process_unreachable(&mut self, remote: &A, now: Instant) {
        let Some(&slot) = self.index.get(remote) else {
            self.stats.unreachable_unknown += 1;
            return;
        };
        if let Some(entry) = self.slots[slot as usize].as_mut() {
            self.io.set_owner(slot);
            entry.session.handle_unreachable(now, &mut self.io);
        }
        self.mark(slot);
    }

    /// Processes one datagram from `remote`.
    pub fn process_incoming(&mut self, remote: A, datagram: impl AsRef<[u8]>, now: Instant) {
        let datagram = datagram.as_ref();
        if let Some(&slot) = self.index.get(&remote) {
            if self.is_new_incarnation(slot, datagram) {
                // The peer restarted with a new session id: the old session is gone
                // for it, so end ours quietly and treat the request as new.
                if let Some(entry) = self.slots[slot as usize].as_mut() {
                    self.io.set_owner(slot);
                    entry.session.terminate(
                        DisconnectReason::NewConnectionAttempt,
                        false,
                        now,
                        &mut self.io,
                    );
                }
                self.mark(slot);
            } else {
                if let Some(entry) = self.slots[slot as usize].as_mut() {
                    self.io.set_owner(slot);
                    entry.session.handle_datagram(datagram, now, &mut self.io);
                }
                self.mark(slot);
                return;
            }
        }
        self.handle_unknown_sender(remote, datagram, now);
    }

    /// Whether `datagram` is a well-formed SessionRequest for our protocol with a new
    /// session id, on a server session. Contextless packets carry no CRC, so the
    /// request must match exactly before it may replace a live session: a corrupted
    /// or forged fragment of one never does.
    fn is_new_incarnation(&self, slot: u32, datagram: &[u8]) -> bool {
        let Some(entry) = self.slots[slot as usize].as_ref() else {
            return false;
        };
        if entry.session.mode() != SessionMode::Server || datagram.get(..2) != Some(&[0, 1]) {
            return false;
        }
        let Ok(Packet::SessionRequest(request)) = Packet::parse(datagram) else {
            return false;
        };
        let name = self
            .config
            .default_session_params
            .application_protocol
            .as_bytes();
        let well_formed = match request.application_protocol {
            Some(n) => n == name && datagram.len() == SessionRequest::FIXED_LEN + n.len() + 1,
            None => name.is_empty() && datagram.len() == SessionRequest::FIXED_LEN,
        };
        well_formed
            && matches!(request.protocol_version, 2 | 3)
            && request.session_id != entry.session.session_id()
    }

    fn handle_unknown_sender(&mut self, remote: A, datagram: &[u8], now: Instant) {
        match datagram {
            [0, ty, ..] if *ty == OpCode::SessionRequest.type_byte() => {
                self.admit(remote, datagram, now)
            }
            [0, ty, ..] if *ty == OpCode::RemapConnection.type_byte() => {
                self.remap(remote, datagram, now)
            }
            [0, ty, ..]
                if *ty == OpCode::UnknownSender.type_byte()
                    || *ty == OpCode::Disconnect.type_byte()
                    || *ty == OpCode::PortAlive.type_byte() =>
            {
                self.stats.unknown_sender_datagrams += 1;
            }
            _ => {
                self.stats.unknown_sender_datagrams += 1;
                if self.config.reply_unknown_sender && self.take_reply_token(now) {
                    let start = self.io.tx_bytes.len();
                    self.io
                        .tx_bytes
                        .extend_from_slice(&OpCode::UnknownSender.to_bytes());
                    self.io.end_datagram(start);
                    self.out_addrs.push(remote);
                }
            }
        }
    }

    fn admit(&mut self, remote: A, request: &[u8], now: Instant) {
        if !matches!(Packet::parse(request), Ok(Packet::SessionRequest(_))) {
            // A session made for it would wait out its handshake, unevictable.
            self.stats.refused_malformed += 1;
            return;
        }
        if self.draining {
            self.stats.refused_draining += 1;
            if self.take_reply_token(now) {
                self.refuse(remote, request, now);
            }
            return;
        }
        if !self.admitting {
            self.stats.refused_admission_closed += 1;
            return;
        }
        if self.index.len() >= self.config.max_sessions {
            self.stats.refused_session_limit += 1;
            return;
        }
        while self.half_open >= self.config.max_half_open_sessions.max(1) {
            self.evict_oldest_half_open(now);
        }
        let session = self.new_session(SessionMode::Server, now);
        let slot = self.insert(remote, session);
        if let Some(entry) = self.slots[slot as usize].as_mut() {
            self.io.set_owner(slot);
            entry.session.handle_datagram(request, now, &mut self.io);
            if entry.session.termination_reason() == DisconnectReason::ProtocolMismatch {
                self.stats.refused_protocol_mismatch += 1;
            }
        }
        self.mark(slot);
    }

    /// Answers a SessionRequest with a SessionResponse and a Disconnect
    /// (`ConnectionRefused`) from a session that never joins the table.
    fn refuse(&mut self, remote: A, request: &[u8], now: Instant) {
        let mut io = self.refusal_io.take().unwrap_or_default();
        let mut session = self.new_session(SessionMode::Server, now);
        session.handle_datagram(request, now, &mut io);
        session.terminate(DisconnectReason::ConnectionRefused, true, now, &mut io);
        for datagram in io.datagrams() {
            let start = self.io.tx_bytes.len();
            self.io.tx_bytes.extend_from_slice(datagram);
            self.io.end_datagram(start);
            self.out_addrs.push(remote.clone());
        }
        io.clear_datagrams();
        io.drain_events().for_each(drop);
        self.refusal_io = Some(io);
    }

    fn evict_oldest_half_open(&mut self, now: Instant) {
        while let Some((slot, generation)) = self.half_open_order.pop_front() {
            let live = self.generations[slot as usize] == generation
                && self.slots[slot as usize]
                    .as_ref()
                    .is_some_and(|e| e.half_open);
            if live {
                if let Some(entry) = self.slots[slot as usize].as_mut() {
                    self.io.set_owner(slot);
                    entry.session.terminate(
                        DisconnectReason::ConnectionRefused,
                        false,
                        now,
                        &mut self.io,
                    );
                }
                self.stats.evicted_half_open += 1;
                self.mark(slot);
                return;
            }
        }
        // The order queue and the counter disagree; cannot happen, but never spin.
        self.half_open = 0;
    }

    /// Whether `datagram` is a RemapConnection for a session this multiplexer
    /// holds (its session id and CRC seed match one). Runtimes with several
    /// multiplexers use it to find the one a moved session lives on.
    pub fn holds_remap_target(&self, datagram: &[u8]) -> bool {
        match Packet::parse(datagram) {
            Ok(Packet::RemapConnection(remap)) => self
                .by_credentials
                .contains_key(&(remap.session_id, remap.crc_seed)),
            _ => false,
        }
    }

    fn remap(&mut self, remote: A, datagram: &[u8], now: Instant) {
        let Ok(Packet::RemapConnection(remap)) = Packet::parse(datagram) else {
            self.stats.unknown_sender_datagrams += 1;
            return;
        };
        let credentials = (remap.session_id, remap.crc_seed);
        let old = self.by_credentials.get(&credentials).cloned();
        let allowed = match &old {
            Some(old) if *old == remote => false,
            Some(old) if old.same_host(&remote) => self.config.allow_port_remaps,
            Some(_) => self.config.allow_address_remaps,
            None => false,
        };
        let slot = old
            .filter(|_| allowed)
            .and_then(|old| self.index.remove(&old));
        let Some(slot) = slot else {
            self.stats.remaps_refused += 1;
            // A refusal costs a token too: guessing credentials stays slow.
            let _ = self.take_reply_token(now);
            return;
        };
        self.index.insert(remote.clone(), slot);
        self.by_credentials.insert(credentials, remote.clone());
        if let Some(entry) = self.slots[slot as usize].as_mut() {
            tracing::info!(
                from = ?entry.addr,
                to = ?remote,
                session_id = remap.session_id,
                "session remapped"
            );
            let old = std::mem::replace(&mut entry.addr, remote.clone());
            self.events.push_back(SocketEvent::SessionRemapped {
                old,
                new: remote.clone(),
            });
        }
        self.stats.remaps += 1;
        self.remapped.push(remote);
        self.mark(slot);
    }

    /// Takes one token of the reply budget (`unknown_sender_replies_per_sec`);
    /// `false` when it is spent.
    fn take_reply_token(&mut self, now: Instant) -> bool {
        let rate = f64::from(self.config.unknown_sender_replies_per_sec);
        let elapsed = self
            .reply_refill
            .map_or(1.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.reply_refill = Some(now);
        // Up to a tenth of a second's worth may go at once.
        self.reply_tokens = (self.reply_tokens + elapsed * rate).min((rate / 10.0).max(1.0));
        if self.reply_tokens >= 1.0 {
            self.reply_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A session from the configuration, with fresh random ids.
    fn new_session(&mut self, mode: SessionMode, now: Instant) -> SoeSession {
        let mut secret = self.ids.next_u64();
        let (lane, lanes) = self.lane;
        if lanes > 1 {
            // The high half is a server's CRC seed: make it name this lane.
            let seed = (secret >> 32) as u32;
            // `lane` itself when the top of the range has no room for it.
            let seed = (seed - seed % lanes).checked_add(lane).unwrap_or(lane);
            secret = (u64::from(seed) << 32) | (secret & 0xFFFF_FFFF);
        }
        SoeSession::new(
            mode,
            self.config.default_session_params.clone(),
            self.config.app_params.clone(),
            secret,
            now,
        )
    }

    fn insert(&mut self, remote: A, session: SoeSession) -> u32 {
        let entry = Box::new(Entry {
            addr: remote.clone(),
            session,
            scheduled: None,
            dirty: false,
            opened: false,
            half_open: false,
        });
        self.insert_entry(remote, entry)
    }

    fn insert_entry(&mut self, remote: A, entry: Box<Entry<A>>) -> u32 {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(remote, slot);
        slot
    }

    /// Bookkeeping after any call into a session: its events get their address, its
    /// datagrams their destination, and it is queued for the next flush (which also
    /// reschedules its timer); an ended session is removed. Returns whether it is
    /// still live.
    fn mark(&mut self, slot: u32) -> bool {
        self.collect(slot);
        let Some(entry) = self.slots[slot as usize].as_mut() else {
            return false;
        };
        if entry.session.state() == SessionState::Terminated {
            self.remove(slot);
            return false;
        }
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(slot);
        }
        true
    }

    /// Routes what sessions wrote into the shared io since the last call: each
    /// datagram and event carries the slot of the session that produced it, which
    /// gives it its address. Then updates `slot`'s half-open bookkeeping.
    fn collect(&mut self, slot: u32) {
        self.route_outputs();
        let Some(entry) = self.slots[slot as usize].as_mut() else {
            return;
        };
        let half_open = entry.session.is_half_open();
        if half_open != entry.half_open {
            entry.half_open = half_open;
            if half_open {
                self.half_open += 1;
                self.half_open_order
                    .push_back((slot, self.generations[slot as usize]));
            } else {
                self.half_open -= 1;
            }
        }
        // Entries of sessions that opened stay queued until eviction passes them;
        // compact now and then so the queue tracks the pool's size.
        if self.half_open_order.len() > 2 * self.half_open + 1024 {
            let (slots, generations) = (&self.slots, &self.generations);
            self.half_open_order.retain(|&(slot, generation)| {
                generations[slot as usize] == generation
                    && slots[slot as usize].as_ref().is_some_and(|e| e.half_open)
            });
        }
    }

    /// Gives every new datagram its destination and turns every new session event
    /// into a [`SocketEvent`], each by the slot it is tagged with.
    fn route_outputs(&mut self) {
        while self.out_addrs.len() < self.io.raw_datagram_len() {
            let owner = self.io.owner_of_raw(self.out_addrs.len());
            let Some(entry) = self.slots[owner as usize].as_ref() else {
                unreachable!("outputs are routed before their session is removed");
            };
            self.out_addrs.push(entry.addr.clone());
        }
        if self.io.events().is_empty() {
            return;
        }
        let Self {
            io,
            slots,
            events,
            stats,
            config,
            by_credentials,
            ..
        } = self;
        for (owner, event) in io.drain_events() {
            let Some(entry) = slots[owner as usize].as_mut() else {
                continue;
            };
            let remote = entry.addr.clone();
            let event = match event {
                SessionEvent::Opened => {
                    tracing::debug!(
                        ?remote,
                        session_id = entry.session.session_id(),
                        mode = ?entry.session.mode(),
                        "session opened"
                    );
                    entry.opened = true;
                    stats.sessions_opened += 1;
                    if entry.session.mode() == SessionMode::Server
                        && (config.allow_port_remaps || config.allow_address_remaps)
                    {
                        by_credentials.insert(
                            (entry.session.session_id(), entry.session.crc_seed()),
                            remote.clone(),
                        );
                    }
                    SocketEvent::SessionOpened { remote }
                }
                SessionEvent::DataReceived { data, channel } => SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                },
                SessionEvent::Closed(reason) => {
                    tracing::debug!(
                        ?remote,
                        session_id = entry.session.session_id(),
                        ?reason,
                        by_remote = entry.session.terminated_by_remote(),
                        "session closed"
                    );
                    stats.sessions_closed[usize::from(reason.as_u16())] += 1;
                    if !entry.opened && entry.session.mode() == SessionMode::Server {
                        continue;
                    }
                    SocketEvent::SessionClosed { remote, reason }
                }
            };
            events.push_back(event);
        }
    }

    fn reschedule(&mut self, slot: u32) {
        let next = self.slots[slot as usize]
            .as_ref()
            .and_then(|entry| entry.session.next_deadline());
        self.schedule(slot, next);
    }

    /// Puts `slot`'s timer at `deadline` (its session's next deadline) unless an
    /// entry at or before it is in the heap already.
    fn schedule(&mut self, slot: u32, deadline: Option<Instant>) {
        let Some(entry) = self.slots[slot as usize].as_mut() else {
            return;
        };
        if let Some(deadline) = deadline
            && entry.scheduled.is_none_or(|s| deadline < s)
        {
            entry.scheduled = Some(deadline);
            self.timers
                .push(Reverse((deadline, slot, self.generations[slot as usize])));
        }
    }

    fn remove(&mut self, slot: u32) {
        let Some(entry) = self.slots[slot as usize].take() else {
            return;
        };
        if entry.half_open {
            self.half_open -= 1;
        }
        if self.index.get(&entry.addr) == Some(&slot) {
            self.index.remove(&entry.addr);
        }
        let credentials = (entry.session.session_id(), entry.session.crc_seed());
        if self.by_credentials.get(&credentials) == Some(&entry.addr) {
            self.by_credentials.remove(&credentials);
        }
        self.retired.add(&entry.session.stats());
        self.io.held = self.io.held.saturating_sub(entry.session.buffered_bytes());
        self.generations[slot as usize] = self.generations[slot as usize].wrapping_add(1);
        self.free.push(slot);
        self.removed_since_shrink += 1;
    }

    /// Gives memory back after many sessions went away (a SessionRequest flood, a
    /// mass disconnect) or a burst passed: drops timer entries of removed sessions,
    /// trims the free tail of the session table and shrinks the maps, queues and
    /// buffers that grew. Runs by itself after a flush once 1024 sessions were
    /// removed; drivers also call it about once a second. Its cost is linear in
    /// what it frees or keeps.
    pub fn trim_memory(&mut self) {
        self.removed_since_shrink = 0;
        self.io.trim();
        let before = self.slots.len() + self.timers.len();
        self.shrink_containers();
        self.released += before.saturating_sub(self.slots.len() + self.timers.len());
    }

    /// Table slots and timer entries [`SoeMultiplexer::trim_memory`] gave back since
    /// the last call: a runtime may then return freed heap to the OS.
    pub fn take_released(&mut self) -> usize {
        std::mem::take(&mut self.released)
    }

    fn shrink_containers(&mut self) {
        let live = self.index.len();
        let (slots, generations) = (&self.slots, &self.generations);
        self.half_open_order.retain(|&(slot, generation)| {
            generations[slot as usize] == generation
                && slots[slot as usize].as_ref().is_some_and(|e| e.half_open)
        });
        // Free slots at the end of the table go, with their generations: no
        // half-open entry names them any more, and the timer entries that do are
        // dropped below.
        let table = self.slots.len();
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
            self.generations.pop();
        }
        let trimmed = self.slots.len() < table;
        if trimmed {
            let end = self.slots.len() as u32;
            self.free.retain(|&slot| slot < end);
        }
        // One timer entry per live session is the steady state; the rest belong to
        // removed sessions or to deadlines that moved.
        if trimmed || self.timers.len() > 2 * live + SHRINK_CHECK_EVERY {
            let (slots, generations) = (&self.slots, &self.generations);
            self.timers
                .retain(|&Reverse((deadline, slot, generation))| {
                    generations.get(slot as usize) == Some(&generation)
                        && slots[slot as usize]
                            .as_ref()
                            .is_some_and(|e| e.scheduled == Some(deadline))
                });
        }
        shrink_vec(&mut self.slots);
        shrink_vec(&mut self.generations);
        shrink_vec(&mut self.free);
        shrink_vec(&mut self.dirty);
        shrink_vec(&mut self.out_addrs);
        if self.timers.capacity() > 4 * self.timers.len() + SHRINK_CHECK_EVERY {
            self.timers.shrink_to(self.timers.len() * 3 / 2);
        }
        if self.half_open_order.capacity() > 4 * self.half_open_order.len() + SHRINK_CHECK_EVERY {
            self.half_open_order
                .shrink_to(self.half_open_order.len() * 3 / 2);
        }
        if self.events.capacity() > 4 * self.events.len() + SHRINK_CHECK_EVERY {
            self.events.shrink_to(self.events.len() * 3 / 2);
        }
        if self.index.capacity() > 4 * live + SHRINK_CHECK_EVERY {
            self.index.shrink_to(live * 3 / 2);
        }
        let credentials = self.by_credentials.len();
        if self.by_credentials.capacity() > 4 * credentials + SHRINK_CHECK_EVERY {
            self.by_credentials.shrink_to(credentials * 3 / 2);
        }
    }

    /// Runs due timers, then flushes every session touched since the last flush.
    pub fn run_tick(&mut self, now: Instant) {
        self.run_timers(now, usize::MAX);
        self.flush(now);
    }

    /// Runs at most `limit` due session timers (the earliest first) without
    /// flushing; returns whether more are due. A driver bounds each loop turn this
    /// way and calls [`SoeMultiplexer::flush`] after. A timer whose session's
    /// deadline has moved later since it was set is moved there instead of run
    /// (counted in [`MuxStats::timers_moved`], and in `limit`: the turn's bound
    /// holds however many timers went stale at once).
    pub fn run_timers(&mut self, now: Instant, limit: usize) -> bool {
        let mut fired = 0;
        while let Some(&Reverse((deadline, slot, generation))) = self.timers.peek() {
            if deadline > now {
                return false;
            }
            if fired == limit {
                return true;
            }
            self.timers.pop();
            if self.generations[slot as usize] != generation {
                continue;
            }
            let Some(entry) = self.slots[slot as usize].as_mut() else {
                continue;
            };
            if entry.scheduled != Some(deadline) {
                continue;
            }
            entry.scheduled = None;
            fired += 1;
            self.io.set_owner(slot);
            match entry.session.run_due_timers(now, &mut self.io) {
                TimerRun::Due => {
                    self.stats.timers_run += 1;
                    // Rescheduled by the next flush: what is due now (acks,
                    // resends) only clears once flushed.
                    self.mark(slot);
                }
                TimerRun::NotDue(next) => {
                    // Deadlines mostly move later without a timer (an ack arrives,
                    // a delayed ack rides on data): nothing was due, so there is
                    // nothing to flush; the timer only moves to the session's
                    // real deadline.
                    self.stats.timers_moved += 1;
                    self.schedule(slot, next);
                }
            }
        }
        false
    }

    /// Flushes every session touched since the last flush (no timers).
    pub fn flush(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let Some(Some(entry)) = self.slots.get_mut(slot as usize) else {
                continue;
            };
            entry.dirty = false;
            self.io.set_owner(slot);
            entry.session.flush(now, &mut self.io);
            self.collect(slot);
            if self.slots[slot as usize]
                .as_ref()
                .is_some_and(|e| e.session.state() == SessionState::Terminated)
            {
                self.remove(slot);
            } else {
                self.reschedule(slot);
            }
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        // Also when the last session went: an idle driver may not turn for a while.
        if self.removed_since_shrink >= SHRINK_CHECK_EVERY
            || (self.removed_since_shrink > 0 && self.index.is_empty())
        {
            self.trim_memory();
        }
    }

    /// The earliest time a timer may be due. May be early (a spurious wake-up is
    /// harmless); never late. `None` with no sessions.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// The earliest deadline a session really has, with stale timer entries
    /// dropped first: a session's deadline often moves later without a timer
    /// firing (the ack for its data arrived, a delayed ack rode on data, the peer
    /// was heard again), and [`SoeMultiplexer::next_deadline`] would still name
    /// the old time. A runtime that sleeps until this wakes once per deadline that
    /// needs work, not once per deadline that was. Each stale entry costs one
    /// look at its session's timers, once. `None` with no sessions.
    pub fn settle_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((deadline, slot, generation))) = self.timers.peek() {
            let live = self.generations[slot as usize] == generation;
            let Some(entry) = self.slots[slot as usize].as_mut().filter(|_| live) else {
                self.timers.pop();
                continue;
            };
            if entry.scheduled != Some(deadline) {
                // A duplicate: the entry that counts is elsewhere in the heap.
                self.timers.pop();
                continue;
            }
            if entry.dirty {
                // Its next flush reschedules it.
                return Some(deadline);
            }
            let actual = entry.session.next_deadline();
            if actual.is_some_and(|a| a <= deadline) {
                return Some(deadline);
            }
            self.timers.pop();
            entry.scheduled = actual;
            if let Some(at) = actual {
                self.timers.push(Reverse((at, slot, generation)));
            }
        }
        None
    }

    /// Whether sessions were touched since the last flush.
    pub fn needs_flush(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Datagrams waiting to be sent.
    pub fn outgoing_len(&self) -> usize {
        self.io.datagram_count()
    }

    /// The `i`-th waiting datagram and its destination.
    pub fn outgoing(&self, i: usize) -> (&A, &[u8]) {
        let head = self.io.raw_datagram_len() - self.io.datagram_count();
        (&self.out_addrs[head + i], self.io.datagram(i))
    }

    /// Every waiting datagram and its destination, oldest first.
    pub fn outgoing_iter(&self) -> impl Iterator<Item = (&A, &[u8])> {
        let head = self.io.raw_datagram_len() - self.io.datagram_count();
        self.out_addrs[head..].iter().zip(self.io.datagrams())
    }

    /// Marks the oldest `n` waiting datagrams as sent (or dropped).
    pub fn consume_outgoing(&mut self, n: usize) {
        self.io.consume_datagrams(n);
        if self.io.datagram_count() == 0 {
            self.out_addrs.clear();
        }
    }

    /// Takes every waiting datagram as owned buffers (allocates; the
    /// `outgoing`/`consume_outgoing` pair does not).
    pub fn take_outgoing(&mut self) -> Vec<(A, Bytes)> {
        let out = self
            .outgoing_iter()
            .map(|(a, d)| (a.clone(), Bytes::copy_from_slice(d)))
            .collect();
        self.consume_outgoing(usize::MAX);
        out
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<SocketEvent<A>> {
        self.events.pop_front()
    }

    /// Events waiting.
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// Takes every waiting event (allocates; [`SoeMultiplexer::poll_event`] does not).
    pub fn take_events(&mut self) -> Vec<SocketEvent<A>> {
        self.events.drain(..).collect()
    }

    /// Iterates and removes the waiting events.
    pub fn drain_events(&mut self) -> std::collections::vec_deque::Drain<'_, SocketEvent<A>> {
        self.events.drain(..)
    }
}
