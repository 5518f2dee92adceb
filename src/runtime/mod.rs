//! The thread-per-core runtime ([`SoeServer`]): shard threads, steering,
//! handles, supervision.

mod handle;
mod handler;
mod health;
mod shard;
mod stats;
pub(crate) mod steer;
mod wakers;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use self::handle::{Inbox, Shared};
use self::shard::{EventTarget, HandlerFactory, ShardSetup};
use crate::driver::Limits;
use crate::mux::{SocketConfig, SocketEvent};
use crate::sys;

pub use self::handle::{EventStream, SoeHandle};

pub use self::handler::{ShardContext, ShardHandler, ShardInfo};
pub use self::health::{ShardHealth, ShardState};
pub use self::stats::{ServerStats, ShardStats};
pub use self::steer::shard_of;

/// How long [`SoeServer::shutdown`] waits for the shards to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server could not start, or did not stop cleanly. Each message names the
/// fix where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding the sockets failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A CPU in the CPU list is not one this process may run on.
    #[error(
        "CPU {cpu} is not available to this process (allowed: {allowed:?}; see `taskset`, \
         cgroup cpusets, `docker --cpuset-cpus`); fix the CPU list or disable pinning"
    )]
    BadCpu {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs this process may use.
        allowed: Vec<usize>,
    },
    /// Zero shards were requested.
    #[error("a server needs at least one shard")]
    NoShards,
    /// A system resource a shard needs could not be created.
    #[error("shard {shard} could not start: {source}")]
    Start {
        /// Which shard.
        shard: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A shard ended unexpectedly while the server ran; see [`ShardState::Failed`].
    #[error("shard {shard} failed: {detail}")]
    ShardFailed {
        /// Which shard.
        shard: usize,
        /// What happened.
        detail: String,
    },
    /// A shard did not finish within the shutdown timeout; its thread was left.
    #[error("shard {shard} did not stop within {timeout:?}")]
    StopTimeout {
        /// Which shard.
        shard: usize,
        /// How long it had.
        timeout: Duration,
    },
}

/// Configures and starts a [`SoeServer`]. Created by [`SoeServer::builder`].
#[must_use = "a builder does nothing until `start` is called"]
pub struct SoeServerBuilder {
    bind: SocketAddr,
    config: SocketConfig,
    shards: Option<usize>,
    pin: bool,
    cpus: Option<Vec<usize>>,
    tick: Option<Duration>,
    flush_interval: Option<Duration>,
    command_queue: usize,
    event_queue: usize,
    batch: usize,
    socket_buffer: usize,
    kernel_steering: bool,
    factory: Option<Arc<HandlerFactory>>,
}

impl fmt::Debug for SoeServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoeServerBuilder")
            .field("bind", &self.bind)
            .field("shards", &self.shards)
            .field("pin", &self.pin)
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

/// The CPUs this process may run on, or CPU 0.. when the OS does not say.
fn allowed_cpus() -> Vec<usize> {
    match sys::allowed_cpus() {
        Ok(cpus) if !cpus.is_empty() => cpus,
        _ => (0..std::thread::available_parallelism().map_or(1, usize::from)).collect(),
    }
}

impl SoeServerBuilder {
    /// Number of shards (default: one per CPU this process may run on). More
    /// shards than CPUs works, with several shards per CPU.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Pin shard `i` to a CPU (default on): the `i`-th of [`Self::cpus`], or the
    /// `i`-th CPU this process may run on (its affinity mask, as `taskset`, cgroup
    /// cpusets and `docker --cpuset-cpus` set it), cycling.
    pub fn pin_cpus(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// The CPUs to pin shards to, in shard order (cycled if shorter). Each must be
    /// in the process's affinity mask.
    pub fn cpus(mut self, cpus: Vec<usize>) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// Period of a shard-local handler's [`ShardHandler::on_tick`] while its shard
    /// has sessions (a game tick), and of the checks for room in a full event
    /// stream. Default: none. Without it, shards wake only for datagrams,
    /// commands and session deadlines (a full event stream is checked every
    /// 500 µs), and `on_tick` runs once per such turn; an idle shard sleeps.
    pub fn tick_period(mut self, tick: Duration) -> Self {
        self.tick = Some(tick.max(Duration::from_micros(50)));
        self
    }

    /// Tick-aligned flushing: each shard writes its sessions' datagrams once per
    /// `interval` instead of at the end of every loop turn, so one datagram per
    /// session and tick carries what the application queued during it, the acks
    /// owed to the peer and any heartbeat or retransmission due. Default: off
    /// (every turn flushes, for the lowest latency).
    ///
    /// For a game server that sends state on a fixed tick: give
    /// [`Self::tick_period`] the same period and queue the tick's state in
    /// [`ShardHandler::on_tick`] (which runs every turn, so check the time
    /// there: [`ShardContext::now`]); it goes out with the next flush. Replies
    /// from `on_event` and acks then wait up to one interval, and so do
    /// handshake answers and retransmissions: keep it below the peers'
    /// tolerance for delayed acks (`SessionParameters::peer_max_ack_delay`, 50 ms
    /// for soe-uring peers; 200 ms least RTO for `soe-protocol`), such as 10 to
    /// 33 ms. The flush runs in the driver, so the Tokio adapter has the same
    /// option ([`crate::tokio_rt::DriverConfig::flush_interval`]).
    ///
    /// It saves CPU only when sessions have more than one thing to send per
    /// interval. Where each session sends less often than that (an echo at
    /// 30 Hz with a 0.5 ms interval, say) the datagrams stay the same, the shard
    /// wakes on the flush timer every interval, and it used more CPU per message
    /// in all (measured in README, "Results").
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = Some(interval.max(Duration::from_micros(50)));
        self
    }

