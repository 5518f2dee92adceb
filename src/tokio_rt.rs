//! Tokio adapter (feature `tokio`): the shared sans-IO driver on a Tokio UDP socket,
//! run by one background task.
//!
//! The names and behaviour follow the Tokio runtime of `soe-protocol` 2.3.0, so a
//! program moves over by replacing `use soe_protocol::{..}` with
//! `use soe_uring::tokio_rt::{..}`:
//!
//! * [`TokioSoeServer`]: a socket with any number of sessions, reached from other
//!   tasks or threads through a cloneable [`SoeHandle`]; events arrive as
//!   [`SocketEvent`]s through [`TokioSoeServer::recv_event`].
//! * [`TokioSoeClient`]: one session to one server over a connected socket, reached
//!   through a cloneable [`SoeClientHandle`]; events arrive as [`ClientEvent`]s.
//!
//! The task is a thin shell: it reads and writes the socket and waits; what it does
//! with commands, events, full queues and overload is the crate's one driver, the
//! same as in the thread-per-core [`crate::SoeServer`].
//!
//! # Queues and backpressure
//! Commands (handle → driver) and events (driver → application) travel through
//! **bounded** queues, [`DEFAULT_QUEUE_CAPACITY`] entries each unless a
//! [`DriverConfig`] says otherwise (`bind_with`, `connect_with`). Nothing is
//! allocated for them up front: Tokio grows a bounded queue in blocks of 32 as it
//! fills. Stats requests travel on a separate small queue, so a full command queue
//! never holds them up.
//!
//! * **Command queue full.** The `bool` methods (the `soe-protocol` API) return
//!   `false`; the `try_*` methods return [`SendError::Full`] with the payload; the
//!   `*_async` methods wait for room, and the `*_blocking` ones block the calling
//!   (non-async) thread. A message no session could take (empty, a channel above 3,
//!   larger than `max_pending_bytes`) is refused at once ([`SendError::Invalid`]).
//! * **Event queue full.** The driver never drops an event. It keeps the event that
//!   did not fit and stops reading the socket until the application makes room;
//!   datagrams wait in the kernel's receive buffer (or are dropped there, and the
//!   peer retransmits reliable data). Timers, retransmissions and commands keep
//!   running meanwhile. A consumer that stalls for longer than the session's
//!   `inactivity_timeout` lets its sessions time out. One exception: while the
//!   driver has also stopped taking commands (below), it keeps reading, because the
//!   application may be waiting for room in the command queue before it takes more
//!   events, and only the acknowledgements in the socket can make that room; the
//!   events read meanwhile wait in the multiplexer, none is dropped.
//! * **Session queue full.** When a session already holds `max_pending_bytes` of
//!   unsent data, the driver keeps the message (and every later message or
//!   terminate for that session, so their order holds) and hands it over as soon as
//!   acknowledgements make room; other sessions are not held up. At most
//!   `command_capacity` commands wait like this. At that bound a server ends the
//!   session with the most bytes waiting if that is more than its
//!   `max_pending_bytes` (`ReliableOverflow`: a peer that does not keep up cannot
//!   hold up the others, and the application sees the `SessionClosed`); otherwise,
//!   and always in a client, the driver stops taking commands, so the command
//!   queue fills and the handles see it. Reliable streams therefore never lose a
//!   message in the middle.
//!
//! A message for an address without a session is dropped, as `soe-protocol` does,
//! and counted in [`DriverStats::enqueue_refused`]. A client's messages sent before
//! [`ClientEvent::Connected`] wait for the session to open.
//!
//! # The driver loop
//! Each turn of the driver task reads up to 1024 datagrams that are already
//! waiting (into one 64 KiB buffer reused for the life of the task), answers stats
//! requests, applies up to 4096 queued commands, forwards the events, runs the
//! multiplexer's due timers and one coalesced flush, and sends every outgoing
//! datagram the socket takes (the rest wait for it to become writable, at most
//! 65 536; reliable data is retransmitted past that).
//!
//! Then it sleeps until a datagram or a command arrives, the event queue has room
//! again, the socket can take queued datagrams, the earliest deadline a session
//! really has is due ([`SoeMultiplexer::settle_deadline`]), or `tick_period` has
//! passed since the last turn, whichever comes first. The multiplexer's timers are exact, so
//! `tick_period` is only an upper bound on how long an idle driver sleeps;
//! `Duration::ZERO` disables the periodic wake-up (the reference panics on it). The
//! steady state allocates nothing per datagram.
//!
//! # Stopping
//! The driver stops when its event receiver is dropped (dropping the
//! [`TokioSoeServer`] or [`TokioSoeClient`] does that) or when the owner and every
//! handle are gone. It then applies the commands still queued, ends every session
//! with a Disconnect ([`DisconnectReason::Application`]) and sends those datagrams
//! (for at most 200 ms). `abort()` stops it at once, without telling the peers.
//!
//! Unlike the reference, a [`TokioSoeClient`] driver also stops after delivering
//! [`ClientEvent::Disconnected`]: the session cannot come back, so
//! [`TokioSoeClient::recv_event`] then returns `None` and the handles report that the
//! driver has stopped.
//!
//! # Clock
//! The driver reads time from Tokio's clock, the one its timers use, so the two
//! always agree (including under a paused test clock).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

