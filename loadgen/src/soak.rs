//! `loadgen soak`: a long run against a `loadgen serve` child process, watched from
//! outside.
//!
//! The server runs in its own process so that its RSS and CPU are its own. It
//! prints a JSON sample of its counters and each shard's health every
//! `--sample-every` seconds (`serve --stats-json`); the soak adds the process's RSS
//! as the kernel reports it, prints one line per sample, and at the end stops the
//! server with SIGTERM and judges the run:
//!
//! * no shard lost: every sample has every shard answering and alive;
//! * no session closed and no message lost: the clients saw no error and every
//!   reliable message came back;
//! * RSS plateau: the largest RSS of the last third of the run is at most 10 %
//!   (plus 8 MiB) above the largest of the middle third;
//! * a prompt stop: the server exits 0 within 5 s of SIGTERM.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::args::{ProtoOpts, ServerOpts, SoakArgs};
use crate::client::run_clients;
use crate::report::RunResult;
use crate::server::rss_of;
use crate::{plan, setup};

/// What a samples line and the summary are made of.
#[derive(Debug, Clone)]
struct Sample {
    t_s: f64,
    rss: u64,
    server: Value,
}

/// The `serve` flags that reproduce these settings.
fn serve_flags(opts: &ServerOpts, proto: &ProtoOpts, sample_every: f64) -> Vec<String> {
    let mut args = vec![
        "serve".to_string(),
        "--bind".into(),
        "127.0.0.1:0".into(),
        "--stats-every".into(),
        sample_every.to_string(),
        "--stats-json".into(),
        "--app-protocol".into(),
        proto.app_protocol.clone(),
        "--profile".into(),
        proto.profile.clone(),
    ];
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            args.push(format!("--{name}"));
            args.push(v);
        }
    };
    flag("shards", opts.shards.map(|n| n.to_string()));
    flag("crc-length", opts.crc_length.map(|n| n.to_string()));
    flag("max-sessions", opts.max_sessions.map(|n| n.to_string()));
    flag("tick-us", opts.tick_us.map(|n| n.to_string()));
    flag(
        "rc4-key",
        proto
            .rc4_key
            .as_ref()
            .map(|k| k.0.iter().map(|b| format!("{b:02x}")).collect()),
    );
    if proto.compression {
        args.push("--compression".into());
    }
    if proto.no_congestion_control {
        args.push("--no-congestion-control".into());
    }
    if opts.no_pin {
        args.push("--no-pin".into());
    }
    args
}

/// Reads the child's stderr: JSON samples go to `samples`, other lines are echoed.
fn watch(child: &mut Child, samples: Arc<Mutex<Vec<Sample>>>) -> std::thread::JoinHandle<()> {
    let stderr = child.stderr.take().expect("piped stderr");
    let pid = child.id().to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            match serde_json::from_str::<Value>(&line) {
                Ok(server) if server.is_object() => {
                    let sample = Sample {
                        t_s: server["t_s"].as_f64().unwrap_or_default(),
                        rss: rss_of(&pid),
                        server,
                    };
                    print_sample(&sample);
                    samples.lock().expect("samples").push(sample);
                }
                _ => eprintln!("server: {line}"),
            }
        }
    })
}

fn print_sample(s: &Sample) {
    let v = &s.server;
    let alive = v["health"]
        .as_array()
        .map_or(0, |h| h.iter().filter(|h| h["alive"] == true).count());
    eprintln!(
        "soak: t {:>6.0} s | rss {:>7.1} MB | cpu {:>7.1} s | sessions live {:>5} closed {:>5} | shards answered {}/{} alive {} | resends {:>8} | socket drops {:>7} | timers {:>6}",
        s.t_s,
        s.rss as f64 / 1e6,
        v["cpu_s"].as_f64().unwrap_or_default(),
        v["sessions_live"],
        v["sessions_closed"],
        v["shards_answered"],
        v["shards"],
        alive,
        v["resends"],
        v["socket_drops"],
        v["timer_entries"],
    );
}

/// The largest RSS among samples taken within `[from, to)` seconds.
fn max_rss(samples: &[Sample], from: f64, to: f64) -> u64 {
    samples
        .iter()
        .filter(|s| s.t_s >= from && s.t_s < to)
        .map(|s| s.rss)
        .max()
        .unwrap_or(0)
}

