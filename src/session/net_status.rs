//! ClockSync and ClockReflect: what a client learns about its path.
//!
//! A client with `clock_sync_interval` set sends a ClockSync (`00 07`) carrying the
//! low 16 bits of its millisecond clock and its datagram counters; the server
//! answers at once with a ClockReflect (`00 08`) that echoes them next to its own
//! clock and counters (`docs/protocol.md`, statistics packets). One reflect gives
//! a round trip (16-bit wrap-aware, millisecond resolution), the offset between
//! the two clocks, and how many datagrams each direction has lost since the
//! session began. Servers only answer: UdpLibrary asks that they never initiate.
//!
//! The schedule follows UdpLibrary's idea of syncing more often while little is
//! known: the first sync goes out as soon as the session runs, the next ones every
//! [`EARLY_INTERVAL`] (or the configured interval, if shorter) until two reflects
//! have come back, then at the configured interval.

use std::time::Duration;

use super::timestamp::Timestamp;

use crate::protocol::{NetStatusRequest, NetStatusResponse};

/// How often to sync until [`EARLY_SAMPLES`] reflects came back.
const EARLY_INTERVAL: Duration = Duration::from_secs(5);
/// Reflects after which the configured interval applies.
const EARLY_SAMPLES: u32 = 2;
/// A reflect whose round trip looks longer than this is stale (a late answer
/// to an earlier sync whose 16-bit stamp wrapped) and is ignored.
const MAX_PLAUSIBLE_RTT_MS: u32 = 30_000;

/// A client's view of its path, from ClockSync round trips
/// ([`crate::session::SoeSession::net_status`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct NetStatus {
    /// Reflects received (round-trip samples).
    pub samples: u32,
    /// The latest round trip.
    pub last_round_trip: Duration,
    /// The mean round trip over all samples.
    pub average_round_trip: Duration,
    /// The shortest round trip seen.
    pub lowest_round_trip: Duration,
    /// The longest round trip seen.
    pub highest_round_trip: Duration,
    /// The peer's session clock minus ours, in milliseconds, estimated at the
    /// midpoint of the latest round trip.
    pub peer_clock_offset_ms: i64,
    /// The share of the datagrams this side had sent that the peer had not
    /// received, as of the latest reflect (0.0 to 1.0, cumulative).
    pub outgoing_loss: f32,
    /// The share of the datagrams the peer had sent that this side had not
    /// received, as of the latest reflect (0.0 to 1.0, cumulative).
    pub incoming_loss: f32,
}

/// The sync schedule and what the reflects taught.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClockSync {
    /// When the last sync went out.
    last_sent: Option<Timestamp>,
    status: NetStatus,
    /// Sum of all round trips, for the mean.
    total_ms: u64,
}

impl ClockSync {
    /// What the reflects taught so far; `None` before the first.
    pub(crate) fn status(&self) -> Option<NetStatus> {
        (self.status.samples > 0).then_some(self.status)
    }

    /// When the next sync is due, for a session running since `running_since`
    /// with syncs every `interval`.
    pub(crate) fn next_due(&self, running_since: Timestamp, interval: Duration) -> Timestamp {
        match self.last_sent {
            None => running_since,
            Some(sent) if self.status.samples < EARLY_SAMPLES => {
                sent + interval.min(EARLY_INTERVAL)
            }
            Some(sent) => sent + interval,
        }
    }

    /// Builds the sync to send now. `clock_ms`: the session's millisecond clock;
    /// `sent` and `received`: datagram counts so far (the sync itself counted).
    pub(crate) fn request(
        &mut self,
        now: Timestamp,
        clock_ms: u64,
        sent: u64,
        received: u64,
        srtt: Option<Duration>,
    ) -> NetStatusRequest {
        self.last_sent = Some(now);
        let ms = |d: Duration| d.as_millis().min(u128::from(u32::MAX)) as u32;
        let s = &self.status;
        NetStatusRequest {
            timestamp: clock_ms as u16,
            master_ping: srtt.map_or(ms(s.average_round_trip), ms),
            average_ping: ms(s.average_round_trip),
            low_ping: ms(s.lowest_round_trip),
            high_ping: ms(s.highest_round_trip),
            last_ping: ms(s.last_round_trip),
            our_sent: sent,
            our_received: received,
        }
    }

