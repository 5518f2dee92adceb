//! The client side: threads that each drive many sessions, one UDP socket per session,
//! through one `SoeMultiplexer` keyed by session index, with mio for readiness.
//!
//! Each turn of a client thread: wait for readiness (at most until the multiplexer's
//! next deadline, the next scheduled send, or 1 ms) → read every readable socket until
//! it would block → `process_incoming` → handle events (check echoes, record RTT) →
//! refill windows / send what the schedule says → `run_tick` once → send the outgoing
//! datagrams on each session's own (connected) socket.
//!
//! Every message carries a 16-byte header — magic `A5`, the session number (24 bits),
//! a per-session sequence number and the send time in nanoseconds since a shared
//! epoch — and a fixed byte pattern after it. An echo must come back on the channel it
//! was sent on, with the same header, length and last byte; on a reliable channel it
//! must also come back in order. Anything else is counted as an error.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use soe_uring::{
    Channel, DisconnectReason, EnqueueError, MuxStats, RemoteAddr, SocketConfig, SocketEvent,
    SoeMultiplexer,
};

use crate::args::{Mode, SizeRange};
use crate::capture::{Capture, Recorder, Way};
use crate::cpu::thread_cpu_time;
use crate::game::{GameClient, GameClientCfg, GameThreadReport, mono_ns};
use crate::server::{RunningServer, ServerSnapshot};

/// What the clients do.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    /// Shown in the progress line.
    pub label: String,
    pub target: SocketAddr,
    pub sessions: usize,
    pub threads: usize,
    pub size: SizeRange,
    pub mode: Mode,
    pub channel: Channel,
    /// Extra sessions opened and closed per second.
    pub churn: f64,
    pub config: SocketConfig,
    pub connect_timeout: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    pub loss_timeout: Duration,
    pub progress: bool,
    /// `run --capture`: every datagram the clients send and receive.
    pub capture: Option<Capture>,
    /// `--scenario game`: the sessions send inputs (`mode` is their open-loop rate)
    /// and receive states and zone-ins instead of echoes.
    pub game: Option<GameClientCfg>,
}

/// What the clients measured.
#[derive(Debug)]
pub struct ClientOutcome {
    /// The measured window, as it really lasted.
    pub window: Duration,
    /// Messages sent in the window.
    pub sent: u64,
    /// Echoes received of those messages (during the window or the drain).
    pub received: u64,
    /// Payload bytes of those echoes.
    pub bytes_received: u64,
    /// Round-trip times in nanoseconds.
    pub rtt: Histogram<u64>,
    /// Session setup times (churn sessions) in nanoseconds.
    pub setup: Histogram<u64>,
    /// Churn sessions opened in the window.
    pub setups: u64,
    pub churn_failures: u64,
    /// From the first SessionRequest to the last initial session open.
    pub connect_time: Duration,
    /// CPU of the client threads in the window.
    pub client_cpu: Duration,
    /// Client multiplexers' counters over the window and drain.
    pub mux: MuxStats,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Outgoing datagrams dropped because the socket buffer was full.
    pub send_drops: u64,
    /// Messages the client session refused (its queue was full).
    pub enqueue_refused: u64,
    /// Initial sessions that closed while the run was going.
    pub sessions_closed: u64,
    /// Server counters at the start and end of the window (embedded servers).
    pub server_start: Option<ServerSnapshot>,
    pub server_end: Option<ServerSnapshot>,
    /// Open loop: sends more than 1 s behind schedule were skipped.
    pub schedule_skips: u64,
    /// `--scenario game`: what the sessions received.
    pub game: Option<GameThreadReport>,
}

const CONNECT: u8 = 0;
const WARMUP: u8 = 1;
const MEASURE: u8 = 2;
const DRAIN: u8 = 3;
const STOP: u8 = 4;

const MAGIC: u8 = 0xA5;
const HEADER: usize = 16;
/// At most this many churn sessions connecting at once per thread.
const CHURN_CAP: usize = 4096;
/// Longest a client thread waits for readiness.
const MAX_WAIT: Duration = Duration::from_millis(1);

/// A session index: each client session has its own socket, so the multiplexer is
/// keyed by index instead of address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key(usize);

impl RemoteAddr for Key {
    fn same_host(&self, other: &Self) -> bool {
        self == other
    }
}

/// Shared with the client threads; written once per turn, never per message.
#[derive(Default)]
#[repr(align(128))]
struct Progress {
    opened: AtomicU64,
    connect_failed: AtomicU64,
    /// Nanoseconds since the epoch when this thread's last initial session opened.
    all_opened_ns: AtomicU64,
    received: AtomicU64,
    drained: AtomicBool,
}

struct Control {
    phase: AtomicU8,
    epoch: Instant,
    progress: Vec<Progress>,
}

/// One thread's results.
struct ThreadReport {
    sent: u64,
    received: u64,
    bytes_received: u64,
    rtt: Histogram<u64>,
    setup: Histogram<u64>,
    setups: u64,
    churn_failures: u64,
    cpu: Duration,
    mux: MuxStats,
    errors: u64,
    first_error: Option<String>,
    send_drops: u64,
    enqueue_refused: u64,
    sessions_closed: u64,
    refused: u64,
    closed_reasons: BTreeMap<u16, u64>,
    datagrams_received_total: u64,
    schedule_skips: u64,
    game: Option<GameThreadReport>,
}

