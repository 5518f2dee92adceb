//! The loop turn every runtime runs, written once: sans-IO, like the layers below.
//!
//! A [`Driver`] owns a [`SoeMultiplexer`] and everything a server or client loop
//! decides besides moving bytes: how commands from handles are applied, where
//! messages wait when their session is full, how events reach the application and
//! what happens when they cannot, how much work one turn may do, when the load is
//! too much, how many outgoing datagrams may wait for a full socket, and what to
//! wait for next. The thread-per-core shards (`runtime`) and the Tokio adapter
//! (`tokio_rt`) are thin shells around it that own the socket, the queues and the
//! waking; they never decide policy.
//!
//! # A turn
//! 1. [`Driver::begin_turn`].
//! 2. The shell reads datagrams while [`Driver::reading`], at most
//!    [`Limits::datagrams_per_turn`], feeding each to [`Driver::on_datagram`], then
//!    calls [`Driver::after_receive`] (overload accounting, parked messages retried).
//! 3. The shell applies commands while [`Driver::accepting`], at most
//!    [`Limits::commands_per_turn`], through [`Driver::apply`].
//! 4. Events go out through [`Driver::deliver`] (a stream) or
//!    [`Driver::poll_event`] (a handler on the same thread).
//! 5. [`Driver::tick`]: due session timers (at most [`Limits::timers_per_turn`]),
//!    then one coalesced flush.
//! 6. The shell sends [`Driver::outgoing`], reports [`Driver::sent`], and calls
//!    [`Driver::trim_outgoing`] when the socket stayed full.
//! 7. The shell waits as [`Driver::wait_plan`] says.
//!
//! # Policies
//! * **No silent loss after `Ok`.** A message a handle queued is handed to its
//!   session, or waits here while the session's queue is full (or a client session
//!   is still connecting), in order with every later command for that session. A
//!   message for an address without a session is counted in
//!   [`DriverStats::enqueue_refused`]: that session's `SessionClosed` has told the
//!   application already.
//! * **While [`Limits::max_parked`] commands wait**, the driver takes no more, so
//!   the handles' queue fills and they see `Full`: end-to-end back-pressure. A
//!   server does not let one peer hold every session up for long: when the driver
//!   has taken no command for [`Limits::overflow_grace`], the session with the
//!   most commands waiting (a peer that does not keep up, or never acknowledges)
//!   ends with [`DisconnectReason::ReliableOverflow`], which the application sees
//!   as `SessionClosed`. A client, with one session, only back-pressures.
//! * **Events are never dropped.** An event the sink cannot take is kept, and the
//!   socket is not read until it is taken (its datagrams wait in the kernel). One
//!   exception breaks a cycle: while the driver takes no commands either, it keeps
//!   reading, since the application may be waiting for room in the command queue
//!   before it takes events, and only acknowledgements can make that room.
//! * **Overload.** Each turn does bounded work of every kind, and session timers
//!   (acknowledgements, heartbeats, retransmissions, timeouts) run every turn, so
//!   live sessions are served first. A turn that ends with its receive budget spent
//!   means the driver is at capacity; after two such turns in a row it stops
//!   admitting new sessions until a turn drains the socket. The excess is shed at
//!   the edges and counted: datagrams the kernel drops
//!   ([`DriverStats::socket_drops`]), refused SessionRequests
//!   ([`crate::MuxStats::refused_admission_closed`]), full queues reported to
//!   handles, and event back-pressure.
//! * **Outgoing datagrams** wait for a full socket up to
//!   [`Limits::max_outgoing`]; older ones are dropped past that and counted
//!   ([`DriverStats::send_drops`]); reliable data is retransmitted.

#[cfg(feature = "metrics")]
mod metrics;
mod parked;
mod stats;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use self::parked::{Parked, ParkedCommand};
pub use self::stats::DriverStats;
use crate::mux::{SocketEvent, SoeMultiplexer};
use crate::protocol::DisconnectReason;
use crate::session::{Channel, EnqueueError};

/// How often the driver asks the multiplexer to give back memory bursts left.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Slots and timer entries freed at once that make returning heap worth its cost.
const RELEASE_WORTH_RETURNING: usize = 4096;

