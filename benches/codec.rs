//! Codec-level costs, ours side by side with `soe-protocol` 2.3.0 where it has a
//! public equivalent.
//!
//! * `crc32/512`: the seeded SOE CRC over 512 bytes. The reference's CRC module is
//!   crate-private, so ours (`soe_uring::protocol::Crc32`, seed folded in once, as a
//!   session holds it) runs beside two baselines: plain `crc32fast::hash` (the
//!   engine ours uses) and a byte-at-a-time lookup-table CRC written here, the
//!   textbook algorithm class the reference uses (an estimate, not its code).
//! * `ack_dispatch/*`: parsing and dispatching one valid AckAll datagram (`00 15`,
//!   2-byte CRC under the session's seed) into an established client session through
//!   the multiplexer's `process_incoming` (address lookup, CRC check, parse, dispatch
//!   to the channel's sender, the multiplexer's bookkeeping).
//!   - `duplicate`: the same AckAll for the latest sequence, over and over (nothing
//!     left to release: the pure parse-and-dispatch path).
//!   - `releasing`: each AckAll acknowledges one more in-flight packet (releases it
//!     and takes an RTT sample). Untimed between batches: 128 single-message packets
//!     are sent (one `run_tick` each, datagrams dropped) and their AckAll datagrams
//!     built; timed: feeding those 128 datagrams in order.
//! * `reassembly/1400`: a 1400-byte reliable message sent as fragments. Each
//!   implementation's own client produced the fragment datagrams once, in a real
//!   exchange with its own server (acks flowing back), messages 1..=N in one round
//!   each. A fresh server multiplexer with the same deterministic seed is rebuilt
//!   untimed (fed the captured handshake and message 0), then timed: feeding one
//!   message's fragment datagrams through `process_incoming` and taking the
//!   `DataReceived` event (its length is checked). Not timed: acks (no `run_tick`),
//!   rebuilding the receiver every `REPLAY_MESSAGES` messages. One iteration is one
//!   1400-byte message; the fragment count per message is printed at start-up.
//!
//! Run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::{Measurement, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use soe_protocol as sp;
use soe_uring::protocol::{Crc32, Packet};

const PROTOCOL: &str = "CodecBench";
const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 20_000);
const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), 30_000);
const STEP: Duration = Duration::from_micros(50);
/// CRC bytes both implementations negotiate by default.
const CRC_LEN: u8 = 2;
/// AckAll datagrams per `releasing` batch (below both send windows of 196).
const ACK_BATCH: usize = 128;
/// Size of the reassembled message.
const BIG_LEN: usize = 1400;
/// Messages captured per implementation; a receiver is rebuilt after this many.
const REPLAY_MESSAGES: usize = 2000;

/// A virtual clock (the only real clock read of this file is in `start`).
#[derive(Clone, Copy)]
struct Clock {
    base: Instant,
    ticks: u32,
}

impl Clock {
    fn start() -> Self {
        #[allow(clippy::disallowed_methods)]
        let base = Instant::now();
        Self { base, ticks: 0 }
    }

    fn advance(&mut self) -> Instant {
        self.ticks += 1;
        self.base + STEP * self.ticks
    }
}

// ---------------------------------------------------------------------------------
// CRC

/// Byte-at-a-time reflected CRC-32 (polynomial 0xEDB88320) with a seeded start
/// state, as a stand-in for a table-driven implementation like the reference's.
struct TableCrc {
    table: [u32; 256],
    start: u32,
}

impl TableCrc {
    fn new(seed: u32) -> Self {
        let mut table = [0u32; 256];
        for (i, entry) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *entry = c;
        }
        let mut crc = Self { table, start: !0 };
        crc.start = crc.update(!0, &seed.to_le_bytes());
        crc
    }

    fn update(&self, mut crc: u32, data: &[u8]) -> u32 {
        for &b in data {
            crc = (crc >> 8) ^ self.table[((crc as u8) ^ b) as usize];
        }
        crc
    }

    fn checksum(&self, data: &[u8]) -> u32 {
        !self.update(self.start, data)
    }
}

