//! Packs a session's outgoing packets into as few datagrams as possible.
//!
//! Every outgoing contextual packet passes through [`Assembler::push`] as a cooked
//! packet (`00 op body`). With coalescing on, consecutive packets are collected as
//! length-prefixed sub-packets of one multi-packet (`00 03`) until the next one would
//! not fit in the negotiated datagram length; a multi-packet holding a single
//! sub-packet goes out as that bare packet. Each finished datagram gets its
//! compression flag (compressing the body when negotiated and worth it), then its
//! encryption passes, if any, then its CRC.
//!
//! Sub-packets never carry their own flag or CRC: the outer packet's cover them.
//!
//! The multi-packet is built where it will be sent, at the end of the io's
//! outgoing bytes: its header and a zero compression flag first, then each
//! sub-packet as it comes. Each packet is copied once, from where its owner keeps
//! it to the datagram. A multi-packet that ends with one sub-packet is turned
//! into the bare packet in place; only a body that gets compressed passes
//! through a scratch buffer.

use super::io::SessionIo;
use super::params::MultiLength;
use crate::protocol::Deflate;
use crate::protocol::varint::multi_len;
use crate::protocol::{Framing, MULTI_PACKET_HEADER, OP_CODE_LEN};

/// Compression settings for outgoing datagrams.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compression {
    pub(crate) level: u32,
    pub(crate) min_len: usize,
}

pub(crate) struct Assembler<'a> {
    io: &'a mut SessionIo,
    framing: &'a Framing,
    max_datagram: usize,
    multi: Option<MultiLength>,
    compression: Option<Compression>,
    /// Sub-packets in the open multi-packet.
    items: usize,
    /// Where the open multi-packet starts in the io's outgoing bytes.
    open_start: usize,
    /// Where its body (after the op code and flag) starts.
    body_start: usize,
    /// Length of the first sub-packet's length prefix.
    first_prefix: usize,
    /// Whether the first collected item is unreliable application data (sent alone
    /// it is a raw datagram, not an internal packet).
    first_unreliable: bool,
    /// Whether the open multi-packet waits in the scratch buffer, moved out of the
    /// way of datagrams that travel alone (see [`Assembler::set_aside_open`]).
    set_aside: bool,
    pub(crate) datagrams: u64,
    pub(crate) bytes: u64,
}

impl<'a> Assembler<'a> {
    /// `multi` is `None` when coalescing is off. `compression` is `None` when the
    /// session does not compress outgoing packets.
    pub(crate) fn new(
        io: &'a mut SessionIo,
        framing: &'a Framing,
        max_datagram: usize,
        multi: Option<MultiLength>,
        compression: Option<Compression>,
    ) -> Self {
        if let Some(c) = compression {
            io.compressor(c.level);
        }
        Self {
            io,
            framing,
            max_datagram,
            multi,
            compression,
            items: 0,
            open_start: 0,
            body_start: 0,
            first_prefix: 0,
            first_unreliable: false,
            set_aside: false,
            datagrams: 0,
            bytes: 0,
        }
    }

    /// Room for a cooked packet sent alone.
    pub(crate) fn max_packet(&self) -> usize {
        self.max_datagram - self.framing.overhead()
    }

    /// Adds a cooked internal packet (it starts with `00`).
    pub(crate) fn push(&mut self, packet: &[u8]) {
        debug_assert!(packet.len() >= OP_CODE_LEN && packet[0] == 0);
        debug_assert!(packet.len() <= self.max_packet());
        self.push_item(packet, false);
    }

    fn push_item(&mut self, item: &[u8], unreliable: bool) {
        let Some(multi) = self.multi else {
            self.write_alone(item, unreliable);
            return;
        };
        let len = item.len();
        let prefix = match multi {
            MultiLength::Varint => Some(multi_len::encoded_len(len as u32, item[0])),
            // One length byte; `FF` reads as 255 in every reader only when the
            // sub-packet starts with `00` (v3 readers take `FF x` as a longer form).
            MultiLength::OneByte if len < 0xFF || (len == 0xFF && item[0] == 0) => Some(1),
            MultiLength::OneByte => None,
        };
        let body_limit = self.max_packet() - OP_CODE_LEN;
        let Some(prefix) = prefix.filter(|p| p + len <= body_limit) else {
            // Travels alone; what was collected goes first, to keep the order.
            self.finish();
            self.write_alone(item, unreliable);
            return;
        };
        if self.items > 0 {
            self.restore_open();
            if self.io.tx_bytes.len() - self.body_start + prefix + len > body_limit {
                self.finish();
            }
        }
        let mut len_bytes = [0u8; multi_len::MAX_LEN];
        let n = match multi {
            MultiLength::Varint => multi_len::write(len as u32, item[0], &mut len_bytes),
            MultiLength::OneByte => {
                len_bytes[0] = len as u8;
                1
            }
        };
        if self.items == 0 {
            (self.open_start, self.body_start) = self.begin_datagram(MULTI_PACKET_HEADER);
            self.first_prefix = n;
            self.first_unreliable = unreliable;
        }
        let tx = &mut self.io.tx_bytes;
        if n == 1 {
            // The common case: a plain push, not a copy of unknown length.
            tx.push(len_bytes[0]);
        } else {
            tx.extend_from_slice(&len_bytes[..n]);
        }
        tx.extend_from_slice(item);
        self.items += 1;
    }

