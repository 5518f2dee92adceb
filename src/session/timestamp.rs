//! A session's clock: nanoseconds since the session's epoch, as one `u64`.
//!
//! `std::time::Instant` is a seconds-and-nanoseconds pair. Adding a `Duration`
//! normalises the carry and checks for overflow in an out-of-line call, and a
//! comparison compares two fields. A session does a few dozen of these per datagram
//! (deadlines, RTT samples, loss detection, pacing), so inside it time is a
//! [`Timestamp`]: an `Instant` converts once where it enters a public method, and a
//! deadline converts back once where it leaves. (s2n-quic and smoltcp keep their own
//! time types for the same reason.)
//!
//! Arithmetic saturates: at nanosecond resolution a `u64` spans 584 years, so only a
//! `Duration::MAX` meaning "never" reaches the end, and it stays there.

use std::ops::{Add, AddAssign, Sub};
use std::time::{Duration, Instant};

/// Nanoseconds since an epoch (the session's creation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Timestamp(u64);

/// `d` in nanoseconds, saturating.
#[inline]
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Timestamp {
    /// The epoch itself.
    pub(crate) const ZERO: Self = Self(0);

    /// `now` on the clock that started at `epoch` (the epoch itself if `now` is
    /// earlier).
    #[inline]
    pub(crate) fn since(epoch: Instant, now: Instant) -> Self {
        Self(nanos(now.saturating_duration_since(epoch)))
    }

    /// This time as an `Instant`, on the clock that started at `epoch`.
    #[inline]
    pub(crate) fn to_instant(self, epoch: Instant) -> Instant {
        epoch + Duration::from_nanos(self.0)
    }

    /// The earlier of two optional times (`None` is never).
    #[inline]
    pub(crate) fn earliest(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, None) => a,
            (None, b) => b,
        }
    }

    /// Nanoseconds elapsed since `earlier`; zero if `earlier` is later.
    #[inline]
    pub(crate) fn nanos_since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The time elapsed since `earlier`; zero if `earlier` is later.
    #[inline]
    pub(crate) fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Self;

    #[inline]
    fn add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(nanos(d)))
    }
}

impl AddAssign<Duration> for Timestamp {
    #[inline]
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Self;

    /// Saturates at the epoch.
    #[inline]
    fn sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(nanos(d)))
    }
}

impl Sub for Timestamp {
    type Output = Duration;

    /// The time elapsed since `earlier` (zero if `earlier` is later).
    #[inline]
    fn sub(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // an arbitrary epoch
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn converts_both_ways_at_nanosecond_resolution() {
        let epoch = Instant::now();
        let now = epoch + Duration::new(3, 456_789_012);
        let t = Timestamp::since(epoch, now);
        assert_eq!(t, Timestamp(3_456_789_012));
        assert_eq!(t.to_instant(epoch), now);
        // Before the epoch reads as the epoch.
        assert_eq!(Timestamp::since(now, epoch), Timestamp::ZERO);
    }

    #[test]
    fn arithmetic_matches_instant_and_saturates() {
        let t = Timestamp::ZERO + 5 * MS;
        assert_eq!(t + 2 * MS, Timestamp::ZERO + 7 * MS);
        assert_eq!(t - 2 * MS, Timestamp::ZERO + 3 * MS);
        assert_eq!(t - 9 * MS, Timestamp::ZERO);
        assert_eq!((t + 2 * MS).saturating_duration_since(t), 2 * MS);
        assert_eq!(t.saturating_duration_since(t + 2 * MS), Duration::ZERO);
        assert_eq!((t + 2 * MS) - t, 2 * MS);
        assert!(t < t + Duration::from_nanos(1));
        let mut u = t;
        u += MS;
        assert_eq!(u, t + MS);
        // "Never" stays never.
        assert_eq!(t + Duration::MAX, Timestamp(u64::MAX));
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }
}
