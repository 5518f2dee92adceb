//! [`SoeHandle`]: commands from any thread to the shard that owns a session, and
//! the queues, doorbell and liveness record each shard shares with handles.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::health::Liveness;
use super::stats::{ServerStats, ShardStats};
use super::steer::shard_of;
use super::wakers::WakerSet;
use crate::driver::Command;
use crate::mux::SessionTransfer;
use crate::protocol::{DisconnectReason, RELIABLE_CHANNEL_COUNT};
use crate::send_error::SendError;
use crate::session::{Channel, SessionSnapshot};
use crate::sys::Doorbell;

/// Requests that must reach a shard whatever its data queues hold. Stopping is a
/// flag ([`Inbox::stop`]), so it needs no room at all.
pub(crate) enum Control {
    /// Send a copy of the shard's counters.
    Stats(Sender<ShardStats>),
    /// Take over a session whose peer moved to an address this shard owns.
    Adopt(SessionTransfer<SocketAddr>),
    /// Send a copy of one session's state and counters.
    Session(SocketAddr, Sender<Option<SessionSnapshot>>),
}

/// What another shard's socket received for an address this shard owns.
pub(crate) struct Forwarded {
    pub(crate) from: SocketAddr,
    pub(crate) what: ForwardedKind,
}

/// The kinds of [`Forwarded`] input.
pub(crate) enum ForwardedKind {
    /// A datagram from `from`; for a RemapConnection, how many shards already
    /// looked for its session.
    Datagram { datagram: Vec<u8>, searched: u8 },
    /// An ICMP port unreachable for a datagram sent to `from` (the kernel may
    /// queue it on any socket of the group).
    Unreachable,
}

/// Room for control requests per shard: a few stats requests in flight.
const CONTROL_CAPACITY: usize = 64;

/// The receiving ends of a shard's queues, moved onto the shard's thread.
pub(crate) struct InboxReceivers {
    pub(crate) commands: Receiver<Command>,
    pub(crate) forwarded: Receiver<Forwarded>,
    pub(crate) control: Receiver<Control>,
}

impl InboxReceivers {
    fn is_empty(&self) -> bool {
        self.control.is_empty() && self.commands.is_empty() && self.forwarded.is_empty()
    }
}

/// What handles and other shards share with one shard: three bounded queues
/// (commands from handles, datagrams forwarded by other shards, control requests),
/// the stop flag, and the doorbell that wakes the shard when it sleeps.
///
/// Data cannot block control: each kind has its own queue, and stopping is a flag.
pub(crate) struct Inbox {
    commands: Sender<Command>,
    forwarded: Sender<Forwarded>,
    control: Sender<Control>,
    stop: AtomicBool,
    /// Set by the shard just before it sleeps; whoever clears it rings the doorbell.
    sleeping: AtomicBool,
    doorbell: Doorbell,
    /// Commands handles could not queue because the queue was full.
    pub(crate) rejected: AtomicU64,
    /// What the shard reports about itself, once per turn.
    pub(crate) liveness: Liveness,
    /// Tasks waiting for room in the command queue.
    pub(crate) space: WakerSet,
}

impl Inbox {
    pub(crate) fn new(
        command_capacity: usize,
        forward_capacity: usize,
    ) -> std::io::Result<(Self, InboxReceivers)> {
        let (commands, commands_rx) = crossbeam_channel::bounded(command_capacity.max(1));
        let (forwarded, forwarded_rx) = crossbeam_channel::bounded(forward_capacity.max(1));
        let (control, control_rx) = crossbeam_channel::bounded(CONTROL_CAPACITY);
        let inbox = Self {
            commands,
            forwarded,
            control,
            stop: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            doorbell: Doorbell::new()?,
            rejected: AtomicU64::new(0),
            liveness: Liveness::default(),
            space: WakerSet::default(),
        };
        let receivers = InboxReceivers {
            commands: commands_rx,
            forwarded: forwarded_rx,
            control: control_rx,
        };
        Ok((inbox, receivers))
    }