pub use crate::driver::DriverStats;
pub use crate::send_error::SendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::driver::{Command, Delivery, Driver, EventSink, Limits, Offer};
use crate::mux::{SocketConfig, SocketEvent, SoeMultiplexer};
use crate::protocol::{DisconnectReason, PORT_ALIVE_TTL, RELIABLE_CHANNEL_COUNT, is_port_alive};
use crate::session::{Channel, SessionSnapshot};
use crate::socket::{is_icmp_error, with_ttl};

/// Default capacity of the command queue and of the event queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;

/// Receive buffer: the largest UDP payload fits, so nothing is ever truncated.
const RECV_BUFFER_LEN: usize = 64 * 1024;

/// Tokio's largest bounded-queue capacity (`Semaphore::MAX_PERMITS`).
const MAX_QUEUE_CAPACITY: usize = usize::MAX >> 3;

/// Stats requests that may wait for the driver.
const CONTROL_CAPACITY: usize = 16;

/// How long a stopping driver tries to send its last datagrams.
const FAREWELL_TIME: Duration = Duration::from_millis(200);

/// Queue sizes of a driver task. See the [module docs](self#queues-and-backpressure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// Commands that handles may queue before the driver takes them (default
    /// [`DEFAULT_QUEUE_CAPACITY`]; at least 1). It is also the most commands the
    /// driver holds back for sessions whose queues are full.
    pub command_capacity: usize,
    /// Events the driver may queue before the application takes them (default
    /// [`DEFAULT_QUEUE_CAPACITY`]; at least 1). When it is full the driver stops
    /// reading the socket.
    pub event_capacity: usize,
    /// Kernel receive and send buffer requested for sockets the adapter binds
    /// (default 4 MiB, capped by `net.core.rmem_max`/`wmem_max`). The OS default
    /// (about 200 KB on Linux) overflows under bursts and costs retransmissions.
    pub socket_buffer: usize,
    /// Tick-aligned flushing: sessions write their datagrams once per this
    /// interval, one datagram per session carrying what was queued since the
    /// last flush, the acks owed and any heartbeat due (see
    /// [`crate::SoeServerBuilder::flush_interval`]). Default `None`: every turn
    /// flushes.
    pub flush_interval: Option<Duration>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            command_capacity: DEFAULT_QUEUE_CAPACITY,
            event_capacity: DEFAULT_QUEUE_CAPACITY,
            socket_buffer: 4 << 20,
            flush_interval: None,
        }
    }
}

/// Binds a non-blocking UDP socket with `buffer` bytes of kernel buffers (best
/// effort: the kernel caps them).
fn bind_socket(local: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    UdpSocket::from_std(socket.into())
}

impl DriverConfig {
    fn command_slots(&self) -> usize {
        self.command_capacity.clamp(1, MAX_QUEUE_CAPACITY)
    }

    fn event_slots(&self) -> usize {
        self.event_capacity.clamp(1, MAX_QUEUE_CAPACITY)
    }
}

/// The payload of a command that could not be queued.
fn payload_of(command: Command) -> Bytes {
    match command {
        Command::Send { data, .. } => data,
        _ => Bytes::new(),
    }
}

fn try_send_error(error: TrySendError<Command>) -> SendError<Command> {
    match error {
        TrySendError::Full(command) => SendError::Full(command),
        TrySendError::Closed(command) => SendError::Stopped(command),
    }
}

/// Requests to the driver task outside the command queue (which may be full).
#[derive(Debug)]
enum Control {
    /// Send a copy of the counters.
    Stats(oneshot::Sender<DriverStats>),
    /// Start draining, and answer once no session is left.
    Drain(oneshot::Sender<()>),
    /// Send a copy of one session's state and counters.
    Session(SocketAddr, oneshot::Sender<Option<SessionSnapshot>>),
}

/// The queues shared by both handle types: commands, and control requests on
/// their own queue.
#[derive(Clone, Debug)]
struct Commands {
    commands: mpsc::Sender<Command>,
    control: mpsc::Sender<Control>,
    /// Largest message a session can take (`max_pending_bytes`).
    max_message: usize,
}

/// Whether a session could ever take `data` on `channel`.
fn valid_message(data: &[u8], channel: Channel, max_message: usize) -> bool {
    let channel_ok = match channel {
        Channel::Reliable(n) => n < RELIABLE_CHANNEL_COUNT,
        Channel::Unreliable | Channel::Ordered => true,
    };
    channel_ok && !data.is_empty() && data.len() <= max_message
}

impl Commands {
    fn try_send(&self, command: Command) -> Result<(), SendError<Command>> {
        self.commands.try_send(command).map_err(try_send_error)
    }

    fn check(&self, data: Bytes, channel: Channel) -> Result<Bytes, SendError<Bytes>> {
        if valid_message(&data, channel, self.max_message) {
            Ok(data)
        } else {
            Err(SendError::Invalid(data))
        }
    }

    fn try_enqueue(
        &self,
        remote: SocketAddr,
        data: Bytes,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        let data = self.check(data, channel)?;
        self.try_send(Command::Send {
            remote,
            data,
            channel,
        })
        .map_err(|e| e.map(payload_of))
    }

