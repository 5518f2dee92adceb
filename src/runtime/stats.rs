//! Per-shard counters, kept as plain integers on the shard and summed on demand.

use std::time::Duration;

use crate::mux::MuxStats;

/// Counters of one shard.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShardStats {
    /// Shard index.
    pub shard: usize,
    /// Multiplexer and session counters (sessions, messages, resends, acks, CRC
    /// failures, drops, opened/closed by reason, …).
    pub mux: MuxStats,
    /// Datagrams read from the socket.
    pub datagrams_in: u64,
    /// Bytes read from the socket.
    pub bytes_in: u64,
    /// Datagrams written to the socket.
    pub datagrams_out: u64,
    /// Bytes written to the socket.
    pub bytes_out: u64,
    /// `recvmmsg` calls that returned data.
    pub recv_batches: u64,
    /// `sendmmsg` calls.
    pub send_batches: u64,
    /// Datagrams dropped because they exceeded the receive slot.
    pub truncated: u64,
    /// Outgoing datagrams dropped because the socket stayed full.
    pub send_drops: u64,
    /// Socket errors other than "would block".
    pub socket_errors: u64,
    /// Datagrams this shard received for another shard and forwarded.
    pub forwarded_out: u64,
    /// Datagrams other shards forwarded to this one.
    pub forwarded_in: u64,
    /// Forwarded datagrams dropped because the owner's queue was full.
    pub forward_drops: u64,
    /// Commands applied.
    pub commands: u64,
    /// Commands that failed on the shard (no session, session queue full, …).
    pub command_failures: u64,
    /// Commands refused because this shard's queue was full (counted by handles).
    pub queue_full_rejections: u64,
    /// Events handed to the handler or the event stream.
    pub events: u64,
    /// Loop turns.
    pub turns: u64,
    /// CPU time the shard's thread has used.
    pub cpu_time: Duration,
}

impl ShardStats {
    /// Adds `other` into `self` (the shard index is kept).
    pub fn add(&mut self, other: &Self) {
        self.mux.add(&other.mux);
        self.datagrams_in += other.datagrams_in;
        self.bytes_in += other.bytes_in;
        self.datagrams_out += other.datagrams_out;
        self.bytes_out += other.bytes_out;
        self.recv_batches += other.recv_batches;
        self.send_batches += other.send_batches;
        self.truncated += other.truncated;
        self.send_drops += other.send_drops;
        self.socket_errors += other.socket_errors;
        self.forwarded_out += other.forwarded_out;
        self.forwarded_in += other.forwarded_in;
        self.forward_drops += other.forward_drops;
        self.commands += other.commands;
        self.command_failures += other.command_failures;
        self.queue_full_rejections += other.queue_full_rejections;
        self.events += other.events;
        self.turns += other.turns;
        self.cpu_time += other.cpu_time;
    }
}

/// Counters of a whole server: each shard's and their sum.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerStats {
    /// One entry per shard that answered, in shard order.
    pub shards: Vec<ShardStats>,
    /// The sum over `shards`.
    pub total: ShardStats,
}

impl ServerStats {
    pub(crate) fn from_shards(shards: Vec<ShardStats>) -> Self {
        let mut total = ShardStats::default();
        for s in &shards {
            total.add(s);
        }
        Self { shards, total }
    }
}
