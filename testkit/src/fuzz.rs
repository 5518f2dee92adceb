//! Bodies of the fuzz targets.
//!
//! Each `pub fn name(data: &[u8])` here is one target. `fuzz/fuzz_targets/<name>.rs`
//! hands it libFuzzer's input; `testkit/tests/fuzz_smoke.rs` runs it on the seeds and on
//! pseudo-random inputs with stable Rust. A target panics only when it has found a
//! bug: a panic inside the library, or a broken invariant (the `assert!`s below).
//!

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::peer::{framing_of, read_as_peer, with_crc};
use soe_uring::protocol::{
    Compressor, DataBundle, DecodeError, Decompressor, DisconnectReason, EncryptMethod, FrameError,
    Framing, InflateError, MultiPacket, OpCode, Packet, PassBuffers, PassContext, Passes,
    Rc4KeyState, SessionRequest, SessionResponse, Unframed,
};
use soe_uring::{
    Channel, MultiLength, SessionMode, SessionState, SocketConfig, SocketEvent, SoeMultiplexer,
    ZeroEscape,
};

/// Reads fuzz input front to back; past the end every read yields zeros.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    fn rest(&mut self) -> &'a [u8] {
        self.take(self.0.len())
    }

    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        let mut raw = [0u8; 2];
        let got = self.take(2);
        raw[..got.len()].copy_from_slice(got);
        u16::from_be_bytes(raw)
    }

    fn u32(&mut self) -> u32 {
        let mut raw = [0u8; 4];
        let got = self.take(4);
        raw[..got.len()].copy_from_slice(got);
        u32::from_be_bytes(raw)
    }
}

// ---------------------------------------------------------------------------------
// packet
// ---------------------------------------------------------------------------------

/// How deep the packet target descends into multi-packets, bundles and payloads.
const MAX_DEPTH: u8 = 4;

/// `Packet::parse` on arbitrary bytes. Whatever parses must re-emit into exactly
/// `encoded_len()` bytes that parse back to an equal packet; multi-packet sub-packets
/// and bundle items are iterated, parsed and checked the same way, and their
/// containers rebuilt with the varint writers. The input read as `type byte ++ body`
/// goes through `Packet::parse_contextual` too.
pub fn packet(data: &[u8]) {
    check_cooked(data, 0);
    if let Some((&ty, body)) = data.split_first()
        && let Some(op) = OpCode::from_type_byte(ty)
        && let Ok(p) = Packet::parse_contextual(op, body)
    {
        assert!(
            !op.is_contextless() && op != OpCode::ZeroEscape,
            "parse_contextual accepted {op:?}"
        );
        assert_eq!(p.op_code(), Some(op));
        let bytes = round_trip(&p);
        assert_eq!(bytes[..2], [0, ty], "emitted op code differs");
        descend(&p, 0);
    }
}

fn check_cooked(bytes: &[u8], depth: u8) {
    let Ok(p) = Packet::parse(bytes) else {
        return;
    };
    match p {
        Packet::Application(d) => {
            assert_eq!(d, bytes);
            assert!(bytes[0] != 0 || bytes.len() == 1);
        }
        Packet::ZeroEscaped(d) => assert_eq!(d, &bytes[1..]),
        _ => assert_eq!(p.op_code().map(OpCode::to_bytes), Some([0, bytes[1]])),
    }
    round_trip(&p);
    descend(&p, depth);
}

/// Emits `p`, checks the length and the re-parse, and returns the bytes.
fn round_trip(p: &Packet<'_>) -> Vec<u8> {
    let len = p.encoded_len();
    // Emit into a larger buffer: nothing past `len` may be touched.
    let mut out = vec![0xA5u8; len + 8];
    assert_eq!(p.emit(&mut out), len, "emit() != encoded_len() for {p:?}");
    assert!(
        out[len..].iter().all(|&b| b == 0xA5),
        "emit wrote past encoded_len"
    );
    out.truncate(len);
    let back = Packet::parse(&out).unwrap_or_else(|e| panic!("emitted {p:?} does not parse: {e}"));
    assert_eq!(back, *p, "parse(emit(p)) != p");
    out
}

fn descend(p: &Packet<'_>, depth: u8) {
    if depth >= MAX_DEPTH {
        return;
    }
    match *p {
        Packet::MultiPacket(multi) => {
            let (subs, failed) = collect_items(multi.iter());
            let mut rebuilt = Vec::new();
            let mut prefix = [0u8; MultiPacket::MAX_PREFIX_LEN];
            for sub in &subs {
                assert!(!sub.is_empty(), "empty multi-packet sub-packet");
                check_cooked(sub, depth + 1);
                let n = MultiPacket::write_prefix(sub.len() as u32, sub[0], &mut prefix);
                rebuilt.extend_from_slice(&prefix[..n]);
                rebuilt.extend_from_slice(sub);
            }
            let (again, bad) = collect_items(MultiPacket::new(&rebuilt).iter());
            assert!(!bad, "rebuilt multi-packet does not iterate");
            assert_eq!(again, subs, "rebuilt multi-packet differs");
            if !failed {
                assert_eq!(multi.iter().count(), subs.len());
            }
        }
        Packet::DataBundle(bundle) => {
            let (items, _) = collect_items(bundle.iter());
            let mut rebuilt = Vec::new();
            let mut prefix = [0u8; DataBundle::MAX_PREFIX_LEN];
            for item in &items {
                check_cooked(item, depth + 1);
                let n = DataBundle::write_prefix(item.len() as u32, &mut prefix);
                rebuilt.extend_from_slice(&prefix[..n]);
                rebuilt.extend_from_slice(item);
            }
            let (again, bad) = collect_items(DataBundle::new(&rebuilt).iter());
            assert!(!bad, "rebuilt bundle does not iterate");
            assert_eq!(again, items, "rebuilt bundle differs");
        }
        // A reliable payload is application data or a bundle (`00 19 …`).
        Packet::ReliableData { payload, .. } => check_cooked(payload, depth + 1),
        _ => {}
    }
}

