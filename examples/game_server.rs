//! A game-style server: the network runs on the thread-per-core shards, the game
//! logic on its own thread. Events arrive on the merged stream; each player gets a
//! small piece of per-client state, and replies go out through a `SoeHandle` (which
//! any thread may clone).
//!
//! The "game" is a chat room: a message from one player is broadcast to all others
//! on reliable channel 0, and every player gets a unreliable position tick.
//!
//! ```text
//! cargo run --release --example game_server -- 0.0.0.0:20260
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use soe_uring::{Channel, SendError, SocketConfig, SocketEvent, SoeHandle, SoeServer};

/// Per-client game state, owned by the game thread.
struct Player {
    name: String,
    messages: u64,
}

fn send(handle: &SoeHandle, to: SocketAddr, payload: Vec<u8>, channel: Channel) {
    let mut payload = bytes::Bytes::from(payload);
    // A full shard queue hands the payload back: retry briefly, then give up on
    // this message (a real game would queue it per player).
    for _ in 0..100 {
        match handle.enqueue_data_on(to, payload, channel) {
            Ok(()) => return,
            Err(SendError::Full(back)) => {
                payload = back;
                std::thread::yield_now();
            }
            Err(_) => return, // stopped, or a message no session could take
        }
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
    let handle = server.handle();
    println!(
        "chat room on {} ({} shards)",
        server.local_addr(),
        server.shards()
    );

    let mut players: HashMap<SocketAddr, Player> = HashMap::new();
    #[allow(clippy::disallowed_methods)] // an application may read the clock
    let mut next_tick = Instant::now();
    loop {
        if let Some(event) = server.recv_event_timeout(Duration::from_millis(50)) {
            match event {
                SocketEvent::SessionOpened { remote } => {
                    let name = format!("player-{}", players.len() + 1);
                    send(
                        &handle,
                        remote,
                        format!("welcome, {name}").into_bytes(),
                        Channel::Reliable(0),
                    );
                    players.insert(remote, Player { name, messages: 0 });
                }
                SocketEvent::DataReceived { remote, data, .. } => {
                    let Some(player) = players.get_mut(&remote) else {
                        continue;
                    };
                    player.messages += 1;
                    let line = format!("{}: {}", player.name, String::from_utf8_lossy(&data));
                    for other in players.keys().filter(|a| **a != remote) {
                        send(
                            &handle,
                            *other,
                            line.clone().into_bytes(),
                            Channel::Reliable(0),
                        );
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
            }
        }
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + Duration::from_millis(100);
            let population = (players.len() as u32).to_be_bytes().to_vec();
            for addr in players.keys() {
                send(&handle, *addr, population.clone(), Channel::Unreliable);
            }
        }
    }
}
