//! An SOE client on a plain `std::net::UdpSocket`, driving the sans-IO
//! `SoeMultiplexer` by hand: the calling contract every runtime follows.
//!
//! ```text
//! cargo run --release --example echo_server &
//! cargo run --release --example client -- 127.0.0.1:20260 SoeEcho
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use soe_uring::{Channel, SocketConfig, SocketEvent, SoeMultiplexer};

#[allow(clippy::disallowed_methods)] // a driver reads the clock; the core never does
fn now() -> Instant {
    Instant::now()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server: SocketAddr = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1:20260")
        .parse()?;
    let protocol = args.next().unwrap_or_else(|| "SoeEcho".into());

    let mut config = SocketConfig::default();
    config.default_session_params.application_protocol = protocol;
    let socket = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    socket.set_read_timeout(Some(Duration::from_millis(1)))?;
    let mut mux = SoeMultiplexer::new(config);
    mux.connect(server, now())?;

    let mut buf = vec![0u8; 65536];
    let mut sent = 0u32;
    let started = now();
    loop {
        // 1. Feed what arrived (the timeout doubles as the tick).
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            mux.process_incoming(from, &buf[..n], now());
        }
        // 2. Handle events and enqueue.
        while let Some(event) = mux.poll_event() {
            match event {
                SocketEvent::SessionOpened { .. } => println!("connected to {server}"),
                SocketEvent::DataReceived { data, .. } => {
                    println!("echo: {}", String::from_utf8_lossy(&data));
                    if sent == 10 {
                        mux.terminate(&server, soe_uring::DisconnectReason::Application, now());
                    }
                }
                SocketEvent::SessionClosed { reason, .. } => {
                    println!("closed: {reason}");
                    // 4. Send what the last turn produced (the Disconnect) and stop.
                    for (to, datagram) in mux.outgoing_iter() {
                        socket.send_to(datagram, to)?;
                    }
                    return Ok(());
                }
                // Only a server sees its peers move.
                SocketEvent::SessionRemapped { .. } => {}
                _ => {} // kinds added in later versions
            }
        }
        if mux
            .session(&server)
            .is_some_and(|s| s.state() == soe_uring::SessionState::Running)
            && sent < 10
        {
            mux.enqueue_data_on(
                &server,
                format!("hello #{sent}").as_bytes(),
                Channel::Reliable(0),
            )?;
            sent += 1;
        }
        // 3. Timers and one flush per turn; 4. send.
        mux.run_tick(now());
        let n = mux.outgoing_len();
        for i in 0..n {
            let (to, datagram) = mux.outgoing(i);
            socket.send_to(datagram, to)?;
        }
        mux.consume_outgoing(n);
        if started.elapsed() > Duration::from_secs(15) {
            return Err("no answer within 15 s".into());
        }
    }
}
