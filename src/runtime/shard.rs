//! One shard: a pinned thread owning a socket and a [`Driver`].
//!
//! The shard is the driver's I/O shell. Per turn it reads the socket with
//! `recvmmsg` (forwarding datagrams that belong to another shard), answers control
//! requests, applies commands from handles and datagrams forwarded by other
//! shards, hands events to the shard-local handler or the merged stream, runs the
//! driver's tick and writes what it produced with `sendmmsg`. Every step is bounded
//! by the driver's [`crate::driver::Limits`].
//!
//! Then it sleeps in `ppoll` on its socket and its doorbell (an `eventfd` that
//! handles ring when they queue something for a sleeping shard), with the
//! driver's next deadline as the timeout. No user-space timer has to fire for a
//! shard to wake: a readable socket, a queued command or the kernel's own timeout
//! each end the sleep. (An earlier design parked glommio executors on io_uring; on
//! a 2-vCPU VM with Linux 6.18 their timer wake-ups were lost within seconds, and
//! a shard that slept one tick without watching its socket never woke again.)

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tracing::{debug, error, trace};

use super::handle::{Control, Forwarded, ForwardedKind, InboxReceivers, SoeHandle};
use super::handler::{ShardContext, ShardHandler, ShardInfo};
use super::steer::{is_remap, route, shard_of};
use crate::driver::{Delivery, Driver, EventSink, Limits, Offer};
use crate::mux::{SocketConfig, SocketEvent, SoeMultiplexer};
use crate::protocol::{DisconnectReason, OpCode, PORT_ALIVE_TTL, is_port_alive};
use crate::socket::{is_icmp_error, with_ttl};
use crate::sys::{self, RecvBatch, RecvDrop, SendBatch};

/// Builds a shard's handler on the shard's thread.
pub(crate) type HandlerFactory = dyn Fn(ShardInfo) -> Box<dyn ShardHandler> + Send + Sync;

/// Control requests answered per turn.
const CONTROL_PER_TURN: usize = 64;
/// How long a stopping shard tries to hand its last datagrams to the socket.
const FAREWELL_TIME: Duration = Duration::from_millis(200);
/// Error-queue entries a shard reads per turn.
const ERRORS_PER_TURN: usize = 64;
/// How often a full event stream is checked for room without a tick period.
const ROOM_CHECK: Duration = Duration::from_micros(500);

/// Where a shard's events go.
pub(crate) enum EventTarget {
    Factory(Arc<HandlerFactory>),
    Stream(Sender<SocketEvent<SocketAddr>>),
}

/// The merged stream as a driver's event sink.
struct StreamSink(Sender<SocketEvent<SocketAddr>>);

impl EventSink for StreamSink {
    fn offer(&mut self, event: SocketEvent<SocketAddr>) -> Offer {
        match self.0.try_send(event) {
            Ok(()) => Offer::Taken,
            Err(TrySendError::Full(event)) => Offer::Full(event),
            Err(TrySendError::Disconnected(_)) => Offer::Closed,
        }
    }
}

enum Sink {
    Handler(Box<dyn ShardHandler>),
    Stream(StreamSink),
}

/// Everything a shard needs, moved onto its thread.
pub(crate) struct ShardSetup {
    pub(crate) index: usize,
    pub(crate) socket: std::net::UdpSocket,
    pub(crate) config: SocketConfig,
    pub(crate) queues: InboxReceivers,
    pub(crate) handle: SoeHandle,
    pub(crate) events: EventTarget,
    pub(crate) tick: Option<Duration>,
    pub(crate) batch: usize,
    pub(crate) slot: usize,
    pub(crate) limits: Limits,
}

struct Shard {
    index: usize,
    shards: usize,
    socket: std::net::UdpSocket,
    driver: Driver,
    handle: SoeHandle,
    queues: InboxReceivers,
    sink: Sink,
    recv: RecvBatch,
    send: SendBatch,
    tick: Option<Duration>,
    stop: bool,
    /// The socket reported queued errors (ICMP): read them this turn.
    errors_pending: bool,
    /// Addresses the error queue reported unreachable (reused).
    unreachable: Vec<SocketAddr>,
}

/// What forwarding between shards needs of a shard, borrowed apart from its
/// receive buffers and driver.
#[derive(Clone, Copy)]
struct Ring<'a> {
    handle: &'a SoeHandle,
    index: usize,
    shards: usize,
}

impl<'a> Ring<'a> {
    fn new(handle: &'a SoeHandle, index: usize, shards: usize) -> Self {
        Self {
            handle,
            index,
            shards,
        }
    }

