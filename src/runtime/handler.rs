//! Shard-local event handlers: game logic that runs on the shard owning a session.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::handle::SoeHandle;
use super::stats::ShardStats;
use super::steer::shard_of;
use crate::driver::Driver;
use crate::mux::{ConnectError, SocketEvent};
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

    /// Called once per loop turn after the events of that turn and before the
    /// turn's flush, and, when a tick period is set
    /// ([`super::SoeServerBuilder::tick_period`]; none by default), at least once
    /// per period while the shard has sessions: a place for a per-shard game
    /// tick. With [`super::SoeServerBuilder::flush_interval`], what it queues
    /// goes out with the next flush, as one datagram per session.
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
    pub(crate) driver: &'a mut Driver,
    pub(crate) handle: &'a SoeHandle,
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
        self.driver.mux().session(remote)
    }

    /// Number of sessions on this shard.
    pub fn session_count(&self) -> usize {
        self.driver.mux().session_count()
    }

    /// This shard's counters.
    pub fn stats(&self) -> ShardStats {
        self.driver.snapshot()
    }

    /// Queues `data` for `remote` on reliable channel 0.
    pub fn enqueue_data(&mut self, remote: &SocketAddr, data: &[u8]) -> Result<(), EnqueueError> {
        self.enqueue_data_on(remote, data, Channel::Reliable(0))
    }

    /// Queues `data` for `remote` on `channel`: directly when this shard owns the
    /// session, with every error immediate (a full session queue is
    /// [`EnqueueError::QueueFull`]: nothing was queued, try again on a later turn);
    /// otherwise through the owner's command queue, where only what the handle
    /// refuses is reported here ([`EnqueueError::CommandQueueFull`] when that
    /// queue is full).
    pub fn enqueue_data_on(
        &mut self,
        remote: &SocketAddr,
        data: &[u8],
        channel: Channel,
    ) -> Result<(), EnqueueError> {
        if self.is_local(remote) {
            return self.driver.mux_mut().enqueue_data_on(remote, data, channel);
        }
        self.handle
            .enqueue_data_on(*remote, Bytes::copy_from_slice(data), channel)
            .map_err(|e| match e {
                SendError::Full(_) => EnqueueError::CommandQueueFull,
                SendError::Stopped(_) => EnqueueError::NotRunning,
                SendError::Invalid(data) => match channel {
                    Channel::Reliable(n) if n >= crate::protocol::RELIABLE_CHANNEL_COUNT => {
                        EnqueueError::InvalidChannel
                    }
                    _ if data.is_empty() => EnqueueError::Empty,
                    _ => EnqueueError::TooLarge,
                },
            })
    }

    /// Ends the session with `remote`.
    pub fn terminate(&mut self, remote: &SocketAddr, reason: DisconnectReason) {
        if self.is_local(remote) {
            self.driver.mux_mut().terminate(remote, reason, self.now);
        } else {
            let _ = self.handle.terminate(*remote, reason);
        }
    }

    /// Opens a client session to `remote` (from the shard that owns it); for another
    /// shard's address, only a refusal of its command queue is reported here
    /// ([`ConnectError::CommandQueueFull`], [`ConnectError::Stopped`]).
    pub fn connect(&mut self, remote: SocketAddr) -> Result<(), ConnectError> {
        if self.is_local(&remote) {
            self.driver.mux_mut().connect(remote, self.now)
        } else {
            self.handle.connect(remote).map_err(|e| match e {
                SendError::Full(()) => ConnectError::CommandQueueFull,
                _ => ConnectError::Stopped,
            })
        }
    }
}