    /// Capacity of each shard's command queue (default 65 536). It also bounds the
    /// messages a shard holds back for sessions whose queues are full.
    pub fn command_queue(mut self, capacity: usize) -> Self {
        self.command_queue = capacity.max(1);
        self
    }

    /// Capacity of the merged event stream (default 65 536).
    pub fn event_queue(mut self, capacity: usize) -> Self {
        self.event_queue = capacity.max(1);
        self
    }

    /// Datagrams per `recvmmsg`/`sendmmsg` call (default 64).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.clamp(1, 1024);
        self
    }

    /// Kernel receive/send buffer per socket (default 4 MiB, capped by
    /// `net.core.rmem_max`/`wmem_max`).
    pub fn socket_buffer(mut self, bytes: usize) -> Self {
        self.socket_buffer = bytes;
        self
    }

    /// Attach the BPF steering program (default on). Off, the kernel spreads
    /// datagrams by its own hash and shards forward to the owner: slower, same
    /// behaviour. For testing the fallback.
    pub fn kernel_steering(mut self, on: bool) -> Self {
        self.kernel_steering = on;
        self
    }

    /// Handle events on the shards with handlers built by `factory`, one per shard,
    /// on the shard's thread. Without a handler, events go to the merged stream.
    pub fn handler<F, H>(mut self, factory: F) -> Self
    where
        F: Fn(ShardInfo) -> H + Send + Sync + 'static,
        H: ShardHandler,
    {
        self.factory = Some(Arc::new(move |info| {
            Box::new(factory(info)) as Box<dyn ShardHandler>
        }));
        self
    }

    /// The CPU of each shard (`None`: unpinned), checked against the affinity mask.
    fn placement(
        &self,
        shards: usize,
        allowed: &[usize],
    ) -> Result<Vec<Option<usize>>, ServerError> {
        if !self.pin {
            return Ok(vec![None; shards]);
        }
        let list = match &self.cpus {
            Some(list) if !list.is_empty() => list.clone(),
            _ => allowed.to_vec(),
        };
        if let Some(&cpu) = list.iter().find(|cpu| !allowed.contains(cpu)) {
            return Err(ServerError::BadCpu {
                cpu,
                allowed: allowed.to_vec(),
            });
        }
        Ok((0..shards).map(|i| Some(list[i % list.len()])).collect())
    }

    /// Binds the sockets, starts the shards and waits until each is serving.
    pub fn start(self) -> Result<SoeServer, ServerError> {
        let allowed = allowed_cpus();
        let shards = self.shards.unwrap_or(allowed.len());
        if shards == 0 {
            return Err(ServerError::NoShards);
        }
        let placement = self.placement(shards, &allowed)?;
        let (sockets, local_addr, steering) = self.bind_sockets(shards)?;
        let (handle, receivers) = self.handle(shards, local_addr)?;
        let (events_tx, events_rx) = crossbeam_channel::bounded(self.event_queue);
        let mut server = SoeServer {
            handle,
            events: self.factory.is_none().then_some(events_rx),
            threads: Vec::with_capacity(shards),
            local_addr,
            steering,
        };
        let mut readiness = Vec::with_capacity(shards);
        for (index, (socket, queues)) in sockets.into_iter().zip(receivers).enumerate() {
            let setup = ShardSetup {
                index,
                socket,
                config: self.config.clone(),
                queues,
                handle: server.handle.clone(),
                events: match &self.factory {
                    Some(f) => EventTarget::Factory(f.clone()),
                    None => EventTarget::Stream(events_tx.clone()),
                },
                tick: self.tick,
                batch: self.batch,
                slot: (self.config.default_session_params.udp_length as usize).clamp(2048, 65_536),
                limits: Limits {
                    max_parked: self.command_queue,
                    flush_interval: self.flush_interval,
                    ..Limits::default()
                },
            };
            match spawn_shard(setup, placement[index]) {
                Ok((thread, ready)) => {
                    server.threads.push(thread);
                    readiness.push(ready);
                }
                Err(source) => {
                    let _ = server.stop();
                    return Err(ServerError::Start {
                        shard: index,
                        source,
                    });
                }
            }
        }
        drop(events_tx);
        for (shard, ready) in readiness.into_iter().enumerate() {
            if ready.recv_timeout(Duration::from_secs(10)).is_err() {
                let detail = server.handle.shared.inboxes[shard]
                    .liveness
                    .failure()
                    .unwrap_or_else(|| "did not start within 10 s".into());
                let _ = server.stop();
                return Err(ServerError::ShardFailed { shard, detail });
            }
        }
        tracing::info!(%local_addr, shards, steering, "soe server started");
        Ok(server)
    }

    /// Binds the shards' sockets; returns them, the bound address and whether the
    /// kernel steers datagrams to the owning shard (else shards forward).
    fn bind_sockets(
        &self,
        shards: usize,
    ) -> Result<(Vec<std::net::UdpSocket>, SocketAddr, bool), ServerError> {
        let bind_error = |source| ServerError::Bind {
            addr: self.bind,
            source,
        };
        let sockets = sys::bind_group(self.bind, shards, self.socket_buffer).map_err(bind_error)?;
        let local_addr = sockets[0].local_addr().map_err(bind_error)?;
        let steering = self.kernel_steering
            && shards > 1
            && match sys::attach_steering(&sockets[0], shards) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot attach the reuseport steering program; shards will forward");
                    false
                }
            };
        Ok((sockets, local_addr, steering))
    }

    /// The server's handle, with one command inbox per shard, and the receiving
    /// ends the shards take.
    fn handle(
        &self,
        shards: usize,
        local_addr: SocketAddr,
    ) -> Result<(SoeHandle, Vec<handle::InboxReceivers>), ServerError> {
        let mut inboxes = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for shard in 0..shards {
            let (inbox, rx) = Inbox::new(self.command_queue, self.command_queue)
                .map_err(|source| ServerError::Start { shard, source })?;
            inboxes.push(inbox);
            receivers.push(rx);
        }
        let handle = SoeHandle {
            shared: Arc::new(Shared {
                inboxes,
                local_addr,
                stopping: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                max_message: self.config.default_session_params.max_message_len(),
                epoch: clock(),
                event_readers: Default::default(),
            }),
        };
        Ok((handle, receivers))
    }
}

