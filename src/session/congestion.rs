//! Congestion control and pacing for one session.
//!
//! A NewReno window in packets (RFC 9002 §7, RFC 6582): slow start from
//! `initial_window`, halving once per loss event (a recovery period lasts a round
//! trip), growing by one packet per round trip in congestion avoidance. It bounds
//! reliable packets in flight over all channels, below the peer's receive window.
//!
//! Players lose packets on Wi-Fi and mobile links that are not congested at all,
//! and a window that halves on every such loss starves the session (at 30 % random
//! loss NewReno sits at its floor). So a loss only counts as congestion when the
//! path shows a queue: the standing round trip (the smallest sample of the last
//! one to two round trips) is more than an eighth (and 5 ms) above the smallest
//! seen in the last ten seconds. A bottleneck fills its queue before it drops, so
//! every sample rises and its losses do count; random losses on an idle path do
//! not, and neither do the odd late samples (a delayed ack, a scheduling hiccup)
//! that a lossy path produces.
//!
//! The same delay signal ends slow start (as HyStart does in Linux) and holds
//! the window while a queue stands: a larger window would only add queueing
//! delay and, at a shallow buffer, losses. Measured through a 2 MB/s link with a
//! 64-datagram drop-tail queue, 4 bulk sessions: 0.8 % of datagrams resent and
//! 92 % of the link as goodput, against 45 % resent without congestion control.
//!
//! The same holds for a retransmission timeout: with a queue, the first halves
//! the window and a second in a row collapses it to the floor; without one, the
//! backed-off retransmission timer is slowdown enough (at 30 % loss each way a
//! probe round trip fails half the time, and collapsing the window on every
//! second timeout in a row quarters the goodput).
//!
//! Why NewReno rather than CUBIC, BBR or UdpLibrary's window with trickle: game
//! sessions mostly send little per round trip and never fill a window, so what
//! matters is that a burst (a zone-in, a big state snapshot) neither overruns a
//! bottleneck nor waits on timeouts; NewReno does that with the least state and
//! well-understood behaviour, the queue test above gives it BBR's indifference to
//! random loss where it matters, and CUBIC's advantage only shows on long fat paths.
//!
//! Sending is paced: packets leave at 1.25 × window / SRTT, with bursts of up to
//! ten packets, so an 8 KB message goes out as a paced train of fragments rather
//! than a burst that overflows a queue and then waits out an RTO. Interactive
//! traffic (a few packets per tick) never waits for pacing. An optional byte rate
//! cap applies on top.

use std::time::Duration;

use super::timestamp::Timestamp;

/// The smallest window, in packets.
const MIN_WINDOW: f64 = 2.0;
/// Packets that may leave back to back.
const BURST: f64 = 10.0;
/// Pacing runs this much faster than window / SRTT, so pacing alone never limits
/// a window-limited sender.
const PACING_GAIN: f64 = 1.25;
/// Before the first round-trip sample, pacing assumes this round trip (in
/// nanoseconds, like every round trip here: the RTT estimator keeps them so).
const INITIAL_RTT: u64 = 100_000_000;
/// How long the smallest round trip is remembered, in nanoseconds (like every
/// round trip below: the ack path compares them as integers).
const MIN_RTT_WINDOW: u64 = 10_000_000_000;
/// A queue shows when the round trip exceeds the smallest by this much (in
/// nanoseconds) and by an eighth of it.
const QUEUE_DELAY: u64 = 5_000_000;
/// The shortest epoch of the standing round trip, in nanoseconds.
const MIN_EPOCH: u64 = 10_000_000;

/// One session's congestion window and pacing state.
#[derive(Debug, Clone)]
pub(crate) struct Congestion {
    enabled: bool,
    window: f64,
    ssthresh: f64,
    max_window: f64,
    /// A loss of a packet sent before this does not shrink the window again.
    recovery_since: Option<Timestamp>,
    /// The smallest round trip lately (nanoseconds), and when it was seen.
    min_rtt: Option<(u64, Timestamp)>,
    /// The standing round trip: the smallest sample of the current epoch (about
    /// one round trip long, from `epoch_start`) and of the one before.
    epoch_min: Option<u64>,
    previous_epoch_min: Option<u64>,
    epoch_start: Option<Timestamp>,
    /// Pacing tokens, in packets.
    tokens: f64,
    /// Rate-cap tokens, in bytes.
    rate_tokens: f64,
    rate_cap: Option<f64>,
    refilled: Option<Timestamp>,
}