/// Collects container items up to the first error; checks the iterator stops there.
fn collect_items<'a>(
    mut iter: impl Iterator<Item = Result<&'a [u8], DecodeError>>,
) -> (Vec<&'a [u8]>, bool) {
    let mut items = Vec::new();
    loop {
        match iter.next() {
            None => return (items, false),
            Some(Ok(item)) => items.push(item),
            Some(Err(e)) => {
                assert_eq!(e, DecodeError::BadLength);
                assert!(
                    iter.next().is_none(),
                    "container iterator went on after an error"
                );
                return (items, true);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// frame
// ---------------------------------------------------------------------------------

/// `Framing::unframe` under a framing taken from the first bytes (flags: CRC length
/// `0..=4` and compression; then a 4-byte CRC seed); the rest is the datagram. What
/// unframes is checked against the datagram's layout. The rest is then sealed with
/// `Framing::seal` and must unframe to exactly what its layout says, and fail the
/// CRC with a corrupted trailer. Flag bits 3–6 also pick encryption passes, under
/// which `Framing::open` must never panic and must read an encrypted, sealed
/// datagram as `unframe` reads the plain one.
pub fn frame(data: &[u8]) {
    let mut input = Cursor(data);
    let flags = input.u8();
    let crc_length = flags % 5;
    let compression = flags & 0x80 != 0;
    let seed = input.u32();
    let datagram = input.rest();
    let framing = Framing::new(seed, crc_length, compression);
    assert_eq!(framing.crc_length(), crc_length);
    assert_eq!(framing.crc_seed(), seed);
    assert_eq!(
        framing.overhead(),
        usize::from(crc_length) + usize::from(compression)
    );

    if let Ok(unframed) = framing.unframe(datagram) {
        check_unframed(&framing, datagram, unframed);
    }
    frame_with_passes(&framing, usize::from(flags >> 3) & 0x0F, datagram);

    // Sealed prefixes of one or two bytes: shorter than what an op code needs once
    // the CRC is stripped, but a peer that knows the seed can send them.
    for k in 1..=datagram.len().min(2) {
        let mut short = datagram[..k].to_vec();
        short.resize(k + usize::from(crc_length), 0);
        framing.seal(&mut short, k);
        if let Ok(unframed) = framing.unframe(&short) {
            check_unframed(&framing, &short, unframed);
        }
    }

    // Seal round trip: the input as a cooked datagram.
    if datagram.is_empty() || (datagram == [0] && crc_length > 0) {
        // A lone `00` followed by CRC bytes reads as an op code (covered above).
        return;
    }
    let n = datagram.len();
    let mut sealed = datagram.to_vec();
    sealed.resize(n + usize::from(crc_length), 0);
    assert_eq!(framing.seal(&mut sealed, n), sealed.len());
    assert_eq!(&sealed[..n], datagram, "seal changed the body");
    let expected = expected_unframe(&framing, datagram, &sealed);
    assert_eq!(framing.unframe(&sealed), expected, "sealed datagram");
    let crc_checked = matches!(
        expected,
        Ok(Unframed::Application(_) | Unframed::Contextual { .. }) | Err(FrameError::TooShort)
    );
    if crc_checked && crc_length > 0 {
        let last = sealed.len() - 1;
        sealed[last] ^= 0x01;
        assert_eq!(
            framing.unframe(&sealed),
            Err(FrameError::CrcMismatch),
            "a corrupted CRC trailer was accepted"
        );
    }
}

/// Pairs of passes the `frame` target picks from.
const PASS_PAIRS: [[EncryptMethod; 2]; 8] = {
    use EncryptMethod::{Compression, None, Xor, XorBuffer};
    [
        [Xor, None],
        [XorBuffer, None],
        [Compression, None],
        [None, Xor],
        [Compression, Xor],
        [Xor, Compression],
        [XorBuffer, Xor],
        [None, None],
    ]
};

/// An owned copy of what a datagram unframes to.
fn owned(
    u: Result<Unframed<'_>, FrameError>,
) -> Result<(u8, Option<OpCode>, bool, Vec<u8>), FrameError> {
    u.map(|u| match u {
        Unframed::Contextless(op, bytes) => (0, Some(op), false, bytes.to_vec()),
        Unframed::Application(data) => (1, None, false, data.to_vec()),
        Unframed::Contextual {
            op,
            compressed,
            body,
        } => (2, Some(op), compressed, body.to_vec()),
    })
}

/// `frame` under encryption passes: arbitrary input never panics `open`, and the
/// input as a cooked datagram, encrypted and sealed, opens to what its plain form
/// unframes to.
fn frame_with_passes(plain: &Framing, pick: usize, datagram: &[u8]) {
    let methods = PASS_PAIRS[pick % PASS_PAIRS.len()];
    let context = PassContext::new(1, plain.crc_seed());
    let Ok(Some(passes)) = Passes::new(methods, [None, None], context, 512) else {
        return;
    };
    let framing = plain.clone().with_passes(Some(passes));
    assert_eq!(framing.overhead(), plain.overhead() + framing.expansion());
    let mut out = Vec::new();
    let mut scratch = PassBuffers::new();
    let mut inflater = Decompressor::new();
    let _ = framing.open(datagram, &mut out, &mut scratch, &mut inflater, 1024);

    let contextless = matches!(datagram, [0, ty, ..]
        if OpCode::from_type_byte(*ty).is_some_and(OpCode::is_contextless));
    // A lone `00` is no packet a sender makes (application data starting with
    // `00` is escaped): a pass's flag byte after it would read as an op code.
    if datagram.is_empty() || datagram == [0] || contextless || datagram.len() > 400 {
        return;
    }
    let crc_length = usize::from(plain.crc_length());
    let mut sealed = datagram.to_vec();
    sealed.resize(datagram.len() + crc_length, 0);
    plain.seal(&mut sealed, datagram.len());
    let expected = owned(plain.unframe(&sealed));
    let mut encrypted = datagram.to_vec();
    let passes = framing.passes().expect("just set");
    passes.encrypt(&mut encrypted, 0, &mut scratch, None);
    assert!(encrypted.len() <= datagram.len() + passes.expansion());
    let n = encrypted.len();
    encrypted.resize(n + crc_length, 0);
    framing.seal(&mut encrypted, n);
    let got = owned(framing.open(&encrypted, &mut out, &mut scratch, &mut inflater, 1024));
    assert_eq!(got, expected, "encrypted {encrypted:02x?}");
}

/// What unframing `sealed` (= `cooked` ++ CRC) must give.
fn expected_unframe<'a>(
    framing: &Framing,
    cooked: &'a [u8],
    sealed: &'a [u8],
) -> Result<Unframed<'a>, FrameError> {
    let (first, ty) = (cooked[0], sealed.get(1).copied());
    let Some(ty) = ty.filter(|_| first == 0) else {
        return Ok(Unframed::Application(cooked));
    };
    let op = OpCode::from_type_byte(ty).ok_or(FrameError::UnknownOpCode(ty))?;
    if op.is_contextless() {
        return Ok(Unframed::Contextless(op, sealed));
    }
    Ok(match op {
        OpCode::ZeroEscape => Unframed::Application(&cooked[1..]),
        _ if framing.compression() => match cooked.get(2) {
            Some(&flag) => Unframed::Contextual {
                op,
                compressed: flag != 0,
                body: &cooked[3..],
            },
            None => return Err(FrameError::TooShort),
        },
        _ => Unframed::Contextual {
            op,
            compressed: false,
            body: &cooked[2..],
        },
    })
}

/// Structural checks of a successful `unframe` of an arbitrary datagram.
fn check_unframed(framing: &Framing, datagram: &[u8], unframed: Unframed<'_>) {
    let crc_len = usize::from(framing.crc_length());
    if let Unframed::Contextless(op, bytes) = unframed {
        assert!(op.is_contextless());
        assert_eq!(bytes, datagram);
        assert_eq!(datagram[..2], op.to_bytes());
        return;
    }
    let cooked = framing
        .crc()
        .verify(datagram, framing.crc_length())
        .expect("unframe accepted a datagram whose CRC does not verify");
    assert_eq!(cooked.len(), datagram.len() - crc_len);
    match unframed {
        Unframed::Contextless(..) => unreachable!(),
        Unframed::Application(body) => {
            assert!(!body.is_empty(), "empty application body");
            if datagram[0] == 0 && datagram.len() > 1 {
                assert_eq!(datagram[1], 0, "application data from an op code");
                assert_eq!(body, &cooked[1..]);
            } else {
                assert_eq!(body, cooked);
            }
        }
        Unframed::Contextual {
            op,
            compressed,
            body,
        } => {
            assert!(!op.is_contextless() && op != OpCode::ZeroEscape);
            assert_eq!(datagram[..2], op.to_bytes());
            let flag = framing.compression();
            let start = 2 + usize::from(flag);
            assert_eq!(body, &cooked[start..]);
            assert_eq!(compressed, flag && cooked[2] != 0);
        }
    }
}

// ---------------------------------------------------------------------------------
// inflate
// ---------------------------------------------------------------------------------

/// The inflate target's output cap.
const INFLATE_CAP: usize = 4096;

/// `Decompressor::inflate` on arbitrary bytes with a cap of 4096: the output never
/// exceeds the cap, bytes already in the buffer are kept, and the result agrees
/// with runs under other caps on the same (reused) inflater. Then a
/// `Compressor` → `Decompressor` round trip of the input at a level from its
/// first byte, also with trailing garbage and with a cap one byte too small.
pub fn inflate(data: &[u8]) {
    const KEEP: [u8; 3] = [0xA5, 0x5A, 0xA5];
    // Cap overruns are collected and reported last, so that the other checks still
    // run on inputs that cause one.
    let mut overruns = Vec::new();
    let mut d = Decompressor::new();
    let mut out = KEEP.to_vec();
    let outcome = d.inflate(data, &mut out, INFLATE_CAP);
    if out.len() > KEEP.len() + INFLATE_CAP {
        overruns.push((out.len() - KEEP.len(), INFLATE_CAP));
    }
    assert_eq!(out[..KEEP.len()], KEEP, "inflate overwrote existing output");
    let mut again = Vec::new();
    match outcome {
        Ok(()) => {
            let produced = out.len() - KEEP.len();
            assert_eq!(d.inflate(data, &mut again, produced), Ok(()));
            assert_eq!(again, out[KEEP.len()..], "inflate is not deterministic");
            if produced > 0 {
                again.clear();
                assert_eq!(
                    d.inflate(data, &mut again, produced - 1),
                    Err(InflateError::TooLarge)
                );
                if again.len() > produced - 1 {
                    overruns.push((again.len(), produced - 1));
                }
            }
        }
        Err(InflateError::TooLarge) => {
            let cap = usize::from(data.first().copied().unwrap_or(0)) * 8;
            assert_eq!(
                d.inflate(data, &mut again, cap),
                Err(InflateError::TooLarge)
            );
            if again.len() > cap {
                overruns.push((again.len(), cap));
            }
        }
        Err(InflateError::Corrupt) => {}
        Err(e) => panic!("an inflate error this target does not know: {e}"),
    }

    // Round trip.
    let level = data.first().map_or(6, |b| u32::from(b % 10));
    let mut c = Compressor::new(level);
    let mut packed = vec![0u8; data.len() + data.len() / 64 + 64];
    let n = c
        .compress(data, &mut packed)
        .expect("zlib output fits its worst-case bound");
    let mut repacked = vec![0u8; packed.len()];
    assert_eq!(
        c.compress(data, &mut repacked),
        Some(n),
        "compressor state leaked"
    );
    assert_eq!(repacked[..n], packed[..n]);
    let mut stream = packed[..n].to_vec();
    again.clear();
    assert_eq!(d.inflate(&stream, &mut again, data.len()), Ok(()));
    assert_eq!(again, data, "compress/inflate round trip");
    stream.extend_from_slice(&data[..data.len().min(16)]);
    again.clear();
    assert_eq!(d.inflate(&stream, &mut again, data.len()), Ok(()));
    assert_eq!(again, data, "bytes after the stream end changed the output");
    if !data.is_empty() {
        again.clear();
        assert_eq!(
            d.inflate(&packed[..n], &mut again, data.len() - 1),
            Err(InflateError::TooLarge)
        );
        if again.len() > data.len() - 1 {
            overruns.push((again.len(), data.len() - 1));
        }
    }
    if let Some((len, cap)) = overruns.first() {
        panic!("inflate cap overrun: {len} bytes appended with a cap of {cap}");
    }
}

// ---------------------------------------------------------------------------------
// session / client_session
// ---------------------------------------------------------------------------------

/// The application protocol name both sides of the harness use.
const PROTOCOL: &str = "FuzzProto";
/// Per-channel reassembly cap of the multiplexer under test.
const MAX_REASSEMBLY: usize = 64 << 10;
/// Inflated-packet cap of the multiplexer under test.
const MAX_INFLATED: usize = 4096;
/// Pending-bytes cap of the multiplexer under test.
const MAX_PENDING: usize = 64 << 10;
/// Most input chunks one run feeds.
const MAX_STEPS: usize = 512;
/// udp_length values a handshake may advertise.
const UDP_LENGTHS: [u32; 8] = [512, 64, 0, 100, 496, 1500, 65_535, u32::MAX];

fn addr(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(a, b, c, d), port))
}

