//! Shared in-memory echo driver for `benches/echo.rs` and `benches/allocations.rs`.
//!
//! Shape (identical for both implementations): one client multiplexer and one server
//! multiplexer, no sockets. Session `i` is the client's session to server address
//! `SERVER_IP:(SERVER_PORT + i)`; in transit the datagram is re-addressed, as a NAT
//! would, so the server sees it from `CLIENT_IP:(CLIENT_PORT + i)`. Each multiplexer
//! therefore holds N sessions keyed by N distinct addresses, and one client
//! multiplexer can talk to N "servers" that are all served by one server multiplexer.
//!
//! Every session keeps `window` messages of [`MSG_LEN`] bytes in flight on reliable
//! channel 0: the server echoes every `DataReceived` on the channel it arrived on,
//! and the client checks each echo (length, session, per-session sequence: reliable
//! delivery is in order) and sends a new message in its place.
//!
//! One exchange round:
//! 1. client `run_tick` → its datagrams go to the server's `process_incoming`;
//! 2. the server echoes every `DataReceived`;
//! 3. server `run_tick` → its datagrams go to the client's `process_incoming`;
//! 4. the client counts every echo and sends a replacement.
//!
//! Time is virtual: one `Instant` taken at start-up plus a counter advanced by
//! [`HALF_ROUND`] before each `run_tick` (so one round is 100 µs).
//!
//! Our multiplexer is driven with `outgoing`/`consume_outgoing` and `poll_event` (its
//! allocation-free API); the reference with `take_outgoing`/`take_events` (its only
//! API). Both use their default parameters and the same application protocol string.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use soe_protocol as sp;

/// Application protocol string of both implementations.
pub const PROTOCOL: &str = "EchoBench";
/// Size of every echoed message.
pub const MSG_LEN: usize = 64;
/// Rounds a pair may take before every round echoes a full window: congestion
/// control starts each session with a window of 10 packets and opens it per ack.
pub const RAMP_ROUNDS: u32 = 50;

/// Virtual time advanced before each `run_tick` (two per round).
pub const HALF_ROUND: Duration = Duration::from_micros(50);

const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1));
const SERVER_PORT: u16 = 20_000;
const CLIENT_PORT: u16 = 30_000;
/// Most sessions a pair may have (ports must not overflow).
pub const MAX_SESSIONS: usize = 10_000;

/// Where the client sends session `i`'s datagrams.
pub fn server_addr(i: usize) -> SocketAddr {
    SocketAddr::new(SERVER_IP, SERVER_PORT + i as u16)
}

/// Where the server sees session `i` coming from.
pub fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::new(CLIENT_IP, CLIENT_PORT + i as u16)
}

/// Session index of a client-side (server) address.
fn index_of_server(addr: &SocketAddr) -> usize {
    usize::from(addr.port() - SERVER_PORT)
}

/// Session index of a server-side (client) address.
fn index_of_client(addr: &SocketAddr) -> usize {
    usize::from(addr.port() - CLIENT_PORT)
}

/// A virtual clock: one real `Instant`, advanced by hand.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    ticks: u32,
}

impl Clock {
    /// Starts the clock (the only real clock read of the driver).
    pub fn start() -> Self {
        // The one real clock read: everything after is virtual.
        #[allow(clippy::disallowed_methods)]
        let base = Instant::now();
        Self { base, ticks: 0 }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.base + HALF_ROUND * self.ticks
    }

    /// Advances by [`HALF_ROUND`] and returns the new time.
    pub fn advance(&mut self) -> Instant {
        self.ticks += 1;
        self.now()
    }
}

