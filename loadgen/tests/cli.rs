//! The `loadgen` binary end to end: `bench` against each server kind, `serve` + `run`
//! in two processes, and argument errors. Short runs with few sessions and generous
//! timeouts, so they hold on a loaded 2-core machine.
// A test that waits for a child process reads the clock.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{BIN, fails_with, loadgen, num, serve, sigterm, temp_file, text, wait_exit};

/// The keys of the loadgen contract (architecture.md).
const KEYS: &[&str] = &[
    "server",
    "shards",
    "sessions",
    "duration_s",
    "messages_sent",
    "messages_received",
    "messages_lost",
    "msgs_per_sec",
    "mbytes_per_sec",
    "rtt_us",
    "server_cpu_s",
    "msgs_per_server_cpu_s",
    "client_cpu_s",
    "datagrams_sent",
    "datagrams_received",
    "resends",
    "session_setup_per_sec",
];

/// Flags that keep a run short and robust.
const QUICK: &[&str] = &[
    "--sessions",
    "8",
    "--window",
    "8",
    "--duration",
    "2",
    "--warmup",
    "0.2",
    "--client-threads",
    "1",
    "--connect-timeout",
    "20",
    "--drain",
    "10",
    "--quiet",
];

/// Runs `loadgen <args> --json <json, or - without one> <QUICK>`, which must
/// succeed, and returns its table (stdout; stderr with `--json -`) and its JSON
/// report.
fn quick(args: &[&str], json: Option<&Path>) -> (String, Value) {
    let json_arg = json.map_or("-", |p| p.to_str().unwrap());
    let out = loadgen(&[args, &["--json", json_arg], QUICK].concat());
    assert!(
        out.status.success(),
        "{args:?}: {:?}\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    match json {
        Some(path) => {
            let report = std::fs::read_to_string(path).unwrap();
            (text(&out.stdout), serde_json::from_str(&report).unwrap())
        }
        None => {
            let v = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
            (text(&out.stderr), v)
        }
    }
}

/// Every contract key is there and the values make sense.
fn check_result(v: &Value, server: &str, reliable: bool) {
    for key in KEYS {
        assert!(v.get(key).is_some(), "missing key {key} in {v}");
    }
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["rtt_us"][q].is_number(), "rtt_us.{q} in {v}");
    }
    assert_eq!(v["server"], server);
    assert!(num(v, "messages_received") > 0.0, "{v}");
    assert!(
        num(v, "messages_sent") >= num(v, "messages_received"),
        "{v}"
    );
    if reliable {
        assert_eq!(num(v, "messages_lost"), 0.0, "{v}");
    }
    assert!(num(v, "msgs_per_sec") > 0.0, "{v}");
    assert!(num(v, "duration_s") >= 1.9, "{v}");
    let rtt = &v["rtt_us"];
    assert!(num(rtt, "p50") > 0.0, "{v}");
    assert!(num(rtt, "p50") <= num(rtt, "p99"), "{v}");
    assert!(num(rtt, "p99") <= num(rtt, "max"), "{v}");
    assert!(num(v, "datagrams_sent") > 0.0, "{v}");
    assert!(num(v, "datagrams_received") > 0.0, "{v}");
    assert!(num(v, "client_cpu_s") > 0.0, "{v}");
    assert!(num(v, "session_setup_per_sec") > 0.0, "{v}");
    assert_eq!(v["details"]["errors"], 0, "{v}");
}

fn bench(server: &str) {
    let json = temp_file(&format!("bench-{server}.json"));
    let (stdout, v) = quick(&["bench", "--server", server], Some(&json));
    // The table goes to stdout next to the JSON file.
    assert!(stdout.contains("msgs_per_server_cpu_s"), "{stdout}");
    check_result(&v, server, true);
    assert_eq!(v["shards"], 1);
    assert_eq!(v["sessions"], 8);
    assert!(num(&v, "server_cpu_s") > 0.0, "{v}");
    assert!(num(&v, "msgs_per_server_cpu_s") > 0.0, "{v}");
}

#[test]
fn bench_soe_uring() {
    bench("soe-uring");
}

#[test]
fn bench_tokio_adapter() {
    bench("tokio");
}

#[test]
fn bench_reference_peer() {
    bench("peer");
}

#[test]
fn json_dash_puts_only_json_on_stdout() {
    let args = [
        "bench",
        "--server",
        "soe-uring",
        "--channel",
        "reliable:3",
        "--size",
        "16-700",
    ];
    let (stderr, v) = quick(&args, None);
    check_result(&v, "soe-uring", true);
    assert_eq!(v["details"]["channel"], "reliable:3");
    // The table went to stderr.
    assert!(stderr.contains("messages_received"));
}

#[test]
fn rounds_alternate_the_servers_and_report_medians() {
    let json = temp_file("bench-rounds.json");
    let args = ["bench", "--server", "soe-uring,peer", "--rounds", "3"];
    let (stdout, v) = quick(&args, Some(&json));
    for round in ["round 1 of 3", "round 2 of 3", "round 3 of 3"] {
        assert!(stdout.contains(round), "{stdout}");
    }
    let line = stdout
        .lines()
        .find(|l| l.contains("ratio soe-uring/peer: median"))
        .unwrap_or_else(|| panic!("no median line: {stdout}"));
    assert!(
        line.ends_with(')') && line.matches('×').count() == 4,
        "{line}"
    );
    let rounds = v["rounds"].as_array().expect("one document per round");
    assert_eq!(rounds.len(), 3);
    let mut each = Vec::new();
    for round in rounds {
        // Listed in the order asked for, whichever ran first.
        let results = round["results"].as_array().unwrap();
        check_result(&results[0], "soe-uring", true);
        check_result(&results[1], "peer", true);
        each.push(num(
            &round["ratios_msgs_per_server_cpu_s"],
            "soe-uring/peer",
        ));
    }
    each.sort_by(f64::total_cmp);
    let median = num(&v["median_ratios_msgs_per_server_cpu_s"], "soe-uring/peer");
    assert_eq!(median, each[1], "{v}");
    // One capture file per server cannot hold several rounds.
    fails_with(
        &["bench", "--rounds", "2", "--capture", "x.pcap"],
        "--capture",
    );
    fails_with(&["bench", "--rounds", "0"], "--rounds");
}

