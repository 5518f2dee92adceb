//! The receiving half of one reliable channel.
//!
//! Packets are delivered in sequence order. A packet ahead of the next expected one
//! is stashed (once) in a ring sized to the receive window and acknowledged
//! selectively at once; a packet a whole window ahead is dropped without an ack; a
//! packet already delivered is counted as a duplicate and triggers a fresh
//! cumulative ack so the sender stops retransmitting it.
//!
//! Cumulative acks (AckAll) are batched: one goes out for free with any other
//! datagram to the peer; otherwise, for a packet that arrived alone (interactive
//! traffic: a request, an input, a tick's state), `lone_ack_delay` after it, so it
//! can ride on the reply; while packets keep coming, when `max_ack_delay` has
//! passed since the last one, or at once when half the ack window is pending.
//! Sequences are 64-bit internally, so the throttle keeps working across 16-bit
//! wraps.

use std::time::Duration;

use super::timestamp::Timestamp;

use super::assembler::Assembler;
use super::io::SessionIo;
use super::{Channel, SessionEvent};
use crate::protocol::DataBundle;
use crate::protocol::{DATA_BUNDLE_HEADER, OpCode, Rc4KeyState};

/// Why the channel gave up on the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RxError {
    /// Malformed fragments or bundle.
    Corrupt,
    /// A message larger than the reassembly cap, or the multiplexer's buffer
    /// budget is spent.
    Overflow,
}

/// Counters of one receiving channel, added into the session's stats.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RxCounters {
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) out_of_window: u64,
    pub(crate) delivered: u64,
    pub(crate) delivered_bytes: u64,
    pub(crate) acks_sent: u64,
    pub(crate) over_budget: u64,
}

#[derive(Debug, Default)]
struct StashSlot {
    occupied: bool,
    fragment: bool,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Reassembly {
    open: bool,
    total: usize,
    buf: Vec<u8>,
}

/// Ack behaviour, from the session parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AckPolicy {
    pub(crate) every_packet: bool,
    pub(crate) max_delay: Duration,
    /// How long the ack of a packet that arrived alone waits for a ride.
    pub(crate) lone_delay: Duration,
    pub(crate) half_window: u64,
}

/// The receiving half of a reliable channel.
#[derive(Debug)]
pub(crate) struct ReliableReceiver {
    channel: u8,
    /// Boxed, to keep the receiver's hot fields in few cache lines.
    cipher: Option<Box<Rc4KeyState>>,
    unescape_plain: bool,
    next: u64,
    window: u64,
    stash: Vec<StashSlot>,
    reassembly: Reassembly,
    max_reassembly: usize,
    /// Bytes held for the peer (stashed packets, partial reassembly); also counted
    /// in the multiplexer-wide `SessionIo::held`.
    held: usize,
    acked_through: Option<u64>,
    last_ack_all: Option<Timestamp>,
    force_ack_all: bool,
    selective: Vec<u16>,
    ack_due: Option<Timestamp>,
    pub(crate) counters: RxCounters,
}

impl ReliableReceiver {
    pub(crate) fn new(
        channel: u8,
        cipher: Option<Box<Rc4KeyState>>,
        unescape_plain: bool,
        window: u16,
        max_reassembly: usize,
    ) -> Self {
        Self {
            channel,
            cipher,
            unescape_plain,
            next: 0,
            window: u64::from(window.clamp(1, 0x7FFF)),
            stash: Vec::new(),
            reassembly: Reassembly::default(),
            max_reassembly,
            held: 0,
            acked_through: None,
            last_ack_all: None,
            force_ack_all: false,
            selective: Vec::new(),
            ack_due: None,
            counters: RxCounters::default(),
        }
    }

    /// Bytes held for the peer: out-of-order packets and a partial reassembly.
    pub(crate) fn held_bytes(&self) -> usize {
        self.held
    }

    fn hold(&mut self, bytes: usize, io: &mut SessionIo) {
        self.held += bytes;
        io.held += bytes;
    }

    fn unhold(&mut self, bytes: usize, io: &mut SessionIo) {
        self.held -= bytes;
        io.held = io.held.saturating_sub(bytes);
    }

    /// Frees the out-of-order stash and the reassembly buffer when neither holds
    /// anything (for sessions that went quiet); they are rebuilt on demand.
    pub(crate) fn release_memory(&mut self) {
        if !self.stash.iter().any(|s| s.occupied) {
            self.stash = Vec::new();
        }
        if !self.reassembly.open {
            self.reassembly.buf = Vec::new();
        }
        self.selective.shrink_to_fit();
    }