/// The `seq`-th message of session `session`: a marker byte, the session index and
/// the sequence number, then a fixed pattern.
#[inline]
pub fn message(session: usize, seq: u32) -> [u8; MSG_LEN] {
    let mut m = [0u8; MSG_LEN];
    m[0] = 0x42;
    m[1..3].copy_from_slice(&(session as u16).to_le_bytes());
    m[4..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in m.iter_mut().enumerate().skip(8) {
        *b = i as u8;
    }
    m
}

/// Checks an echo: the right size, session and sequence.
#[inline]
fn check_echo(data: &[u8], session: usize, expected: u32) {
    assert_eq!(data.len(), MSG_LEN, "echo of the wrong size");
    let got_session = u16::from_le_bytes([data[1], data[2]]) as usize;
    let got_seq = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    assert!(
        got_session == session && got_seq == expected,
        "session {session}: expected echo #{expected}, got session {got_session} #{got_seq}"
    );
}

/// Bookkeeping common to both drivers.
#[derive(Debug)]
struct Counters {
    window: usize,
    /// Next sequence to send, per session.
    sent: Vec<u32>,
    /// Next sequence expected back, per session.
    received: Vec<u32>,
    /// Echoes received in total.
    echoed: u64,
    /// Client sessions opened.
    opened: usize,
}

impl Counters {
    fn new(sessions: usize, window: usize) -> Self {
        Self {
            window,
            sent: vec![0; sessions],
            received: vec![0; sessions],
            echoed: 0,
            opened: 0,
        }
    }

    fn take_send(&mut self, session: usize) -> [u8; MSG_LEN] {
        let seq = self.sent[session];
        self.sent[session] += 1;
        message(session, seq)
    }

    fn on_echo(&mut self, session: usize, data: &[u8]) {
        check_echo(data, session, self.received[session]);
        self.received[session] += 1;
        self.echoed += 1;
    }
}

/// An in-memory client/server pair echoing messages, for either implementation.
pub trait EchoPair {
    /// The implementation's name, as used in benchmark ids.
    const NAME: &'static str;

    /// Connects `sessions` sessions, completes every handshake and puts `window`
    /// messages in flight on each.
    fn new(sessions: usize, window: usize) -> Self;

    /// Runs one exchange round. Returns the messages echoed in it.
    fn round(&mut self) -> u64;

    /// Echoes received so far.
    fn echoed(&self) -> u64;

    /// Sessions.
    fn sessions(&self) -> usize;

    /// Messages in flight per session.
    fn window(&self) -> usize;

    /// Runs rounds until at least `messages` more echoes arrived; returns how many
    /// did (whole rounds, so possibly a few more).
    fn run_messages(&mut self, messages: u64) -> u64 {
        let start = self.echoed();
        let target = start + messages;
        let mut idle = 0;
        while self.echoed() < target {
            if self.round() == 0 {
                idle += 1;
                assert!(idle < 10_000, "{}: the echo stalled", Self::NAME);
            } else {
                idle = 0;
            }
        }
        self.echoed() - start
    }

    /// Warm-up with checks: after at most [`RAMP_ROUNDS`] rounds in which the
    /// senders' congestion windows open (a round may then echo less than the
    /// window), `rounds` rounds must each echo exactly `window` messages per
    /// session (every message delivered, nothing stalls).
    fn warm_up(&mut self, rounds: u64) {
        let per_round = (self.sessions() * self.window()) as u64;
        let mut ramp = 0;
        while self.round() != per_round {
            ramp += 1;
            assert!(
                ramp < RAMP_ROUNDS,
                "{}: no full round of {per_round} echoes in {RAMP_ROUNDS} rounds",
                Self::NAME
            );
        }
        for r in 0..rounds {
            let got = self.round();
            assert_eq!(
                got,
                per_round,
                "{}: round {r} echoed {got}, expected {per_round}",
                Self::NAME
            );
        }
    }
}

/// Our multiplexers.
#[derive(Debug)]
pub struct Ours {
    client: soe_uring::SoeMultiplexer<SocketAddr>,
    server: soe_uring::SoeMultiplexer<SocketAddr>,
    clock: Clock,
    counters: Counters,
}

impl Ours {
    fn config() -> soe_uring::SocketConfig {
        let mut c = soe_uring::SocketConfig::default();
        c.default_session_params.application_protocol = PROTOCOL.into();
        c
    }

    /// The client multiplexer (for tests of the driver).
    pub fn client(&self) -> &soe_uring::SoeMultiplexer<SocketAddr> {
        &self.client
    }

    /// Moves the client's datagrams to the server.
    fn client_to_server(&mut self, now: Instant) {
        let n = self.client.outgoing_len();
        for i in 0..n {
            let (to, datagram) = self.client.outgoing(i);
            let from = client_addr(index_of_server(to));
            self.server.process_incoming(from, datagram, now);
        }
        self.client.consume_outgoing(n);
    }

    /// Moves the server's datagrams to the client.
    fn server_to_client(&mut self, now: Instant) {
        let n = self.server.outgoing_len();
        for i in 0..n {
            let (to, datagram) = self.server.outgoing(i);
            let from = server_addr(index_of_client(to));
            self.client.process_incoming(from, datagram, now);
        }
        self.server.consume_outgoing(n);
    }

    fn server_events(&mut self) {
        while let Some(event) = self.server.poll_event() {
            match event {
                soe_uring::SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } => self
                    .server
                    .enqueue_data_on(&remote, &data, channel)
                    .expect("server echo"),
                soe_uring::SocketEvent::SessionOpened { .. } => {}
                soe_uring::SocketEvent::SessionClosed { remote, reason } => {
                    panic!("server session {remote} closed: {reason:?}")
                }
                soe_uring::SocketEvent::SessionRemapped { old, new } => {
                    panic!("server session {old} remapped to {new}")
                }
                _ => {} // kinds added in later versions
            }
        }
    }

    /// Handles client events.
    fn client_events(&mut self) {
        while let Some(event) = self.client.poll_event() {
            match event {
                soe_uring::SocketEvent::DataReceived { remote, data, .. } => {
                    let i = index_of_server(&remote);
                    self.counters.on_echo(i, &data);
                    drop(data);
                    let next = self.counters.take_send(i);
                    self.client
                        .enqueue_data(&remote, &next)
                        .expect("client send");
                }
                soe_uring::SocketEvent::SessionOpened { .. } => self.counters.opened += 1,
                soe_uring::SocketEvent::SessionClosed { remote, reason } => {
                    panic!("client session {remote} closed: {reason:?}")
                }
                soe_uring::SocketEvent::SessionRemapped { .. } => unreachable!("a client"),
                _ => {} // kinds added in later versions
            }
        }
    }
}

