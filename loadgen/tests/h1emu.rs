//! Interop with a third-party SOE codec: an echo client written in Node.js on the
//! npm package `h1emu-core` 1.3.2 (the H1Z1 emulator's codec, `tests/h1emu/`)
//! against `loadgen serve`. The client reads every datagram we send with
//! h1emu-core's own `parse()`, which takes one length byte in multi-packets, and
//! fails on any it cannot read. Skipped, with a message, where `node` is absent.
#![allow(clippy::disallowed_methods)] // a test that waits for child processes

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{serve, sigterm, wait_exit};

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/h1emu")
}

/// `node`, with the client's dependencies installed (`npm ci`, once per run), or
/// `None` where Node.js is not installed.
fn node() -> Option<&'static str> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        if Command::new("node").arg("--version").output().is_err() {
            eprintln!(
                "SKIPPED: `node` is not installed; the h1emu-core interop test needs Node.js ≥ 18"
            );
            return false;
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(client_dir())
            .output()
            .expect("npm runs where node does");
        assert!(
            out.status.success(),
            "npm ci failed in {}:\n{}",
            client_dir().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        true
    });
    ready.then_some("node")
}

/// Runs the client against `addr` with `args`; returns its JSON result.
fn run_client(node: &str, addr: &str, args: &[&str]) -> Value {
    let out = Command::new(node)
        .arg("client.js")
        .args(["--target", addr, "--json"])
        .args(args)
        .current_dir(client_dir())
        .stdin(Stdio::null())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "client output is not JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(result["parse_failures"], 0, "{result:#}");
    assert!(out.status.success(), "client failed: {result:#}");
    result
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn h1emu_core_reads_every_datagram_at_windows_1_8_32() {
    let Some(node) = node() else { return };
    let (mut server, addr) = serve(&["--crc-length", "2"]);
    // (window, messages, min size, max size): full-size fragments and packets, and
    // small messages that travel in bundles and multi-packets.
    let runs = [
        ("1", "300", "1", "5000"),
        ("8", "2000", "1", "5000"),
        ("32", "2000", "1", "5000"),
        ("32", "2000", "1", "200"),
    ];
    let mut multis = 0;
    let mut bundles = 0;
    for (window, messages, min, max) in runs {
        let result = run_client(
            node,
            &addr,
            &[
                "--window",
                window,
                "--messages",
                messages,
                "--min-size",
                min,
                "--max-size",
                max,
                "--timeout-s",
                "90",
            ],
        );
        assert_eq!(
            count(&result, "messages_echoed"),
            messages.parse::<u64>().unwrap(),
            "{result:#}"
        );
        multis += count(&result, "multi_packets_received");
        bundles += count(&result, "bundles_received");
    }
    assert!(
        multis > 0 && bundles > 0,
        "{multis} multi-packets, {bundles} bundles"
    );
    sigterm(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(20)).success());
}

/// One short session after another against one shard, from a client that ticks
/// every 10 ms and packs its own multi-packets: the pattern that once left a shard
/// asleep with datagrams in its socket. Every session completes.
#[test]
fn back_to_back_short_sessions_never_stall_a_shard() {
    let Some(node) = node() else { return };
    let (mut server, addr) = serve(&["--crc-length", "2"]);
    let result = run_client(
        node,
        &addr,
        &[
            "--sessions",
            "100",
            "--messages",
            "20",
            "--window",
            "8",
            "--max-size",
            "5000",
            "--timeout-s",
            "10",
            "--seed",
            "7",
        ],
    );
    assert_eq!(count(&result, "sessions_ok"), 100, "{result:#}");
    sigterm(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(20)).success());
}