    /// When owed acks must go out at the latest.
    pub(crate) fn ack_deadline(&self) -> Option<Timestamp> {
        self.ack_due
    }

    /// Maps a wire sequence to the 64-bit sequence nearest the next expected one.
    fn extend(&self, wire: u16) -> Option<u64> {
        let delta = wire.wrapping_sub(self.next as u16) as i16;
        self.next.checked_add_signed(i64::from(delta))
    }

    fn stash_index(&self, seq: u64) -> usize {
        (seq as usize) & (self.stash.len() - 1)
    }

    fn schedule_ack(&mut self, now: Timestamp, policy: AckPolicy, immediate: bool) {
        let behind = self.acked_through.map_or(self.next, |a| self.next - 1 - a);
        let due = if immediate || behind >= policy.half_window {
            now
        } else if behind <= 1 && !policy.lone_delay.is_zero() {
            // One packet alone: its ack waits for data going back (the reply, the
            // next input), at most `lone_delay`. A second packet ends the wait.
            now + policy.lone_delay
        } else {
            self.last_ack_all
                .map_or(now, |t| (t + policy.max_delay).max(now))
        };
        self.ack_due = Some(self.ack_due.map_or(due, |d| d.min(due)));
    }

    /// Processes a ReliableData (`fragment == false`) or ReliableDataFragment packet.
    pub(crate) fn on_packet(
        &mut self,
        wire: u16,
        payload: &[u8],
        fragment: bool,
        now: Timestamp,
        policy: AckPolicy,
        io: &mut SessionIo,
    ) -> Result<(), RxError> {
        let Some(seq) = self.extend(wire) else {
            // Before sequence 0: can only be garbage or a very old duplicate.
            self.counters.duplicates += 1;
            return Ok(());
        };
        if seq >= self.next + self.window {
            // Dropped, but the sender learns where we are (and that we are alive):
            // a sender that ran past our window otherwise hears nothing until its
            // own timers give up.
            self.counters.out_of_window += 1;
            if self.next > 0 && !policy.every_packet {
                self.force_ack_all = true;
                self.schedule_ack(now, policy, true);
            }
            return Ok(());
        }
        if seq < self.next {
            self.counters.duplicates += 1;
            if policy.every_packet {
                self.selective.push(wire);
            } else {
                self.force_ack_all = true;
            }
            self.schedule_ack(now, policy, true);
            return Ok(());
        }
        if policy.every_packet {
            self.selective.push(wire);
        }
        if seq > self.next {
            if self.stash.is_empty() {
                let n = (self.window as usize).next_power_of_two();
                self.stash = (0..n).map(|_| StashSlot::default()).collect();
            }
            let idx = self.stash_index(seq);
            if self.stash[idx].occupied {
                self.counters.duplicates += 1;
            } else if io.held + payload.len() > io.held_limit {
                // The multiplexer's budget is spent: not stashed and not acknowledged,
                // so the peer sends it again later.
                self.counters.over_budget += 1;
                return Ok(());
            } else {
                let slot = &mut self.stash[idx];
                slot.occupied = true;
                slot.fragment = fragment;
                slot.data.clear();
                slot.data.extend_from_slice(payload);
                self.counters.out_of_order += 1;
                self.hold(payload.len(), io);
            }
            if !policy.every_packet {
                // Re-acked even when a duplicate: our earlier ack may have been lost.
                self.selective.push(wire);
            }
            self.schedule_ack(now, policy, true);
            return Ok(());
        }

        self.process(payload, fragment, io)?;
        self.next += 1;
        while !self.stash.is_empty() {
            let idx = self.stash_index(self.next);
            if !self.stash[idx].occupied {
                break;
            }
            let slot = &mut self.stash[idx];
            slot.occupied = false;
            let is_fragment = slot.fragment;
            let data = std::mem::take(&mut slot.data);
            self.unhold(data.len(), io);
            let outcome = self.process(&data, is_fragment, io);
            self.stash[idx].data = data;
            outcome?;
            self.next += 1;
        }
        self.schedule_ack(now, policy, policy.every_packet);
        Ok(())
    }

