//! Publishing a driver's counters through the `metrics` facade (feature
//! `metrics`).
//!
//! Each driver (a shard, or a Tokio driver task) registers its handles once,
//! labelled with its shard, and copies its counters into them once a second from
//! the stats it keeps anyway: nothing is recorded per datagram, and no atomic is
//! shared between shards. With no recorder installed every handle is a no-op.
//! Two histograms are sampled: the duration of each loop turn, and at each
//! publication the smoothed round trip of up to [`RTT_SAMPLES`] sessions.
//!
//! Names (all prefixed `soe_`; counters end in `_total`):
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `soe_sessions_live` | gauge | sessions now |
//! | `soe_sessions_opened_total` | counter | sessions that opened |
//! | `soe_sessions_closed_total{reason}` | counter | sessions ended, by `DisconnectReason` |
//! | `soe_sessions_refused_total{cause}` | counter | SessionRequests refused: `limit`, `overload`, `draining`, `malformed`, `protocol` |
//! | `soe_datagrams_total{direction}` | counter | datagrams `in` / `out` |
//! | `soe_bytes_total{direction}` | counter | bytes `in` / `out` |
//! | `soe_reliable_packets_total{kind}` | counter | reliable packets `sent` / `resent` |
//! | `soe_messages_total{direction}` | counter | messages `enqueued` / `delivered` |
//! | `soe_drops_total{cause}` | counter | datagrams or messages dropped: `socket`, `send`, `forward`, `truncated`, `crc`, `malformed`, `parked_overflow`, `queue_full`, `enqueue_refused` |
//! | `soe_errors_total{cause}` | counter | `recv`, `send`, `icmp_unreachable`, `icmp_other` |
//! | `soe_remaps_total{outcome}` | counter | `moved` / `refused` |
//! | `soe_timers_total{outcome}` | counter | session timers `run`, or `moved` because their deadline had moved later |
//! | `soe_turns_total`, `soe_wakeups_total`, `soe_overloaded_turns_total` | counter | loop activity |
//! | `soe_timer_wakeups_total` | counter | wake-ups that only a timeout ended (session deadlines, ticks) |
//! | `soe_event_stalls_total` | counter | times the event stream was full |
//! | `soe_queue_depth{queue}` | gauge | `outgoing` datagrams, `timers`, `table_slots` |
//! | `soe_state{state}` | gauge | 1 while `overloaded` / `draining` |
//! | `soe_cpu_seconds` | gauge | the shard thread's CPU time so far (thread-per-core) |
//! | `soe_cpu_kernel_seconds` | gauge | the part of it spent in the kernel (an estimate by tick samples) |
//! | `soe_turn_seconds` | histogram | duration of each loop turn |
//! | `soe_session_rtt_seconds` | histogram | smoothed round trips, sampled each publication |

use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use super::DriverStats;
use crate::protocol::DisconnectReason;

/// How often counters are copied out.
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Sessions whose round trip is sampled per publication.
pub(crate) const RTT_SAMPLES: usize = 256;

/// A driver's registered metric handles.
pub(crate) struct DriverMetrics {
    next: Option<Instant>,
    /// Turns ran since the last publication.
    dirty: bool,
    sessions_live: Gauge,
    opened: Counter,
    closed: Vec<Counter>,
    refused: [Counter; 5],
    datagrams: [Counter; 2],
    bytes: [Counter; 2],
    reliable: [Counter; 2],
    messages: [Counter; 2],
    drops: [Counter; 9],
    errors: [Counter; 4],
    remaps: [Counter; 2],
    timers: [Counter; 2],
    turns: Counter,
    wakeups: Counter,
    timer_wakeups: Counter,
    overloaded_turns: Counter,
    event_stalls: Counter,
    depth: [Gauge; 3],
    state: [Gauge; 2],
    cpu: Gauge,
    cpu_kernel: Gauge,
    turn: Histogram,
    rtt: Histogram,
}

impl std::fmt::Debug for DriverMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverMetrics").finish_non_exhaustive()
    }
}