/// The one clock read of the harness: virtual time counts from it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        // The harness drives a virtual clock; this arbitrary origin is its only read.
        #[allow(clippy::disallowed_methods)]
        let origin = Instant::now();
        origin
    })
}

/// A configuration chosen by two flag bytes, with small caps and a fixed RNG seed.
fn fuzz_config(flags: [u8; 2]) -> SocketConfig {
    let [a, b] = flags;
    let mut config = SocketConfig {
        rng_seed: Some(0x5EED_0000 | u64::from(a) << 8 | u64::from(b)),
        allow_port_remaps: a & 0x40 != 0,
        reply_unknown_sender: a & 0x80 != 0,
        max_sessions: 8,
        max_half_open_sessions: 2,
        ..SocketConfig::default()
    };
    if a & 0x10 != 0 {
        config.app_params.encryption_key_state = Some(Rc4KeyState::new(b"fuzzing key"));
    }
    let p = &mut config.default_session_params;
    p.application_protocol = PROTOCOL.into();
    p.crc_length = a % 5;
    p.is_compression_enabled = a & 0x08 != 0;
    if a & 0x20 != 0 {
        p.zero_escape = ZeroEscape::Always;
    }
    p.acknowledge_all_data = b & 0x01 != 0;
    p.coalesce = b & 0x02 == 0;
    if b & 0x04 != 0 {
        p.multi_length = MultiLength::OneByte;
    }
    p.coalesce_unreliable = b & 0x08 != 0;
    p.compress_outgoing = b & 0x10 == 0;
    if b & 0x20 != 0 {
        p.protocol_version = 2;
    }
    if b & 0x40 != 0 {
        p.udp_length = 128;
    }
    if b & 0x80 != 0 {
        p.compress_min_len = 0;
    }
    p.max_queued_incoming_reliable = 32;
    p.max_queued_outgoing_reliable = 16;
    p.max_reassembly_len = MAX_REASSEMBLY;
    p.max_inflated_len = MAX_INFLATED;
    p.max_pending_bytes = MAX_PENDING;
    config
}

