//! The echo servers: soe-uring's thread-per-core `SoeServer`, this crate's Tokio
//! adapter, and the reference `soe_protocol::TokioSoeServer`.
//!
//! Every `DataReceived` is sent back to the same remote on the same channel. The two
//! Tokio servers run on one dedicated thread each, with a current-thread runtime that
//! also runs the echo loop, so that thread's CPU clock is the whole server's CPU.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use soe_uring::{
    Channel, EnqueueError, Rc4KeyState, SessionParameters, ShardContext, ShardHandler,
    SocketConfig, SocketEvent, SoeServer, tokio_rt,
};

use crate::args::{ProtoOpts, ServerKind, ServerOpts};
use crate::cpu::ThreadClock;
use crate::game::{GameCounters, GameLogic, GameServerCfg, Sent};

/// Everything needed to start a server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub kind: ServerKind,
    pub bind: SocketAddr,
    pub shards: usize,
    pub pin: bool,
    pub tick: Option<Duration>,
    pub app_protocol: String,
    pub compression: bool,
    pub rc4_key: Option<Vec<u8>>,
    pub crc_length: Option<u8>,
    pub max_sessions: Option<usize>,
    pub profile: String,
    pub congestion_control: bool,
    /// `--scenario game`: the game server instead of the echo server.
    pub game: Option<GameServerCfg>,
    pub proto: ProtoOpts,
    pub flush_interval: Option<Duration>,
}

impl ServerSpec {
    pub fn new(
        kind: ServerKind,
        bind: SocketAddr,
        default_shards: usize,
        opts: &ServerOpts,
        proto: &ProtoOpts,
    ) -> Result<Self, String> {
        proto.validate()?;
        let shards = match kind {
            ServerKind::SoeUring => opts.shards.unwrap_or(default_shards),
            ServerKind::Tokio | ServerKind::Peer => 1,
        };
        if shards == 0 {
            return Err("--shards must be at least 1".into());
        }
        if opts.tick_us == Some(0) {
            return Err("--tick-us must be at least 1".into());
        }
        Ok(Self {
            kind,
            bind,
            shards,
            pin: !opts.no_pin,
            tick: opts.tick_us.map(Duration::from_micros),
            app_protocol: proto.app_protocol.clone(),
            compression: proto.compression,
            rc4_key: proto.rc4_key.as_ref().map(|k| k.0.clone()),
            crc_length: opts.crc_length,
            max_sessions: opts.max_sessions,
            profile: proto.profile.clone(),
            congestion_control: !proto.no_congestion_control,
            game: None,
            proto: proto.clone(),
            flush_interval: opts.flush_us.map(Duration::from_micros),
        })
    }

    /// The tick of the Tokio-driven servers: `--tick-us`, or 1 ms.
    fn tokio_tick(&self) -> Duration {
        self.tick.unwrap_or(Duration::from_millis(1))
    }

    /// soe-uring's configuration (server side).
    fn our_config(&self) -> SocketConfig {
        let mut c = SocketConfig {
            default_session_params: SessionParameters::profile(&self.profile).unwrap_or_default(),
            ..SocketConfig::default()
        };
        let p = &mut c.default_session_params;
        p.application_protocol = app_protocol(p, &self.app_protocol);
        p.congestion_control = self.congestion_control;
        p.is_compression_enabled = self.compression;
        self.proto.apply(p);
        if let Some(n) = self.crc_length {
            p.crc_length = n;
        }
        c.app_params.encryption_key_state = self.rc4_key.as_deref().and_then(Rc4KeyState::try_new);
        if let Some(n) = self.max_sessions {
            c.max_sessions = n;
        }
        c
    }

    /// The reference's configuration (server side). It has no session limit.
    fn peer_config(&self) -> soe_protocol::SocketConfig {
        let mut c = soe_protocol::SocketConfig::default();
        let p = &mut c.default_session_params;
        p.application_protocol = self.app_protocol.clone();
        p.is_compression_enabled = self.compression;
        if let Some(n) = self.crc_length {
            p.crc_length = n;
        }
        c.app_params.encryption_key_state = self
            .rc4_key
            .as_deref()
            .filter(|k| (1..=256).contains(&k.len()))
            .map(soe_protocol::Rc4KeyState::new);
        c
    }
}

