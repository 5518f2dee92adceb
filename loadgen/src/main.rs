//! `loadgen`: load generator and side-by-side bench for soe-uring.
//!
//! * `loadgen` (no arguments) = `loadgen bench`: the soe-uring thread-per-core echo
//!   server, this crate's Tokio adapter and the reference `soe-protocol` 2.3.0 server,
//!   each embedded in turn and loaded by the same clients; one table, with the ratio of
//!   messages per server CPU-second.
//! * `loadgen serve --bind ADDR`: an echo server until SIGINT/SIGTERM.
//! * `loadgen run --target ADDR`: clients only, against any SOE echo server.
//!
//! Built on soe-uring's public API only. See `loadgen --help` for the flags; their
//! names and the JSON keys are a contract other tools rely on.
// A load generator reads the clock: that is its job.
#![allow(clippy::disallowed_methods)]

mod args;
mod capture;
mod client;
mod cpu;
mod flood;
mod game;
mod relay;
mod report;
mod server;
mod soak;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use args::{
    BenchArgs, Cli, Command, Mode, ProtoOpts, RunArgs, Scenario, ServeArgs, ServerKind, SizeRange,
    Workload,
};
use client::{ClientPlan, run_clients};
use game::{GameClientCfg, GameServerCfg};
use report::{RunResult, Setup};
use server::{RunningServer, ServerSpec, client_config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => bench(cli.bench),
        Some(Command::Bench(a)) => bench(a),
        Some(Command::Run(a)) => run(a),
        Some(Command::Serve(a)) => serve(a),
        Some(Command::Soak(a)) => soak::soak(a),
        Some(Command::Flood(a)) => flood::flood(a),
        Some(Command::Relay(a)) => relay_command(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

pub(crate) fn plan(
    label: String,
    target: SocketAddr,
    w: &Workload,
    proto: &ProtoOpts,
) -> ClientPlan {
    let connect_timeout = Duration::from_secs_f64(w.connect_timeout);
    ClientPlan {
        label,
        target,
        sessions: w.sessions,
        threads: w.client_threads(),
        size: w.size,
        mode: w.mode(),
        channel: w.channel.0,
        churn: w.churn,
        config: {
            let mut c = client_config(proto, connect_timeout);
            let p = &mut c.default_session_params;
            p.max_rto = Duration::from_millis(w.client_max_rto_ms).max(p.min_rto);
            c
        },
        connect_timeout,
        warmup: Duration::from_secs_f64(w.warmup),
        duration: Duration::from_secs_f64(w.duration),
        drain: Duration::from_secs_f64(w.drain),
        loss_timeout: Duration::from_secs_f64(w.loss_timeout),
        progress: !w.quiet,
        capture: None,
        game: None,
    }
}

/// The clients of `--scenario game`: open loop at the input rate.
fn game_plan(
    label: String,
    target: SocketAddr,
    w: &Workload,
    proto: &ProtoOpts,
    game: &GameClientCfg,
) -> ClientPlan {
    let mut p = plan(label, target, w, proto);
    p.mode = Mode::Open {
        rate: game.input_rate,
    };
    p.size = SizeRange {
        min: game.input_size,
        max: game.input_size,
    };
    p.channel = game.input_channel;
    p.game = Some(game.clone());
    p
}

pub(crate) fn setup(
    server: String,
    shards: Option<usize>,
    target: SocketAddr,
    p: &ClientPlan,
    w: &Workload,
) -> Setup {
    Setup {
        server,
        shards,
        target: target.to_string(),
        sessions: p.sessions,
        client_threads: p.threads.min(p.sessions.max(1)),
        window: match p.mode {
            Mode::Closed { window } => Some(window),
            Mode::Open { .. } => None,
        },
        rate: match p.mode {
            Mode::Open { rate } => Some(rate),
            Mode::Closed { .. } => None,
        },
        size: w.size.to_string(),
        channel: w.channel.to_string(),
        churn: w.churn,
        server_echo_failures: None,
    }
}

fn bench(a: BenchArgs) -> Result<ExitCode, String> {
    if a.scenario == Scenario::Game {
        return bench_game(a);
    }
    a.workload.validate()?;
    let rounds = bench_each_server(
        &a,
        None,
        |kind, to| plan(kind.to_string(), to, &a.workload, &a.proto),
        |run| {
            let mut s = setup(
                run.kind.to_string(),
                Some(run.shards),
                run.target,
                &run.plan,
                &a.workload,
            );
            s.server_echo_failures = Some(run.echo_failures);
            RunResult::new(s, &run.outcome)
        },
    )?;
    output(&rounds, &ECHO_REPORT, &a.workload)
}

/// `bench --scenario game`: each server in turn, with the game logic, under the
/// same game clients.
fn bench_game(a: BenchArgs) -> Result<ExitCode, String> {
    a.workload.validate_game()?;
    let server_cfg = GameServerCfg::new(&a.game_server);
    let client_cfg = GameClientCfg::new(&a.game_client);
    let rounds = bench_each_server(
        &a,
        Some(&server_cfg),
        |kind, to| game_plan(kind.to_string(), to, &a.workload, &a.proto, &client_cfg),
        |run| {
            let server_counters = match (&run.outcome.server_start, &run.outcome.server_end) {
                (Some(a), Some(b)) => Some(b.game.since(&a.game)),
                _ => None,
            };
            game::GameResult::new(game::GameRun {
                server: run.kind.to_string(),
                shards: Some(run.shards),
                sessions: run.plan.sessions,
                client: &client_cfg,
                server_cfg: Some(&server_cfg),
                outcome: &run.outcome,
                server_counters,
            })
        },
    )?;
    output(&rounds, &GAME_REPORT, &a.workload)
}

/// One server's finished bench run, as [`bench_each_server`] hands it over.
struct ServerRun {
    kind: ServerKind,
    shards: usize,
    target: SocketAddr,
    plan: ClientPlan,
    outcome: client::ClientOutcome,
    /// Echoes the embedded server could not queue.
    echo_failures: u64,
}

/// `bench`'s loop: `--rounds` rounds of each server named (once) in turn, on one
/// shard, started in this process with `game` logic if given, driven by the
/// clients `make_plan` describes (through the relay and capture if asked),
/// stopped, and its run turned into a result by `result`. Odd rounds run the
/// servers in reverse order (so a machine that speeds up or slows down during the
/// bench favours none of them); every round lists its results in the order asked
/// for. The first failure ends the bench, naming the server.
fn bench_each_server<R>(
    a: &BenchArgs,
    game: Option<&GameServerCfg>,
    make_plan: impl Fn(ServerKind, SocketAddr) -> ClientPlan,
    mut result: impl FnMut(ServerRun) -> R,
) -> Result<Vec<Vec<R>>, String> {
    let mut kinds = a.server.clone();
    kinds.dedup();
    let mut rounds = Vec::new();
    for round in 0..a.rounds {
        let reversed = round % 2 == 1;
        let mut order = kinds.clone();
        if reversed {
            order.reverse();
        }
        let mut results = Vec::new();
        for &kind in &order {
            results.push(result(run_embedded(a, kind, game, &make_plan)?));
        }
        if reversed {
            results.reverse();
        }
        rounds.push(results);
    }
    Ok(rounds)
}

/// One run of the embedded server `kind`: start, drive, stop.
fn run_embedded(
    a: &BenchArgs,
    kind: ServerKind,
    game: Option<&GameServerCfg>,
    make_plan: &impl Fn(ServerKind, SocketAddr) -> ClientPlan,
) -> Result<ServerRun, String> {
    let mut spec = ServerSpec::new(
        kind,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        1,
        &a.server_opts,
        &a.proto,
    )?;
    spec.game = game.cloned();
    let server = RunningServer::start(&spec)?;
    let target = server.local_addr;
    let file = a.capture.path_for(&kind.to_string());
    let (plan, outcome) = drive(
        target,
        &a.workload,
        file.as_deref(),
        a.capture.capture_limit,
        Some(&server),
        |to| make_plan(kind, to),
    )?;
    let echo_failures = server.echo_failures.load(Ordering::Relaxed);
    let shards = server.shards;
    let stopped = server.stop();
    let outcome = outcome.map_err(|e| format!("{kind}: {e}"))?;
    stopped?;
    Ok(ServerRun {
        kind,
        shards,
        target,
        plan,
        outcome,
        echo_failures,
    })
}

/// `run --scenario game`, against `serve --scenario game`.
fn run_game(a: RunArgs) -> Result<ExitCode, String> {
    a.workload.validate_game()?;
    let client_cfg = GameClientCfg::new(&a.game_client);
    let (_, p, outcome) = run_external(&a, |target, to| {
        game_plan(target.to_string(), to, &a.workload, &a.proto, &client_cfg)
    })?;
    let result = game::GameResult::new(game::GameRun {
        server: "external".into(),
        shards: None,
        sessions: p.sessions,
        client: &client_cfg,
        server_cfg: None,
        outcome: &outcome,
        server_counters: None,
    });
    output(&[vec![result]], &GAME_REPORT, &a.workload)
}

/// `run`'s clients against `--target` (checked, and `0.0.0.0` read as this host),
/// through the relay and capture if asked: the target, the plan and the outcome.
/// `make_plan` gets the target and the address the clients dial.
fn run_external(
    a: &RunArgs,
    make_plan: impl FnOnce(SocketAddr, SocketAddr) -> ClientPlan,
) -> Result<(SocketAddr, ClientPlan, client::ClientOutcome), String> {
    a.proto.validate()?;
    if a.target.port() == 0 {
        return Err("--target needs a port".into());
    }
    let target = normalize(a.target);
    let (p, outcome) = drive(
        target,
        &a.workload,
        a.capture.capture.as_deref(),
        a.capture.capture_limit,
        None,
        |to| make_plan(target, to),
    )?;
    Ok((target, p, outcome?))
}

/// The text report: the workload line, the table, then each ratio of `metric`.
fn report_text(describe: &str, table: &str, ratios: &[(String, f64)], metric: &str) -> String {
    let mut text = format!("loadgen: {describe}\n\n{table}");
    if !ratios.is_empty() {
        text.push('\n');
        for (name, ratio) in ratios {
            text += &format!("{metric} ratio {name}: {ratio:.2}×\n");
        }
    }
    text
}

/// The JSON report of one round: one result as is, several with their ratios
/// (under `ratios_<metric>`) and the scenario's name, if any.
fn report_value<R: serde::Serialize>(
    results: &[R],
    ratios: &[(String, f64)],
    metric: &str,
    scenario: Option<&str>,
) -> Result<serde_json::Value, String> {
    let encode = |e: serde_json::Error| format!("cannot encode the result: {e}");
    match results {
        [one] => serde_json::to_value(one).map_err(encode),
        many => {
            let mut doc = serde_json::Map::new();
            if let Some(name) = scenario {
                doc.insert("scenario".into(), serde_json::json!(name));
            }
            doc.insert(
                "results".into(),
                serde_json::to_value(many).map_err(encode)?,
            );
            let ratios: serde_json::Map<_, _> = ratios
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                .collect();
            doc.insert(
                format!("ratios_{metric}"),
                serde_json::Value::Object(ratios),
            );
            Ok(serde_json::Value::Object(doc))
        }
    }
}

/// Exit status 3, with the reasons on stderr, when anything in `bad`; else 0.
fn verdict(bad: &[String]) -> ExitCode {
    if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("loadgen: {}", bad.join("; "));
        ExitCode::from(3)
    }
}

/// Prints `text` and writes `json` where `--json` says.
fn emit(text: &str, json: String, w: &Workload) -> Result<(), String> {
    match w.json.as_deref() {
        Some(path) if path.as_os_str() == "-" => {
            eprint!("{text}");
            println!("{json}");
        }
        Some(path) => {
            std::fs::write(path, json + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            print!("{text}");
        }
        None => print!("{text}"),
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

/// Runs the clients of `make_plan(address they dial)` against `target`: through
/// a relay when the workload asks for one, writing the capture `file` when given.
/// The clients' own failure comes back inside, for the caller to report after
/// stopping its server.
fn drive(
    target: SocketAddr,
    w: &Workload,
    file: Option<&std::path::Path>,
    capture_limit: u64,
    server: Option<&RunningServer>,
    make_plan: impl FnOnce(SocketAddr) -> ClientPlan,
) -> Result<(client::ClientPlan, Result<client::ClientOutcome, String>), String> {
    let relay = start_relay(w, target)?;
    let mut p = make_plan(relay.as_ref().map_or(target, |r| r.listen));
    p.capture = capture::Capture::for_run(file, capture_limit)?;
    let outcome = run_clients(&p, server);
    stop_relay(relay)?;
    if let Some(c) = &p.capture {
        c.finish_and_report()?;
    }
    Ok((p, outcome))
}

/// The chaos relay `--relay` asks for, in front of `target`.
fn start_relay(w: &Workload, target: SocketAddr) -> Result<Option<relay::Relay>, String> {
    let Some(spec) = &w.relay else {
        return Ok(None);
    };
    let chaos = relay::Chaos::parse(spec)?;
    let listen = SocketAddr::new(target.ip(), 0);
    let relay = relay::Relay::start(listen, target, chaos)
        .map_err(|e| format!("cannot start the relay: {e}"))?;
    if !w.quiet {
        eprintln!("loadgen: relay {} → {target} ({spec})", relay.listen);
    }
    Ok(Some(relay))
}

fn stop_relay(relay: Option<relay::Relay>) -> Result<(), String> {
    if let Some(relay) = relay {
        let summary = relay.stats.summary();
        relay.stop().map_err(|e| format!("the relay failed: {e}"))?;
        eprintln!("loadgen: relay: {summary}");
    }
    Ok(())
}

fn relay_command(a: args::RelayArgs) -> Result<ExitCode, String> {
    let chaos = relay::Chaos::parse(&a.chaos)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("cannot install a signal handler: {e}"))?;
    }
    let relay = relay::Relay::start(a.listen, normalize(a.target), chaos)
        .map_err(|e| format!("cannot start the relay: {e}"))?;
    println!("listening on {}", relay.listen);
    let _ = std::io::stdout().flush();
    let every = (a.stats_every > 0.0).then(|| Duration::from_secs_f64(a.stats_every));
    let mut next = every.map(|e| Instant::now() + e);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        if let (Some(at), Some(every)) = (next, every)
            && Instant::now() >= at
        {
            eprintln!("loadgen: relay: {}", relay.stats.summary());
            next = Some(at + every);
        }
    }
    stop_relay(Some(relay))?;
    Ok(ExitCode::SUCCESS)
}

/// A target of 0.0.0.0 or :: (as `serve --bind 0.0.0.0:N` prints) means this host.
fn normalize(target: SocketAddr) -> SocketAddr {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, target.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, target.port()))
        }
        _ => target,
    }
}