    fn process(
        &mut self,
        payload: &[u8],
        fragment: bool,
        io: &mut SessionIo,
    ) -> Result<(), RxError> {
        if !fragment {
            if self.reassembly.open {
                // A correct sender finishes a fragmented message before the next one.
                return Err(RxError::Corrupt);
            }
            return self.deliver_payload(payload, io);
        }
        let r = &mut self.reassembly;
        if !r.open {
            let [a, b, c, d, chunk @ ..] = payload else {
                return Err(RxError::Corrupt);
            };
            let total = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            if total == 0 || chunk.len() > total {
                return Err(RxError::Corrupt);
            }
            if total > self.max_reassembly || io.held + chunk.len() > io.held_limit {
                return Err(RxError::Overflow);
            }
            r.open = true;
            r.total = total;
            r.buf.clear();
            r.buf.extend_from_slice(chunk);
            self.hold(chunk.len(), io);
        } else {
            if r.buf.len() + payload.len() > r.total {
                return Err(RxError::Corrupt);
            }
            if io.held + payload.len() > io.held_limit {
                return Err(RxError::Overflow);
            }
            r.buf.extend_from_slice(payload);
            self.hold(payload.len(), io);
        }
        let r = &mut self.reassembly;
        if r.buf.len() == r.total {
            r.open = false;
            let buf = std::mem::take(&mut r.buf);
            self.unhold(buf.len(), io);
            let outcome = self.deliver_payload(&buf, io);
            self.reassembly.buf = buf;
            // Keep a large reassembly buffer only while it is typical.
            if self.reassembly.buf.capacity() > (256 << 10) {
                self.reassembly.buf = Vec::new();
            }
            return outcome;
        }
        Ok(())
    }

    fn deliver_payload(&mut self, payload: &[u8], io: &mut SessionIo) -> Result<(), RxError> {
        if payload.len() > 2 && payload.starts_with(&DATA_BUNDLE_HEADER) {
            for item in DataBundle::new(&payload[2..]).iter() {
                let item = item.map_err(|_| RxError::Corrupt)?;
                self.deliver_message(item, io);
            }
            Ok(())
        } else {
            self.deliver_message(payload, io);
            Ok(())
        }
    }

    fn deliver_message(&mut self, item: &[u8], io: &mut SessionIo) {
        let escaped = item.len() > 1 && item[0] == 0;
        let body = if escaped && (self.cipher.is_some() || self.unescape_plain) {
            &item[1..]
        } else {
            item
        };
        let data = match self.cipher.as_deref_mut() {
            Some(cipher) => io.deliver(body, |b| cipher.apply(b)),
            None => io.deliver(body, |_| {}),
        };
        self.counters.delivered += 1;
        self.counters.delivered_bytes += data.len() as u64;
        io.emit(SessionEvent::DataReceived {
            data,
            channel: Channel::Reliable(usize::from(self.channel)),
        });
    }

    /// Writes owed acks. `piggyback` says other packets are going to the peer anyway,
    /// so a pending cumulative ack costs nothing extra.
    pub(crate) fn write_acks(
        &mut self,
        now: Timestamp,
        piggyback: bool,
        policy: AckPolicy,
        asm: &mut Assembler<'_>,
    ) {
        if self.ack_due.is_none() {
            return;
        }
        let mut packet = [0u8; 4];
        for seq in self.selective.drain(..) {
            packet[..2].copy_from_slice(&OpCode::Acknowledge(self.channel).to_bytes());
            packet[2..].copy_from_slice(&seq.to_be_bytes());
            asm.push(&packet);
            self.counters.acks_sent += 1;
        }
        let owed = self.next > 0
            && !policy.every_packet
            && (self.force_ack_all || self.acked_through != Some(self.next - 1));
        if owed {
            let due = self.ack_due.is_some_and(|t| now >= t);
            if !(due || piggyback || self.force_ack_all) {
                return;
            }
            let through = self.next - 1;
            packet[..2].copy_from_slice(&OpCode::AcknowledgeAll(self.channel).to_bytes());
            packet[2..].copy_from_slice(&(through as u16).to_be_bytes());
            asm.push(&packet);
            self.counters.acks_sent += 1;
            self.acked_through = Some(through);
            self.last_ack_all = Some(now);
            self.force_ack_all = false;
        }
        self.ack_due = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Framing, Packet};
    use crate::session::assembler::Assembler;
    use proptest::prelude::*;

    const POLICY: AckPolicy = AckPolicy {
        every_packet: false,
        max_delay: Duration::from_millis(2),
        lone_delay: Duration::ZERO,
        half_window: 16,
    };

    const LONE: AckPolicy = AckPolicy {
        lone_delay: Duration::from_millis(40),
        ..POLICY
    };

    fn receiver(window: u16) -> ReliableReceiver {
        ReliableReceiver::new(0, None, false, window, 1 << 20)
    }

