//! Results: the JSON document (keys are a contract) and the human table.

use std::fmt::Write as _;

use serde::Serialize;

use crate::client::{ClientOutcome, human};

/// Percentiles of a nanosecond histogram, in microseconds (round trips, state
/// ages, ...).
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// Of `h`, all zero when it is empty.
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        let q = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                us(h.value_at_quantile(q))
            }
        };
        Self {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: if h.is_empty() { 0.0 } else { us(h.max()) },
        }
    }
}

/// One run against one server. The top-level keys are the loadgen contract
/// (architecture.md); anything else goes under `details`.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub server: String,
    /// `null` for an external server.
    pub shards: Option<usize>,
    pub sessions: usize,
    pub duration_s: f64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub messages_lost: u64,
    pub msgs_per_sec: f64,
    pub mbytes_per_sec: f64,
    pub rtt_us: Percentiles,
    /// `null` for an external server.
    pub server_cpu_s: Option<f64>,
    pub msgs_per_server_cpu_s: Option<f64>,
    pub client_cpu_s: f64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub resends: u64,
    pub session_setup_per_sec: f64,
    pub details: Details,
}

/// What the contract does not name.
#[derive(Debug, Clone, Serialize)]
pub struct Details {
    pub target: String,
    pub client_threads: usize,
    /// Closed loop: messages in flight per session.
    pub window: Option<usize>,
    /// Open loop: messages per second per session.
    pub rate_per_session: Option<f64>,
    pub size: String,
    pub channel: String,
    pub churn_per_sec: f64,
    /// Server CPU microseconds per echoed message.
    pub server_cpu_us_per_msg: Option<f64>,
    /// The part of it spent in the kernel (system calls; on loopback these also
    /// run the receiving side's network stack and wake it), as the kernel's
    /// scheduler-tick samples split the thread's time; `null` below
    /// [`crate::server::KERNEL_SPLIT_MIN_CPU_S`] of server CPU in the window.
    pub server_kernel_us_per_msg: Option<f64>,
    /// Client datagrams (both directions) per echoed message.
    pub client_datagrams_per_msg: f64,
    /// Datagrams the clients sent per echoed message (the message itself, and
    /// acks that did not ride on one).
    pub client_sent_per_msg: f64,
    /// Server wake-ups per echoed message (soe-uring only), and those that only a
    /// timeout ended.
    pub server_wakeups_per_msg: Option<f64>,
    pub server_timer_wakeups_per_msg: Option<f64>,
    /// Datagrams the server read and wrote in the window (soe-uring only).
    pub server_datagrams_in: Option<u64>,
    pub server_datagrams_out: Option<u64>,
    /// Churn session setup times.
    pub setup_us_p50: Option<f64>,
    pub setup_us_p99: Option<f64>,
    pub churn_failures: u64,
    /// Seconds until every initial session was open.
    pub connect_s: f64,
    /// Echo mismatches and other client-side errors (should be 0).
    pub errors: u64,
    pub first_error: Option<String>,
    /// Echoes the embedded server failed to queue (should be 0).
    pub server_echo_failures: Option<u64>,
    /// Datagrams dropped because a client socket buffer was full.
    pub client_send_drops: u64,
    /// Messages the client sessions refused (queue full).
    pub client_enqueue_refused: u64,
    /// Initial sessions that closed during the run (should be 0).
    pub sessions_closed: u64,
    pub schedule_skips: u64,
}