/// Drives one multiplexer with virtual time and checks every output.
struct Harness {
    mux: SoeMultiplexer<SocketAddr>,
    /// The legitimate peer's current address.
    peer: SocketAddr,
    /// Another port of the peer's host (remap target).
    alt: SocketAddr,
    /// Hosts without a session.
    strangers: [SocketAddr; 2],
    now: Instant,
    max_datagram: usize,
    /// Sessions that reported `SessionOpened` and not yet `SessionClosed`.
    open: HashSet<SocketAddr>,
    /// Client sessions started with `connect` that have not opened yet.
    connecting: HashSet<SocketAddr>,
    /// Unreliable messages the application enqueued and that were not seen sent.
    unreliable: Vec<Vec<u8>>,
    opened_events: u64,
    closed_events: u64,
    decompressor: Decompressor,
    compressor: Compressor,
}

impl Harness {
    fn new(config: SocketConfig, peer: SocketAddr) -> Self {
        let max_datagram = config.default_session_params.udp_length.max(64) as usize;
        let mut alt = peer;
        alt.set_port(peer.port().wrapping_add(1));
        Self {
            mux: SoeMultiplexer::new(config),
            peer,
            alt,
            strangers: [addr(192, 0, 2, 9, 40_000), addr(198, 51, 100, 7, 1)],
            now: epoch(),
            max_datagram,
            open: HashSet::new(),
            connecting: HashSet::new(),
            unreliable: Vec::new(),
            opened_events: 0,
            closed_events: 0,
            decompressor: Decompressor::new(),
            compressor: Compressor::new(1),
        }
    }

