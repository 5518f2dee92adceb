//! `--scenario game`: clients send small inputs at a fixed rate; the server's tick
//! loop sends every live session a state update each tick, plus occasional large
//! reliable zone-ins on a seeded schedule.
//!
//! The server side ([`GameLogic`]) is sans-IO and shared by the three servers: the
//! soe-uring shards call it from `ShardHandler::on_tick`, the two Tokio servers from
//! a timer in their event loop, so each gets the same tick logic.
//!
//! Wire format (little endian):
//!
//! * input (client → server): the echo scenario's 16-byte header (`A5`, session
//!   number in 24 bits, input sequence `u32`, client time `u64`) and a pattern.
//! * state (server → client, `--state-size` bytes): `C3`, the session number the
//!   inputs carry (`FFFFFF` before the first), state sequence `u32`, server time
//!   `u64` (`CLOCK_MONOTONIC` ns when the tick began), last input sequence received
//!   `u32`, inputs received `u32`, zone-ins queued so far `u32`, then a pattern.
//! * zone-in (server → client): `D4`, 3 zero bytes, zone-in sequence `u32` (from 1),
//!   server time `u64`, then a pattern up to its length.
//!
//! Because states carry the server's counts, the client can tell what it should have
//! received without a side channel, so `run --scenario game` against `serve
//! --scenario game` in another process reports the same numbers as `bench`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use soe_uring::Channel;

use crate::args::{GameClientOpts, GameServerOpts, SizeRange};
use crate::client::histogram;
use crate::report::Percentiles;

pub const INPUT_MAGIC: u8 = 0xA5;
pub const STATE_MAGIC: u8 = 0xC3;
pub const ZONE_MAGIC: u8 = 0xD4;
/// Header of a state update.
pub const STATE_HEADER: usize = 28;
/// Header of a zone-in.
pub const ZONE_HEADER: usize = 16;
/// Session number of a state sent before any input arrived.
const NO_SESSION: u32 = 0x00FF_FFFF;

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of the host,
/// so a server in another process can timestamp what a client measures.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The last bytes of a state or zone-in are this pattern.
pub fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(13) ^ 0x3C
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn le32(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"))
}

// ---------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------

/// The server's settings (`--tick-rate`, `--state-size`, …).
#[derive(Debug, Clone)]
pub struct GameServerCfg {
    pub tick: Duration,
    pub state_size: usize,
    pub state_channel: Channel,
    /// `None`: no zone-ins.
    pub zone_in_every: Option<Duration>,
    pub zone_in_size: SizeRange,
    pub zone_in_channel: Channel,
    pub seed: u64,
}

impl GameServerCfg {
    pub fn new(o: &GameServerOpts) -> Self {
        Self {
            tick: Duration::from_secs_f64(1.0 / o.tick_rate),
            state_size: o.state_size as usize,
            state_channel: o.state_channel.0,
            zone_in_every: (o.zone_in_every > 0.0)
                .then(|| Duration::from_secs_f64(o.zone_in_every)),
            zone_in_size: o.zone_in_size,
            zone_in_channel: o.zone_in_channel.0,
            seed: o.seed,
        }
    }
}

/// The server's counters, summed over shards; written once per tick.
#[derive(Debug, Default)]
pub struct GameCounters {
    pub ticks: AtomicU64,
    /// Ticks that began more than one period late (the loop skipped ahead).
    pub ticks_late: AtomicU64,
    pub states_sent: AtomicU64,
    pub zone_ins_sent: AtomicU64,
    pub zone_in_bytes: AtomicU64,
    /// Sends the session refused (queue full); a refused zone-in is retried next tick.
    pub refused: AtomicU64,
    pub inputs: AtomicU64,
    /// Messages from clients that are not inputs.
    pub bad_inputs: AtomicU64,
}

impl GameCounters {
    pub fn snapshot(&self) -> GameServerSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GameServerSnapshot {
            ticks: get(&self.ticks),
            ticks_late: get(&self.ticks_late),
            states_sent: get(&self.states_sent),
            zone_ins_sent: get(&self.zone_ins_sent),
            refused: get(&self.refused),
            inputs: get(&self.inputs),
            bad_inputs: get(&self.bad_inputs),
        }
    }

    /// One line for `serve`.
    pub fn summary(&self) -> String {
        let s = self.snapshot();
        format!(
            "game: ticks {} (late {}) | states sent {} | zone-ins sent {} ({} bytes) | refused {} | inputs {} (bad {})",
            s.ticks,
            s.ticks_late,
            s.states_sent,
            s.zone_ins_sent,
            self.zone_in_bytes.load(Ordering::Relaxed),
            s.refused,
            s.inputs,
            s.bad_inputs
        )
    }
}

/// [`GameCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GameServerSnapshot {
    pub ticks: u64,
    pub ticks_late: u64,
    pub states_sent: u64,
    pub zone_ins_sent: u64,
    pub refused: u64,
    pub inputs: u64,
    pub bad_inputs: u64,
}