/// A latency histogram: 1 ns .. 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// The last bytes of a message are this pattern.
fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(31) ^ 0x5A
}

/// Runs the clients against `plan.target`. `server` (embedded servers) is sampled at
/// the edges of the measured window.
pub fn run_clients(
    plan: &ClientPlan,
    server: Option<&RunningServer>,
) -> Result<ClientOutcome, String> {
    let threads = plan.threads.min(plan.sessions.max(1)).max(1);
    let ctl = Arc::new(Control {
        phase: AtomicU8::new(CONNECT),
        epoch: Instant::now(),
        progress: (0..threads).map(|_| Progress::default()).collect(),
    });
    let spread = loopback_spread(plan.sessions);
    let mut handles = Vec::with_capacity(threads);
    let mut first = 0;
    for id in 0..threads {
        let count = plan.sessions / threads + usize::from(id < plan.sessions % threads);
        let plan = plan.clone();
        let ctl = ctl.clone();
        let churn = plan.churn / threads as f64;
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-client-{id}"))
            .spawn(move || {
                let result = Worker::new(id, plan, ctl.clone(), first, count, churn, spread)
                    .and_then(Worker::run);
                if result.is_err() {
                    // Unblocks the main thread's waits.
                    ctl.progress[id].drained.store(true, Ordering::Release);
                }
                result
            })
            .map_err(|e| format!("cannot spawn a client thread: {e}"))?;
        handles.push(handle);
        first += count;
    }
    let join = |handles: Vec<std::thread::JoinHandle<Result<ThreadReport, String>>>| {
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect::<Result<Vec<_>, String>>()
    };
    let stop = |ctl: &Control| ctl.phase.store(STOP, Ordering::Release);
    let failed = |handles: &[std::thread::JoinHandle<_>]| handles.iter().any(|h| h.is_finished());

    // Connect.
    let started = Instant::now();
    let deadline = started + plan.connect_timeout;
    loop {
        let opened: u64 = ctl
            .progress
            .iter()
            .map(|p| p.opened.load(Ordering::Relaxed))
            .sum();
        let closed: u64 = ctl
            .progress
            .iter()
            .map(|p| p.connect_failed.load(Ordering::Relaxed))
            .sum();
        if opened as usize >= plan.sessions {
            break;
        }
        if failed(&handles) || Instant::now() >= deadline || opened + closed >= plan.sessions as u64
        {
            stop(&ctl);
            let reports = join(handles)?;
            return Err(connect_error(plan, opened, &reports));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let connect_ns = ctl
        .progress
        .iter()
        .map(|p| p.all_opened_ns.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let connect_time = Duration::from_nanos(connect_ns)
        .saturating_sub(started.duration_since(ctl.epoch))
        .max(Duration::from_micros(1));

    let mut meter = Meter::new(plan, &ctl, server);
    if !plan.warmup.is_zero() {
        ctl.phase.store(WARMUP, Ordering::Release);
        if !meter.wait(Instant::now() + plan.warmup, "warm-up", &handles) {
            stop(&ctl);
            join(handles)?;
            return Err("a client thread stopped during the warm-up".into());
        }
    }
    let server_start = server.and_then(RunningServer::snapshot);
    meter.server_cpu = server_start.map(|s| s.cpu);
    ctl.phase.store(MEASURE, Ordering::Release);
    let t0 = Instant::now();
    meter.restart(t0);
    let ok = meter.wait(t0 + plan.duration, "", &handles);
    ctl.phase.store(DRAIN, Ordering::Release);
    let window = t0.elapsed();
    let server_end = server.and_then(RunningServer::snapshot);
    meter.finish();
    if !ok {
        stop(&ctl);
        join(handles)?;
        return Err("a client thread stopped during the run".into());
    }
    // Drain: wait for the echoes still in flight.
    let drain_deadline = Instant::now() + plan.drain + Duration::from_millis(200);
    while Instant::now() < drain_deadline
        && !ctl
            .progress
            .iter()
            .all(|p| p.drained.load(Ordering::Acquire))
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    stop(&ctl);
    let reports = join(handles)?;

    let mut out = ClientOutcome {
        window,
        sent: 0,
        received: 0,
        bytes_received: 0,
        rtt: histogram(),
        setup: histogram(),
        setups: 0,
        churn_failures: 0,
        connect_time,
        client_cpu: Duration::ZERO,
        mux: MuxStats::default(),
        errors: 0,
        first_error: None,
        send_drops: 0,
        enqueue_refused: 0,
        sessions_closed: 0,
        server_start,
        server_end,
        schedule_skips: 0,
        game: None,
    };
    for r in reports {
        out.sent += r.sent;
        out.received += r.received;
        out.bytes_received += r.bytes_received;
        out.rtt.add(&r.rtt).map_err(|e| e.to_string())?;
        out.setup.add(&r.setup).map_err(|e| e.to_string())?;
        out.setups += r.setups;
        out.churn_failures += r.churn_failures;
        out.client_cpu += r.cpu;
        out.mux.add(&r.mux);
        out.errors += r.errors;
        if out.first_error.is_none() {
            out.first_error = r.first_error;
        }
        out.send_drops += r.send_drops;
        out.enqueue_refused += r.enqueue_refused;
        out.sessions_closed += r.sessions_closed;
        out.schedule_skips += r.schedule_skips;
        if let Some(g) = &r.game {
            out.game
                .get_or_insert_with(GameThreadReport::empty)
                .add(g)?;
        }
    }
    Ok(out)
}

/// Why the sessions did not all open, in one line.
fn connect_error(plan: &ClientPlan, opened: u64, reports: &[ThreadReport]) -> String {
    let secs = plan.connect_timeout.as_secs_f64();
    let head = format!(
        "{opened} of {} sessions opened within {secs} s",
        plan.sessions
    );
    let mut reasons: BTreeMap<u16, u64> = BTreeMap::new();
    let mut refused = 0;
    let mut received = 0;
    for r in reports {
        refused += r.refused;
        received += r.datagrams_received_total;
        for (k, v) in &r.closed_reasons {
            *reasons.entry(*k).or_default() += v;
        }
    }
    if let Some(e) = reports.iter().find_map(|r| r.first_error.clone())
        && received == 0
        && refused == 0
    {
        return format!("{head}: {e}");
    }
    let target = plan.target;
    if refused > 0 {
        return format!(
            "{head}: {target} refused the datagrams (ICMP port unreachable: is a server running there?)"
        );
    }
    let named: Vec<String> = reasons
        .iter()
        .filter(|(k, _)| **k != DisconnectReason::ConnectFail.as_u16())
        .map(|(k, v)| format!("{} ×{v}", DisconnectReason::from_u16(*k)))
        .collect();
    if !named.is_empty() {
        return format!(
            "{head}: the server closed them ({}; matching --app-protocol, --rc4-key?)",
            named.join(", ")
        );
    }
    if received == 0 {
        return format!(
            "{head}: no SessionResponse from {target} (is a server running there? matching --app-protocol?)"
        );
    }
    format!(
        "{head}: {target} answered but the sessions did not open (server full? see its --max-sessions)"
    )
}

/// How many 127.0.0.x source addresses to spread loopback sessions over.
fn loopback_spread(sessions: usize) -> usize {
    sessions.div_ceil(16_000).clamp(8, 250)
}

fn local_addr_for(target: SocketAddr, index: usize, spread: usize) -> SocketAddr {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            SocketAddr::from(([127, 0, 0, 1 + (index % spread) as u8], 0))
        }
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(ip) if ip.is_loopback() => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

fn open_socket(local: SocketAddr, target: SocketAddr) -> Result<UdpSocket, String> {
    let socket = UdpSocket::bind(local).map_err(|e| match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => format!(
            "cannot open another UDP socket ({e}): each session needs one; raise `ulimit -n` or use fewer sessions"
        ),
        _ => format!("cannot bind a client socket to {local}: {e}"),
    })?;
    socket
        .connect(target)
        .map_err(|e| format!("cannot reach {target}: {e}"))?;
    Ok(socket)
}

/// Main-thread progress line and window bookkeeping.
struct Meter<'a> {
    label: String,
    enabled: bool,
    tty: bool,
    ctl: &'a Control,
    server: Option<&'a RunningServer>,
    server_cpu: Option<Duration>,
    last: Instant,
    last_received: u64,
    start: Instant,
    total: Duration,
    printed: bool,
}

impl<'a> Meter<'a> {
    fn new(plan: &ClientPlan, ctl: &'a Control, server: Option<&'a RunningServer>) -> Self {
        use std::io::IsTerminal;
        let now = Instant::now();
        Self {
            label: plan.label.clone(),
            enabled: plan.progress,
            tty: io::stderr().is_terminal(),
            ctl,
            server,
            server_cpu: None,
            last: now,
            last_received: 0,
            start: now,
            total: plan.duration,
            printed: false,
        }
    }

    fn received(&self) -> u64 {
        self.ctl
            .progress
            .iter()
            .map(|p| p.received.load(Ordering::Relaxed))
            .sum()
    }

    fn restart(&mut self, now: Instant) {
        self.start = now;
        self.last = now;
        self.last_received = self.received();
    }

    /// Sleeps until `until`, printing once per second. `false` if a client thread
    /// ended early.
    fn wait<T>(
        &mut self,
        until: Instant,
        what: &str,
        handles: &[std::thread::JoinHandle<T>],
    ) -> bool {
        loop {
            let now = Instant::now();
            if now >= until {
                return true;
            }
            if handles.iter().any(|h| h.is_finished()) {
                return false;
            }
            if now.duration_since(self.last) >= Duration::from_secs(1) {
                self.print(now, what);
            }
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    }

    fn print(&mut self, now: Instant, what: &str) {
        let received = self.received();
        let secs = now.duration_since(self.last).as_secs_f64();
        let rate = (received - self.last_received) as f64 / secs;
        let mut line = format!("[{}] ", self.label);
        if what.is_empty() {
            line += &format!(
                "{:4.1}/{:.0} s",
                now.duration_since(self.start).as_secs_f64(),
                self.total.as_secs_f64()
            );
        } else {
            line += what;
        }
        line += &format!("  {:>9} msg/s", human(rate));
        if let Some(cpu) = self.server.and_then(RunningServer::snapshot).map(|s| s.cpu) {
            if let Some(before) = self.server_cpu {
                let used = cpu.saturating_sub(before).as_secs_f64() / secs;
                line += &format!("  server CPU {:3.0}%", used * 100.0);
            }
            self.server_cpu = Some(cpu);
        }
        if self.enabled {
            if self.tty {
                eprint!("\r{line:<78}");
            } else {
                eprintln!("{line}");
            }
            self.printed = true;
        }
        self.last = now;
        self.last_received = received;
    }

    fn finish(&self) {
        if self.enabled && self.tty && self.printed {
            eprint!("\r{:78}\r", "");
        }
    }
}

/// 1234567 → "1.23M".
pub fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A message in flight.
#[derive(Debug, Clone, Copy)]
struct Out {
    seq: u32,
    size: u32,
    sent_ns: u64,
    counted: bool,
    acked: bool,
}

#[derive(Debug, Default)]
struct Session {
    open: bool,
    next_seq: u32,
    out: VecDeque<Out>,
    unacked: usize,
    touched: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Churn {
    Free,
    Connecting { started_ns: u64 },
    Closing,
}

struct Worker {
    plan: ClientPlan,
    ctl: Arc<Control>,
    id: usize,
    /// Global number of this thread's first session.
    first: usize,
    spread: usize,
    poll: Poll,
    events: Events,
    mux: SoeMultiplexer<Key>,
    /// By key: the initial sessions, then churn slots.
    sockets: Vec<Option<UdpSocket>>,
    sessions: Vec<Session>,
    churn: Vec<Churn>,
    churn_free: Vec<usize>,
    churn_live: usize,
    churn_interval_ns: u64,
    next_churn_ns: u64,
    to_close: Vec<usize>,
    touched: Vec<usize>,
    schedule: BinaryHeap<Reverse<(u64, usize)>>,
    interval_ns: u64,
    buf: Vec<u8>,
    msg: Vec<u8>,
    rng: u64,
    phase: u8,
    measuring: bool,
    sending: bool,
    opened: u64,
    counted_unacked: u64,
    received_all: u64,
    cpu_start: Option<Duration>,
    cpu_end: Option<Duration>,
    mux_start: Option<MuxStats>,
    mux_end: Option<MuxStats>,
    drain_deadline: Option<Instant>,
    last_expiry: Instant,
    report: ThreadReport,
    /// `--capture`. Recorded where datagrams meet the sockets (`receive`, `flush`
    /// and the final disconnects): the only places all of them pass, after the
    /// multiplexer framed them and before it parses them.
    capture: Option<Recorder>,
    /// `--scenario game`.
    game: Option<GameClient>,
    /// `--scenario game`: the multiplexer's counters when the window ended.
    window_mux_end: Option<MuxStats>,
}

impl Worker {
    fn new(
        id: usize,
        plan: ClientPlan,
        ctl: Arc<Control>,
        first: usize,
        count: usize,
        churn: f64,
        spread: usize,
    ) -> Result<Self, String> {
        let poll = Poll::new().map_err(|e| format!("cannot create a poller: {e}"))?;
        let mut sockets = Vec::with_capacity(count);
        for i in 0..count {
            let mut socket =
                open_socket(local_addr_for(plan.target, first + i, spread), plan.target)?;
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)
                .map_err(|e| format!("cannot register a socket: {e}"))?;
            sockets.push(Some(socket));
        }
        let msg: Vec<u8> = (0..plan.size.max).map(pattern).collect();
        let interval_ns = match plan.mode {
            Mode::Open { rate } => (1e9 / rate).max(1.0) as u64,
            Mode::Closed { .. } => 0,
        };
        let churn_interval_ns = if churn > 0.0 {
            (1e9 / churn).max(1.0) as u64
        } else {
            0
        };
        let mux = SoeMultiplexer::new(plan.config.clone());
        Ok(Self {
            mux,
            id,
            first,
            spread,
            poll,
            events: Events::with_capacity(1024),
            sockets,
            sessions: (0..count).map(|_| Session::default()).collect(),
            churn: Vec::new(),
            churn_free: Vec::new(),
            churn_live: 0,
            churn_interval_ns,
            next_churn_ns: 0,
            to_close: Vec::new(),
            touched: Vec::new(),
            schedule: BinaryHeap::new(),
            interval_ns,
            buf: vec![0; 65_536],
            msg,
            rng: 0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) << 32) ^ first as u64,
            phase: CONNECT,
            measuring: false,
            sending: false,
            opened: 0,
            counted_unacked: 0,
            received_all: 0,
            cpu_start: None,
            cpu_end: None,
            mux_start: None,
            mux_end: None,
            drain_deadline: None,
            last_expiry: Instant::now(),
            report: ThreadReport {
                sent: 0,
                received: 0,
                bytes_received: 0,
                rtt: histogram(),
                setup: histogram(),
                setups: 0,
                churn_failures: 0,
                cpu: Duration::ZERO,
                mux: MuxStats::default(),
                errors: 0,
                first_error: None,
                send_drops: 0,
                enqueue_refused: 0,
                sessions_closed: 0,
                refused: 0,
                closed_reasons: BTreeMap::new(),
                datagrams_received_total: 0,
                schedule_skips: 0,
                game: None,
            },
            capture: plan.capture.as_ref().map(Capture::recorder),
            game: plan.game.as_ref().map(|_| GameClient::new(count)),
            window_mux_end: None,
            plan,
            ctl,
        })
    }

    fn ns(&self, t: Instant) -> u64 {
        t.duration_since(self.ctl.epoch).as_nanos() as u64
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn error(&mut self, message: impl FnOnce() -> String) {
        self.report.errors += 1;
        if self.report.first_error.is_none() {
            self.report.first_error = Some(message());
        }
    }

    fn run(mut self) -> Result<ThreadReport, String> {
        let now = Instant::now();
        for i in 0..self.sessions.len() {
            if let Err(e) = self.mux.connect(Key(i), now) {
                return Err(format!("cannot start a session: {e}"));
            }
        }
        if self.sessions.is_empty() {
            self.ctl.progress[self.id]
                .all_opened_ns
                .store(self.ns(now), Ordering::Relaxed);
        }
        loop {
            let now = Instant::now();
            self.receive(now);
            self.handle_events(now);
            let phase = self.ctl.phase.load(Ordering::Acquire);
            if phase != self.phase {
                self.enter(phase, now);
            }
            if self.phase == STOP {
                break;
            }
            if self.sending {
                self.generate(now);
            }
            if self.plan.channel == Channel::Unreliable
                && self.game.is_none()
                && now.duration_since(self.last_expiry) >= Duration::from_millis(10)
            {
                self.expire(now);
            }
            self.mux.run_tick(now);
            self.flush();
            self.close_churned();
            self.publish(now);
            let wait = self.wait_time(now);
            match self.poll.poll(&mut self.events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.events.clear(),
                Err(e) => return Err(format!("poll failed: {e}")),
            }
        }
        // Stop: disconnect every session, politely.
        let now = Instant::now();
        let stats = self.mux.stats();
        self.report.datagrams_received_total = stats.sessions.datagrams_received;
        let end = self
            .window_mux_end
            .take()
            .or_else(|| self.mux_end.take())
            .unwrap_or(stats);
        let start = self.mux_start.take().unwrap_or_else(|| end.clone());
        self.report.mux = diff(&end, &start);
        let cpu_end = self.cpu_end.unwrap_or_else(thread_cpu_time);
        self.report.cpu = cpu_end.saturating_sub(self.cpu_start.unwrap_or(cpu_end));
        self.report.game = self.game.take().map(GameClient::finish);
        for (key, datagram) in self.mux.terminate_all(DisconnectReason::Application, now) {
            if let Some(Some(socket)) = self.sockets.get(key.0)
                && socket.send(&datagram).is_ok()
                && let Some(c) = &mut self.capture
            {
                c.record(key.0, socket, Way::Sent, &datagram);
            }
        }
        Ok(self.report)
    }

    fn enter(&mut self, phase: u8, now: Instant) {
        if phase >= WARMUP && self.phase < WARMUP {
            self.start_sending(now);
        }
        if phase >= MEASURE && self.phase < MEASURE {
            self.measuring = true;
            self.cpu_start = Some(thread_cpu_time());
            self.mux_start = Some(self.mux.stats());
            if let Some(g) = &mut self.game {
                g.start_window();
            }
        }
        if phase >= DRAIN && self.phase < DRAIN {
            self.measuring = false;
            self.sending = false;
            self.cpu_end = Some(thread_cpu_time());
            self.drain_deadline = Some(now + self.plan.drain);
            if let Some(g) = &mut self.game {
                g.end_window();
                // The server keeps sending through the drain: count datagrams over
                // the window only, as the messages they are divided by.
                self.window_mux_end = Some(self.mux.stats());
            }
        }
        self.phase = phase;
    }

    fn start_sending(&mut self, now: Instant) {
        self.sending = true;
        let now_ns = self.ns(now);
        match self.plan.mode {
            Mode::Closed { .. } => {
                for i in 0..self.sessions.len() {
                    self.touch(i);
                }
            }
            Mode::Open { .. } => {
                for i in 0..self.sessions.len() {
                    // A random phase per session, so sends do not come in bursts.
                    let offset = self.random() % self.interval_ns.max(1);
                    self.schedule.push(Reverse((now_ns + offset, i)));
                }
            }
        }
        self.next_churn_ns = now_ns;
    }

    fn touch(&mut self, i: usize) {
        if !self.sessions[i].touched {
            self.sessions[i].touched = true;
            self.touched.push(i);
        }
    }

    /// Reads every readable socket until it would block.
    fn receive(&mut self, now: Instant) {
        let Self {
            events,
            sockets,
            mux,
            buf,
            report,
            capture,
            ..
        } = self;
        for event in events.iter() {
            let key = event.token().0;
            let Some(Some(socket)) = sockets.get(key) else {
                continue;
            };
            loop {
                match socket.recv(buf) {
                    Ok(n) => {
                        if let Some(c) = capture {
                            c.record(key, socket, Way::Received, &buf[..n]);
                        }
                        mux.process_incoming(Key(key), &buf[..n], now)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => report.refused += 1,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        self.events.clear();
    }

    fn handle_events(&mut self, now: Instant) {
        let now_ns = self.ns(now);
        while let Some(event) = self.mux.poll_event() {
            match event {
                SocketEvent::SessionOpened { remote: Key(k) } if k < self.sessions.len() => {
                    self.sessions[k].open = true;
                    self.opened += 1;
                    if self.opened == self.sessions.len() as u64 {
                        self.ctl.progress[self.id]
                            .all_opened_ns
                            .store(now_ns, Ordering::Relaxed);
                    }
                    self.ctl.progress[self.id]
                        .opened
                        .store(self.opened, Ordering::Relaxed);
                    if self.sending && matches!(self.plan.mode, Mode::Closed { .. }) {
                        self.touch(k);
                    }
                }
                SocketEvent::SessionOpened { remote: Key(k) } => self.churn_opened(k, now, now_ns),
                SocketEvent::DataReceived {
                    remote: Key(k),
                    data,
                    channel,
                } => {
                    if k < self.sessions.len() && self.game.is_some() {
                        self.on_game(k, &data, channel, now_ns);
                    } else if k < self.sessions.len() {
                        self.on_echo(k, &data, channel, now_ns);
                    } else {
                        self.error(|| "data on a churn session, which sends none".into());
                    }
                }
                SocketEvent::SessionClosed {
                    remote: Key(k),
                    reason,
                } if k < self.sessions.len() => self.session_closed(k, reason),
                SocketEvent::SessionClosed {
                    remote: Key(k),
                    reason,
                } => self.churn_closed(k, reason),
                SocketEvent::SessionRemapped { .. } => {
                    self.error(|| "a client session was remapped".into())
                }
                other => self.error(|| format!("an event the client does not expect: {other:?}")),
            }
        }
    }

    fn session_closed(&mut self, k: usize, reason: DisconnectReason) {
        *self
            .report
            .closed_reasons
            .entry(reason.as_u16())
            .or_default() += 1;
        let was_open = std::mem::take(&mut self.sessions[k].open);
        if let Some(g) = &mut self.game {
            g.closed(k);
        }
        if was_open {
            self.report.sessions_closed += 1;
            let global = self.first + k;
            self.error(|| format!("session {global} closed during the run: {reason:?}"));
        } else {
            let failed = &self.ctl.progress[self.id].connect_failed;
            failed.fetch_add(1, Ordering::Relaxed);
        }
        // Its messages will never come back: they stay counted as lost.
        let s = &mut self.sessions[k];
        let counted = s.out.iter().filter(|o| o.counted && !o.acked).count() as u64;
        s.out.clear();
        s.unacked = 0;
        self.counted_unacked -= counted;
    }

    /// `--scenario game`: a state or zone-in from the server.
    fn on_game(&mut self, k: usize, data: &[u8], channel: Channel, now_ns: u64) {
        let global = (self.first + k) as u32 & 0x00FF_FFFF;
        let measuring = self.measuring;
        let Some(game) = &mut self.game else {
            return;
        };
        self.received_all += 1;
        if let Err(e) = game.received(k, global, data, channel, now_ns, mono_ns(), measuring) {
            self.error(|| e);
        }
    }

    fn on_echo(&mut self, k: usize, data: &[u8], channel: Channel, now_ns: u64) {
        let reliable = matches!(self.plan.channel, Channel::Reliable(_));
        if channel != self.plan.channel {
            let sent = self.plan.channel;
            self.error(|| format!("echo arrived on {channel:?}, sent on {sent:?}"));
            return;
        }
        let global = (self.first + k) as u32 & 0x00FF_FFFF;
        if data.len() < HEADER
            || data[0] != MAGIC
            || u32::from_le_bytes([data[1], data[2], data[3], 0]) != global
        {
            let len = data.len();
            self.error(|| format!("malformed echo of {len} bytes on session {global}"));
            return;
        }
        let seq = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes"));
        let sent_ns = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
        let Some(front_seq) = self.sessions[k].out.front().map(|o| o.seq) else {
            if reliable {
                self.error(|| format!("unexpected echo of message {seq} on session {global}"));
            }
            return;
        };
        let offset = seq.wrapping_sub(front_seq) as usize;
        if offset >= self.sessions[k].out.len() {
            // Unreliable: late (already counted lost) or duplicated.
            if reliable {
                self.error(|| format!("unexpected echo of message {seq} on session {global}"));
            }
            return;
        }
        if reliable && offset != 0 {
            self.error(|| {
                format!("echo out of order on session {global}: got {seq}, expected {front_seq}")
            });
        }
        let o = self.sessions[k].out[offset];
        if o.acked {
            if reliable {
                self.error(|| format!("duplicate echo of message {seq} on session {global}"));
            }
            return;
        }
        let size = o.size as usize;
        if data.len() != size
            || sent_ns != o.sent_ns
            || (size > HEADER && data[size - 1] != pattern(size - 1))
        {
            let len = data.len();
            self.error(|| {
                format!("echo of message {seq} on session {global} differs from what was sent ({len} bytes, sent {size})")
            });
            return;
        }
        let s = &mut self.sessions[k];
        s.out[offset].acked = true;
        s.unacked -= 1;
        while s.out.front().is_some_and(|o| o.acked) {
            s.out.pop_front();
        }
        self.received_all += 1;
        if o.counted {
            self.counted_unacked -= 1;
            self.report.received += 1;
            self.report.bytes_received += size as u64;
            self.report
                .rtt
                .saturating_record(now_ns.saturating_sub(o.sent_ns).max(1));
        }
        if matches!(self.plan.mode, Mode::Closed { .. }) {
            self.touch(k);
        }
    }

    /// Unreliable: echoes older than the loss timeout are lost.
    fn expire(&mut self, now: Instant) {
        self.last_expiry = now;
        let now_ns = self.ns(now);
        let limit = self.plan.loss_timeout.as_nanos() as u64;
        let closed = matches!(self.plan.mode, Mode::Closed { .. });
        for i in 0..self.sessions.len() {
            let s = &mut self.sessions[i];
            let mut freed = false;
            while let Some(o) = s.out.front() {
                if !o.acked && now_ns.saturating_sub(o.sent_ns) < limit {
                    break;
                }
                if !o.acked {
                    s.unacked -= 1;
                    freed = true;
                    if o.counted {
                        self.counted_unacked -= 1;
                    }
                }
                s.out.pop_front();
            }
            if freed && closed {
                self.touch(i);
            }
        }
    }

    /// Closed loop: refill the windows of the sessions touched this turn. Open loop:
    /// send what is due. Churn: open what is due.
    fn generate(&mut self, now: Instant) {
        let now_ns = self.ns(now);
        match self.plan.mode {
            Mode::Closed { window } => {
                let touched = std::mem::take(&mut self.touched);
                for &i in &touched {
                    self.sessions[i].touched = false;
                    while self.sessions[i].open && self.sessions[i].unacked < window {
                        if !self.send_message(i, now_ns) {
                            break;
                        }
                    }
                }
                self.touched = touched;
                self.touched.clear();
            }
            Mode::Open { .. } => {
                while let Some(&Reverse((due, i))) = self.schedule.peek() {
                    if due > now_ns {
                        break;
                    }
                    self.schedule.pop();
                    if self.sessions[i].open {
                        self.send_message(i, now_ns);
                    }
                    let mut next = due + self.interval_ns;
                    if now_ns.saturating_sub(next) > 1_000_000_000 {
                        self.report.schedule_skips += 1;
                        next = now_ns;
                    }
                    self.schedule.push(Reverse((next, i)));
                }
            }
        }
        if self.churn_interval_ns > 0 {
            while self.next_churn_ns <= now_ns {
                self.start_churn(now, now_ns);
                self.next_churn_ns += self.churn_interval_ns;
                if now_ns.saturating_sub(self.next_churn_ns) > 1_000_000_000 {
                    self.report.schedule_skips += 1;
                    self.next_churn_ns = now_ns;
                }
            }
        }
    }

    fn send_message(&mut self, i: usize, now_ns: u64) -> bool {
        let size = if self.plan.size.min == self.plan.size.max {
            self.plan.size.min
        } else {
            let span = (self.plan.size.max - self.plan.size.min + 1) as u64;
            self.plan.size.min + (self.random() % span) as usize
        };
        let global = ((self.first + i) as u32 & 0x00FF_FFFF).to_le_bytes();
        let seq = self.sessions[i].next_seq;
        self.msg[0] = MAGIC;
        self.msg[1..4].copy_from_slice(&global[..3]);
        self.msg[4..8].copy_from_slice(&seq.to_le_bytes());
        self.msg[8..16].copy_from_slice(&now_ns.to_le_bytes());
        match self
            .mux
            .enqueue_data_on(&Key(i), &self.msg[..size], self.plan.channel)
        {
            Ok(()) if self.game.is_some() => {
                // Inputs are not echoed: the states say which ones arrived.
                if let Some(g) = &mut self.game {
                    g.input_sent(i, seq, now_ns);
                }
                self.sessions[i].next_seq = seq.wrapping_add(1);
                if self.measuring {
                    self.report.sent += 1;
                }
                true
            }
            Ok(()) => {
                let s = &mut self.sessions[i];
                s.out.push_back(Out {
                    seq,
                    size: size as u32,
                    sent_ns: now_ns,
                    counted: self.measuring,
                    acked: false,
                });
                s.next_seq = seq.wrapping_add(1);
                s.unacked += 1;
                if self.measuring {
                    self.report.sent += 1;
                    self.counted_unacked += 1;
                }
                true
            }
            Err(EnqueueError::QueueFull) => {
                self.report.enqueue_refused += 1;
                false
            }
            Err(e) => {
                self.report.enqueue_refused += 1;
                self.error(|| format!("a client session refused a message: {e}"));
                false
            }
        }
    }

    fn start_churn(&mut self, now: Instant, now_ns: u64) {
        if self.churn_live >= CHURN_CAP {
            self.report.churn_failures += 1;
            return;
        }
        let slot = self.churn_free.pop().unwrap_or_else(|| {
            self.churn.push(Churn::Free);
            self.sockets.push(None);
            self.churn.len() - 1
        });
        let key = self.sessions.len() + slot;
        let index = self.random() as usize;
        let mut socket = match open_socket(
            local_addr_for(self.plan.target, index, self.spread),
            self.plan.target,
        ) {
            Ok(s) => s,
            Err(e) => {
                self.churn_free.push(slot);
                self.report.churn_failures += 1;
                self.error(|| e);
                return;
            }
        };
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, Token(key), Interest::READABLE)
        {
            self.churn_free.push(slot);
            self.report.churn_failures += 1;
            self.error(|| format!("cannot register a socket: {e}"));
            return;
        }
        if let Err(e) = self.mux.connect(Key(key), now) {
            let _ = self.poll.registry().deregister(&mut socket);
            self.churn_free.push(slot);
            self.report.churn_failures += 1;
            self.error(|| format!("cannot start a churn session: {e}"));
            return;
        }
        self.sockets[key] = Some(socket);
        if let Some(c) = &mut self.capture {
            c.forget(key);
        }
        self.churn[slot] = Churn::Connecting { started_ns: now_ns };
        self.churn_live += 1;
    }

    fn churn_opened(&mut self, key: usize, now: Instant, now_ns: u64) {
        let slot = key - self.sessions.len();
        if let Some(Churn::Connecting { started_ns }) = self.churn.get(slot).copied() {
            if self.measuring {
                self.report.setups += 1;
                self.report
                    .setup
                    .saturating_record(now_ns.saturating_sub(started_ns).max(1));
            }
            self.churn[slot] = Churn::Closing;
            self.mux
                .terminate(&Key(key), DisconnectReason::Application, now);
            self.to_close.push(key);
        }
    }

    fn churn_closed(&mut self, key: usize, reason: DisconnectReason) {
        let slot = key - self.sessions.len();
        if let Some(Churn::Connecting { .. }) = self.churn.get(slot) {
            self.report.churn_failures += 1;
            self.error(|| format!("a churn session failed to open: {reason:?}"));
            self.churn[slot] = Churn::Closing;
            self.to_close.push(key);
        }
    }

    /// Closes the sockets of churn sessions whose Disconnect went out this turn.
    fn close_churned(&mut self) {
        for key in std::mem::take(&mut self.to_close) {
            if let Some(mut socket) = self.sockets[key].take() {
                let _ = self.poll.registry().deregister(&mut socket);
            }
            let slot = key - self.sessions.len();
            self.churn[slot] = Churn::Free;
            self.churn_free.push(slot);
            self.churn_live -= 1;
        }
    }

    fn flush(&mut self) {
        let n = self.mux.outgoing_len();
        for i in 0..n {
            let (key, datagram) = self.mux.outgoing(i);
            let Some(Some(socket)) = self.sockets.get(key.0) else {
                continue;
            };
            match socket.send(datagram) {
                Ok(_) => {
                    if let Some(c) = &mut self.capture {
                        c.record(key.0, socket, Way::Sent, datagram);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.report.send_drops += 1,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => self.report.refused += 1,
                Err(_) => self.report.send_drops += 1,
            }
        }
        self.mux.consume_outgoing(n);
    }

    fn publish(&mut self, now: Instant) {
        let progress = &self.ctl.progress[self.id];
        progress
            .received
            .store(self.received_all, Ordering::Relaxed);
        if self.phase == DRAIN
            && self.mux_end.is_none()
            && (match &self.game {
                Some(g) => g.all_done(),
                None => self.counted_unacked == 0,
            } || self.drain_deadline.is_some_and(|d| now >= d))
        {
            self.mux_end = Some(self.mux.stats());
            progress.drained.store(true, Ordering::Release);
        }
    }

    fn wait_time(&mut self, now: Instant) -> Duration {
        let mut wait = MAX_WAIT;
        let mut until = |t: Instant| wait = wait.min(t.saturating_duration_since(now));
        // Settled, as the runtimes do: a deadline that moved later (an ack rode on
        // the next input) wakes nobody.
        if let Some(deadline) = self.mux.settle_deadline() {
            until(deadline);
        }
        if self.sending {
            let now_ns = self.ns(now);
            let mut at = |ns: u64| wait = wait.min(Duration::from_nanos(ns.saturating_sub(now_ns)));
            if let Some(Reverse((due, _))) = self.schedule.peek() {
                at(*due);
            }
            if self.churn_interval_ns > 0 {
                at(self.next_churn_ns);
            }
        }
        wait
    }
}

fn diff(end: &MuxStats, start: &MuxStats) -> MuxStats {
    let mut d = MuxStats::default();
    let (e, s) = (&end.sessions, &start.sessions);
    d.sessions.datagrams_sent = e.datagrams_sent.saturating_sub(s.datagrams_sent);
    d.sessions.bytes_sent = e.bytes_sent.saturating_sub(s.bytes_sent);
    d.sessions.datagrams_received = e.datagrams_received.saturating_sub(s.datagrams_received);
    d.sessions.bytes_received = e.bytes_received.saturating_sub(s.bytes_received);
    d.sessions.reliable_packets_sent = e
        .reliable_packets_sent
        .saturating_sub(s.reliable_packets_sent);
    d.sessions.reliable_packets_resent = e
        .reliable_packets_resent
        .saturating_sub(s.reliable_packets_resent);
    d.sessions.acks_sent = e.acks_sent.saturating_sub(s.acks_sent);
    d.sessions.acks_received = e.acks_received.saturating_sub(s.acks_received);
    d.sessions.crc_failures = e.crc_failures.saturating_sub(s.crc_failures);
    d.sessions_opened = end.sessions_opened.saturating_sub(start.sessions_opened);
    d
}
