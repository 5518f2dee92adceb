//! A game-style server: the network runs on the thread-per-core shards, the game
//! logic in one async task. Events arrive on the merged stream
//! ([`soe_uring::EventStream`]); each player gets a small piece of per-client
//! state, and replies go out through a `SoeHandle` with back-pressure: when a
//! shard's queue is full, `enqueue_data_on_async` waits for room instead of
//! failing. The async API needs no particular executor; this example uses a
//! single-threaded Tokio runtime for its tick timer.
//!
//! The "game" is a chat room: a message from one player is broadcast to all others
//! on reliable channel 0, and every player gets an unreliable population tick.
//!
//! ```text
//! cargo run --release --example game_server -- 0.0.0.0:20260
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use soe_uring::{Channel, SendError, SocketConfig, SocketEvent, SoeHandle, SoeServer};

/// Per-client game state, owned by the game task.
struct Player {
    name: String,
    messages: u64,
}

/// Queues `payload` for `to`, waiting while the owning shard is busy. Errors
/// only when the server stops or no session could take the message.
async fn send(handle: &SoeHandle, to: SocketAddr, payload: Vec<u8>, channel: Channel) {
    match handle.enqueue_data_on_async(to, payload, channel).await {
        Ok(()) => {}
        Err(SendError::Invalid(_)) => eprintln!("message for {to} too large for a session"),
        Err(_) => {} // stopped
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bind: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("0.0.0.0:20260")
        .parse()?;
    let mut config = SocketConfig::default();
    config.default_session_params.application_protocol = "ChatRoom".into();
    let server = SoeServer::builder(bind, config)
        .event_queue(1 << 16)
        .start()?;
    println!(
        "chat room on {} ({} shards)",
        server.local_addr(),
        server.shards()
    );
    let events = server.event_stream().expect("no shard-local handler");
    let handle = server.handle();
    let game = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    game.block_on(async move {
        let mut players: HashMap<SocketAddr, Player> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { break };
                    on_event(event, &mut players, &handle).await;
                }
                _ = tick.tick() => {
                    let population = (players.len() as u32).to_be_bytes().to_vec();
                    for addr in players.keys() {
                        send(&handle, *addr, population.clone(), Channel::Unreliable).await;
                    }
                }
            }
        }
    });
    Ok(())
}

async fn on_event(
    event: SocketEvent<SocketAddr>,
    players: &mut HashMap<SocketAddr, Player>,
    handle: &SoeHandle,
) {
    match event {
        SocketEvent::SessionOpened { remote } => {
            let name = format!("player-{}", players.len() + 1);
            let welcome = format!("welcome, {name}").into_bytes();
            send(handle, remote, welcome, Channel::Reliable(0)).await;
            players.insert(remote, Player { name, messages: 0 });
        }
        SocketEvent::DataReceived { remote, data, .. } => {
            let Some(player) = players.get_mut(&remote) else {
                return;
            };
            player.messages += 1;
            let line = format!("{}: {}", player.name, String::from_utf8_lossy(&data));
            for other in players.keys().filter(|a| **a != remote) {
                send(
                    handle,
                    *other,
                    line.clone().into_bytes(),
                    Channel::Reliable(0),
                )
                .await;
            }
        }
        SocketEvent::SessionClosed { remote, reason } => {
            if let Some(p) = players.remove(&remote) {
                println!("{} left ({reason}) after {} messages", p.name, p.messages);
            }
        }
        // The player's NAT mapping moved: same player, new address.
        SocketEvent::SessionRemapped { old, new } => {
            if let Some(p) = players.remove(&old) {
                players.insert(new, p);
            }
        }
        _ => {} // kinds added in later versions
    }
}
