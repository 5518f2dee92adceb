//! [`SoeHandle`]: commands from any thread to the shard that owns a session.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::stats::{ServerStats, ShardStats};
use super::steer::shard_of;
use crate::protocol::DisconnectReason;
use crate::send_error::SendError;
use crate::session::Channel;

/// What a shard is asked to do.
pub(crate) enum Command {
    Connect(SocketAddr),
    Send {
        remote: SocketAddr,
        data: Bytes,
        channel: Channel,
    },
    Terminate {
        remote: SocketAddr,
        reason: DisconnectReason,
    },
    /// A datagram another shard received for a session this shard owns.
    Forwarded {
        from: SocketAddr,
        datagram: Vec<u8>,
    },
    Stats(Sender<ShardStats>),
    Shutdown,
}

/// A shard's bounded command queue and the waker of its parked loop.
pub(crate) struct Inbox {
    tx: Sender<Command>,
    waker: AtomicWaker,
    parked: AtomicBool,
    pub(crate) rejected: AtomicU64,
}

impl Inbox {
    pub(crate) fn new(capacity: usize) -> (Self, Receiver<Command>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let inbox = Self {
            tx,
            waker: AtomicWaker::new(),
            parked: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
        };
        (inbox, rx)
    }

    /// Queues a command; wakes the shard only if it is parked (once per park).
    pub(crate) fn push(&self, command: Command) -> Result<(), SendError<Command>> {
        match self.tx.try_send(command) {
            Ok(()) => {
                // Pairs with the fence in `poll_ready`: either the shard sees the
                // command when it re-checks, or we see it parked and wake it.
                fence(Ordering::SeqCst);
                if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel)
                {
                    self.waker.wake();
                }
                Ok(())
            }
            Err(TrySendError::Full(c)) => Err(SendError::Full(c)),
            Err(TrySendError::Disconnected(c)) => Err(SendError::Stopped(c)),
        }
    }

    /// For the shard's parked loop: ready once a command is queued.
    pub(crate) fn poll_ready(&self, rx: &Receiver<Command>, cx: &mut Context<'_>) -> Poll<()> {
        if !rx.is_empty() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        self.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if rx.is_empty() {
            Poll::Pending
        } else {
            self.parked.store(false, Ordering::Relaxed);
            Poll::Ready(())
        }
    }

    /// Called by the shard when it stops waiting for any reason.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }
}

/// State shared by every handle of one server.
pub(crate) struct Shared {
    pub(crate) inboxes: Vec<Inbox>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) stopping: AtomicBool,
}

/// A handle to a running [`super::SoeServer`]: `Clone + Send + Sync`, usable from
/// any thread or async runtime.
///
/// Every command goes straight to the shard that owns the remote address
/// ([`shard_of`]) through that shard's bounded queue, and is applied on the shard's
/// next loop turn. A full queue is reported at once, with the payload handed back;
/// nothing is dropped silently and nothing grows without bound. What the shard
/// later fails to apply (no session with that address, the session's own
/// `max_pending_bytes` cap) is counted in [`ShardStats::command_failures`].
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
        let inbox = &self.shared.inboxes[shard];
        let pushed = inbox.push(command);
        if let Err(SendError::Full(_)) = pushed {
            // Only commands from handles count as rejections: forwarding, stats and
            // shutdown requests have their own accounting.
            inbox.rejected.fetch_add(1, Ordering::Relaxed);
        }
        pushed
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

    /// Queues `data` for `remote` on `channel`. On error the payload comes back.
    pub fn enqueue_data_on(
        &self,
        remote: SocketAddr,
        data: impl Into<Bytes>,
        channel: Channel,
    ) -> Result<(), SendError<Bytes>> {
        let command = Command::Send {
            remote,
            data: data.into(),
            channel,
        };
        self.push(self.shard_of(&remote), command).map_err(|e| {
            e.map(|command| match command {
                Command::Send { data, .. } => data,
                _ => unreachable!("the command is returned as given"),
            })
        })
    }

    /// Ends the session with `remote`, sending it a Disconnect with `reason`.
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

    /// Counters of every shard, gathered on demand (each shard answers on its next
    /// loop turn; a shard that does not answer within `timeout` is left out).
    /// Do not call from a shard's own thread: use [`super::ShardContext::stats`].
    #[allow(clippy::disallowed_methods)] // the runtime may read the clock: a deadline
    pub fn stats_timeout(&self, timeout: Duration) -> ServerStats {
        let (tx, rx) = crossbeam_channel::bounded(self.shards());
        let deadline = Instant::now() + timeout;
        let mut asked = 0;
        for (shard, inbox) in self.shared.inboxes.iter().enumerate() {
            // Stats requests bypass the stopping flag so they work during shutdown,
            // and wait for room in a full queue until the deadline.
            let mut command = Command::Stats(tx.clone());
            loop {
                match inbox.push(command) {
                    Ok(()) => {
                        asked += 1;
                        break;
                    }
                    Err(SendError::Full(c)) if Instant::now() < deadline => {
                        command = c;
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    Err(_) => {
                        tracing::debug!(shard, "stats request not delivered");
                        break;
                    }
                }
            }
        }
        drop(tx);
        let mut shards: Vec<ShardStats> = Vec::with_capacity(asked);
        while shards.len() < asked {
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
        ServerStats::from_shards(shards)
    }

    /// [`SoeHandle::stats_timeout`] with a one-second timeout.
    pub fn stats(&self) -> ServerStats {
        self.stats_timeout(Duration::from_secs(1))
    }

    /// Asks every shard to stop: sessions are terminated (Disconnect to each peer),
    /// pending datagrams flushed, and the shard threads exit. Returns at once; join
    /// with [`super::SoeServer::shutdown`] or by dropping the server.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        for inbox in &self.shared.inboxes {
            // A full queue still gets the request: the shard drains it each turn.
            let mut command = Command::Shutdown;
            for _ in 0..1000 {
                match inbox.push(command) {
                    Ok(()) | Err(SendError::Stopped(_)) => break,
                    Err(SendError::Full(c)) => {
                        command = c;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }
}
