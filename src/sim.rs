//! Deterministic network simulation: a virtual clock and a seeded lossy link driving
//! several multiplexers with no sockets (feature `sim`).
//!
//! The clock never waits: [`Sim::step`] jumps straight to the next event (a datagram
//! arriving or a multiplexer timer), so a 30-second timeout takes microseconds. The
//! [`LinkConfig`] knobs are independent and seeded, so a failing run replays exactly.
//!
//! ```
//! use soe_uring::sim::{LinkConfig, Sim};
//! use soe_uring::{SocketConfig, SocketEvent};
//!
//! let mut config = SocketConfig::default();
//! config.rng_seed = Some(1);
//! let mut sim = Sim::new(7, LinkConfig::lossy(0.05));
//! let server = sim.add_node(config.clone());
//! let client = sim.add_node(config);
//! sim.connect(client, server);
//! sim.run_until(|sim| sim.node(client).mux.session_count() == 1
//!     && sim.node(client).events.iter().any(|e| matches!(e, SocketEvent::SessionOpened { .. })));
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::mux::{SocketConfig, SocketEvent, SoeMultiplexer};
use crate::protocol::DisconnectReason;
use crate::session::Channel;

/// Behaviour of the simulated link, applied to every datagram independently.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability a datagram is held back by up to `reorder_delay` extra.
    pub reorder: f64,
    /// The extra delay bound for reordered datagrams.
    pub reorder_delay: Duration,
    /// Probability one random bit of a datagram is flipped.
    pub corrupt: f64,
    /// One-way delay.
    pub latency: Duration,
    /// Uniform random extra delay in `[0, jitter)`.
    pub jitter: Duration,
    /// Datagrams larger than this are dropped.
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(20),
            corrupt: 0.0,
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
            mtu: 1500,
        }
    }
}

impl LinkConfig {
    /// A link losing `loss` of datagrams, also duplicating 2 % and reordering 5 %.
    pub fn lossy(loss: f64) -> Self {
        Self {
            loss,
            duplicate: 0.02,
            reorder: 0.05,
            ..Self::default()
        }
    }
}

/// Counters of the link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams offered to the link.
    pub sent: u64,
    /// Datagrams delivered (duplicates included).
    pub delivered: u64,
    /// Datagrams lost.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Datagrams held back.
    pub reordered: u64,
    /// Datagrams with a flipped bit.
    pub corrupted: u64,
    /// Datagrams dropped for exceeding the MTU.
    pub too_big: u64,
}

/// A small, fast, seeded generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// Seeds the generator (any seed, zero included).
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x2545_F491_4F6C_DD1D | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in `[0, n)`; 0 when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// One simulated host: a multiplexer on an address, and the events it produced.
#[derive(Debug)]
pub struct Node {
    /// The host's address.
    pub addr: SocketAddr,
    /// Its multiplexer.
    pub mux: SoeMultiplexer<SocketAddr>,
    /// Events produced and not yet taken by the test.
    pub events: Vec<SocketEvent<SocketAddr>>,
}

impl Node {
    /// Whether any session of this host has opened (among the events not yet
    /// taken).
    pub fn opened(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, SocketEvent::SessionOpened { .. }))
    }

    /// The reason of the first session close among the events not yet taken.
    pub fn closed(&self) -> Option<DisconnectReason> {
        self.events.iter().find_map(|e| match e {
            SocketEvent::SessionClosed { reason, .. } => Some(*reason),
            _ => None,
        })
    }

    /// The messages received (among the events not yet taken), with their
    /// channels, in order.
    pub fn received(&self) -> Vec<(Vec<u8>, Channel)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SocketEvent::DataReceived { data, channel, .. } => Some((data.to_vec(), *channel)),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    order: u64,
    to: usize,
    /// The address it was sent to (a host that moved away no longer gets it).
    to_addr: SocketAddr,
    from: SocketAddr,
    bytes: Vec<u8>,
}

/// A set of multiplexers joined by one simulated link.
#[derive(Debug)]
pub struct Sim {
    epoch: Instant,
    now: Instant,
    link: LinkConfig,
    rng: SimRng,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    stats: LinkStats,
    spare: Vec<Vec<u8>>,
    /// Every datagram offered to the link, when capturing.
    captured: Option<Vec<(SocketAddr, Vec<u8>)>>,
}

impl Sim {
    /// An empty simulation with a seeded link.
    pub fn new(seed: u64, link: LinkConfig) -> Self {
        // The only clock read: an arbitrary epoch the virtual time counts from.
        #[allow(clippy::disallowed_methods)]
        let epoch = Instant::now();
        Self {
            epoch,
            now: epoch,
            link,
            rng: SimRng::new(seed),
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            order: 0,
            stats: LinkStats::default(),
            spare: Vec::new(),
            captured: None,
        }
    }

    /// Adds a host at `10.0.0.<n>:<20000+n>` and returns its index.
    pub fn add_node(&mut self, config: SocketConfig) -> usize {
        let n = self.nodes.len();
        let ip = Ipv4Addr::new(10, 0, (n / 250) as u8, (n % 250 + 1) as u8);
        let addr = SocketAddr::from((ip, 20_000 + n as u16));
        self.nodes.push(Node {
            addr,
            mux: SoeMultiplexer::new(config),
            events: Vec::new(),
        });
        n
    }

    /// The host at `index`.
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    /// The host at `index`, mutably.
    pub fn node_mut(&mut self, index: usize) -> &mut Node {
        &mut self.nodes[index]
    }