/// Server counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSnapshot {
    /// CPU time of every server thread.
    pub cpu: Duration,
    /// The part of `cpu` spent in the kernel, as the kernel's tick samples split it.
    pub kernel: Option<Duration>,
    /// Datagrams read and written (soe-uring only).
    pub datagrams_in: Option<u64>,
    pub datagrams_out: Option<u64>,
    /// The game server's counters (`--scenario game`; zeros otherwise).
    pub game: crate::game::GameServerSnapshot,
    /// Shard wake-ups, and those only a timeout ended (soe-uring only).
    pub wakeups: Option<u64>,
    pub timer_wakeups: Option<u64>,
}

/// Least server CPU in a window for its kernel split to be reported. The kernel
/// splits a thread's time by which mode the scheduler tick found it in (250 or
/// 1000 times a second), so 0.2 s is at least 50 samples: a share within about
/// 7 points. Below it, a run of a few ticks would print nonsense (all kernel, or
/// none).
pub const KERNEL_SPLIT_MIN_CPU_S: f64 = 0.2;

/// Server CPU seconds between two snapshots, and the part of it spent in the
/// kernel; `None` where a snapshot is missing (the split also where the server
/// used less than [`KERNEL_SPLIT_MIN_CPU_S`]).
pub fn cpu_between(
    start: Option<ServerSnapshot>,
    end: Option<ServerSnapshot>,
) -> (Option<f64>, Option<f64>) {
    let (Some(a), Some(b)) = (start, end) else {
        return (None, None);
    };
    let cpu = b.cpu.saturating_sub(a.cpu).as_secs_f64();
    let kernel = a
        .kernel
        .zip(b.kernel)
        .filter(|_| cpu >= KERNEL_SPLIT_MIN_CPU_S)
        .map(|(a, b)| b.saturating_sub(a).as_secs_f64().min(cpu));
    (Some(cpu), kernel)
}

enum Inner {
    Uring(SoeServer),
    Thread {
        thread: JoinHandle<Result<(), String>>,
        clock: Option<ThreadClock>,
        /// The server thread's kernel id (0 until it ran).
        tid: Arc<AtomicI32>,
        stop: tokio::sync::oneshot::Sender<()>,
    },
}

/// A server running in this process.
pub struct RunningServer {
    pub kind: ServerKind,
    pub local_addr: SocketAddr,
    pub shards: usize,
    /// Echoes the server could not queue (should stay 0).
    pub echo_failures: Arc<AtomicU64>,
    /// The game server's counters (`--scenario game`).
    pub game: Arc<GameCounters>,
    inner: Inner,
}

impl RunningServer {
    pub fn start(spec: &ServerSpec) -> Result<Self, String> {
        let failures = Arc::new(AtomicU64::new(0));
        let game = Arc::new(GameCounters::default());
        match spec.kind {
            ServerKind::SoeUring => start_uring(spec, failures, game),
            ServerKind::Tokio | ServerKind::Peer => start_thread(spec, failures, game),
        }
    }

    /// Counters now (`None` if the server did not answer).
    pub fn snapshot(&self) -> Option<ServerSnapshot> {
        match &self.inner {
            Inner::Uring(server) => {
                let stats = server.handle().stats_timeout(Duration::from_secs(2));
                (stats.shards.len() == self.shards).then_some(ServerSnapshot {
                    cpu: stats.total.cpu_time,
                    kernel: Some(stats.total.kernel_time),
                    datagrams_in: Some(stats.total.datagrams_in),
                    datagrams_out: Some(stats.total.datagrams_out),
                    game: self.game.snapshot(),
                    wakeups: Some(stats.total.wakeups),
                    timer_wakeups: Some(stats.total.timer_wakeups),
                })
            }
            Inner::Thread { clock, tid, .. } => {
                let cpu = clock.as_ref()?.read()?;
                let kernel = crate::cpu::kernel_share(tid.load(Ordering::Acquire))
                    .map(|share| cpu.mul_f64(share));
                Some(ServerSnapshot {
                    cpu,
                    kernel,
                    game: self.game.snapshot(),
                    ..ServerSnapshot::default()
                })
            }
        }
    }

    /// A one-line summary of the soe-uring server's counters (for `serve`).
    pub fn summary(&self) -> Option<String> {
        let Inner::Uring(server) = &self.inner else {
            return None;
        };
        let stats = server.handle().stats();
        let t = &stats.total;
        let s = &t.mux.sessions;
        let missing = if stats.missing.is_empty() {
            String::new()
        } else {
            format!(" | NOT ANSWERING: shards {:?}", stats.missing)
        };
        Some(format!(
            "sessions live {} opened {} | datagrams in {} out {} | messages delivered {} | resends {} | cpu {:.2} s{missing}",
            t.mux.sessions_live,
            t.mux.sessions_opened,
            t.datagrams_in,
            t.datagrams_out,
            s.messages_delivered,
            s.reliable_packets_resent,
            t.cpu_time.as_secs_f64()
        ))
    }

