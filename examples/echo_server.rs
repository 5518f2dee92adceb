//! A thread-per-core SOE echo server: one shard per core, each echoing the messages
//! of the sessions it owns from a shard-local handler (no channel hop, no lock).
//!
//! ```text
//! cargo run --release --example echo_server -- 0.0.0.0:20260 MyGame
//! ```
//! Stop it with Ctrl-C... or let it run: it prints its counters every 10 seconds.

use std::net::SocketAddr;
use std::time::Duration;

use soe_uring::{ShardContext, ShardInfo, SocketConfig, SocketEvent, SoeServer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bind: SocketAddr = args.next().as_deref().unwrap_or("0.0.0.0:20260").parse()?;
    let protocol = args.next().unwrap_or_else(|| "SoeEcho".into());

    let mut config = SocketConfig::default();
    config.default_session_params.application_protocol = protocol;

    let server = SoeServer::builder(bind, config)
        .handler(|shard: ShardInfo| {
            println!("shard {} of {} ready", shard.index, shard.shards);
            |event: SocketEvent<SocketAddr>, ctx: &mut ShardContext<'_>| match event {
                SocketEvent::SessionOpened { remote } => {
                    println!("shard {}: {remote} connected", ctx.shard())
                }
                SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } => {
                    // Replies from the handler share datagrams with the acks of the
                    // same loop turn.
                    if let Err(e) = ctx.enqueue_data_on(&remote, &data, channel) {
                        eprintln!("{remote}: {e}");
                    }
                }
                SocketEvent::SessionClosed { remote, reason } => {
                    println!("shard {}: {remote} closed ({reason})", ctx.shard())
                }
                // Its NAT mapping moved; later events come from the new address's shard.
                SocketEvent::SessionRemapped { old, new } => {
                    println!("shard {}: {old} moved to {new}", ctx.shard())
                }
                _ => {} // kinds added in later versions
            }
        })
        .start()?;
    println!(
        "echo server on {} with {} shards",
        server.local_addr(),
        server.shards()
    );
    loop {
        std::thread::sleep(Duration::from_secs(10));
        let stats = server.stats().total;
        println!(
            "sessions {} messages in {} datagrams in/out {}/{} cpu {:?}",
            stats.mux.sessions_live,
            stats.mux.sessions.messages_delivered,
            stats.datagrams_in,
            stats.datagrams_out,
            stats.cpu_time
        );
    }
}
