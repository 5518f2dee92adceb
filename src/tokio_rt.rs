//! Tokio adapter (feature `tokio`): a [`SoeMultiplexer`] on a Tokio UDP socket, run by
//! one background task.
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
//! # Queues and backpressure
//! Commands (handle → driver) and events (driver → application) travel through
//! **bounded** queues, [`DEFAULT_QUEUE_CAPACITY`] entries each unless a
//! [`DriverConfig`] says otherwise (`bind_with`, `connect_with`). Nothing is
//! allocated for them up front: Tokio grows a bounded queue in blocks of 32 as it
//! fills.
//!
//! * **Command queue full.** The `bool` methods (the `soe-protocol` API) return
//!   `false`; the `try_*` methods return [`SendError::Full`] with the payload; the
//!   `*_async` methods wait for room, and the `*_blocking` ones block the calling
//!   (non-async) thread.
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
//!   `command_capacity` commands wait like this; beyond that the driver stops taking
//!   commands, so the command queue fills and the handles see it. Reliable streams
//!   therefore never lose a message in the middle.
//!
//! A message the session refuses for good (no such session, not running yet,
//! invalid channel, empty, larger than `max_pending_bytes`) is dropped, as
//! `soe-protocol` does, and counted in [`DriverStats::enqueue_refused`].
//!
//! # The driver loop
//! Each turn of the driver task:
//! 1. reads up to 64 datagrams that are already waiting (`try_recv_from` into one
//!    64 KiB buffer reused for the life of the task) and feeds them to the
//!    multiplexer;
//! 2. applies up to 4096 queued commands;
//! 3. calls [`SoeMultiplexer::run_tick`] once, so that everything received and
//!    queued during the turn shares datagrams;
//! 4. sends every outgoing datagram (waiting for the socket to become writable when
//!    its buffer is full; a datagram the OS rejects outright is counted in
//!    [`DriverStats::send_errors`]);
//! 5. forwards the events.
//!
//! Then it sleeps until a datagram or a command arrives, the event queue has room
//! again, the multiplexer's next timer is due ([`SoeMultiplexer::next_deadline`]),
//! or `tick_period` has passed since the last turn, whichever comes first. The
//! multiplexer's timers are exact, so `tick_period` is only an upper bound on how
//! long an idle driver sleeps; `Duration::ZERO` disables the periodic wake-up (the
//! reference panics on it). The steady state allocates nothing per datagram.
//!
//! # Stopping
//! The driver stops when its event receiver is dropped (dropping the
//! [`TokioSoeServer`] or [`TokioSoeClient`] does that) or when the owner and every
//! handle are gone. It then applies the commands still queued, ends every session
//! with a Disconnect ([`DisconnectReason::Application`]) and sends those datagrams.
//! `abort()` stops it at once, without telling the peers.
//!
//! Unlike the reference, a [`TokioSoeClient`] driver also stops after delivering
//! [`ClientEvent::Disconnected`]: the session cannot come back, so
//! [`TokioSoeClient::recv_event`] then returns `None` and the handles report that the
//! driver has stopped.
//!
//! # Clock
//! The driver reads time from Tokio's clock, the one its timers use, so the two
//! always agree (including under a paused test clock).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

pub use crate::send_error::SendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::mux::{MuxStats, SocketConfig, SocketEvent, SoeMultiplexer};
use crate::protocol::DisconnectReason;
use crate::session::{Channel, EnqueueError};

/// Default capacity of the command queue and of the event queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;

/// Receive buffer: the largest UDP payload fits, so nothing is ever truncated.
const RECV_BUFFER_LEN: usize = 64 * 1024;

/// Most datagrams read per loop turn before the turn's tick.
const RECV_BATCH: usize = 64;

/// Most commands applied per loop turn before the turn's tick.
const COMMAND_BATCH: usize = 4096;

/// Tokio's largest bounded-queue capacity (`Semaphore::MAX_PERMITS`).
const MAX_QUEUE_CAPACITY: usize = usize::MAX >> 3;

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
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            command_capacity: DEFAULT_QUEUE_CAPACITY,
            event_capacity: DEFAULT_QUEUE_CAPACITY,
            socket_buffer: 4 << 20,
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

