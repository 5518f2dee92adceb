//! Running under a fleet manager such as Agones: Ready once the shards serve,
//! Health while every shard is alive, and on SIGTERM a drain before Shutdown, so
//! a rolling update never cuts a player off.
//!
//! | fleet manager (Agones SDK) | soe-uring |
//! |---|---|
//! | `Ready()` | `SoeServer::builder(..).start()` returned: every shard serves |
//! | `Health()` every few seconds | all of `SoeServer::health()` are `alive(grace)` |
//! | (no health ping) | a shard stalled or failed: the manager replaces the server |
//! | SIGTERM from the orchestrator | `SoeHandle::drain()`: new sessions refused, live ones served |
//! | `Shutdown()` | `SoeHandle::sessions_live() == 0` or the drain deadline: `SoeServer::shutdown()` |
//!
//! The SDK calls are stubbed with prints here (the SDK is a gRPC sidecar); swap
//! `PrintingFleet` for a client of the real one. Keep the drain deadline below
//! the pod's `terminationGracePeriodSeconds`.
//!
//! ```text
//! cargo run --release --example fleet -- 127.0.0.1:20260 30
//! ```
#![allow(clippy::disallowed_methods)] // a binary reads the clock

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use soe_uring::{ShardContext, ShardInfo, SocketConfig, SocketEvent, SoeServer};

/// What a fleet manager's SDK offers a game server.
trait Fleet {
    /// The server can take players.
    fn ready(&mut self);
    /// The server is alive (sent every health period).
    fn health(&mut self);
    /// The server is done; the manager may delete it.
    fn shutdown(&mut self);
}

/// Prints what it would tell the fleet manager.
struct PrintingFleet;

impl Fleet for PrintingFleet {
    fn ready(&mut self) {
        println!("fleet: Ready");
    }
    fn health(&mut self) {
        println!("fleet: Health");
    }
    fn shutdown(&mut self) {
        println!("fleet: Shutdown");
    }
}

/// How often health is reported, and how late a shard may be before it is not.
const HEALTH_PERIOD: Duration = Duration::from_secs(2);
const STALL_GRACE: Duration = Duration::from_secs(1);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bind: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:0").parse()?;
    let drain_for = Duration::from_secs(args.next().map_or(Ok(30), |s| s.parse())?);

    let terminated = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, terminated.clone())?;
    }

    let server = SoeServer::builder(bind, SocketConfig::default())
        .handler(|_: ShardInfo| {
            // An echo "game": every message goes back on its channel.
            |event: SocketEvent<SocketAddr>, ctx: &mut ShardContext<'_>| {
                if let SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } = event
                {
                    let _ = ctx.enqueue_data_on(&remote, &data, channel);
                }
            }
        })
        .start()?;
    println!("serving on {}", server.local_addr());
    let mut fleet = PrintingFleet;
    fleet.ready();

    let mut next_health = Instant::now();
    while !terminated.load(Ordering::Relaxed) {
        if Instant::now() >= next_health {
            if server.health().iter().all(|h| h.alive(STALL_GRACE)) {
                fleet.health();
            } else {
                eprintln!(
                    "a shard is not alive: withholding health ({:?})",
                    server.health()
                );
            }
            next_health += HEALTH_PERIOD;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    println!("terminating: draining up to {drain_for:?}");
    let report = server.drain(drain_for)?;
    println!(
        "drained in {:?}, {} sessions cut at the deadline",
        report.waited, report.sessions_left
    );
    fleet.shutdown();
    Ok(())
}
