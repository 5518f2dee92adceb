//! Decoding one SOE session from its datagrams, in both directions.
//!
//! Every datagram goes through the crate's own codec: [`Framing::unframe`] checks
//! the CRC and reads the compression flag, [`Decompressor`] inflates,
//! [`Packet::parse`] reads cooked packets, [`MultiPacket`] and [`DataBundle`] split
//! containers. On top of that this module keeps, per direction and reliable
//! channel, what a receiver keeps: the next expected sequence, packets held behind
//! a gap, the message being reassembled and the RC4 keystream. Messages come out
//! in the order the application would receive them.
//!
//! Nothing here trusts the capture: every length is checked, held data is capped,
//! and a packet that cannot be decoded becomes a [`EventKind::Malformed`] event.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use soe_uring::protocol::{
    DATA_BUNDLE_HEADER, Decompressor, FrameError, Framing, Packet, RELIABLE_CHANNEL_COUNT,
    SessionResponse, Unframed,
};
use soe_uring::protocol::{DataBundle, MultiPacket, PassBuffers, PassContext, Passes};
use soe_uring::{DisconnectReason, EncryptMethod, PassCodes, Rc4KeyState};

use crate::capture::Timestamp;
use crate::event::{
    DirStats, Direction, Event, EventKind, LengthForm, MessageChannel, MessageEvent, Order,
    PacketEvent, PacketInfo, SessionSummary,
};

/// How multi-packet lengths are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthPolicy {
    /// Only this form.
    Fixed(LengthForm),
    /// The v3 varint first (it reads every one-byte length below 255 the same);
    /// if a multi-packet does not split cleanly that way, one byte per length.
    Auto,
}

/// How the decoder reads a session; the same for every session of a capture.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// CRC seed for sessions whose SessionResponse is not in the capture.
    pub crc_seed: u32,
    /// CRC length for sessions whose SessionResponse is not in the capture.
    pub crc_length: u8,
    /// Compression flag for sessions whose SessionResponse is not in the capture.
    pub compression: bool,
    /// Multi-packet length form.
    pub multi_length: LengthPolicy,
    /// Strip one leading `00` from every reliable message (UdpLibrary's
    /// `ZeroEscape::Always`), not only from encrypted ones.
    pub unescape_always: bool,
    /// RC4 key state for reliable application data.
    pub rc4: Option<Rc4KeyState>,
    /// How bytes 11 and 12 of a SessionResponse name encryption passes (the
    /// profile's); Xor, XorBuffer and EQ's compression pass are undone.
    pub pass_codes: PassCodes,
    /// Bytes of each message shown.
    pub preview_len: usize,
    /// Largest inflated body.
    pub max_inflated: usize,
    /// Largest reassembled message.
    pub max_message: usize,
    /// Packets a channel holds ahead of a gap.
    pub window: u64,
    /// Bytes a channel holds ahead of a gap.
    pub max_held_bytes: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            crc_seed: 0,
            crc_length: soe_uring::protocol::DEFAULT_CRC_LENGTH,
            compression: false,
            multi_length: LengthPolicy::Auto,
            unescape_always: false,
            rc4: None,
            pass_codes: PassCodes::V3,
            preview_len: 16,
            max_inflated: 1 << 20,
            max_message: 64 << 20,
            window: 1 << 14,
            max_held_bytes: 64 << 20,
        }
    }
}

/// Nesting limit for multi-packets and bundles inside each other.
const MAX_DEPTH: u8 = 8;

#[derive(Debug)]
struct Held {
    fragment: bool,
    data: Vec<u8>,
}

#[derive(Debug)]
struct Reassembly {
    total: usize,
    buf: Vec<u8>,
    pieces: u32,
}

/// The receiving side of one reliable channel in one direction.
#[derive(Debug)]
struct ChannelRx {
    /// Next expected sequence; `None` until the first packet of a session whose
    /// start is not in the capture.
    next: Option<u64>,
    held: BTreeMap<u64, Held>,
    held_bytes: usize,
    reassembly: Option<Reassembly>,
    cipher: Option<Rc4KeyState>,
}

impl ChannelRx {
    fn new(synced: bool, cipher: Option<Rc4KeyState>) -> Self {
        Self {
            next: synced.then_some(0),
            held: BTreeMap::new(),
            held_bytes: 0,
            reassembly: None,
            cipher,
        }
    }

    /// The 64-bit sequence nearest the next expected one.
    fn extend(next: u64, wire: u16) -> Option<u64> {
        let delta = wire.wrapping_sub(next as u16) as i16;
        next.checked_add_signed(i64::from(delta))
    }
}

#[derive(Debug, Default)]
struct Half {
    channels: [Option<Box<ChannelRx>>; RELIABLE_CHANNEL_COUNT],
    stats: DirStats,
}

/// Where and when the datagram being decoded was seen.
#[derive(Debug, Clone, Copy)]
struct Ctx {
    time: Timestamp,
    dir: Direction,
}

/// One session being decoded.
#[derive(Debug)]
pub struct SessionDecoder {
    id: u32,
    client: SocketAddr,
    server: SocketAddr,
    opts: DecodeOptions,
    /// Channels start at sequence 0 (the session's start is in the capture).
    synced: bool,
    start: Timestamp,
    last: Timestamp,
    framing: Framing,
    request_id: Option<u32>,
    protocol_version: Option<u32>,
    application_protocol: Option<String>,
    response: Option<SessionResponse>,
    halves: [Half; 2],
    decompressor: Decompressor,
    inflated: Vec<u8>,
    /// Where a datagram with encryption passes is decrypted, and the passes'
    /// scratch space.
    opened: Vec<u8>,
    pass_buffers: PassBuffers,
    pass_inflater: Decompressor,
    disconnect: Option<(Direction, DisconnectReason)>,
    /// Depth of the packet being decoded (messages are printed under it).
    depth: u8,
    events: Vec<Event>,
}