    fn addresses(&self) -> [SocketAddr; 4] {
        [self.peer, self.alt, self.strangers[0], self.strangers[1]]
    }

    fn framings(&self) -> Vec<(SocketAddr, Framing)> {
        self.addresses()
            .into_iter()
            .filter_map(|a| framing_of(&self.mux, &a).map(|f| (a, f)))
            .collect()
    }

    /// Feeds one datagram, runs a tick, checks the results; returns what was sent.
    fn deliver(&mut self, from: SocketAddr, datagram: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        let before = self.framings();
        self.mux.process_incoming(from, datagram, self.now);
        self.mux.run_tick(self.now);
        self.settle(&before)
    }

    /// Advances the virtual clock and runs a tick.
    fn tick(&mut self, advance: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
        let before = self.framings();
        self.now += advance;
        self.mux.run_tick(self.now);
        self.settle(&before)
    }

    /// Cooked bytes sealed with the CRC of `to`'s session (unchanged without one).
    fn sealed(&self, to: &SocketAddr, cooked: &[u8]) -> Vec<u8> {
        match framing_of(&self.mux, to) {
            Some(framing) => with_crc(&framing, cooked),
            None => cooked.to_vec(),
        }
    }

    fn compression_on(&self, to: &SocketAddr) -> bool {
        framing_of(&self.mux, to).is_some_and(|f| f.compression())
    }