fn stop(child: &mut Child, limit: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    // The PID is our own child's.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return (status.code(), started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return (None, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the soak; exits 0 when it passed, 3 when it failed.
pub fn soak(a: SoakArgs) -> Result<ExitCode, String> {
    a.workload.validate()?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find loadgen: {e}"))?;
    let mut child = Command::new(exe)
        .args(serve_flags(&a.server_opts, &a.proto, a.sample_every))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start loadgen serve: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .map_err(|e| format!("loadgen serve: {e}"))?;
    let target: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("loadgen serve did not start: {line:?}"))?;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let watcher = watch(&mut child, samples.clone());
    let rss_start = rss_of(&child.id().to_string());
    eprintln!(
        "soak: server pid {} on {target}, rss {:.1} MB; {} s of load",
        child.id(),
        rss_start as f64 / 1e6,
        a.workload.duration
    );

    let p = plan("soak".into(), target, &a.workload, &a.proto);
    let outcome = run_clients(&p, None);
    // One more sample after the load, then stop.
    std::thread::sleep(Duration::from_secs_f64(a.sample_every.min(5.0) + 0.5));
    let (code, stop_time) = stop(&mut child, Duration::from_secs(10));
    let _ = watcher.join();
    let outcome = outcome?;
    let result = RunResult::new(
        setup("soak".into(), None, target, &p, &a.workload),
        &outcome,
    );
    let samples = samples.lock().expect("samples").clone();

    let total = a.workload.duration;
    let rss_middle = max_rss(&samples, total / 3.0, 2.0 * total / 3.0);
    let rss_last = max_rss(&samples, 2.0 * total / 3.0, f64::MAX);
    let shards_lost: Vec<f64> = samples
        .iter()
        .filter(|s| {
            let v = &s.server;
            v["shards_answered"] != v["shards"]
                || v["health"]
                    .as_array()
                    .is_none_or(|h| h.iter().any(|h| h["alive"] != true))
        })
        .map(|s| s.t_s)
        .collect();
    let checks = [
        (
            "no shard lost",
            shards_lost.is_empty() && !samples.is_empty(),
            format!("samples with a shard not answering or not alive: {shards_lost:?}"),
        ),
        (
            "no session closed",
            result.details.errors == 0,
            format!(
                "{} client errors (first: {})",
                result.details.errors,
                result.details.first_error.as_deref().unwrap_or("-")
            ),
        ),
        (
            "no message lost",
            result.messages_lost == 0 || !a.workload.channel.is_reliable(),
            format!("{} messages lost", result.messages_lost),
        ),
        (
            "RSS plateau",
            rss_middle > 0 && rss_last as f64 <= rss_middle as f64 * 1.10 + 8e6,
            format!(
                "max RSS middle third {:.1} MB, last third {:.1} MB",
                rss_middle as f64 / 1e6,
                rss_last as f64 / 1e6
            ),
        ),
        (
            "prompt stop",
            code == Some(0) && stop_time < Duration::from_secs(5),
            format!(
                "exit code {code:?} {:.0} ms after SIGTERM",
                stop_time.as_secs_f64() * 1e3
            ),
        ),
    ];
    let passed = checks.iter().all(|(_, ok, _)| *ok);
    let mut report = String::new();
    report += &format!(
        "\nsoak: {} sessions, {:.0} s, {} messages sent, {} received, p99 RTT {:.0} µs\n",
        result.sessions,
        result.duration_s,
        result.messages_sent,
        result.messages_received,
        result.rtt_us.p99
    );
    for (name, ok, detail) in &checks {
        report += &format!(
            "soak: {} {name}: {detail}\n",
            if *ok { "PASS" } else { "FAIL" }
        );
    }
    report += &format!("soak: {}\n", if passed { "PASSED" } else { "FAILED" });
    print!("{report}");
    let _ = std::io::stdout().flush();
    if let Some(path) = a.workload.json.as_deref() {
        let json = json!({
            "result": result,
            "rss_start_bytes": rss_start,
            "samples": samples
                .iter()
                .map(|s| json!({"t_s": s.t_s, "rss_bytes": s.rss, "server": s.server}))
                .collect::<Vec<_>>(),
            "stop_ms": stop_time.as_secs_f64() * 1e3,
            "exit_code": code,
            "checks": checks
                .iter()
                .map(|(name, ok, detail)| json!({"check": name, "pass": ok, "detail": detail}))
                .collect::<Vec<_>>(),
            "passed": passed,
        });
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
        )
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