impl SessionDecoder {
    /// A session between `client` and `server` whose first datagram was seen at
    /// `start`. `from_start` says the capture holds the session from its
    /// handshake on (reliable sequences then start at 0).
    pub fn new(
        id: u32,
        client: SocketAddr,
        server: SocketAddr,
        start: Timestamp,
        from_start: bool,
        opts: DecodeOptions,
    ) -> Self {
        let framing = Framing::new(opts.crc_seed, opts.crc_length, opts.compression);
        Self {
            id,
            client,
            server,
            synced: from_start,
            start,
            last: start,
            framing,
            request_id: None,
            protocol_version: None,
            application_protocol: None,
            response: None,
            halves: Default::default(),
            decompressor: Decompressor::new(),
            inflated: Vec::new(),
            opened: Vec::new(),
            pass_buffers: PassBuffers::new(),
            pass_inflater: Decompressor::new(),
            disconnect: None,
            depth: 0,
            events: Vec::new(),
            opts,
        }
    }

    /// The session number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The client's address.
    pub fn client(&self) -> SocketAddr {
        self.client
    }

    /// The session id of its SessionRequest, if one was seen.
    pub fn request_id(&self) -> Option<u32> {
        self.request_id
    }

    /// Whether a Disconnect was seen.
    pub fn ended(&self) -> bool {
        self.disconnect.is_some()
    }

    fn emit(&mut self, ctx: Ctx, kind: EventKind) {
        self.events.push(Event {
            session: self.id,
            time: ctx.time,
            offset: ctx.time.seconds_since(self.start),
            dir: Some(ctx.dir),
            kind,
        });
    }

    fn stats(&mut self, dir: Direction) -> &mut DirStats {
        &mut self.halves[dir as usize].stats
    }

    fn packet(&mut self, ctx: Ctx, depth: u8, info: PacketInfo) {
        self.emit(
            ctx,
            EventKind::Packet(PacketEvent {
                depth,
                wire_len: None,
                inflated_len: None,
                info,
            }),
        );
    }

    fn malformed(&mut self, ctx: Ctx, len: usize, depth: u8, reason: impl Into<String>) {
        self.stats(ctx.dir).malformed += 1;
        self.emit(
            ctx,
            EventKind::Malformed {
                len,
                depth,
                reason: reason.into(),
            },
        );
    }

    /// Emits the event that opens the session, and a note when decoding has to
    /// guess.
    pub fn start_events(&mut self, handshake: bool, out: &mut Vec<Event>) {
        self.events.push(Event {
            session: self.id,
            time: self.start,
            offset: 0.0,
            dir: None,
            kind: EventKind::SessionStart {
                client: self.client,
                server: self.server,
                handshake,
            },
        });
        if !handshake {
            let mut note = format!(
                "no handshake in the capture: CRC seed 0x{:08x}, CRC length {}, compression {} (see --crc-seed, --crc-length, --compression); reliable sequences counted from the first packet seen",
                self.opts.crc_seed,
                self.opts.crc_length,
                if self.opts.compression { "on" } else { "off" }
            );
            if self.opts.rc4.is_some() {
                note += "; RC4 needs the whole session, so decrypted data is likely wrong";
            }
            self.events.push(Event {
                session: self.id,
                time: self.start,
                offset: 0.0,
                dir: None,
                kind: EventKind::Note(note),
            });
        }
        out.append(&mut self.events);
    }

    /// Decodes one datagram and appends what it held to `out`.
    pub fn datagram(
        &mut self,
        time: Timestamp,
        dir: Direction,
        bytes: &[u8],
        out: &mut Vec<Event>,
    ) {
        let ctx = Ctx { time, dir };
        self.last = self.last.max(time);
        let stats = self.stats(dir);
        stats.datagrams += 1;
        stats.bytes += bytes.len() as u64;
        self.decode_datagram(ctx, bytes);
        out.append(&mut self.events);
    }