impl Congestion {
    /// `initial` and `max` windows in packets; `rate_cap` in bytes per second.
    pub(crate) fn new(enabled: bool, initial: u16, max: u16, rate_cap: Option<u64>) -> Self {
        let max_window = f64::from(max.max(2));
        Self {
            enabled,
            window: f64::from(initial.max(2)).min(max_window),
            ssthresh: f64::INFINITY,
            max_window,
            recovery_since: None,
            min_rtt: None,
            epoch_min: None,
            previous_epoch_min: None,
            epoch_start: None,
            tokens: BURST,
            rate_tokens: 0.0,
            rate_cap: rate_cap.map(|r| r.max(1) as f64),
            refilled: None,
        }
    }

    /// The window, in packets (the largest allowed when disabled).
    pub(crate) fn window(&self) -> u64 {
        if self.enabled {
            self.window as u64
        } else {
            self.max_window as u64
        }
    }

    /// Whether another packet may be in flight when `in_flight` are.
    pub(crate) fn allows(&self, in_flight: u64) -> bool {
        !self.enabled || (in_flight as f64) < self.window
    }

    /// Packets acknowledged: the window grows (one per packet in slow start, one
    /// per window in congestion avoidance). A round trip after a loss event,
    /// recovery ends.
    pub(crate) fn on_acked(&mut self, packets: u32, now: Timestamp, srtt: Option<u64>) {
        if let Some(since) = self.recovery_since
            && now.nanos_since(since) >= srtt.unwrap_or(INITIAL_RTT)
        {
            self.recovery_since = None;
        }
        if self.recovery_since.is_some() {
            return;
        }
        let packets = f64::from(packets);
        if self.queue_shown() == Some(true) {
            // The path holds a queue: leave slow start (as HyStart does) and do not
            // grow; what a larger window would add is queueing delay and, at a
            // shallow buffer, losses.
            self.ssthresh = self.ssthresh.min(self.window);
            return;
        }
        self.window = if self.window < self.ssthresh {
            self.window + packets
        } else {
            self.window + packets / self.window
        }
        .min(self.max_window);
    }

    /// A round-trip sample (`srtt`: the smoothed round trip, with it).
    pub(crate) fn on_rtt(&mut self, rtt: u64, now: Timestamp, srtt: Option<u64>) {
        let epoch = srtt.unwrap_or(rtt).max(MIN_EPOCH);
        let into_epoch = self.epoch_start.map(|start| now.nanos_since(start));
        match into_epoch {
            Some(elapsed) if elapsed < epoch => {
                self.epoch_min = Some(self.epoch_min.map_or(rtt, |m| m.min(rtt)));
            }
            _ => {
                // A new epoch; the last one counts only if it just ended.
                let recent = into_epoch.is_some_and(|elapsed| elapsed < 2 * epoch);
                self.previous_epoch_min = if recent { self.epoch_min } else { None };
                self.epoch_min = Some(rtt);
                self.epoch_start = Some(now);
            }
        }
        let stale = self
            .min_rtt
            .is_none_or(|(min, at)| rtt <= min || now.nanos_since(at) >= MIN_RTT_WINDOW);
        if stale {
            self.min_rtt = Some((rtt, now));
        }
    }

    /// Whether the path shows a queue (see the module docs); `None` before the
    /// first round-trip sample.
    fn queue_shown(&self) -> Option<bool> {
        let standing = match (self.epoch_min, self.previous_epoch_min) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let (min, _) = self.min_rtt?;
        Some(standing > min + (min / 8).max(QUEUE_DELAY))
    }