    /// Hands `datagram` to shard `owner`'s inbox (counted; dropped when full).
    fn forward(
        &self,
        driver: &mut Driver,
        owner: usize,
        from: SocketAddr,
        datagram: &[u8],
        searched: u8,
    ) {
        let forwarded = Forwarded {
            from,
            what: ForwardedKind::Datagram {
                datagram: datagram.to_vec(),
                searched,
            },
        };
        let pushed = self.handle.shared.inboxes[owner].push_forwarded(forwarded);
        let stats = driver.stats_mut();
        if pushed {
            stats.forwarded_out += 1;
        } else {
            stats.forward_drops += 1;
        }
    }

    /// A RemapConnection for a session this shard does not hold goes on to the
    /// next shard, until every shard has looked (`searched` so far): the session
    /// may have moved since the shard its CRC seed names created it. The last
    /// shard refuses it. Returns whether the datagram was passed on.
    fn pass_on_remap(
        &self,
        driver: &mut Driver,
        from: SocketAddr,
        datagram: &[u8],
        searched: u8,
    ) -> bool {
        let searched = usize::from(searched) + 1;
        if !is_remap(datagram)
            || searched >= self.shards
            || driver.mux().holds_remap_target(datagram)
        {
            return false;
        }
        let next = (self.index + 1) % self.shards;
        self.forward(driver, next, from, datagram, searched as u8);
        true
    }
}

#[allow(clippy::disallowed_methods)] // the runtime is where the clock is read
fn clock() -> Instant {
    Instant::now()
}

/// Runs one shard until shutdown, on its own thread. A panic anywhere in the loop
/// (the handler's included) ends the shard, which then closes its sessions towards
/// the application and the peers and reports the failure.
pub(crate) fn run(setup: ShardSetup, ready: Sender<()>) -> Result<(), String> {
    let index = setup.index;
    let span = tracing::info_span!("shard", index);
    let _entered = span.enter();
    let handle = setup.handle.clone();
    let liveness = &handle.shared.inboxes[index].liveness;
    let mut shard =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Shard::new(setup))) {
            Ok(shard) => shard,
            Err(panic) => {
                let why = format!("the handler factory panicked: {}", panic_message(&*panic));
                liveness.failed(why.clone());
                return Err(why);
            }
        };
    liveness.serving();
    let _ = ready.send(());
    debug!("shard ready");
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.serve()));
    let outcome = match served {
        Ok(Ok(())) => {
            shard.shutdown();
            Ok(())
        }
        Ok(Err(e)) => Err(format!("socket error: {e}")),
        Err(panic) => Err(format!("panicked: {}", panic_message(&*panic))),
    };
    let result = finish(shard, outcome, index, liveness);
    // The shard's queues are gone: tasks waiting on them learn it now.
    handle.shared.inboxes[index].space.wake_all();
    handle.shared.event_readers.wake_all();
    result
}