/// Starts one shard's thread, pinned to `cpu` when given; returns the thread and
/// the channel on which the shard says it is serving.
fn spawn_shard(
    setup: ShardSetup,
    cpu: Option<usize>,
) -> std::io::Result<(ShardThread, Receiver<()>)> {
    let index = setup.index;
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name(format!("soe-shard-{index}"))
        .spawn(move || {
            if let Some(cpu) = cpu
                && let Err(e) = sys::pin_current_thread(cpu)
            {
                tracing::warn!(shard = index, cpu, error = %e, "cannot pin the shard");
            }
            let outcome = shard::run(setup, ready_tx);
            let _ = done_tx.send(());
            outcome
        })?;
    let thread = ShardThread {
        thread: Some(thread),
        done: done_rx,
    };
    Ok((thread, ready_rx))
}

#[allow(clippy::disallowed_methods)] // the runtime is where the clock is read
fn clock() -> Instant {
    Instant::now()
}

/// A shard's thread and the signal that it finished.
struct ShardThread {
    thread: Option<JoinHandle<Result<(), String>>>,
    done: Receiver<()>,
}

/// How often [`SoeServer::drain`] looks at the session count.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// How a drain ended ([`SoeServer::drain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// How long it waited for sessions to end.
    pub waited: Duration,
    /// Sessions still live when it stopped waiting (ended by the shutdown).
    pub sessions_left: u64,
}