    /// Whether a loss counts as congestion: with a queue, or before any sample
    /// (the safe side).
    fn queueing(&self) -> bool {
        self.queue_shown() != Some(false)
    }

    /// A packet sent at `sent` was lost: one halving per loss event, when the loss
    /// looks like congestion.
    pub(crate) fn on_lost(&mut self, sent: Timestamp, now: Timestamp) {
        if self.recovery_since.is_some_and(|since| sent <= since) || !self.queueing() {
            return;
        }
        self.ssthresh = (self.window / 2.0).max(MIN_WINDOW);
        self.window = self.ssthresh;
        self.recovery_since = Some(now);
    }

    /// A retransmission timeout fired (`repeated`: not the first in a row). The
    /// first halves the window when the path shows a queue; a second one in a row
    /// means the path may have changed: start over small.
    pub(crate) fn on_timeout(&mut self, now: Timestamp, repeated: bool) {
        if !self.queueing() {
            // Random loss took a probe or its ack; the backed-off timer already
            // slows retransmission.
            return;
        }
        self.ssthresh = (self.window / 2.0).max(MIN_WINDOW);
        self.window = if repeated { MIN_WINDOW } else { self.ssthresh };
        self.recovery_since = Some(now);
    }

    /// Pacing tokens earned per second: `PACING_GAIN` × window / SRTT.
    fn pacing_rate(&self, srtt: Option<u64>) -> f64 {
        let rtt = (srtt.unwrap_or(INITIAL_RTT) as f64 * 1e-9).max(1e-4);
        PACING_GAIN * self.window / rtt
    }

    /// Adds the tokens earned since the last refill (`srtt` in nanoseconds, like
    /// every round trip here).
    pub(crate) fn refill(&mut self, now: Timestamp, srtt: Option<u64>) {
        let burst = BURST.max(self.window / 4.0);
        if self.tokens >= burst && self.rate_cap.is_none() {
            // Full already (the common case between sparse sends): nothing to earn.
            self.tokens = burst;
            self.refilled = Some(now);
            return;
        }
        let elapsed = self
            .refilled
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.refilled = Some(now);
        self.tokens = (self.tokens + elapsed * self.pacing_rate(srtt)).min(burst);
        if let Some(cap) = self.rate_cap {
            // Up to 10 ms worth (at least one datagram) may leave at once.
            self.rate_tokens = (self.rate_tokens + elapsed * cap).min((cap / 100.0).max(1500.0));
        }
    }

    /// Whether a packet of up to `len` bytes may leave now.
    pub(crate) fn may_send(&self, len: usize) -> bool {
        let paced = !self.enabled || self.tokens >= 1.0;
        let capped = self.rate_cap.is_none() || self.rate_tokens >= len as f64;
        paced && capped
    }

    /// A packet of `len` bytes left (a retransmission may take the tokens below
    /// zero: new data then waits longer).
    pub(crate) fn spend(&mut self, len: usize) {
        if self.enabled {
            self.tokens -= 1.0;
        }
        if self.rate_cap.is_some() {
            self.rate_tokens -= len as f64;
        }
    }

    /// `len` bytes left outside the pacer's count (retransmissions): only the
    /// rate cap is charged.
    pub(crate) fn spend_bytes(&mut self, len: usize) {
        if self.rate_cap.is_some() {
            self.rate_tokens -= len as f64;
        }
    }