/// Records how a shard ended; a failed one closes its sessions (best effort).
fn finish(
    mut shard: Shard,
    outcome: Result<(), String>,
    index: usize,
    liveness: &super::health::Liveness,
) -> Result<(), String> {
    match outcome {
        Ok(()) => {
            liveness.stopped();
            debug!("shard stopped");
            Ok(())
        }
        Err(why) => {
            error!(shard = index, %why, "shard failed: closing its sessions");
            liveness.failed(why.clone());
            // Best effort: tell the peers and the application. The shard's state may
            // be inconsistent after a panic, so this is guarded too.
            let closed =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.shutdown()));
            if closed.is_err() {
                error!(shard = index, "could not close the failed shard's sessions");
            }
            Err(why)
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

impl Shard {
    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn new(setup: ShardSetup) -> Self {
        let shards = setup.handle.shards();
        let sink = match setup.events {
            EventTarget::Factory(factory) => Sink::Handler(factory(ShardInfo {
                index: setup.index,
                shards,
                local_addr: setup.handle.local_addr(),
                handle: setup.handle.clone(),
            })),
            EventTarget::Stream(tx) => Sink::Stream(StreamSink(tx)),
        };
        let mut mux = SoeMultiplexer::new(setup.config);
        mux.set_seed_lane(setup.index as u32, shards as u32);
        Self {
            index: setup.index,
            shards,
            socket: setup.socket,
            driver: Driver::new(mux, setup.limits, setup.index),
            handle: setup.handle,
            queues: setup.queues,
            sink,
            recv: RecvBatch::new(setup.batch, setup.slot),
            send: SendBatch::new(setup.batch),
            tick: setup.tick,
            stop: false,
            errors_pending: false,
            unreachable: Vec::new(),
        }
    }

    fn serve(&mut self) -> io::Result<()> {
        let epoch = self.handle.shared.epoch;
        while !self.stop {
            let now = clock();
            let shared = &self.handle.shared;
            if shared.draining.load(Ordering::Relaxed) {
                self.driver.start_draining();
            }
            let inbox = &shared.inboxes[self.index];
            inbox.liveness.turn(
                now.saturating_duration_since(epoch),
                self.driver.overloaded(),
                self.driver.draining(),
                self.driver.sessions(),
            );
            self.stop = inbox.stop_requested();
            if self.stop {
                break;
            }
            self.driver.begin_turn(now);
            let saturated = self.receive(now);
            self.read_errors(now);
            self.driver.after_receive(saturated, now);
            let forwarded_left = self.apply_forwarded(now);
            self.hand_over_remapped();
            let commands_left = self.apply_commands(now);
            self.handle.shared.inboxes[self.index].space.wake_all();
            self.deliver_events(now, true);
            self.driver.tick(now);
            self.transmit();
            self.deliver_events(now, false);
            self.answer_control();
            if self.driver.released_memory() {
                sys::return_free_memory();
            }
            let fd = self.fd();
            let ended = if cfg!(feature = "metrics") {
                clock()
            } else {
                now
            };
            self.driver
                .end_turn(now, ended, |driver| with_os_counters(driver.snapshot(), fd));
            self.sleep(saturated || forwarded_left || commands_left, now)?;
        }
        Ok(())
    }

    /// Reads the socket up to the turn's budget. Returns whether the budget ran out
    /// before the socket was drained.
    fn receive(&mut self, now: Instant) -> bool {
        if !self.driver.reading() {
            return false;
        }
        while self.driver.receive_budget() > 0 {
            let n = match self.recv.recv(self.socket.as_raw_fd()) {
                Ok(n) => n,
                Err(e) if is_icmp_error(&e) => {
                    // An ICMP error surfaced as the socket's error (and was cleared
                    // by this call); the details wait in the error queue.
                    self.errors_pending = true;
                    continue;
                }
                Err(e) => {
                    trace!(error = %e, "recv error");
                    self.driver.stats_mut().recv_errors += 1;
                    return false;
                }
            };
            if n == 0 {
                return false;
            }
            self.driver.stats_mut().recv_batches += 1;
            for i in 0..n {
                match self.recv.get(i) {
                    Ok((from, data)) => {
                        let stats = self.driver.stats_mut();
                        stats.datagrams_in += 1;
                        stats.bytes_in += data.len() as u64;
                        let owner = route(&from, data, self.shards);
                        if owner == self.index {
                            let ring = Ring::new(&self.handle, self.index, self.shards);
                            if !ring.pass_on_remap(&mut self.driver, from, data, 0) {
                                self.driver.on_datagram(from, data, now);
                            }
                        } else {
                            Ring::new(&self.handle, self.index, self.shards).forward(
                                &mut self.driver,
                                owner,
                                from,
                                data,
                                0,
                            );
                        }
                    }
                    Err(RecvDrop::Truncated) => self.driver.stats_mut().truncated += 1,
                    Err(RecvDrop::BadAddress) => self.driver.stats_mut().recv_errors += 1,
                }
            }
            if n < self.recv.capacity() {
                return false;
            }
        }
        true
    }

    /// Reads the socket's error queue when it reported errors: each ICMP port
    /// unreachable goes to the shard that owns the address (the kernel may queue
    /// it on any socket of the group).
    fn read_errors(&mut self, now: Instant) {
        if !std::mem::take(&mut self.errors_pending) {
            return;
        }
        let mut found = std::mem::take(&mut self.unreachable);
        let read = sys::read_error_queue(self.fd(), ERRORS_PER_TURN, |to| found.push(to));
        self.driver.stats_mut().icmp_other += read.other as u64;
        self.errors_pending = read.more;
        for to in found.drain(..) {
            let owner = shard_of(&to, self.shards);
            if owner == self.index {
                self.driver.on_unreachable(to, now);
                continue;
            }
            let forwarded = Forwarded {
                from: to,
                what: ForwardedKind::Unreachable,
            };
            let stats = self.driver.stats_mut();
            if self.handle.shared.inboxes[owner].push_forwarded(forwarded) {
                stats.forwarded_out += 1;
            } else {
                // The owner's queue is full: the next report will do.
                stats.forward_drops += 1;
            }
        }
        self.unreachable = found;
    }

    fn answer_control(&mut self) {
        for _ in 0..CONTROL_PER_TURN {
            let Ok(control) = self.queues.control.try_recv() else {
                return;
            };
            match control {
                Control::Stats(reply) => {
                    let _ = reply.send(self.snapshot());
                }
                Control::Adopt(session) => self.adopt(session),
                Control::Session(remote, reply) => {
                    let snapshot = self.driver.mux().session(&remote).map(|s| s.snapshot());
                    let _ = reply.send(snapshot);
                }
            }
        }
    }

    fn snapshot(&self) -> super::ShardStats {
        with_os_counters(self.driver.snapshot(), self.fd())
    }

    /// Sessions whose peers moved to an address another shard owns go to that
    /// shard, so the kernel's steering reaches them directly again. Where its queue
    /// is full, the session stays, and its datagrams are forwarded here.
    fn hand_over_remapped(&mut self) {
        let moved: Vec<SocketAddr> = self.driver.mux_mut().drain_remapped().collect();
        for remote in moved {
            let owner = shard_of(&remote, self.shards);
            if owner == self.index {
                continue;
            }
            let Some(session) = self.driver.mux_mut().take_session(&remote) else {
                continue;
            };
            match self.handle.shared.inboxes[owner].push_control(Control::Adopt(session)) {
                Ok(()) => debug!(%remote, owner, "session handed over"),
                Err(Control::Adopt(session)) => {
                    debug!(%remote, owner, "cannot hand the session over now: keeping it");
                    self.adopt(session);
                }
                Err(_) => unreachable!("the request comes back as given"),
            }
        }
    }

    fn adopt(&mut self, session: crate::mux::SessionTransfer<SocketAddr>) {
        if let Err(session) = self.driver.mux_mut().adopt_session(session) {
            // Only if another session took that address meanwhile.
            error!(
                remote = %session.remote(),
                "cannot adopt a moved session: a session with its address exists"
            );
            self.driver.mux_mut().reject_session(session);
        }
    }

    /// Datagrams other shards forwarded (bounded by the receive budget). Returns
    /// whether some were left.
    fn apply_forwarded(&mut self, now: Instant) -> bool {
        for _ in 0..self.driver.limits().datagrams_per_turn {
            let Ok(f) = self.queues.forwarded.try_recv() else {
                return false;
            };
            match f.what {
                ForwardedKind::Datagram { datagram, searched } => {
                    let ring = Ring::new(&self.handle, self.index, self.shards);
                    if !ring.pass_on_remap(&mut self.driver, f.from, &datagram, searched) {
                        self.driver.on_forwarded(f.from, &datagram, now);
                    }
                }
                ForwardedKind::Unreachable => self.driver.on_unreachable(f.from, now),
            }
        }
        !self.queues.forwarded.is_empty()
    }

    /// Commands from handles, while the driver takes them (bounded). Returns
    /// whether some were left that the driver could take.
    fn apply_commands(&mut self, now: Instant) -> bool {
        for _ in 0..self.driver.limits().commands_per_turn {
            if !self.driver.accepting() {
                return false;
            }
            let Ok(command) = self.queues.commands.try_recv() else {
                return false;
            };
            self.driver.apply(command, now);
        }
        self.driver.accepting() && !self.queues.commands.is_empty()
    }

    /// Hands the turn's events to the handler or the stream; `tick`: then runs
    /// the handler's `on_tick` (once per turn, before the flush).
    fn deliver_events(&mut self, now: Instant, tick: bool) {
        match &mut self.sink {
            Sink::Handler(handler) => {
                while let Some(event) = self.driver.poll_event() {
                    let mut ctx = ShardContext {
                        shard: self.index,
                        now,
                        driver: &mut self.driver,
                        handle: &self.handle,
                    };
                    handler.on_event(event, &mut ctx);
                }
                if tick {
                    let mut ctx = ShardContext {
                        shard: self.index,
                        now,
                        driver: &mut self.driver,
                        handle: &self.handle,
                    };
                    handler.on_tick(&mut ctx);
                }
            }
            Sink::Stream(stream) => {
                if self.driver.deliver(stream) == Delivery::Closed {
                    // Nobody listens any more (the server is going away).
                    while self.driver.poll_event().is_some() {}
                }
                self.handle.shared.event_readers.wake_all();
            }
        }
    }

    /// Sends what the driver produced, in `sendmmsg` batches, until the socket is
    /// full. Returns whether everything went out.
    fn transmit(&mut self) -> bool {
        // A send that failed with the socket's pending ICMP error (which the
        // failure cleared) is tried once more before its datagram is dropped.
        let mut retried = false;
        while self.driver.outgoing_len() > 0 {
            let port_alive = self
                .driver
                .outgoing()
                .next()
                .and_then(|(to, d)| is_port_alive(d).then_some(*to));
            let sent = match port_alive {
                Some(to) => {
                    let bytes = OpCode::PortAlive.to_bytes();
                    let socket = &self.socket;
                    let v6 = to.is_ipv6();
                    let sent = with_ttl(socket.into(), v6, PORT_ALIVE_TTL, || {
                        socket.send_to(&bytes, to)
                    });
                    match sent {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                        sent => sent.map(|_| 1),
                    }
                }
                None => self.send.send(
                    self.socket.as_raw_fd(),
                    self.driver
                        .outgoing()
                        .take_while(|(_, d)| !is_port_alive(d)),
                ),
            };
            match sent {
                Err(e) if is_icmp_error(&e) && !retried => {
                    self.errors_pending = true;
                    retried = true;
                }
                Ok(0) => {
                    self.driver.trim_outgoing();
                    return false;
                }
                Ok(n) => {
                    retried = false;
                    self.driver.stats_mut().send_batches += 1;
                    self.driver.sent(n);
                }
                Err(e) => {
                    // A datagram the kernel refuses (e.g. an unroutable address):
                    // drop it so the queue cannot jam.
                    retried = false;
                    trace!(error = %e, "send error");
                    self.driver.send_failed();
                }
            }
        }
        true
    }

    /// Sleeps until there is work: a datagram (unless the event stream is full), a
    /// command, room in the socket for queued datagrams, the next session deadline
    /// that needs work, or (with a handler and a tick period) the next game tick.
    fn sleep(&mut self, busy: bool, now: Instant) -> io::Result<()> {
        let plan = self.driver.wait_plan(busy);
        if plan.again {
            return Ok(());
        }
        let mut deadline = plan.deadline;
        let handler_tick = self.tick.filter(|_| {
            matches!(self.sink, Sink::Handler(_)) && self.driver.mux().session_count() > 0
        });
        // The handler's tick runs at least every tick period; a full event stream
        // is checked for room as often (every 500 µs without one).
        let period = handler_tick.or(plan.event_room.then(|| self.tick.unwrap_or(ROOM_CHECK)));
        if let Some(period) = period {
            let due = now + period;
            deadline = Some(deadline.map_or(due, |d| d.min(due)));
        }
        let inbox = &self.handle.shared.inboxes[self.index];
        let epoch = self.handle.shared.epoch;
        if !inbox.prepare_to_sleep(&self.queues) {
            return Ok(());
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(clock()));
        inbox.liveness.sleep(
            deadline.map(|d| d.saturating_duration_since(epoch)),
            self.driver.sessions(),
        );
        let woken = sys::sleep(self.fd(), plan.read, plan.write, inbox.doorbell(), timeout);
        inbox.woke(!woken.as_ref().is_ok_and(|w| !w.doorbell));
        let stats = self.driver.stats_mut();
        stats.wakeups += 1;
        if woken
            .as_ref()
            .is_ok_and(|w| !(w.doorbell || w.socket || w.error))
        {
            stats.timer_wakeups += 1;
        }
        trace!(?woken, "woke");
        self.errors_pending |= woken.as_ref().is_ok_and(|w| w.error);
        woken.map(|_| ())
    }

    /// Ends every session (Disconnect with `ManagerDeleted` to each peer), hands the
    /// application its last events and sends what is left, for a bounded time.
    fn shutdown(&mut self) {
        let now = clock();
        self.driver.close_all(DisconnectReason::ManagerDeleted, now);
        self.deliver_events(now, false);
        let deadline = now + FAREWELL_TIME;
        while !self.transmit() && clock() < deadline {
            let doorbell = self.handle.shared.inboxes[self.index].doorbell();
            let _ = sys::sleep(
                self.fd(),
                false,
                true,
                doorbell,
                Some(Duration::from_millis(10)),
            );
        }
    }
}

/// `stats` with what only the kernel knows: the shard thread's CPU time and its
/// kernel part (so this runs on the shard's own thread), and the socket's drops.
fn with_os_counters(mut stats: super::ShardStats, fd: RawFd) -> super::ShardStats {
    stats.cpu_time = sys::thread_cpu_time();
    stats.kernel_time = sys::thread_kernel_time();
    stats.socket_drops = sys::socket_drops(fd);
    stats
}