    /// Drains and checks outgoing datagrams and events, then the invariants.
    fn settle(&mut self, before: &[(SocketAddr, Framing)]) -> Vec<(SocketAddr, Vec<u8>)> {
        let after = self.framings();
        let mut sent = Vec::new();
        for (to, datagram) in self.mux.outgoing_iter() {
            assert!(
                datagram.len() <= self.max_datagram,
                "sent a {}-byte datagram; udp_length is {}",
                datagram.len(),
                self.max_datagram
            );
            let mut candidates = before
                .iter()
                .chain(&after)
                .filter(|(a, _)| a == to)
                .map(|(_, f)| f)
                .peekable();
            if candidates.peek().is_none() {
                // Only an UnknownSender reply goes to an address without a session.
                assert_eq!(datagram, [0, 0x1D], "datagram to {to} without a session");
            } else {
                let messages = candidates
                    .find_map(|f| read_as_peer(f, datagram, &mut self.decompressor))
                    .unwrap_or_else(|| {
                        panic!("sent a datagram the peer cannot read: {datagram:02x?}")
                    });
                for message in messages {
                    // Each unreliable message must be one the application enqueued.
                    let Some(i) = self.unreliable.iter().position(|m| *m == message) else {
                        panic!("sent an unreliable message never enqueued: {message:02x?}");
                    };
                    self.unreliable.remove(i);
                }
            }
            sent.push((*to, datagram.to_vec()));
        }
        self.mux.consume_outgoing(usize::MAX);

        while let Some(event) = self.mux.poll_event() {
            match event {
                SocketEvent::SessionOpened { remote } => {
                    self.opened_events += 1;
                    self.connecting.remove(&remote);
                    assert!(self.open.insert(remote), "{remote} opened twice");
                }
                SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } => {
                    assert!(
                        self.open.contains(&remote),
                        "data from {remote} before open"
                    );
                    assert!(
                        data.len() <= MAX_REASSEMBLY,
                        "{}-byte message over the reassembly cap",
                        data.len()
                    );
                    match channel {
                        Channel::Reliable(n) => assert!(n < 4, "channel {n}"),
                        Channel::Unreliable | Channel::Ordered => assert!(
                            data.len() <= MAX_INFLATED.max(self.max_datagram),
                            "{}-byte unreliable message",
                            data.len()
                        ),
                    }
                }
                SocketEvent::SessionClosed { remote, .. } => {
                    self.closed_events += 1;
                    assert!(
                        self.open.remove(&remote) || self.connecting.remove(&remote),
                        "{remote} closed without being open"
                    );
                }
                // `remap` moved the model's session already.
                SocketEvent::SessionRemapped { old, new } => {
                    assert!(
                        self.open.contains(&new) && !self.open.contains(&old),
                        "{old} → {new} remapped without being open"
                    );
                }
                other => panic!("an event this harness does not model: {other:?}"),
            }
        }