/// Counters of a driver task, from [`SoeHandle::stats`] or [`SoeClientHandle::stats`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStats {
    /// The multiplexer's counters (sessions, datagrams, acks, limits).
    pub mux: MuxStats,
    /// Loop turns run.
    pub loop_turns: u64,
    /// Datagrams read from the socket.
    pub datagrams_received: u64,
    /// Receive errors other than "would block" (e.g. ICMP port unreachable reported
    /// on a connected socket); the driver keeps going.
    pub recv_errors: u64,
    /// Datagrams the OS refused with an error other than "would block"; they were
    /// dropped (reliable data is retransmitted).
    pub send_errors: u64,
    /// Times the socket's send buffer was full and the driver waited for room.
    pub send_waits: u64,
    /// Times the event queue was full and the driver stopped reading the socket.
    pub event_stalls: u64,
    /// Messages that waited in the driver because their session's queue was full
    /// (`max_pending_bytes`); see the [module docs](self#queues-and-backpressure).
    pub enqueue_parked: u64,
    /// Messages the session refused (no such session, not running, invalid channel,
    /// empty, larger than `max_pending_bytes`); dropped, as `soe-protocol` does.
    pub enqueue_refused: u64,
    /// `connect` commands refused (session exists already, or `max_sessions`).
    pub connect_refused: u64,
}

/// What a handle asks the driver to do.
enum Command {
    Connect(SocketAddr),
    Enqueue {
        remote: SocketAddr,
        data: Bytes,
        channel: Channel,
    },
    Terminate {
        remote: SocketAddr,
        reason: DisconnectReason,
    },
    Stats(oneshot::Sender<DriverStats>),
}

/// The payload of a command that could not be queued.
fn payload_of(command: Command) -> Bytes {
    match command {
        Command::Enqueue { data, .. } => data,
        _ => Bytes::new(),
    }
}

fn try_send_error(error: TrySendError<Command>) -> SendError<Command> {
    match error {
        TrySendError::Full(command) => SendError::Full(command),
        TrySendError::Closed(command) => SendError::Stopped(command),
    }
}

/// The command sender shared by both handle types.
#[derive(Clone, Debug)]
struct Commands(mpsc::Sender<Command>);

impl Commands {
    fn try_send(&self, command: Command) -> Result<(), SendError<Command>> {
        self.0.try_send(command).map_err(try_send_error)
    }

