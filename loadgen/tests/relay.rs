//! Through the chaos relay (`--relay`), short: a lossy, duplicating, reordering
//! path and NAT rebinding across shards. Every reliable message must arrive and
//! no session may be lost. Bounds are generous, for a loaded 2-core machine.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};

use serde_json::Value;

mod common;
use common::{BIN, num};

fn bench_through(chaos: &str, shards: &str) -> Value {
    let out = Command::new(BIN)
        .args([
            "bench",
            "--server",
            "soe-uring",
            "--shards",
            shards,
            "--relay",
            chaos,
            "--sessions",
            "8",
            "--window",
            "8",
            "--size",
            "16-2000",
            "--duration",
            "4",
            "--warmup",
            "0",
            "--drain",
            "20",
            "--client-threads",
            "1",
            "--connect-timeout",
            "20",
            "--loss-timeout",
            "30",
            "--quiet",
            "--json",
            "-",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("loadgen runs");
    assert!(
        out.status.success(),
        "{chaos}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// 10 % loss, 5 % duplication and reordering each way: nothing lost, and loss
/// recovery keeps every message well under the seconds a timeout-only sender
/// takes.
#[test]
fn lossy_path_loses_nothing() {
    let v = bench_through("loss=0.1,dup=0.05,reorder=0.05,delay=5ms,seed=3", "2");
    assert!(num(&v, "messages_received") > 100.0, "{v}");
    assert_eq!(num(&v, "messages_lost"), 0.0, "{v}");
    assert_eq!(v["details"]["errors"], 0, "{v}");
    assert_eq!(v["details"]["sessions_closed"], 0, "{v}");
    assert!(num(&v, "resends") > 0.0, "the relay dropped nothing? {v}");
    assert!(num(&v["rtt_us"], "max") < 3_000_000.0, "{v}");
}

/// Every client's source port changes twice mid-run; with two shards most
/// sessions move to the other shard. All survive and every message arrives.
#[test]
fn rebinding_clients_keep_their_sessions_across_shards() {
    let v = bench_through("delay=2ms,rebind=1500ms,seed=4", "2");
    assert!(num(&v, "messages_received") > 100.0, "{v}");
    assert_eq!(num(&v, "messages_lost"), 0.0, "{v}");
    assert_eq!(v["details"]["errors"], 0, "{v}");
    assert_eq!(v["details"]["sessions_closed"], 0, "{v}");
}