fn run(a: RunArgs) -> Result<ExitCode, String> {
    if a.scenario == Scenario::Game {
        return run_game(a);
    }
    a.workload.validate()?;
    let (target, p, outcome) = run_external(&a, |target, to| {
        plan(target.to_string(), to, &a.workload, &a.proto)
    })?;
    let result = RunResult::new(
        setup("external".into(), None, target, &p, &a.workload),
        &outcome,
    );
    output(&[vec![result]], &ECHO_REPORT, &a.workload)
}

/// How one kind of result is reported: its workload line, table and ratios, the
/// metric the ratios compare, and what makes a run fail.
struct ReportSpec<R> {
    describe: fn(&[R]) -> String,
    table: fn(&[R]) -> String,
    ratios: fn(&[R]) -> Vec<(String, f64)>,
    /// The metric's name in the text report.
    metric: &'static str,
    /// Its name in the JSON report's keys.
    json_metric: &'static str,
    scenario: Option<&'static str>,
    /// Why a run failed, if it did.
    problems: fn(&R, &Workload) -> Vec<String>,
}

/// The echo report.
const ECHO_REPORT: ReportSpec<RunResult> = ReportSpec {
    describe: report::describe,
    table: report::table,
    ratios: report::ratios,
    metric: "msgs_per_server_cpu_s",
    json_metric: "msgs_per_server_cpu_s",
    scenario: None,
    problems: echo_problems,
};