    /// After a push: wakes the shard if it sleeps (once per sleep).
    fn notify(&self) {
        // Pairs with the fence in `prepare_to_sleep`: either the shard sees what
        // was pushed when it checks its queues, or we see it sleeping and wake it.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.doorbell.ring();
        }
    }

    fn push_command(&self, command: Command) -> Result<(), SendError<Command>> {
        let pushed = self.try_push_command(command);
        if matches!(pushed, Err(SendError::Full(_))) {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
        pushed
    }

    /// Queues a command if there is room (a full queue is not counted: the
    /// caller waits for room).
    fn try_push_command(&self, command: Command) -> Result<(), SendError<Command>> {
        match self.commands.try_send(command) {
            Ok(()) => {
                self.notify();
                Ok(())
            }
            Err(TrySendError::Full(c)) => Err(SendError::Full(c)),
            Err(TrySendError::Disconnected(c)) => Err(SendError::Stopped(c)),
        }
    }

    /// Queues a command, waiting (asynchronously, on any executor) while the
    /// queue is full.
    async fn push_command_waiting(&self, command: Command) -> Result<(), SendError<Command>> {
        let mut command = Some(command);
        std::future::poll_fn(|cx| {
            let Some(c) = command.take() else {
                return Poll::Ready(Ok(()));
            };
            match self.try_push_command(c) {
                Err(SendError::Full(c)) => {
                    self.space.register(cx.waker());
                    // Look again: the shard may have made room just before.
                    match self.try_push_command(c) {
                        Err(SendError::Full(c)) => {
                            command = Some(c);
                            Poll::Pending
                        }
                        done => Poll::Ready(done),
                    }
                }
                done => Poll::Ready(done),
            }
        })
        .await
    }

    /// Queues a datagram for this shard (from another shard).
    pub(crate) fn push_forwarded(&self, forwarded: Forwarded) -> bool {
        let pushed = self.forwarded.try_send(forwarded).is_ok();
        if pushed {
            self.notify();
        }
        pushed
    }

    /// Queues a control request; gives it back when the queue is full.
    pub(crate) fn push_control(&self, control: Control) -> Result<(), Control> {
        match self.control.try_send(control) {
            Ok(()) => {
                self.notify();
                Ok(())
            }
            Err(e) => Err(e.into_inner()),
        }
    }

    /// Wakes the shard if it sleeps, for a flag it reads at the start of a turn
    /// (a shard that misses the wake-up reads the flag before it handles its next
    /// datagram, which is what the flags are about).
    pub(crate) fn wake(&self) {
        self.notify();
    }

    /// Asks the shard to stop; it sees the flag on its next turn.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.notify();
    }

    /// Whether the shard was asked to stop.
    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// For the shard, before it sleeps: returns `false` (and does not sleep) when
    /// something arrived meanwhile.
    pub(crate) fn prepare_to_sleep(&self, queues: &InboxReceivers) -> bool {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if queues.is_empty() && !self.stop_requested() {
            return true;
        }
        self.sleeping.store(false, Ordering::Relaxed);
        false
    }

    /// For the shard, after it woke up for any reason; `rang`: the doorbell
    /// was readable (or the sleep failed), so it is cleared. A doorbell rung
    /// after the sleep returned stays readable and ends the next sleep at once:
    /// nothing is missed, and a wake-up by the socket or the timer costs no read.
    pub(crate) fn woke(&self, rang: bool) {
        self.sleeping.store(false, Ordering::Relaxed);
        if rang {
            self.doorbell.clear();
        }
    }

    /// The doorbell, for the shard's sleep.
    pub(crate) fn doorbell(&self) -> &Doorbell {
        &self.doorbell
    }
}

/// State shared by every handle of one server.
pub(crate) struct Shared {
    pub(crate) inboxes: Vec<Inbox>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) stopping: AtomicBool,
    /// Set once: every shard refuses new sessions from its next turn on.
    pub(crate) draining: AtomicBool,
    /// Largest message a session can take (see
    /// [`crate::SessionParameters::max_message_len`]): larger ones are refused by
    /// the handle.
    pub(crate) max_message: usize,
    /// When the server started: liveness times count from it.
    pub(crate) epoch: Instant,
    /// Tasks waiting for the merged event stream.
    pub(crate) event_readers: WakerSet,
}

/// A handle to a running [`super::SoeServer`]: `Clone + Send + Sync`, usable from
/// any thread or async runtime.
///
/// Every command goes straight to the shard that owns the remote address
/// ([`shard_of`]) through that shard's bounded queue and is applied on the shard's
/// next loop turn. A full queue is reported at once, with the payload handed back,
/// and so is a message no session could take (empty, on a channel that does not
/// exist, larger than `max_pending_bytes`): [`SendError::Invalid`].
///
/// A message the handle accepted is delivered, or its session ends with a reason
/// the application sees (`SessionClosed`): while the session's queue is full the
/// shard holds the message back, in order, and a session that falls further
/// behind than its allowance ends with `ReliableOverflow` (see
/// [`crate::SessionParameters::max_pending_bytes`]). Messages for an address with
/// no session (any more) are counted in [`ShardStats::enqueue_refused`].
#[derive(Clone)]
pub struct SoeHandle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for SoeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoeHandle")
            .field("local_addr", &self.shared.local_addr)
            .field("shards", &self.shared.inboxes.len())
            .finish()
    }
}