    async fn enqueue_async(
        &self,
        remote: SocketAddr,
        data: Bytes,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        let data = self.check(data, channel)?;
        let command = Command::Send {
            remote,
            data,
            channel,
        };
        self.commands
            .send(command)
            .await
            .map_err(|e| SendError::Stopped(payload_of(e.0)))
    }

    fn enqueue_blocking(
        &self,
        remote: SocketAddr,
        data: Bytes,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        let data = self.check(data, channel)?;
        let command = Command::Send {
            remote,
            data,
            channel,
        };
        self.commands
            .blocking_send(command)
            .map_err(|e| SendError::Stopped(payload_of(e.0)))
    }

    fn try_terminate(
        &self,
        remote: SocketAddr,
        reason: DisconnectReason,
    ) -> Result<(), SendError<DisconnectReason>> {
        self.try_send(Command::Terminate { remote, reason })
            .map_err(|e| e.map(|_| reason))
    }

    async fn stats(&self) -> Option<DriverStats> {
        let (reply, answer) = oneshot::channel();
        self.control.send(Control::Stats(reply)).await.ok()?;
        answer.await.ok()
    }

    fn is_stopped(&self) -> bool {
        self.commands.is_closed()
    }

    async fn session_stats(&self, remote: SocketAddr) -> Option<SessionSnapshot> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Session(remote, reply))
            .await
            .ok()?;
        answer.await.ok().flatten()
    }

    /// Starts draining; resolves once no session is left (`false` if the driver
    /// stopped first).
    async fn drain(&self) -> bool {
        let (done, drained) = oneshot::channel();
        if self.control.send(Control::Drain(done)).await.is_err() {
            return false;
        }
        drained.await.is_ok()
    }
}

/// The queues of a new driver task: the handles' side and the task's side.
fn queues(
    config: &SocketConfig,
    driver: &DriverConfig,
) -> (Commands, mpsc::Receiver<Command>, mpsc::Receiver<Control>) {
    let (commands, commands_rx) = mpsc::channel(driver.command_slots());
    let (control, control_rx) = mpsc::channel(CONTROL_CAPACITY);
    let handles = Commands {
        commands,
        control,
        max_message: config.default_session_params.max_message_len(),
    };
    (handles, commands_rx, control_rx)
}

/// A cloneable, thread-safe handle to a [`TokioSoeServer`]'s driver.
///
/// Every method only queues a command for the driver task and returns at once
/// (except the `*_async` and `*_blocking` variants, which wait for room in the
/// queue). Commands from one handle are applied in order; messages queued in the
/// same loop turn share datagrams.
///
/// # What the `bool` methods return
/// As in `soe-protocol`, `true` means the command was queued, not that it will
/// succeed: whether a session for the address exists, is running and has room is
/// decided later by the driver (refusals are counted in [`DriverStats`]). `false`
/// means the command was **not** queued, because the driver has stopped **or**,
/// unlike the unbounded reference, because the command queue is full
/// ([`DriverConfig::command_capacity`]). The `try_*` methods tell the two apart and
/// give the payload back; [`SoeHandle::enqueue_data_on_async`] waits for room.
#[derive(Clone, Debug)]
pub struct SoeHandle {
    commands: Commands,
}

impl SoeHandle {
    /// Opens a client session to `remote` from the server's socket. `false`: not
    /// queued (driver stopped or queue full; see [`SoeHandle::try_connect`]).
    pub fn connect(&self, remote: SocketAddr) -> bool {
        self.try_connect(remote).is_ok()
    }

    /// Opens a client session to `remote`; on error the address comes back.
    pub fn try_connect(&self, remote: SocketAddr) -> Result<(), SendError<SocketAddr>> {
        self.commands
            .try_send(Command::Connect(remote))
            .map_err(|e| e.map(|_| remote))
    }

    /// Queues `data` for `remote` on reliable channel 0. `false`: not queued (driver
    /// stopped or queue full; see [`SoeHandle::try_enqueue_data`]).
    pub fn enqueue_data(&self, remote: SocketAddr, data: impl Into<Bytes>) -> bool {
        self.try_enqueue_data(remote, data).is_ok()
    }

    /// Queues `data` for `remote` on `channel`. `false`: not queued (driver stopped or
    /// queue full; see [`SoeHandle::try_enqueue_data_on`]).
    pub fn enqueue_data_on(
        &self,
        remote: SocketAddr,
        data: impl Into<Bytes>,
        channel: Channel,
    ) -> bool {
        self.try_enqueue_data_on(remote, data, channel).is_ok()
    }

    /// Queues `data` for `remote` on reliable channel 0; on error the payload comes
    /// back.
    pub fn try_enqueue_data(
        &self,
        remote: SocketAddr,
        data: impl Into<Bytes>,
    ) -> Result<(), SendError<Bytes>> {
        self.try_enqueue_data_on(remote, data, Channel::Reliable(0))
    }

    /// Queues `data` for `remote` on `channel`; on error the payload comes back:
    /// [`SendError::Full`] when the command queue is full, [`SendError::Stopped`] when
    /// the driver has stopped.
    pub fn try_enqueue_data_on(
        &self,
        remote: SocketAddr,
        data: impl Into<Bytes>,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        self.commands.try_enqueue(remote, data.into(), channel)
    }