/// The game report.
const GAME_REPORT: ReportSpec<game::GameResult> = ReportSpec {
    describe: game::describe,
    table: game::table,
    ratios: game::ratios,
    metric: "server_cpu_us_per_session_s",
    json_metric: "server_cpu_per_session_s",
    scenario: Some("game"),
    problems: game_problems,
};

fn echo_problems(r: &RunResult, w: &Workload) -> Vec<String> {
    let mut bad = Vec::new();
    if r.details.errors > 0 {
        bad.push(format!(
            "{}: {} errors (first: {})",
            r.server,
            r.details.errors,
            r.details.first_error.as_deref().unwrap_or("?")
        ));
    }
    if w.channel.is_reliable() && r.messages_lost > 0 {
        bad.push(format!(
            "{}: {} messages lost on a reliable channel",
            r.server, r.messages_lost
        ));
    }
    bad
}

fn game_problems(r: &game::GameResult, _: &Workload) -> Vec<String> {
    let mut bad = Vec::new();
    if r.errors > 0 {
        bad.push(format!(
            "{}: {} errors (first: {})",
            r.server,
            r.errors,
            r.first_error.as_deref().unwrap_or("?")
        ));
    }
    if r.reliable_lost > 0 {
        bad.push(format!(
            "{}: {} messages lost on a reliable channel",
            r.server, r.reliable_lost
        ));
    }
    if r.sessions_closed > 0 {
        bad.push(format!(
            "{}: {} sessions closed",
            r.server, r.sessions_closed
        ));
    }
    bad
}