impl SoeHandle {
    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shared.inboxes.len()
    }

    /// The shard that owns sessions with `remote`.
    pub fn shard_of(&self, remote: &SocketAddr) -> usize {
        shard_of(remote, self.shards())
    }

    pub(crate) fn push(&self, shard: usize, command: Command) -> Result<(), SendError<Command>> {
        if self.shared.stopping.load(Ordering::Relaxed) {
            return Err(SendError::Stopped(command));
        }
        self.shared.inboxes[shard].push_command(command)
    }

    /// [`Self::push`], waiting while the shard's queue is full.
    async fn push_waiting(&self, shard: usize, command: Command) -> Result<(), SendError<Command>> {
        if self.shared.stopping.load(Ordering::Relaxed) {
            return Err(SendError::Stopped(command));
        }
        self.shared.inboxes[shard]
            .push_command_waiting(command)
            .await
    }

    /// Opens a client session to `remote` from the owning shard, so the server's
    /// replies are steered back to that shard.
    pub fn connect(&self, remote: SocketAddr) -> Result<(), SendError<()>> {
        self.push(self.shard_of(&remote), Command::Connect(remote))
            .map_err(|e| e.map(|_| ()))
    }

    /// Queues `data` for `remote` on reliable channel 0.
    pub fn enqueue_data(
        &self,
        remote: SocketAddr,
        data: impl Into<Bytes>,
    ) -> Result<(), SendError<Bytes>> {
        self.enqueue_data_on(remote, data, Channel::Reliable(0))
    }

    /// Queues `data` for `remote` on `channel`, waiting while the owning shard's
    /// queue is full: back-pressure for async code, on any executor (Tokio
    /// included). Errors only when no session could take the message
    /// ([`SendError::Invalid`]) or the server has stopped; the payload comes back.
    pub async fn enqueue_data_on_async(
        &self,
        remote: SocketAddr,
        data: impl Into<Bytes>,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        let (shard, command) = self.send_command(remote, data.into(), channel)?;
        self.push_waiting(shard, command)
            .await
            .map_err(payload_back)
    }

    /// Queues `data` for `remote` on `channel`. On error the payload comes back.
    pub fn enqueue_data_on(
        &self,
        remote: SocketAddr,
        data: impl Into<Bytes>,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        let (shard, command) = self.send_command(remote, data.into(), channel)?;
        self.push(shard, command).map_err(payload_back)
    }

    /// The Send command for a message and the shard that owns `remote`, or the
    /// payload back when no session could ever take the message.
    fn send_command(
        &self,
        remote: SocketAddr,
        data: Bytes,
        channel: Channel,
    ) -> Result<(usize, Command), SendError<Bytes>> {
        if !valid_message(&data, channel, self.shared.max_message) {
            return Err(SendError::Invalid(data));
        }
        let command = Command::Send {
            remote,
            data,
            channel,
        };
        Ok((self.shard_of(&remote), command))
    }

    /// Ends the session with `remote`, sending it a Disconnect with `reason` after
    /// what is already queued for it.
    pub fn terminate(
        &self,
        remote: SocketAddr,
        reason: DisconnectReason,
    ) -> Result<(), SendError<()>> {
        self.push(
            self.shard_of(&remote),
            Command::Terminate { remote, reason },
        )
        .map_err(|e| e.map(|_| ()))
    }

    /// Counters of every shard, gathered on demand: each shard answers on its next
    /// loop turn; [`ServerStats::missing`] lists those that did not within
    /// `timeout`. Do not call from a shard's own thread: use
    /// [`super::ShardContext::stats`].
    #[allow(clippy::disallowed_methods)] // the runtime may read the clock: a deadline
    pub fn stats_timeout(&self, timeout: Duration) -> ServerStats {
        let (tx, rx) = crossbeam_channel::bounded(self.shards());
        let deadline = Instant::now() + timeout;
        let mut asked = vec![false; self.shards()];
        for (shard, inbox) in self.shared.inboxes.iter().enumerate() {
            asked[shard] = inbox.push_control(Control::Stats(tx.clone())).is_ok();
        }
        drop(tx);
        let expected = asked.iter().filter(|a| **a).count();
        let mut shards: Vec<ShardStats> = Vec::with_capacity(expected);
        while shards.len() < expected {
            match rx.recv_deadline(deadline) {
                Ok(s) => shards.push(s),
                Err(_) => break,
            }
        }
        shards.sort_by_key(|s| s.shard);
        for s in &mut shards {
            s.queue_full_rejections = self.shared.inboxes[s.shard]
                .rejected
                .load(Ordering::Relaxed);
        }
        let missing = (0..self.shards())
            .filter(|i| !shards.iter().any(|s| s.shard == *i))
            .collect();
        ServerStats::from_shards(shards, missing)
    }

    /// One session's state and counters (round trip, resends, bytes, queue
    /// depths, ...), fetched from its shard within `timeout`; `None` when no
    /// session has that address or the shard did not answer in time.
    pub fn session_stats(&self, remote: SocketAddr, timeout: Duration) -> Option<SessionSnapshot> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let inbox = &self.shared.inboxes[self.shard_of(&remote)];
        inbox.push_control(Control::Session(remote, reply)).ok()?;
        answer.recv_timeout(timeout).ok().flatten()
    }

    /// [`SoeHandle::stats_timeout`] with a one-second timeout.
    pub fn stats(&self) -> ServerStats {
        self.stats_timeout(Duration::from_secs(1))
    }

    /// Starts draining every shard (see [`super::SoeServer::drain`]): live
    /// sessions are served as before, SessionRequests are refused with
    /// `ConnectionRefused`. There is no way back; shut down when
    /// [`SoeHandle::sessions_live`] reaches zero.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        for inbox in &self.shared.inboxes {
            inbox.wake();
        }
    }

    /// Sessions live over all shards as of their latest turns (read without asking
    /// them, like [`super::SoeServer::health`]).
    pub fn sessions_live(&self) -> u64 {
        self.shared
            .inboxes
            .iter()
            .map(|inbox| inbox.liveness.sessions())
            .sum()
    }

    /// Asks every shard to stop: sessions are terminated (Disconnect to each peer),
    /// pending datagrams flushed, and the shard threads exit. Returns at once; join
    /// with [`super::SoeServer::shutdown`] or by dropping the server.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        for inbox in &self.shared.inboxes {
            inbox.request_stop();
        }
    }
}

