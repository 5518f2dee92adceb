#![cfg(feature = "sim")]
//! Reliability under a seeded lossy link: every message delivered exactly once and in
//! order per channel, in both directions, whatever the link does.
// Only to report wall time; the simulation itself runs on virtual time.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use soe_uring::sim::{LinkConfig, Sim, SimRng};
use soe_uring::*;

const KEY: &[u8] = &[0x17, 0xbd, 0x08, 0x6b, 0x1b, 0x94, 0xf0, 0x2f];

#[derive(Clone, Copy, Debug)]
struct Setup {
    sessions: usize,
    messages: u64,
    compression: bool,
    rc4: bool,
    crc_length: u8,
    coalesce: bool,
    max_size: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            sessions: 8,
            messages: 100_000,
            compression: false,
            rc4: false,
            crc_length: 2,
            coalesce: true,
            max_size: 20_000,
        }
    }
}

fn config(seed: u64, setup: &Setup) -> SocketConfig {
    let mut c = SocketConfig {
        rng_seed: Some(seed),
        ..SocketConfig::default()
    };
    let p = &mut c.default_session_params;
    p.application_protocol = "SimTest".into();
    p.is_compression_enabled = setup.compression;
    p.crc_length = setup.crc_length;
    p.coalesce = setup.coalesce;
    // Long enough to survive the worst stretches of a 30 % loss link.
    p.inactivity_timeout = Duration::from_secs(120);
    p.unacknowledged_timeout = Duration::from_secs(120);
    if setup.rc4 {
        c.app_params.encryption_key_state = Some(Rc4KeyState::new(KEY));
    }
    c
}

/// The `index`-th message on `channel` of the stream `stream`: its size and bytes
/// are a pure function of those, so the receiver regenerates and compares it.
fn message(stream: u64, channel: usize, index: u64, max_size: usize, out: &mut Vec<u8>) {
    let mut rng = SimRng::new(stream.wrapping_mul(0x9E37_79B9) ^ (channel as u64) << 56 ^ index);
    let pick = rng.below(100);
    let size = match pick {
        0..70 => 1 + rng.below(64),
        70..90 => 65 + rng.below(448),
        90..99 => 513 + rng.below(3584),
        _ => 4097 + rng.below(16_000),
    } as usize;
    let size = size.min(max_size);
    out.clear();
    let text = b"the quick brown fox jumps over the lazy dog ";
    let start = rng.below(text.len() as u64) as usize;
    out.extend((0..size).map(|i| text[(start + i) % text.len()] ^ (index as u8 & 3)));
    // Payloads that look like protocol framing must survive too.
    match rng.below(32) {
        0 => out[0] = 0,
        1 if size >= 2 => out[..2].copy_from_slice(&[0x00, 0x19]),
        2 if size >= 2 => out[..2].copy_from_slice(&[0x00, 0x03]),
        _ => {}
    }
}

/// One direction of one session.
#[derive(Default)]
struct Stream {
    sent: u64,
    next_sent: [u64; 4],
    received: [u64; 4],
}

struct Harness {
    sim: Sim,
    setup: Setup,
    server: usize,
    clients: Vec<usize>,
    /// Keyed by (receiving node, sender address).
    inbound: HashMap<(usize, SocketAddr), Stream>,
    outbound: HashMap<(usize, SocketAddr), Stream>,
    stream_ids: HashMap<(SocketAddr, SocketAddr), u64>,
    channel_rng: SimRng,
    scratch: Vec<u8>,
    expected: Vec<u8>,
    delivered: u64,
    /// Sessions, as (node, peer address), that ended by inactivity after every
    /// message both ways had arrived (see [`Harness::idle_timeout_allowed`]).
    idled_out: Vec<(usize, SocketAddr)>,
}

