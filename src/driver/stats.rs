//! Counters of one driver (a shard, or a Tokio driver task).

use std::time::Duration;

use crate::mux::MuxStats;

/// Counters of one driver: a shard of [`crate::SoeServer`] (where it is called
/// `ShardStats`) or the task of a Tokio server or client. Plain integers kept by the
/// driver's own thread and copied out on request; nothing is shared per datagram.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStats {
    /// Shard index (0 for the Tokio adapter).
    pub shard: usize,
    /// Multiplexer and session counters (sessions, messages, resends, acks, CRC
    /// failures, drops, opened/closed by reason, …).
    pub mux: MuxStats,
    /// Loop turns run.
    pub turns: u64,
    /// Times the driver slept and woke up again.
    pub wakeups: u64,
    /// Of those, the times only the timeout ended the sleep (a session deadline,
    /// a tick): no datagram, command or doorbell. At low load a shard wakes about
    /// once per burst of datagrams and once per deadline that needs work.
    pub timer_wakeups: u64,
    /// Turns that ended with work left over (a full receive budget): the driver was
    /// at capacity. While that lasts, new sessions are refused (see
    /// [`MuxStats::refused_admission_closed`]) so the live ones keep their service.
    pub overloaded_turns: u64,
    /// Datagrams read from the socket.
    pub datagrams_in: u64,
    /// Bytes read from the socket.
    pub bytes_in: u64,
    /// Datagrams written to the socket.
    pub datagrams_out: u64,
    /// Bytes written to the socket.
    pub bytes_out: u64,
    /// Batched receive calls that returned data.
    pub recv_batches: u64,
    /// Batched send calls.
    pub send_batches: u64,
    /// Datagrams dropped because they exceeded the receive buffer.
    pub truncated: u64,
    /// Receive errors other than "would block" and the ICMP errors below; the
    /// driver goes on.
    pub recv_errors: u64,
    /// ICMP port-unreachable reports read from the socket's error queue (a peer's
    /// port is closed; its session ends once they outlast `unreachable_grace`).
    pub icmp_unreachable: u64,
    /// Other ICMP errors read from the error queue (host or network unreachable,
    /// fragmentation needed, ...): counted, no action.
    pub icmp_other: u64,
    /// Datagrams the OS refused with an error other than "would block"; dropped
    /// (reliable data is retransmitted).
    pub send_errors: u64,
    /// Times the socket's send buffer was full and the driver waited for room.
    pub send_waits: u64,
    /// Outgoing datagrams dropped because the socket stayed full past the cap on
    /// queued datagrams (reliable data is retransmitted).
    pub send_drops: u64,
    /// Datagrams the kernel dropped because the socket's receive buffer was full
    /// (`SO_MEMINFO`; Linux only): load shed at the edge.
    pub socket_drops: u64,
    /// Datagrams this shard received for another shard and forwarded.
    pub forwarded_out: u64,
    /// Datagrams other shards forwarded to this one.
    pub forwarded_in: u64,
    /// Forwarded datagrams dropped because the owner's queue was full.
    pub forward_drops: u64,
    /// Commands taken from handles.
    pub commands: u64,
    /// Connects refused (a session with that address exists, or `max_sessions`).
    pub connect_refused: u64,
    /// Messages no session could take: no session with that address (it ended, and
    /// its `SessionClosed` told the application), or not sent on an open session.
    pub enqueue_refused: u64,
    /// Messages that waited in the driver because their session's queue was full.
    pub enqueue_parked: u64,
    /// Sessions ended with `ReliableOverflow` because the messages waiting for them
    /// outgrew their allowance (`max_pending_bytes` more).
    pub parked_overflows: u64,
    /// Commands refused because the command queue was full (counted by handles).
    pub queue_full_rejections: u64,
    /// Events handed to the handler or the event stream.
    pub events: u64,
    /// Times the event stream was full and the driver stopped reading the socket.
    pub event_stalls: u64,
    /// CPU time the driver's thread has used (thread-per-core shards only).
    pub cpu_time: Duration,
    /// The part of `cpu_time` spent in the kernel: receiving and sending datagrams
    /// (on loopback, also the receiving side's network stack and wake-up), sleeping
    /// and waking. Split from the total by the scheduler tick's samples, so an
    /// estimate (thread-per-core shards only).
    pub kernel_time: Duration,
}

impl DriverStats {
    /// Adds `other` into `self` (the shard index is kept).
    pub fn add(&mut self, other: &Self) {
        self.mux.add(&other.mux);
        self.turns += other.turns;
        self.wakeups += other.wakeups;
        self.timer_wakeups += other.timer_wakeups;
        self.overloaded_turns += other.overloaded_turns;
        self.datagrams_in += other.datagrams_in;
        self.bytes_in += other.bytes_in;
        self.datagrams_out += other.datagrams_out;
        self.bytes_out += other.bytes_out;
        self.recv_batches += other.recv_batches;
        self.send_batches += other.send_batches;
        self.truncated += other.truncated;
        self.recv_errors += other.recv_errors;
        self.icmp_unreachable += other.icmp_unreachable;
        self.icmp_other += other.icmp_other;
        self.send_errors += other.send_errors;
        self.send_waits += other.send_waits;
        self.send_drops += other.send_drops;
        self.socket_drops += other.socket_drops;
        self.forwarded_out += other.forwarded_out;
        self.forwarded_in += other.forwarded_in;
        self.forward_drops += other.forward_drops;
        self.commands += other.commands;
        self.connect_refused += other.connect_refused;
        self.enqueue_refused += other.enqueue_refused;
        self.enqueue_parked += other.enqueue_parked;
        self.parked_overflows += other.parked_overflows;
        self.queue_full_rejections += other.queue_full_rejections;
        self.events += other.events;
        self.event_stalls += other.event_stalls;
        self.cpu_time += other.cpu_time;
        self.kernel_time += other.kernel_time;
    }
}