/// Starts `loadgen serve` and reads the address it prints.
#[test]
fn serve_and_run_in_two_processes_then_sigterm() {
    let (mut server, addr) = serve(&[]);
    let json = temp_file("run.json");
    let (_, v) = quick(
        &["run", "--target", addr.as_str(), "--churn", "20"],
        Some(&json),
    );
    check_result(&v, "external", true);
    // An external server's CPU is unknown.
    assert!(v["server_cpu_s"].is_null(), "{v}");

    // Unreliable, open loop: losses are allowed, the keys are the same.
    let mut args = vec![
        "run",
        "--target",
        addr.as_str(),
        "--channel",
        "unreliable",
        "--json",
        "-",
    ];
    args.extend([
        "--sessions",
        "4",
        "--rate",
        "200",
        "--duration",
        "2",
        "--warmup",
        "0.2",
        "--client-threads",
        "1",
        "--connect-timeout",
        "20",
        "--quiet",
    ]);
    let out = loadgen(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    check_result(&v, "external", false);
    assert_eq!(v["details"]["rate_per_session"], 200.0);

    sigterm(&server);
    let status = wait_exit(&mut server, Duration::from_secs(20));
    assert!(status.success(), "serve exited with {status:?}");
}

/// The profiles whose handshake names no application protocol (the 14-byte
/// request) work end to end: eq with EQ's compression pass, udp-library.
#[test]
fn serve_and_run_with_the_eq_and_udp_library_profiles() {
    // The server names its passes; the client runs what the response names.
    for (profile, passes) in [
        ("eq", "none"),
        ("udp-library", "none"),
        ("eq", "xor"),
        ("udp-library", "xor-buffer,xor"),
    ] {
        let (mut server, addr) = serve(&["--profile", profile, "--passes", passes]);
        let args = [
            "run",
            "--target",
            addr.as_str(),
            "--profile",
            profile,
            "--size",
            "16-1500",
        ];
        let (_, v) = quick(&args, None);
        check_result(&v, "external", true);
        sigterm(&server);
        let status = wait_exit(&mut server, Duration::from_secs(20));
        assert!(status.success(), "serve exited with {status:?}");
    }
}

#[test]
fn argument_errors_are_clear() {
    fails_with(&["bench", "--channel", "fast"], "reliable:K");
    fails_with(&["bench", "--channel", "reliable:4"], "--channel");
    fails_with(
        &["bench", "--window", "4", "--rate", "10"],
        "cannot be used with",
    );
    fails_with(&["bench", "--size", "4"], "at least 16 bytes");
    fails_with(&["bench", "--rc4-key", "xyz"], "--rc4-key");
    fails_with(&["run"], "--target");
    fails_with(
        &["serve", "--bind", "127.0.0.1:0", "--shards", "0"],
        "--shards",
    );
    fails_with(&["bench", "--passes", "rot13"], "unknown pass");
    fails_with(&["bench", "--passes", "xor"], "no way to name pass 0");
    fails_with(
        &["bench", "--profile", "eq", "--passes", "none,xor-buffer"],
        "no code for xor-buffer",
    );
}

#[test]
fn unreachable_target_is_a_one_line_error() {
    // A loopback port nobody listens on.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let out = loadgen(&[
        "run",
        "--target",
        &target,
        "--sessions",
        "4",
        "--connect-timeout",
        "1",
        "--quiet",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("0 of 4 sessions opened within 1 s"),
        "{stderr}"
    );
    assert!(stderr.contains(&target), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty());
}

/// SIGTERM drains: the sessions of a run in progress are served to its end
/// (nothing lost, no errors), a run that starts meanwhile is refused at once, and
/// the server exits once the first run's sessions are gone.
#[test]
fn sigterm_drains_before_stopping() {
    let (mut server, addr) = serve(&["--drain-timeout", "30"]);
    let json = temp_file("drain.json");
    let mut args = vec![
        "run",
        "--target",
        addr.as_str(),
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(QUICK);
    let pos = args.iter().position(|a| *a == "--duration").unwrap();
    args[pos + 1] = "4";
    let running = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    sigterm(&server);
    std::thread::sleep(Duration::from_millis(200));
    // A newcomer is refused, and says so.
    let late = loadgen(&[
        "run",
        "--target",
        addr.as_str(),
        "--sessions",
        "1",
        "--duration",
        "1",
        "--connect-timeout",
        "5",
        "--quiet",
    ]);
    assert!(!late.status.success());
    assert!(
        text(&late.stderr).contains("ConnectionRefused"),
        "{}",
        text(&late.stderr)
    );
    let out = running.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    check_result(&v, "external", true);
    let status = wait_exit(&mut server, Duration::from_secs(20));
    assert!(status.success(), "serve exited with {status:?}");
}