        let stats = self.mux.stats();
        let count = self.mux.session_count();
        assert!(
            count <= self.addresses().len(),
            "{count} sessions from 4 addresses"
        );
        assert_eq!(self.mux.remotes().count(), count);
        assert_eq!(stats.sessions_live, count as u64);
        assert!(self.mux.half_open_count() <= count);
        assert_eq!(stats.sessions_opened, self.opened_events);
        assert!(stats.sessions_closed.iter().sum::<u64>() >= self.closed_events);
        for remote in self.mux.remotes() {
            let s = self.mux.session(remote).expect("listed session exists");
            assert_ne!(
                s.state(),
                SessionState::Terminated,
                "a terminated session stays"
            );
            assert!(
                s.pending_bytes() <= MAX_PENDING,
                "pending bytes over the cap"
            );
        }
        for remote in self.open.iter().chain(&self.connecting) {
            assert!(
                self.mux.session(remote).is_some(),
                "{remote} vanished silently"
            );
        }
        sent
    }

    /// Feeds the rest of the input as chunks `ctl, len, payload[len]`. The high
    /// nibble of `ctl` advances the clock by 20 ms steps; the low nibble picks what
    /// the payload becomes (see the match).
    fn run_chunks(&mut self, input: &mut Cursor<'_>, side: SessionMode) {
        for _ in 0..MAX_STEPS {
            if input.is_empty() {
                break;
            }
            let ctl = input.u8();
            let len = usize::from(input.u8());
            let payload = input.take(len);
            let advance = Duration::from_millis(u64::from(ctl >> 4) * 20);
            if !advance.is_zero() {
                self.tick(advance);
            }
            let peer = self.peer;
            match ctl & 0x0F {
                // Arbitrary bytes with a valid CRC: most chunks reach the handlers.
                0..=3 => {
                    let d = self.sealed(&peer, payload);
                    self.deliver(peer, &d);
                }
                // A contextual packet: op code from the first byte, flag if negotiated.
                4..=6 => {
                    let (ty, body) = payload.split_first().unwrap_or((&0x06, &[]));
                    let mut cooked = vec![0, ty % 0x1F];
                    if self.compression_on(&peer) {
                        cooked.push(0);
                    }
                    cooked.extend_from_slice(body);
                    let d = self.sealed(&peer, &cooked);
                    self.deliver(peer, &d);
                }
                // The same with a zlib-compressed body.
                7 => {
                    let (ty, body) = payload.split_first().unwrap_or((&0x09, &[]));
                    let mut cooked = vec![0, ty % 0x1F];
                    if self.compression_on(&peer) {
                        cooked.push(1);
                    }
                    let at = cooked.len();
                    cooked.resize(at + body.len() + body.len() / 64 + 64, 0);
                    let n = self
                        .compressor
                        .compress(body, &mut cooked[at..])
                        .expect("fits");
                    cooked.truncate(at + n);
                    let d = self.sealed(&peer, &cooked);
                    self.deliver(peer, &d);
                }
                8 => {
                    self.deliver(peer, payload);
                }
                9 => {
                    let stranger = self.strangers[len % 2];
                    self.deliver(stranger, payload);
                }
                10 => {
                    let alt = self.alt;
                    self.deliver(alt, payload);
                }
                11 => self.remap(),
                12 => self.enqueue(payload),
                13 => {
                    self.tick(Duration::from_millis(len as u64 * 250));
                }
                14 => self.handshake_again(payload, side),
                _ => self.disconnect(payload),
            }
        }
    }

    /// A valid RemapConnection for the peer's session from the alternate port.
    fn remap(&mut self) {
        let Some(s) = self.mux.session(&self.peer) else {
            return;
        };
        let remap = soe_uring::protocol::RemapConnection {
            session_id: s.session_id(),
            crc_seed: s.crc_seed(),
        };
        let mut bytes = [0u8; soe_uring::protocol::RemapConnection::LEN];
        Packet::RemapConnection(remap).emit(&mut bytes);
        let (alt, peer) = (self.alt, self.peer);
        let alt_taken = self.mux.session(&alt).is_some();
        let remaps = self.mux.stats().remaps;
        let before = self.framings();
        self.mux.process_incoming(alt, bytes, self.now);
        if self.mux.stats().remaps > remaps {
            assert!(!alt_taken, "a remap replaced the live session at {alt}");
            assert!(self.mux.session(&peer).is_none() && self.mux.session(&alt).is_some());
            // Events and datagrams of the moved session now carry the new address.
            if self.open.remove(&peer) {
                self.open.insert(alt);
            }
            if self.connecting.remove(&peer) {
                self.connecting.insert(alt);
            }
            (self.peer, self.alt) = (alt, peer);
        }
        self.mux.run_tick(self.now);
        self.settle(&before);
    }

    /// The application queues a message for the peer.
    fn enqueue(&mut self, payload: &[u8]) {
        let (sel, body) = payload.split_first().unwrap_or((&0, &[]));
        let channel = match sel % 7 {
            n @ 0..=3 => Channel::Reliable(usize::from(n)),
            4 => Channel::Unreliable,
            5 => Channel::Ordered,
            _ => Channel::Reliable(4 + usize::from(sel >> 3)),
        };
        let want = body.len().max(usize::from(sel >> 3) * 300);
        let data: Vec<u8> = body.iter().copied().cycle().take(want).collect();
        let peer = self.peer;
        let result = self.mux.enqueue_data_on(&peer, &data, channel);
        if result.is_ok() && channel == Channel::Unreliable {
            self.unreliable.push(data.clone());
        }
        if data.is_empty() || matches!(channel, Channel::Reliable(n) if n > 3) {
            assert!(
                result.is_err(),
                "enqueue accepted {channel:?} / {} bytes",
                data.len()
            );
        }
        self.tick(Duration::ZERO);
    }

    /// Handshake packets after the handshake: a server gets a valid SessionRequest
    /// (a retransmission, a new incarnation, or a new peer); a client a
    /// SessionResponse (ignored once running) or a SessionRequest.
    fn handshake_again(&mut self, payload: &[u8], side: SessionMode) {
        let mut input = Cursor(payload);
        let sel = input.u8();
        let current = self.mux.session(&self.peer).map_or(0, |s| s.session_id());
        let session_id = if payload.len() >= 5 {
            input.u32()
        } else {
            current
        };
        let from = match sel % 3 {
            0 => self.peer,
            1 => self.alt,
            _ => self.strangers[0],
        };
        let mut bytes = vec![0u8; 64];
        let n = if side == SessionMode::Server || sel & 0x80 != 0 {
            let request = SessionRequest {
                protocol_version: 3,
                session_id,
                udp_length: UDP_LENGTHS[usize::from(sel >> 2) % UDP_LENGTHS.len()],
                application_protocol: Some(PROTOCOL.as_bytes()),
            };
            Packet::SessionRequest(request).emit(&mut bytes)
        } else {
            let response = SessionResponse {
                session_id,
                crc_seed: input.u32(),
                crc_length: input.u8() % 5,
                compression: input.u8() & 1,
                encryption_pass_1: 0,
                udp_length: UDP_LENGTHS[usize::from(sel >> 2) % UDP_LENGTHS.len()],
                protocol_version: Some(3),
            };
            Packet::SessionResponse(response).emit(&mut bytes)
        };
        self.deliver(from, &bytes[..n]);
    }

    /// The peer sends a valid Disconnect, or the application terminates.
    fn disconnect(&mut self, payload: &[u8]) {
        let mut input = Cursor(payload);
        let sel = input.u8();
        let reason = DisconnectReason::from_u16(input.u16());
        let peer = self.peer;
        if sel & 1 != 0 {
            let before = self.framings();
            self.mux.terminate(&peer, reason, self.now);
            self.mux.run_tick(self.now);
            self.settle(&before);
            assert!(
                self.mux.session(&peer).is_none(),
                "terminate left the session"
            );
            return;
        }
        let session_id = self.mux.session(&peer).map_or(0, |s| s.session_id());
        let mut cooked = vec![0u8; soe_uring::protocol::Disconnect::LEN];
        Packet::Disconnect(soe_uring::protocol::Disconnect { session_id, reason })
            .emit(&mut cooked);
        if self.compression_on(&peer) {
            cooked.insert(2, 0);
        }
        let d = self.sealed(&peer, &cooked);
        self.deliver(peer, &d);
    }

    /// Lets every timer run out: all sessions must end, and report it.
    fn finish(&mut self) {
        for _ in 0..150 {
            self.tick(Duration::from_secs(1));
        }
        assert_eq!(
            self.mux.session_count(),
            0,
            "sessions outlived every timeout"
        );
        assert!(self.open.is_empty(), "sessions ended without SessionClosed");
        assert!(
            self.connecting.is_empty(),
            "connects ended without SessionClosed"
        );
        assert_eq!(
            self.mux.next_deadline(),
            None,
            "timers left with no session"
        );
    }
}