    /// When a packet of `len` bytes may leave, if it may not now.
    pub(crate) fn next_send(&self, now: Timestamp, len: usize, srtt: Option<u64>) -> Timestamp {
        let mut wait: f64 = 0.0;
        if self.enabled && self.tokens < 1.0 {
            wait = wait.max((1.0 - self.tokens) / self.pacing_rate(srtt));
        }
        if let Some(cap) = self.rate_cap
            && self.rate_tokens < len as f64
        {
            wait = wait.max((len as f64 - self.rate_tokens) / cap);
        }
        now + Duration::from_secs_f64(wait.max(1e-4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::timestamp::nanos;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn slow_start_halving_once_per_event_and_timeout_collapse() {
        let t0 = Timestamp::ZERO;
        let mut c = Congestion::new(true, 10, 196, None);
        assert_eq!(c.window(), 10);
        assert!(c.allows(9) && !c.allows(10));
        c.on_acked(10, t0, Some(nanos(50 * MS)));
        assert_eq!(c.window(), 20);
        // Losses on a path without a queue do not count, nor does one late sample
        // among normal ones.
        c.on_rtt(nanos(50 * MS), t0, None);
        c.on_rtt(nanos(50 * MS), t0 + 60 * MS, Some(nanos(50 * MS)));
        c.on_rtt(nanos(300 * MS), t0 + 70 * MS, Some(nanos(50 * MS)));
        c.on_lost(t0, t0 + 75 * MS);
        assert_eq!(c.window(), 20);
        // With a queue (every sample of a round trip at 100 ms against 50 ms), two
        // losses of packets sent before the first loss's detection: one event.
        let t1 = t0 + 500 * MS;
        c.on_rtt(nanos(100 * MS), t1, Some(nanos(60 * MS)));
        c.on_lost(t1, t1 + 10 * MS);
        c.on_lost(t1 + MS, t1 + 11 * MS);
        assert_eq!(c.window(), 10);
        // No growth during recovery, nor while the queue stands; once it drains,
        // congestion avoidance.
        c.on_acked(10, t1 + 20 * MS, Some(nanos(50 * MS)));
        assert_eq!(c.window(), 10);
        c.on_acked(10, t1 + 70 * MS, Some(nanos(50 * MS)));
        assert_eq!(c.window(), 10);
        c.on_rtt(nanos(50 * MS), t1 + 70 * MS, Some(nanos(60 * MS)));
        c.on_acked(10, t1 + 71 * MS, Some(nanos(50 * MS)));
        assert_eq!(c.window(), 11);
        // The queue builds again (two round trips of 100 ms samples): timeouts.
        c.on_rtt(nanos(100 * MS), t1 + 140 * MS, Some(nanos(60 * MS)));
        c.on_rtt(nanos(100 * MS), t1 + 210 * MS, Some(nanos(60 * MS)));
        c.on_timeout(t1 + 220 * MS, false);
        assert_eq!(c.window(), 5);
        c.on_timeout(t1 + 300 * MS, true);
        assert_eq!(c.window(), 2);
        // Timeouts on a path without a queue leave the window alone.
        let mut lossy = Congestion::new(true, 10, 196, None);
        lossy.on_rtt(nanos(50 * MS), t0, None);
        lossy.on_rtt(nanos(52 * MS), t0 + 60 * MS, Some(nanos(50 * MS)));
        lossy.on_timeout(t0 + 200 * MS, false);
        lossy.on_timeout(t0 + 400 * MS, true);
        assert_eq!(lossy.window(), 10);
        // Disabled, it never limits.
        let off = Congestion::new(false, 10, 196, None);
        assert!(off.allows(10_000) && off.may_send(512));
    }

    #[test]
    fn pacing_spreads_a_burst_and_the_rate_cap_holds() {
        let t0 = Timestamp::ZERO;
        let mut c = Congestion::new(true, 40, 196, None);
        c.refill(t0, Some(nanos(100 * MS)));
        let mut sent = 0;
        while c.may_send(500) {
            c.spend(500);
            sent += 1;
        }
        assert_eq!(sent, 10, "one burst");
        // 1.25 × 40 / 100 ms = 500 packets/s: 2 ms later, one more.
        let next = c.next_send(t0, 500, Some(nanos(100 * MS)));
        assert!(next > t0 && next <= t0 + 3 * MS, "{:?}", next - t0);
        c.refill(t0 + 2 * MS, Some(nanos(100 * MS)));
        assert!(c.may_send(500));

        let mut capped = Congestion::new(false, 10, 196, Some(100_000));
        capped.refill(t0, None);
        capped.refill(t0 + 10 * MS, None);
        // 10 ms at 100 kB/s: 1000 bytes, but at least one 1500-byte datagram of burst.
        assert!(capped.may_send(1000) && !capped.may_send(2000));
    }
}
