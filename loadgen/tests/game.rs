//! `--scenario game` end to end: `bench` with soe-uring and the reference server side
//! by side, `serve` + `run` in two processes, and its argument errors. Short runs
//! with few sessions and generous timeouts, so they hold on a loaded 2-core machine.
// A test that waits for a child process reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use serde_json::Value;

mod common;
use common::{fails_with, loadgen, num, serve, sigterm, text, wait_exit};

/// 8 sessions for 2 s, zone-ins about every second so a short run has some.
const QUICK: &[&str] = &[
    "--scenario",
    "game",
    "--sessions",
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

/// The numbers of one server's game run make sense and nothing reliable was lost.
/// `input_hz`, `tick_hz`: what the run asked for.
fn check_game(v: &Value, server: &str, input_hz: f64, tick_hz: f64) {
    assert_eq!(v["scenario"], "game", "{v}");
    assert_eq!(v["server"], server, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["sessions_closed"], 0, "{v}");
    assert_eq!(num(v, "reliable_lost"), 0.0, "{v}");
    assert_eq!(num(v, "zone_ins_lost"), 0.0, "{v}");
    let sessions = num(v, "sessions");
    let secs = num(v, "duration_s");
    assert!(secs >= 1.9, "{v}");
    // Inputs: about rate × sessions × window, one datagram or a little more each
    // (acks of the zone-in fragments ride the same way).
    let inputs = num(v, "c2s_messages");
    let planned = input_hz * sessions * secs;
    assert!(
        inputs > planned * 0.5 && inputs < planned * 1.5,
        "{inputs} inputs, planned {planned}: {v}"
    );
    assert!(num(v, "inputs_sent") >= inputs, "{v}");
    let c2s = num(v, "c2s_datagrams_per_msg");
    assert!((0.5..10.0).contains(&c2s), "{v}");
    // States: one per tick per session; on loopback with unreliable states a loss
    // is possible but not a large one.
    let states = num(v, "states_received");
    let planned = tick_hz * sessions * secs;
    assert!(
        states > planned * 0.5 && states < planned * 1.5,
        "{states} states, planned {planned}: {v}"
    );
    assert!(num(v, "states_expected") >= states, "{v}");
    assert!(num(v, "states_lost") <= planned * 0.05, "{v}");
    // Zone-ins: some were sent and all arrived.
    assert!(num(v, "zone_ins_sent") > 0.0, "{v}");
    assert_eq!(v["zone_ins_sent"], v["zone_ins_received"], "{v}");
    assert!(num(v, "zone_in_mbytes") > 0.0, "{v}");
    // Server → client: a state is one datagram, a zone-in many.
    let s2c = num(v, "s2c_datagrams_per_msg");
    assert!(s2c >= 0.9, "{v}");
    assert!(num(v, "s2c_messages") >= states * 0.5, "{v}");
    for key in ["state_age_us", "input_to_state_us", "zone_in_us"] {
        let p = &v[key];
        assert!(num(p, "p50") > 0.0, "{key}: {v}");
        assert!(num(p, "p50") <= num(p, "p99"), "{key}: {v}");
        assert!(num(p, "p99") <= num(p, "max"), "{key}: {v}");
    }
    // A state is a fresh snapshot: on loopback it is far younger than a second.
    assert!(num(&v["state_age_us"], "p50") < 1e6, "{v}");
    // Input → state waits for the next tick: at most about one period at p50.
    assert!(
        num(&v["input_to_state_us"], "p50") < 2e6 / tick_hz + 50_000.0,
        "{v}"
    );
    assert!(num(v, "client_cpu_s") > 0.0, "{v}");
}

#[test]
fn bench_game_soe_uring_and_peer_side_by_side() {
    let mut args = vec![
        "bench",
        "--server",
        "soe-uring,peer",
        "--zone-in-every",
        "1",
        "--zone-in-size",
        "20000-60000",
        "--json",
        "-",
    ];
    args.extend_from_slice(QUICK);
    let out = loadgen(&args);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "{:?}\n{}\n{stderr}",
        out.status,
        text(&out.stdout)
    );
    // The table went to stderr, the JSON to stdout.
    assert!(stderr.contains("server_cpu_us_per_session_s"), "{stderr}");
    assert!(stderr.contains("ratio peer/soe-uring"), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(v["scenario"], "game");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{v}");
    for (r, server) in results.iter().zip(["soe-uring", "peer"]) {
        check_game(r, server, 30.0, 20.0);
        // Embedded: the server's CPU and tick counters are known.
        assert!(num(r, "server_cpu_s") > 0.0, "{r}");
        assert!(num(r, "server_cpu_us_per_session_s") > 0.0, "{r}");
        assert_eq!(r["tick_rate_hz"], 20.0, "{r}");
        assert_eq!(r["state_size"], 200, "{r}");
        let c = &r["server_counters"];
        let ticks = num(c, "ticks");
        assert!((20.0..=60.0).contains(&ticks), "{r}");
        assert_eq!(num(c, "bad_inputs"), 0.0, "{r}");
        assert!(
            num(c, "states_sent") >= num(r, "states_received") * 0.8,
            "{r}"
        );
    }
    assert!(
        v["ratios_server_cpu_per_session_s"]["peer/soe-uring"].is_number(),
        "{v}"
    );
}

/// `serve --scenario game` in one process, `run --scenario game` in another, with
/// reliable inputs and states and a faster tick: the states carry the server's
/// counts, so the client still knows what should have arrived.
#[test]
fn serve_and_run_game_in_two_processes() {
    let (mut server, addr) = serve(&[
        "--scenario",
        "game",
        "--tick-rate",
        "30",
        "--state-size",
        "120",
        "--state-channel",
        "reliable:1",
        "--zone-in-every",
        "1",
        "--zone-in-size",
        "30000",
    ]);
    let mut args = vec![
        "run",
        "--target",
        addr.as_str(),
        "--input-rate",
        "20",
        "--input-size",
        "48",
        "--input-channel",
        "reliable",
        "--json",
        "-",
    ];
    args.extend_from_slice(QUICK);
    let out = loadgen(&args);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    check_game(&v, "external", 20.0, 30.0);
    // Everything was reliable: nothing lost anywhere.
    assert_eq!(num(&v, "unreliable_lost"), 0.0, "{v}");
    assert_eq!(num(&v, "states_lost"), 0.0, "{v}");
    assert_eq!(num(&v, "inputs_lost"), 0.0, "{v}");
    assert_eq!(v["input_channel"], "reliable:0");
    // An external server's CPU and settings are unknown.
    assert!(v["server_cpu_s"].is_null(), "{v}");
    assert!(v["tick_rate_hz"].is_null(), "{v}");
    sigterm(&server);
    let status = wait_exit(&mut server, Duration::from_secs(20));
    assert!(status.success(), "serve exited with {status:?}");
}

/// Through the chaos relay at 10 % loss each way: unreliable inputs and states are
/// lost and counted, reliable zone-ins all arrive.
#[test]
fn bench_game_through_a_lossy_relay_counts_unreliable_losses_only() {
    let mut args = vec![
        "bench",
        "--server",
        "soe-uring",
        "--zone-in-every",
        "1",
        "--zone-in-size",
        "20000-40000",
        "--relay",
        "loss=0.1,seed=3",
        "--json",
        "-",
    ];
    args.extend_from_slice(QUICK);
    let out = loadgen(&args);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(num(&v, "reliable_lost"), 0.0, "{v}");
    assert!(num(&v, "zone_ins_sent") > 0.0, "{v}");
    assert_eq!(v["zone_ins_sent"], v["zone_ins_received"], "{v}");
    assert!(num(&v, "states_lost") > 0.0, "{v}");
    assert!(num(&v, "inputs_lost") > 0.0, "{v}");
    assert_eq!(
        num(&v, "unreliable_lost"),
        num(&v, "states_lost") + num(&v, "inputs_lost"),
        "{v}"
    );
    // About a tenth of each; far from all.
    assert!(
        num(&v, "states_lost") < num(&v, "states_expected") * 0.3,
        "{v}"
    );
    assert!(num(&v, "inputs_lost") < num(&v, "inputs_sent") * 0.3, "{v}");
}

#[test]
fn game_argument_errors_are_clear() {
    fails_with(
        &["bench", "--scenario", "game", "--rate", "10"],
        "do not apply to --scenario game",
    );
    fails_with(
        &[
            "bench",
            "--scenario",
            "game",
            "--zone-in-channel",
            "unreliable",
        ],
        "zone-ins must go on a reliable channel",
    );
    fails_with(
        &["bench", "--scenario", "game", "--input-size", "8"],
        "16..=400",
    );
    fails_with(
        &["bench", "--scenario", "game", "--tick-rate", "0"],
        "tick rate",
    );
    fails_with(
        &["bench", "--scenario", "game", "--zone-in-size", "2000000"],
        "at most",
    );
    fails_with(&["bench", "--scenario", "chess"], "invalid value");
}
