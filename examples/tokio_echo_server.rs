//! An SOE echo server on the Tokio adapter: every message is sent back to its sender
//! on the channel it arrived on.
//!
//! ```text
//! cargo run --release --features tokio --example tokio_echo_server -- 0.0.0.0:20260 EchoProtocol
//! ```
//!
//! Arguments (optional): the address to bind (default `127.0.0.1:20260`) and the
//! application protocol name clients must use (default `EchoProtocol`).

use std::net::SocketAddr;
use std::time::Duration;

use soe_uring::tokio_rt::TokioSoeServer;
use soe_uring::{SocketConfig, SocketEvent};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let local: SocketAddr = match args.next() {
        Some(a) => a
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        None => SocketAddr::from(([127, 0, 0, 1], 20260)),
    };
    let mut config = SocketConfig::default();
    config.default_session_params.application_protocol =
        args.next().unwrap_or_else(|| "EchoProtocol".into());

    let mut server = TokioSoeServer::bind(local, config, Duration::from_millis(5)).await?;
    println!("echoing on {}", server.local_addr());
    let handle = server.handle();
    while let Some(event) = server.recv_event().await {
        match event {
            SocketEvent::SessionOpened { remote } => println!("{remote}: connected"),
            SocketEvent::DataReceived {
                remote,
                data,
                channel,
            } => {
                // Waits while the command queue is full instead of dropping the echo.
                let sent = handle.enqueue_data_on_async(remote, data, channel).await;
                if sent.is_err() {
                    break;
                }
            }
            SocketEvent::SessionClosed { remote, reason } => {
                println!("{remote}: closed ({reason:?})")
            }
            SocketEvent::SessionRemapped { old, new } => println!("{old}: moved to {new}"),
            _ => {} // kinds added in later versions
        }
    }
    Ok(())
}