/// The thread-per-core server (Linux).
///
/// [`SoeServer`] runs one shard per core. A shard is a pinned thread that owns one
/// `SO_REUSEPORT` UDP socket and one [`crate::SoeMultiplexer`] (inside the shared
/// sans-IO driver) holding only its own sessions; nothing on the per-datagram path
/// is shared between shards. The kernel steers each remote's datagrams to the
/// shard that owns it ([`shard_of`], mirrored by a classic-BPF program), and a
/// shard forwards what it receives for another. Datagrams move in batches
/// (`recvmmsg`/`sendmmsg`); an idle shard sleeps in `ppoll` on its socket and a
/// doorbell, so a datagram, a command or its next deadline always wakes it.
///
/// Two ways to handle events:
/// * **Shard-local handler** ([`SoeServerBuilder::handler`]): your code runs on the
///   shard that owns the session and replies through a [`ShardContext`], with no
///   channel hop. The fast path for game logic.
/// * **Merged stream** (the default): events of all shards in one bounded channel,
///   read with [`SoeServer::recv_event`], replies sent through a [`SoeHandle`] —
///   the actor style of `soe-protocol`'s `TokioSoeServer`. When the stream is full
///   the shards stop reading their sockets until there is room: events are never
///   dropped.
///
/// # When to pick which server
/// * `SoeServer` for dedicated Linux game servers that need many sessions per core
///   and the lowest CPU per message.
/// * [`crate::tokio_rt::TokioSoeServer`] (feature `tokio`) when the game already
///   lives in a Tokio runtime, or on other systems.
///
/// # Supervision
/// [`SoeServer::health`] reads each shard's state without asking it (serving,
/// stopped, failed; the age of its last turn; whether it is late for a planned
/// wake-up; whether it is at capacity). A shard that ends unexpectedly (a panic in
/// a handler, say) closes its sessions towards the application (`SessionClosed`
/// with `ManagerDeleted`) and the peers, logs an error, shows as
/// [`ShardState::Failed`], and makes [`SoeServer::shutdown`] return an error. Its
/// socket stays bound, so steering of the other shards is unchanged.
///
/// # Requirements
/// Linux ≥ 4.5 (`SO_ATTACH_REUSEPORT_CBPF`; without it shards forward). Start-up
/// failures are reported as [`ServerError`]s that name the fix.
///
/// ```no_run
/// use soe_uring::{SocketConfig, SocketEvent, SoeServer};
///
/// let mut config = SocketConfig::default();
/// config.default_session_params.application_protocol = "MyGame".into();
/// let server = SoeServer::builder("0.0.0.0:20260".parse().unwrap(), config)
///     .handler(|_shard| {
///         |event, ctx: &mut soe_uring::ShardContext<'_>| {
///             if let SocketEvent::DataReceived { remote, data, channel } = event {
///                 let _ = ctx.enqueue_data_on(&remote, &data, channel); // echo
///             }
///         }
///     })
///     .start()
///     .expect("server starts");
/// let handle = server.handle(); // Clone + Send + Sync
/// # drop(handle);
/// server.shutdown().unwrap();
/// ```
///
/// Dropping it shuts it down (Disconnect to every peer, bounded in time).
pub struct SoeServer {
    handle: SoeHandle,
    events: Option<Receiver<SocketEvent<SocketAddr>>>,
    threads: Vec<ShardThread>,
    local_addr: SocketAddr,
    steering: bool,
}

impl fmt::Debug for SoeServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoeServer")
            .field("local_addr", &self.local_addr)
            .field("shards", &self.threads.len())
            .field("steering", &self.steering)
            .finish_non_exhaustive()
    }
}