impl DriverMetrics {
    /// Registers the handles of driver `shard`.
    pub(crate) fn new(shard: usize) -> Self {
        let s = shard.to_string();
        let c = |name: &'static str, key: &'static str, value: &'static str| counter!(name, "shard" => s.clone(), key => value);
        Self {
            next: None,
            dirty: false,
            sessions_live: gauge!("soe_sessions_live", "shard" => s.clone()),
            opened: counter!("soe_sessions_opened_total", "shard" => s.clone()),
            closed: DisconnectReason::ALL
                .iter()
                .map(|r| {
                    counter!(
                        "soe_sessions_closed_total",
                        "shard" => s.clone(),
                        "reason" => format!("{r:?}")
                    )
                })
                .collect(),
            refused: ["limit", "overload", "draining", "malformed", "protocol"]
                .map(|cause| c("soe_sessions_refused_total", "cause", cause)),
            datagrams: ["in", "out"].map(|d| c("soe_datagrams_total", "direction", d)),
            bytes: ["in", "out"].map(|d| c("soe_bytes_total", "direction", d)),
            reliable: ["sent", "resent"].map(|k| c("soe_reliable_packets_total", "kind", k)),
            messages: ["enqueued", "delivered"].map(|d| c("soe_messages_total", "direction", d)),
            drops: [
                "socket",
                "send",
                "forward",
                "truncated",
                "crc",
                "malformed",
                "parked_overflow",
                "queue_full",
                "enqueue_refused",
            ]
            .map(|cause| c("soe_drops_total", "cause", cause)),
            errors: ["recv", "send", "icmp_unreachable", "icmp_other"]
                .map(|cause| c("soe_errors_total", "cause", cause)),
            remaps: ["moved", "refused"].map(|o| c("soe_remaps_total", "outcome", o)),
            timers: ["run", "moved"].map(|o| c("soe_timers_total", "outcome", o)),
            turns: counter!("soe_turns_total", "shard" => s.clone()),
            wakeups: counter!("soe_wakeups_total", "shard" => s.clone()),
            timer_wakeups: counter!("soe_timer_wakeups_total", "shard" => s.clone()),
            overloaded_turns: counter!("soe_overloaded_turns_total", "shard" => s.clone()),
            event_stalls: counter!("soe_event_stalls_total", "shard" => s.clone()),
            depth: ["outgoing", "timers", "table_slots"]
                .map(|q| gauge!("soe_queue_depth", "shard" => s.clone(), "queue" => q)),
            state: ["overloaded", "draining"]
                .map(|st| gauge!("soe_state", "shard" => s.clone(), "state" => st)),
            cpu: gauge!("soe_cpu_seconds", "shard" => s.clone()),
            cpu_kernel: gauge!("soe_cpu_kernel_seconds", "shard" => s.clone()),
            turn: histogram!("soe_turn_seconds", "shard" => s.clone()),
            rtt: histogram!("soe_session_rtt_seconds", "shard" => s),
        }
    }

    /// Whether it is time to publish (at most once per [`PUBLISH_EVERY`]); a
    /// turn that is not leaves the next publication pending.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        if self.next.is_some_and(|at| now < at) {
            self.dirty = true;
            return false;
        }
        self.next = Some(now + PUBLISH_EVERY);
        self.dirty = false;
        true
    }

    /// When the publication of turns not yet published is due.
    pub(crate) fn pending(&self) -> Option<Instant> {
        self.next.filter(|_| self.dirty)
    }

    /// One loop turn took `took`.
    pub(crate) fn turn(&self, took: Duration) {
        self.turn.record(took.as_secs_f64());
    }

    /// Copies `s` into the handles; `rtts` are sampled round trips; `state` is
    /// (overloaded, draining); `outgoing` the datagrams waiting for the socket.
    pub(crate) fn publish(
        &self,
        s: &DriverStats,
        rtts: impl Iterator<Item = Duration>,
        state: (bool, bool),
        outgoing: usize,
    ) {
        let m = &s.mux;
        let ss = &m.sessions;
        self.sessions_live.set(m.sessions_live as f64);
        self.opened.absolute(m.sessions_opened);
        for (counter, &n) in self.closed.iter().zip(&m.sessions_closed) {
            counter.absolute(n);
        }
        let refused = [
            m.refused_session_limit,
            m.refused_admission_closed,
            m.refused_draining,
            m.refused_malformed,
            m.refused_protocol_mismatch,
        ];
        let drops = [
            s.socket_drops,
            s.send_drops,
            s.forward_drops,
            s.truncated,
            ss.crc_failures,
            ss.malformed_datagrams,
            s.parked_overflows,
            s.queue_full_rejections,
            s.enqueue_refused,
        ];
        let errors = [
            s.recv_errors,
            s.send_errors,
            s.icmp_unreachable,
            s.icmp_other,
        ];
        let pairs: [(&[Counter], &[u64]); 7] = [
            (&self.refused, &refused),
            (&self.datagrams, &[s.datagrams_in, s.datagrams_out]),
            (&self.bytes, &[s.bytes_in, s.bytes_out]),
            (
                &self.reliable,
                &[ss.reliable_packets_sent, ss.reliable_packets_resent],
            ),
            (
                &self.messages,
                &[ss.messages_enqueued, ss.messages_delivered],
            ),
            (&self.drops, &drops),
            (&self.errors, &errors),
        ];
        for (counters, values) in pairs {
            for (counter, &n) in counters.iter().zip(values) {
                counter.absolute(n);
            }
        }
        self.remaps[0].absolute(m.remaps);
        self.remaps[1].absolute(m.remaps_refused);
        self.timers[0].absolute(m.timers_run);
        self.timers[1].absolute(m.timers_moved);
        self.turns.absolute(s.turns);
        self.wakeups.absolute(s.wakeups);
        self.timer_wakeups.absolute(s.timer_wakeups);
        self.overloaded_turns.absolute(s.overloaded_turns);
        self.event_stalls.absolute(s.event_stalls);
        self.depth[0].set(outgoing as f64);
        self.depth[1].set(m.timer_entries as f64);
        self.depth[2].set(m.table_slots as f64);
        self.state[0].set(f64::from(u8::from(state.0)));
        self.state[1].set(f64::from(u8::from(state.1)));
        self.cpu.set(s.cpu_time.as_secs_f64());
        self.cpu_kernel.set(s.kernel_time.as_secs_f64());
        for rtt in rtts.take(RTT_SAMPLES) {
            self.rtt.record(rtt.as_secs_f64());
        }
    }
}