impl GameServerSnapshot {
    pub fn since(&self, start: &Self) -> Self {
        Self {
            ticks: self.ticks.saturating_sub(start.ticks),
            ticks_late: self.ticks_late.saturating_sub(start.ticks_late),
            states_sent: self.states_sent.saturating_sub(start.states_sent),
            zone_ins_sent: self.zone_ins_sent.saturating_sub(start.zone_ins_sent),
            refused: self.refused.saturating_sub(start.refused),
            inputs: self.inputs.saturating_sub(start.inputs),
            bad_inputs: self.bad_inputs.saturating_sub(start.bad_inputs),
        }
    }
}

/// What a send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Ok,
    /// The session (or command) queue is full: try again later.
    Full,
    /// The session or server is gone.
    Gone,
}

#[derive(Debug)]
struct Player {
    remote: SocketAddr,
    tag: u32,
    state_seq: u32,
    last_input: u32,
    inputs: u32,
    zone_sent: u32,
    /// When the next zone-in is due (ns, `mono_ns`); `u64::MAX`: never.
    next_zone_ns: u64,
}

/// The game server's logic for the sessions of one thread (one shard, or one Tokio
/// server). Allocation-free per message: the state and zone-in buffers are reused.
pub struct GameLogic {
    cfg: GameServerCfg,
    players: Vec<Player>,
    index: HashMap<SocketAddr, usize>,
    rng: u64,
    next_tick: Option<Instant>,
    state: Vec<u8>,
    zone: Vec<u8>,
    // Local counts, published once per tick.
    inputs: u64,
    bad_inputs: u64,
    counters: std::sync::Arc<GameCounters>,
}