    /// Writes one item as its own datagram: an internal packet gets the flag and
    /// CRC, an unreliable payload (already escaped) only the CRC.
    fn write_alone(&mut self, item: &[u8], unreliable: bool) {
        if unreliable {
            let start = self.io.tx_bytes.len();
            self.io.tx_bytes.extend_from_slice(item);
            self.seal(start);
        } else {
            self.write_single(item);
        }
    }

    /// Adds an unreliable application payload. It is zero-escaped when it starts with
    /// `00`; it travels alone (without compression flag) unless `in_multi`.
    pub(crate) fn push_unreliable(&mut self, payload: &[u8], in_multi: bool) {
        let escape = payload.first() == Some(&0);
        if in_multi && self.multi.is_some() {
            if escape {
                let mut item = std::mem::take(&mut self.io.inflated);
                item.clear();
                item.push(0);
                item.extend_from_slice(payload);
                self.push_item(&item, true);
                self.io.inflated = item;
            } else {
                self.push_item(payload, true);
            }
            return;
        }
        self.set_aside_open();
        let start = self.io.tx_bytes.len();
        if escape {
            self.io.tx_bytes.push(0);
        }
        self.io.tx_bytes.extend_from_slice(payload);
        self.seal(start);
    }

    /// Writes a contextless packet (no flag, no CRC) as its own datagram.
    pub(crate) fn push_contextless(&mut self, packet: &[u8]) {
        self.set_aside_open();
        let start = self.io.tx_bytes.len();
        self.io.tx_bytes.extend_from_slice(packet);
        self.end(start);
    }

    /// A datagram that travels alone goes out ahead of the multi-packet still
    /// collecting: the open one moves to the scratch buffer until the next packet
    /// joins it or it is finished, so a run of such datagrams moves it once.
    fn set_aside_open(&mut self) {
        if self.items == 0 || self.set_aside {
            return;
        }
        let io = &mut *self.io;
        io.scratch.clear();
        io.scratch
            .extend_from_slice(&io.tx_bytes[self.open_start..]);
        io.tx_bytes.truncate(self.open_start);
        self.set_aside = true;
    }

    /// Puts the multi-packet [`Assembler::set_aside_open`] moved back at the end.
    #[inline]
    fn restore_open(&mut self) {
        if self.set_aside {
            self.move_back_open();
        }
    }

    #[cold]
    fn move_back_open(&mut self) {
        self.set_aside = false;
        let io = &mut *self.io;
        let header = self.body_start - self.open_start;
        self.open_start = io.tx_bytes.len();
        self.body_start = self.open_start + header;
        io.tx_bytes.extend_from_slice(&io.scratch);
    }

    /// Sends what is collected so far.
    pub(crate) fn finish(&mut self) {
        self.restore_open();
        let (start, body_start) = (self.open_start, self.body_start);
        match std::mem::take(&mut self.items) {
            0 => {}
            1 => {
                // `00 03 [flag] prefix item` becomes the item alone: an internal
                // packet `00 op [flag] body`, or an unreliable payload as it is.
                let item = body_start + self.first_prefix;
                let tx = &mut self.io.tx_bytes;
                if self.first_unreliable {
                    tx.copy_within(item.., start);
                    tx.truncate(tx.len() - (item - start));
                    self.seal(start);
                } else {
                    tx[start + 1] = tx[item + 1];
                    tx.copy_within(item + OP_CODE_LEN.., body_start);
                    tx.truncate(tx.len() - (item + OP_CODE_LEN - body_start));
                    self.close_datagram(start, body_start);
                }
            }
            _ => self.close_datagram(start, body_start),
        }
    }

    fn write_single(&mut self, cooked: &[u8]) {
        let (start, body_start) = self.begin_datagram([cooked[0], cooked[1]]);
        self.io.tx_bytes.extend_from_slice(&cooked[OP_CODE_LEN..]);
        self.close_datagram(start, body_start);
    }

