//! The sending half of one reliable channel.
//!
//! Application messages wait in a queue (already encrypted and escaped, in the form
//! they take on the wire). When the send window has room, the next packet is cut
//! from the front of the queue: several small messages become one data bundle
//! (`00 19`), a message that fits becomes one ReliableData packet, a larger one is
//! split into fragments. Built packets stay in a ring of reusable slots until
//! acknowledged, so retransmission re-sends the exact bytes.
//!
//! Sequences are tracked as 64-bit counters; only the low 16 bits go on the wire.

use std::time::Duration;

use super::timestamp::Timestamp;

use super::assembler::Assembler;
use super::rtt::RttEstimator;
use crate::protocol::varint::bundle_len;
use crate::protocol::{DATA_BUNDLE_HEADER, OpCode, Rc4KeyState};

/// Bytes of a reliable packet before its payload: op code and sequence.
pub(crate) const RELIABLE_HEADER_LEN: usize = 4;
/// The total-length field of a first fragment.
const FRAGMENT_TOTAL_LEN: usize = 4;

/// Memory a queued message costs besides its payload: its length entry and a
/// possible escape byte. Counted against `max_pending_bytes`.
pub(crate) const MESSAGE_OVERHEAD: usize = 5;

/// A queue buffer that empties with more capacity than this gives it back at once.
const KEEP_EMPTY_CAPACITY: usize = 16 << 10;

/// Bytes before each queued message: its length.
const LEN_PREFIX: usize = std::mem::size_of::<u32>();

/// Messages waiting for a sequence number, stored back to back in one buffer, each
/// after its length: queueing a message and cutting it into a packet touch one
/// place in memory (with thousands of sessions, each one's state is cold in the
/// cache when its turn comes, and every separate buffer costs a miss).
///
/// Its buffer grows by at most half its length at a time and never past the room
/// the session allows, so the memory it holds tracks what it queues: a peer that
/// never acknowledges cannot make it hold more than `max_pending_bytes`.
#[derive(Debug, Default)]
struct MessageQueue {
    buf: Vec<u8>,
    /// Where the first message's length starts.
    head: usize,
    /// Messages queued.
    count: usize,
}

impl MessageQueue {
    fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the messages themselves.
    fn bytes(&self) -> usize {
        self.buf.len() - self.head - self.count * LEN_PREFIX
    }

    /// Memory the queue holds: its buffer's capacity.
    fn memory(&self) -> usize {
        self.buf.capacity()
    }

    /// Makes room for one more message of up to `needed` bytes, growing by at most
    /// `room` bytes of memory beyond that.
    fn reserve(&mut self, needed: usize, room: usize) {
        let needed = needed + LEN_PREFIX;
        if self.buf.capacity() - self.buf.len() < needed && self.head > 0 {
            // The consumed front is reused before anything grows.
            self.compact();
        }
        let free = self.buf.capacity() - self.buf.len();
        if free < needed {
            let extra = (self.buf.len() / 2).min(room);
            self.buf.reserve_exact(needed - free + extra);
        }
    }

    /// Gives back what it can cheaply: everything when empty, otherwise the
    /// consumed front (moved out of the way, so new messages reuse it).
    fn compact(&mut self) {
        if self.count == 0 {
            *self = Self::default();
        } else if self.head > 0 {
            self.buf.drain(..self.head);
            self.head = 0;
        }
    }

    /// Appends a message written by `write` into the buffer's tail.
    fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; LEN_PREFIX]);
        write(&mut self.buf);
        let len = (self.buf.len() - at - LEN_PREFIX) as u32;
        self.buf[at..at + LEN_PREFIX].copy_from_slice(&len.to_ne_bytes());
        self.count += 1;
    }

    /// The message whose length starts at `at`, and where the next one starts.
    #[inline]
    fn message_at(&self, at: usize) -> (&[u8], usize) {
        let mut len = [0; LEN_PREFIX];
        len.copy_from_slice(&self.buf[at..at + LEN_PREFIX]);
        let start = at + LEN_PREFIX;
        let end = start + u32::from_ne_bytes(len) as usize;
        (&self.buf[start..end], end)
    }

    /// The messages from the front, in order.
    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = self.head;
        (0..self.count).map(move |_| {
            let (msg, next) = self.message_at(at);
            at = next;
            msg
        })
    }

    fn front(&self) -> Option<&[u8]> {
        (self.count > 0).then(|| self.message_at(self.head).0)
    }

    /// Messages queued.
    fn len(&self) -> usize {
        self.count
    }

    fn pop(&mut self) {
        if self.count > 0 {
            self.head = self.message_at(self.head).1;
            self.count -= 1;
        }
        if self.count == 0 {
            self.buf.clear();
            self.head = 0;
            if self.buf.capacity() > KEEP_EMPTY_CAPACITY {
                // A burst went out: give its memory back.
                *self = Self::default();
            }
        } else if self.head >= (64 << 10) && self.head * 2 >= self.buf.len() {
            self.buf.drain(..self.head);
            self.head = 0;
        }
    }
}

/// Progress through a message being sent as fragments.
#[derive(Debug, Clone, Copy)]
struct FragmentCursor {
    /// Bytes sent before the message itself (a one-item bundle header, if wrapped).
    prefix: [u8; 2 + bundle_len::MAX_LEN],
    prefix_len: usize,
    total: usize,
    offset: usize,
}