    fn try_enqueue(
        &self,
        remote: SocketAddr,
        data: Bytes,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        self.try_send(Command::Enqueue {
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
        let command = Command::Enqueue {
            remote,
            data,
            channel,
        };
        self.0
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
        let command = Command::Enqueue {
            remote,
            data,
            channel,
        };
        self.0
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
        self.0.send(Command::Stats(reply)).await.ok()?;
        answer.await.ok()
    }

    fn is_stopped(&self) -> bool {
        self.0.is_closed()
    }
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
        let (command_tx, command_rx) = mpsc::channel(driver.command_slots());
        let (event_tx, event_rx) = mpsc::channel(driver.event_slots());
        let task = Driver::new(
            socket,
            None,
            SoeMultiplexer::new(config),
            command_rx,
            event_tx,
            |event| event,
            tick_period,
            driver.command_slots(),
        );
        let driver = tokio::spawn(task.run());
        Ok(Self {
            handle: SoeHandle {
                commands: Commands(command_tx),
            },
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

fn client_event(event: SocketEvent<SocketAddr>) -> ClientEvent {
    match event {
        SocketEvent::SessionOpened { .. } => ClientEvent::Connected,
        SocketEvent::DataReceived { data, channel, .. } => {
            ClientEvent::DataReceived { data, channel }
        }
        SocketEvent::SessionClosed { reason, .. } => ClientEvent::Disconnected { reason },
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
        let mut mux = SoeMultiplexer::new(config);
        mux.connect(server, now())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (command_tx, command_rx) = mpsc::channel(driver.command_slots());
        let (event_tx, event_rx) = mpsc::channel(driver.event_slots());
        let task = Driver::new(
            socket,
            Some(server),
            mux,
            command_rx,
            event_tx,
            client_event,
            tick_period,
            driver.command_slots(),
        );
        let driver = tokio::spawn(task.run());
        Ok(Self {
            handle: SoeClientHandle {
                commands: Commands(command_tx),
                server,
            },
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

/// The task that owns the socket and the multiplexer. `E` is the event type handed
/// to the application.
struct Driver<E> {
    socket: UdpSocket,
    /// Client mode: the server the socket is connected to.
    peer: Option<SocketAddr>,
    mux: SoeMultiplexer<SocketAddr>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<E>,
    map_event: fn(SocketEvent<SocketAddr>) -> E,
    /// Stop once a `SessionClosed` has been delivered (client mode).
    stop_after_close: bool,
    tick_period: Option<Duration>,
    buf: Box<[u8]>,
    /// An event the full event queue did not take, and whether it is the last one.
    /// While set, the socket is not read (but see [`Driver::reading`]).
    stalled: Option<(E, bool)>,
    /// Commands waiting for room in their session's queue, per session, in order.
    parked: HashMap<SocketAddr, VecDeque<Parked>>,
    /// Entries in `parked`.
    parked_len: usize,
    /// At this many parked entries the driver stops taking commands.
    parked_limit: usize,
    stats: DriverStats,
}

/// A command for a session whose queue was full, applied once it has room.
enum Parked {
    Data(Bytes, Channel),
    Terminate(DisconnectReason),
}

/// Whether the driver loop goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// What ended the driver's wait.
enum Wake {
    Continue,
    Command(Command),
    Stop,
}

impl<E: Send + 'static> Driver<E> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        socket: UdpSocket,
        peer: Option<SocketAddr>,
        mux: SoeMultiplexer<SocketAddr>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<E>,
        map_event: fn(SocketEvent<SocketAddr>) -> E,
        tick_period: Duration,
        parked_limit: usize,
    ) -> Self {
        Self {
            socket,
            peer,
            mux,
            commands,
            events,
            map_event,
            // A client has one session: once it is closed there is nothing left to do.
            stop_after_close: peer.is_some(),
            tick_period: (!tick_period.is_zero()).then_some(tick_period),
            buf: vec![0; RECV_BUFFER_LEN].into_boxed_slice(),
            stalled: None,
            parked: HashMap::new(),
            parked_len: 0,
            parked_limit,
            stats: DriverStats::default(),
        }
    }

    /// Whether the driver takes commands: not while `parked_limit` commands wait for
    /// their sessions, so that the command queue fills and handles see it.
    fn accepting(&self) -> bool {
        self.parked_len < self.parked_limit
    }

    /// Whether the driver reads the socket: not while the event queue is full, unless
    /// it has stopped taking commands too. Then the application may be waiting for
    /// room in the command queue before it takes more events, and only the acks in
    /// the socket can free that room (by draining the parked messages): reading on
    /// breaks the cycle, and the events read meanwhile wait in the multiplexer.
    fn reading(&self) -> bool {
        self.stalled.is_none() || !self.accepting()
    }

    async fn run(mut self) {
        let mut sleep = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut armed: Option<Instant> = None;
        loop {
            self.stats.loop_turns += 1;
            // Work: everything that is ready, then one tick, then output.
            if self.reading() {
                self.receive_batch();
            }
            self.retry_parked();
            let mut flow = self.apply_queued_commands();
            let tick_at = now();
            self.mux.run_tick(tick_at);
            self.send_outgoing().await;
            if self.forward_events() == Flow::Stop {
                flow = Flow::Stop;
            }
            if flow == Flow::Stop {
                break;
            }

            // Wait for the next reason to work.
            let wake = match (
                self.tick_period.and_then(|p| tick_at.checked_add(p)),
                self.mux.next_deadline(),
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
            let stalled = self.stalled.is_some();
            let accepting = self.accepting();
            let reading = self.reading();
            let woke = tokio::select! {
                biased;
                permit = self.events.reserve(), if stalled => match permit {
                    Ok(permit) => {
                        let (event, last) = self.stalled.take().expect("a stalled event");
                        permit.send(event);
                        if last { Wake::Stop } else { Wake::Continue }
                    }
                    Err(_) => Wake::Stop,
                },
                () = self.events.closed(), if !stalled => Wake::Stop,
                command = self.commands.recv(), if accepting => match command {
                    Some(command) => Wake::Command(command),
                    None => Wake::Stop,
                },
                _ = self.socket.readable(), if reading => Wake::Continue,
                () = sleep.as_mut(), if wake.is_some() => Wake::Continue,
            };
            match woke {
                Wake::Continue => {}
                Wake::Command(command) => self.apply(command, now()),
                Wake::Stop => break,
            }
        }
        self.shut_down().await;
    }

    /// Reads the datagrams already waiting, up to [`RECV_BATCH`].
    fn receive_batch(&mut self) {
        let at = now();
        for _ in 0..RECV_BATCH {
            let received = match self.peer {
                Some(server) => self.socket.try_recv(&mut self.buf).map(|n| (n, server)),
                None => self.socket.try_recv_from(&mut self.buf),
            };
            match received {
                Ok((len, from)) => {
                    self.stats.datagrams_received += 1;
                    self.mux.process_incoming(from, &self.buf[..len], at);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // E.g. an ICMP error reported on a connected socket: not fatal.
                Err(_) => self.stats.recv_errors += 1,
            }
        }
    }

    /// Applies the commands already queued, up to [`COMMAND_BATCH`].
    fn apply_queued_commands(&mut self) -> Flow {
        let at = now();
        for _ in 0..COMMAND_BATCH {
            if !self.accepting() {
                break;
            }
            match self.commands.try_recv() {
                Ok(command) => self.apply(command, at),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Flow::Stop,
            }
        }
        Flow::Continue
    }

    fn apply(&mut self, command: Command, at: Instant) {
        match command {
            Command::Connect(remote) => {
                if self.mux.connect(remote, at).is_err() {
                    self.stats.connect_refused += 1;
                }
            }
            Command::Enqueue {
                remote,
                data,
                channel,
            } => self.enqueue(remote, data, channel),
            Command::Terminate { remote, reason } => {
                match self.parked.get_mut(&remote) {
                    // After the messages that wait for room.
                    Some(queue) => {
                        queue.push_back(Parked::Terminate(reason));
                        self.parked_len += 1;
                    }
                    None => self.mux.terminate(&remote, reason, at),
                }
            }
            Command::Stats(reply) => {
                let mut stats = self.stats.clone();
                stats.mux = self.mux.stats();
                let _ = reply.send(stats);
            }
        }
    }

    /// Hands a message to its session; parks it while the session's queue is full
    /// (or while earlier messages for it are parked, to keep them in order).
    fn enqueue(&mut self, remote: SocketAddr, data: Bytes, channel: Channel) {
        if !self.parked.is_empty()
            && let Some(queue) = self.parked.get_mut(&remote)
        {
            queue.push_back(Parked::Data(data, channel));
            self.parked_len += 1;
            self.stats.enqueue_parked += 1;
            return;
        }
        match self.mux.enqueue_data_on(&remote, &data, channel) {
            Ok(()) => {}
            // It fits once the peer has acknowledged enough: wait for that.
            Err(EnqueueError::QueueFull)
                if data.len() <= self.mux.config().default_session_params.max_pending_bytes =>
            {
                self.parked
                    .entry(remote)
                    .or_default()
                    .push_back(Parked::Data(data, channel));
                self.parked_len += 1;
                self.stats.enqueue_parked += 1;
            }
            Err(_) => self.stats.enqueue_refused += 1,
        }
    }

    /// Hands parked messages to their sessions while they have room.
    fn retry_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let at = now();
        let Self {
            parked,
            parked_len,
            mux,
            stats,
            ..
        } = self;
        parked.retain(|remote, queue| {
            while let Some(front) = queue.front() {
                match front {
                    Parked::Data(data, channel) => {
                        match mux.enqueue_data_on(remote, data, *channel) {
                            Ok(()) => {}
                            Err(EnqueueError::QueueFull) => return true,
                            Err(_) => stats.enqueue_refused += 1,
                        }
                    }
                    Parked::Terminate(reason) => mux.terminate(remote, *reason, at),
                }
                queue.pop_front();
                *parked_len -= 1;
            }
            false
        });
    }

    /// Sends every waiting datagram, waiting for room in the socket's send buffer when
    /// it is full.
    async fn send_outgoing(&mut self) {
        let total = self.mux.outgoing_len();
        let mut next = 0;
        while next < total {
            let sent = {
                let (to, datagram) = self.mux.outgoing(next);
                match self.peer {
                    Some(_) => self.socket.try_send(datagram),
                    None => self.socket.try_send_to(datagram, *to),
                }
            };
            match sent {
                Ok(_) => next += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.send_waits += 1;
                    if self.socket.writable().await.is_err() {
                        self.stats.send_errors += 1;
                        next += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.stats.send_errors += 1;
                    next += 1;
                }
            }
        }
        self.mux.consume_outgoing(total);
    }

    /// Hands the multiplexer's events to the application until the queue is full.
    fn forward_events(&mut self) -> Flow {
        if self.stalled.is_some() {
            return Flow::Continue;
        }
        while let Some(event) = self.mux.poll_event() {
            let last = self.stop_after_close && matches!(event, SocketEvent::SessionClosed { .. });
            match self.events.try_send((self.map_event)(event)) {
                Ok(()) if last => return Flow::Stop,
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.stats.event_stalls += 1;
                    self.stalled = Some((event, last));
                    return Flow::Continue;
                }
                Err(TrySendError::Closed(_)) => return Flow::Stop,
            }
        }
        Flow::Continue
    }

    /// Graceful stop: applies the commands still queued, then ends every session with
    /// a Disconnect and sends what is left.
    async fn shut_down(mut self) {
        self.commands.close();
        let at = now();
        self.retry_parked();
        while let Ok(command) = self.commands.try_recv() {
            self.apply(command, at);
        }
        self.mux.run_tick(at);
        self.send_outgoing().await;
        let farewell = self.mux.terminate_all(DisconnectReason::Application, at);
        for (to, datagram) in &farewell {
            loop {
                let sent = match self.peer {
                    Some(_) => self.socket.try_send(datagram),
                    None => self.socket.try_send_to(datagram, *to),
                };
                match sent {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if self.socket.writable().await.is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    _ => break,
                }
            }
        }
    }
}
