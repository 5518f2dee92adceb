//! Messages a driver holds for sessions that cannot take them yet.
//!
//! A handle's message is accepted before its session is asked; when the session's
//! queue is full (`max_pending_bytes`), or a client session is still negotiating,
//! the message waits here, in order with every later command for that session,
//! until the session has room. The driver bounds how many commands wait in all
//! (see `Limits::max_parked`) and decides what happens at that bound.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;
use foldhash::fast::RandomState;

use crate::protocol::DisconnectReason;
use crate::session::Channel;

/// A command waiting for its session.
#[derive(Debug)]
pub(crate) enum ParkedCommand {
    /// A message.
    Data(Bytes, Channel),
    /// A terminate that must come after the messages before it.
    Terminate(DisconnectReason),
}

/// The commands one session waits for, in order.
#[derive(Debug, Default)]
pub(crate) struct SessionQueue {
    pub(crate) commands: VecDeque<ParkedCommand>,
    /// Payload bytes of the queued messages.
    pub(crate) bytes: usize,
}

/// Every parked command of a driver, per session.
#[derive(Debug, Default)]
pub(crate) struct Parked {
    /// Keyed by peer-chosen addresses: a randomly seeded hasher.
    queues: HashMap<SocketAddr, SessionQueue, RandomState>,
    /// Commands over all sessions.
    len: usize,
}

impl Parked {
    /// Commands waiting over all sessions.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `remote` has commands waiting (later ones must queue behind them).
    pub(crate) fn holds(&self, remote: &SocketAddr) -> bool {
        !self.queues.is_empty() && self.queues.contains_key(remote)
    }

    /// Appends a command for `remote`; returns the bytes now parked for it.
    pub(crate) fn push(&mut self, remote: SocketAddr, command: ParkedCommand) -> usize {
        let queue = self.queues.entry(remote).or_default();
        if let ParkedCommand::Data(data, _) = &command {
            queue.bytes += data.len();
        }
        queue.commands.push_back(command);
        self.len += 1;
        queue.bytes
    }

    /// The session with the most commands parked.
    pub(crate) fn largest(&self) -> Option<SocketAddr> {
        self.queues
            .iter()
            .max_by_key(|(_, queue)| (queue.commands.len(), queue.bytes))
            .map(|(remote, _)| *remote)
    }

    /// Takes every command parked for `remote`.
    pub(crate) fn take(&mut self, remote: &SocketAddr) -> Option<SessionQueue> {
        let queue = self.queues.remove(remote)?;
        self.len -= queue.commands.len();
        Some(queue)
    }

    /// Offers each session's commands, oldest first, to `apply`, which returns
    /// `false` for a command the session cannot take yet (the rest of that session's
    /// queue then keeps waiting). Returns how many commands went through.
    pub(crate) fn retry(
        &mut self,
        mut apply: impl FnMut(&SocketAddr, &ParkedCommand) -> bool,
    ) -> usize {
        let mut done = 0;
        self.queues.retain(|remote, queue| {
            while let Some(front) = queue.commands.front() {
                if !apply(remote, front) {
                    return true;
                }
                if let Some(ParkedCommand::Data(data, _)) = queue.commands.pop_front() {
                    queue.bytes -= data.len();
                }
                done += 1;
            }
            false
        });
        self.len -= done;
        if self.queues.is_empty() && self.queues.capacity() > 64 {
            self.queues = HashMap::default();
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn retry_keeps_order_per_session_and_counts() {
        let mut parked = Parked::default();
        let data = |n: u8| ParkedCommand::Data(Bytes::from(vec![n; 10]), Channel::Reliable(0));
        assert_eq!(parked.push(addr(1), data(1)), 10);
        assert_eq!(parked.push(addr(1), data(2)), 20);
        parked.push(
            addr(1),
            ParkedCommand::Terminate(DisconnectReason::Application),
        );
        parked.push(addr(2), data(3));
        assert_eq!(parked.len(), 4);
        assert!(parked.holds(&addr(1)) && !parked.holds(&addr(3)));

        // Session 1 takes one message, then is full; session 2 takes everything.
        let mut seen = Vec::new();
        let mut room = 1;
        let done = parked.retry(|remote, command| {
            let ok = remote.port() == 2 || room > 0;
            if ok && remote.port() == 1 {
                room -= 1;
            }
            if ok {
                seen.push((remote.port(), matches!(command, ParkedCommand::Data(..))));
            }
            ok
        });
        assert_eq!(done, 2);
        seen.sort_unstable();
        assert_eq!(seen, [(1, true), (2, true)]);
        assert_eq!(parked.len(), 2);
        let rest = parked.take(&addr(1)).unwrap();
        assert_eq!(rest.bytes, 10);
        assert_eq!(rest.commands.len(), 2);
        assert!(parked.is_empty());
    }
}