#[derive(Debug)]
struct Slot {
    /// The cooked packet: op code, sequence, payload.
    packet: Vec<u8>,
    first_sent: Timestamp,
    last_sent: Timestamp,
    sends: u32,
    acked: bool,
    /// Declared lost and waiting to be sent again.
    lost: bool,
}

/// Outcome of processing an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckOutcome {
    /// Released this many packets.
    Released(u32),
    /// Acknowledged nothing new (duplicate or stale).
    Stale,
    /// Acknowledged a sequence never sent.
    Invalid,
}

/// How a packet may be built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PacketRules {
    /// Payload bytes after the sequence.
    pub(crate) room: usize,
    /// Bundle several small messages per packet.
    pub(crate) coalesce: bool,
    /// Payload bytes of a packet that bundles several messages. With one-byte
    /// multi-packet lengths ([`crate::MultiLength::OneByte`]) a bundle stays short
    /// enough (a 255-byte packet) to share a datagram with acks and other packets;
    /// its items then also stay under the 255 a one-byte bundle length can say.
    pub(crate) bundle_room: usize,
}

/// The sending half of a reliable channel.
#[derive(Debug)]
pub(crate) struct ReliableSender {
    channel: u8,
    /// Boxed, to keep the sender's hot fields in few cache lines.
    cipher: Option<Box<Rc4KeyState>>,
    /// UdpLibrary escaping of unencrypted messages that start with `00`.
    escape_plain: bool,
    queue: MessageQueue,
    fragment: Option<FragmentCursor>,
    next_seq: u64,
    unacked_from: u64,
    window: u64,
    slots: Vec<Slot>,
    /// The earliest retransmission timeout of a packet in flight.
    resend_at: Option<Timestamp>,
    /// The highest sequence a selective ack named, and when it was (last) sent.
    largest_acked: Option<(u64, Timestamp)>,
    /// When a packet below `largest_acked` becomes lost by the time threshold.
    loss_time: Option<Timestamp>,
    /// Packets declared lost and not sent again yet.
    lost: u32,
    /// When to probe with one retransmission if nothing is acknowledged by then.
    probe_at: Option<Timestamp>,
    /// Probes since the last progress (each doubles the wait for the next).
    probes: u32,
    /// Capacity of the packets in flight (slots not yet acknowledged), kept as
    /// packets are cut and released so [`ReliableSender::held_bytes`], asked on
    /// every enqueue, does not walk the window.
    in_flight_bytes: usize,
}

/// What a flush's retransmission step did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Resent {
    /// A retransmission timeout fired (the RTO backs off).
    pub(crate) timed_out: bool,
    /// The send time of the newest packet declared lost, if any was (a congestion
    /// event).
    pub(crate) lost_sent: Option<Timestamp>,
    /// Bytes of the packets sent again (for the rate cap).
    pub(crate) bytes: usize,
}

/// Round-trip derived times the loss detector needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LossTimes {
    /// Retransmission timeout.
    pub(crate) rto: Duration,
    /// Probe timeout (doubled per probe since the last progress).
    pub(crate) pto: Duration,
    /// Time threshold after which a packet below an acknowledged one is lost;
    /// `None` before the first round-trip sample.
    pub(crate) loss_delay: Option<Duration>,
}

/// Packets a selective ack must be past a packet for it to count as lost (RFC
/// 9002's kPacketThreshold): tolerates that much reordering.
const PACKET_THRESHOLD: u64 = 3;

impl ReliableSender {
    pub(crate) fn new(
        channel: u8,
        cipher: Option<Box<Rc4KeyState>>,
        escape_plain: bool,
        window: u16,
    ) -> Self {
        Self {
            channel,
            cipher,
            escape_plain,
            queue: MessageQueue::default(),
            fragment: None,
            next_seq: 0,
            unacked_from: 0,
            window: u64::from(window.clamp(1, 0x7FFF)),
            slots: Vec::new(),
            resend_at: None,
            largest_acked: None,
            loss_time: None,
            lost: 0,
            probe_at: None,
            probes: 0,
            in_flight_bytes: 0,
        }
    }