    /// Queues `data` for `remote` on `channel`, waiting while the command queue is
    /// full. Fails (with the payload) only when the driver has stopped.
    pub async fn enqueue_data_on_async(
        &self,
        remote: SocketAddr,
        data: impl Into<Bytes>,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        self.commands
            .enqueue_async(remote, data.into(), channel)
            .await
    }

    /// Queues `data` for `remote` on `channel` from synchronous code, blocking the
    /// thread while the command queue is full. Fails (with the payload) only when the
    /// driver has stopped.
    ///
    /// # Panics
    /// When called from an asynchronous context (inside a Tokio runtime thread); use
    /// [`SoeHandle::enqueue_data_on_async`] there.
    pub fn enqueue_data_on_blocking(
        &self,
        remote: SocketAddr,
        data: impl Into<Bytes>,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        self.commands.enqueue_blocking(remote, data.into(), channel)
    }

    /// Ends the session with `remote`, sending it a Disconnect with `reason` after
    /// what is already queued for it (as far as the send window allows). `false`: not
    /// queued (driver stopped or queue full; see [`SoeHandle::try_terminate`]).
    pub fn terminate(&self, remote: SocketAddr, reason: DisconnectReason) -> bool {
        self.try_terminate(remote, reason).is_ok()
    }

    /// Ends the session with `remote`; on error the reason comes back.
    pub fn try_terminate(
        &self,
        remote: SocketAddr,
        reason: DisconnectReason,
    ) -> Result<(), SendError<DisconnectReason>> {
        self.commands.try_terminate(remote, reason)
    }

    /// The driver's counters, or `None` once it has stopped. The request travels
    /// through the command queue like any command (waiting for room if it is full).
    pub async fn stats(&self) -> Option<DriverStats> {
        self.commands.stats().await
    }

    /// Whether the driver has stopped (every command would fail).
    pub fn is_stopped(&self) -> bool {
        self.commands.is_stopped()
    }

    /// One session's state and counters (round trip, resends, bytes, queue
    /// depths, ...); `None` when no session has that address or the driver has
    /// stopped.
    pub async fn session_stats(&self, remote: SocketAddr) -> Option<SessionSnapshot> {
        self.commands.session_stats(remote).await
    }

    /// Starts draining, for a rolling restart: live sessions are served as
    /// before, SessionRequests are answered with a Disconnect (`ConnectionRefused`)
    /// so clients go elsewhere at once. Resolves once no session is left (`false`
    /// if the driver stopped first). Bound it with a timeout, keep taking events
    /// meanwhile, then drop the server (which ends what is left):
    ///
    /// ```no_run
    /// # async fn f(mut server: soe_uring::tokio_rt::TokioSoeServer) {
    /// let handle = server.handle();
    /// let drained = tokio::spawn(async move {
    ///     tokio::time::timeout(std::time::Duration::from_secs(30), handle.drain()).await
    /// });
    /// while !drained.is_finished() {
    ///     tokio::select! {
    ///         Some(event) = server.recv_event() => { /* serve it */ }
    ///         _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
    ///     }
    /// }
    /// drop(server);
    /// # }
    /// ```
    pub async fn drain(&self) -> bool {
        self.commands.drain().await
    }
}

/// An SOE server: a [`SoeMultiplexer`] on a UDP socket, run by its own Tokio task.
///
/// Share [`TokioSoeServer::handle`] with the tasks and threads that send data or
/// manage sessions, and receive [`SocketEvent`]s with
/// [`TokioSoeServer::recv_event`]. Several servers on `SO_REUSEPORT` sockets (see
/// [`TokioSoeServer::from_std`]) spread the load over cores.
///
/// Dropping the server stops the driver gracefully, even while handles remain: see
/// the [module docs](self#stopping).
#[derive(Debug)]
pub struct TokioSoeServer {
    handle: SoeHandle,
    events: mpsc::Receiver<SocketEvent<SocketAddr>>,
    local_addr: SocketAddr,
    driver: JoinHandle<()>,
}

impl TokioSoeServer {
    /// Binds a UDP socket to `local` and starts the driver task with the default
    /// [`DriverConfig`]. `tick_period` bounds how long an idle driver sleeps (1–10 ms
    /// is typical; `Duration::ZERO` wakes only for the multiplexer's timers).
    pub async fn bind(
        local: SocketAddr,
        config: SocketConfig,
        tick_period: Duration,
    ) -> io::Result<Self> {
        Self::bind_with(local, config, tick_period, DriverConfig::default()).await
    }

    /// [`TokioSoeServer::bind`] with explicit queue capacities.
    pub async fn bind_with(
        local: SocketAddr,
        config: SocketConfig,
        tick_period: Duration,
        driver: DriverConfig,
    ) -> io::Result<Self> {
        let socket = bind_socket(local, driver.socket_buffer)?;
        Self::start(socket, config, tick_period, driver)
    }

    /// Starts a server on a socket bound elsewhere, e.g. with `SO_REUSEPORT` or larger
    /// kernel buffers set through `socket2`. The socket is switched to non-blocking
    /// mode.
    ///
    /// # Panics
    /// Outside a Tokio runtime with I/O and time enabled.
    pub fn from_std(
        socket: std::net::UdpSocket,
        config: SocketConfig,
        tick_period: Duration,
        driver: DriverConfig,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Self::start(UdpSocket::from_std(socket)?, config, tick_period, driver)
    }