fn crc(c: &mut Criterion) {
    let data: Vec<u8> = (0..512u32).map(|i| (i * 31 + 7) as u8).collect();
    let seed = 0x1234_5678;
    let ours = Crc32::new(seed);
    let table = TableCrc::new(seed);
    assert_eq!(
        ours.checksum(&data),
        table.checksum(&data),
        "CRC baselines disagree"
    );

    let mut group = c.benchmark_group("crc32/512");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("soe-uring", |b| b.iter(|| ours.checksum(black_box(&data))));
    group.bench_function("crc32fast", |b| {
        b.iter(|| crc32fast::hash(black_box(&data)))
    });
    group.bench_function("table-bytewise", |b| {
        b.iter(|| table.checksum(black_box(&data)))
    });
    group.finish();
}

// ---------------------------------------------------------------------------------
// Session setup shared by the ack and reassembly benchmarks

/// A valid AckAll datagram for channel 0 under `seed`.
fn ack_all(sequence: u16, seed: u32) -> Bytes {
    let mut buf = [0u8; 16];
    let len = Packet::AcknowledgeAll {
        channel: 0,
        sequence,
    }
    .emit(&mut buf);
    let len = Crc32::new(seed).append(&mut buf, len, CRC_LEN);
    Bytes::copy_from_slice(&buf[..len])
}

fn our_config() -> soe_uring::SocketConfig {
    let mut c = soe_uring::SocketConfig::default();
    c.default_session_params.application_protocol = PROTOCOL.into();
    c.rng_seed = Some(0x5eed);
    c
}

fn ref_config(seed: u64) -> sp::SocketConfig {
    sp::SocketConfig {
        default_session_params: sp::SessionParameters {
            application_protocol: PROTOCOL.into(),
            ..sp::SessionParameters::default()
        },
        base_rng_seed: seed,
        ..sp::SocketConfig::default()
    }
}

/// Our client/server pair, connected. `capture` collects client→server datagrams.
struct OurPair {
    client: soe_uring::SoeMultiplexer<SocketAddr>,
    server: soe_uring::SoeMultiplexer<SocketAddr>,
    clock: Clock,
}

impl OurPair {
    fn connected(capture: &mut Vec<Bytes>) -> Self {
        let mut pair = Self {
            client: soe_uring::SoeMultiplexer::new(our_config()),
            server: soe_uring::SoeMultiplexer::new(our_config()),
            clock: Clock::start(),
        };
        let now = pair.clock.advance();
        pair.client.connect(SERVER, now).expect("connect");
        for _ in 0..10 {
            pair.round(capture);
            let running = pair
                .client
                .session(&SERVER)
                .is_some_and(|s| s.state() == soe_uring::SessionState::Running);
            if running {
                return pair;
            }
        }
        panic!("soe-uring: handshake did not complete");
    }

    /// One exchange; returns what the server received.
    fn round(&mut self, capture: &mut Vec<Bytes>) -> Vec<soe_uring::SocketEvent<SocketAddr>> {
        let now = self.clock.advance();
        self.client.run_tick(now);
        for (_, d) in self.client.outgoing_iter() {
            capture.push(Bytes::copy_from_slice(d));
            self.server.process_incoming(CLIENT, d, now);
        }
        self.client.consume_outgoing(usize::MAX);
        let events = self.server.take_events();
        let now = self.clock.advance();
        self.server.run_tick(now);
        for (_, d) in self.server.outgoing_iter() {
            self.client.process_incoming(SERVER, d, now);
        }
        self.server.consume_outgoing(usize::MAX);
        while let Some(e) = self.client.poll_event() {
            assert!(
                !matches!(e, soe_uring::SocketEvent::SessionClosed { .. }),
                "{e:?}"
            );
        }
        events
    }

    fn seed(&self) -> u32 {
        self.client.session(&SERVER).expect("session").crc_seed()
    }
}

