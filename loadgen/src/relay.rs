//! A chaos relay: a UDP proxy between clients and a server that impairs the path
//! the way real networks do, seeded so runs repeat.
//!
//! Each client address gets its own upstream socket towards the target (as a NAT
//! gives each client its own mapping). Both directions can lose, duplicate, reorder,
//! delay and jitter datagrams, pass through a rate-limited link with a bounded
//! queue, or go dark for a while; and a client's mapping can be *rebound*: after a
//! time or a number of datagrams its upstream socket is replaced by one on a new
//! port (optionally a new address), so the server sees the client move and its
//! replies to the old mapping are lost, as when a NAT mapping expires.
//!
//! Impairments are written as one spec string, e.g.
//! `loss=0.1,dup=0.05,reorder=0.05,delay=20ms,jitter=5ms,rate=2000000,queue=64,
//! blackhole=10s+2s,rebind=5s,seed=7`; see [`Chaos::parse`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

/// What the relay does to datagrams. Probabilities apply per datagram and per
/// direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Chaos {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by up to `reorder_delay`, so later
    /// ones overtake it.
    pub reorder: f64,
    /// How long a reordered datagram may be held back.
    pub reorder_delay: Duration,
    /// One-way delay.
    pub delay: Duration,
    /// Up to this much more delay, uniformly.
    pub jitter: Duration,
    /// Link rate in bytes per second per direction (`None`: unlimited).
    pub rate: Option<u64>,
    /// Datagrams the rate-limited link queues; more are dropped.
    pub queue: usize,
    /// Everything is dropped during `[start, start + length)` since the relay began.
    pub blackhole: Option<(Duration, Duration)>,
    /// Each client's mapping moves to a new port after this long (and every this
    /// long after).
    pub rebind_after: Option<Duration>,
    /// Each client's mapping moves after this many datagrams from it.
    pub rebind_every: Option<u64>,
    /// A rebound mapping also gets a new source address (127.0.0.0/8).
    pub rebind_address: bool,
    /// Seed of the relay's random choices.
    pub seed: u64,
}

impl Default for Chaos {
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(10),
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate: None,
            queue: 64,
            blackhole: None,
            rebind_after: None,
            rebind_every: None,
            rebind_address: false,
            seed: 1,
        }
    }
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        (v, 1e-3)
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{v:?} is not a duration (e.g. 20ms, 1.5s)"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("{v:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(n * scale))
}

fn parse_probability(key: &str, v: &str) -> Result<f64, String> {
    let p: f64 = v.parse().map_err(|_| format!("{key}={v}: not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{key}={v}: a probability is between 0 and 1"))
    }
}

impl Chaos {
    /// Parses a spec: comma-separated `key=value` pairs. Keys: `loss`, `dup`,
    /// `reorder` (probabilities), `reorder-delay`, `delay`, `jitter` (durations:
    /// `20ms`, `1.5s`; bare numbers are milliseconds), `rate` (bytes/s), `queue`
    /// (datagrams), `blackhole=START+LENGTH`, `rebind=PERIOD`,
    /// `rebind-packets=N`, `rebind-address` (flag), `seed=N`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut chaos = Self::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let int = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{key}={v}: not a whole number"))
            };
            match key {
                "loss" => chaos.loss = parse_probability(key, value)?,
                "dup" | "duplicate" => chaos.duplicate = parse_probability(key, value)?,
                "reorder" => chaos.reorder = parse_probability(key, value)?,
                "reorder-delay" => chaos.reorder_delay = parse_duration(value)?,
                "delay" => chaos.delay = parse_duration(value)?,
                "jitter" => chaos.jitter = parse_duration(value)?,
                "rate" => chaos.rate = Some(int(value)?.max(1)),
                "queue" => chaos.queue = int(value)? as usize,
                "blackhole" => {
                    let (start, length) = value
                        .split_once('+')
                        .ok_or("blackhole=START+LENGTH, e.g. blackhole=10s+2s")?;
                    chaos.blackhole = Some((parse_duration(start)?, parse_duration(length)?));
                }
                "rebind" => chaos.rebind_after = Some(parse_duration(value)?),
                "rebind-packets" => chaos.rebind_every = Some(int(value)?.max(1)),
                "rebind-address" => chaos.rebind_address = true,
                "seed" => chaos.seed = int(value)?.max(1),
                _ => return Err(format!("unknown relay setting {key:?}")),
            }
        }
        Ok(chaos)
    }
}