/// A server multiplexer (`SoeMultiplexer<SocketAddr>`) with a deterministic seed and
/// small caps, configured by the first two bytes. A client first completes a real
/// handshake (a valid v3 SessionRequest, udp_length from the third byte); the CRC
/// seed and length come from `mux.session(&client)`. The rest of the input is
/// chunks `ctl, len, payload`: most are sent from the client with a valid CRC (raw,
/// as a contextual packet with the negotiated flag, or zlib-compressed), some raw,
/// some from other addresses, and others remap the session, make the server send
/// data, advance the virtual clock, repeat the handshake or disconnect. Every
/// outgoing datagram must be readable by the peer and within udp_length; events
/// must come in order (opened, data, closed) within the caps; and once every timer
/// has run out no session may be left.
pub fn session(data: &[u8]) {
    let mut input = Cursor(data);
    let flags = [input.u8(), input.u8()];
    let udp_length = UDP_LENGTHS[usize::from(input.u8()) % UDP_LENGTHS.len()];
    let client = addr(10, 0, 0, 2, 30_000);
    let mut h = Harness::new(fuzz_config(flags), client);

    let request = SessionRequest {
        protocol_version: 3,
        session_id: 0x0BAD_CAFE,
        udp_length,
        application_protocol: Some(PROTOCOL.as_bytes()),
    };
    let mut bytes = [0u8; 64];
    let n = Packet::SessionRequest(request).emit(&mut bytes);
    let sent = h.deliver(client, &bytes[..n]);
    let s = h
        .mux
        .session(&client)
        .expect("a valid request opens a session");
    assert_eq!(s.state(), SessionState::Running);
    assert_eq!(s.session_id(), request.session_id);
    assert_eq!(h.mux.half_open_count(), 1);
    let response = sent
        .iter()
        .find_map(|(to, d)| match Packet::parse(d) {
            Ok(Packet::SessionResponse(r)) if *to == client => Some(r),
            _ => None,
        })
        .expect("the server answers a SessionRequest");
    assert_eq!(response.session_id, request.session_id);
    assert_eq!(response.crc_seed, s.crc_seed());
    assert_eq!(response.crc_length, s.params().crc_length);
    assert_eq!(response.protocol_version, Some(3));

    h.run_chunks(&mut input, SessionMode::Server);
    h.finish();
}

/// The client side of [`session`]: a client multiplexer connects (`mux.connect`)
/// to a server address; its SessionRequest is checked and answered with a valid
/// SessionResponse for the session id read from `mux.session(&server)`, with the
/// CRC seed, CRC length, compression flag, udp_length and form (v2 or v3) taken
/// from the input. The session must open; then the rest of the input is fed as
/// chunks exactly as in [`session`], with valid CRCs under the negotiated seed.
pub fn client_session(data: &[u8]) {
    let mut input = Cursor(data);
    let flags = [input.u8(), input.u8()];
    let server = addr(10, 0, 0, 1, 20_000);
    let config = fuzz_config(flags);
    let v2 = config.default_session_params.protocol_version == 2;
    let mut h = Harness::new(config, server);

    h.mux.connect(server, h.now).expect("first connect");
    h.connecting.insert(server);
    let sent = h.tick(Duration::ZERO);
    let session_id = h
        .mux
        .session(&server)
        .expect("connect made a session")
        .session_id();
    let request = sent
        .iter()
        .find_map(|(to, d)| match Packet::parse(d) {
            Ok(Packet::SessionRequest(r)) if *to == server => Some(r),
            _ => None,
        })
        .expect("the client sends a SessionRequest");
    assert_eq!(request.session_id, session_id);
    if v2 {
        assert_eq!(
            (request.protocol_version, request.application_protocol),
            (2, None)
        );
    } else {
        assert_eq!(request.protocol_version, 3);
        assert_eq!(request.application_protocol, Some(PROTOCOL.as_bytes()));
    }

    let sel = input.u8();
    let response = SessionResponse {
        session_id,
        crc_seed: input.u32(),
        crc_length: sel % 5,
        compression: (sel >> 3) & 1,
        encryption_pass_1: 0,
        udp_length: UDP_LENGTHS[usize::from(sel >> 4) % UDP_LENGTHS.len()],
        protocol_version: (!v2 || sel & 0x80 != 0).then_some(3),
    };
    let mut bytes = [0u8; SessionResponse::V3_LEN];
    let n = Packet::SessionResponse(response).emit(&mut bytes);
    // Answer late sometimes: the client may have repeated its request.
    let delay = Duration::from_millis(u64::from(sel & 0x07) * 300);
    if !delay.is_zero() {
        h.tick(delay);
    }
    h.deliver(server, &bytes[..n]);
    assert!(
        h.open.contains(&server),
        "a valid SessionResponse opens the session"
    );
    let s = h.mux.session(&server).expect("opened session");
    assert_eq!(s.state(), SessionState::Running);
    assert_eq!(s.crc_seed(), response.crc_seed);
    assert_eq!(s.params().crc_length, response.crc_length);
    assert_eq!(s.params().is_compression_enabled, response.compression != 0);

    h.run_chunks(&mut input, SessionMode::Client);
    h.finish();
}