/// Prints the report (stdout, or stderr with `--json -`) and writes the JSON. One
/// round reads as it always did; several are listed one after another, then each
/// ratio's median over the rounds with its range (the JSON report holds every
/// round and the medians). Exits non-zero when any run of any round failed: echoes
/// that arrived wrong, reliable messages lost, game sessions closed.
fn output<R: serde::Serialize>(
    rounds: &[Vec<R>],
    spec: &ReportSpec<R>,
    w: &Workload,
) -> Result<ExitCode, String> {
    let (metric, json_metric) = (spec.metric, spec.json_metric);
    // Each round's ratios, worked out once for its text, its JSON and the medians.
    let ratios: Vec<_> = rounds.iter().map(|r| (spec.ratios)(r)).collect();
    let round_text = |results: &[R], ratios: &[(String, f64)]| {
        let (describe, table) = ((spec.describe)(results), (spec.table)(results));
        report_text(&describe, &table, ratios, metric)
    };
    let (text, json) = match rounds {
        // A single result keeps its own field order.
        [one] => match one.as_slice() {
            [result] => (round_text(one, &ratios[0]), pretty(result)?),
            _ => (
                round_text(one, &ratios[0]),
                pretty(&report_value(one, &ratios[0], json_metric, spec.scenario)?)?,
            ),
        },
        many => {
            let mut text = String::new();
            let mut docs = Vec::new();
            for (i, (results, ratios)) in many.iter().zip(&ratios).enumerate() {
                let round = round_text(results, ratios);
                text += &format!("round {} of {}\n{round}\n", i + 1, many.len());
                docs.push(report_value(results, ratios, json_metric, spec.scenario)?);
            }
            let mut summary = serde_json::Map::new();
            for (name, median, each) in median_ratios(&ratios) {
                let each_text: Vec<_> = each.iter().map(|v| format!("{v:.2}×")).collect();
                text += &format!(
                    "{metric} ratio {name}: median {median:.2}× over {} rounds ({})\n",
                    each.len(),
                    each_text.join(", ")
                );
                summary.insert(name, serde_json::json!(median));
            }
            let mut doc = serde_json::Map::new();
            if let Some(name) = spec.scenario {
                doc.insert("scenario".into(), serde_json::json!(name));
            }
            doc.insert("rounds".into(), serde_json::Value::Array(docs));
            doc.insert(
                format!("median_ratios_{json_metric}"),
                serde_json::Value::Object(summary),
            );
            (text, pretty(&doc)?)
        }
    };
    emit(&text, json, w)?;
    let bad: Vec<String> = rounds
        .iter()
        .flatten()
        .flat_map(|r| (spec.problems)(r, w))
        .collect();
    Ok(verdict(&bad))
}

