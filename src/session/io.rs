//! The buffers a session reads from and writes into, owned once per multiplexer.
//!
//! Sessions keep no output queues of their own: every call that can produce
//! datagrams or events takes a `&mut SessionIo`, appends to it, and the caller drains
//! it. Each datagram and event is tagged with the session that produced it (the
//! owner the caller named with [`SessionIo::set_owner`] before the call), so a
//! caller driving many sessions routes outputs by tag, not by call order. Its
//! buffers keep their capacity across calls, so steady-state traffic does not
//! allocate per datagram:
//!
//! * outgoing datagrams are appended to one byte buffer with a list of ranges;
//! * delivered application data is copied into a shared receive arena and handed
//!   out as [`Bytes`] slices of it (one allocation per arena chunk, not per
//!   message);
//! * zlib state and scratch buffers (encryption passes included) are reused.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::SessionEvent;
use crate::protocol::PassBuffers;
use crate::protocol::{Compressor, Decompressor};

/// Size of one receive-arena chunk.
const ARENA_CHUNK: usize = 64 << 10;
/// Payloads at least this large are handed over without copying into the arena.
const ARENA_MAX_COPY: usize = 16 << 10;

/// Scratch buffers and output queues shared by the sessions of one multiplexer.
#[derive(Debug)]
pub struct SessionIo {
    pub(crate) tx_bytes: Vec<u8>,
    /// Each datagram's bytes in `tx_bytes`, and its owner.
    tx_ranges: Vec<(Range<usize>, u32)>,
    /// Index of the first datagram not yet drained by the caller.
    tx_head: usize,
    /// Events and their owners.
    events: Vec<(u32, SessionEvent)>,
    /// Who the next outputs belong to.
    owner: u32,
    arena: BytesMut,
    pub(crate) scratch: Vec<u8>,
    pub(crate) inflated: Vec<u8>,
    /// A received datagram with its encryption passes undone.
    pub(crate) opened: Vec<u8>,
    pub(crate) pass_buffers: PassBuffers,
    pub(crate) compressor: Option<(u32, Compressor)>,
    pub(crate) decompressor: Decompressor,
    /// Bytes all sessions using this io hold for their peers (out-of-order packets,
    /// partial reassemblies), and the most they may.
    pub(crate) held: usize,
    pub(crate) held_limit: usize,
}

impl Default for SessionIo {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionIo {
    /// Empty buffers.
    pub fn new() -> Self {
        Self {
            tx_bytes: Vec::new(),
            tx_ranges: Vec::new(),
            tx_head: 0,
            events: Vec::new(),
            owner: 0,
            arena: BytesMut::new(),
            scratch: Vec::new(),
            inflated: Vec::new(),
            opened: Vec::new(),
            pass_buffers: PassBuffers::new(),
            compressor: None,
            decompressor: Decompressor::new(),
            held: 0,
            held_limit: usize::MAX,
        }
    }

    /// An io whose sessions together may hold at most `limit` bytes for their
    /// peers (see `SocketConfig::max_buffered_bytes`).
    pub fn with_buffer_budget(limit: usize) -> Self {
        Self {
            held_limit: limit,
            ..Self::new()
        }
    }

    /// Bytes the sessions hold for their peers now.
    pub fn buffered_bytes(&self) -> usize {
        self.held
    }

    /// Names the session the following outputs belong to (any number the caller
    /// chooses; 0 by default).
    #[inline]
    pub fn set_owner(&mut self, owner: u32) {
        self.owner = owner;
    }

    /// Datagrams produced and not yet consumed, oldest first.
    pub fn datagrams(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.tx_ranges[self.tx_head..]
            .iter()
            .map(|(r, _)| &self.tx_bytes[r.clone()])
    }

    /// The owner of the `i`-th datagram ever appended and still in the buffer
    /// (consumed ones included).
    #[inline]
    pub(crate) fn owner_of_raw(&self, i: usize) -> u32 {
        self.tx_ranges[i].1
    }