impl GameLogic {
    pub fn new(cfg: GameServerCfg, counters: std::sync::Arc<GameCounters>, shard: usize) -> Self {
        let state = (0..cfg.state_size).map(pattern).collect();
        let zone_len = if cfg.zone_in_every.is_some() {
            cfg.zone_in_size.max
        } else {
            0
        };
        let zone = (0..zone_len).map(pattern).collect();
        let rng = (cfg.seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(shard as u64 * 2 + 1) | 1;
        Self {
            cfg,
            players: Vec::with_capacity(1024),
            index: HashMap::with_capacity(1024),
            rng,
            next_tick: None,
            state,
            zone,
            inputs: 0,
            bad_inputs: 0,
            counters,
        }
    }

    fn random(&mut self) -> u64 {
        xorshift(&mut self.rng)
    }

    /// Nanoseconds until the next zone-in of a session: uniform in 0.5–1.5× the mean
    /// (`first`: uniform in 0–1×, so the sessions' zone-ins spread out).
    fn zone_interval(&mut self, first: bool) -> u64 {
        let Some(every) = self.cfg.zone_in_every else {
            return u64::MAX;
        };
        let mean = every.as_nanos() as u64;
        let r = self.random() % mean.max(1);
        if first { r } else { mean / 2 + r }
    }

    pub fn opened(&mut self, remote: SocketAddr) {
        if self.index.contains_key(&remote) {
            return;
        }
        let next = self.zone_interval(true);
        self.index.insert(remote, self.players.len());
        self.players.push(Player {
            remote,
            tag: NO_SESSION,
            state_seq: 0,
            last_input: 0,
            inputs: 0,
            zone_sent: 0,
            next_zone_ns: mono_ns().saturating_add(next),
        });
    }

    pub fn closed(&mut self, remote: &SocketAddr) {
        if let Some(i) = self.index.remove(remote) {
            self.players.swap_remove(i);
            if let Some(moved) = self.players.get(i) {
                self.index.insert(moved.remote, i);
            }
        }
    }

    pub fn remapped(&mut self, old: &SocketAddr, new: SocketAddr) {
        if let Some(i) = self.index.remove(old) {
            self.players[i].remote = new;
            self.index.insert(new, i);
        }
    }

    pub fn input(&mut self, remote: &SocketAddr, data: &[u8]) {
        let Some(&i) = self.index.get(remote) else {
            self.bad_inputs += 1;
            return;
        };
        if data.len() < 16 || data[0] != INPUT_MAGIC {
            self.bad_inputs += 1;
            return;
        }
        let p = &mut self.players[i];
        p.tag = u32::from_le_bytes([data[1], data[2], data[3], 0]);
        let seq = le32(data, 4);
        // Unreliable inputs may come out of order: keep the newest.
        if p.inputs == 0 || seq.wrapping_sub(p.last_input) < 1 << 31 {
            p.last_input = seq;
        }
        p.inputs = p.inputs.wrapping_add(1);
        self.inputs += 1;
    }

    /// When the next tick is due.
    pub fn next_tick(&mut self, now: Instant) -> Instant {
        *self.next_tick.get_or_insert(now + self.cfg.tick)
    }

    /// Runs a tick if one is due: one state update to every session, and the
    /// zone-ins that are due. `send` queues one message.
    pub fn tick_if_due(
        &mut self,
        now: Instant,
        send: &mut impl FnMut(SocketAddr, &[u8], Channel) -> Sent,
    ) {
        let due = self.next_tick(now);
        if now < due {
            return;
        }
        let c = self.counters.clone();
        if now >= due + self.cfg.tick {
            // A shard with no sessions is not woken for ticks: not late then.
            if !self.players.is_empty() {
                c.ticks_late.fetch_add(1, Ordering::Relaxed);
            }
            self.next_tick = Some(now + self.cfg.tick);
        } else {
            self.next_tick = Some(due + self.cfg.tick);
        }
        let now_ns = mono_ns();
        let (mut states, mut zones, mut zone_bytes, mut refused) = (0u64, 0u64, 0u64, 0u64);
        let mut i = 0;
        while i < self.players.len() {
            let mut gone = false;
            // Zone-in first, so the state that follows counts it.
            if self.players[i].next_zone_ns <= now_ns {
                let span = (self.cfg.zone_in_size.max - self.cfg.zone_in_size.min) as u64 + 1;
                let size = self.cfg.zone_in_size.min + (self.random() % span) as usize;
                let p = &self.players[i];
                let seq = p.zone_sent + 1;
                self.zone[0] = ZONE_MAGIC;
                self.zone[1..4].fill(0);
                self.zone[4..8].copy_from_slice(&seq.to_le_bytes());
                self.zone[8..16].copy_from_slice(&now_ns.to_le_bytes());
                match send(p.remote, &self.zone[..size], self.cfg.zone_in_channel) {
                    Sent::Ok => {
                        zones += 1;
                        zone_bytes += size as u64;
                        let next = self.zone_interval(false);
                        let p = &mut self.players[i];
                        p.zone_sent = seq;
                        p.next_zone_ns = now_ns.saturating_add(next);
                    }
                    // Retried next tick.
                    Sent::Full => refused += 1,
                    Sent::Gone => gone = true,
                }
            }
            if !gone {
                let p = &mut self.players[i];
                let b = &mut self.state;
                b[0] = STATE_MAGIC;
                b[1..4].copy_from_slice(&p.tag.to_le_bytes()[..3]);
                b[4..8].copy_from_slice(&p.state_seq.to_le_bytes());
                b[8..16].copy_from_slice(&now_ns.to_le_bytes());
                b[16..20].copy_from_slice(&p.last_input.to_le_bytes());
                b[20..24].copy_from_slice(&p.inputs.to_le_bytes());
                b[24..28].copy_from_slice(&p.zone_sent.to_le_bytes());
                match send(p.remote, b, self.cfg.state_channel) {
                    Sent::Ok => {
                        states += 1;
                        p.state_seq = p.state_seq.wrapping_add(1);
                    }
                    // A state is not retried: the next one supersedes it. Its
                    // sequence number is used, so the client counts it lost.
                    Sent::Full => {
                        refused += 1;
                        p.state_seq = p.state_seq.wrapping_add(1);
                    }
                    Sent::Gone => gone = true,
                }
            }
            if gone {
                let remote = self.players[i].remote;
                self.closed(&remote);
            } else {
                i += 1;
            }
        }
        c.ticks.fetch_add(1, Ordering::Relaxed);
        c.states_sent.fetch_add(states, Ordering::Relaxed);
        c.zone_ins_sent.fetch_add(zones, Ordering::Relaxed);
        c.zone_in_bytes.fetch_add(zone_bytes, Ordering::Relaxed);
        c.refused.fetch_add(refused, Ordering::Relaxed);
        c.inputs
            .fetch_add(std::mem::take(&mut self.inputs), Ordering::Relaxed);
        c.bad_inputs
            .fetch_add(std::mem::take(&mut self.bad_inputs), Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------

/// Inputs remembered per session for the input → state latency.
const INPUT_RING: usize = 256;
/// A session's inputs count as delivered (or lost) once a state generated this long
/// after the window ended has arrived.
const INPUT_GRACE_NS: u64 = 100_000_000;

/// The clients' settings.
#[derive(Debug, Clone)]
pub struct GameClientCfg {
    pub input_rate: f64,
    pub input_size: usize,
    pub input_channel: Channel,
}

impl GameClientCfg {
    pub fn new(o: &GameClientOpts) -> Self {
        Self {
            input_rate: o.input_rate,
            input_size: o.input_size as usize,
            input_channel: o.input_channel.0,
        }
    }
}

#[derive(Debug, Default)]
struct Session {
    // Inputs.
    inputs_sent: u32,
    last_input_sent: Option<u32>,
    /// (sequence, client ns) of inputs no state has reflected yet.
    unacked: VecDeque<(u32, u64)>,
    /// Inputs the server reported received (latest state).
    server_inputs: u32,
    inputs_settled: bool,
    // States.
    last_state: Option<u32>,
    /// Sequence numbers of the states counted (server time in the window).
    window_lo: u32,
    window_hi: u32,
    window_count: u64,
    /// A state from after the window has arrived.
    after_window: bool,
    // Zone-ins.
    zone_received: u32,
    zone_announced: u32,
    /// Zone-ins queued before the window ended (from the first state after it).
    zone_required: Option<u32>,
    done: bool,
}

/// One client thread's game bookkeeping.
pub struct GameClient {
    sessions: Vec<Session>,
    /// `mono_ns` when this thread's window began and ended.
    window_start: u64,
    window_end: u64,
    done: usize,
    pub report: GameThreadReport,
}

/// One client thread's game results.
#[derive(Debug)]
pub struct GameThreadReport {
    pub inputs_sent: u64,
    pub server_inputs: u64,
    pub states_expected: u64,
    pub states_received: u64,
    pub zone_required: u64,
    pub zone_received: u64,
    pub zone_bytes: u64,
    /// Server → client messages received in the window (states and zone-ins).
    pub s2c_in_window: u64,
    /// States that arrived on a reliable channel (`--state-channel reliable`).
    pub states_on_reliable: u64,
    pub state_age: Histogram<u64>,
    pub input_to_state: Histogram<u64>,
    pub zone_in_latency: Histogram<u64>,
}

impl GameThreadReport {
    fn new() -> Self {
        Self {
            inputs_sent: 0,
            server_inputs: 0,
            states_expected: 0,
            states_received: 0,
            zone_required: 0,
            zone_received: 0,
            zone_bytes: 0,
            s2c_in_window: 0,
            states_on_reliable: 0,
            state_age: histogram(),
            input_to_state: histogram(),
            zone_in_latency: histogram(),
        }
    }

    pub fn add(&mut self, o: &Self) -> Result<(), String> {
        self.inputs_sent += o.inputs_sent;
        self.server_inputs += o.server_inputs;
        self.states_expected += o.states_expected;
        self.states_received += o.states_received;
        self.zone_required += o.zone_required;
        self.zone_received += o.zone_received;
        self.zone_bytes += o.zone_bytes;
        self.s2c_in_window += o.s2c_in_window;
        self.states_on_reliable += o.states_on_reliable;
        for (a, b) in [
            (&mut self.state_age, &o.state_age),
            (&mut self.input_to_state, &o.input_to_state),
            (&mut self.zone_in_latency, &o.zone_in_latency),
        ] {
            a.add(b).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    pub fn empty() -> Self {
        Self::new()
    }
}

impl GameClient {
    pub fn new(sessions: usize) -> Self {
        Self {
            sessions: (0..sessions)
                .map(|_| Session {
                    unacked: VecDeque::with_capacity(INPUT_RING),
                    ..Session::default()
                })
                .collect(),
            window_start: u64::MAX,
            window_end: u64::MAX,
            done: 0,
            report: GameThreadReport::new(),
        }
    }

    pub fn start_window(&mut self) {
        self.window_start = mono_ns();
    }

    pub fn end_window(&mut self) {
        self.window_end = mono_ns();
    }

    /// Every session has settled after the window.
    pub fn all_done(&self) -> bool {
        self.done == self.sessions.len()
    }

    pub fn input_sent(&mut self, k: usize, seq: u32, sent_ns: u64) {
        let s = &mut self.sessions[k];
        s.inputs_sent = s.inputs_sent.wrapping_add(1);
        s.last_input_sent = Some(seq);
        s.inputs_settled = false;
        if s.unacked.len() == INPUT_RING {
            s.unacked.pop_front();
        }
        s.unacked.push_back((seq, sent_ns));
    }

    /// A message from the server. `now_ns`: the client's clock of the input times;
    /// `mono`: `mono_ns()` now. `Err`: something the server should not have sent.
    #[allow(clippy::too_many_arguments)]
    pub fn received(
        &mut self,
        k: usize,
        global: u32,
        data: &[u8],
        channel: Channel,
        now_ns: u64,
        mono: u64,
        measuring: bool,
    ) -> Result<(), String> {
        match data.first() {
            Some(&STATE_MAGIC) if data.len() >= STATE_HEADER => {
                self.state(k, global, data, channel, now_ns, mono, measuring)
            }
            Some(&ZONE_MAGIC) if data.len() >= ZONE_HEADER => {
                self.zone_in(k, global, data, channel, mono, measuring)
            }
            _ => Err(format!(
                "unexpected message of {} bytes on session {global}",
                data.len()
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn state(
        &mut self,
        k: usize,
        global: u32,
        data: &[u8],
        channel: Channel,
        now_ns: u64,
        mono: u64,
        measuring: bool,
    ) -> Result<(), String> {
        let reliable = matches!(channel, Channel::Reliable(_));
        if reliable {
            self.report.states_on_reliable += 1;
        }
        let tag = u32::from_le_bytes([data[1], data[2], data[3], 0]);
        if tag != global && tag != NO_SESSION {
            return Err(format!("session {global} got the state of session {tag}"));
        }
        if data.len() > STATE_HEADER && data[data.len() - 1] != pattern(data.len() - 1) {
            return Err(format!("corrupt state on session {global}"));
        }
        let seq = le32(data, 4);
        let server_ns = le64(data, 8);
        let last_input = le32(data, 16);
        let server_inputs = le32(data, 20);
        let zone_sent = le32(data, 24);
        let s = &mut self.sessions[k];
        if let Some(prev) = s.last_state
            && reliable
            && seq != prev.wrapping_add(1)
        {
            return Err(format!(
                "state out of order on session {global}: got {seq} after {prev}"
            ));
        }
        s.last_state = Some(seq);
        if server_ns >= self.window_start && server_ns < self.window_end {
            if s.window_count == 0 {
                s.window_lo = seq;
                s.window_hi = seq;
            } else {
                if seq.wrapping_sub(s.window_lo) >= 1 << 31 {
                    s.window_lo = seq;
                }
                if seq.wrapping_sub(s.window_hi) < 1 << 31 {
                    s.window_hi = seq;
                }
            }
            s.window_count += 1;
            self.report
                .state_age
                .saturating_record(mono.saturating_sub(server_ns).max(1));
        }
        if measuring {
            self.report.s2c_in_window += 1;
        }
        // Inputs this state reflects.
        if server_inputs > 0 {
            while let Some(&(in_seq, sent_ns)) = s.unacked.front() {
                if last_input.wrapping_sub(in_seq) >= 1 << 31 {
                    break;
                }
                s.unacked.pop_front();
                if measuring {
                    self.report
                        .input_to_state
                        .saturating_record(now_ns.saturating_sub(sent_ns).max(1));
                }
            }
        }
        s.server_inputs = server_inputs;
        s.zone_announced = zone_sent;
        if server_ns >= self.window_end {
            s.after_window = true;
            s.zone_required.get_or_insert(zone_sent);
            if s.last_input_sent
                .is_none_or(|l| l == last_input && server_inputs > 0)
                || server_ns >= self.window_end + INPUT_GRACE_NS
            {
                s.inputs_settled = true;
            }
        }
        self.check_done(k);
        Ok(())
    }

    fn zone_in(
        &mut self,
        k: usize,
        global: u32,
        data: &[u8],
        channel: Channel,
        mono: u64,
        measuring: bool,
    ) -> Result<(), String> {
        if !matches!(channel, Channel::Reliable(_)) {
            return Err(format!("zone-in on {channel:?} on session {global}"));
        }
        let seq = le32(data, 4);
        let server_ns = le64(data, 8);
        let s = &mut self.sessions[k];
        if seq != s.zone_received + 1 {
            return Err(format!(
                "zone-in {seq} on session {global} after {}",
                s.zone_received
            ));
        }
        if data.len() > ZONE_HEADER && data[data.len() - 1] != pattern(data.len() - 1) {
            return Err(format!("corrupt zone-in {seq} on session {global}"));
        }
        s.zone_received = seq;
        self.report.zone_bytes += data.len() as u64;
        self.report
            .zone_in_latency
            .saturating_record(mono.saturating_sub(server_ns).max(1));
        if measuring {
            self.report.s2c_in_window += 1;
        }
        self.check_done(k);
        Ok(())
    }

    fn check_done(&mut self, k: usize) {
        let s = &mut self.sessions[k];
        if !s.done
            && s.after_window
            && s.inputs_settled
            && s.zone_required.is_some_and(|r| s.zone_received >= r)
        {
            s.done = true;
            self.done += 1;
        }
    }

    /// A session closed: it will never settle.
    pub fn closed(&mut self, k: usize) {
        let s = &mut self.sessions[k];
        if !s.done {
            s.done = true;
            self.done += 1;
        }
    }

    /// The thread's results, after the drain.
    pub fn finish(mut self) -> GameThreadReport {
        let r = &mut self.report;
        for s in &self.sessions {
            r.inputs_sent += u64::from(s.inputs_sent);
            r.server_inputs += u64::from(s.server_inputs.min(s.inputs_sent));
            if s.window_count > 0 {
                r.states_expected += u64::from(s.window_hi.wrapping_sub(s.window_lo)) + 1;
                r.states_received += s.window_count;
            }
            // Zone-ins queued in the drain may arrive too: they are not counted.
            let required = s.zone_required.unwrap_or(s.zone_announced);
            r.zone_required += u64::from(required);
            r.zone_received += u64::from(s.zone_received.min(required));
        }
        self.report
    }
}

// ---------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------

/// Latency percentiles in microseconds.
/// Everything a game run measured, for one server.
#[derive(Debug, Clone, Serialize)]
pub struct GameResult {
    pub scenario: &'static str,
    pub server: String,
    pub shards: Option<usize>,
    pub sessions: usize,
    pub duration_s: f64,
    pub input_rate_hz: f64,
    pub input_size: usize,
    pub input_channel: String,
    /// Server settings (`null` against an external server).
    pub tick_rate_hz: Option<f64>,
    pub state_size: Option<usize>,
    pub state_channel: Option<String>,
    pub zone_in_every_s: Option<f64>,
    pub zone_in_size: Option<String>,
    /// Server CPU in the window (`null` against an external server).
    pub server_cpu_s: Option<f64>,
    /// Server CPU microseconds per session-second: the headline.
    pub server_cpu_us_per_session_s: Option<f64>,
    /// The part of it spent in the kernel, as the kernel's tick samples split it
    /// (`null` below [`crate::server::KERNEL_SPLIT_MIN_CPU_S`] of server CPU).
    pub server_kernel_us_per_session_s: Option<f64>,
    /// Client → server: inputs sent in the window, the client sockets' datagrams
    /// sent in the window (inputs, acks, heartbeats), and their ratio.
    pub c2s_messages: u64,
    pub c2s_datagrams: u64,
    pub c2s_datagrams_per_msg: f64,
    /// Server → client: states and zone-ins received in the window, the client
    /// sockets' datagrams received in the window, and their ratio.
    pub s2c_messages: u64,
    pub s2c_datagrams: u64,
    pub s2c_datagrams_per_msg: f64,
    /// Inputs sent over the whole run, and how many the server reported receiving.
    pub inputs_sent: u64,
    pub inputs_lost: u64,
    /// States whose server time falls in the window: expected from their sequence
    /// numbers (first to last received), received, lost.
    pub states_expected: u64,
    pub states_received: u64,
    pub states_lost: u64,
    /// Zone-ins queued until the window ended, received, lost (must be 0).
    pub zone_ins_sent: u64,
    pub zone_ins_received: u64,
    pub zone_ins_lost: u64,
    pub zone_in_mbytes: f64,
    /// Losses on reliable channels (must be 0) and on unreliable ones.
    pub reliable_lost: u64,
    pub unreliable_lost: u64,
    /// Server tick (state enqueued) → state delivered to the client application.
    pub state_age_us: Percentiles,
    /// Input sent → first state that reflects it delivered (includes up to one tick
    /// of waiting for the next tick).
    pub input_to_state_us: Percentiles,
    /// Zone-in enqueued → delivered whole.
    pub zone_in_us: Percentiles,
    pub client_cpu_s: f64,
    /// Client-side reliable retransmissions in the window.
    pub client_resends: u64,
    /// The embedded server's counters over the window.
    pub server_counters: Option<GameServerSnapshot>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub sessions_closed: u64,
    pub client_send_drops: u64,
}

/// What the client side gathered, for [`GameResult::new`].
pub struct GameRun<'a> {
    pub server: String,
    pub shards: Option<usize>,
    pub sessions: usize,
    pub client: &'a GameClientCfg,
    pub server_cfg: Option<&'a GameServerCfg>,
    pub outcome: &'a crate::client::ClientOutcome,
    pub server_counters: Option<GameServerSnapshot>,
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

fn channel_name(c: Channel) -> String {
    crate::args::ChannelArg(c).to_string()
}

impl GameResult {
    pub fn new(run: GameRun<'_>) -> Self {
        let o = run.outcome;
        let g = o.game.as_ref();
        let empty = GameThreadReport::empty();
        let g = g.unwrap_or(&empty);
        let secs = o.window.as_secs_f64().max(1e-9);
        let (server_cpu, server_kernel) = crate::server::cpu_between(o.server_start, o.server_end);
        // Server CPU seconds as microseconds per session-second.
        let us_per_session_s =
            |cpu: Option<f64>| cpu.map(|c| round(c * 1e6 / (run.sessions.max(1) as f64 * secs), 2));
        let d = &o.mux.sessions;
        let ratio = |a: u64, b: u64| {
            if b > 0 {
                round(a as f64 / b as f64, 3)
            } else {
                0.0
            }
        };
        let inputs_lost = g.inputs_sent.saturating_sub(g.server_inputs);
        let states_lost = g.states_expected.saturating_sub(g.states_received);
        let zone_ins_lost = g.zone_required.saturating_sub(g.zone_received);
        let state_reliable = g.states_on_reliable > 0
            || run
                .server_cfg
                .is_some_and(|c| matches!(c.state_channel, Channel::Reliable(_)));
        let input_reliable = matches!(run.client.input_channel, Channel::Reliable(_));
        let (mut reliable_lost, mut unreliable_lost) = (zone_ins_lost, 0);
        for (lost, reliable) in [(inputs_lost, input_reliable), (states_lost, state_reliable)] {
            if reliable {
                reliable_lost += lost;
            } else {
                unreliable_lost += lost;
            }
        }
        let sc = run.server_cfg;
        Self {
            scenario: "game",
            server: run.server,
            shards: run.shards,
            sessions: run.sessions,
            duration_s: round(secs, 3),
            input_rate_hz: run.client.input_rate,
            input_size: run.client.input_size,
            input_channel: channel_name(run.client.input_channel),
            tick_rate_hz: sc.map(|c| round(1.0 / c.tick.as_secs_f64(), 3)),
            state_size: sc.map(|c| c.state_size),
            state_channel: sc.map(|c| channel_name(c.state_channel)),
            zone_in_every_s: sc.map(|c| c.zone_in_every.map_or(0.0, |e| e.as_secs_f64())),
            zone_in_size: sc.map(|c| c.zone_in_size.to_string()),
            server_cpu_s: server_cpu.map(|c| round(c, 4)),
            server_cpu_us_per_session_s: us_per_session_s(server_cpu),
            server_kernel_us_per_session_s: us_per_session_s(server_kernel),
            c2s_messages: o.sent,
            c2s_datagrams: d.datagrams_sent,
            c2s_datagrams_per_msg: ratio(d.datagrams_sent, o.sent),
            s2c_messages: g.s2c_in_window,
            s2c_datagrams: d.datagrams_received,
            s2c_datagrams_per_msg: ratio(d.datagrams_received, g.s2c_in_window),
            inputs_sent: g.inputs_sent,
            inputs_lost,
            states_expected: g.states_expected,
            states_received: g.states_received,
            states_lost,
            zone_ins_sent: g.zone_required,
            zone_ins_received: g.zone_received,
            zone_ins_lost,
            zone_in_mbytes: round(g.zone_bytes as f64 / 1e6, 3),
            reliable_lost,
            unreliable_lost,
            state_age_us: Percentiles::of(&g.state_age),
            input_to_state_us: Percentiles::of(&g.input_to_state),
            zone_in_us: Percentiles::of(&g.zone_in_latency),
            client_cpu_s: round(o.client_cpu.as_secs_f64(), 4),
            client_resends: d.reliable_packets_resent,
            server_counters: run.server_counters,
            errors: o.errors,
            first_error: o.first_error.clone(),
            sessions_closed: o.sessions_closed,
            client_send_drops: o.send_drops,
        }
    }
}

/// `12345678` → `12,345,678`.
fn grouped(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The results side by side, one column per server.
pub fn table(results: &[GameResult]) -> String {
    type Row = (&'static str, fn(&GameResult) -> String);
    let rows: &[Row] = &[
        ("shards", |r| r.shards.map_or("-".into(), |s| s.to_string())),
        ("sessions", |r| r.sessions.to_string()),
        ("duration_s", |r| format!("{:.2}", r.duration_s)),
        ("server_cpu_s", |r| {
            r.server_cpu_s.map_or("-".into(), |v| format!("{v:.3}"))
        }),
        ("server_cpu_us_per_session_s", |r| {
            r.server_cpu_us_per_session_s
                .map_or("-".into(), |v| format!("{v:.1}"))
        }),
        ("  of which kernel", |r| {
            r.server_kernel_us_per_session_s
                .map_or("-".into(), |v| format!("{v:.1}"))
        }),
        ("c2s_messages", |r| grouped(r.c2s_messages)),
        ("c2s_datagrams_per_msg", |r| {
            format!("{:.3}", r.c2s_datagrams_per_msg)
        }),
        ("s2c_messages", |r| grouped(r.s2c_messages)),
        ("s2c_datagrams_per_msg", |r| {
            format!("{:.3}", r.s2c_datagrams_per_msg)
        }),
        ("state_age_us p50", |r| format!("{:.1}", r.state_age_us.p50)),
        ("state_age_us p99", |r| format!("{:.1}", r.state_age_us.p99)),
        ("state_age_us max", |r| format!("{:.1}", r.state_age_us.max)),
        ("input_to_state_us p50", |r| {
            format!("{:.1}", r.input_to_state_us.p50)
        }),
        ("input_to_state_us p99", |r| {
            format!("{:.1}", r.input_to_state_us.p99)
        }),
        ("zone_in_us p50", |r| format!("{:.1}", r.zone_in_us.p50)),
        ("zone_in_us max", |r| format!("{:.1}", r.zone_in_us.max)),
        ("zone_ins sent/received", |r| {
            format!("{}/{}", r.zone_ins_sent, r.zone_ins_received)
        }),
        ("states expected/received", |r| {
            format!("{}/{}", r.states_expected, r.states_received)
        }),
        ("inputs_lost", |r| grouped(r.inputs_lost)),
        ("reliable_lost", |r| grouped(r.reliable_lost)),
        ("unreliable_lost", |r| grouped(r.unreliable_lost)),
        ("client_resends", |r| grouped(r.client_resends)),
        ("server_ticks (late)", |r| {
            r.server_counters
                .map_or("-".into(), |c| format!("{} ({})", c.ticks, c.ticks_late))
        }),
        ("server_refused", |r| {
            r.server_counters.map_or("-".into(), |c| grouped(c.refused))
        }),
        ("errors", |r| grouped(r.errors)),
    ];
    let servers: Vec<&str> = results.iter().map(|r| r.server.as_str()).collect();
    crate::report::side_by_side(&servers, results, rows)
}

/// Ratios of server CPU per session-second against `peer` (and `tokio`): how many
/// times less CPU the first needs.
pub fn ratios(results: &[GameResult]) -> Vec<(String, f64)> {
    let get = |name: &str| {
        results
            .iter()
            .find(|r| r.server == name)
            .and_then(|r| r.server_cpu_us_per_session_s)
    };
    crate::report::pair_ratios(get, true)
}

/// The workload in one line.
pub fn describe(results: &[GameResult]) -> String {
    let Some(r) = results.first() else {
        return String::new();
    };
    let mut s = format!(
        "game: {} sessions × {} Hz inputs of {} B on {}",
        r.sessions, r.input_rate_hz, r.input_size, r.input_channel
    );
    if let (Some(t), Some(size), Some(ch)) = (r.tick_rate_hz, r.state_size, &r.state_channel) {
        s += &format!("; {t} Hz ticks, states of {size} B on {ch}");
    }
    if let (Some(e), Some(z)) = (r.zone_in_every_s, &r.zone_in_size) {
        if e > 0.0 {
            s += &format!("; zone-ins of {z} B every ~{e} s per session");
        } else {
            s += "; no zone-ins";
        }
    }
    s += &format!("; {:.1} s per server", r.duration_s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cfg() -> GameServerCfg {
        GameServerCfg {
            tick: Duration::from_millis(50),
            state_size: 64,
            state_channel: Channel::Unreliable,
            zone_in_every: Some(Duration::from_millis(1)),
            zone_in_size: SizeRange { min: 100, max: 200 },
            zone_in_channel: Channel::Reliable(0),
            seed: 7,
        }
    }

    /// The server's messages, read back by the client bookkeeping.
    #[test]
    fn server_and_client_agree() {
        let counters = Arc::new(GameCounters::default());
        let mut logic = GameLogic::new(cfg(), counters.clone(), 0);
        let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
        logic.opened(remote);
        let mut client = GameClient::new(1);
        client.start_window();
        // Two inputs.
        let mut input = [0u8; 16];
        input[0] = INPUT_MAGIC;
        input[1] = 5;
        for seq in 0..2u32 {
            input[4..8].copy_from_slice(&seq.to_le_bytes());
            client.input_sent(0, seq, 10);
            logic.input(&remote, &input);
        }
        std::thread::sleep(Duration::from_millis(2));
        let start = Instant::now();
        assert_eq!(logic.next_tick(start), start + Duration::from_millis(50));
        let mut sent: Vec<(Vec<u8>, Channel)> = Vec::new();
        for t in 1..=3 {
            logic.tick_if_due(start + Duration::from_millis(50 * t), &mut |_, d, c| {
                sent.push((d.to_vec(), c));
                Sent::Ok
            });
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(counters.snapshot().ticks, 3);
        assert_eq!(counters.snapshot().inputs, 2);
        let zones = sent.iter().filter(|(d, _)| d[0] == ZONE_MAGIC).count();
        assert!(zones >= 2, "{zones}");
        for (i, (d, c)) in sent.iter().enumerate() {
            let measuring = i + 1 < sent.len();
            if i + 1 == sent.len() {
                client.end_window();
                std::thread::sleep(Duration::from_millis(1));
            }
            client
                .received(0, 5, d, *c, 20, mono_ns(), measuring)
                .unwrap();
        }
        // The last state came from before the window ended: not settled yet.
        assert!(!client.all_done());
        logic.tick_if_due(start + Duration::from_millis(200), &mut |_, d, c| {
            client.received(0, 5, d, c, 20, mono_ns(), false).unwrap();
            Sent::Ok
        });
        assert!(client.all_done());
        let r = client.finish();
        assert_eq!(r.inputs_sent, 2);
        assert_eq!(r.server_inputs, 2);
        assert_eq!(r.zone_required, r.zone_received);
        assert_eq!(r.states_expected, r.states_received);
        assert_eq!(r.input_to_state.len(), 2);
        // A state of another session is refused.
        let state = sent.iter().find(|(d, _)| d[0] == STATE_MAGIC).unwrap();
        let mut other = GameClient::new(1);
        assert!(
            other
                .received(0, 6, &state.0, state.1, 0, 0, false)
                .is_err()
        );
    }
}