    fn start(
        socket: UdpSocket,
        config: SocketConfig,
        tick_period: Duration,
        driver: DriverConfig,
    ) -> io::Result<Self> {
        let local_addr = socket.local_addr()?;
        // Best effort: without it, peers whose port closed linger until their
        // inactivity timeout instead of ending after `unreachable_grace`.
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let queued = crate::sys::enable_error_queue(socket.as_raw_fd(), local_addr.is_ipv6());
            if let Err(e) = queued {
                tracing::warn!(error = %e, "cannot read ICMP errors (IP_RECVERR)");
            }
        }
        let (commands, command_rx, control_rx) = queues(&config, &driver);
        let (event_tx, event_rx) = mpsc::channel(driver.event_slots());
        let task = Task::new(
            socket,
            None,
            Driver::new(SoeMultiplexer::new(config), limits(&driver, false), 0),
            command_rx,
            control_rx,
            Sink::new(event_tx, Some, false),
            tick_period,
        );
        let span = tracing::info_span!("soe_server", local = %local_addr);
        let driver = tokio::spawn(task.run().instrument(span));
        Ok(Self {
            handle: SoeHandle { commands },
            events: event_rx,
            local_addr,
            driver,
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to the driver (cloneable, `Send + Sync`).
    pub fn handle(&self) -> SoeHandle {
        self.handle.clone()
    }

    /// The next event; `None` once the driver has stopped and every event was taken.
    /// Taking events promptly keeps the socket read: see the
    /// [module docs](self#queues-and-backpressure).
    pub async fn recv_event(&mut self) -> Option<SocketEvent<SocketAddr>> {
        self.events.recv().await
    }

    /// Waits for at least one event, then moves up to `limit` waiting events into
    /// `buffer`. Returns how many; 0 once the driver has stopped and every event was
    /// taken (or when `limit` is 0).
    pub async fn recv_events(
        &mut self,
        buffer: &mut Vec<SocketEvent<SocketAddr>>,
        limit: usize,
    ) -> usize {
        self.events.recv_many(buffer, limit).await
    }

    /// The driver's counters, or `None` once it has stopped.
    pub async fn stats(&self) -> Option<DriverStats> {
        self.handle.stats().await
    }

    /// Cancels the driver task at once: peers are not told (they time out).
    pub fn abort(&self) {
        self.driver.abort();
    }
}

/// What a [`TokioSoeClient`] reports about its session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The session is established; data may be sent from now on (earlier messages
    /// are refused and dropped). Always the first event.
    Connected,
    /// A message arrived from the server.
    DataReceived {
        /// The message.
        data: Bytes,
        /// The channel it arrived on.
        channel: Channel,
    },
    /// The session ended (always the last event; the driver then stops).
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
}

/// A client's view of its session's events (a client session is never remapped:
/// only servers move sessions).
fn client_event(event: SocketEvent<SocketAddr>) -> Option<ClientEvent> {
    match event {
        SocketEvent::SessionOpened { .. } => Some(ClientEvent::Connected),
        SocketEvent::DataReceived { data, channel, .. } => {
            Some(ClientEvent::DataReceived { data, channel })
        }
        SocketEvent::SessionClosed { reason, .. } => Some(ClientEvent::Disconnected { reason }),
        SocketEvent::SessionRemapped { .. } => None,
    }
}

/// A cloneable, thread-safe handle to a [`TokioSoeClient`]'s driver.
///
/// The return values mean what they mean on [`SoeHandle`]: `true` = queued (the
/// session decides later whether it can send it: before
/// [`ClientEvent::Connected`] it cannot), `false` = not queued because the driver
/// has stopped or the command queue is full.
#[derive(Clone, Debug)]
pub struct SoeClientHandle {
    commands: Commands,
    server: SocketAddr,
}

impl SoeClientHandle {
    /// Queues `data` on reliable channel 0. `false`: not queued (driver stopped or
    /// queue full; see [`SoeClientHandle::try_enqueue_data`]).
    pub fn enqueue_data(&self, data: impl Into<Bytes>) -> bool {
        self.try_enqueue_data(data).is_ok()
    }

    /// Queues `data` on `channel`. `false`: not queued (driver stopped or queue full;
    /// see [`SoeClientHandle::try_enqueue_data_on`]).
    pub fn enqueue_data_on(&self, data: impl Into<Bytes>, channel: Channel) -> bool {
        self.try_enqueue_data_on(data, channel).is_ok()
    }

    /// Queues `data` on reliable channel 0; on error the payload comes back.
    pub fn try_enqueue_data(&self, data: impl Into<Bytes>) -> Result<(), SendError<Bytes>> {
        self.try_enqueue_data_on(data, Channel::Reliable(0))
    }

    /// Queues `data` on `channel`; on error the payload comes back
    /// ([`SendError::Full`]: command queue full; [`SendError::Stopped`]: driver
    /// stopped).
    pub fn try_enqueue_data_on(
        &self,
        data: impl Into<Bytes>,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        self.commands.try_enqueue(self.server, data.into(), channel)
    }

    /// Queues `data` on `channel`, waiting while the command queue is full. Fails
    /// (with the payload) only when the driver has stopped.
    pub async fn enqueue_data_on_async(
        &self,
        data: impl Into<Bytes>,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        self.commands
            .enqueue_async(self.server, data.into(), channel)
            .await
    }