    /// The soe-uring server's counters and each shard's health as one JSON object
    /// (for `serve --stats-json` and `soak`).
    pub fn sample_json(&self, elapsed: Duration) -> Option<serde_json::Value> {
        let Inner::Uring(server) = &self.inner else {
            return None;
        };
        let stats = server.handle().stats_timeout(Duration::from_secs(2));
        let t = &stats.total;
        let health: Vec<serde_json::Value> = server
            .health()
            .iter()
            .map(|h| {
                serde_json::json!({
                    "shard": h.shard,
                    "state": format!("{:?}", h.state),
                    "alive": h.alive(Duration::from_secs(2)),
                    "turns": h.turns,
                    "last_turn_age_ms": h.last_turn_age.as_secs_f64() * 1e3,
                    "overdue_ms": h.overdue.as_secs_f64() * 1e3,
                    "overloaded": h.overloaded,
                    "draining": h.draining,
                    "sessions": h.sessions,
                })
            })
            .collect();
        let closed: u64 = t.mux.sessions_closed.iter().sum();
        Some(serde_json::json!({
            "t_s": elapsed.as_secs_f64(),
            "shards": self.shards,
            "shards_answered": stats.shards.len(),
            "health": health,
            "sessions_live": t.mux.sessions_live,
            "sessions_opened": t.mux.sessions_opened,
            "sessions_closed": closed,
            "sessions_closed_by_reason": t.mux.sessions_closed.to_vec(),
            "messages_delivered": t.mux.sessions.messages_delivered,
            "resends": t.mux.sessions.reliable_packets_resent,
            "datagrams_in": t.datagrams_in,
            "datagrams_out": t.datagrams_out,
            "socket_drops": t.socket_drops,
            "send_drops": t.send_drops,
            "overloaded_turns": t.overloaded_turns,
            "refused_admission_closed": t.mux.refused_admission_closed,
            "parked_overflows": t.parked_overflows,
            "event_stalls": t.event_stalls,
            "timer_entries": t.mux.timer_entries,
            "table_slots": t.mux.table_slots,
            "cpu_s": t.cpu_time.as_secs_f64(),
            "rss_bytes": rss_bytes(),
        }))
    }

    /// Starts draining (soe-uring only): new sessions are refused, live ones
    /// served. Returns whether this server can drain.
    pub fn start_drain(&self) -> bool {
        match &self.inner {
            Inner::Uring(server) => {
                server.handle().drain();
                true
            }
            Inner::Thread { .. } => false,
        }
    }

    /// Sessions live now (soe-uring only; 0 otherwise).
    pub fn sessions_live(&self) -> u64 {
        match &self.inner {
            Inner::Uring(server) => server.handle().sessions_live(),
            Inner::Thread { .. } => 0,
        }
    }

    /// Stops the server gracefully (Disconnect to every peer) and joins its threads.
    pub fn stop(self) -> Result<(), String> {
        match self.inner {
            Inner::Uring(server) => server
                .shutdown()
                .map_err(|e| format!("soe-uring server did not stop cleanly: {e}")),
            Inner::Thread { thread, stop, .. } => {
                let _ = stop.send(());
                match thread.join() {
                    Ok(result) => result,
                    Err(_) => Err(format!("the {} server thread panicked", self.kind)),
                }
            }
        }
    }
}

/// The game server on a soe-uring shard: events feed the logic, `on_tick` runs the
/// game tick on the shard's own thread.
struct GameShard(GameLogic);

impl ShardHandler for GameShard {
    fn on_event(&mut self, event: SocketEvent<SocketAddr>, _ctx: &mut ShardContext<'_>) {
        let logic = &mut self.0;
        match event {
            SocketEvent::SessionOpened { remote } => logic.opened(remote),
            SocketEvent::DataReceived { remote, data, .. } => logic.input(&remote, &data),
            SocketEvent::SessionClosed { remote, .. } => logic.closed(&remote),
            SocketEvent::SessionRemapped { old, new } => logic.remapped(&old, new),
            _ => {}
        }
    }