    /// The acks `r` writes now, decoded.
    fn acks(r: &mut ReliableReceiver, now: Timestamp, piggyback: bool) -> Vec<Packet<'static>> {
        let mut io = SessionIo::new();
        let framing = Framing::new(0, 0, false);
        {
            let mut asm = Assembler::new(&mut io, &framing, 512, None, None);
            r.write_acks(now, piggyback, POLICY, &mut asm);
        }
        io.datagrams()
            .map(|d| match Packet::parse(d).unwrap() {
                Packet::Acknowledge { channel, sequence } => {
                    Packet::Acknowledge { channel, sequence }
                }
                Packet::AcknowledgeAll { channel, sequence } => {
                    Packet::AcknowledgeAll { channel, sequence }
                }
                other => panic!("not an ack: {other:?}"),
            })
            .collect()
    }

    // Vectors: tests/vectors/v24_sequences.txt.
    #[test]
    fn v24_sequence_extension() {
        let mut r = receiver(10);
        let at = |r: &mut ReliableReceiver, next: u64, wire: u16| {
            r.next = next;
            r.extend(wire)
        };
        assert_eq!(at(&mut r, 0, 3), Some(3));
        assert_eq!(at(&mut r, 65534, 65535), Some(65535));
        assert_eq!(at(&mut r, 65535, 2), Some(65538));
        assert_eq!(at(&mut r, 65536, 65535), Some(65535));
        assert_eq!(at(&mut r, 5, 5), Some(5));
        assert_eq!(at(&mut r, 256, 300), Some(300));
        assert_eq!(at(&mut r, 65535, 0), Some(65536));
        assert_eq!(at(&mut r, 65546, 65535), Some(65535));
        // Before the first sequence: no extension.
        assert_eq!(at(&mut r, 3, 65535), None);
    }

    proptest! {
        #[test]
        fn extension_recovers_any_sequence_near_the_reference(next in 0u64..1 << 40, delta in -30_000i64..30_000) {
            let mut r = receiver(256);
            r.next = next;
            let seq = next as i64 + delta;
            prop_assume!(seq >= 0);
            prop_assert_eq!(r.extend(seq as u16), Some(seq as u64));
        }
    }

    // Vectors: tests/vectors/v24_sequences.txt.
    #[test]
    fn v24_ack_all_throttle_survives_the_wrap() {
        // 65,540 in-order packets in one batch, then one flush: exactly one AckAll,
        // for wire sequence (65540 − 1) & 0xFFFF = 3; later flushes send nothing.
        let mut r = receiver(256);
        let mut io = SessionIo::new();
        let t0 = Timestamp::ZERO;
        for seq in 0..65_540u32 {
            r.on_packet(seq as u16, b"x", false, t0, POLICY, &mut io)
                .unwrap();
            io.drain_events();
        }
        let later = t0 + Duration::from_millis(10);
        assert_eq!(
            acks(&mut r, later, false),
            [Packet::AcknowledgeAll {
                channel: 0,
                sequence: 3
            }]
        );
        assert!(acks(&mut r, later + Duration::from_millis(10), false).is_empty());
        assert_eq!(r.ack_deadline(), None);
    }

    // Vectors: tests/vectors/v18_fragments.txt.
    #[test]
    fn v18_out_of_order_fragments_ack_like_the_references() {
        // Arrival 2, 0, 1: Ack 2 at once; AckAll 0; AckAll 2 once 1 releases 2.
        let mut r = receiver(256);
        let mut io = SessionIo::new();
        let t = Timestamp::ZERO;
        let mut master = 48u32.to_be_bytes().to_vec();
        master.extend([1u8; 16]);
        r.on_packet(2, &[3; 16], true, t, POLICY, &mut io).unwrap();
        assert_eq!(
            acks(&mut r, t, false),
            [Packet::Acknowledge {
                channel: 0,
                sequence: 2
            }]
        );
        r.on_packet(0, &master, true, t, POLICY, &mut io).unwrap();
        assert_eq!(
            acks(&mut r, t, false),
            [Packet::AcknowledgeAll {
                channel: 0,
                sequence: 0
            }]
        );
        let t2 = t + Duration::from_millis(5);
        r.on_packet(1, &[2; 16], true, t2, POLICY, &mut io).unwrap();
        assert_eq!(
            acks(&mut r, t2, false),
            [Packet::AcknowledgeAll {
                channel: 0,
                sequence: 2
            }]
        );
        let delivered: Vec<_> = io.drain_events().map(|(_, e)| e).collect();
        assert_eq!(delivered.len(), 1);
        let mut expected = vec![1u8; 16];
        expected.extend([2; 16]);
        expected.extend([3; 16]);
        assert_eq!(
            delivered[0],
            SessionEvent::DataReceived {
                data: expected.into(),
                channel: Channel::Reliable(0)
            }
        );
    }

    #[test]
    fn cumulative_acks_are_batched_until_due_or_half_a_window() {
        let mut r = receiver(256);
        let mut io = SessionIo::new();
        let t = Timestamp::ZERO;
        r.on_packet(0, b"a", false, t, POLICY, &mut io).unwrap();
        assert_eq!(acks(&mut r, t, false).len(), 1);
        // Within max_ack_delay: held back, unless something else goes out anyway.
        let t1 = t + Duration::from_micros(500);
        r.on_packet(1, b"b", false, t1, POLICY, &mut io).unwrap();
        assert!(acks(&mut r, t1, false).is_empty());
        assert_eq!(r.ack_deadline(), Some(t + Duration::from_millis(2)));
        assert_eq!(
            acks(&mut r, t1, true),
            [Packet::AcknowledgeAll {
                channel: 0,
                sequence: 1
            }]
        );
        // Half a window pending forces one out.
        let t2 = t1 + Duration::from_micros(100);
        for seq in 2..18 {
            r.on_packet(seq, b"c", false, t2, POLICY, &mut io).unwrap();
        }
        assert_eq!(
            acks(&mut r, t2, false),
            [Packet::AcknowledgeAll {
                channel: 0,
                sequence: 17
            }]
        );
        // A duplicate asks for a fresh AckAll even though nothing new arrived.
        r.on_packet(5, b"c", false, t2, POLICY, &mut io).unwrap();
        assert_eq!(
            acks(&mut r, t2, false),
            [Packet::AcknowledgeAll {
                channel: 0,
                sequence: 17
            }]
        );
    }

    #[test]
    fn a_lone_packet_waits_for_a_ride_and_a_gap_does_not() {
        let ms = Duration::from_millis;
        let mut r = receiver(256);
        let mut io = SessionIo::new();
        let t = Timestamp::ZERO;
        let all = |sequence| Packet::AcknowledgeAll {
            channel: 0,
            sequence,
        };
        r.on_packet(0, b"a", false, t, LONE, &mut io).unwrap();
        assert!(acks(&mut r, t, false).is_empty());
        assert_eq!(r.ack_deadline(), Some(t + ms(40)));
        // Data going back carries it.
        assert_eq!(acks(&mut r, t + ms(1), true), [all(0)]);
        // Alone again: it goes by itself once the wait is over.
        r.on_packet(1, b"b", false, t + ms(10), LONE, &mut io)
            .unwrap();
        assert!(acks(&mut r, t + ms(49), false).is_empty());
        assert_eq!(acks(&mut r, t + ms(50), false), [all(1)]);
        // A second packet ends the wait (a flow is acknowledged as before).
        r.on_packet(2, b"c", false, t + ms(100), LONE, &mut io)
            .unwrap();
        r.on_packet(3, b"d", false, t + ms(101), LONE, &mut io)
            .unwrap();
        assert_eq!(r.ack_deadline(), Some(t + ms(101)));
        assert_eq!(acks(&mut r, t + ms(101), false), [all(3)]);
        // A gap is reported at once.
        r.on_packet(5, b"f", false, t + ms(200), LONE, &mut io)
            .unwrap();
        assert_eq!(r.ack_deadline(), Some(t + ms(200)));
        assert_eq!(
            acks(&mut r, t + ms(200), false),
            [Packet::Acknowledge {
                channel: 0,
                sequence: 5
            }]
        );
        // So is a duplicate.
        r.on_packet(3, b"d", false, t + ms(300), LONE, &mut io)
            .unwrap();
        assert_eq!(acks(&mut r, t + ms(300), false), [all(3)]);
    }

    #[test]
    fn every_packet_policy_acks_each_one() {
        let every = AckPolicy {
            every_packet: true,
            ..POLICY
        };
        let mut r = receiver(256);
        let mut io = SessionIo::new();
        let t = Timestamp::ZERO;
        for seq in [2u16, 0, 1] {
            r.on_packet(seq, b"x", false, t, every, &mut io).unwrap();
        }
        let mut out = SessionIo::new();
        let framing = Framing::new(0, 0, false);
        {
            let mut asm = Assembler::new(&mut out, &framing, 512, None, None);
            r.write_acks(t, false, every, &mut asm);
        }
        let seqs: Vec<_> = out
            .datagrams()
            .map(|d| match Packet::parse(d).unwrap() {
                Packet::Acknowledge { sequence, .. } => sequence,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, [2, 0, 1]);
    }
}
