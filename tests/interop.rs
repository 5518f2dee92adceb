//! Wire compatibility with the reference implementation, `soe-protocol` 2.3.0, over
//! real loopback UDP, in both directions: its client against our multiplexer as a
//! server, and our multiplexer as a client against its server. Both sides run in one
//! thread on non-blocking sockets; every loop is bounded in time.
// A socket driver reads the clock, like any runtime adapter.
#![allow(clippy::disallowed_methods, clippy::needless_range_loop)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use soe_protocol as sp;

mod common;
use common::{Case, Checker, message, unreliable_message};

const PROTOCOL: &str = "InteropTest";
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// A non-blocking loopback socket with 4 MiB kernel buffers, as the runtimes use:
/// with the OS default a burst of fragments overflows it, and the reference's
/// sender does not recover well from the resulting loss (see `common` on pacing).
fn loopback_socket() -> UdpSocket {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true).unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.into()
}

/// Our multiplexer on a non-blocking socket.
struct OurPeer {
    socket: UdpSocket,
    mux: soe_uring::SoeMultiplexer<SocketAddr>,
    buf: Vec<u8>,
}

impl OurPeer {
    fn new(config: soe_uring::SocketConfig) -> Self {
        let socket = loopback_socket();
        Self {
            socket,
            mux: soe_uring::SoeMultiplexer::new(config),
            buf: vec![0; 65536],
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// Receives what is waiting, runs timers and flushes. Returns whether anything
    /// moved.
    fn drive(&mut self) -> bool {
        let mut moved = false;
        while let Ok((n, from)) = self.socket.recv_from(&mut self.buf) {
            self.mux
                .process_incoming(from, &self.buf[..n], Instant::now());
            moved = true;
        }
        self.mux.run_tick(Instant::now());
        let count = self.mux.outgoing_len();
        for i in 0..count {
            let (to, bytes) = self.mux.outgoing(i);
            let _ = self.socket.send_to(bytes, to);
        }
        self.mux.consume_outgoing(count);
        moved || count > 0
    }
}

/// The reference multiplexer on a non-blocking socket.
struct RefPeer {
    socket: UdpSocket,
    mux: sp::SoeMultiplexer<SocketAddr>,
}

impl RefPeer {
    fn new(config: sp::SocketConfig) -> Self {
        let socket = loopback_socket();
        Self {
            socket,
            mux: sp::SoeMultiplexer::new(config),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    fn drive(&mut self) {
        self.mux.drive(&mut self.socket, Instant::now()).unwrap();
    }
}

/// The reference client sends; our server echoes each message on its channel.
fn reference_client_against_our_server(case: Case) {
    let mut server = OurPeer::new(common::our_config(&case, PROTOCOL));
    let mut client = RefPeer::new(common::ref_config(&case, PROTOCOL));
    let server_addr = server.addr();
    client.mux.connect(server_addr, Instant::now());

    let started = Instant::now();
    let mut opened = false;
    let mut sent = [0u64; 4];
    let mut sent_unreliable = 0;
    let mut checker = Checker::new(case);
    while !checker.done() {
        assert!(
            started.elapsed() < TIME_LIMIT,
            "timed out: {case:?} got {:?}",
            checker.next
        );
        client.drive();
        for event in client.mux.take_events() {
            match event {
                sp::SocketEvent::SessionOpened { .. } => opened = true,
                sp::SocketEvent::DataReceived { data, channel, .. } => match channel {
                    sp::Channel::Reliable(ch) => checker.reliable(ch, &data),
                    sp::Channel::Unreliable => checker.unreliable(&data),
                },
                sp::SocketEvent::SessionClosed { reason, .. } => {
                    panic!("reference client closed: {reason:?}")
                }
            }
        }
        if opened {
            // Keep a bounded amount in flight: the reference queues without limit.
            for ch in 0..4 {
                let mut burst = 0;
                while sent[ch] < case.per_channel && sent[ch] < checker.next[ch] + 64 && burst < 16
                {
                    let data = message(ch, sent[ch], case.max_size, case.bundle_like);
                    assert!(client.mux.enqueue_data_on(
                        &server_addr,
                        &data,
                        sp::Channel::Reliable(ch)
                    ));
                    sent[ch] += 1;
                    burst += 1;
                }
            }
            if sent_unreliable < case.unreliable && sent_unreliable <= checker.unreliable + 8 {
                let data = unreliable_message(sent_unreliable);
                assert!(
                    client
                        .mux
                        .enqueue_data_on(&server_addr, &data, sp::Channel::Unreliable)
                );
                sent_unreliable += 1;
            }
        }
        server.drive();
        while let Some(event) = server.mux.poll_event() {
            match event {
                soe_uring::SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } => {
                    server.mux.enqueue_data_on(&remote, &data, channel).unwrap();
                }
                soe_uring::SocketEvent::SessionClosed { reason, .. } => {
                    panic!("our server closed the session: {reason:?}")
                }
                soe_uring::SocketEvent::SessionOpened { .. } => {}
                soe_uring::SocketEvent::SessionRemapped { old, new } => {
                    panic!("no remap expected: {old} → {new}")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        server.drive();
    }
    let stats = server.mux.stats();
    assert_eq!(stats.sessions.crc_failures, 0);
    assert_eq!(stats.sessions.malformed_datagrams, 0);
    eprintln!(
        "{case:?}: reference client ↔ our server, {} echoed in {:?}; server datagrams out {} for {} messages",
        checker.next.iter().sum::<u64>() + checker.unreliable,
        started.elapsed(),
        stats.sessions.datagrams_sent,
        stats.sessions.messages_enqueued,
    );
}

/// A reference server with `case`'s configuration and our client connecting to it
/// (its SessionRequest goes out on the client's first drive), with the server's
/// address.
fn our_client_of_reference_server(case: &Case) -> (OurPeer, RefPeer, SocketAddr) {
    let server = RefPeer::new(common::ref_config(case, PROTOCOL));
    let mut client = OurPeer::new(common::our_config(case, PROTOCOL));
    let server_addr = server.addr();
    client.mux.connect(server_addr, Instant::now()).unwrap();
    (client, server, server_addr)
}

/// Our client sends; the reference server echoes each message on its channel.
fn our_client_against_reference_server(case: Case) {
    let (mut client, mut server, server_addr) = our_client_of_reference_server(&case);

    let started = Instant::now();
    let mut opened = false;
    let mut sent = [0u64; 4];
    let mut sent_unreliable = 0;
    let mut checker = Checker::new(case);
    let mut echo_queue: HashMap<SocketAddr, Vec<(Vec<u8>, sp::Channel)>> = HashMap::new();
    while !checker.done() {
        assert!(
            started.elapsed() < TIME_LIMIT,
            "timed out: {case:?} got {:?}",
            checker.next
        );
        client.drive();
        while let Some(event) = client.mux.poll_event() {
            match event {
                soe_uring::SocketEvent::SessionOpened { .. } => opened = true,
                soe_uring::SocketEvent::DataReceived { data, channel, .. } => match channel {
                    soe_uring::Channel::Reliable(ch) => checker.reliable(ch, &data),
                    soe_uring::Channel::Unreliable => checker.unreliable(&data),
                    soe_uring::Channel::Ordered => panic!("no ordered traffic expected"),
                },
                soe_uring::SocketEvent::SessionClosed { reason, .. } => {
                    panic!("our client closed: {reason:?}")
                }
                soe_uring::SocketEvent::SessionRemapped { .. } => unreachable!("a client"),
                other => panic!("unexpected {other:?}"),
            }
        }
        if opened {
            for ch in 0..4 {
                while sent[ch] < case.per_channel && sent[ch] < checker.next[ch] + 64 {
                    let data = message(ch, sent[ch], case.max_size, case.bundle_like);
                    match client.mux.enqueue_data_on(
                        &server_addr,
                        &data,
                        soe_uring::Channel::Reliable(ch),
                    ) {
                        Ok(()) => sent[ch] += 1,
                        Err(soe_uring::EnqueueError::QueueFull) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            if sent_unreliable < case.unreliable && sent_unreliable <= checker.unreliable + 8 {
                let data = unreliable_message(sent_unreliable);
                client
                    .mux
                    .enqueue_data_on(&server_addr, &data, soe_uring::Channel::Unreliable)
                    .unwrap();
                sent_unreliable += 1;
            }
        }
        client.drive();
        server.drive();
        for event in server.mux.take_events() {
            match event {
                sp::SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } => {
                    echo_queue
                        .entry(remote)
                        .or_default()
                        .push((data.to_vec(), channel));
                }
                sp::SocketEvent::SessionClosed { reason, .. } => {
                    panic!("reference server closed the session: {reason:?}")
                }
                sp::SocketEvent::SessionOpened { .. } => {}
            }
        }
        for (remote, items) in echo_queue.drain() {
            for (data, channel) in items {
                assert!(server.mux.enqueue_data_on(&remote, &data, channel));
            }
        }
    }
    let stats = client.mux.stats();
    assert_eq!(stats.sessions.crc_failures, 0);
    assert_eq!(stats.sessions.malformed_datagrams, 0);
    eprintln!(
        "{case:?}: our client ↔ reference server, {} echoed in {:?}; client datagrams out {} for {} messages",
        checker.next.iter().sum::<u64>() + checker.unreliable,
        started.elapsed(),
        stats.sessions.datagrams_sent,
        stats.sessions.messages_enqueued,
    );
}

const SMALL: Case = Case {
    rc4: false,
    compression: false,
    per_channel: 1_500,
    unreliable: 300,
    max_size: 20_000,
    bundle_like: false,
};

#[test]
fn reference_client_plain() {
    reference_client_against_our_server(SMALL);
}

#[test]
fn reference_client_rc4() {
    reference_client_against_our_server(Case {
        rc4: true,
        bundle_like: true,
        ..SMALL
    });
}

#[test]
fn reference_client_our_compression() {
    reference_client_against_our_server(Case {
        compression: true,
        ..SMALL
    });
}

#[test]
fn reference_client_rc4_compression_70k_messages() {
    reference_client_against_our_server(Case {
        rc4: true,
        compression: true,
        per_channel: 18_000,
        unreliable: 2_000,
        max_size: 3_000,
        bundle_like: true,
    });
}

#[test]
fn our_client_plain() {
    our_client_against_reference_server(SMALL);
}

#[test]
fn our_client_rc4() {
    our_client_against_reference_server(Case {
        rc4: true,
        bundle_like: true,
        ..SMALL
    });
}

#[test]
fn our_client_reference_compression() {
    our_client_against_reference_server(Case {
        compression: true,
        ..SMALL
    });
}

#[test]
fn our_client_rc4_compression_70k_messages() {
    our_client_against_reference_server(Case {
        rc4: true,
        compression: true,
        per_channel: 18_000,
        unreliable: 2_000,
        max_size: 3_000,
        bundle_like: true,
    });
}

/// Unencrypted payloads that begin like a data bundle (`00 19`) reach the reference
/// intact: we send them inside a one-item bundle, which it unwraps.
#[test]
fn bundle_like_payloads_reach_the_reference() {
    let case = SMALL;
    let (mut client, mut server, server_addr) = our_client_of_reference_server(&case);
    let payloads: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            let mut p = vec![0x00, 0x19];
            p.extend((0..(i * 37) % 3000).map(|b| b as u8));
            p
        })
        .collect();
    let started = Instant::now();
    let mut sent = 0;
    let mut received = 0;
    while received < payloads.len() {
        assert!(started.elapsed() < TIME_LIMIT, "timed out after {received}");
        client.drive();
        while let Some(event) = client.mux.poll_event() {
            assert!(
                !matches!(event, soe_uring::SocketEvent::SessionClosed { .. }),
                "{event:?}"
            );
        }
        let running = client
            .mux
            .session(&server_addr)
            .is_some_and(|s| s.state() == soe_uring::SessionState::Running);
        while running && sent < payloads.len() {
            let channel = soe_uring::Channel::Reliable(sent % 4);
            client
                .mux
                .enqueue_data_on(&server_addr, &payloads[sent], channel)
                .unwrap();
            sent += 1;
        }
        client.drive();
        server.drive();
        for event in server.mux.take_events() {
            if let sp::SocketEvent::DataReceived { data, .. } = event {
                assert!(
                    payloads.contains(&data.to_vec()),
                    "mangled: {:02x?}",
                    &data[..data.len().min(8)]
                );
                received += 1;
            }
        }
    }
}

/// A slow exchange, one message at a time: each echo the reference server
/// sends arrives alone, so our client holds its ack up to `lone_ack_delay`
/// (40 ms) for a ride, and at 45 ms between messages it goes alone after the
/// wait. The reference's retransmission timeout (200 ms at least) must never
/// fire: no echo may arrive twice, and every one arrives.
#[test]
fn delayed_acks_draw_no_retransmissions_from_the_reference() {
    let case = SMALL;
    let (mut client, mut server, server_addr) = our_client_of_reference_server(&case);
    let started = Instant::now();
    let (mut opened, mut sent, mut echoed) = (false, 0u32, 0u32);
    let mut next_send = Instant::now();
    const MESSAGES: u32 = 40;
    while echoed < MESSAGES {
        assert!(
            started.elapsed() < TIME_LIMIT,
            "{echoed} of {MESSAGES} echoed"
        );
        client.drive();
        server.drive();
        for event in server.mux.take_events() {
            if let sp::SocketEvent::DataReceived {
                remote,
                data,
                channel,
            } = event
            {
                assert!(server.mux.enqueue_data_on(&remote, &data, channel));
            }
        }
        while let Some(event) = client.mux.poll_event() {
            match event {
                soe_uring::SocketEvent::SessionOpened { .. } => opened = true,
                soe_uring::SocketEvent::DataReceived { data, .. } => {
                    assert_eq!(data.as_ref(), echoed.to_be_bytes());
                    echoed += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if opened && sent == echoed && sent < MESSAGES && Instant::now() >= next_send {
            let data = sent.to_be_bytes();
            client
                .mux
                .enqueue_data_on(&server_addr, &data, soe_uring::Channel::Reliable(0))
                .unwrap();
            sent += 1;
            next_send = Instant::now() + Duration::from_millis(45);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let the last ack go, then look for copies of anything already delivered.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(300) {
        client.drive();
        server.drive();
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = client.mux.stats().sessions;
    assert_eq!(stats.duplicate_packets, 0, "the reference resent echoes");
    assert_eq!(stats.crc_failures, 0);
}