impl EchoPair for Ours {
    const NAME: &'static str = "soe-uring";

    fn new(sessions: usize, window: usize) -> Self {
        assert!((1..=MAX_SESSIONS).contains(&sessions));
        let mut pair = Self {
            client: soe_uring::SoeMultiplexer::new(Self::config()),
            server: soe_uring::SoeMultiplexer::new(Self::config()),
            clock: Clock::start(),
            counters: Counters::new(sessions, window),
        };
        let now = pair.clock.now();
        for i in 0..sessions {
            pair.client.connect(server_addr(i), now).expect("connect");
        }
        for _ in 0..100 {
            if pair.counters.opened == sessions {
                break;
            }
            pair.round();
        }
        assert_eq!(
            pair.counters.opened, sessions,
            "soe-uring: handshakes did not complete"
        );
        for i in 0..sessions {
            for _ in 0..window {
                let m = pair.counters.take_send(i);
                pair.client
                    .enqueue_data(&server_addr(i), &m)
                    .expect("prime");
            }
        }
        pair
    }

    fn round(&mut self) -> u64 {
        let before = self.counters.echoed;
        let now = self.clock.advance();
        self.client.run_tick(now);
        self.client_to_server(now);
        self.server_events();
        let now = self.clock.advance();
        self.server.run_tick(now);
        self.server_to_client(now);
        self.client_events();
        self.counters.echoed - before
    }

    fn echoed(&self) -> u64 {
        self.counters.echoed
    }