    /// Starts a contextual datagram at the end of the io's outgoing bytes: its op
    /// code, then a zero compression flag when the framing has one. Returns where
    /// the datagram and its body start.
    #[inline]
    fn begin_datagram(&mut self, op: [u8; OP_CODE_LEN]) -> (usize, usize) {
        let tx = &mut self.io.tx_bytes;
        let start = tx.len();
        tx.extend_from_slice(&op);
        if self.framing.compression() {
            tx.push(0);
        }
        (start, tx.len())
    }

    /// Finishes the datagram at `start` whose body (after the op code and a zero
    /// compression flag, when the framing has one) is in place from `body_start`:
    /// compresses the body when negotiated and worth it, then seals.
    fn close_datagram(&mut self, start: usize, body_start: usize) {
        let io = &mut *self.io;
        let body_len = io.tx_bytes.len() - body_start;
        if let (true, Some(c), Some((_, zlib))) = (
            self.framing.compression(),
            self.compression,
            io.compressor.as_mut(),
        ) {
            // zlib adds at least 6 bytes: tiny bodies never shrink.
            if body_len >= c.min_len.max(8) {
                let flag_at = body_start - 1;
                io.scratch.clear();
                io.scratch.extend_from_slice(&io.tx_bytes[body_start..]);
                // At most `body_len - 1` bytes: only strictly smaller results are
                // worth sending.
                let room = &mut io.tx_bytes[body_start..body_start + body_len - 1];
                let packed = zlib.compress(&io.scratch, room);
                match packed {
                    Some(n) => {
                        io.tx_bytes[flag_at] = 1;
                        io.tx_bytes.truncate(body_start + n);
                    }
                    None => {
                        io.tx_bytes.truncate(body_start);
                        io.tx_bytes.extend_from_slice(&io.scratch);
                    }
                }
            }
        }
        self.seal(start);
    }

    fn seal(&mut self, start: usize) {
        if let Some(passes) = self.framing.passes() {
            let io = &mut *self.io;
            let deflate = match (self.compression, io.compressor.as_mut()) {
                (Some(c), Some((_, zlib))) => Some(Deflate {
                    zlib,
                    min_len: c.min_len,
                }),
                _ => None,
            };
            passes.encrypt(&mut io.tx_bytes, start, &mut io.pass_buffers, deflate);
        }
        self.framing.seal_vec(&mut self.io.tx_bytes, start);
        self.end(start);
    }

    fn end(&mut self, start: usize) {
        self.datagrams += 1;
        self.bytes += (self.io.tx_bytes.len() - start) as u64;
        self.io.end_datagram(start);
    }
}