    /// Bytes queued and not yet cut into packets.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queue.bytes()
    }

    /// Gives back the queue's spare capacity (when the session is at its cap).
    pub(crate) fn compact(&mut self) {
        self.queue.compact();
    }

    /// Memory held for data not yet acknowledged: the queue's buffers, and the
    /// packets in flight. (The slot ring itself, at most a window of datagrams, is
    /// reused working memory and released when the session goes quiet.)
    pub(crate) fn held_bytes(&self) -> usize {
        debug_assert_eq!(
            self.in_flight_bytes,
            (self.unacked_from..self.next_seq)
                .map(|seq| &self.slots[self.slot_index(seq)])
                .filter(|slot| !slot.acked)
                .map(|slot| slot.packet.capacity())
                .sum::<usize>(),
            "in-flight byte count drifted"
        );
        self.queue.memory() + self.in_flight_bytes
    }

    /// Whether anything is queued or unacknowledged.
    pub(crate) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.unacked_from == self.next_seq
    }

    /// Packets sent and not yet acknowledged (counting out-of-order acked ones).
    pub(crate) fn in_flight(&self) -> u64 {
        self.next_seq - self.unacked_from
    }

    /// Whether a new packet could be sent now.
    pub(crate) fn can_send(&self) -> bool {
        !self.queue.is_empty() && self.in_flight() < self.window
    }

    /// When the next retransmission check is due: a packet's timeout, a loss by
    /// the time threshold, or a probe.
    pub(crate) fn deadline(&self) -> Option<Timestamp> {
        Timestamp::earliest(
            Timestamp::earliest(self.resend_at, self.loss_time),
            self.probe_at,
        )
    }

    /// Whether packets were declared lost and wait to be sent again.
    pub(crate) fn lost_pending(&self) -> bool {
        self.lost > 0
    }

    /// Queues one application message: encrypts it and escapes a leading `00`.
    /// The queue may grow by `room` bytes of memory beyond what the message needs.
    pub(crate) fn enqueue(&mut self, data: &[u8], room: usize) {
        let escape_plain = self.escape_plain;
        let cipher = self.cipher.as_deref_mut();
        self.queue.reserve(data.len() + 1, room);
        self.queue.push_with(|buf| {
            let start = buf.len();
            match cipher {
                Some(cipher) => {
                    buf.extend_from_slice(data);
                    cipher.apply(&mut buf[start..]);
                    if buf[start] == 0 {
                        buf.insert(start, 0);
                    }
                }
                None => {
                    if escape_plain && data[0] == 0 {
                        buf.push(0);
                    }
                    buf.extend_from_slice(data);
                }
            }
        });
    }

    /// Whether a queued message must travel inside a one-item bundle: unescaped
    /// plain data that starts like a bundle would otherwise be split by the receiver.
    fn needs_wrap(&self, msg: &[u8]) -> bool {
        self.cipher.is_none() && !self.escape_plain && msg.starts_with(&DATA_BUNDLE_HEADER)
    }

    fn slot_index(&self, seq: u64) -> usize {
        (seq as usize) & (self.slots.len() - 1)
    }

    /// Cuts the next packet into a slot and returns its sequence, if the window and
    /// the queue allow.
    pub(crate) fn build_next(&mut self, rules: PacketRules, now: Timestamp) -> Option<u64> {
        if !self.can_send() {
            return None;
        }
        if self.in_flight() as usize >= self.slots.len() {
            self.grow_slots(now);
        }
        let seq = self.next_seq;
        let idx = self.slot_index(seq);
        let mut packet = std::mem::take(&mut self.slots[idx].packet);
        packet.clear();
        self.write_packet(&mut packet, seq as u16, rules);
        self.in_flight_bytes += packet.capacity();
        self.slots[idx] = Slot {
            packet,
            first_sent: now,
            last_sent: now,
            sends: 1,
            acked: false,
            lost: false,
        };
        self.next_seq += 1;
        Some(seq)
    }

    /// Doubles the slot ring (from 8, up to the window), moving the packets in flight
    /// to their slots in the larger ring. Rings grow with use, so an idle session
    /// costs a few hundred bytes, not a window's worth.
    fn grow_slots(&mut self, now: Timestamp) {
        let len = (self.slots.len() * 2)
            .max(8)
            .min((self.window as usize).next_power_of_two());
        let empty = || Slot {
            packet: Vec::new(),
            first_sent: now,
            last_sent: now,
            sends: 0,
            acked: true,
            lost: false,
        };
        let mut grown: Vec<Slot> = (0..len).map(|_| empty()).collect();
        for seq in self.unacked_from..self.next_seq {
            let old = (seq as usize) & (self.slots.len() - 1);
            grown[(seq as usize) & (len - 1)] = std::mem::replace(&mut self.slots[old], empty());
        }
        self.slots = grown;
    }

    /// Frees the slot ring and queue buffer when nothing is queued or in flight (for
    /// sessions that went quiet); they are rebuilt on the next send.
    pub(crate) fn release_memory(&mut self) {
        if self.is_idle() {
            self.slots = Vec::new();
            self.queue = MessageQueue::default();
        }
    }

    /// The bytes of a built packet.
    pub(crate) fn packet(&self, seq: u64) -> &[u8] {
        &self.slots[self.slot_index(seq)].packet
    }

    fn write_packet(&mut self, out: &mut Vec<u8>, wire_seq: u16, rules: PacketRules) {
        let data_op = OpCode::ReliableData(self.channel).to_bytes();
        let fragment_op = OpCode::ReliableDataFragment(self.channel).to_bytes();
        if let Some(cursor) = self.fragment.as_mut() {
            out.extend_from_slice(&fragment_op);
            out.extend_from_slice(&wire_seq.to_be_bytes());
            let take = rules.room.min(cursor.total - cursor.offset);
            copy_virtual(out, cursor, self.queue.front().unwrap_or_default(), take);
            if cursor.offset == cursor.total {
                self.fragment = None;
                self.queue.pop();
            }
            return;
        }
        let Some(front) = self.queue.front() else {
            return;
        };
        let wrap = self.needs_wrap(front);
        let front_len = front.len();

        // A lone message that needs no wrapping goes out as it is, bundled or not.
        if (rules.coalesce && self.queue.len() > 1) || wrap {
            let mut size = DATA_BUNDLE_HEADER.len();
            let mut count = 0;
            for msg in self.queue.iter() {
                let item = bundle_len::encoded_len(msg.len() as u32) + msg.len();
                // A lone wrapped message may use the whole packet.
                let room = if wrap && count == 0 {
                    rules.room
                } else {
                    rules.bundle_room.min(rules.room)
                };
                if size + item > room {
                    break;
                }
                size += item;
                count += 1;
                if !rules.coalesce {
                    break;
                }
            }
            if count >= 2 || (count == 1 && wrap) {
                out.extend_from_slice(&data_op);
                out.extend_from_slice(&wire_seq.to_be_bytes());
                out.extend_from_slice(&DATA_BUNDLE_HEADER);
                let mut len_bytes = [0u8; bundle_len::MAX_LEN];
                for msg in self.queue.iter().take(count) {
                    let n = bundle_len::write(msg.len() as u32, &mut len_bytes);
                    out.extend_from_slice(&len_bytes[..n]);
                    out.extend_from_slice(msg);
                }
                for _ in 0..count {
                    self.queue.pop();
                }
                return;
            }
        }
        if front_len <= rules.room && !wrap {
            out.extend_from_slice(&data_op);
            out.extend_from_slice(&wire_seq.to_be_bytes());
            out.extend_from_slice(front);
            self.queue.pop();
            return;
        }
        // Too large for one packet: fragments, the first carrying the total length.
        let mut cursor = FragmentCursor {
            prefix: [0; 2 + bundle_len::MAX_LEN],
            prefix_len: 0,
            total: 0,
            offset: 0,
        };
        if wrap {
            cursor.prefix[..2].copy_from_slice(&DATA_BUNDLE_HEADER);
            cursor.prefix_len = 2 + bundle_len::write(front_len as u32, &mut cursor.prefix[2..]);
        }
        cursor.total = cursor.prefix_len + front_len;
        out.extend_from_slice(&fragment_op);
        out.extend_from_slice(&wire_seq.to_be_bytes());
        out.extend_from_slice(&(cursor.total as u32).to_be_bytes());
        let take = rules
            .room
            .saturating_sub(FRAGMENT_TOTAL_LEN)
            .max(1)
            .min(cursor.total);
        copy_virtual(out, &mut cursor, front, take);
        self.fragment = Some(cursor);
    }

    /// Maps a wire sequence from an ack to a full sequence. Acks can only name
    /// sequences already assigned, i.e. at most 0x7FFF below `next_seq`.
    fn extend_ack(&self, wire: u16) -> Option<u64> {
        let mut seq = (self.next_seq & !0xFFFF) | u64::from(wire);
        if seq >= self.next_seq {
            seq = seq.checked_sub(0x1_0000)?;
        }
        Some(seq)
    }

    /// Marks `slot` acknowledged. `largest`: it is the largest sequence this ack
    /// covers, the only one that gives a round-trip sample (RFC 9002 §5.1): the
    /// others of a cumulative ack may have waited behind a gap at the peer, and
    /// would count the retransmission's delay as round trip.
    fn release(
        slot: &mut Slot,
        largest: bool,
        now: Timestamp,
        rtt: &mut RttEstimator,
        lost: &mut u32,
        in_flight_bytes: &mut usize,
    ) {
        if largest && slot.sends == 1 {
            rtt.sample(now.saturating_duration_since(slot.first_sent));
        }
        if slot.lost {
            slot.lost = false;
            *lost -= 1;
        }
        slot.acked = true;
        *in_flight_bytes -= slot.packet.capacity();
    }

    /// The peer acknowledged something new: probes start over, from the next
    /// flush (RFC 9002 §6.2.1: the probe timer restarts when an ack arrives).
    fn progress(&mut self, rtt: &mut RttEstimator) {
        self.probes = 0;
        self.probe_at = None;
        rtt.progress();
    }

    fn advance_unacked(&mut self) {
        while self.unacked_from < self.next_seq
            && self.slots[self.slot_index(self.unacked_from)].acked
        {
            self.unacked_from += 1;
        }
        if self.unacked_from == self.next_seq {
            self.resend_at = None;
            self.loss_time = None;
            self.probe_at = None;
            self.largest_acked = None;
        }
    }

    /// Declares lost the packets a selective ack has passed by
    /// [`PACKET_THRESHOLD`] packets or by `loss_delay` (RFC 9002 §6.1), and sets
    /// `loss_time` for those that may still arrive. Returns the send time of the
    /// newest packet it declared lost.
    pub(crate) fn detect_losses(
        &mut self,
        now: Timestamp,
        loss_delay: Option<Duration>,
    ) -> Option<Timestamp> {
        self.loss_time = None;
        let (largest, largest_sent) = self.largest_acked?;
        let mut newest_lost = None;
        for seq in self.unacked_from..largest.min(self.next_seq) {
            let idx = self.slot_index(seq);
            let slot = &mut self.slots[idx];
            // Sequences are reused by retransmissions: only a packet sent before the
            // acknowledged one can have been overtaken by it (in one flush, lower
            // sequences leave first).
            if slot.acked || slot.lost || slot.last_sent > largest_sent {
                continue;
            }
            let by_count = seq + PACKET_THRESHOLD <= largest;
            let lost_at = loss_delay.map(|d| slot.last_sent + d);
            if by_count || lost_at.is_some_and(|t| now >= t) {
                slot.lost = true;
                self.lost += 1;
                newest_lost =
                    Some(newest_lost.map_or(slot.last_sent, |t: Timestamp| t.max(slot.last_sent)));
            } else if let Some(t) = lost_at {
                self.loss_time = Some(self.loss_time.map_or(t, |l| l.min(t)));
            }
        }
        newest_lost
    }

    /// Cumulative acknowledgement of every sequence up to `wire`.
    pub(crate) fn on_ack_all(
        &mut self,
        wire: u16,
        now: Timestamp,
        rtt: &mut RttEstimator,
    ) -> AckOutcome {
        let Some(upto) = self.extend_ack(wire) else {
            return AckOutcome::Invalid;
        };
        if upto < self.unacked_from {
            return AckOutcome::Stale;
        }
        let mut released = 0;
        for seq in self.unacked_from..=upto {
            let idx = self.slot_index(seq);
            let slot = &mut self.slots[idx];
            if !slot.acked {
                Self::release(
                    slot,
                    seq == upto,
                    now,
                    rtt,
                    &mut self.lost,
                    &mut self.in_flight_bytes,
                );
                released += 1;
            }
        }
        self.unacked_from = self.unacked_from.max(upto + 1);
        self.advance_unacked();
        if released == 0 {
            AckOutcome::Stale
        } else {
            self.progress(rtt);
            AckOutcome::Released(released)
        }
    }

    /// Selective acknowledgement of one sequence. Earlier packets it passes become
    /// candidates for loss detection ([`ReliableSender::detect_losses`]).
    pub(crate) fn on_ack(
        &mut self,
        wire: u16,
        now: Timestamp,
        rtt: &mut RttEstimator,
    ) -> AckOutcome {
        let Some(seq) = self.extend_ack(wire) else {
            return AckOutcome::Invalid;
        };
        if seq >= self.unacked_from + self.window {
            return AckOutcome::Invalid;
        }
        if seq < self.unacked_from {
            return AckOutcome::Stale;
        }
        let idx = self.slot_index(seq);
        let slot = &mut self.slots[idx];
        if slot.acked {
            return AckOutcome::Stale;
        }
        let sent = slot.last_sent;
        Self::release(
            slot,
            true,
            now,
            rtt,
            &mut self.lost,
            &mut self.in_flight_bytes,
        );
        if self.largest_acked.is_none_or(|(l, _)| seq > l) {
            self.largest_acked = Some((seq, sent));
        }
        self.progress(rtt);
        self.advance_unacked();
        AckOutcome::Released(1)
    }

    /// Records that fresh packets were handed to the assembler: arms the
    /// retransmission timeout and the probe.
    pub(crate) fn arm_timer(&mut self, now: Timestamp, times: LossTimes) {
        if self.resend_at.is_none() {
            self.resend_at = Some(now + times.rto);
        }
        self.arm_probe(now, times.pto);
    }

    /// A flush that sent no fresh packet: arms the timers only where they are
    /// not armed, so traffic that merely passes by (acks, the peer's
    /// retransmissions) does not keep pushing a tail-loss probe back.
    pub(crate) fn arm_unset_timers(&mut self, now: Timestamp, times: LossTimes) {
        if self.resend_at.is_none() {
            self.resend_at = Some(now + times.rto);
        }
        if self.probe_at.is_none() {
            self.arm_probe(now, times.pto);
        }
    }

    /// Arms the probe a probe timeout from `now` (doubled per probe since the
    /// last progress), or clears it when nothing is in flight.
    pub(crate) fn arm_probe(&mut self, now: Timestamp, pto: Duration) {
        self.probe_at =
            (self.in_flight() > 0).then(|| now + pto.saturating_mul(1 << self.probes.min(10)));
    }

    /// Retransmits what is due: packets declared lost, packets unacknowledged for a
    /// whole RTO, and, when the peer has said nothing for a probe timeout, the
    /// oldest packet in flight once (a tail-loss probe, which does not back the RTO
    /// off). Spends at most `budget` packets. `Err` with the age of the oldest
    /// packet when it exceeds `give_up_after`.
    pub(crate) fn resend_due(
        &mut self,
        now: Timestamp,
        times: LossTimes,
        give_up_after: Option<Duration>,
        budget: &mut u16,
        asm: &mut Assembler<'_>,
        resent: &mut u64,
    ) -> Result<Resent, Duration> {
        let mut outcome = Resent::default();
        if self.loss_time.is_some_and(|t| now >= t) {
            outcome.lost_sent = self.detect_losses(now, times.loss_delay);
        }
        let timer_due = self.resend_at.is_some_and(|t| now >= t);
        let probe_due = self.probe_at.is_some_and(|t| now >= t);
        if !timer_due && !probe_due && self.lost == 0 {
            return Ok(outcome);
        }
        let mut sent_any = false;
        let mut next: Option<Timestamp> = None;
        for seq in self.unacked_from..self.next_seq {
            let idx = self.slot_index(seq);
            let slot = &mut self.slots[idx];
            if slot.acked {
                continue;
            }
            let age = now.saturating_duration_since(slot.first_sent);
            if give_up_after.is_some_and(|limit| age >= limit) {
                return Err(age);
            }
            let by_timer = slot.last_sent + times.rto <= now;
            if (by_timer || slot.lost) && *budget > 0 {
                asm.push(&slot.packet);
                outcome.bytes += slot.packet.len();
                slot.last_sent = now;
                slot.sends += 1;
                if slot.lost {
                    slot.lost = false;
                    self.lost -= 1;
                }
                *budget -= 1;
                *resent += 1;
                sent_any = true;
                outcome.timed_out |= by_timer;
            }
            let due = slot.last_sent + times.rto;
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        if probe_due && !sent_any && *budget > 0 {
            // Nothing heard for a probe timeout: the tail may be lost. One packet
            // draws an acknowledgement (or shows it lost) well before the RTO.
            if let Some(seq) = (self.unacked_from..self.next_seq)
                .find(|&seq| !self.slots[self.slot_index(seq)].acked)
            {
                let idx = self.slot_index(seq);
                let slot = &mut self.slots[idx];
                asm.push(&slot.packet);
                outcome.bytes += slot.packet.len();
                slot.last_sent = now;
                slot.sends += 1;
                *budget -= 1;
                *resent += 1;
                sent_any = true;
                let due = slot.last_sent + times.rto;
                next = Some(next.map_or(due, |n| n.min(due)));
            }
            self.probes += 1;
        }
        self.resend_at = next;
        if sent_any || probe_due {
            self.arm_probe(now, times.pto);
        }
        Ok(outcome)
    }
}