    /// Queues `data` on `channel` from synchronous code, blocking the thread while the
    /// command queue is full. Fails (with the payload) only when the driver has
    /// stopped.
    ///
    /// # Panics
    /// When called from an asynchronous context; use
    /// [`SoeClientHandle::enqueue_data_on_async`] there.
    pub fn enqueue_data_on_blocking(
        &self,
        data: impl Into<Bytes>,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        self.commands
            .enqueue_blocking(self.server, data.into(), channel)
    }

    /// Ends the session, sending the server a Disconnect with `reason` after what is
    /// already queued. `false`: not queued (driver stopped or queue full).
    pub fn terminate(&self, reason: DisconnectReason) -> bool {
        self.try_terminate(reason).is_ok()
    }

    /// Ends the session; on error the reason comes back.
    pub fn try_terminate(
        &self,
        reason: DisconnectReason,
    ) -> Result<(), SendError<DisconnectReason>> {
        self.commands.try_terminate(self.server, reason)
    }

    /// The driver's counters, or `None` once it has stopped.
    pub async fn stats(&self) -> Option<DriverStats> {
        self.commands.stats().await
    }

    /// Whether the driver has stopped (every command would fail).
    pub fn is_stopped(&self) -> bool {
        self.commands.is_stopped()
    }
}

/// An SOE client: one session to one server over a connected UDP socket, run by its
/// own Tokio task.
///
/// The session request goes out as soon as the client is created; wait for
/// [`ClientEvent::Connected`] before sending. Datagrams from other addresses are
/// filtered out by the OS (the socket is connected).
#[derive(Debug)]
pub struct TokioSoeClient {
    handle: SoeClientHandle,
    events: mpsc::Receiver<ClientEvent>,
    local_addr: SocketAddr,
    server_addr: SocketAddr,
    driver: JoinHandle<()>,
}

impl TokioSoeClient {
    /// Connects to `server` from an ephemeral port on the unspecified address of the
    /// server's family (`0.0.0.0` or `::`). Returns once the socket is ready, without
    /// waiting for the handshake.
    pub async fn connect_to(
        server: SocketAddr,
        config: SocketConfig,
        tick_period: Duration,
    ) -> io::Result<Self> {
        let local = match server {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        Self::connect(local, server, config, tick_period).await
    }

    /// Binds to `local`, connects the socket to `server` and starts the driver task
    /// with the default [`DriverConfig`]. Returns once the socket is ready, without
    /// waiting for the handshake. `tick_period`: see [`TokioSoeServer::bind`].
    pub async fn connect(
        local: SocketAddr,
        server: SocketAddr,
        config: SocketConfig,
        tick_period: Duration,
    ) -> io::Result<Self> {
        Self::connect_with(local, server, config, tick_period, DriverConfig::default()).await
    }

    /// [`TokioSoeClient::connect`] with explicit queue capacities.
    pub async fn connect_with(
        local: SocketAddr,
        server: SocketAddr,
        config: SocketConfig,
        tick_period: Duration,
        driver: DriverConfig,
    ) -> io::Result<Self> {
        let socket = bind_socket(local, driver.socket_buffer)?;
        socket.connect(server).await?;
        let local_addr = socket.local_addr()?;
        let (commands, command_rx, control_rx) = queues(&config, &driver);
        let mut mux = SoeMultiplexer::new(config);
        mux.connect(server, now())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (event_tx, event_rx) = mpsc::channel(driver.event_slots());
        let task = Task::new(
            socket,
            Some(server),
            Driver::new(mux, limits(&driver, true), 0),
            command_rx,
            control_rx,
            Sink::new(event_tx, client_event, true),
            tick_period,
        );
        let span = tracing::info_span!("soe_client", local = %local_addr, %server);
        let driver = tokio::spawn(task.run().instrument(span));
        Ok(Self {
            handle: SoeClientHandle { commands, server },
            events: event_rx,
            local_addr,
            server_addr: server,
            driver,
        })
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.server_addr
    }

    /// A handle to the driver (cloneable, `Send + Sync`).
    pub fn handle(&self) -> SoeClientHandle {
        self.handle.clone()
    }

    /// The next event; `None` once the driver has stopped (after
    /// [`ClientEvent::Disconnected`]) and every event was taken.
    pub async fn recv_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// Waits for at least one event, then moves up to `limit` waiting events into
    /// `buffer`. Returns how many; 0 once the driver has stopped and every event was
    /// taken (or when `limit` is 0).
    pub async fn recv_events(&mut self, buffer: &mut Vec<ClientEvent>, limit: usize) -> usize {
        self.events.recv_many(buffer, limit).await
    }

    /// The driver's counters, or `None` once it has stopped.
    pub async fn stats(&self) -> Option<DriverStats> {
        self.handle.stats().await
    }

    /// Cancels the driver task at once: the server is not told (it times out).
    pub fn abort(&self) {
        self.driver.abort();
    }
}

/// The current time, from Tokio's clock (which its timers use).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The driver's limits for a task's queue sizes. A client, with one session,
/// only back-pressures at the parking bound (see the [module docs](self)).
fn limits(config: &DriverConfig, client: bool) -> Limits {
    Limits {
        max_parked: config.command_slots(),
        close_overflowing: !client,
        flush_interval: config.flush_interval,
        ..Limits::default()
    }
}

/// The event queue as a driver's event sink. `E` is the event type handed to the
/// application.
struct Sink<E> {
    events: mpsc::Sender<E>,
    /// `None`: an event this application does not see.
    map: fn(SocketEvent<SocketAddr>) -> Option<E>,
    /// Stop once a `SessionClosed` has been delivered (client mode).
    stop_after_close: bool,
    /// A `SessionClosed` went out in client mode: the task stops.
    finished: bool,
}

impl<E> Sink<E> {
    fn new(
        events: mpsc::Sender<E>,
        map: fn(SocketEvent<SocketAddr>) -> Option<E>,
        stop_after_close: bool,
    ) -> Self {
        Self {
            events,
            map,
            stop_after_close,
            finished: false,
        }
    }
}

impl<E> EventSink for Sink<E> {
    fn offer(&mut self, event: SocketEvent<SocketAddr>) -> Offer {
        if self.finished {
            return Offer::Closed;
        }
        match self.events.try_reserve() {
            Ok(permit) => {
                self.finished =
                    self.stop_after_close && matches!(event, SocketEvent::SessionClosed { .. });
                if let Some(event) = (self.map)(event) {
                    permit.send(event);
                }
                Offer::Taken
            }
            Err(TrySendError::Full(())) => Offer::Full(event),
            Err(TrySendError::Closed(())) => Offer::Closed,
        }
    }
}

/// What ended the task's wait.
enum Wake {
    Continue,
    /// Only the timer ended the wait.
    Timer,
    Command(Command),
    Control(Control),
    Stop,
}

/// The task that owns the socket and the driver: the driver's I/O shell.
struct Task<E> {
    socket: UdpSocket,
    /// Client mode: the server the socket is connected to.
    peer: Option<SocketAddr>,
    driver: Driver,
    commands: mpsc::Receiver<Command>,
    control: mpsc::Receiver<Control>,
    sink: Sink<E>,
    /// Stats requests that woke the task, answered at the end of the next turn (so
    /// commands queued before them are counted).
    stats_requests: Vec<oneshot::Sender<DriverStats>>,
    /// Drain requests, answered once no session is left.
    drained: Vec<oneshot::Sender<()>>,
    tick_period: Option<Duration>,
    buf: Box<[u8]>,
    /// A server socket reported ICMP errors: read its error queue.
    errors_pending: bool,
}

impl<E: Send + 'static> Task<E> {
    fn new(
        socket: UdpSocket,
        peer: Option<SocketAddr>,
        driver: Driver,
        commands: mpsc::Receiver<Command>,
        control: mpsc::Receiver<Control>,
        sink: Sink<E>,
        tick_period: Duration,
    ) -> Self {
        Self {
            socket,
            peer,
            driver,
            commands,
            control,
            sink,
            stats_requests: Vec::new(),
            drained: Vec::new(),
            tick_period: (!tick_period.is_zero()).then_some(tick_period),
            buf: vec![0; RECV_BUFFER_LEN].into_boxed_slice(),
            errors_pending: false,
        }
    }

