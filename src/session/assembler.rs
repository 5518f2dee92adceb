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
    items: usize,
    first_prefix: usize,
    /// Whether the first collected item is unreliable application data (sent alone
    /// it is a raw datagram, not an internal packet).
    first_unreliable: bool,
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
        io.scratch.clear();
        Self {
            io,
            framing,
            max_datagram,
            multi,
            compression,
            items: 0,
            first_prefix: 0,
            first_unreliable: false,
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
        if self.items > 0 && self.io.scratch.len() + prefix + len > body_limit {
            self.finish();
        }
        let mut len_bytes = [0u8; multi_len::MAX_LEN];
        let n = match multi {
            MultiLength::Varint => multi_len::write(len as u32, item[0], &mut len_bytes),
            MultiLength::OneByte => {
                len_bytes[0] = len as u8;
                1
            }
        };
        self.io.scratch.extend_from_slice(&len_bytes[..n]);
        self.io.scratch.extend_from_slice(item);
        if self.items == 0 {
            self.first_prefix = n;
            self.first_unreliable = unreliable;
        }
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
        let start = self.io.tx_bytes.len();
        if escape {
            self.io.tx_bytes.push(0);
        }
        self.io.tx_bytes.extend_from_slice(payload);
        self.seal(start);
    }

    /// Writes a contextless packet (no flag, no CRC) as its own datagram.
    pub(crate) fn push_contextless(&mut self, packet: &[u8]) {
        let start = self.io.tx_bytes.len();
        self.io.tx_bytes.extend_from_slice(packet);
        self.end(start);
    }

    /// Sends what is collected so far.
    pub(crate) fn finish(&mut self) {
        match self.items {
            0 => return,
            1 => {
                let scratch = std::mem::take(&mut self.io.scratch);
                self.write_alone(&scratch[self.first_prefix..], self.first_unreliable);
                self.io.scratch = scratch;
            }
            _ => {
                let scratch = std::mem::take(&mut self.io.scratch);
                self.write_datagram(MULTI_PACKET_HEADER, &scratch);
                self.io.scratch = scratch;
            }
        }
        self.io.scratch.clear();
        self.items = 0;
    }

    fn write_single(&mut self, cooked: &[u8]) {
        let (op, body) = cooked.split_at(OP_CODE_LEN);
        self.write_datagram([op[0], op[1]], body);
    }

    fn write_datagram(&mut self, op: [u8; 2], body: &[u8]) {
        let io = &mut *self.io;
        let start = io.tx_bytes.len();
        io.tx_bytes.extend_from_slice(&op);
        if self.framing.compression() {
            let flag_at = io.tx_bytes.len();
            let packed = match (self.compression, io.compressor.as_mut()) {
                // zlib adds at least 6 bytes: tiny bodies never shrink.
                (Some(c), Some((_, zlib))) if body.len() >= c.min_len.max(8) => {
                    // Flag plus at most `body.len() - 1` bytes: only strictly smaller
                    // results are worth sending.
                    io.tx_bytes.resize(flag_at + body.len(), 0);
                    zlib.compress(body, &mut io.tx_bytes[flag_at + 1..])
                }
                _ => None,
            };
            match packed {
                Some(n) => {
                    io.tx_bytes[flag_at] = 1;
                    io.tx_bytes.truncate(flag_at + 1 + n);
                }
                None => {
                    io.tx_bytes.truncate(flag_at);
                    io.tx_bytes.push(0);
                    io.tx_bytes.extend_from_slice(body);
                }
            }
        } else {
            io.tx_bytes.extend_from_slice(body);
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
        let crc_len = usize::from(self.framing.crc_length());
        let tx = &mut self.io.tx_bytes;
        let end = tx.len();
        tx.resize(end + crc_len, 0);
        self.framing.seal(&mut tx[start..], end - start);
        self.end(start);
    }

    fn end(&mut self, start: usize) {
        self.datagrams += 1;
        self.bytes += (self.io.tx_bytes.len() - start) as u64;
        self.io.end_datagram(start);
    }
}