/// Every caller ends with [`Assembler::finish`]: a multi-packet still collecting
/// would stay in the io's outgoing bytes, unsent. Checked in debug builds only
/// (the flush path is hot, and no call site leaves one open).
impl Drop for Assembler<'_> {
    fn drop(&mut self) {
        debug_assert!(
            self.items == 0 || std::thread::panicking(),
            "an assembler dropped with a multi-packet open: call finish"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Decompressor, Unframed};

    const SEED: u32 = 0x1234_5678;
    const ACK: [u8; 4] = [0x00, 0x15, 0x00, 0x07];
    const DATA: [u8; 7] = [0x00, 0x09, 0x00, 0x03, 0xAA, 0xBB, 0xCC];

    fn framing() -> Framing {
        Framing::new(SEED, 2, true)
    }

    /// Runs `build` on an assembler and returns each datagram, checked against
    /// its CRC and unframed: `(op, compressed, body)`, or `(None, false, payload)`
    /// for unreliable data.
    fn assemble(
        compression: Option<Compression>,
        build: impl FnOnce(&mut Assembler<'_>),
    ) -> Vec<(Option<u8>, bool, Vec<u8>)> {
        let framing = framing();
        let mut io = SessionIo::new();
        let mut asm = Assembler::new(
            &mut io,
            &framing,
            512,
            Some(MultiLength::OneByte),
            compression,
        );
        build(&mut asm);
        asm.finish();
        let (datagrams, bytes) = (asm.datagrams, asm.bytes);
        drop(asm);
        assert_eq!(datagrams as usize, io.datagram_count());
        assert_eq!(
            bytes as usize,
            io.datagrams().map(<[u8]>::len).sum::<usize>()
        );
        io.datagrams()
            .map(|d| match framing.unframe(d).expect("a valid datagram") {
                Unframed::Contextual {
                    op,
                    compressed,
                    body,
                } => (Some(op.type_byte()), compressed, body.to_vec()),
                Unframed::Application(payload) => (None, false, payload.to_vec()),
                Unframed::Contextless(..) => panic!("no contextless packet was pushed"),
            })
            .collect()
    }

    /// `len item` for each item: the body of a multi-packet with one-byte lengths.
    fn multi_body(items: &[&[u8]]) -> Vec<u8> {
        items
            .iter()
            .flat_map(|i| std::iter::once(i.len() as u8).chain(i.iter().copied()))
            .collect()
    }

    #[test]
    fn consecutive_packets_share_one_multi_packet() {
        let got = assemble(None, |asm| {
            asm.push(&ACK);
            asm.push(&DATA);
        });
        assert_eq!(got, [(Some(0x03), false, multi_body(&[&ACK, &DATA]))]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "call finish")]
    fn an_assembler_dropped_with_a_multi_packet_open_is_a_bug() {
        let framing = framing();
        let mut io = SessionIo::new();
        let mut asm = Assembler::new(&mut io, &framing, 512, Some(MultiLength::OneByte), None);
        asm.push(&ACK);
    }

    #[test]
    fn a_lone_packet_goes_out_bare() {
        let got = assemble(None, |asm| asm.push(&DATA));
        assert_eq!(got, [(Some(0x09), false, DATA[2..].to_vec())]);
    }

    #[test]
    fn a_lone_unreliable_item_goes_out_as_raw_data() {
        let got = assemble(None, |asm| asm.push_unreliable(&[0x42, 0x43], true));
        assert_eq!(got, [(None, false, vec![0x42, 0x43])]);
    }

    /// Unreliable data that travels alone (and contextless packets) are written
    /// while a multi-packet is still collecting: they go out first, whole, and
    /// the multi-packet keeps every packet pushed before and after.
    #[test]
    fn datagrams_sent_alone_go_ahead_of_the_open_multi_packet() {
        let got = assemble(None, |asm| {
            asm.push(&ACK);
            asm.push_unreliable(&[0x42, 0x43], false);
            asm.push(&DATA);
            asm.push_unreliable(&[0x00, 0x44], false);
        });
        assert_eq!(
            got,
            [
                (None, false, vec![0x42, 0x43]),
                (None, false, vec![0x00, 0x44]),
                (Some(0x03), false, multi_body(&[&ACK, &DATA])),
            ]
        );
        // A run of them moves the open multi-packet out of the way once.
        let got = assemble(None, |asm| {
            asm.push(&ACK);
            asm.push_unreliable(&[0x45], false);
            asm.push_unreliable(&[0x46], false);
            asm.push(&DATA);
        });
        assert_eq!(
            got,
            [
                (None, false, vec![0x45]),
                (None, false, vec![0x46]),
                (Some(0x03), false, multi_body(&[&ACK, &DATA])),
            ]
        );
    }

    #[test]
    fn packets_that_do_not_fit_start_the_next_datagram() {
        let mut big = vec![0x00, 0x09, 0x00, 0x04];
        big.resize(300, 0x5A);
        let got = assemble(None, |asm| {
            asm.push(&ACK);
            asm.push(&DATA);
            // Too long for a one-byte length: it travels alone, after what was
            // collected.
            asm.push(&big);
            asm.push(&ACK);
        });
        assert_eq!(
            got,
            [
                (Some(0x03), false, multi_body(&[&ACK, &DATA])),
                (Some(0x09), false, big[2..].to_vec()),
                (Some(0x15), false, ACK[2..].to_vec()),
            ]
        );
    }

    #[test]
    fn bodies_are_compressed_only_when_they_shrink() {
        let compression = Some(Compression {
            level: 6,
            min_len: 16,
        });
        let mut repetitive = vec![0x00, 0x09, 0x00, 0x05];
        repetitive.resize(200, 0x61);
        let got = assemble(compression, |asm| {
            asm.push(&ACK);
            asm.push(&repetitive);
        });
        assert_eq!(got.len(), 1);
        let (op, compressed, body) = &got[0];
        assert_eq!((*op, *compressed), (Some(0x03), true));
        let mut inflated = Vec::new();
        Decompressor::new()
            .inflate(body, &mut inflated, 1 << 16)
            .expect("a zlib stream");
        assert_eq!(inflated, multi_body(&[&ACK, &repetitive]));

        // Incompressible bodies, and bodies under `min_len`, go out as they are.
        let noise: Vec<u8> = [0x00, 0x09, 0x00, 0x06]
            .into_iter()
            .chain((0..60u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8))
            .collect();
        let got = assemble(compression, |asm| {
            asm.push(&noise);
            asm.push(&ACK);
        });
        assert_eq!(got, [(Some(0x03), false, multi_body(&[&noise, &ACK]))]);
        let got = assemble(compression, |asm| asm.push(&DATA));
        assert_eq!(got, [(Some(0x09), false, DATA[2..].to_vec())]);
    }
}