impl Harness {
    fn new(seed: u64, link: LinkConfig, setup: Setup) -> Self {
        let mut sim = Sim::new(seed, link);
        let server = sim.add_node(config(seed ^ 1, &setup));
        let clients: Vec<usize> = (0..setup.sessions)
            .map(|i| sim.add_node(config(seed ^ (i as u64 + 2) << 8, &setup)))
            .collect();
        let mut stream_ids = HashMap::new();
        for (i, &c) in clients.iter().enumerate() {
            let (ca, sa) = (sim.addr(c), sim.addr(server));
            stream_ids.insert((ca, sa), 2 * i as u64);
            stream_ids.insert((sa, ca), 2 * i as u64 + 1);
        }
        for &c in &clients {
            sim.connect(c, server);
        }
        Self {
            sim,
            setup,
            server,
            clients,
            inbound: HashMap::new(),
            outbound: HashMap::new(),
            stream_ids,
            channel_rng: SimRng::new(seed ^ 0xC4A),
            scratch: Vec::new(),
            expected: Vec::new(),
            delivered: 0,
            idled_out: Vec::new(),
        }
    }

    fn pairs(&self) -> Vec<(usize, SocketAddr)> {
        let mut v = Vec::new();
        for &c in &self.clients {
            v.push((c, self.sim.addr(self.server)));
            v.push((self.server, self.sim.addr(c)));
        }
        v
    }

    /// Enqueues more messages on every open stream, respecting back-pressure.
    fn feed(&mut self) {
        for (node, to) in self.pairs() {
            let from = self.sim.addr(node);
            let Some(session) = self.sim.node(node).mux.session(&to) else {
                continue;
            };
            if session.state() != SessionState::Running || session.pending_bytes() > 128 << 10 {
                continue;
            }
            let id = self.stream_ids[&(from, to)];
            let stream = self.outbound.entry((node, to)).or_default();
            let mut budget = 64;
            while stream.sent < self.setup.messages && budget > 0 {
                let channel = self.channel_rng.below(4) as usize;
                let index = stream.next_sent[channel];
                message(id, channel, index, self.setup.max_size, &mut self.scratch);
                match self.sim.node_mut(node).mux.enqueue_data_on(
                    &to,
                    &self.scratch,
                    Channel::Reliable(channel),
                ) {
                    Ok(()) => {
                        stream.sent += 1;
                        stream.next_sent[channel] += 1;
                        budget -= 1;
                    }
                    Err(EnqueueError::QueueFull) => break,
                    Err(e) => panic!("enqueue failed: {e}"),
                }
            }
            self.sim.pump(node);
        }
    }

    /// Checks every delivered message against the one expected next on its channel.
    fn verify(&mut self) {
        for node in std::iter::once(self.server).chain(self.clients.clone()) {
            let me = self.sim.addr(node);
            let events = std::mem::take(&mut self.sim.node_mut(node).events);
            for event in events {
                match event {
                    SocketEvent::DataReceived {
                        remote,
                        data,
                        channel: Channel::Reliable(channel),
                    } => {
                        let id = self.stream_ids[&(remote, me)];
                        let stream = self.inbound.entry((node, remote)).or_default();
                        let index = stream.received[channel];
                        message(id, channel, index, self.setup.max_size, &mut self.expected);
                        assert!(
                            data.as_ref() == self.expected.as_slice(),
                            "stream {id} channel {channel} message {index}: got {} bytes {:02x?}…, expected {} bytes {:02x?}…",
                            data.len(),
                            &data[..data.len().min(8)],
                            self.expected.len(),
                            &self.expected[..self.expected.len().min(8)]
                        );
                        stream.received[channel] += 1;
                        self.delivered += 1;
                    }
                    SocketEvent::SessionClosed {
                        remote,
                        reason: DisconnectReason::Timeout,
                    } if self.idle_timeout_allowed(me, remote) => {
                        self.idled_out.push((node, remote));
                    }
                    SocketEvent::SessionClosed { remote, reason } => {
                        panic!("session {me} ↔ {remote} closed: {reason:?}")
                    }
                    SocketEvent::DataReceived { channel, .. } => {
                        panic!("unexpected channel {channel:?}")
                    }
                    SocketEvent::SessionOpened { .. } => {}
                    SocketEvent::SessionRemapped { old, new } => {
                        panic!("session {me} ↔ {old} remapped to {new}")
                    }
                    other => panic!("unexpected event {other:?}"),
                }
            }
        }
    }