/// The payload of a send command that could not be queued.
fn payload_back(e: SendError<Command>) -> SendError<Bytes> {
    e.map(|command| match command {
        Command::Send { data, .. } => data,
        _ => unreachable!("the command is returned as given"),
    })
}

/// Whether a session could ever take `data` on `channel`: not empty, on a channel
/// that exists, and no larger than a session's queue.
pub(crate) fn valid_message(data: &[u8], channel: Channel, max_message: usize) -> bool {
    let channel_ok = match channel {
        Channel::Reliable(n) => n < RELIABLE_CHANNEL_COUNT,
        Channel::Unreliable | Channel::Ordered => true,
    };
    channel_ok && !data.is_empty() && data.len() <= max_message
}

/// The merged event stream of a [`super::SoeServer`] without a shard-local
/// handler, for blocking and async code alike: `Clone + Send + Sync`, and
/// [`EventStream::recv`] works on any executor (Tokio included). Every clone takes
/// from the same stream; each event goes to one of them.
#[derive(Clone)]
pub struct EventStream {
    pub(crate) events: Receiver<crate::mux::SocketEvent<SocketAddr>>,
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("waiting", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next event, waiting for it without blocking the thread; `None` once
    /// every shard has stopped and every event was taken.
    pub async fn recv(&self) -> Option<crate::mux::SocketEvent<SocketAddr>> {
        use crossbeam_channel::TryRecvError;
        std::future::poll_fn(|cx| match self.events.try_recv() {
            Ok(event) => Poll::Ready(Some(event)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => {
                self.shared.event_readers.register(cx.waker());
                // Look again: a shard may have delivered just before.
                match self.events.try_recv() {
                    Ok(event) => Poll::Ready(Some(event)),
                    Err(TryRecvError::Disconnected) => Poll::Ready(None),
                    Err(TryRecvError::Empty) => Poll::Pending,
                }
            }
        })
        .await
    }

    /// The next event, blocking the thread; `None` once every shard has stopped.
    pub fn recv_blocking(&self) -> Option<crate::mux::SocketEvent<SocketAddr>> {
        self.events.recv().ok()
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<crate::mux::SocketEvent<SocketAddr>> {
        self.events.try_recv().ok()
    }
}