/// The reference client/server pair, connected.
struct RefPair {
    client: sp::SoeMultiplexer<SocketAddr>,
    server: sp::SoeMultiplexer<SocketAddr>,
    clock: Clock,
}

impl RefPair {
    fn connected(capture: &mut Vec<Bytes>) -> Self {
        let mut pair = Self {
            client: sp::SoeMultiplexer::new(ref_config(1)),
            server: sp::SoeMultiplexer::new(ref_config(2)),
            clock: Clock::start(),
        };
        let now = pair.clock.advance();
        pair.client.connect(SERVER, now);
        for _ in 0..10 {
            pair.round(capture);
            let running = pair
                .client
                .session(&SERVER)
                .is_some_and(|s| s.state() == sp::SessionState::Running);
            if running {
                return pair;
            }
        }
        panic!("soe-protocol: handshake did not complete");
    }

    fn round(&mut self, capture: &mut Vec<Bytes>) -> Vec<sp::SocketEvent<SocketAddr>> {
        let now = self.clock.advance();
        self.client.run_tick(now);
        for (_, d) in self.client.take_outgoing() {
            capture.push(d.clone());
            self.server.process_incoming(CLIENT, d, now);
        }
        let events = self.server.take_events();
        let now = self.clock.advance();
        self.server.run_tick(now);
        for (_, d) in self.server.take_outgoing() {
            self.client.process_incoming(SERVER, d, now);
        }
        for e in self.client.take_events() {
            assert!(!matches!(e, sp::SocketEvent::SessionClosed { .. }), "{e:?}");
        }
        events
    }

    fn seed(&self) -> u32 {
        self.client.session(&SERVER).expect("session").crc_seed()
    }

    fn assert_alive(&mut self) {
        let alive = self
            .client
            .session(&SERVER)
            .is_some_and(|s| s.state() == sp::SessionState::Running);
        let closed: Vec<_> = self.client.take_events();
        assert!(
            alive && closed.is_empty(),
            "reference session ended: {closed:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Ack dispatch

fn ack_dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("ack_dispatch/duplicate");
    group.throughput(Throughput::Elements(1));
    {
        let mut pair = OurPair::connected(&mut Vec::new());
        // One message out and acknowledged, so the ack below is a real (stale) one.
        pair.client.enqueue_data(&SERVER, b"x").expect("enqueue");
        for _ in 0..50 {
            pair.round(&mut Vec::new());
        }
        let datagram = ack_all(0, pair.seed());
        let now = pair.clock.advance();
        let before = pair.client.stats().sessions;
        group.bench_function("soe-uring", |b| {
            b.iter(|| {
                pair.client
                    .process_incoming(SERVER, black_box(&datagram[..]), now)
            })
        });
        let after = pair.client.stats().sessions;
        assert_eq!(after.crc_failures, before.crc_failures, "bad CRC");
        assert_eq!(after.malformed_datagrams, before.malformed_datagrams);
        assert!(
            after.acks_received > before.acks_received,
            "acks not dispatched"
        );
    }
    {
        let mut pair = RefPair::connected(&mut Vec::new());
        assert!(pair.client.enqueue_data(&SERVER, b"x"));
        for _ in 0..50 {
            pair.round(&mut Vec::new());
        }
        let datagram = ack_all(0, pair.seed());
        let now = pair.clock.advance();
        group.bench_function("soe-protocol", |b| {
            b.iter(|| {
                pair.client
                    .process_incoming(SERVER, black_box(datagram.clone()), now)
            })
        });
        pair.assert_alive();
    }
    group.finish();

    let mut group = c.benchmark_group("ack_dispatch/releasing");
    group.throughput(Throughput::Elements(1));
    {
        let mut pair = OurPair::connected(&mut Vec::new());
        let seed = pair.seed();
        let mut next_seq: u16 = 0;
        let mut acks = Vec::with_capacity(ACK_BATCH);
        group.bench_function("soe-uring", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(ACK_BATCH as u64) as usize;
                    acks.clear();
                    for _ in 0..n {
                        pair.client.enqueue_data(&SERVER, b"x").expect("enqueue");
                        let now = pair.clock.advance();
                        pair.client.run_tick(now);
                        assert_eq!(pair.client.outgoing_len(), 1);
                        pair.client.consume_outgoing(1);
                        acks.push(ack_all(next_seq, seed));
                        next_seq = next_seq.wrapping_add(1);
                    }
                    let now = pair.clock.advance();
                    let start = WallTime.start();
                    for ack in &acks {
                        pair.client.process_incoming(SERVER, &ack[..], now);
                    }
                    total += WallTime.end(start);
                    let session = pair.client.session(&SERVER).expect("session");
                    assert!(session.is_flushed(), "acks did not release the window");
                    left -= n as u64;
                }
                total
            })
        });
        let stats = pair.client.stats().sessions;
        assert_eq!(stats.crc_failures + stats.malformed_datagrams, 0);
    }
    {
        let mut pair = RefPair::connected(&mut Vec::new());
        let seed = pair.seed();
        let mut next_seq: u16 = 0;
        let mut acks = Vec::with_capacity(ACK_BATCH);
        group.bench_function("soe-protocol", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(ACK_BATCH as u64) as usize;
                    acks.clear();
                    for _ in 0..n {
                        assert!(pair.client.enqueue_data(&SERVER, b"x"));
                        let now = pair.clock.advance();
                        pair.client.run_tick(now);
                        assert_eq!(pair.client.take_outgoing().len(), 1);
                        acks.push(ack_all(next_seq, seed));
                        next_seq = next_seq.wrapping_add(1);
                    }
                    let now = pair.clock.advance();
                    let start = WallTime.start();
                    for ack in &acks {
                        pair.client.process_incoming(SERVER, ack.clone(), now);
                    }
                    total += WallTime.end(start);
                    left -= n as u64;
                }
                total
            })
        });
        pair.assert_alive();
    }
    group.finish();
}