    async fn run(mut self) {
        let mut sleep = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut armed: Option<Instant> = None;
        loop {
            let at = now();
            self.driver.begin_turn(at);
            let saturated = self.receive(at);
            self.read_errors(at);
            self.driver.after_receive(saturated, at);
            let (stop, commands_left) = self.apply_commands(at);
            let mut closed = stop || self.deliver();
            self.driver.tick(at);
            self.send_outgoing();
            closed |= self.deliver();
            self.answer_control();
            let ended = if cfg!(feature = "metrics") { now() } else { at };
            self.driver.end_turn(at, ended, Driver::snapshot);
            if closed {
                break;
            }

            // Wait for the next reason to work.
            let plan = self.driver.wait_plan(saturated || commands_left);
            if plan.again {
                tokio::task::yield_now().await;
                continue;
            }
            let wake = match (
                self.tick_period.and_then(|p| at.checked_add(p)),
                plan.deadline,
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(at) = wake
                && (armed != Some(at) || sleep.is_elapsed())
            {
                sleep.as_mut().reset(tokio::time::Instant::from_std(at));
                armed = Some(at);
            }
            let woke = tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(control) => Wake::Control(control),
                    None => Wake::Continue,
                },
                permit = self.sink.events.reserve(), if plan.event_room => match permit {
                    // The room is taken again at once by the waiting event.
                    Ok(_) => Wake::Continue,
                    Err(_) => Wake::Stop,
                },
                () = self.sink.events.closed(), if !plan.event_room => Wake::Stop,
                command = self.commands.recv(), if plan.commands => match command {
                    Some(command) => Wake::Command(command),
                    None => Wake::Stop,
                },
                _ = self.socket.readable(), if plan.read => Wake::Continue,
                _ = self.socket.writable(), if plan.write => Wake::Continue,
                () = sleep.as_mut(), if wake.is_some() => Wake::Timer,
            };
            self.driver.stats_mut().wakeups += 1;
            match woke {
                Wake::Continue => {}
                Wake::Timer => self.driver.stats_mut().timer_wakeups += 1,
                Wake::Command(command) => self.driver.apply(command, now()),
                Wake::Control(control) => self.take_control(control),
                Wake::Stop => break,
            }
        }
        self.shut_down().await;
    }

