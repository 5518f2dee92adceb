//! `loadgen run --capture` end to end: a `loadgen serve` child, a short run that
//! writes a pcap, then `soe-dump --json` (its command-line entry point, in this
//! process) on the file: every session's handshake is there, every message the
//! clients sent comes back decoded with its length, and nothing is malformed or
//! fails its CRC. With `tcpdump` installed, it must read the file too.
// A test that waits for a child process reads the clock.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{BIN, serve, sigterm, temp_file, wait_exit};

const KEY: &str = "17bd086b1b94f02ff0ec53d763589b5f";

/// Runs 2 sessions for a moment against a fresh server (both with `proto`), with
/// messages of 16 to 1500 bytes (so some are fragmented), and returns the decoded
/// capture as JSON values.
fn capture_and_decode(name: &str, proto: &[&str], dump_args: &[&str]) -> Vec<Value> {
    let run = [
        "--rate",
        "250",
        "--duration",
        "0.6",
        "--size",
        "16-1500",
        "--drain",
        "10",
    ];
    let (file, stderr) = captured_run(name, proto, &[&run, proto].concat());
    assert!(stderr.contains("loadgen: capture: "), "{stderr}");

    tcpdump_reads(&file);

    let events = decode(&file, dump_args);
    std::fs::remove_file(&file).ok();
    events
}

/// Starts `loadgen serve` with `server_args`, runs 2 sessions against it for a
/// moment with `loadgen run --capture` (plus `run_args`), stops the server and
/// returns the capture file and the run's stderr.
fn captured_run(name: &str, server_args: &[&str], run_args: &[&str]) -> (PathBuf, String) {
    let (mut server, addr) = serve(server_args);
    let file = temp_file(name);
    let out = Command::new(BIN)
        .args(["run", "--target", &addr, "--capture"])
        .arg(&file)
        .args([
            "--sessions",
            "2",
            "--client-threads",
            "1",
            "--warmup",
            "0.1",
            "--connect-timeout",
            "20",
            "--quiet",
        ])
        .args(run_args)
        .stdin(Stdio::null())
        .output()
        .expect("loadgen runs");
    sigterm(&server);
    wait_exit(&mut server, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "run failed: {stderr}");
    (file, stderr)
}

