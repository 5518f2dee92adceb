//! Round-trip estimation and the retransmission timeout (Jacobson/Karels, RFC 6298).

use std::time::Duration;

use super::timestamp::nanos;

/// Granularity term of the RTO: `RTO = SRTT + max(G, 4·RTTVAR)`.
const GRANULARITY: Duration = Duration::from_millis(10);

/// Timer granularity for loss detection and probes (RFC 9002's kGranularity).
const LOSS_GRANULARITY: Duration = Duration::from_millis(1);

/// Most doublings of the RTO before progress resets them.
const MAX_BACKOFF: u32 = 10;

/// Smoothed round-trip time, its variation, the latest sample, and the resulting
/// timeouts, kept in whole nanoseconds (integer arithmetic on the ack path).
#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    srtt: Option<u64>,
    rttvar: u64,
    latest: u64,
    /// Whether `latest` was sampled since [`RttEstimator::take_sample`] last ran.
    fresh: bool,
    /// The timeout before backoff.
    base: u64,
    /// `SRTT + max(G, 4·RTTVAR)` before clamping; 0 before the first sample.
    raw: u64,
    /// Doublings since the peer last acknowledged anything new.
    backoff: u32,
    min: u64,
    max: u64,
}

impl RttEstimator {
    pub(crate) fn new(initial: Duration, min: Duration, max: Duration) -> Self {
        let (min, max) = (nanos(min), nanos(max).max(nanos(min)));
        Self {
            srtt: None,
            rttvar: 0,
            latest: 0,
            fresh: false,
            base: nanos(initial).clamp(min, max),
            raw: 0,
            backoff: 0,
            min,
            max,
        }
    }

    /// The current retransmission timeout: the base, doubled once per timeout
    /// since the last progress, within the bounds.
    pub(crate) fn rto(&self) -> Duration {
        Duration::from_nanos(
            self.base
                .saturating_mul(1 << self.backoff.min(MAX_BACKOFF))
                .min(self.max),
        )
    }