    fn sessions(&self) -> usize {
        self.counters.sent.len()
    }

    fn window(&self) -> usize {
        self.counters.window
    }
}

/// The reference multiplexers (`soe-protocol` 2.3.0).
#[derive(Debug)]
pub struct Reference {
    client: sp::SoeMultiplexer<SocketAddr>,
    server: sp::SoeMultiplexer<SocketAddr>,
    clock: Clock,
    counters: Counters,
}

impl Reference {
    fn config(seed: u64) -> sp::SocketConfig {
        sp::SocketConfig {
            default_session_params: sp::SessionParameters {
                application_protocol: PROTOCOL.into(),
                ..sp::SessionParameters::default()
            },
            base_rng_seed: seed,
            ..sp::SocketConfig::default()
        }
    }

    fn client_to_server(&mut self, now: Instant) {
        for (to, datagram) in self.client.take_outgoing() {
            let from = client_addr(index_of_server(&to));
            self.server.process_incoming(from, datagram, now);
        }
    }

    fn server_to_client(&mut self, now: Instant) {
        for (to, datagram) in self.server.take_outgoing() {
            let from = server_addr(index_of_client(&to));
            self.client.process_incoming(from, datagram, now);
        }
    }

    fn server_events(&mut self) {
        for event in self.server.take_events() {
            match event {
                sp::SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } => assert!(
                    self.server.enqueue_data_on(&remote, &data, channel),
                    "server echo"
                ),
                sp::SocketEvent::SessionOpened { .. } => {}
                sp::SocketEvent::SessionClosed { remote, reason } => {
                    panic!("server session {remote} closed: {reason:?}")
                }
            }
        }
    }

    fn client_events(&mut self) {
        for event in self.client.take_events() {
            match event {
                sp::SocketEvent::DataReceived { remote, data, .. } => {
                    let i = index_of_server(&remote);
                    self.counters.on_echo(i, &data);
                    drop::<Bytes>(data);
                    let next = self.counters.take_send(i);
                    assert!(self.client.enqueue_data(&remote, &next), "client send");
                }
                sp::SocketEvent::SessionOpened { .. } => self.counters.opened += 1,
                sp::SocketEvent::SessionClosed { remote, reason } => {
                    panic!("client session {remote} closed: {reason:?}")
                }
            }
        }
    }
}

impl EchoPair for Reference {
    const NAME: &'static str = "soe-protocol";

    fn new(sessions: usize, window: usize) -> Self {
        assert!((1..=MAX_SESSIONS).contains(&sessions));
        let mut pair = Self {
            client: sp::SoeMultiplexer::new(Self::config(1)),
            server: sp::SoeMultiplexer::new(Self::config(1 << 32)),
            clock: Clock::start(),
            counters: Counters::new(sessions, window),
        };
        let now = pair.clock.now();
        for i in 0..sessions {
            pair.client.connect(server_addr(i), now);
        }
        for _ in 0..100 {
            if pair.counters.opened == sessions {
                break;
            }
            pair.round();
        }
        assert_eq!(
            pair.counters.opened, sessions,
            "soe-protocol: handshakes did not complete"
        );
        for i in 0..sessions {
            for _ in 0..window {
                let m = pair.counters.take_send(i);
                assert!(pair.client.enqueue_data(&server_addr(i), &m), "prime");
            }
        }
        pair
    }

    fn round(&mut self) -> u64 {
        let before = self.counters.echoed;
        let now = self.clock.advance();
        self.client.run_tick(now);
        self.client_to_server(now);
        self.server_events();
        let now = self.clock.advance();
        self.server.run_tick(now);
        self.server_to_client(now);
        self.client_events();
        self.counters.echoed - before
    }

    fn echoed(&self) -> u64 {
        self.counters.echoed
    }

    fn sessions(&self) -> usize {
        self.counters.sent.len()
    }

    fn window(&self) -> usize {
        self.counters.window
    }
}