    fn on_tick(&mut self, ctx: &mut ShardContext<'_>) {
        let now = ctx.now();
        self.0
            .tick_if_due(now, &mut |remote, data, channel| match ctx
                .enqueue_data_on(&remote, data, channel)
            {
                Ok(()) => Sent::Ok,
                Err(EnqueueError::NoSession | EnqueueError::NotRunning) => Sent::Gone,
                Err(_) => Sent::Full,
            });
    }
}

fn start_uring(
    spec: &ServerSpec,
    failures: Arc<AtomicU64>,
    game: Arc<GameCounters>,
) -> Result<RunningServer, String> {
    let counter = failures.clone();
    let mut builder = SoeServer::builder(spec.bind, spec.our_config())
        .shards(spec.shards)
        .pin_cpus(spec.pin);
    if let Some(tick) = spec.tick {
        builder = builder.tick_period(tick);
    }
    if let Some(interval) = spec.flush_interval {
        builder = builder.flush_interval(interval);
    }
    let builder = if let Some(cfg) = spec.game.clone() {
        // The game logic ticks from `on_tick`, which runs periodically only with
        // a tick period: a twentieth of the game's (at least 1 ms), so game ticks
        // start within 5 % of a period of when they are due, unless --tick-us
        // says otherwise.
        if spec.tick.is_none() {
            builder = builder.tick_period((cfg.tick / 20).max(Duration::from_millis(1)));
        }
        let counters = game.clone();
        builder.handler(move |shard| {
            GameShard(GameLogic::new(cfg.clone(), counters.clone(), shard.index))
        })
    } else {
        builder
    };
    let server = if spec.game.is_some() {
        builder
    } else {
        builder.handler(move |_shard| {
            let failures = counter.clone();
            move |event: SocketEvent<SocketAddr>, ctx: &mut ShardContext<'_>| {
                if let SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } = event
                    && ctx.enqueue_data_on(&remote, &data, channel).is_err()
                {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    }
    .start()
    .map_err(|e| format!("cannot start the soe-uring server: {e}"))?;
    Ok(RunningServer {
        kind: ServerKind::SoeUring,
        local_addr: server.local_addr(),
        shards: server.shards(),
        echo_failures: failures,
        game,
        inner: Inner::Uring(server),
    })
}

type Ready = std::sync::mpsc::Sender<Result<SocketAddr, String>>;

/// Tells `ready` how binding `bind` went (the bound address, or why not) and
/// hands the server on.
fn announce<S>(
    bound: std::io::Result<S>,
    bind: SocketAddr,
    ready: &Ready,
    local_addr: impl Fn(&S) -> SocketAddr,
) -> Result<S, String> {
    match bound {
        Ok(server) => {
            let _ = ready.send(Ok(local_addr(&server)));
            Ok(server)
        }
        Err(e) => {
            let message = format!("cannot bind {bind}: {e}");
            let _ = ready.send(Err(message.clone()));
            Err(message)
        }
    }
}

fn start_thread(
    spec: &ServerSpec,
    failures: Arc<AtomicU64>,
    game: Arc<GameCounters>,
) -> Result<RunningServer, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let kind = spec.kind;
    let task_spec = spec.clone();
    let counter = failures.clone();
    let game_counters = game.clone();
    let tid = Arc::new(AtomicI32::new(0));
    let tid_slot = tid.clone();
    let thread = std::thread::Builder::new()
        .name(format!("{kind}-server"))
        .spawn(move || {
            // Before the server is ready: the snapshot reads it after that.
            tid_slot.store(crate::cpu::current_thread_id(), Ordering::Release);
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let message = format!("cannot build a Tokio runtime: {e}");
                    let _ = ready_tx.send(Err(message.clone()));
                    return Err(message);
                }
            };
            runtime.block_on(async move {
                match (kind, task_spec.game.clone()) {
                    (ServerKind::Tokio, None) => {
                        serve_ours(task_spec, ready_tx, stop_rx, counter).await
                    }
                    (ServerKind::Tokio, Some(cfg)) => {
                        let logic = GameLogic::new(cfg, game_counters, 0);
                        game_ours(task_spec, ready_tx, stop_rx, logic).await
                    }
                    (_, None) => serve_peer(task_spec, ready_tx, stop_rx, counter).await,
                    (_, Some(cfg)) => {
                        let logic = GameLogic::new(cfg, game_counters, 0);
                        game_peer(task_spec, ready_tx, stop_rx, logic).await
                    }
                }
            })
        })
        .map_err(|e| format!("cannot spawn the {kind} server thread: {e}"))?;
    let local_addr = match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => return Err(format!("the {kind} server did not start within 10 s")),
    };
    let clock = ThreadClock::of(&thread);
    Ok(RunningServer {
        kind,
        local_addr,
        shards: 1,
        echo_failures: failures,
        game,
        inner: Inner::Thread {
            thread,
            clock,
            tid,
            stop: stop_tx,
        },
    })
}