// ---------------------------------------------------------------------------------
// Fragment reassembly

/// The `i`-th big message.
fn big_message(i: usize) -> Vec<u8> {
    let mut m: Vec<u8> = (0..BIG_LEN).map(|b| (b * 7 + i) as u8).collect();
    m[0] = 0x42;
    m
}

/// Captured client→server traffic: the prefix (handshake and message 0), then the
/// datagrams of each message 1..=REPLAY_MESSAGES.
struct Capture {
    prefix: Vec<Bytes>,
    messages: Vec<Vec<Bytes>>,
}

impl Capture {
    fn fragments_per_message(&self) -> f64 {
        self.messages.iter().map(Vec::len).sum::<usize>() as f64 / self.messages.len() as f64
    }
}

fn capture_ours() -> Capture {
    let mut prefix = Vec::new();
    let mut pair = OurPair::connected(&mut prefix);
    let mut messages = Vec::with_capacity(REPLAY_MESSAGES);
    for i in 0..=REPLAY_MESSAGES {
        pair.client
            .enqueue_data(&SERVER, &big_message(i))
            .expect("enqueue");
        let mut batch = Vec::new();
        let events = pair.round(&mut batch);
        let data: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                soe_uring::SocketEvent::DataReceived { data, .. } => Some(data),
                _ => None,
            })
            .collect();
        assert!(
            data.len() == 1 && data[0][..] == big_message(i)[..],
            "soe-uring: message {i} not delivered in its round"
        );
        if i == 0 {
            prefix.extend(batch);
        } else {
            messages.push(batch);
        }
    }
    Capture { prefix, messages }
}