    fn decode_datagram(&mut self, ctx: Ctx, bytes: &[u8]) {
        let mut opened = std::mem::take(&mut self.opened);
        let unframed = if self.framing.passes().is_some() {
            self.framing.open(
                bytes,
                &mut opened,
                &mut self.pass_buffers,
                &mut self.pass_inflater,
                self.opts.max_inflated,
            )
        } else {
            self.framing.unframe(bytes)
        };
        let unframed = match unframed {
            Ok(u) => u,
            Err(FrameError::CrcMismatch)
                if bytes.len() < usize::from(self.framing.crc_length()) =>
            {
                return self.malformed(ctx, bytes.len(), 0, "shorter than its CRC");
            }
            Err(FrameError::CrcMismatch) => {
                let n = usize::from(self.framing.crc_length());
                let (body, trailer) = bytes.split_at(bytes.len() - n);
                let mask = if n == 4 {
                    u32::MAX
                } else {
                    (1u32 << (8 * n)) - 1
                };
                let expected = self.framing.crc().checksum(body) & mask;
                let found = trailer.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b));
                self.stats(ctx.dir).crc_mismatches += 1;
                self.emit(
                    ctx,
                    EventKind::CrcMismatch {
                        len: bytes.len(),
                        expected,
                        found,
                    },
                );
                return;
            }
            Err(e) => return self.malformed(ctx, bytes.len(), 0, e.to_string()),
        };
        match unframed {
            Unframed::Contextless(_, cooked) => match Packet::parse(cooked) {
                Ok(packet) => self.top_packet(ctx, bytes.len(), None, packet),
                Err(e) => self.malformed(ctx, bytes.len(), 0, e.to_string()),
            },
            Unframed::Application(data) => {
                self.top_packet(ctx, bytes.len(), None, Packet::Application(data))
            }
            Unframed::Contextual {
                op,
                compressed,
                body,
            } => {
                if compressed {
                    self.stats(ctx.dir).compressed += 1;
                    let mut inflated = std::mem::take(&mut self.inflated);
                    inflated.clear();
                    match self
                        .decompressor
                        .inflate(body, &mut inflated, self.opts.max_inflated)
                    {
                        Ok(()) => match Packet::parse_contextual(op, &inflated) {
                            Ok(p) => self.top_packet(ctx, bytes.len(), Some(inflated.len()), p),
                            Err(e) => self.malformed(ctx, bytes.len(), 0, e.to_string()),
                        },
                        Err(e) => self.malformed(ctx, bytes.len(), 0, format!("zlib: {e}")),
                    }
                    self.inflated = inflated;
                } else {
                    match Packet::parse_contextual(op, body) {
                        Ok(p) => self.top_packet(ctx, bytes.len(), None, p),
                        Err(e) => self.malformed(ctx, bytes.len(), 0, e.to_string()),
                    }
                }
            }
        }
        self.opened = opened;
    }

    /// The framing a SessionResponse sets up: CRC, the v3 compression flag, and
    /// the encryption passes it names in the profile's codes (a note when they
    /// cannot be undone: the session's packets then read as malformed).
    fn framing_of(&mut self, ctx: Ctx, resp: &SessionResponse) -> Framing {
        let codes = self.opts.pass_codes;
        let (pass_0, compression) = if codes.pass_0_in_byte_11(resp.protocol_version.is_some()) {
            (codes.method(resp.compression), false)
        } else {
            (Some(EncryptMethod::None), resp.compression != 0)
        };
        let framing = Framing::new(resp.crc_seed, resp.crc_length.min(4), compression);
        let methods = match (pass_0, codes.method(resp.encryption_pass_1)) {
            (Some(a), Some(b)) => [a, b],
            _ => {
                let note = format!(
                    "SessionResponse names encryption passes {} and {} that {codes:?} codes do not define",
                    resp.compression, resp.encryption_pass_1
                );
                self.emit(ctx, EventKind::Note(note));
                return framing;
            }
        };
        let context = PassContext::new(resp.session_id, resp.crc_seed);
        // The longest datagram of either side is not known here: cover any.
        match Passes::new(methods, [None, None], context, 1 << 16) {
            Ok(passes) => framing.with_passes(passes),
            Err(e) => {
                let note = format!("encryption passes {methods:?} cannot be undone here: {e}");
                self.emit(ctx, EventKind::Note(note));
                framing
            }
        }
    }

    /// A whole datagram's packet: its event carries the wire length.
    fn top_packet(&mut self, ctx: Ctx, wire_len: usize, inflated: Option<usize>, p: Packet<'_>) {
        let mark = self.events.len();
        self.cooked_packet(ctx, 0, p);
        // The first event the packet produced is its own line.
        if let Some(Event {
            kind: EventKind::Packet(pe),
            ..
        }) = self.events.get_mut(mark)
        {
            pe.wire_len = Some(wire_len);
            pe.inflated_len = inflated;
        }
    }

    fn cooked_bytes(&mut self, ctx: Ctx, depth: u8, bytes: &[u8]) {
        match Packet::parse(bytes) {
            Ok(p) => self.cooked_packet(ctx, depth, p),
            Err(e) => self.malformed(ctx, bytes.len(), depth, e.to_string()),
        }
    }

    fn cooked_packet(&mut self, ctx: Ctx, depth: u8, packet: Packet<'_>) {
        self.depth = depth;
        match packet {
            Packet::SessionRequest(req) => {
                let retry = self.request_id == Some(req.session_id);
                self.request_id = Some(req.session_id);
                self.protocol_version = Some(req.protocol_version);
                self.application_protocol = req
                    .application_protocol
                    .map(|n| String::from_utf8_lossy(n).into_owned());
                let protocol = self.application_protocol.clone();
                self.packet(
                    ctx,
                    depth,
                    PacketInfo::SessionRequest {
                        version: req.protocol_version,
                        session_id: req.session_id,
                        udp_length: req.udp_length,
                        protocol,
                        retry,
                    },
                );
            }
            Packet::SessionResponse(resp) => {
                self.packet(
                    ctx,
                    depth,
                    PacketInfo::SessionResponse {
                        session_id: resp.session_id,
                        crc_seed: resp.crc_seed,
                        crc_length: resp.crc_length,
                        compression: resp.compression,
                        encryption: resp.encryption_pass_1,
                        udp_length: resp.udp_length,
                        version: resp.protocol_version,
                    },
                );
                if resp.crc_length > 4 {
                    let note = format!("CRC length {} is above 4; using 4", resp.crc_length);
                    self.emit(ctx, EventKind::Note(note));
                }
                if let Some(id) = self.request_id
                    && id != resp.session_id
                {
                    let note = format!(
                        "SessionResponse echoes session id 0x{:08x}, the request had 0x{id:08x}",
                        resp.session_id
                    );
                    self.emit(ctx, EventKind::Note(note));
                }
                self.framing = self.framing_of(ctx, &resp);
                self.response = Some(resp);
            }
            Packet::MultiPacket(multi) => {
                if depth >= MAX_DEPTH {
                    return self.malformed(ctx, multi.body().len() + 2, depth, "nested too deep");
                }
                self.stats(ctx.dir).multi_packets += 1;
                let (form, subs, complete) = self.split_multi(multi);
                self.packet(
                    ctx,
                    depth,
                    PacketInfo::MultiPacket {
                        items: subs.len(),
                        form,
                    },
                );
                for sub in &subs {
                    self.cooked_bytes(ctx, depth + 1, sub);
                }
                if !complete {
                    let reason = format!(
                        "multi-packet: bad length prefix after {} sub-packets",
                        subs.len()
                    );
                    self.malformed(ctx, multi.body().len() + 2, depth + 1, reason);
                }
            }
            Packet::DataBundle(bundle) => {
                if depth >= MAX_DEPTH {
                    return self.malformed(ctx, bundle.body().len() + 2, depth, "nested too deep");
                }
                let mut items = Vec::new();
                let mut complete = true;
                for item in bundle.iter() {
                    match item {
                        Ok(i) => items.push(i),
                        Err(_) => complete = false,
                    }
                }
                self.packet(ctx, depth, PacketInfo::DataBundle { items: items.len() });
                for item in &items {
                    self.cooked_bytes(ctx, depth + 1, item);
                }
                if !complete {
                    self.malformed(
                        ctx,
                        bundle.body().len() + 2,
                        depth + 1,
                        "data bundle: bad length prefix",
                    );
                }
            }
            Packet::Disconnect(d) => {
                self.packet(
                    ctx,
                    depth,
                    PacketInfo::Disconnect {
                        session_id: d.session_id,
                        reason: d.reason,
                    },
                );
                self.disconnect.get_or_insert((ctx.dir, d.reason));
            }
            Packet::Heartbeat => self.packet(ctx, depth, PacketInfo::Heartbeat),
            Packet::NetStatusRequest(_) => self.packet(ctx, depth, PacketInfo::NetStatusRequest),
            Packet::NetStatusResponse(_) => self.packet(ctx, depth, PacketInfo::NetStatusResponse),
            Packet::ReliableData {
                channel,
                sequence,
                payload,
            } => self.reliable(ctx, depth, channel, sequence, payload, false),
            Packet::ReliableDataFragment {
                channel,
                sequence,
                payload,
            } => self.reliable(ctx, depth, channel, sequence, payload, true),
            Packet::Acknowledge { channel, sequence } => {
                self.stats(ctx.dir).acks += 1;
                let info = PacketInfo::Ack {
                    channel,
                    seq: sequence,
                    all: false,
                };
                self.packet(ctx, depth, info);
            }
            Packet::AcknowledgeAll { channel, sequence } => {
                self.stats(ctx.dir).ack_alls += 1;
                let info = PacketInfo::Ack {
                    channel,
                    seq: sequence,
                    all: true,
                };
                self.packet(ctx, depth, info);
            }
            Packet::Ordered {
                second,
                stamp,
                payload,
            } => {
                let info = PacketInfo::Ordered {
                    second,
                    stamp,
                    len: payload.len(),
                };
                self.packet(ctx, depth, info);
                self.message(ctx, MessageChannel::Ordered, payload, None, 1, false, false);
            }
            Packet::ZeroEscaped(data) | Packet::Application(data) => {
                self.packet(ctx, depth, PacketInfo::Unreliable { len: data.len() });
                self.message(ctx, MessageChannel::Unreliable, data, None, 1, false, false);
            }
            Packet::PortAlive(_) => self.packet(ctx, depth, PacketInfo::PortAlive),
            Packet::UnknownSender => self.packet(ctx, depth, PacketInfo::UnknownSender),
            Packet::RemapConnection(r) => self.packet(
                ctx,
                depth,
                PacketInfo::RemapConnection {
                    session_id: r.session_id,
                    crc_seed: r.crc_seed,
                },
            ),
        }
    }

    /// Splits a multi-packet body; returns the length form (one-byte when every
    /// length took one byte, whatever the policy), the sub-packets and whether the
    /// whole body split cleanly.
    fn split_multi<'a>(&self, multi: MultiPacket<'a>) -> (LengthForm, Vec<&'a [u8]>, bool) {
        let forms: &[LengthForm] = match self.opts.multi_length {
            LengthPolicy::Fixed(LengthForm::OneByte) => &[LengthForm::OneByte],
            LengthPolicy::Fixed(LengthForm::Varint) => &[LengthForm::Varint],
            LengthPolicy::Auto => &[LengthForm::Varint, LengthForm::OneByte],
        };
        let mut first_try = None;
        for &form in forms {
            let iter = match form {
                LengthForm::OneByte => multi.iter_one_byte(),
                LengthForm::Varint => multi.iter(),
            };
            let mut subs = Vec::new();
            let mut complete = true;
            for item in iter {
                match item {
                    Ok(sub) => subs.push(sub),
                    Err(_) => complete = false,
                }
            }
            if complete {
                // Lengths that all took one byte read the same either way: say so.
                let one_byte =
                    subs.len() + subs.iter().map(|s| s.len()).sum::<usize>() == multi.body().len();
                let form = if one_byte { LengthForm::OneByte } else { form };
                return (form, subs, true);
            }
            first_try.get_or_insert((form, subs, false));
        }
        first_try.unwrap_or((LengthForm::Varint, Vec::new(), false))
    }

    fn channel(&mut self, dir: Direction, channel: u8) -> &mut ChannelRx {
        let synced = self.synced;
        let cipher = &self.opts.rc4;
        self.halves[dir as usize].channels[usize::from(channel & 3)]
            .get_or_insert_with(|| Box::new(ChannelRx::new(synced, cipher.clone())))
    }

    fn reliable(
        &mut self,
        ctx: Ctx,
        depth: u8,
        channel: u8,
        wire: u16,
        payload: &[u8],
        fragment: bool,
    ) {
        let window = self.opts.window;
        let max_held = self.opts.max_held_bytes;
        let rx = self.channel(ctx.dir, channel);
        let next = *rx.next.get_or_insert(u64::from(wire));
        let seq = ChannelRx::extend(next, wire);
        let order = match seq {
            None => Order::Duplicate,
            Some(s) if s < next => Order::Duplicate,
            Some(s) if s == next => Order::InOrder,
            Some(s) if s >= next + window => Order::BeyondWindow,
            Some(s) if rx.held.contains_key(&s) => Order::Duplicate,
            Some(_) if rx.held_bytes + payload.len() > max_held => Order::BeyondWindow,
            Some(_) => Order::OutOfOrder,
        };
        // A fragment that arrives in order with no message open starts a message.
        let total = (fragment && order == Order::InOrder && rx.reassembly.is_none())
            .then(|| payload.get(..4))
            .flatten()
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let stats = self.stats(ctx.dir);
        stats.reliable += 1;
        stats.fragments += u64::from(fragment);
        match order {
            Order::Duplicate => stats.duplicates += 1,
            Order::OutOfOrder => stats.out_of_order += 1,
            Order::BeyondWindow => stats.beyond_window += 1,
            Order::InOrder => {}
        }
        self.packet(
            ctx,
            depth,
            PacketInfo::Reliable {
                channel,
                fragment,
                seq: wire,
                seq64: seq,
                len: payload.len(),
                total,
                order,
            },
        );
        let Some(seq) = seq else { return };
        match order {
            Order::OutOfOrder => {
                let rx = self.channel(ctx.dir, channel);
                rx.held_bytes += payload.len();
                rx.held.insert(
                    seq,
                    Held {
                        fragment,
                        data: payload.to_vec(),
                    },
                );
            }
            Order::InOrder => {
                self.process(ctx, channel, seq, payload, fragment);
                loop {
                    let rx = self.channel(ctx.dir, channel);
                    let next = seq_after(rx.next);
                    rx.next = Some(next);
                    let Some(held) = rx.held.remove(&next) else {
                        break;
                    };
                    rx.held_bytes -= held.data.len();
                    self.process(ctx, channel, next, &held.data, held.fragment);
                }
            }
            Order::Duplicate | Order::BeyondWindow => {}
        }
    }

    /// Processes a reliable payload in sequence order: reassembles fragments and
    /// delivers complete payloads.
    fn process(&mut self, ctx: Ctx, channel: u8, seq: u64, payload: &[u8], fragment: bool) {
        let max_message = self.opts.max_message;
        let rx = self.channel(ctx.dir, channel);
        if !fragment {
            if let Some(r) = rx.reassembly.take() {
                let reason = format!(
                    "whole reliable packet while a {}-byte message was being reassembled ({} bytes in); the partial message is dropped",
                    r.total,
                    r.buf.len()
                );
                self.malformed(ctx, payload.len(), 0, reason);
            }
            return self.deliver_payload(ctx, channel, seq, payload, 1);
        }
        let Some(r) = rx.reassembly.as_mut() else {
            let [a, b, c, d, chunk @ ..] = payload else {
                return self.malformed(
                    ctx,
                    payload.len(),
                    0,
                    "first fragment shorter than its 4-byte length",
                );
            };
            let total = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            if total == 0 || chunk.len() > total || total > max_message {
                let reason = format!(
                    "first fragment declares {total} bytes (chunk {}, limit {max_message})",
                    chunk.len()
                );
                return self.malformed(ctx, payload.len(), 0, reason);
            }
            if chunk.len() == total {
                return self.deliver_payload(ctx, channel, seq, chunk, 1);
            }
            let mut buf = Vec::with_capacity(total.min(1 << 20));
            buf.extend_from_slice(chunk);
            rx.reassembly = Some(Reassembly {
                total,
                buf,
                pieces: 1,
            });
            return;
        };
        if r.buf.len() + payload.len() > r.total {
            let reason = format!(
                "fragment overruns its {}-byte message ({} bytes in, {} more)",
                r.total,
                r.buf.len(),
                payload.len()
            );
            rx.reassembly = None;
            return self.malformed(ctx, payload.len(), 0, reason);
        }
        r.buf.extend_from_slice(payload);
        r.pieces += 1;
        if r.buf.len() == r.total {
            let done = rx.reassembly.take().unwrap_or_else(|| Reassembly {
                total: 0,
                buf: Vec::new(),
                pieces: 0,
            });
            self.deliver_payload(ctx, channel, seq, &done.buf, done.pieces);
        }
    }

    fn deliver_payload(&mut self, ctx: Ctx, channel: u8, seq: u64, payload: &[u8], pieces: u32) {
        if payload.len() > 2 && payload.starts_with(&DATA_BUNDLE_HEADER) {
            for item in DataBundle::new(&payload[2..]).iter() {
                match item {
                    Ok(item) => self.reliable_message(ctx, channel, seq, item, pieces, true),
                    Err(_) => {
                        return self.malformed(
                            ctx,
                            payload.len(),
                            1,
                            "data bundle in reliable data: bad length prefix",
                        );
                    }
                }
            }
        } else {
            self.reliable_message(ctx, channel, seq, payload, pieces, false);
        }
    }

    fn reliable_message(
        &mut self,
        ctx: Ctx,
        channel: u8,
        seq: u64,
        item: &[u8],
        pieces: u32,
        bundled: bool,
    ) {
        let unescape_always = self.opts.unescape_always;
        let rx = self.channel(ctx.dir, channel);
        let escaped = item.len() > 1 && item[0] == 0;
        let body = if escaped && (rx.cipher.is_some() || unescape_always) {
            &item[1..]
        } else {
            item
        };
        match rx.cipher.as_mut() {
            Some(cipher) => {
                let mut plain = body.to_vec();
                cipher.apply(&mut plain);
                let ch = MessageChannel::Reliable(channel);
                self.message(ctx, ch, &plain, Some(seq), pieces, bundled, true);
            }
            None => {
                let ch = MessageChannel::Reliable(channel);
                self.message(ctx, ch, body, Some(seq), pieces, bundled, false);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn message(
        &mut self,
        ctx: Ctx,
        channel: MessageChannel,
        data: &[u8],
        seq: Option<u64>,
        fragments: u32,
        bundled: bool,
        decrypted: bool,
    ) {
        let stats = self.stats(ctx.dir);
        stats.messages += 1;
        stats.message_bytes += data.len() as u64;
        stats.bundled_messages += u64::from(bundled);
        stats.fragmented_messages += u64::from(fragments > 1);
        stats.unreliable_messages += u64::from(!matches!(channel, MessageChannel::Reliable(_)));
        let preview = data[..data.len().min(self.opts.preview_len)].to_vec();
        self.emit(
            ctx,
            EventKind::Message(MessageEvent {
                channel,
                len: data.len(),
                preview,
                seq,
                fragments,
                bundled,
                decrypted,
                depth: self.depth,
            }),
        );
    }

    /// The session's totals; what is still held or half reassembled is listed as
    /// incomplete.
    pub fn summary(&self) -> SessionSummary {
        let mut incomplete = Vec::new();
        for (dir, half) in [Direction::ClientToServer, Direction::ServerToClient]
            .into_iter()
            .zip(&self.halves)
        {
            for (ch, rx) in half.channels.iter().enumerate() {
                let Some(rx) = rx else { continue };
                if let (Some(first), Some(next)) = (rx.held.keys().next(), rx.next) {
                    incomplete.push(format!(
                        "{} reliable:{ch}: {} packets held from sequence {first}, never delivered: sequences {next}..{first} missing",
                        dir.as_str(),
                        rx.held.len(),
                    ));
                }
                if let Some(r) = &rx.reassembly {
                    incomplete.push(format!(
                        "{} reliable:{ch}: a {}-byte message stopped after {} bytes",
                        dir.as_str(),
                        r.total,
                        r.buf.len()
                    ));
                }
            }
        }
        SessionSummary {
            client: self.client,
            server: self.server,
            handshake: self.request_id.is_some() && self.response.is_some(),
            session_id: self
                .request_id
                .or(self.response.as_ref().map(|r| r.session_id)),
            protocol_version: self.protocol_version,
            application_protocol: self.application_protocol.clone(),
            crc_length: self.framing.crc_length(),
            crc_seed: self.framing.crc_seed(),
            compression: self.framing.compression(),
            duration: self.last.seconds_since(self.start),
            c2s: self.halves[0].stats,
            s2c: self.halves[1].stats,
            disconnect: self.disconnect,
            incomplete,
        }
    }

    /// Appends the session's [`EventKind::Summary`] to `out`.
    pub fn finish(&self, out: &mut Vec<Event>) {
        out.push(Event {
            session: self.id,
            time: self.last,
            offset: self.last.seconds_since(self.start),
            dir: None,
            kind: EventKind::Summary(Box::new(self.summary())),
        });
    }
}

fn seq_after(next: Option<u64>) -> u64 {
    next.map_or(0, |n| n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DirStats;
    use crate::test_support::hex;

    const C2S: Direction = Direction::ClientToServer;
    const S2C: Direction = Direction::ServerToClient;

    fn decoder(opts: DecodeOptions) -> SessionDecoder {
        let c = "10.0.0.2:40000".parse().unwrap();
        let s = "10.0.0.1:20260".parse().unwrap();
        SessionDecoder::new(1, c, s, Timestamp::default(), true, opts)
    }

    fn feed(d: &mut SessionDecoder, dir: Direction, bytes: &[u8]) -> Vec<EventKind> {
        let mut out = Vec::new();
        d.datagram(Timestamp::default(), dir, bytes, &mut out);
        out.into_iter().map(|e| e.kind).collect()
    }

    fn messages(events: &[EventKind]) -> Vec<MessageEvent> {
        events
            .iter()
            .filter_map(|e| match e {
                EventKind::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn infos(events: &[EventKind]) -> Vec<PacketInfo> {
        events
            .iter()
            .filter_map(|e| match e {
                EventKind::Packet(p) => Some(p.info.clone()),
                _ => None,
            })
            .collect()
    }

    /// V5 request and V6 response (compression byte as given).
    fn handshake(d: &mut SessionDecoder, compression: u8) {
        let req = hex("00 01 00 00 00 03 3c 17 8c 63 00 00 02 00 4c 6f 67 69 6e 55 64 70 5f 39 00");
        let events = feed(d, C2S, &req);
        assert_eq!(
            infos(&events),
            [PacketInfo::SessionRequest {
                version: 3,
                session_id: 0x3C17_8C63,
                udp_length: 512,
                protocol: Some("LoginUdp_9".into()),
                retry: false,
            }]
        );
        let mut resp = hex("00 02 3c 17 8c 63 00 00 00 00 02 01 00 00 00 02 00 00 00 00 03");
        resp[11] = compression;
        let events = feed(d, S2C, &resp);
        assert!(matches!(
            infos(&events)[..],
            [PacketInfo::SessionResponse {
                crc_seed: 0,
                crc_length: 2,
                version: Some(3),
                ..
            }]
        ));
        assert!(d.summary().handshake);
    }

    /// A UdpLibrary session whose response names XorBuffer and Xor (bytes 11 and
    /// 12 of the 17-byte form): its datagrams are decrypted before they are read.
    #[test]
    fn udp_library_xor_passes_are_undone() {
        let mut d = decoder(DecodeOptions {
            pass_codes: PassCodes::UdpLibrary,
            ..DecodeOptions::default()
        });
        feed(
            &mut d,
            C2S,
            &hex("00 01 00 00 00 02 3c 17 8c 63 00 00 02 00"),
        );
        let seed = 0x1234_5678;
        let resp = hex("00 02 3c 17 8c 63 12 34 56 78 02 03 04 00 00 02 00");
        assert!(matches!(
            infos(&feed(&mut d, S2C, &resp))[..],
            [PacketInfo::SessionResponse { crc_seed, .. }] if crc_seed == seed
        ));
        // What the client sends: a reliable message, encrypted, then sealed.
        let passes = Passes::new(
            [EncryptMethod::XorBuffer, EncryptMethod::Xor],
            [None, None],
            PassContext::new(0x3C17_8C63, seed),
            512,
        )
        .unwrap()
        .unwrap();
        let mut datagram = hex("00 09 00 00 68 65 6c 6c 6f 20 77 6f 72 6c 64");
        let plain = datagram.clone();
        passes.encrypt(&mut datagram, 0, &mut PassBuffers::new(), None);
        assert_ne!(datagram, plain);
        let framing = Framing::new(seed, 2, false);
        let len = datagram.len();
        datagram.resize(len + 2, 0);
        framing.seal(&mut datagram, len);
        let events = feed(&mut d, C2S, &datagram);
        let got = messages(&events);
        assert_eq!(got.len(), 1, "{events:?}");
        assert_eq!(got[0].len, 11);
        assert_eq!(d.summary().c2s.malformed, 0);
    }

    #[test]
    fn v9_acks_and_crc_mismatch() {
        let mut d = decoder(DecodeOptions::default());
        handshake(&mut d, 0);
        let events = feed(&mut d, S2C, &hex("00 15 00 01 8e 64"));
        assert_eq!(
            infos(&events),
            [PacketInfo::Ack {
                channel: 0,
                seq: 1,
                all: true
            }]
        );
        let events = feed(&mut d, S2C, &hex("00 11 00 01 26 b8"));
        assert_eq!(
            infos(&events),
            [PacketInfo::Ack {
                channel: 0,
                seq: 1,
                all: false
            }]
        );
        let events = feed(&mut d, S2C, &hex("00 11 00 01 8e 64"));
        assert_eq!(
            events,
            [EventKind::CrcMismatch {
                len: 6,
                expected: 0x26B8,
                found: 0x8E64
            }]
        );
        let s = d.summary();
        assert_eq!(
            (s.s2c.acks, s.s2c.ack_alls, s.s2c.crc_mismatches),
            (1, 1, 1)
        );
    }

    #[test]
    fn v12_multi_with_ack_and_bundle_then_v10_out_of_order() {
        let mut d = decoder(DecodeOptions::default());
        handshake(&mut d, 0);
        // V10: seq 4 arrives before 0..=3: held.
        let v10 = hex(
            "00 09 00 04 fc 64 28 d1 44 f7 15 5d 12 ac 5b 44 91 35 18 9b 02 71 b3 1c d9 21 50 4c 09 eb 57 62 e9 eb dc 7c 6b 3d 3e 84 75 92 cc 5e 3c",
        );
        let events = feed(&mut d, C2S, &v10);
        assert!(matches!(
            infos(&events)[..],
            [PacketInfo::Reliable {
                seq: 4,
                seq64: Some(4),
                len: 39,
                order: Order::OutOfOrder,
                ..
            }]
        ));
        assert!(messages(&events).is_empty());
        // V12: an AckAll and ReliableData seq 1 carrying a three-item bundle; seq 0
        // is still missing, so seq 1 is held too.
        let v12 = hex(
            "00 03 04 00 15 00 ce 43 00 09 00 01 00 19 29 8d 2d bd 55 f1 40 a5 47 e4 72 51 36 05 b8 cd 68 00 7d b8 d2 4a 00 f7 98 e1 a9 66 cc 9e e9 ca e4 22 ca ee 88 1f 03 79 de 6a 0b f7 b1 8a 91 15 dd bb 24 aa 25 ab 06 20 0b b4 61 0a f6 0a 1b",
        );
        let events = feed(&mut d, C2S, &v12);
        let infos_v12 = infos(&events);
        assert_eq!(
            infos_v12[0],
            PacketInfo::MultiPacket {
                items: 2,
                form: LengthForm::OneByte
            }
        );
        assert_eq!(
            infos_v12[1],
            PacketInfo::Ack {
                channel: 0,
                seq: 206,
                all: true
            }
        );
        assert!(matches!(
            infos_v12[2],
            PacketInfo::Reliable {
                seq: 1,
                order: Order::OutOfOrder,
                ..
            }
        ));
        // V16's datagram as seq 0 fills the gap: its two items, then seq 1's three,
        // in order; seq 4 stays held behind 2 and 3.
        let mut v16 = hex("00 09 00 00 00 19 01 02 01 04 00 00");
        assert_eq!(Framing::new(0, 2, false).seal(&mut v16, 10), 12);
        let events = feed(&mut d, C2S, &v16);
        let lens: Vec<_> = messages(&events).iter().map(|m| (m.len, m.seq)).collect();
        assert_eq!(
            lens,
            [
                (1, Some(0)),
                (1, Some(0)),
                (41, Some(1)),
                (11, Some(1)),
                (6, Some(1))
            ]
        );
        assert!(messages(&events).iter().all(|m| m.bundled));
        // A retransmission of seq 1 is a duplicate.
        let events = feed(&mut d, C2S, &v12);
        assert!(matches!(
            infos(&events)[2],
            PacketInfo::Reliable {
                order: Order::Duplicate,
                ..
            }
        ));
        let s = d.summary();
        assert_eq!(
            (
                s.c2s.reliable,
                s.c2s.out_of_order,
                s.c2s.duplicates,
                s.c2s.messages
            ),
            (4, 2, 1, 5)
        );
        assert_eq!(s.incomplete.len(), 1, "{:?}", s.incomplete);
    }

    #[test]
    fn v3_rc4_decryption_strips_the_zero_prefix() {
        let key = hex("17 bd 08 6b 1b 94 f0 2f f0 ec 53 d7 63 58 9b 5f");
        let opts = DecodeOptions {
            rc4: Some(Rc4KeyState::new(&key)),
            ..DecodeOptions::default()
        };
        let mut d = decoder(opts);
        handshake(&mut d, 0);
        let v3 =
            hex("00 09 00 00 00 a9 b7 b9 43 f1 40 a4 05 8f 13 23 57 15 a3 cd 1a 53 18 d4 dc 51");
        let events = feed(&mut d, S2C, &v3);
        let m = messages(&events);
        assert_eq!(m.len(), 1);
        assert!(m[0].decrypted);
        assert_eq!(m[0].len, 19);
        assert_eq!(
            m[0].preview,
            hex("02 01 01 00 00 00 01 01 03 00 00 00 73 6f 65 00")
        );
    }

    #[test]
    fn fragments_reassemble_and_compressed_datagrams_inflate() {
        let mut d = decoder(DecodeOptions::default());
        handshake(&mut d, 1);
        let framing = Framing::new(0, 2, true);
        let seal = |cooked: &[u8], compress: bool| {
            let mut buf = vec![0u8; 4096];
            buf[..2].copy_from_slice(&cooked[..2]);
            let len = if compress {
                buf[2] = 1;
                let n = soe_uring::protocol::Compressor::new(6)
                    .compress(&cooked[2..], &mut buf[3..4000])
                    .unwrap();
                3 + n
            } else {
                buf[2] = 0;
                buf[3..3 + cooked.len() - 2].copy_from_slice(&cooked[2..]);
                cooked.len() + 1
            };
            let n = framing.seal(&mut buf, len);
            buf.truncate(n);
            buf
        };
        // A 40-byte message in two fragments: 4-byte total + 25 bytes, then 15.
        let message: Vec<u8> = (0..40u8).collect();
        let mut first = vec![0x00, 0x0D, 0x00, 0x00, 0, 0, 0, 40];
        first.extend_from_slice(&message[..25]);
        let mut second = vec![0x00, 0x0D, 0x00, 0x01];
        second.extend_from_slice(&message[25..]);
        let events = feed(&mut d, C2S, &seal(&first, true));
        assert!(matches!(
            &events[0],
            EventKind::Packet(PacketEvent {
                inflated_len: Some(31),
                info: PacketInfo::Reliable {
                    fragment: true,
                    total: Some(40),
                    ..
                },
                ..
            })
        ));
        assert!(messages(&events).is_empty());
        let events = feed(&mut d, C2S, &seal(&second, false));
        let m = messages(&events);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].len, m[0].fragments, m[0].seq), (40, 2, Some(1)));
        assert_eq!(m[0].preview, message[..16]);
        let s = d.summary();
        assert_eq!(
            s.c2s,
            DirStats {
                // The SessionRequest, then the two fragments.
                datagrams: 3,
                bytes: s.c2s.bytes,
                compressed: 1,
                reliable: 2,
                fragments: 2,
                messages: 1,
                message_bytes: 40,
                fragmented_messages: 1,
                ..DirStats::default()
            }
        );
    }

    #[test]
    fn one_byte_multi_lengths_are_detected() {
        let mut d = decoder(DecodeOptions {
            crc_length: 0,
            ..DecodeOptions::default()
        });
        // No handshake: CRC length 0 from the options. A 255-byte unreliable
        // sub-packet behind a plain `FF` (UdpLibrary), then a heartbeat.
        let mut multi = vec![0x00, 0x03, 0xFF];
        multi.extend((0..255).map(|i| 1 + (i % 100) as u8));
        multi.extend_from_slice(&[0x02, 0x00, 0x06]);
        let events = feed(&mut d, S2C, &multi);
        let i = infos(&events);
        assert_eq!(
            i,
            [
                PacketInfo::MultiPacket {
                    items: 2,
                    form: LengthForm::OneByte
                },
                PacketInfo::Unreliable { len: 255 },
                PacketInfo::Heartbeat
            ]
        );
        // Forced to varint it cannot split.
        let mut d = decoder(DecodeOptions {
            crc_length: 0,
            multi_length: LengthPolicy::Fixed(LengthForm::Varint),
            ..DecodeOptions::default()
        });
        let events = feed(&mut d, S2C, &multi);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, EventKind::Malformed { .. }))
        );
    }

    #[test]
    fn malformed_input_never_panics() {
        let mut d = decoder(DecodeOptions {
            crc_length: 0,
            ..DecodeOptions::default()
        });
        let samples = [
            hex(""),
            hex("00"),
            hex("00 04"),
            hex("00 09 00"),
            hex("00 0d 00 00 ab"),
            hex("00 0d 00 01 00 00 00 00"),
            hex("00 03 0a 00 06"),
            hex("00 19 ff ff ff"),
            hex("00 09 00 00 00 19 ff"),
            hex("00 05 00"),
            hex("00 07 00 00"),
        ];
        for s in &samples {
            let _ = feed(&mut d, C2S, s);
        }
        // Every prefix and a byte flip of a few real packets, under every CRC length.
        let v12 = hex(
            "00 03 04 00 15 00 ce 43 00 09 00 01 00 19 29 8d 2d bd 55 f1 40 a5 47 e4 72 51 36 05 b8 cd 68 00 7d b8 d2 4a 00 f7 98 e1 a9 66 cc 9e e9 ca e4 22 ca ee 88 1f 03 79 de 6a 0b f7 b1 8a 91 15 dd bb 24 aa 25 ab 06 20 0b b4 61 0a f6",
        );
        for crc_length in 0..=4 {
            for compression in [false, true] {
                let mut d = decoder(DecodeOptions {
                    crc_length,
                    compression,
                    ..DecodeOptions::default()
                });
                for len in 0..v12.len() {
                    let _ = feed(&mut d, C2S, &v12[..len]);
                    let mut flipped = v12.clone();
                    flipped[len] ^= 0xA5;
                    let _ = feed(&mut d, S2C, &flipped);
                }
            }
        }
        let s = d.summary();
        assert!(s.c2s.malformed > 0);
    }
}