    /// The address of host `index`.
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.nodes[index].addr
    }

    /// Virtual time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.epoch
    }

    /// Link counters.
    pub fn link_stats(&self) -> LinkStats {
        self.stats
    }

    /// Changes the link (e.g. a blackout) mid-run.
    pub fn set_link(&mut self, link: LinkConfig) {
        self.link = link;
    }

    /// Moves host `index` to `addr`, as a NAT rebinding does: from now on its
    /// datagrams come from `addr`, and datagrams still on their way to the old
    /// address are lost.
    pub fn set_addr(&mut self, index: usize, addr: SocketAddr) {
        self.nodes[index].addr = addr;
    }

    /// Starts recording every datagram a host sends (before loss or corruption), to
    /// read back with [`Sim::take_captured`].
    pub fn capture(&mut self) {
        self.captured.get_or_insert_with(Vec::new);
    }

    /// The datagrams recorded since the last call, with their sender.
    pub fn take_captured(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.captured
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Opens a session from host `client` to host `server`.
    pub fn connect(&mut self, client: usize, server: usize) {
        let to = self.nodes[server].addr;
        let now = self.now;
        let _ = self.nodes[client].mux.connect(to, now);
        self.pump(client);
    }

    /// Flushes host `index` and puts its datagrams on the link. Call after
    /// enqueueing outside [`Sim::step`].
    pub fn pump(&mut self, index: usize) {
        let now = self.now;
        self.nodes[index].mux.run_tick(now);
        self.transmit(index);
    }

    fn transmit(&mut self, index: usize) {
        let from = self.nodes[index].addr;
        let count = self.nodes[index].mux.outgoing_len();
        for i in 0..count {
            let (to_addr, bytes) = self.nodes[index].mux.outgoing(i);
            let Some(to) = self.nodes.iter().position(|n| n.addr == *to_addr) else {
                continue;
            };
            let to_addr = *to_addr;
            let mut copy = self.spare.pop().unwrap_or_default();
            copy.clear();
            copy.extend_from_slice(bytes);
            self.offer(from, to, to_addr, copy);
        }
        self.nodes[index].mux.consume_outgoing(count);
        let events = &mut self.nodes[index];
        events.events.extend(events.mux.drain_events());
    }

    fn offer(&mut self, from: SocketAddr, to: usize, to_addr: SocketAddr, mut bytes: Vec<u8>) {
        let link = self.link;
        self.stats.sent += 1;
        if let Some(captured) = self.captured.as_mut() {
            captured.push((from, bytes.clone()));
        }
        if bytes.len() > link.mtu {
            self.stats.too_big += 1;
            self.spare.push(bytes);
            return;
        }
        if self.rng.chance(link.loss) {
            self.stats.lost += 1;
            self.spare.push(bytes);
            return;
        }
        if self.rng.chance(link.corrupt) && !bytes.is_empty() {
            let bit = self.rng.below(bytes.len() as u64 * 8);
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.stats.corrupted += 1;
        }
        let copies = if self.rng.chance(link.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for copy in 0..copies {
            let mut delay = link.latency;
            if !link.jitter.is_zero() {
                delay += Duration::from_nanos(self.rng.below(link.jitter.as_nanos() as u64));
            }
            if self.rng.chance(link.reorder) {
                self.stats.reordered += 1;
                delay +=
                    Duration::from_nanos(self.rng.below(link.reorder_delay.as_nanos() as u64 + 1));
            }
            self.order += 1;
            let bytes = if copy + 1 == copies {
                std::mem::take(&mut bytes)
            } else {
                bytes.clone()
            };
            self.queue.push(Reverse(InFlight {
                at: self.now + delay,
                order: self.order,
                to,
                to_addr,
                from,
                bytes,
            }));
        }
    }

    /// The next time something happens, if anything is pending.
    pub fn next_event(&self) -> Option<Instant> {
        let arrival = self.queue.peek().map(|Reverse(f)| f.at);
        let timers = self
            .nodes
            .iter()
            .filter_map(|n| n.mux.next_deadline())
            .min();
        match (arrival, timers) {
            (Some(a), Some(t)) => Some(a.min(t)),
            (a, t) => a.or(t),
        }
    }

    /// Advances to the next event, delivers what arrives then and runs every host's
    /// timers. Returns `false` when nothing at all is pending.
    pub fn step(&mut self) -> bool {
        let Some(next) = self.next_event() else {
            return false;
        };
        self.now = self.now.max(next);
        let now = self.now;
        while let Some(Reverse(f)) = self.queue.peek() {
            if f.at > now {
                break;
            }
            let Reverse(f) = self.queue.pop().expect("peeked");
            if self.nodes[f.to].addr != f.to_addr {
                self.stats.lost += 1;
                self.spare.push(f.bytes);
                continue;
            }
            self.stats.delivered += 1;
            self.nodes[f.to].mux.process_incoming(f.from, &f.bytes, now);
            self.spare.push(f.bytes);
        }
        for i in 0..self.nodes.len() {
            self.pump(i);
        }
        true
    }

    /// Steps until `done` holds or the simulation goes idle. Returns whether `done`
    /// held.
    pub fn run_until(&mut self, mut done: impl FnMut(&Self) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            if !self.step() {
                return done(self);
            }
        }
    }

    /// Steps until virtual time reaches `until` (or nothing is pending).
    pub fn run_for(&mut self, span: Duration) {
        let until = self.now + span;
        while self.next_event().is_some_and(|t| t <= until) {
            self.step();
        }
        self.now = self.now.max(until);
    }
}