    /// Whether the session between `a` and `b` may end by inactivity: only when
    /// every message of both directions has arrived. Such a session then only
    /// exchanges heartbeats until the slowest session finishes; on a link that
    /// loses 30 % each way and corrupts 1 %, a heartbeat round trip succeeds about
    /// half the time, so the client's retries within the inactivity timeout all
    /// fail with a probability of about 0.5 % per quiet stretch, and that is not a
    /// delivery failure. A session closing with anything still undelivered is.
    fn idle_timeout_allowed(&self, a: SocketAddr, b: SocketAddr) -> bool {
        let received = |from: SocketAddr, to: SocketAddr| {
            let node = std::iter::once(self.server)
                .chain(self.clients.iter().copied())
                .find(|&n| self.sim.addr(n) == to)
                .expect("a node of the simulation");
            self.inbound
                .get(&(node, from))
                .map_or(0, |s| s.received.iter().sum::<u64>())
        };
        received(a, b) == self.setup.messages && received(b, a) == self.setup.messages
    }

    fn done(&self) -> bool {
        self.delivered == 2 * self.setup.sessions as u64 * self.setup.messages
    }

    fn run(&mut self) {
        let started = Instant::now();
        let mut steps: u64 = 0;
        while !self.done() {
            self.feed();
            assert!(self.sim.step(), "simulation went idle before completion");
            self.verify();
            steps += 1;
            assert!(
                self.sim.elapsed() < Duration::from_secs(4 * 3600),
                "virtual time ran away"
            );
        }
        let mut total = MuxStats::default();
        for node in std::iter::once(self.server).chain(self.clients.clone()) {
            total.add(&self.sim.node(node).mux.stats());
        }
        eprintln!(
            "{:?}: {} messages in {:?} virtual, {:?} wall, {steps} steps; link {:?}; datagrams sent {}, resent packets {}, crc failures {}, dups {}",
            self.setup,
            self.delivered,
            self.sim.elapsed(),
            started.elapsed(),
            self.sim.link_stats(),
            total.sessions.datagrams_sent,
            total.sessions.reliable_packets_resent,
            total.sessions.crc_failures,
            total.sessions.duplicate_packets,
        );
        if !self.idled_out.is_empty() {
            eprintln!(
                "sessions that ended by inactivity after completing: {:?}",
                self.idled_out
            );
        }
    }
}

fn transfer(seed: u64, link: LinkConfig, setup: Setup) {
    let mut h = Harness::new(seed, link, setup);
    h.run();
    let idled_out = |node: usize| h.idled_out.iter().filter(|(n, _)| *n == node).count();
    assert_eq!(
        h.sim.node(h.server).mux.session_count(),
        h.setup.sessions - idled_out(h.server)
    );
    for &c in &h.clients {
        assert_eq!(h.sim.node(c).mux.session_count(), 1 - idled_out(c));
    }
}

fn plain() -> Setup {
    Setup::default()
}

fn secured() -> Setup {
    Setup {
        compression: true,
        rc4: true,
        crc_length: 4,
        ..Setup::default()
    }
}

fn corrupting(loss: f64) -> LinkConfig {
    LinkConfig {
        corrupt: 0.01,
        ..LinkConfig::lossy(loss)
    }
}

#[test]
fn no_loss_plain() {
    transfer(1, LinkConfig::default(), plain());
}

#[test]
fn no_loss_compressed_encrypted() {
    transfer(2, LinkConfig::default(), secured());
}

#[test]
fn loss_5_plain() {
    transfer(3, LinkConfig::lossy(0.05), plain());
}

#[test]
fn loss_5_compressed_encrypted_corrupting() {
    transfer(4, corrupting(0.05), secured());
}

#[test]
fn loss_20_plain() {
    transfer(5, LinkConfig::lossy(0.20), plain());
}

#[test]
fn loss_20_compressed_encrypted_corrupting() {
    transfer(6, corrupting(0.20), secured());
}

#[test]
fn loss_30_plain() {
    transfer(7, LinkConfig::lossy(0.30), plain());
}

#[test]
fn loss_30_compressed_encrypted_corrupting() {
    transfer(8, corrupting(0.30), secured());
}

#[test]
fn loss_20_without_coalescing() {
    transfer(
        9,
        LinkConfig::lossy(0.20),
        Setup {
            coalesce: false,
            sessions: 4,
            messages: 20_000,
            ..Setup::default()
        },
    );
}