/// With tcpdump installed, `tcpdump -r` must read the whole file.
fn tcpdump_reads(file: &PathBuf) {
    let out = match Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(_) => {
            eprintln!("note: tcpdump is not installed; skipping the tcpdump -r check");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tcpdump -r failed: {stderr}");
    assert!(stderr.contains("link-type RAW"), "{stderr}");
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(lines > 100, "tcpdump printed {lines} packets");
}

/// Checks the decoded capture; returns the summary events.
fn check(events: &[Value], decrypted: bool) -> Vec<Value> {
    let of = |kind: &'static str| events.iter().filter(move |e| e["event"] == kind);
    let bad: Vec<_> = of("crc_mismatch").chain(of("malformed")).collect();
    assert!(bad.is_empty(), "{bad:?}");

    let summaries: Vec<Value> = of("summary").cloned().collect();
    assert_eq!(summaries.len(), 2, "one summary per session");
    for s in &summaries {
        assert_eq!(s["handshake"], true, "{s}");
        assert_eq!(s["protocol"], "loadgen", "{s}");
        assert_eq!(s["incomplete"], Value::Array(Vec::new()), "{s}");
    }
    let handshakes: Vec<_> = of("packet")
        .filter(|p| p["op"] == "SessionRequest" || p["op"] == "SessionResponse")
        .map(|p| (p["session"].as_u64().unwrap(), p["op"].as_str().unwrap()))
        .collect();
    for session in [1, 2] {
        assert!(
            handshakes.contains(&(session, "SessionRequest")),
            "{handshakes:?}"
        );
        assert!(
            handshakes.contains(&(session, "SessionResponse")),
            "{handshakes:?}"
        );
    }

    // Every message a client sent is echoed: per session, the lengths of the
    // server's messages are the client's, in the same order.
    let mut lens: BTreeMap<(u64, String), Vec<u64>> = BTreeMap::new();
    for m in of("message") {
        assert_eq!(m["channel"], "reliable:0", "{m}");
        assert_eq!(m["decrypted"], decrypted, "{m}");
        // loadgen's header starts with A5: RC4 data was decrypted right.
        assert!(m["hex"].as_str().unwrap().starts_with("a5"), "{m}");
        lens.entry((
            m["session"].as_u64().unwrap(),
            m["dir"].as_str().unwrap().into(),
        ))
        .or_default()
        .push(m["len"].as_u64().unwrap());
    }
    let mut total = 0;
    for session in [1, 2] {
        let sent = &lens[&(session, "c2s".to_string())];
        let echoed = &lens[&(session, "s2c".to_string())];
        assert_eq!(sent, echoed, "session {session}");
        assert!(sent.iter().all(|&n| (16..=1500).contains(&n)));
        total += sent.len();
    }
    assert!(total >= 150, "only {total} messages");
    let fragmented: u64 = summaries
        .iter()
        .map(|s| s["c2s"]["fragmented_messages"].as_u64().unwrap())
        .sum();
    assert!(fragmented > 0, "no message needed fragments");

    let capture = events.last().unwrap();
    assert_eq!(capture["event"], "capture");
    assert_eq!(capture["sessions"], 2);
    assert_eq!(capture["bad_udp_checksums"], 0);
    assert_eq!(capture["bad_ip_checksums"], 0);
    assert_eq!(capture["stopped"], Value::Null);
    summaries
}

#[test]
fn plain_sessions_are_decoded() {
    let events = capture_and_decode("plain.pcap", &[], &[]);
    check(&events, false);
}

#[test]
fn compressed_encrypted_sessions_are_decoded() {
    let events = capture_and_decode(
        "rc4.pcap",
        &["--compression", "--rc4-key", KEY],
        &["--rc4-key", KEY],
    );
    let summaries = check(&events, true);
    assert!(summaries.iter().all(|s| s["compression"] == true));
}

#[test]
fn compressed_varint_sessions_are_inflated() {
    let events = capture_and_decode(
        "zlib.pcap",
        &["--compression", "--profile", "soe-uring"],
        &["--profile", "soe-uring"],
    );
    let summaries = check(&events, false);
    let compressed: u64 = summaries
        .iter()
        .map(|s| {
            s["c2s"]["compressed"].as_u64().unwrap() + s["s2c"]["compressed"].as_u64().unwrap()
        })
        .sum();
    assert!(compressed > 0, "no compressed datagram: {summaries:?}");
}

#[test]
fn capture_needs_a_file_and_counts_its_limit() {
    let out = Command::new(BIN)
        .args(["run", "--target", "127.0.0.1:9", "--capture-limit", "5"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--capture"));

    let (mut server, addr) = serve(&[]);
    let file = temp_file("limit.pcap");
    let out = Command::new(BIN)
        .args(["run", "--target", &addr, "--capture"])
        .arg(&file)
        .args([
            "--capture-limit",
            "10",
            "--sessions",
            "1",
            "--client-threads",
            "1",
            "--rate",
            "100",
            "--duration",
            "0.2",
            "--warmup",
            "0",
            "--quiet",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    sigterm(&server);
    wait_exit(&mut server, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("capture: 10 datagrams"), "{stderr}");
    assert!(
        stderr.contains("more not written (--capture-limit)"),
        "{stderr}"
    );
    let mut json = Vec::new();
    soe_dump::run(
        [
            "soe-dump",
            "--json",
            "--summary",
            &file.display().to_string(),
        ],
        &mut json,
    )
    .unwrap();
    std::fs::remove_file(&file).ok();
    let last: Value =
        serde_json::from_str(String::from_utf8(json).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(last["frames"], 10);
}

/// Decodes `file` with soe-dump (`dump_args` first) into JSON values.
fn decode(file: &Path, dump_args: &[&str]) -> Vec<Value> {
    let mut argv = vec!["soe-dump".to_string(), "--json".to_string()];
    argv.extend(dump_args.iter().map(|s| s.to_string()));
    argv.push(file.display().to_string());
    let mut json = Vec::new();
    soe_dump::run(argv, &mut json).expect("soe-dump decodes the capture");
    String::from_utf8(json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `bench --capture FILE` with two servers writes one file per server, named
/// after it, each holding every session with nothing malformed.
#[test]
fn bench_writes_one_capture_per_server() {
    let file = temp_file("bench.pcap");
    let out = Command::new(BIN)
        .args(["bench", "--server", "soe-uring,peer", "--capture"])
        .arg(&file)
        .args([
            "--sessions",
            "2",
            "--window",
            "2",
            "--client-threads",
            "1",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--size",
            "16-1500",
            "--quiet",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("loadgen runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    assert!(!file.exists(), "the bare name is not written");
    for server in ["soe-uring", "peer"] {
        let path = file.with_file_name(format!("bench-{server}.pcap"));
        let events = decode(&path, &[]);
        std::fs::remove_file(&path).ok();
        let bad: Vec<_> = events
            .iter()
            .filter(|e| e["event"] == "malformed" || e["event"] == "crc_mismatch")
            .collect();
        assert!(bad.is_empty(), "{server}: {bad:?}");
        let capture = events.last().unwrap();
        assert_eq!(capture["event"], "capture", "{server}");
        assert_eq!(capture["sessions"], 2, "{server}");
    }
}

/// A udp-library session whose server runs XorBuffer and Xor passes
/// (`serve --passes`) decodes with `soe-dump --profile udp-library`: every
/// message echoed, nothing malformed.
#[test]
fn sessions_with_encryption_passes_are_decoded() {
    let proto = ["--profile", "udp-library"];
    let run = [
        "--window",
        "2",
        "--duration",
        "0.5",
        "--size",
        "16-400",
        "--profile",
        "udp-library",
    ];
    let (file, _) = captured_run(
        "passes.pcap",
        &[&proto[..], &["--passes", "xor-buffer,xor"]].concat(),
        &run,
    );
    let events = decode(&file, &proto);
    std::fs::remove_file(&file).ok();
    let bad: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "malformed" || e["event"] == "crc_mismatch")
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    let responses: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "packet" && e["op"] == "SessionResponse")
        .collect();
    assert_eq!(responses.len(), 2, "{responses:?}");
    let messages = events.iter().filter(|e| e["event"] == "message").count();
    assert!(messages >= 20, "only {messages} messages decoded");
}
