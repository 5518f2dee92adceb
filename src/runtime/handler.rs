//! Shard-local event handlers: game logic that runs on the shard owning a session.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::handle::{Command, SoeHandle};
use super::stats::ShardStats;
use super::steer::shard_of;
use crate::mux::{ConnectError, SocketEvent, SoeMultiplexer};
use crate::protocol::DisconnectReason;
use crate::send_error::SendError;
use crate::session::{Channel, EnqueueError, SoeSession};

/// What a handler factory learns about the shard it builds a handler for.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    /// This shard's index.
    pub index: usize,
    /// Number of shards.
    pub shards: usize,
    /// The server's address.
    pub local_addr: SocketAddr,
    /// A handle to the whole server (for cross-shard work).
    pub handle: SoeHandle,
}

/// Game logic running on a shard's own thread: it receives that shard's events and
/// replies through a [`ShardContext`], with no channel hop and no lock.
///
/// A factory passed to [`super::SoeServerBuilder::handler`] builds one handler per
/// shard, on the shard's thread, so a handler need not be `Send`.
///
/// Per session, `SessionOpened` comes before its `DataReceived` events and
/// `SessionClosed` after them.
pub trait ShardHandler: 'static {
    /// One event of a session this shard owns.
    fn on_event(&mut self, event: SocketEvent<SocketAddr>, ctx: &mut ShardContext<'_>);

    /// Called once per loop turn after the events of that turn (at least every
    /// tick period while the shard has sessions): a place for a per-shard game tick.
    fn on_tick(&mut self, ctx: &mut ShardContext<'_>) {
        let _ = ctx;
    }
}

impl<F> ShardHandler for F
where
    F: FnMut(SocketEvent<SocketAddr>, &mut ShardContext<'_>) + 'static,
{
    fn on_event(&mut self, event: SocketEvent<SocketAddr>, ctx: &mut ShardContext<'_>) {
        self(event, ctx)
    }
}

/// A handler's view of its shard: send, connect and terminate directly on the
/// shard's multiplexer when the remote belongs to this shard, through the
/// [`SoeHandle`] otherwise.
pub struct ShardContext<'a> {
    pub(crate) shard: usize,
    pub(crate) now: Instant,
    pub(crate) mux: &'a mut SoeMultiplexer<SocketAddr>,
    pub(crate) handle: &'a SoeHandle,
    pub(crate) stats: &'a ShardStats,
}

impl ShardContext<'_> {
    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// The time of this loop turn.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// A handle to the whole server.
    pub fn handle(&self) -> &SoeHandle {
        self.handle
    }

    fn is_local(&self, remote: &SocketAddr) -> bool {
        shard_of(remote, self.handle.shards()) == self.shard
    }

    /// The session with `remote`, if this shard owns it.
    pub fn session(&self, remote: &SocketAddr) -> Option<&SoeSession> {
        self.mux.session(remote)
    }

    /// Number of sessions on this shard.
    pub fn session_count(&self) -> usize {
        self.mux.session_count()
    }

    /// This shard's counters.
    pub fn stats(&self) -> ShardStats {
        let mut stats = self.stats.clone();
        stats.mux = self.mux.stats();
        stats
    }

    /// Queues `data` for `remote` on reliable channel 0.
    pub fn enqueue_data(&mut self, remote: &SocketAddr, data: &[u8]) -> Result<(), EnqueueError> {
        self.enqueue_data_on(remote, data, Channel::Reliable(0))
    }

    /// Queues `data` for `remote` on `channel`: directly when this shard owns the
    /// session (errors are immediate), otherwise through the owner's queue (only a
    /// full queue is reported here, as `QueueFull`).
    pub fn enqueue_data_on(
        &mut self,
        remote: &SocketAddr,
        data: &[u8],
        channel: Channel,
    ) -> Result<(), EnqueueError> {
        if self.is_local(remote) {
            return self.mux.enqueue_data_on(remote, data, channel);
        }
        let command = Command::Send {
            remote: *remote,
            data: Bytes::copy_from_slice(data),
            channel,
        };
        self.handle
            .push(self.handle.shard_of(remote), command)
            .map_err(|e| match e {
                SendError::Full(_) => EnqueueError::QueueFull,
                SendError::Stopped(_) => EnqueueError::NotRunning,
            })
    }

    /// Ends the session with `remote`.
    pub fn terminate(&mut self, remote: &SocketAddr, reason: DisconnectReason) {
        if self.is_local(remote) {
            self.mux.terminate(remote, reason, self.now);
        } else {
            let _ = self.handle.terminate(*remote, reason);
        }
    }

    /// Opens a client session to `remote` (from the shard that owns it).
    pub fn connect(&mut self, remote: SocketAddr) -> Result<(), ConnectError> {
        if self.is_local(&remote) {
            self.mux.connect(remote, self.now)
        } else {
            self.handle
                .connect(remote)
                .map_err(|_| ConnectError::TooManySessions)
        }
    }
}