fn capture_reference() -> Capture {
    let mut prefix = Vec::new();
    let mut pair = RefPair::connected(&mut prefix);
    let mut messages = Vec::with_capacity(REPLAY_MESSAGES);
    for i in 0..=REPLAY_MESSAGES {
        assert!(pair.client.enqueue_data(&SERVER, &big_message(i)));
        let mut batch = Vec::new();
        let events = pair.round(&mut batch);
        let data: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                sp::SocketEvent::DataReceived { data, .. } => Some(data),
                _ => None,
            })
            .collect();
        assert!(
            data.len() == 1 && data[0][..] == big_message(i)[..],
            "soe-protocol: message {i} not delivered in its round"
        );
        if i == 0 {
            prefix.extend(batch);
        } else {
            messages.push(batch);
        }
    }
    Capture { prefix, messages }
}

fn reassembly(c: &mut Criterion) {
    let ours = capture_ours();
    let theirs = capture_reference();
    println!(
        "reassembly/1400: fragments per message: soe-uring {:.2}, soe-protocol {:.2}",
        ours.fragments_per_message(),
        theirs.fragments_per_message()
    );

    let mut group = c.benchmark_group("reassembly/1400");
    group.throughput(Throughput::Elements(1));

    let mut receiver: Option<soe_uring::SoeMultiplexer<SocketAddr>> = None;
    let mut cursor = REPLAY_MESSAGES;
    let mut clock = Clock::start();
    group.bench_function(BenchmarkId::from_parameter("soe-uring"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                if cursor == REPLAY_MESSAGES {
                    let mut server = soe_uring::SoeMultiplexer::new(our_config());
                    let now = clock.advance();
                    for d in &ours.prefix {
                        server.process_incoming(CLIENT, &d[..], now);
                    }
                    server.run_tick(now);
                    server.consume_outgoing(usize::MAX);
                    while server.poll_event().is_some() {}
                    receiver = Some(server);
                    cursor = 0;
                }
                let server = receiver.as_mut().expect("receiver");
                let n = left.min((REPLAY_MESSAGES - cursor) as u64) as usize;
                let now = clock.advance();
                let mut delivered = 0;
                let start = WallTime.start();
                for batch in &ours.messages[cursor..cursor + n] {
                    for d in batch {
                        server.process_incoming(CLIENT, &d[..], now);
                    }
                    match server.poll_event() {
                        Some(soe_uring::SocketEvent::DataReceived { data, .. }) => {
                            delivered += data.len()
                        }
                        other => panic!("soe-uring: expected the message, got {other:?}"),
                    }
                }
                total += WallTime.end(start);
                assert_eq!(delivered, n * BIG_LEN);
                cursor += n;
                left -= n as u64;
            }
            total
        })
    });

    let mut receiver: Option<sp::SoeMultiplexer<SocketAddr>> = None;
    let mut cursor = REPLAY_MESSAGES;
    group.bench_function(BenchmarkId::from_parameter("soe-protocol"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                if cursor == REPLAY_MESSAGES {
                    let mut server = sp::SoeMultiplexer::new(ref_config(2));
                    let now = clock.advance();
                    for d in &theirs.prefix {
                        server.process_incoming(CLIENT, d.clone(), now);
                    }
                    server.run_tick(now);
                    server.take_outgoing();
                    server.take_events();
                    receiver = Some(server);
                    cursor = 0;
                }
                let server = receiver.as_mut().expect("receiver");
                let n = left.min((REPLAY_MESSAGES - cursor) as u64) as usize;
                let now = clock.advance();
                let mut delivered = 0;
                let start = WallTime.start();
                for batch in &theirs.messages[cursor..cursor + n] {
                    for d in batch {
                        server.process_incoming(CLIENT, d.clone(), now);
                    }
                    match &server.take_events()[..] {
                        [sp::SocketEvent::DataReceived { data, .. }] => delivered += data.len(),
                        other => panic!("soe-protocol: expected the message, got {other:?}"),
                    }
                }
                total += WallTime.end(start);
                assert_eq!(delivered, n * BIG_LEN);
                cursor += n;
                left -= n as u64;
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, crc, ack_dispatch, reassembly);
criterion_main!(benches);