impl SoeServer {
    /// A builder for a server bound to `bind` (port 0 picks a free port).
    pub fn builder(bind: SocketAddr, config: SocketConfig) -> SoeServerBuilder {
        SoeServerBuilder {
            bind,
            config,
            shards: None,
            pin: true,
            cpus: None,
            tick: None,
            flush_interval: None,
            command_queue: 1 << 16,
            event_queue: 1 << 16,
            batch: 64,
            socket_buffer: 4 << 20,
            kernel_steering: true,
            factory: None,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.handle.shards()
    }

    /// Whether the kernel steering program is attached (otherwise shards forward).
    pub fn kernel_steering(&self) -> bool {
        self.steering
    }

    /// A handle for commands from any thread.
    pub fn handle(&self) -> SoeHandle {
        self.handle.clone()
    }

    /// Counters of every shard (see [`SoeHandle::stats`]).
    pub fn stats(&self) -> ServerStats {
        self.handle.stats()
    }

    /// Each shard's health, read without asking the shards (see [`ShardHealth`]).
    pub fn health(&self) -> Vec<ShardHealth> {
        let now = clock().saturating_duration_since(self.handle.shared.epoch);
        self.handle
            .shared
            .inboxes
            .iter()
            .enumerate()
            .map(|(shard, inbox)| inbox.liveness.health(shard, now))
            .collect()
    }

    /// The merged event stream as an [`EventStream`], for async code on any
    /// executor as well as threads (`None` with a shard-local handler).
    pub fn event_stream(&self) -> Option<EventStream> {
        Some(EventStream {
            events: self.events.clone()?,
            shared: self.handle.shared.clone(),
        })
    }

    /// The merged event stream (`None` when a shard-local handler is configured).
    pub fn events(&self) -> Option<&Receiver<SocketEvent<SocketAddr>>> {
        self.events.as_ref()
    }

    /// Blocks for the next event; `None` once every shard has stopped (or with a
    /// shard-local handler).
    pub fn recv_event(&self) -> Option<SocketEvent<SocketAddr>> {
        self.events.as_ref()?.recv().ok()
    }

    /// The next event within `timeout`.
    pub fn recv_event_timeout(&self, timeout: Duration) -> Option<SocketEvent<SocketAddr>> {
        self.events.as_ref()?.recv_timeout(timeout).ok()
    }

    /// The next event if one is waiting.
    pub fn try_recv_event(&self) -> Option<SocketEvent<SocketAddr>> {
        self.events.as_ref()?.try_recv().ok()
    }

    /// Drains, then shuts down: for a rolling restart. Every shard stops taking
    /// new sessions (SessionRequests are answered with a Disconnect,
    /// `ConnectionRefused`, so clients can go elsewhere at once) and serves its
    /// live ones as before, until none is left or `timeout` passes; then
    /// [`SoeServer::shutdown`] ends what is left (`ManagerDeleted`). With the
    /// merged event stream, keep taking events meanwhile (from a clone of
    /// [`SoeServer::events`]): sessions that cannot hand their events over stall.
    /// [`SoeHandle::drain`] and [`SoeHandle::sessions_live`] do the same from
    /// anywhere, for code that waits its own way.
    pub fn drain(mut self, timeout: Duration) -> Result<DrainReport, ServerError> {
        self.handle.drain();
        let start = clock();
        // The flag takes effect at each shard's next turn: give every shard one
        // before trusting its session count.
        let turns: Vec<u64> = self.health().iter().map(|h| h.turns).collect();
        let left = loop {
            let health = self.health();
            let current = health.iter().zip(&turns).all(|(h, &t)| {
                h.draining || h.turns > t || !matches!(h.state, ShardState::Serving)
            });
            let left = self.handle.sessions_live();
            let waited = clock().saturating_duration_since(start);
            if (current && left == 0) || waited >= timeout {
                break left;
            }
            std::thread::sleep(DRAIN_POLL.min(timeout - waited));
        };
        let report = DrainReport {
            waited: clock().saturating_duration_since(start),
            sessions_left: left,
        };
        tracing::info!(?report.waited, report.sessions_left, "drained; shutting down");
        self.stop()?;
        Ok(report)
    }

    /// Stops every shard: each terminates its sessions (Disconnect with
    /// `ManagerDeleted` to every peer), flushes, and exits; then joins the threads.
    /// Returns within about five seconds whatever the shards do: an error names a
    /// shard that failed while the server ran, or one that did not stop in time.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ServerError> {
        self.handle.shutdown();
        let events = self.events.take();
        let deadline = clock() + STOP_TIMEOUT;
        let mut result = Ok(());
        for (shard, slot) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            // Keep taking events so no shard waits for room in the stream.
            let finished = loop {
                if let Some(rx) = &events {
                    while rx.try_recv().is_ok() {}
                }
                let left = deadline.saturating_duration_since(clock());
                match slot.done.recv_timeout(left.min(Duration::from_millis(10))) {
                    Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break true,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) if left.is_zero() => {
                        break false;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                }
            };
            let Some(thread) = slot.thread else { continue };
            if !finished {
                tracing::error!(shard, "shard did not stop in time; leaving its thread");
                result = result.and(Err(ServerError::StopTimeout {
                    shard,
                    timeout: STOP_TIMEOUT,
                }));
                continue;
            }
            let detail = match thread.join() {
                Ok(Ok(())) => continue,
                Ok(Err(detail)) => detail,
                Err(_) => "the shard thread panicked".into(),
            };
            result = result.and(Err(ServerError::ShardFailed { shard, detail }));
        }
        result
    }
}

impl Drop for SoeServer {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.stop();
        }
    }
}