    /// Number of datagrams waiting.
    #[inline]
    pub fn datagram_count(&self) -> usize {
        self.tx_ranges.len() - self.tx_head
    }

    /// The `i`-th waiting datagram.
    #[inline]
    pub fn datagram(&self, i: usize) -> &[u8] {
        &self.tx_bytes[self.tx_ranges[self.tx_head + i].0.clone()]
    }

    /// Marks the oldest `n` waiting datagrams as sent.
    #[inline]
    pub fn consume_datagrams(&mut self, n: usize) {
        self.tx_head = (self.tx_head + n).min(self.tx_ranges.len());
        if self.tx_head == self.tx_ranges.len() {
            self.tx_ranges.clear();
            self.tx_bytes.clear();
            self.tx_head = 0;
        }
    }

    /// Drops every waiting datagram.
    pub fn clear_datagrams(&mut self) {
        self.consume_datagrams(usize::MAX);
    }

    /// Session events produced and not yet taken, with their owners.
    #[inline]
    pub fn events(&self) -> &[(u32, SessionEvent)] {
        &self.events
    }

    /// Takes the waiting events with their owners, keeping the buffer's capacity.
    #[inline]
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, (u32, SessionEvent)> {
        self.events.drain(..)
    }

    /// Records an event of the current owner.
    #[inline]
    pub(crate) fn emit(&mut self, event: SessionEvent) {
        self.events.push((self.owner, event));
    }

    /// Total datagrams ever appended and still in the buffer (including consumed).
    #[inline]
    pub(crate) fn raw_datagram_len(&self) -> usize {
        self.tx_ranges.len()
    }

    /// Records `tx_bytes[start..]` as one datagram.
    #[inline]
    pub(crate) fn end_datagram(&mut self, start: usize) {
        let end = self.tx_bytes.len();
        debug_assert!(end > start);
        self.tx_ranges.push((start..end, self.owner));
    }

    /// Copies `bytes` (transformed in place by `transform`) into the receive arena
    /// and returns them as a shared slice.
    pub(crate) fn deliver(&mut self, bytes: &[u8], transform: impl FnOnce(&mut [u8])) -> Bytes {
        if bytes.len() >= ARENA_MAX_COPY {
            let mut own = bytes.to_vec();
            transform(&mut own);
            return Bytes::from(own);
        }
        if self.arena.capacity() - self.arena.len() < bytes.len() {
            // Reclaims the chunk in place when every earlier slice has been dropped.
            self.arena.reserve(ARENA_CHUNK.max(bytes.len()));
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        transform(&mut self.arena[start..]);
        self.arena.split().freeze()
    }

    /// Gives back buffer space a burst left behind, while nothing is queued: what
    /// stays is enough for the steady state, which does not allocate.
    pub(crate) fn trim(&mut self) {
        const KEEP: usize = 256 << 10;
        if self.datagram_count() == 0 {
            if self.tx_bytes.capacity() > 4 * KEEP {
                self.tx_bytes = Vec::with_capacity(KEEP);
            }
            if self.tx_ranges.capacity() > KEEP / 64 {
                self.tx_ranges = Vec::with_capacity(KEEP / 512);
            }
        }
        if self.events.is_empty() && self.events.capacity() > KEEP / 64 {
            self.events = Vec::new();
        }
        for buf in [&mut self.scratch, &mut self.inflated, &mut self.opened] {
            if buf.capacity() > 4 * KEEP {
                *buf = Vec::new();
            }
        }
    }

    pub(crate) fn compressor(&mut self, level: u32) -> &mut Compressor {
        if self.compressor.as_ref().is_none_or(|(l, _)| *l != level) {
            self.compressor = Some((level, Compressor::new(level)));
        }
        &mut self.compressor.as_mut().expect("just set").1
    }
}
