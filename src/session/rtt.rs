//! Round-trip estimation and the retransmission timeout (Jacobson/Karels, RFC 6298).

use std::time::Duration;

/// Granularity term of the RTO: `RTO = SRTT + max(G, 4·RTTVAR)`.
const GRANULARITY: Duration = Duration::from_millis(10);

/// Smoothed round-trip time, its variation, and the resulting timeout, kept in
/// whole nanoseconds (integer arithmetic on the ack path).
#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    srtt: Option<u64>,
    rttvar: u64,
    rto: u64,
    min: u64,
    max: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl RttEstimator {
    pub(crate) fn new(initial: Duration, min: Duration, max: Duration) -> Self {
        let (min, max) = (nanos(min), nanos(max).max(nanos(min)));
        Self {
            srtt: None,
            rttvar: 0,
            rto: nanos(initial).clamp(min, max),
            min,
            max,
        }
    }

    /// The current retransmission timeout.
    pub(crate) fn rto(&self) -> Duration {
        Duration::from_nanos(self.rto)
    }

    /// The smoothed round trip, once sampled.
    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt.map(Duration::from_nanos)
    }

    /// Feeds one sample, taken only from packets sent exactly once (Karn).
    pub(crate) fn sample(&mut self, rtt: Duration) {
        let rtt = nanos(rtt).min(1 << 50);
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
        self.rto = (srtt + (self.rttvar * 4).max(granularity)).clamp(self.min, self.max);
    }

    /// Doubles the timeout after a retransmission by timeout.
    pub(crate) fn backoff(&mut self) {
        self.rto = self.rto.saturating_mul(2).min(self.max);
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
        r.sample(MS);
        assert_eq!(r.rto(), 200 * MS);
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