/// What the relay did, per direction.
#[derive(Debug, Default)]
pub struct RelayCounters {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub lost: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub queue_drops: AtomicU64,
    pub blackholed: AtomicU64,
}

/// Counters of both directions and of rebindings.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub to_server: RelayCounters,
    pub to_client: RelayCounters,
    pub rebinds: AtomicU64,
}

impl RelayStats {
    /// A one-line summary.
    pub fn summary(&self) -> String {
        let d = |c: &RelayCounters| {
            format!(
                "{} in, {} out, {} lost, {} duplicated, {} reordered, {} queue drops, {} blackholed",
                c.received.load(Ordering::Relaxed),
                c.forwarded.load(Ordering::Relaxed),
                c.lost.load(Ordering::Relaxed),
                c.duplicated.load(Ordering::Relaxed),
                c.reordered.load(Ordering::Relaxed),
                c.queue_drops.load(Ordering::Relaxed),
                c.blackholed.load(Ordering::Relaxed),
            )
        };
        format!(
            "to server: {}; to client: {}; {} rebinds",
            d(&self.to_server),
            d(&self.to_client),
            self.rebinds.load(Ordering::Relaxed)
        )
    }
}

/// A relay running on its own thread. Dropping it stops it.
pub struct Relay {
    pub listen: SocketAddr,
    pub stats: Arc<RelayStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Relay {
    /// Binds `listen` (port 0 picks one) and relays to `target` with `chaos`.
    pub fn start(listen: SocketAddr, target: SocketAddr, chaos: Chaos) -> io::Result<Self> {
        let socket = UdpSocket::bind(listen)?;
        let listen = socket.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut worker = Worker::new(socket, target, chaos, stats.clone(), stop.clone())?;
        let thread = std::thread::Builder::new()
            .name("loadgen-relay".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            listen,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the relay and reports a failure of its thread.
    pub fn stop(mut self) -> io::Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the relay thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

const LISTENER: Token = Token(usize::MAX);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    ToServer,
    ToClient,
}

/// A datagram waiting for its release time.
struct Held {
    at: Instant,
    order: u64,
    direction: Direction,
    client: usize,
    /// For the server: the mapping it crossed (a rebinding does not move it).
    upstream: Option<Arc<UdpSocket>>,
    bytes: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// One client's mapping.
struct Mapping {
    client: SocketAddr,
    upstream: Arc<UdpSocket>,
    created: Instant,
    datagrams: u64,
}

/// The state of a rate-limited link in one direction.
#[derive(Default)]
struct Link {
    /// When the link is free again.
    free_at: Option<Instant>,
    /// Datagrams in flight on the link (waiting to be released).
    queued: usize,
}

struct Worker {
    listener: UdpSocket,
    target: SocketAddr,
    chaos: Chaos,
    stats: Arc<RelayStats>,
    stop: Arc<AtomicBool>,
    poll: Poll,
    mappings: Vec<Mapping>,
    by_client: HashMap<SocketAddr, usize>,
    held: BinaryHeap<Reverse<Held>>,
    links: [Link; 2],
    order: u64,
    rng: u64,
    started: Instant,
    buf: Vec<u8>,
    next_address: u32,
}

impl Worker {
    fn new(
        mut listener: UdpSocket,
        target: SocketAddr,
        chaos: Chaos,
        stats: Arc<RelayStats>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Self {
            listener,
            target,
            rng: chaos.seed.max(1),
            chaos,
            stats,
            stop,
            poll,
            mappings: Vec::new(),
            by_client: HashMap::new(),
            held: BinaryHeap::new(),
            links: [Link::default(), Link::default()],
            order: 0,
            started: now(),
            buf: vec![0; 65_536],
            next_address: 0,
        })
    }

    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.random() < p
    }

    /// An upstream socket for a new or rebound mapping.
    fn upstream(&mut self, token: usize, new_address: bool) -> io::Result<UdpSocket> {
        let ip = match self.target {
            SocketAddr::V4(t) if t.ip().is_loopback() && new_address => {
                self.next_address += 1;
                let n = self.next_address;
                Ipv4Addr::new(
                    127,
                    20 + (n >> 16) as u8 % 200,
                    (n >> 8) as u8,
                    1 + n as u8 % 250,
                )
                .into()
            }
            SocketAddr::V4(t) if t.ip().is_loopback() => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        let mut socket = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        self.poll
            .registry()
            .register(&mut socket, Token(token), Interest::READABLE)?;
        Ok(socket)
    }

    fn mapping_for(&mut self, client: SocketAddr) -> io::Result<usize> {
        if let Some(&i) = self.by_client.get(&client) {
            return Ok(i);
        }
        let i = self.mappings.len();
        let upstream = Arc::new(self.upstream(i, false)?);
        self.mappings.push(Mapping {
            client,
            upstream,
            created: now(),
            datagrams: 0,
        });
        self.by_client.insert(client, i);
        Ok(i)
    }

    /// Moves a mapping to a new upstream socket if it is due.
    fn maybe_rebind(&mut self, i: usize, at: Instant) -> io::Result<()> {
        let m = &self.mappings[i];
        let by_time = self
            .chaos
            .rebind_after
            .is_some_and(|t| at.duration_since(m.created) >= t);
        let by_count = self.chaos.rebind_every.is_some_and(|n| m.datagrams >= n);
        if !(by_time || by_count) {
            return Ok(());
        }
        let fresh = Arc::new(self.upstream(i, self.chaos.rebind_address)?);
        let old = std::mem::replace(&mut self.mappings[i].upstream, fresh);
        // Replies to the old mapping are no longer read; datagrams that crossed it
        // still leave through it.
        let fd = old.as_raw_fd();
        let _ = self
            .poll
            .registry()
            .deregister(&mut mio::unix::SourceFd(&fd));
        let m = &mut self.mappings[i];
        m.created = at;
        m.datagrams = 0;
        self.stats.rebinds.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Applies the impairments to one datagram and schedules what survives.
    fn admit(&mut self, direction: Direction, client: usize, bytes: &[u8], at: Instant) {
        let stats = self.stats.clone();
        let counters = match direction {
            Direction::ToServer => &stats.to_server,
            Direction::ToClient => &stats.to_client,
        };
        counters.received.fetch_add(1, Ordering::Relaxed);
        if let Some((start, length)) = self.chaos.blackhole {
            let since = at.duration_since(self.started);
            if since >= start && since < start + length {
                counters.blackholed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if self.chance(self.chaos.loss) {
            counters.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let copies = if self.chance(self.chaos.duplicate) {
            counters.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut release = at + self.chaos.delay;
            if !self.chaos.jitter.is_zero() {
                release += self.chaos.jitter.mul_f64(self.random());
            }
            if self.chance(self.chaos.reorder) {
                counters.reordered.fetch_add(1, Ordering::Relaxed);
                release += self.chaos.reorder_delay.mul_f64(self.random());
            }
            if let Some(rate) = self.chaos.rate {
                let link = &mut self.links[direction as usize];
                if link.queued >= self.chaos.queue {
                    counters.queue_drops.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let start = link.free_at.map_or(at, |f| f.max(at));
                let serialization = Duration::from_secs_f64(bytes.len() as f64 / rate as f64);
                link.free_at = Some(start + serialization);
                link.queued += 1;
                release = release.max(start + serialization);
            }
            self.order += 1;
            let upstream =
                (direction == Direction::ToServer).then(|| self.mappings[client].upstream.clone());
            self.held.push(Reverse(Held {
                at: release,
                order: self.order,
                direction,
                client,
                upstream,
                bytes: bytes.to_vec(),
            }));
        }
    }

    /// Sends every held datagram whose time has come.
    fn release(&mut self, at: Instant) {
        while self.held.peek().is_some_and(|Reverse(h)| h.at <= at) {
            let Reverse(h) = self.held.pop().expect("peeked");
            if self.chaos.rate.is_some() {
                let link = &mut self.links[h.direction as usize];
                link.queued = link.queued.saturating_sub(1);
            }
            let m = &self.mappings[h.client];
            let (sent, counters) = match (&h.upstream, h.direction) {
                (Some(upstream), _) => (
                    upstream.send_to(&h.bytes, self.target),
                    &self.stats.to_server,
                ),
                (None, Direction::ToServer) => continue,
                (None, Direction::ToClient) => (
                    self.listener.send_to(&h.bytes, m.client),
                    &self.stats.to_client,
                ),
            };
            if sent.is_ok() {
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Relaxed) {
            let at = now();
            self.release(at);
            let timeout = self
                .held
                .peek()
                .map(|Reverse(h)| h.at.saturating_duration_since(at))
                .unwrap_or(Duration::from_millis(50))
                .min(Duration::from_millis(50));
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in &events {
                let token = event.token();
                loop {
                    let received = if token == LISTENER {
                        self.listener.recv_from(&mut self.buf)
                    } else {
                        self.mappings[token.0].upstream.recv_from(&mut self.buf)
                    };
                    let (n, from) = match received {
                        Ok(r) => r,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // E.g. ICMP port unreachable from a closed client: skip it.
                        Err(_) => continue,
                    };
                    let at = now();
                    let bytes = self.buf[..n].to_vec();
                    if token == LISTENER {
                        let i = self.mapping_for(from)?;
                        self.mappings[i].datagrams += 1;
                        self.maybe_rebind(i, at)?;
                        self.admit(Direction::ToServer, i, &bytes, at);
                    } else if from == self.target {
                        self.admit(Direction::ToClient, token.0, &bytes, at);
                    }
                }
            }
        }
        Ok(())
    }
}

#[allow(clippy::disallowed_methods)] // the relay is a runtime: it reads the clock
fn now() -> Instant {
    Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_are_explained() {
        let c = Chaos::parse(
            "loss=0.1,dup=0.05,reorder=0.05,delay=20ms,jitter=5,rate=2000000,queue=32,blackhole=10s+2s,rebind=5s,rebind-packets=100,rebind-address,seed=7",
        )
        .unwrap();
        assert_eq!(c.loss, 0.1);
        assert_eq!(c.duplicate, 0.05);
        assert_eq!(c.delay, Duration::from_millis(20));
        assert_eq!(c.jitter, Duration::from_millis(5));
        assert_eq!(c.rate, Some(2_000_000));
        assert_eq!(c.queue, 32);
        assert_eq!(
            c.blackhole,
            Some((Duration::from_secs(10), Duration::from_secs(2)))
        );
        assert_eq!(c.rebind_after, Some(Duration::from_secs(5)));
        assert_eq!(c.rebind_every, Some(100));
        assert!(c.rebind_address);
        assert_eq!(c.seed, 7);
        assert!(Chaos::parse("loss=2").unwrap_err().contains("probability"));
        assert!(Chaos::parse("warp=9").unwrap_err().contains("unknown"));
        assert!(
            Chaos::parse("blackhole=3s")
                .unwrap_err()
                .contains("START+LENGTH")
        );
        assert_eq!(Chaos::parse("").unwrap(), Chaos::default());
    }

    /// Through a relay with 30 % loss, duplication and reordering, an echo peer
    /// sees about the right share of datagrams; a rebinding relay shows the client
    /// to the server from a new port.
    #[test]
    #[allow(clippy::disallowed_methods)]
    fn impairs_and_rebinds_over_loopback() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let chaos =
            Chaos::parse("loss=0.3,dup=0.1,reorder=0.2,delay=1ms,rebind-packets=100,seed=3")
                .unwrap();
        let relay = Relay::start(
            "127.0.0.1:0".parse().unwrap(),
            server.local_addr().unwrap(),
            chaos,
        )
        .unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..300u32 {
            client.send_to(&i.to_be_bytes(), relay.listen).unwrap();
        }
        let mut got = 0;
        let mut sources = std::collections::HashSet::new();
        let mut buf = [0u8; 16];
        while let Ok((_, from)) = server.recv_from(&mut buf) {
            got += 1;
            sources.insert(from);
        }
        // 300 × 0.7 × 1.1 ≈ 231 expected.
        assert!((170..=290).contains(&got), "{got}");
        assert!(
            sources.len() >= 3,
            "rebound every 100 datagrams: {sources:?}"
        );
        assert!(relay.stats.rebinds.load(Ordering::Relaxed) >= 2);
        relay.stop().unwrap();
    }
}