/// Consecutive turns with the receive budget spent before admission closes.
const OVERLOAD_TURNS: u32 = 2;

/// What a handle asks a driver to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Open a client session to the address.
    Connect(SocketAddr),
    /// Send a message.
    Send {
        remote: SocketAddr,
        data: Bytes,
        channel: Channel,
    },
    /// End a session, after what was queued for it.
    Terminate {
        remote: SocketAddr,
        reason: DisconnectReason,
    },
}

/// What an [`EventSink`] did with an event.
#[derive(Debug)]
pub(crate) enum Offer {
    /// The event is on its way to the application.
    Taken,
    /// No room now: the event comes back.
    Full(SocketEvent<SocketAddr>),
    /// Nobody listens any more.
    Closed,
}

/// Where a driver's events go: a bounded channel to the application.
pub(crate) trait EventSink {
    /// Offers one event.
    fn offer(&mut self, event: SocketEvent<SocketAddr>) -> Offer;
}

/// Whether the application still listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Events go out (or wait for room).
    Open,
    /// The sink is closed.
    Closed,
}

/// Per-turn bounds and queue caps of a driver.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Datagrams read per turn.
    pub(crate) datagrams_per_turn: usize,
    /// Commands applied per turn.
    pub(crate) commands_per_turn: usize,
    /// Session timers run per turn.
    pub(crate) timers_per_turn: usize,
    /// Commands that may wait for their sessions before the driver takes no more.
    pub(crate) max_parked: usize,
    /// Outgoing datagrams that may wait for a full socket.
    pub(crate) max_outgoing: usize,
    /// At [`Limits::max_parked`] for longer than [`Limits::overflow_grace`], end
    /// the session that holds the most (servers) rather than only wait (clients).
    pub(crate) close_overflowing: bool,
    /// How long a server driver may stay unable to take commands before it ends
    /// the session holding it up.
    pub(crate) overflow_grace: Duration,
    /// Tick-aligned flushing: sessions write their datagrams once per this
    /// interval (see [`Driver::tick`]); `None` flushes every turn.
    pub(crate) flush_interval: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            datagrams_per_turn: 1024,
            commands_per_turn: 4096,
            timers_per_turn: 4096,
            max_parked: 1 << 16,
            max_outgoing: 1 << 16,
            close_overflowing: true,
            overflow_grace: Duration::from_secs(1),
            flush_interval: None,
        }
    }
}

/// What a shell waits for before the next turn. It wakes on the first of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WaitPlan {
    /// Work is left over: run the next turn without sleeping.
    pub(crate) again: bool,
    /// Wake when a datagram arrives.
    pub(crate) read: bool,
    /// Wake when the socket can take the datagrams still queued.
    pub(crate) write: bool,
    /// Wake when a command arrives.
    pub(crate) commands: bool,
    /// Wake when the event sink has room again (an event is waiting).
    pub(crate) event_room: bool,
    /// Wake by then at the latest (a session timer).
    pub(crate) deadline: Option<Instant>,
}

/// One runtime's loop state around a multiplexer. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Driver {
    mux: SoeMultiplexer<SocketAddr>,
    parked: Parked,
    /// An event the sink did not take; the socket is not read while it waits.
    stalled: Option<SocketEvent<SocketAddr>>,
    limits: Limits,
    stats: DriverStats,
    received: usize,
    saturated_turns: u32,
    timers_left: bool,
    last_trim: Option<Instant>,
    /// Since when the driver has been unable to take commands.
    blocked_since: Option<Instant>,
    /// With [`Limits::flush_interval`]: when the next flush is due.
    next_flush: Option<Instant>,
    #[cfg(feature = "metrics")]
    metrics: metrics::DriverMetrics,
    /// Trouble counters as of the last warning, and when it was.
    warned: (Trouble, Option<Instant>),
}

/// Counts that deserve an operator's attention when they grow.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Trouble {
    crc_failures: u64,
    malformed: u64,
    send_drops: u64,
    send_errors: u64,
    forward_drops: u64,
    parked_overflows: u64,
    event_stalls: u64,
    refused: u64,
}