    /// Reads the datagrams already waiting, up to the turn's budget. Returns
    /// whether the budget ran out first.
    fn receive(&mut self, at: Instant) -> bool {
        if !self.driver.reading() {
            return false;
        }
        while self.driver.receive_budget() > 0 {
            let received = match self.peer {
                Some(server) => self.socket.try_recv(&mut self.buf).map(|n| (n, server)),
                None => self.socket.try_recv_from(&mut self.buf),
            };
            match received {
                Ok((len, from)) => {
                    let stats = self.driver.stats_mut();
                    stats.datagrams_in += 1;
                    stats.bytes_in += len as u64;
                    self.driver.on_datagram(from, &self.buf[..len], at);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if is_icmp_error(&e) => self.on_icmp_error(at),
                Err(_) => self.driver.stats_mut().recv_errors += 1,
            }
        }
        true
    }

    /// A socket call returned the error an ICMP report left: a client's connected
    /// socket names its server; a server's details wait in the error queue.
    fn on_icmp_error(&mut self, at: Instant) {
        match self.peer {
            Some(server) => self.driver.on_unreachable(server, at),
            None => self.errors_pending = true,
        }
    }

    /// Reads a server socket's error queue when it reported errors (Linux).
    fn read_errors(&mut self, at: Instant) {
        if !std::mem::take(&mut self.errors_pending) {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            const ERRORS_PER_TURN: usize = 64;
            let mut found = Vec::new();
            let read =
                crate::sys::read_error_queue(self.socket.as_raw_fd(), ERRORS_PER_TURN, |to| {
                    found.push(to)
                });
            self.driver.stats_mut().icmp_other += read.other as u64;
            self.errors_pending = read.more;
            for to in found {
                self.driver.on_unreachable(to, at);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = at;
    }

    fn take_control(&mut self, control: Control) {
        match control {
            Control::Stats(reply) => self.stats_requests.push(reply),
            Control::Drain(done) => {
                self.driver.start_draining();
                self.drained.push(done);
            }
            Control::Session(remote, reply) => {
                let _ = reply.send(self.driver.mux().session(&remote).map(|s| s.snapshot()));
            }
        }
    }

    /// Answers stats requests, and drain requests once no session is left.
    fn answer_control(&mut self) {
        while let Ok(control) = self.control.try_recv() {
            self.take_control(control);
        }
        for reply in self.stats_requests.drain(..) {
            let _ = reply.send(self.driver.snapshot());
        }
        if self.driver.sessions() == 0 {
            for done in self.drained.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// Applies queued commands while the driver takes them (bounded). Returns
    /// whether every handle is gone, and whether commands were left.
    fn apply_commands(&mut self, at: Instant) -> (bool, bool) {
        for _ in 0..self.driver.limits().commands_per_turn {
            if !self.driver.accepting() {
                return (false, false);
            }
            match self.commands.try_recv() {
                Ok(command) => self.driver.apply(command, at),
                Err(TryRecvError::Empty) => return (false, false),
                Err(TryRecvError::Disconnected) => return (true, false),
            }
        }
        (false, self.driver.accepting() && !self.commands.is_empty())
    }

    /// Hands events to the application; returns whether the task should stop
    /// (nobody listens, or a client's session has ended and been reported).
    fn deliver(&mut self) -> bool {
        self.driver.deliver(&mut self.sink) == Delivery::Closed || self.sink.finished
    }

    /// Sends every waiting datagram the socket takes now; the rest wait for it to
    /// become writable (bounded by the driver).
    fn send_outgoing(&mut self) {
        // A send that failed with the socket's pending ICMP error (which the
        // failure cleared) is tried once more before its datagram is dropped.
        let mut retried = false;
        loop {
            let sent = {
                let Some((to, datagram)) = self.driver.outgoing().next() else {
                    return;
                };
                let socket = &self.socket;
                let send = || match self.peer {
                    Some(_) => socket.try_send(datagram),
                    None => socket.try_send_to(datagram, *to),
                };
                if is_port_alive(datagram) {
                    with_ttl(socket.into(), to.is_ipv6(), PORT_ALIVE_TTL, send)
                } else {
                    send()
                }
            };
            match sent {
                Err(e) if is_icmp_error(&e) && !retried => {
                    retried = true;
                    self.on_icmp_error(now());
                    continue;
                }
                Ok(_) => {
                    retried = false;
                    self.driver.sent(1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.driver.trim_outgoing();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    retried = false;
                    self.driver.send_failed();
                }
            }
        }
    }

    /// Graceful stop: applies the commands still queued, then ends every session with
    /// a Disconnect and sends what is left, for a bounded time.
    async fn shut_down(mut self) {
        self.commands.close();
        let at = now();
        while let Ok(command) = self.commands.try_recv() {
            self.driver.apply(command, at);
        }
        self.driver.close_all(DisconnectReason::Application, at);
        let _ = self.driver.deliver(&mut self.sink);
        let _ = tokio::time::timeout(FAREWELL_TIME, async {
            loop {
                self.send_outgoing();
                if self.driver.outgoing_len() == 0 || self.socket.writable().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
}