/// Lets a dropped server's driver task send its Disconnects before the runtime ends.
const GRACE: Duration = Duration::from_millis(100);

async fn serve_ours(
    spec: ServerSpec,
    ready: Ready,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    failures: Arc<AtomicU64>,
) -> Result<(), String> {
    let driver = tokio_rt::DriverConfig {
        flush_interval: spec.flush_interval,
        ..tokio_rt::DriverConfig::default()
    };
    let mut server = announce(
        tokio_rt::TokioSoeServer::bind_with(
            spec.bind,
            spec.our_config(),
            spec.tokio_tick(),
            driver,
        )
        .await,
        spec.bind,
        &ready,
        |s| s.local_addr(),
    )?;
    let handle = server.handle();
    let mut events = Vec::with_capacity(256);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            n = server.recv_events(&mut events, 256) => {
                if n == 0 {
                    break;
                }
                for event in events.drain(..) {
                    let SocketEvent::DataReceived { remote, data, channel } = event else {
                        continue;
                    };
                    if let Err(e) = handle.try_enqueue_data_on(remote, data, channel) {
                        // Full: wait for room (backpressure), never drop.
                        let ok = e.is_full()
                            && handle
                                .enqueue_data_on_async(remote, e.into_inner(), channel)
                                .await
                                .is_ok();
                        if !ok {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }
    drop(server);
    tokio::time::sleep(GRACE).await;
    Ok(())
}

async fn serve_peer(
    spec: ServerSpec,
    ready: Ready,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    failures: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut server = announce(
        soe_protocol::TokioSoeServer::bind(spec.bind, spec.peer_config(), spec.tokio_tick()).await,
        spec.bind,
        &ready,
        |s| s.local_addr(),
    )?;
    let handle = server.handle();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            event = server.recv_event() => {
                match event {
                    None => break,
                    Some(soe_protocol::SocketEvent::DataReceived { remote, data, channel }) => {
                        if !handle.enqueue_data_on(remote, data, channel) {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }
    drop(server);
    tokio::time::sleep(GRACE).await;
    Ok(())
}

/// The game server on this crate's Tokio adapter: events feed the logic, a timer in
/// the same loop runs the ticks (on the same thread, so its CPU clock counts both).
async fn game_ours(
    spec: ServerSpec,
    ready: Ready,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    mut logic: GameLogic,
) -> Result<(), String> {
    let mut server = announce(
        tokio_rt::TokioSoeServer::bind(spec.bind, spec.our_config(), spec.tokio_tick()).await,
        spec.bind,
        &ready,
        |s| s.local_addr(),
    )?;
    let handle = server.handle();
    let mut events = Vec::with_capacity(256);
    loop {
        let next = logic.next_tick(std::time::Instant::now());
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(next.into()) => {
                // The adapter's API takes owned payloads: one copy per message.
                logic.tick_if_due(std::time::Instant::now(), &mut |remote, data, channel| {
                    match handle.try_enqueue_data_on(remote, data.to_vec(), channel) {
                        Ok(()) => Sent::Ok,
                        Err(e) if e.is_full() => Sent::Full,
                        Err(_) => Sent::Gone,
                    }
                });
            }
            n = server.recv_events(&mut events, 256) => {
                if n == 0 {
                    break;
                }
                for event in events.drain(..) {
                    match event {
                        SocketEvent::SessionOpened { remote } => logic.opened(remote),
                        SocketEvent::DataReceived { remote, data, .. } => logic.input(&remote, &data),
                        SocketEvent::SessionClosed { remote, .. } => logic.closed(&remote),
                        SocketEvent::SessionRemapped { old, new } => logic.remapped(&old, new),
                        _ => {}
                    }
                }
            }
        }
    }
    drop(server);
    tokio::time::sleep(GRACE).await;
    Ok(())
}

/// soe-protocol's name for a channel.
fn peer_channel(channel: Channel) -> soe_protocol::Channel {
    match channel {
        Channel::Reliable(k) => soe_protocol::Channel::Reliable(k),
        _ => soe_protocol::Channel::Unreliable,
    }
}

/// The game server on the reference soe-protocol 2.3.0 server: the same logic and
/// the same timer as [`game_ours`].
async fn game_peer(
    spec: ServerSpec,
    ready: Ready,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    mut logic: GameLogic,
) -> Result<(), String> {
    let mut server = announce(
        soe_protocol::TokioSoeServer::bind(spec.bind, spec.peer_config(), spec.tokio_tick()).await,
        spec.bind,
        &ready,
        |s| s.local_addr(),
    )?;
    let handle = server.handle();
    loop {
        let next = logic.next_tick(std::time::Instant::now());
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(next.into()) => {
                logic.tick_if_due(std::time::Instant::now(), &mut |remote, data, channel| {
                    if handle.enqueue_data_on(remote, data.to_vec(), peer_channel(channel)) {
                        Sent::Ok
                    } else {
                        Sent::Gone
                    }
                });
            }
            event = server.recv_event() => {
                match event {
                    None => break,
                    Some(soe_protocol::SocketEvent::SessionOpened { remote }) => logic.opened(remote),
                    Some(soe_protocol::SocketEvent::DataReceived { remote, data, .. }) => {
                        logic.input(&remote, &data)
                    }
                    Some(soe_protocol::SocketEvent::SessionClosed { remote, .. }) => {
                        logic.closed(&remote)
                    }
                }
            }
        }
    }
    drop(server);
    tokio::time::sleep(GRACE).await;
    Ok(())
}

/// The application protocol name soe-uring sides use under a profile: the 14-byte
/// requests of the udp-library and eq profiles carry none, and a server with a
/// name refuses them, so both sides go without one there.
fn app_protocol(params: &SessionParameters, name: &str) -> String {
    if params.names_protocol() {
        name.to_string()
    } else {
        String::new()
    }
}

/// soe-uring's client configuration for the same protocol settings.
pub fn client_config(proto: &ProtoOpts, connect_timeout: Duration) -> SocketConfig {
    let mut c = SocketConfig {
        default_session_params: SessionParameters::profile(&proto.profile).unwrap_or_default(),
        ..SocketConfig::default()
    };
    let p = &mut c.default_session_params;
    p.application_protocol = app_protocol(p, &proto.app_protocol);
    p.congestion_control = !proto.no_congestion_control;
    proto.apply(p);
    // A client adopts the server's choice; set it anyway for symmetry.
    p.is_compression_enabled = proto.compression;
    p.connect_timeout = connect_timeout;
    // Resend the SessionRequest often enough that a lost one does not dominate a
    // short connect phase.
    p.connect_retry_interval = Duration::from_millis(250).min(connect_timeout / 2);
    c.app_params.encryption_key_state = proto
        .rc4_key
        .as_ref()
        .and_then(|k| Rc4KeyState::try_new(&k.0));
    c
}

/// This process's resident set size, from `/proc/self/status` (0 if unknown).
pub fn rss_bytes() -> u64 {
    rss_of("self")
}

/// The resident set size of process `pid` (`"self"` for this one), in bytes.
pub fn rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(cpu_ms: u64, kernel_ms: Option<u64>) -> Option<ServerSnapshot> {
        Some(ServerSnapshot {
            cpu: Duration::from_millis(cpu_ms),
            kernel: kernel_ms.map(Duration::from_millis),
            ..ServerSnapshot::default()
        })
    }

    #[test]
    fn the_kernel_split_needs_enough_cpu_and_both_snapshots() {
        let (cpu, kernel) = cpu_between(snapshot(100, Some(30)), snapshot(1100, Some(630)));
        assert_eq!(cpu, Some(1.0));
        assert_eq!(kernel, Some(0.6));
        // A few ticks' worth: the total only.
        let (cpu, kernel) = cpu_between(snapshot(100, Some(30)), snapshot(250, Some(180)));
        assert!(cpu.is_some_and(|c| (c - 0.15).abs() < 1e-9));
        assert_eq!(kernel, None);
        // The estimate never exceeds the exact total.
        let (_, kernel) = cpu_between(snapshot(0, Some(0)), snapshot(500, Some(520)));
        assert_eq!(kernel, Some(0.5));
        assert_eq!(
            cpu_between(snapshot(0, None), snapshot(500, Some(5))).1,
            None
        );
        assert_eq!(cpu_between(None, snapshot(500, Some(5))), (None, None));
    }
}