/// At most one warning per this long, summing up what happened meanwhile.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Driver {
    /// A driver around `mux`; `shard` names it in its stats.
    pub(crate) fn new(mux: SoeMultiplexer<SocketAddr>, limits: Limits, shard: usize) -> Self {
        Self {
            mux,
            parked: Parked::default(),
            stalled: None,
            limits,
            stats: DriverStats {
                shard,
                ..DriverStats::default()
            },
            received: 0,
            saturated_turns: 0,
            timers_left: false,
            last_trim: None,
            blocked_since: None,
            next_flush: None,
            #[cfg(feature = "metrics")]
            metrics: metrics::DriverMetrics::new(shard),
            warned: (Trouble::default(), None),
        }
    }

    /// Logs, at most once per [`WARN_EVERY`], what went wrong since the last
    /// warning: CRC failures and malformed datagrams (a misconfigured or hostile
    /// peer), datagrams dropped or refused by the OS, sessions refused or ended
    /// for overflowing, a full event stream. Quiet while nothing grows.
    fn warn_rate_limited(&mut self, now: Instant) {
        if self.warned.1.is_some_and(|at| now < at + WARN_EVERY) {
            return;
        }
        let m = self.mux.stats();
        let s = &self.stats;
        let now_counts = Trouble {
            crc_failures: m.sessions.crc_failures,
            malformed: m.sessions.malformed_datagrams + m.refused_malformed,
            send_drops: s.send_drops,
            send_errors: s.send_errors,
            forward_drops: s.forward_drops,
            parked_overflows: s.parked_overflows,
            event_stalls: s.event_stalls,
            refused: m.refused_session_limit + m.refused_admission_closed,
        };
        let before = std::mem::replace(&mut self.warned, (now_counts, Some(now))).0;
        if now_counts == before {
            return;
        }
        tracing::warn!(
            shard = s.shard,
            crc_failures = now_counts.crc_failures - before.crc_failures,
            malformed = now_counts.malformed - before.malformed,
            send_drops = now_counts.send_drops - before.send_drops,
            send_errors = now_counts.send_errors - before.send_errors,
            forward_drops = now_counts.forward_drops - before.forward_drops,
            overflowed_sessions = now_counts.parked_overflows - before.parked_overflows,
            event_stalls = now_counts.event_stalls - before.event_stalls,
            refused_sessions = now_counts.refused - before.refused,
            "trouble since the last report (at most one per {}s)",
            WARN_EVERY.as_secs()
        );
    }

    /// Ends a loop turn that began at `began`: with the `metrics` feature, records
    /// its duration and, once a second, publishes the counters `snapshot` gives
    /// (see `driver::metrics`). Without the feature it does nothing.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn end_turn(
        &mut self,
        began: Instant,
        now: Instant,
        snapshot: impl FnOnce(&Self) -> DriverStats,
    ) {
        #[cfg(feature = "metrics")]
        {
            self.metrics.turn(now.saturating_duration_since(began));
            if self.metrics.due(now) {
                let stats = snapshot(self);
                let rtts = self
                    .mux
                    .remotes()
                    .filter_map(|r| self.mux.session(r).and_then(|s| s.rtt()));
                self.metrics.publish(
                    &stats,
                    rtts,
                    (self.overloaded(), self.draining()),
                    self.mux.outgoing_len(),
                );
            }
        }
    }

    /// The multiplexer.
    pub(crate) fn mux(&self) -> &SoeMultiplexer<SocketAddr> {
        &self.mux
    }

    /// The multiplexer, for shard-local handlers (their errors are immediate).
    pub(crate) fn mux_mut(&mut self) -> &mut SoeMultiplexer<SocketAddr> {
        &mut self.mux
    }

    /// The limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counters the shell keeps (socket-level ones).
    pub(crate) fn stats_mut(&mut self) -> &mut DriverStats {
        &mut self.stats
    }

    /// A copy of every counter, the multiplexer's included.
    pub(crate) fn snapshot(&self) -> DriverStats {
        let mut stats = self.stats.clone();
        stats.mux = self.mux.stats();
        stats
    }

    /// Whether the driver is at capacity (new sessions are refused).
    pub(crate) fn overloaded(&self) -> bool {
        self.saturated_turns >= OVERLOAD_TURNS
    }

    /// Whether the multiplexer gave back a lot of memory (after a flood or a mass
    /// disconnect) since the last call: the shell may then return the freed heap
    /// to the OS.
    pub(crate) fn released_memory(&mut self) -> bool {
        self.mux.take_released() >= RELEASE_WORTH_RETURNING
    }

    /// Starts a turn.
    pub(crate) fn begin_turn(&mut self, now: Instant) {
        self.stats.turns += 1;
        self.received = 0;
        if self.last_trim.is_none_or(|t| now >= t + TRIM_EVERY) {
            self.last_trim = Some(now);
            self.mux.trim_memory();
            self.warn_rate_limited(now);
        }
    }

    /// Whether the shell should read the socket now; see the
    /// [module docs](self#policies) on events.
    pub(crate) fn reading(&self) -> bool {
        self.stalled.is_none() || !self.accepting()
    }

    /// Datagrams the shell may still read this turn.
    pub(crate) fn receive_budget(&self) -> usize {
        self.limits.datagrams_per_turn.saturating_sub(self.received)
    }

    /// One datagram from `from`.
    pub(crate) fn on_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        self.received += 1;
        self.mux.process_incoming(from, datagram, now);
    }

    /// The network reported `to` unreachable (an ICMP port unreachable, read from
    /// the socket's error queue or, on a connected socket, as its error).
    pub(crate) fn on_unreachable(&mut self, to: SocketAddr, now: Instant) {
        self.stats.icmp_unreachable += 1;
        self.mux.process_unreachable(&to, now);
    }

    /// A datagram that arrived on another shard's socket (counted as received
    /// there, so not against this turn's budget).
    pub(crate) fn on_forwarded(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        self.stats.forwarded_in += 1;
        self.mux.process_incoming(from, datagram, now);
    }

    /// Ends the receive step: `saturated` when the budget ran out before the socket
    /// was drained. Then parked messages get another chance, since the
    /// acknowledgements just read may have made room.
    pub(crate) fn after_receive(&mut self, saturated: bool, now: Instant) {
        if saturated {
            self.saturated_turns = self.saturated_turns.saturating_add(1);
        } else {
            self.saturated_turns = 0;
        }
        let overloaded = self.overloaded();
        if overloaded {
            self.stats.overloaded_turns += 1;
        }
        if self.mux.is_admitting() == overloaded {
            if overloaded {
                tracing::warn!(
                    shard = self.stats.shard,
                    "at capacity: refusing new sessions until the load drops"
                );
            } else {
                tracing::info!(shard = self.stats.shard, "load dropped: admitting sessions");
            }
            self.mux.set_admitting(!overloaded);
        }
        self.retry_parked(now);
        self.check_blocked(now);
    }

    /// Ends the session holding the driver up once it has taken no command for
    /// [`Limits::overflow_grace`] (servers only).
    fn check_blocked(&mut self, now: Instant) {
        if self.accepting() {
            self.blocked_since = None;
            return;
        }
        let since = *self.blocked_since.get_or_insert(now);
        if self.limits.close_overflowing && now >= since + self.limits.overflow_grace {
            self.close_largest(now);
            self.blocked_since = None;
        }
    }

    /// Whether the driver takes commands now (not while [`Limits::max_parked`]
    /// commands wait for their sessions).
    pub(crate) fn accepting(&self) -> bool {
        self.parked.len() < self.limits.max_parked
    }

    /// Applies one command from a handle.
    pub(crate) fn apply(&mut self, command: Command, now: Instant) {
        self.stats.commands += 1;
        match command {
            Command::Connect(remote) => {
                if self.mux.connect(remote, now).is_err() {
                    self.stats.connect_refused += 1;
                }
            }
            Command::Send {
                remote,
                data,
                channel,
            } => self.send(remote, data, channel),
            Command::Terminate { remote, reason } => {
                if self.parked.holds(&remote) {
                    self.parked.push(remote, ParkedCommand::Terminate(reason));
                } else {
                    self.mux.terminate(&remote, reason, now);
                }
            }
        }
    }

    /// Hands a message to its session, or parks it (see the
    /// [module docs](self#policies)).
    fn send(&mut self, remote: SocketAddr, data: Bytes, channel: Channel) {
        if !self.parked.holds(&remote) {
            match self.mux.enqueue_data_on(&remote, &data, channel) {
                Ok(()) => return,
                Err(EnqueueError::QueueFull | EnqueueError::NotRunning) => {}
                Err(_) => {
                    self.stats.enqueue_refused += 1;
                    return;
                }
            }
        }
        self.stats.enqueue_parked += 1;
        self.parked.push(remote, ParkedCommand::Data(data, channel));
    }

    /// Starts draining (before a shutdown): live sessions are served as before,
    /// new ones are refused with `ConnectionRefused`
    /// ([`SoeMultiplexer::set_draining`]). There is no way back.
    pub(crate) fn start_draining(&mut self) {
        if !self.mux.is_draining() {
            tracing::info!(
                shard = self.stats.shard,
                sessions = self.mux.session_count(),
                "draining: refusing new sessions"
            );
            self.mux.set_draining(true);
        }
    }

    /// Whether the driver is draining.
    pub(crate) fn draining(&self) -> bool {
        self.mux.is_draining()
    }

    /// Sessions live now.
    pub(crate) fn sessions(&self) -> usize {
        self.mux.session_count()
    }

    /// Ends the session with the most commands waiting.
    fn close_largest(&mut self, now: Instant) {
        let Some(remote) = self.parked.largest() else {
            return;
        };
        if let Some(queue) = self.parked.take(&remote) {
            tracing::warn!(
                %remote,
                commands = queue.commands.len(),
                bytes = queue.bytes,
                "peer does not keep up: ending its session (ReliableOverflow)"
            );
        }
        self.stats.parked_overflows += 1;
        self.mux
            .terminate(&remote, DisconnectReason::ReliableOverflow, now);
    }

    /// Hands parked commands to their sessions while they have room.
    fn retry_parked(&mut self, now: Instant) {
        if self.parked.is_empty() {
            return;
        }
        let Self {
            parked, mux, stats, ..
        } = self;
        parked.retry(|remote, command| match command {
            ParkedCommand::Data(data, channel) => {
                match mux.enqueue_data_on(remote, data, *channel) {
                    Ok(()) => true,
                    Err(EnqueueError::QueueFull | EnqueueError::NotRunning) => false,
                    Err(_) => {
                        // The session ended; its SessionClosed told the application.
                        stats.enqueue_refused += 1;
                        true
                    }
                }
            }
            ParkedCommand::Terminate(reason) => {
                mux.terminate(remote, *reason, now);
                true
            }
        });
    }

    /// Hands waiting events to `sink` until it is full. Returns whether it still
    /// listens.
    pub(crate) fn deliver(&mut self, sink: &mut impl EventSink) -> Delivery {
        let mut next = self.stalled.take().or_else(|| self.mux.poll_event());
        while let Some(event) = next {
            match sink.offer(event) {
                Offer::Taken => self.stats.events += 1,
                Offer::Full(event) => {
                    self.stats.event_stalls += 1;
                    self.stalled = Some(event);
                    return Delivery::Open;
                }
                Offer::Closed => return Delivery::Closed,
            }
            next = self.mux.poll_event();
        }
        Delivery::Open
    }

    /// The next event, for a handler running on the driver's own thread.
    pub(crate) fn poll_event(&mut self) -> Option<SocketEvent<SocketAddr>> {
        let event = self.mux.poll_event()?;
        self.stats.events += 1;
        Some(event)
    }

    /// Runs due session timers (bounded) and flushes every touched session.
    ///
    /// With [`Limits::flush_interval`] the flush happens on flush ticks only
    /// (`interval` apart, kept in step): touched sessions wait for the next one,
    /// so each session sends one datagram per tick carrying everything the
    /// application queued since the last one, the acks owed and any heartbeat
    /// or retransmission due (more only when it does not fit). Handshake
    /// answers, retransmissions and acks wait at most one interval.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.timers_left = self.mux.run_timers(now, self.limits.timers_per_turn);
        if self.flush_due(now) {
            self.mux.flush(now);
        }
    }

    /// Whether this turn flushes; moves the flush tick on when it does.
    fn flush_due(&mut self, now: Instant) -> bool {
        let Some(interval) = self.limits.flush_interval else {
            return true;
        };
        match self.next_flush {
            Some(at) if now < at => false,
            Some(at) => {
                // In step with the ticks before, unless the turn came late.
                let next = at + interval;
                self.next_flush = Some(if next > now { next } else { now + interval });
                true
            }
            None => {
                self.next_flush = Some(now + interval);
                true
            }
        }
    }

    /// Whether touched sessions wait for a later flush tick.
    fn flush_held(&self) -> bool {
        self.limits.flush_interval.is_some() && self.mux.needs_flush()
    }

    /// Outgoing datagrams waiting, oldest first, with their destinations.
    pub(crate) fn outgoing(&self) -> impl Iterator<Item = (&SocketAddr, &[u8])> {
        self.mux.outgoing_iter()
    }

    /// Outgoing datagrams waiting.
    pub(crate) fn outgoing_len(&self) -> usize {
        self.mux.outgoing_len()
    }

    /// The oldest `n` outgoing datagrams went out.
    pub(crate) fn sent(&mut self, n: usize) {
        let bytes: usize = self.mux.outgoing_iter().take(n).map(|(_, d)| d.len()).sum();
        self.stats.datagrams_out += n as u64;
        self.stats.bytes_out += bytes as u64;
        self.mux.consume_outgoing(n);
    }

    /// The oldest outgoing datagram was refused by the OS: it is dropped.
    pub(crate) fn send_failed(&mut self) {
        self.stats.send_errors += 1;
        self.mux.consume_outgoing(1);
    }

    /// The socket is full: drops the oldest datagrams beyond
    /// [`Limits::max_outgoing`] (reliable data is retransmitted).
    pub(crate) fn trim_outgoing(&mut self) {
        self.stats.send_waits += 1;
        let excess = self
            .mux
            .outgoing_len()
            .saturating_sub(self.limits.max_outgoing);
        if excess > 0 {
            tracing::warn!(
                shard = self.stats.shard,
                excess,
                "socket send buffer stays full: dropping the oldest datagrams"
            );
            self.stats.send_drops += excess as u64;
            self.mux.consume_outgoing(excess);
        }
    }

    /// What to wait for before the next turn. `busy`: the shell left work of its
    /// own (a spent receive or command budget). The deadline is the earliest one
    /// a session really has ([`SoeMultiplexer::settle_deadline`]): a turn that
    /// left nothing to do does not wake again for a timer whose work vanished.
    pub(crate) fn wait_plan(&mut self, busy: bool) -> WaitPlan {
        let events_waiting = self.stalled.is_none() && self.mux.event_count() > 0;
        let mut deadline = self.mux.settle_deadline();
        let held = self.flush_held();
        if held && let Some(at) = self.next_flush {
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        }
        if let Some(since) = self.blocked_since
            && self.limits.close_overflowing
        {
            let overflow = since + self.limits.overflow_grace;
            deadline = Some(deadline.map_or(overflow, |d| d.min(overflow)));
        }
        #[cfg(feature = "metrics")]
        if let Some(publish) = self.metrics.pending() {
            // What changed since the last publication goes out within a second,
            // even if the driver then has nothing else to do.
            deadline = Some(deadline.map_or(publish, |d| d.min(publish)));
        }
        WaitPlan {
            again: busy || self.timers_left || (self.mux.needs_flush() && !held) || events_waiting,
            read: self.reading(),
            write: self.mux.outgoing_len() > 0,
            commands: self.accepting(),
            event_room: self.stalled.is_some(),
            deadline,
        }
    }

    /// Ends every session with `reason` (a Disconnect to each peer goes into the
    /// outgoing queue). Parked commands are applied first where they fit; the rest
    /// end with their sessions.
    pub(crate) fn close_all(&mut self, reason: DisconnectReason, now: Instant) {
        self.retry_parked(now);
        self.mux.flush(now);
        self.mux.close_all(reason, now);
        self.parked = Parked::default();
    }
}

#[cfg(test)]
mod tests;