    /// The smoothed round trip, once sampled.
    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt.map(Duration::from_nanos)
    }

    /// Feeds one sample, taken only from packets sent exactly once (Karn).
    pub(crate) fn sample(&mut self, rtt: Duration) {
        let rtt = nanos(rtt).min(1 << 50);
        self.latest = rtt;
        self.fresh = true;
        let srtt = match self.srtt {
            None => {
                self.rttvar = rtt / 2;
                rtt
            }
            Some(srtt) => {
                self.rttvar = (self.rttvar * 3 + srtt.abs_diff(rtt)) / 4;
                (srtt * 7 + rtt) / 8
            }
        };
        self.srtt = Some(srtt);
        let granularity = nanos(GRANULARITY);
        self.raw = srtt + (self.rttvar * 4).max(granularity);
        self.base = self.raw.clamp(self.min, self.max);
    }

    /// The retransmission timeout for a peer that may hold an ack back for up to
    /// `ack_delay` (a lone packet's, see `lone_ack_delay`): `SRTT + max(G,
    /// 4·RTTVAR) + ack_delay` within the bounds, doubled per timeout as
    /// [`RttEstimator::rto`]. A path whose round trip was learnt from prompt acks
    /// then does not time out on a delayed one. Before the first sample, the RTO.
    pub(crate) fn rto_with(&self, ack_delay: Duration) -> Duration {
        if self.srtt.is_none() {
            return self.rto();
        }
        let base = (self.raw + nanos(ack_delay)).clamp(self.min, self.max);
        Duration::from_nanos(
            base.saturating_mul(1 << self.backoff.min(MAX_BACKOFF))
                .min(self.max),
        )
    }

    /// Doubles the timeout after a retransmission by timeout.
    pub(crate) fn backoff(&mut self) {
        self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
    }

    /// Whether a timeout fired since the last progress.
    pub(crate) fn backed_off(&self) -> bool {
        self.backoff > 0
    }

    /// The sample taken since the last call, if any, in nanoseconds.
    pub(crate) fn take_sample(&mut self) -> Option<u64> {
        std::mem::take(&mut self.fresh).then_some(self.latest)
    }

    /// The smoothed round trip in nanoseconds, once sampled.
    pub(crate) fn srtt_nanos(&self) -> Option<u64> {
        self.srtt
    }

    /// The peer acknowledged something new: the path works, the backoff ends
    /// (even when Karn's rule gives no sample, as when everything was resent).
    pub(crate) fn progress(&mut self) {
        self.backoff = 0;
    }

    /// How long after a later packet was acknowledged an earlier one counts as
    /// lost: 9/8 of the larger of the smoothed and the latest round trip (RFC 9002
    /// time threshold); `None` before the first sample.
    pub(crate) fn loss_delay(&self) -> Option<Duration> {
        let srtt = self.srtt?;
        let rtt = srtt.max(self.latest);
        Some(Duration::from_nanos(rtt + rtt / 8).max(LOSS_GRANULARITY))
    }

    /// The probe timeout: how long to wait for any acknowledgement before probing
    /// with one retransmission (RFC 9002's PTO, with the peer's `max_ack_delay`).
    /// Before the first sample, the RTO.
    pub(crate) fn pto(&self, max_ack_delay: Duration) -> Duration {
        match self.srtt {
            Some(srtt) => Duration::from_nanos(
                srtt + (self.rttvar * 4).max(nanos(LOSS_GRANULARITY)) + nanos(max_ack_delay),
            ),
            None => self.rto(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_sample_sets_srtt_and_variance() {
        let mut r = RttEstimator::new(500 * MS, 200 * MS, 8000 * MS);
        assert_eq!(r.rto(), 500 * MS);
        r.sample(100 * MS);
        assert_eq!(r.srtt(), Some(100 * MS));
        // 100 + 4·50 = 300 ms.
        assert_eq!(r.rto(), 300 * MS);
    }

    #[test]
    fn clamps_and_backs_off() {
        let mut r = RttEstimator::new(500 * MS, 200 * MS, 1000 * MS);
        for _ in 0..20 {
            r.sample(MS);
        }
        assert_eq!(r.rto(), 200 * MS);
        r.backoff();
        assert_eq!(r.rto(), 400 * MS);
        r.backoff();
        r.backoff();
        assert_eq!(r.rto(), 1000 * MS);
        // A sample alone does not undo the backoff (it may be a lucky packet);
        // progress does.
        r.sample(MS);
        assert_eq!(r.rto(), 1000 * MS);
        r.progress();
        assert_eq!(r.rto(), 200 * MS);
    }

    #[test]
    fn loss_delay_and_probe_timeout() {
        let mut r = RttEstimator::new(500 * MS, 100 * MS, 3000 * MS);
        assert_eq!(r.loss_delay(), None);
        assert_eq!(r.pto(25 * MS), 500 * MS);
        r.sample(80 * MS);
        // 9/8 · 80 = 90 ms; PTO = 80 + 4·40 + 25 = 265 ms.
        assert_eq!(r.loss_delay(), Some(90 * MS));
        assert_eq!(r.pto(25 * MS), 265 * MS);
        // The latest sample counts when it is larger.
        r.sample(160 * MS);
        assert_eq!(r.loss_delay(), Some(180 * MS));
    }

    #[test]
    fn the_peers_ack_delay_extends_the_timeout_above_the_floor_only() {
        let mut r = RttEstimator::new(500 * MS, 100 * MS, 3000 * MS);
        assert_eq!(r.rto_with(50 * MS), 500 * MS);
        for _ in 0..20 {
            r.sample(MS);
        }
        // A LAN: 1 + 10 + 50 ms is below the 100 ms floor.
        assert_eq!(r.rto_with(50 * MS), 100 * MS);
        for _ in 0..40 {
            r.sample(80 * MS);
        }
        // 80 ms away: an ack held 50 ms arrives at 130 ms, inside the timeout.
        let rto = r.rto_with(50 * MS);
        assert!(rto > 135 * MS && rto <= r.rto() + 50 * MS, "{rto:?}");
        r.backoff();
        assert_eq!(r.rto_with(50 * MS), rto * 2);
    }

    #[test]
    fn smoothing_follows_rfc6298() {
        let mut r = RttEstimator::new(500 * MS, Duration::ZERO, 8000 * MS);
        r.sample(80 * MS);
        r.sample(160 * MS);
        // rttvar = (3·40 + |80−160|)/4 = 50; srtt = (7·80 + 160)/8 = 90.
        assert_eq!(r.srtt(), Some(90 * MS));
        assert_eq!(r.rto(), 290 * MS);
    }
}