/// Copies `take` bytes of `prefix ++ msg` starting at `cursor.offset`.
fn copy_virtual(out: &mut Vec<u8>, cursor: &mut FragmentCursor, msg: &[u8], take: usize) {
    let mut remaining = take;
    if cursor.offset < cursor.prefix_len {
        let n = remaining.min(cursor.prefix_len - cursor.offset);
        out.extend_from_slice(&cursor.prefix[cursor.offset..cursor.offset + n]);
        cursor.offset += n;
        remaining -= n;
    }
    if remaining > 0 {
        let at = cursor.offset - cursor.prefix_len;
        out.extend_from_slice(&msg[at..at + remaining]);
        cursor.offset += remaining;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DataBundle;
    use crate::protocol::{Framing, Packet};
    use crate::session::io::SessionIo;

    #[test]
    fn the_message_queue_keeps_messages_and_their_lengths_in_one_buffer() {
        let mut q = MessageQueue::default();
        assert!(q.is_empty() && q.front().is_none() && q.iter().next().is_none());
        let messages: [&[u8]; 4] = [b"a", &[0; 300], b"", b"last one"];
        for m in messages {
            q.reserve(m.len(), 1 << 20);
            q.push_with(|buf| buf.extend_from_slice(m));
        }
        assert_eq!(q.len(), 4);
        assert_eq!(q.bytes(), 309);
        assert_eq!(q.memory(), q.buf.capacity());
        assert_eq!(q.iter().collect::<Vec<_>>(), messages);
        assert_eq!(q.front(), Some(&b"a"[..]));
        q.pop();
        assert_eq!(
            (q.len(), q.bytes(), q.front()),
            (3, 308, Some(&[0; 300][..]))
        );
        q.pop();
        q.pop();
        // Compacting keeps what is queued and drops the consumed front.
        q.compact();
        assert_eq!(q.head, 0);
        assert_eq!(q.iter().collect::<Vec<_>>(), [&b"last one"[..]]);
        q.pop();
        assert!(q.is_empty() && q.bytes() == 0 && q.buf.is_empty());
    }

    const MS: Duration = Duration::from_millis(1);

    fn rules(room: usize) -> PacketRules {
        PacketRules {
            room,
            coalesce: true,
            bundle_room: usize::MAX,
        }
    }

    fn rtt() -> RttEstimator {
        RttEstimator::new(500 * MS, 200 * MS, 8000 * MS)
    }

    /// Builds every packet the window allows and returns them decoded as
    /// (fragment, sequence, payload).
    fn drain(
        s: &mut ReliableSender,
        rules: PacketRules,
        now: Timestamp,
    ) -> Vec<(bool, u16, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(seq) = s.build_next(rules, now) {
            match Packet::parse(s.packet(seq)).unwrap() {
                Packet::ReliableData {
                    sequence, payload, ..
                } => out.push((false, sequence, payload.to_vec())),
                Packet::ReliableDataFragment {
                    sequence, payload, ..
                } => out.push((true, sequence, payload.to_vec())),
                other => panic!("{other:?}"),
            }
        }
        out
    }

    #[test]
    fn small_messages_share_a_bundle() {
        let mut s = ReliableSender::new(0, None, false, 196);
        for i in 0..5u8 {
            s.enqueue(&[i; 10], usize::MAX);
        }
        let packets = drain(&mut s, rules(100), Timestamp::ZERO);
        assert_eq!(packets.len(), 1);
        let (fragment, seq, payload) = &packets[0];
        assert!(!fragment);
        assert_eq!(*seq, 0);
        let Ok(Packet::DataBundle(b)) = Packet::parse(payload) else {
            panic!()
        };
        let items: Vec<_> = b.iter().map(Result::unwrap).collect();
        assert_eq!(
            items,
            (0..5u8)
                .map(|i| [i; 10])
                .collect::<Vec<_>>()
                .iter()
                .map(|a| &a[..])
                .collect::<Vec<_>>()
        );
    }

    // Vectors: tests/vectors/v17_bundle_builder.txt.
    #[test]
    fn v17_bundle_boundaries() {
        // Room 15 after the sequence: two 5-byte items fill a bundle (2 + 6 + 6 = 14),
        // then a 1-byte and a 10-byte item (2 + 2 + 11 = 15), then a lone 12-byte
        // message goes out plain.
        let mut s = ReliableSender::new(0, None, false, 196);
        s.enqueue(&[0, 1, 2, 3, 4], usize::MAX);
        s.enqueue(&[0, 1, 2, 3, 4], usize::MAX);
        s.enqueue(&[1], usize::MAX);
        s.enqueue(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], usize::MAX);
        s.enqueue(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], usize::MAX);
        let packets = drain(&mut s, rules(15), Timestamp::ZERO);
        assert_eq!(packets.len(), 3);
        assert_eq!(
            packets[0].2,
            [0x00, 0x19, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]
        );
        assert_eq!(
            packets[1].2,
            [0x00, 0x19, 1, 1, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        );
        assert_eq!(packets[2].2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn large_messages_fragment_with_a_total_length() {
        let mut s = ReliableSender::new(2, None, false, 196);
        let msg: Vec<u8> = (0..1400u32).map(|i| i as u8).collect();
        s.enqueue(&msg, usize::MAX);
        let packets = drain(&mut s, rules(500), Timestamp::ZERO);
        assert_eq!(packets.len(), 3);
        assert!(packets.iter().all(|p| p.0));
        assert_eq!(&packets[0].2[..4], &1400u32.to_be_bytes());
        let joined: Vec<u8> = packets
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                if i == 0 {
                    p.2[4..].to_vec()
                } else {
                    p.2.clone()
                }
            })
            .collect();
        assert_eq!(joined, msg);
        assert_eq!(packets.iter().map(|p| p.1).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn bundle_like_plain_messages_are_wrapped() {
        // Unencrypted, unescaped data starting `00 19` travels in a one-item bundle,
        // small or fragmented, so receivers never split it.
        let mut s = ReliableSender::new(0, None, false, 196);
        s.enqueue(&[0x00, 0x19, 7, 7], usize::MAX);
        let big: Vec<u8> = [0x00, 0x19]
            .into_iter()
            .chain(std::iter::repeat_n(9, 1000))
            .collect();
        s.enqueue(&big, usize::MAX);
        let packets = drain(
            &mut s,
            PacketRules {
                room: 500,
                coalesce: false,
                bundle_room: usize::MAX,
            },
            Timestamp::ZERO,
        );
        assert_eq!(packets[0].2, [0x00, 0x19, 4, 0x00, 0x19, 7, 7]);
        let mut joined = packets[1].2[4..].to_vec();
        for p in &packets[2..] {
            joined.extend_from_slice(&p.2);
        }
        let Ok(Packet::DataBundle(b)) = Packet::parse(&joined) else {
            panic!()
        };
        let items: Vec<_> = DataBundle::new(b.body())
            .iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(items, [big.as_slice()]);
    }

    #[test]
    fn rc4_ciphertext_starting_with_zero_is_escaped() {
        // Key 01..05's first keystream byte is 0xB2 (vector v23_rc4_keystream):
        // plaintext 0xB2 encrypts to 0x00.
        let key = Rc4KeyState::new(&[1, 2, 3, 4, 5]);
        let mut s = ReliableSender::new(0, Some(Box::new(key)), false, 196);
        s.enqueue(&[0xB2, 0x01], usize::MAX);
        let packets = drain(
            &mut s,
            PacketRules {
                room: 500,
                coalesce: false,
                bundle_room: usize::MAX,
            },
            Timestamp::ZERO,
        );
        assert_eq!(packets[0].2, [0x00, 0x00, 0x01 ^ 0x39]);
    }

    #[test]
    fn window_limits_packets_in_flight_and_acks_release_them() {
        let mut s = ReliableSender::new(0, None, false, 4);
        for i in 0..10u8 {
            s.enqueue(&[i; 300], usize::MAX);
        }
        let t = Timestamp::ZERO;
        let mut r = rtt();
        assert_eq!(drain(&mut s, rules(400), t).len(), 4);
        assert_eq!(s.in_flight(), 4);
        // A selective ack of 2 leaves the window blocked at 0; 0 and 1 are within
        // the packet threshold, so they are lost only by the time threshold.
        assert_eq!(s.on_ack(2, t + 10 * MS, &mut r), AckOutcome::Released(1));
        assert_eq!(s.detect_losses(t + 10 * MS, r.loss_delay()), None);
        assert!(!s.lost_pending());
        assert!(drain(&mut s, rules(400), t).is_empty());
        assert_eq!(
            s.on_ack_all(1, t + 20 * MS, &mut r),
            AckOutcome::Released(2)
        );
        assert_eq!(s.in_flight(), 1);
        assert_eq!(s.on_ack_all(1, t + 20 * MS, &mut r), AckOutcome::Stale);
        assert_eq!(s.on_ack_all(9, t + 20 * MS, &mut r), AckOutcome::Invalid);
        assert_eq!(drain(&mut s, rules(400), t).len(), 3);
        // Samples of 10, 20 and 20 ms (every packet was sent once).
        assert!(r.srtt().is_some_and(|d| d > 10 * MS && d < 20 * MS));
    }

    #[test]
    fn acks_extend_across_the_16_bit_wrap() {
        let mut s = ReliableSender::new(0, None, false, 196);
        let mut r = rtt();
        let t = Timestamp::ZERO;
        for round in 0..700u32 {
            for _ in 0..100 {
                s.enqueue(&[round as u8], usize::MAX);
            }
            let built = drain(
                &mut s,
                PacketRules {
                    room: 10,
                    coalesce: false,
                    bundle_room: usize::MAX,
                },
                t,
            );
            assert_eq!(built.len(), 100);
            let last = built.last().unwrap().1;
            assert_eq!(s.on_ack_all(last, t, &mut r), AckOutcome::Released(100));
        }
        assert_eq!(s.in_flight(), 0);
        assert!(s.is_idle());
    }

    fn times(rto: Duration) -> LossTimes {
        LossTimes {
            rto,
            pto: rto * 4, // out of the way unless a test wants it
            loss_delay: Some(20 * MS),
        }
    }

    /// Runs `resend_due` and returns (outcome, packets resent).
    fn resend(
        s: &mut ReliableSender,
        now: Timestamp,
        times: LossTimes,
        give_up: Option<Duration>,
        budget: &mut u16,
    ) -> (Result<Resent, Duration>, u64) {
        let mut io = SessionIo::new();
        let framing = Framing::new(0, 0, false);
        let mut asm = Assembler::new(&mut io, &framing, 512, None, None);
        let mut resent = 0;
        let outcome = s.resend_due(now, times, give_up, budget, &mut asm, &mut resent);
        (outcome, resent)
    }

    #[test]
    fn timeouts_resend_within_budget_and_give_up() {
        let mut s = ReliableSender::new(0, None, false, 196);
        for i in 0..10u8 {
            s.enqueue(&[i; 300], usize::MAX);
        }
        let t = Timestamp::ZERO;
        let sent = drain(&mut s, rules(400), t).len();
        assert_eq!(sent, 10);
        s.arm_timer(t, times(500 * MS));
        let mut budget = 4;
        // Not yet due.
        let (outcome, resent) = resend(&mut s, t + 100 * MS, times(500 * MS), None, &mut budget);
        assert!(!outcome.unwrap().timed_out);
        assert_eq!(resent, 0);
        let (outcome, resent) = resend(&mut s, t + 500 * MS, times(500 * MS), None, &mut budget);
        assert!(outcome.unwrap().timed_out);
        assert_eq!(resent, 4, "the budget bounds a resend burst");
        // The six not resent are still due (their RTO ran out at t + 500 ms).
        assert_eq!(s.deadline(), Some(t + 500 * MS));
        let mut budget = 100;
        let (outcome, _) = resend(
            &mut s,
            t + 61_000 * MS,
            times(500 * MS),
            Some(60_000 * MS),
            &mut budget,
        );
        assert_eq!(outcome.unwrap_err(), 61_000 * MS);
    }

    /// A selective ack three packets ahead declares a packet lost at once; one
    /// that is only one or two ahead (reordering) waits for the time threshold.
    #[test]
    fn selective_acks_declare_losses_by_count_and_by_time() {
        let mut s = ReliableSender::new(0, None, false, 196);
        for i in 0..10u8 {
            s.enqueue(&[i; 300], usize::MAX);
        }
        let t = Timestamp::ZERO;
        let mut r = rtt();
        assert_eq!(drain(&mut s, rules(400), t).len(), 10);
        // 4 arrives: 0 and 1 are three or more behind (lost); 2 and 3 may only be
        // reordered.
        s.on_ack(4, t + 10 * MS, &mut r);
        let delay = Some(20 * MS);
        assert_eq!(s.detect_losses(t + 10 * MS, delay), Some(t));
        assert!(s.lost_pending());
        assert_eq!(
            s.deadline(),
            Some(t + 20 * MS),
            "2 and 3 lost by time at t + 20 ms"
        );
        // 2 arrives late (reordered): it is simply acknowledged.
        assert_eq!(s.on_ack(2, t + 12 * MS, &mut r), AckOutcome::Released(1));
        let mut budget = 100;
        let (outcome, resent) = resend(&mut s, t + 12 * MS, times(500 * MS), None, &mut budget);
        assert_eq!(resent, 2, "0 and 1 go again now");
        assert!(!outcome.unwrap().timed_out);
        // At the time threshold 3 is lost too.
        let (outcome, resent) = resend(&mut s, t + 20 * MS, times(500 * MS), None, &mut budget);
        assert_eq!(resent, 1);
        assert_eq!(outcome.unwrap().lost_sent, Some(t));
    }

    /// When nothing is acknowledged for a probe timeout, one packet goes again
    /// (not the whole window, and without backing the RTO off); each further
    /// probe waits twice as long; progress starts them over.
    #[test]
    fn a_silent_peer_draws_single_probes_before_the_rto() {
        let mut s = ReliableSender::new(0, None, false, 196);
        for i in 0..6u8 {
            s.enqueue(&[i; 300], usize::MAX);
        }
        let t = Timestamp::ZERO;
        let mut r = rtt();
        drain(&mut s, rules(400), t);
        let times = LossTimes {
            rto: 1000 * MS,
            pto: 50 * MS,
            loss_delay: None,
        };
        s.arm_timer(t, times);
        assert_eq!(s.deadline(), Some(t + 50 * MS));
        let mut budget = 100;
        let (outcome, resent) = resend(&mut s, t + 50 * MS, times, None, &mut budget);
        assert_eq!(resent, 1);
        assert!(!outcome.unwrap().timed_out);
        assert_eq!(
            s.deadline(),
            Some(t + 150 * MS),
            "the next probe waits twice as long"
        );
        assert_eq!(
            s.on_ack_all(0, t + 60 * MS, &mut r),
            AckOutcome::Released(1)
        );
        s.arm_timer(t + 60 * MS, times);
        assert_eq!(
            s.deadline(),
            Some(t + 110 * MS),
            "progress resets the probes"
        );
    }
}