/// How the run was set up, for `details`.
pub struct Setup {
    pub server: String,
    pub shards: Option<usize>,
    pub target: String,
    pub sessions: usize,
    pub client_threads: usize,
    pub window: Option<usize>,
    pub rate: Option<f64>,
    pub size: String,
    pub channel: String,
    pub churn: f64,
    pub server_echo_failures: Option<u64>,
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

impl RunResult {
    pub fn new(setup: Setup, o: &ClientOutcome) -> Self {
        let secs = o.window.as_secs_f64().max(1e-9);
        let (server_cpu, server_kernel) = crate::server::cpu_between(o.server_start, o.server_end);
        // Server CPU seconds as microseconds per echoed message.
        let us_per_msg = |cpu: Option<f64>| {
            cpu.filter(|_| o.received > 0)
                .map(|c| round(c * 1e6 / o.received as f64, 3))
        };
        let per_cpu = server_cpu
            .filter(|c| *c > 0.0)
            .map(|c| round(o.received as f64 / c, 1));
        let setup_rate = if setup.churn > 0.0 {
            o.setups as f64 / secs
        } else {
            setup.sessions as f64 / o.connect_time.as_secs_f64()
        };
        let server_diff = |f: fn(&crate::server::ServerSnapshot) -> Option<u64>| match (
            o.server_start.as_ref().and_then(f),
            o.server_end.as_ref().and_then(f),
        ) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let d = &o.mux.sessions;
        Self {
            server: setup.server,
            shards: setup.shards,
            sessions: setup.sessions,
            duration_s: round(secs, 3),
            messages_sent: o.sent,
            messages_received: o.received,
            messages_lost: o.sent.saturating_sub(o.received),
            msgs_per_sec: round(o.received as f64 / secs, 1),
            mbytes_per_sec: round(o.bytes_received as f64 / secs / 1e6, 3),
            rtt_us: Percentiles::of(&o.rtt),
            server_cpu_s: server_cpu.map(|c| round(c, 4)),
            msgs_per_server_cpu_s: per_cpu,
            client_cpu_s: round(o.client_cpu.as_secs_f64(), 4),
            datagrams_sent: d.datagrams_sent,
            datagrams_received: d.datagrams_received,
            resends: d.reliable_packets_resent,
            session_setup_per_sec: round(setup_rate, 1),
            details: Details {
                target: setup.target,
                client_threads: setup.client_threads,
                window: setup.window,
                rate_per_session: setup.rate,
                size: setup.size,
                channel: setup.channel,
                churn_per_sec: setup.churn,
                server_cpu_us_per_msg: us_per_msg(server_cpu),
                server_kernel_us_per_msg: us_per_msg(server_kernel),
                client_datagrams_per_msg: if o.received > 0 {
                    round(
                        (d.datagrams_sent + d.datagrams_received) as f64 / o.received as f64,
                        3,
                    )
                } else {
                    0.0
                },
                client_sent_per_msg: if o.received > 0 {
                    round(d.datagrams_sent as f64 / o.received as f64, 3)
                } else {
                    0.0
                },
                server_wakeups_per_msg: server_diff(|s| s.wakeups)
                    .filter(|_| o.received > 0)
                    .map(|w| round(w as f64 / o.received as f64, 3)),
                server_timer_wakeups_per_msg: server_diff(|s| s.timer_wakeups)
                    .filter(|_| o.received > 0)
                    .map(|w| round(w as f64 / o.received as f64, 3)),
                server_datagrams_in: server_diff(|s| s.datagrams_in),
                server_datagrams_out: server_diff(|s| s.datagrams_out),
                setup_us_p50: (!o.setup.is_empty()).then(|| us(o.setup.value_at_quantile(0.5))),
                setup_us_p99: (!o.setup.is_empty()).then(|| us(o.setup.value_at_quantile(0.99))),
                churn_failures: o.churn_failures,
                connect_s: round(o.connect_time.as_secs_f64(), 4),
                errors: o.errors,
                first_error: o.first_error.clone(),
                server_echo_failures: setup.server_echo_failures,
                client_send_drops: o.send_drops,
                client_enqueue_refused: o.enqueue_refused,
                sessions_closed: o.sessions_closed,
                schedule_skips: o.schedule_skips,
            },
        }
    }
}

/// `12345678` → `12,345,678`.
fn grouped(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

/// The results side by side, one column per server.
pub fn table(results: &[RunResult]) -> String {
    type Row = (&'static str, fn(&RunResult) -> String);
    let rows: &[Row] = &[
        ("shards", |r| r.shards.map_or("-".into(), |s| s.to_string())),
        ("sessions", |r| r.sessions.to_string()),
        ("duration_s", |r| format!("{:.2}", r.duration_s)),
        ("messages_sent", |r| grouped(r.messages_sent)),
        ("messages_received", |r| grouped(r.messages_received)),
        ("messages_lost", |r| grouped(r.messages_lost)),
        ("msgs_per_sec", |r| grouped(r.msgs_per_sec.round() as u64)),
        ("mbytes_per_sec", |r| format!("{:.2}", r.mbytes_per_sec)),
        ("rtt_us p50", |r| format!("{:.1}", r.rtt_us.p50)),
        ("rtt_us p90", |r| format!("{:.1}", r.rtt_us.p90)),
        ("rtt_us p99", |r| format!("{:.1}", r.rtt_us.p99)),
        ("rtt_us p999", |r| format!("{:.1}", r.rtt_us.p999)),
        ("rtt_us max", |r| format!("{:.1}", r.rtt_us.max)),
        ("server_cpu_s", |r| {
            opt(r.server_cpu_s, |v| format!("{v:.3}"))
        }),
        ("msgs_per_server_cpu_s", |r| {
            opt(r.msgs_per_server_cpu_s, |v| grouped(v.round() as u64))
        }),
        ("server_cpu_us_per_msg", |r| {
            opt(r.details.server_cpu_us_per_msg, |v| format!("{v:.3}"))
        }),
        ("  of which kernel", |r| {
            opt(r.details.server_kernel_us_per_msg, |v| format!("{v:.3}"))
        }),
        ("client_cpu_s", |r| format!("{:.3}", r.client_cpu_s)),
        ("datagrams_sent", |r| grouped(r.datagrams_sent)),
        ("datagrams_received", |r| grouped(r.datagrams_received)),
        ("client_datagrams_per_msg", |r| {
            format!("{:.3}", r.details.client_datagrams_per_msg)
        }),
        ("client_sent_per_msg", |r| {
            format!("{:.3}", r.details.client_sent_per_msg)
        }),
        ("server_wakeups_per_msg", |r| {
            opt(r.details.server_wakeups_per_msg, |v| format!("{v:.3}"))
        }),
        ("server_timer_wakeups_per_msg", |r| {
            opt(r.details.server_timer_wakeups_per_msg, |v| {
                format!("{v:.3}")
            })
        }),
        ("resends", |r| grouped(r.resends)),
        ("session_setup_per_sec", |r| {
            format!("{:.1}", r.session_setup_per_sec)
        }),
        ("errors", |r| grouped(r.details.errors)),
    ];
    let servers: Vec<&str> = results.iter().map(|r| r.server.as_str()).collect();
    side_by_side(&servers, results, rows)
}

/// One row of a side-by-side table: its label and how to print one result's cell.
pub type Row<R> = (&'static str, fn(&R) -> String);

/// `results` side by side under their `servers`' names, one row per `rows` entry
/// (a label and how to print that row's cell for one result).
pub fn side_by_side<R>(servers: &[&str], results: &[R], rows: &[Row<R>]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(_, f)| results.iter().map(f).collect())
        .collect();
    let label_width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(6);
    let width = servers
        .iter()
        .map(|s| s.chars().count())
        .chain(cells.iter().flatten().map(|c| c.chars().count()))
        .max()
        .unwrap_or(0)
        .max(10);
    let mut out = String::new();
    let _ = write!(out, "{:<label_width$}", "server");
    for h in servers {
        let _ = write!(out, "  {h:>width$}");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{}",
        "-".repeat(label_width + (width + 2) * results.len())
    );
    for ((name, _), row) in rows.iter().zip(&cells) {
        let _ = write!(out, "{name:<label_width$}");
        for c in row {
            let _ = write!(out, "  {c:>width$}");
        }
        out.push('\n');
    }
    out
}

/// For each pair of servers that both have a figure from `get`: `(label, ratio)`,
/// the first's figure over the second's (or the reverse with `invert`, for
/// figures where less is better), labelled so that the ratio reads as "times
/// better".
pub fn pair_ratios(get: impl Fn(&str) -> Option<f64>, invert: bool) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (a, b) in [
        ("soe-uring", "peer"),
        ("tokio", "peer"),
        ("soe-uring", "tokio"),
    ] {
        let (Some(x), Some(y)) = (get(a), get(b)) else {
            continue;
        };
        let (label, num, den) = if invert {
            (format!("{b}/{a}"), y, x)
        } else {
            (format!("{a}/{b}"), x, y)
        };
        if den > 0.0 {
            out.push((label, round(num / den, 2)));
        }
    }
    out
}

/// The ratios of msgs_per_server_cpu_s against `peer` (and `tokio`), when present.
pub fn ratios(results: &[RunResult]) -> Vec<(String, f64)> {
    let get = |name: &str| {
        results
            .iter()
            .find(|r| r.server == name)
            .and_then(|r| r.msgs_per_server_cpu_s)
    };
    pair_ratios(get, false)
}

/// The workload in one line.
pub fn describe(results: &[RunResult]) -> String {
    let Some(r) = results.first() else {
        return String::new();
    };
    let d = &r.details;
    let load = match (d.window, d.rate_per_session) {
        (_, Some(rate)) => format!("{} msg/s per session (open loop)", human(rate)),
        (Some(w), None) => format!("{w} in flight per session (closed loop)"),
        _ => String::new(),
    };
    let mut s = format!(
        "{} sessions × {load}, {}-byte messages on {}, {} client threads, {:.1} s per server",
        r.sessions, d.size, d.channel, d.client_threads, r.duration_s
    );
    if d.churn_per_sec > 0.0 {
        s += &format!(", churn {} sessions/s", d.churn_per_sec);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1234567), "1,234,567");
    }
}