    /// A reflect arrived at `clock_ms` (the session's millisecond clock), when this
    /// side had received `received` datagrams (the reflect included). Returns
    /// whether it was taken (a stale or implausible one is not).
    pub(crate) fn on_reflect(
        &mut self,
        reflect: &NetStatusResponse,
        clock_ms: u64,
        received: u64,
    ) -> bool {
        let rtt_ms = u32::from((clock_ms as u16).wrapping_sub(reflect.timestamp));
        if self.last_sent.is_none() || rtt_ms > MAX_PLAUSIBLE_RTT_MS {
            return false;
        }
        let rtt = Duration::from_millis(u64::from(rtt_ms));
        let s = &mut self.status;
        s.samples += 1;
        self.total_ms += u64::from(rtt_ms);
        s.last_round_trip = rtt;
        s.average_round_trip = Duration::from_millis(self.total_ms / u64::from(s.samples));
        s.lowest_round_trip = if s.samples == 1 {
            rtt
        } else {
            s.lowest_round_trip.min(rtt)
        };
        s.highest_round_trip = s.highest_round_trip.max(rtt);
        let midpoint = clock_ms as i64 - i64::from(rtt_ms / 2);
        s.peer_clock_offset_ms = i64::from(reflect.server_stamp) - midpoint;
        s.outgoing_loss = loss(reflect.our_received, reflect.your_sent);
        s.incoming_loss = loss(received, reflect.our_sent);
        true
    }
}

/// The share of `sent` that `received` does not account for, within 0..=1.
fn loss(received: u64, sent: u64) -> f32 {
    if sent == 0 {
        return 0.0;
    }
    (1.0 - received as f64 / sent as f64).clamp(0.0, 1.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reflect(timestamp: u16, server_stamp: u32, counts: [u64; 4]) -> NetStatusResponse {
        NetStatusResponse {
            timestamp,
            server_stamp,
            your_sent: counts[0],
            your_received: counts[1],
            our_sent: counts[2],
            our_received: counts[3],
        }
    }

    #[test]
    fn schedule_round_trips_offset_and_loss() {
        let t0 = Timestamp::ZERO;
        let interval = Duration::from_secs(45);
        let mut sync = ClockSync::default();
        assert_eq!(sync.next_due(t0, interval), t0);
        assert!(sync.status().is_none());

        // Sent at our 65,530 ms (stamp wraps), answered 40 ms later.
        let req = sync.request(t0, 65_530, 100, 90, None);
        assert_eq!(req.timestamp, 65_530);
        assert_eq!((req.our_sent, req.our_received), (100, 90));
        assert_eq!(
            sync.next_due(t0, interval),
            t0 + EARLY_INTERVAL,
            "early syncs come faster"
        );
        // The peer received 95 of our 100 and had sent 120, of which we hold 108.
        assert!(sync.on_reflect(&reflect(65_530, 70_000, [100, 90, 120, 95]), 65_570, 108));
        let s = sync.status().unwrap();
        assert_eq!(s.samples, 1);
        assert_eq!(s.last_round_trip, Duration::from_millis(40));
        assert_eq!(s.peer_clock_offset_ms, 70_000 - 65_550);
        assert!((s.outgoing_loss - 0.05).abs() < 1e-6);
        assert!((s.incoming_loss - 0.1).abs() < 1e-6);

        let t1 = t0 + EARLY_INTERVAL;
        sync.request(t1, 70_000, 200, 190, Some(Duration::from_millis(30)));
        assert!(sync.on_reflect(
            &reflect((70_000_u32 % 65_536) as u16, 74_500, [200, 190, 220, 210]),
            70_020,
            215
        ));
        let s = sync.status().unwrap();
        assert_eq!(s.samples, 2);
        assert_eq!(s.lowest_round_trip, Duration::from_millis(20));
        assert_eq!(s.highest_round_trip, Duration::from_millis(40));
        assert_eq!(s.average_round_trip, Duration::from_millis(30));
        assert_eq!(
            sync.next_due(t0, interval),
            t1 + interval,
            "then the interval"
        );

        // A reflect whose stamp is far behind (a stale answer) is ignored.
        assert!(!sync.on_reflect(&reflect(1_000, 0, [0; 4]), 40_000, 300));
        assert_eq!(sync.status().unwrap().samples, 2);
    }

    #[test]
    fn a_reflect_without_a_sync_is_ignored() {
        let mut sync = ClockSync::default();
        assert!(!sync.on_reflect(&reflect(0, 0, [1, 1, 1, 1]), 10, 1));
        assert!(sync.status().is_none());
    }
}