fn pretty<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, String> {
    serde_json::to_string_pretty(value).map_err(|e| format!("cannot encode the result: {e}"))
}

/// Each ratio's median over the rounds that measured it, with every round's value
/// in round order.
fn median_ratios(per_round: &[Vec<(String, f64)>]) -> Vec<(String, f64, Vec<f64>)> {
    let mut out: Vec<(String, f64, Vec<f64>)> = Vec::new();
    for (name, value) in per_round.iter().flatten() {
        match out.iter_mut().find(|(n, _, _)| n == name) {
            Some((_, _, each)) => each.push(*value),
            None => out.push((name.clone(), 0.0, vec![*value])),
        }
    }
    for (_, median, each) in &mut out {
        let mut sorted = each.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        *median = if sorted.len() % 2 == 0 {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
    }
    out
}

fn serve(a: ServeArgs) -> Result<ExitCode, String> {
    let mut spec = ServerSpec::new(a.server, a.bind, cores(), &a.server_opts, &a.proto)?;
    if a.scenario == Scenario::Game {
        spec.game = Some(GameServerCfg::new(&a.game_server));
    }
    let game = spec.game.is_some();
    if let Some(addr) = a.metrics_addr {
        // Its own thread and runtime: the exporter answers scrapes whatever the
        // server does.
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        eprintln!("loadgen: metrics on http://{addr}/metrics");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("cannot install a signal handler: {e}"))?;
    }
    let server = RunningServer::start(&spec)?;
    println!("listening on {}", server.local_addr);
    let _ = std::io::stdout().flush();
    eprintln!(
        "loadgen: {} {} server on {} ({} shard{}), app protocol '{}'; stop with Ctrl-C or SIGTERM",
        spec.kind,
        if game { "game" } else { "echo" },
        server.local_addr,
        server.shards,
        if server.shards == 1 { "" } else { "s" },
        spec.app_protocol
    );
    let every = (a.stats_every > 0.0).then(|| Duration::from_secs_f64(a.stats_every));
    let started = Instant::now();
    let mut next = every.map(|e| started + e);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        if let (Some(at), Some(every)) = (next, every)
            && Instant::now() >= at
        {
            if a.stats_json {
                if let Some(sample) = server.sample_json(started.elapsed()) {
                    eprintln!("{sample}");
                }
            } else if let Some(line) = server.summary() {
                eprintln!("loadgen: {line}");
            }
            if game {
                eprintln!("loadgen: {}", server.game.summary());
            }
            next = Some(at + every);
        }
    }
    if a.drain_timeout > 0.0 && server.start_drain() {
        stop.store(false, Ordering::Relaxed);
        let draining = Instant::now();
        let timeout = Duration::from_secs_f64(a.drain_timeout);
        eprintln!(
            "loadgen: draining {} sessions (up to {:.1} s; signal again to stop now)",
            server.sessions_live(),
            timeout.as_secs_f64()
        );
        // Give each shard a turn to take the flag before trusting the count.
        std::thread::sleep(Duration::from_millis(20));
        while server.sessions_live() > 0
            && draining.elapsed() < timeout
            && !stop.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "loadgen: drained in {:.0} ms, {} sessions left",
            draining.elapsed().as_secs_f64() * 1e3,
            server.sessions_live()
        );
    }
    eprintln!("loadgen: stopping");
    let summary = if a.stats_json {
        server.sample_json(started.elapsed()).map(|s| s.to_string())
    } else {
        server.summary().map(|line| format!("loadgen: {line}"))
    };
    let game_summary = game.then(|| server.game.summary());
    let stopping = Instant::now();
    let stopped = server.stop();
    if let Some(line) = summary {
        eprintln!("{line}");
    }
    if let Some(line) = game_summary {
        eprintln!("loadgen: {line}");
    }
    stopped?;
    eprintln!(
        "loadgen: stopped in {:.0} ms",
        stopping.elapsed().as_secs_f64() * 1e3
    );
    Ok(ExitCode::SUCCESS)
}
