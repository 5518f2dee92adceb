//! The Tokio adapter over loopback UDP: against the reference (`soe-protocol` 2.3.0
//! Tokio runtime) in both directions and against itself, graceful shutdown, handles
//! shared between threads and tasks, full command queues and event backpressure.
//! Every test runs under a time limit.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use soe_protocol as sp;
use soe_uring::tokio_rt::{
    ClientEvent, DriverConfig, SendError, SoeHandle, TokioSoeClient, TokioSoeServer,
};
use soe_uring::{Channel, DisconnectReason, SocketConfig, SocketEvent};

mod common;
use common::{Case, Checker, message, unreliable_message};

const PROTOCOL: &str = "TokioAdapterTest";
const TICK: Duration = Duration::from_millis(2);
const TIME_LIMIT: Duration = Duration::from_secs(60);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Runs `body` under [`TIME_LIMIT`].
async fn bounded<T>(what: &str, body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TIME_LIMIT, body).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: timed out after {TIME_LIMIT:?}"),
    }
}

fn our_config_for(case: &Case) -> SocketConfig {
    common::our_config(case, PROTOCOL)
}

fn ref_config_for(case: &Case) -> sp::SocketConfig {
    common::ref_config(case, PROTOCOL)
}

const CASE: Case = Case {
    rc4: false,
    compression: false,
    per_channel: 300,
    unreliable: 200,
    max_size: 6_000,
    bundle_like: false,
};

const CASES: [Case; 4] = [
    CASE,
    Case {
        rc4: true,
        bundle_like: true,
        ..CASE
    },
    Case {
        compression: true,
        ..CASE
    },
    Case {
        rc4: true,
        compression: true,
        bundle_like: true,
        ..CASE
    },
];

/// Messages a sender may have ahead of the echoes on each channel when the
/// reference sends (or echoes) them. The reference's go-back-N sender stalls for good
/// when far more than its window is queued at once; reference↔reference shows the
/// same stall with 300 messages queued per channel, so it is not ours to test.
const REFERENCE_IN_FLIGHT: u64 = 32;

/// Sends the messages of a case: everything at once (`window: None`) or at most
/// `window` messages per channel ahead of the echoes. The unreliable message `i`
/// goes out with the reliable message `i` of channel 0.
struct Pacer {
    case: Case,
    window: Option<u64>,
    sent: [u64; 4],
}

impl Pacer {
    fn new(case: Case, window: Option<u64>) -> Self {
        Self {
            case,
            window,
            sent: [0; 4],
        }
    }

    /// Calls `send(channel, payload)` (`None`: unreliable) for every message due.
    fn top_up(&mut self, checker: &Checker, mut send: impl FnMut(Option<usize>, Vec<u8>)) {
        let case = self.case;
        for ch in 0..4 {
            let limit = match self.window {
                Some(w) => (checker.next[ch] + w).min(case.per_channel),
                None => case.per_channel,
            };
            while self.sent[ch] < limit {
                let i = self.sent[ch];
                send(Some(ch), message(ch, i, case.max_size, case.bundle_like));
                if ch == 0 && i < case.unreliable {
                    send(None, unreliable_message(i));
                }
                self.sent[ch] += 1;
            }
        }
    }
}

/// Our server echoing every message on its channel. Returns its address and a
/// handle (for stats); the server lives as long as the returned task.
async fn spawn_our_echo_server(
    config: SocketConfig,
) -> (SocketAddr, SoeHandle, tokio::task::JoinHandle<()>) {
    let mut server = TokioSoeServer::bind(loopback(), config, TICK)
        .await
        .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let echo = server.handle();
    let task = tokio::spawn(async move {
        while let Some(event) = server.recv_event().await {
            match event {
                SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } => echo
                    .enqueue_data_on_async(remote, data, channel)
                    .await
                    .unwrap(),
                SocketEvent::SessionOpened { .. }
                | SocketEvent::SessionClosed { .. }
                | SocketEvent::SessionRemapped { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    (addr, handle, task)
}

/// The reference server echoing every message on its channel.
async fn spawn_reference_echo_server(
    config: sp::SocketConfig,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let mut server = sp::TokioSoeServer::bind(loopback(), config, TICK)
        .await
        .unwrap();
    let addr = server.local_addr();
    let task = tokio::spawn(async move {
        let handle = server.handle();
        while let Some(event) = server.recv_event().await {
            match event {
                sp::SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } => assert!(handle.enqueue_data_on(remote, data, channel)),
                sp::SocketEvent::SessionOpened { .. } | sp::SocketEvent::SessionClosed { .. } => {}
            }
        }
    });
    (addr, task)
}

/// Drives our client through `case` against an echo server at `server`; checks every
/// echo and the client's counters.
async fn our_client_echo(server: SocketAddr, case: Case, window: Option<u64>) {
    let mut client = TokioSoeClient::connect_to(server, our_config_for(&case), TICK)
        .await
        .unwrap();
    assert_eq!(client.server_addr(), server);
    assert_eq!(client.recv_event().await, Some(ClientEvent::Connected));
    let handle = client.handle();
    let mut pacer = Pacer::new(case, window);
    let mut checker = Checker::new(case);
    checker.require_unreliable = window.is_some();
    while !checker.done() {
        pacer.top_up(&checker, |channel, data| {
            let channel = channel.map_or(Channel::Unreliable, Channel::Reliable);
            handle.try_enqueue_data_on(data, channel).unwrap();
        });
        let event = match tokio::time::timeout(Duration::from_secs(10), client.recv_event()).await {
            Ok(event) => event,
            Err(_) => {
                let a = client.stats().await.unwrap();
                tokio::time::sleep(Duration::from_secs(3)).await;
                let b = client.stats().await.unwrap();
                panic!(
                    "{case:?}: stuck at {:?} / {} unreliable; client {:#?} then {:#?}",
                    checker.next, checker.unreliable, a.mux.sessions, b.mux.sessions
                )
            }
        };
        match event.expect("client driver stopped") {
            ClientEvent::DataReceived {
                data,
                channel: Channel::Reliable(ch),
            } => checker.reliable(ch, &data),
            ClientEvent::DataReceived {
                data,
                channel: Channel::Unreliable,
            } => checker.unreliable(&data),
            other => panic!("unexpected {other:?}"),
        }
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.enqueue_refused, 0);
    assert_eq!(stats.send_errors, 0);
    assert_eq!(stats.mux.sessions.crc_failures, 0);
    assert_eq!(stats.mux.sessions.malformed_datagrams, 0);
    eprintln!(
        "{case:?}: our client: {} reliable + {} unreliable echoed; {} messages in {} datagrams, {} loop turns",
        checker.next.iter().sum::<u64>(),
        checker.unreliable,
        stats.mux.sessions.messages_enqueued,
        stats.mux.sessions.datagrams_sent,
        stats.turns,
    );
    // A clean goodbye: the server sees OtherSideTerminated, our client stops.
    assert!(client.handle().terminate(DisconnectReason::Application));
    loop {
        match client.recv_event().await {
            Some(ClientEvent::Disconnected { reason }) => {
                assert_eq!(reason, DisconnectReason::Application);
                break;
            }
            Some(ClientEvent::DataReceived { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(client.recv_event().await, None);
}

/// Test 1: the reference client against our server.
async fn reference_client_against_our_server(case: Case) {
    let (server, server_handle, echo) = spawn_our_echo_server(our_config_for(&case)).await;
    let mut client = sp::TokioSoeClient::connect_to(server, ref_config_for(&case), TICK)
        .await
        .unwrap();
    assert_eq!(client.recv_event().await, Some(sp::ClientEvent::Connected));
    let handle = client.handle();
    let mut pacer = Pacer::new(case, Some(REFERENCE_IN_FLIGHT));
    let mut checker = Checker::new(case);
    while !checker.done() {
        pacer.top_up(&checker, |channel, data| {
            let channel = channel.map_or(sp::Channel::Unreliable, sp::Channel::Reliable);
            assert!(handle.enqueue_data_on(data, channel));
        });
        let event = match tokio::time::timeout(Duration::from_secs(10), client.recv_event()).await {
            Ok(event) => event,
            Err(_) => panic!(
                "{case:?}: stuck at {:?} / {} unreliable; server {:#?}",
                checker.next,
                checker.unreliable,
                server_handle.stats().await
            ),
        };
        match event.expect("reference client stopped") {
            sp::ClientEvent::DataReceived {
                data,
                channel: sp::Channel::Reliable(ch),
            } => checker.reliable(ch, &data),
            sp::ClientEvent::DataReceived {
                data,
                channel: sp::Channel::Unreliable,
            } => checker.unreliable(&data),
            other => panic!("unexpected {other:?}"),
        }
    }
    let stats = server_handle.stats().await.unwrap();
    assert_eq!(stats.enqueue_refused, 0);
    assert_eq!(stats.send_errors, 0);
    assert_eq!(stats.mux.sessions.crc_failures, 0);
    assert_eq!(stats.mux.sessions.malformed_datagrams, 0);
    eprintln!(
        "{case:?}: reference client ↔ our server: {} reliable + {} unreliable echoed; server sent {} messages in {} datagrams, {} loop turns",
        checker.next.iter().sum::<u64>(),
        checker.unreliable,
        stats.mux.sessions.messages_enqueued,
        stats.mux.sessions.datagrams_sent,
        stats.turns,
    );
    echo.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_client_against_our_server_all_cases() {
    for case in CASES {
        bounded(
            &format!("{case:?}"),
            reference_client_against_our_server(case),
        )
        .await;
    }
}

/// Test 2: our client against the reference server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_reference_server_all_cases() {
    for case in CASES {
        bounded(&format!("{case:?}"), async {
            let (server, echo) = spawn_reference_echo_server(ref_config_for(&case)).await;
            our_client_echo(server, case, Some(REFERENCE_IN_FLIGHT)).await;
            echo.abort();
        })
        .await;
    }
}

/// Test 3: our client against our server, with more traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_our_server_all_cases() {
    for case in CASES {
        let case = Case {
            per_channel: 1_000,
            unreliable: 500,
            max_size: 20_000,
            bundle_like: true,
            ..case
        };
        bounded(&format!("{case:?}"), async {
            let (server, server_handle, echo) = spawn_our_echo_server(our_config_for(&case)).await;
            our_client_echo(server, case, None).await;
            let stats = server_handle.stats().await.unwrap();
            assert_eq!(stats.enqueue_refused, 0);
            assert_eq!(stats.mux.sessions.crc_failures, 0);
            echo.abort();
        })
        .await;
    }
}

/// Test 4: dropping the server ends every session with a Disconnect, seen by our
/// client and by the reference client, even while a server handle is still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_disconnects_clients() {
    bounded("drop", async {
        let config = our_config_for(&CASE);
        let mut server = TokioSoeServer::bind(loopback(), config.clone(), TICK)
            .await
            .unwrap();
        let addr = server.local_addr();
        let mut ours = TokioSoeClient::connect_to(addr, config, TICK)
            .await
            .unwrap();
        let mut theirs = sp::TokioSoeClient::connect_to(addr, ref_config_for(&CASE), TICK)
            .await
            .unwrap();
        assert_eq!(ours.recv_event().await, Some(ClientEvent::Connected));
        assert_eq!(theirs.recv_event().await, Some(sp::ClientEvent::Connected));
        // Our server reports a session open once the client's first packet after the
        // handshake arrives: say hello rather than wait for a heartbeat.
        assert!(ours.handle().enqueue_data(&b"hello"[..]));
        assert!(theirs.handle().enqueue_data(&b"hello"[..]));
        let mut opened = 0;
        while opened < 2 {
            if let Some(SocketEvent::SessionOpened { .. }) = server.recv_event().await {
                opened += 1;
            }
        }
        let kept = server.handle();
        assert!(!kept.is_stopped());
        drop(server);

        assert_eq!(
            ours.recv_event().await,
            Some(ClientEvent::Disconnected {
                reason: DisconnectReason::Application
            })
        );
        assert_eq!(ours.recv_event().await, None);
        assert!(!ours.handle().enqueue_data(&b"late"[..]));
        assert_eq!(
            theirs.recv_event().await,
            Some(sp::ClientEvent::Disconnected {
                reason: sp::DisconnectReason::Application
            })
        );
        // The driver is gone although a handle survived it.
        while !kept.is_stopped() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(!kept.enqueue_data(addr, &b"late"[..]));
        match kept.try_enqueue_data(addr, &b"late"[..]) {
            Err(SendError::Stopped(data)) => assert_eq!(&data[..], b"late"),
            other => panic!("{other:?}"),
        }
        assert!(kept.stats().await.is_none());
    })
    .await;
}

/// A server-side terminate reaches the client with its reason; the server reports
/// the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_terminate_reaches_the_client() {
    bounded("terminate", async {
        let config = our_config_for(&CASE);
        let mut server = TokioSoeServer::bind(loopback(), config.clone(), TICK)
            .await
            .unwrap();
        let mut client = TokioSoeClient::connect_to(server.local_addr(), config, TICK)
            .await
            .unwrap();
        assert_eq!(client.recv_event().await, Some(ClientEvent::Connected));
        // Our server reports a session open once the client's first packet after the
        // handshake arrives: say hello rather than wait for a heartbeat.
        assert!(client.handle().enqueue_data(&b"hello"[..]));
        let remote = match server.recv_event().await {
            Some(SocketEvent::SessionOpened { remote }) => remote,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            server.recv_event().await,
            Some(SocketEvent::DataReceived {
                remote,
                data: bytes::Bytes::from_static(b"hello"),
                channel: Channel::Reliable(0)
            })
        );
        let handle = server.handle();
        assert!(handle.enqueue_data(remote, &b"bye soon"[..]));
        assert!(handle.terminate(remote, DisconnectReason::ConnectionRefused));
        assert_eq!(
            client.recv_event().await,
            Some(ClientEvent::DataReceived {
                data: bytes::Bytes::from_static(b"bye soon"),
                channel: Channel::Reliable(0)
            })
        );
        assert_eq!(
            client.recv_event().await,
            Some(ClientEvent::Disconnected {
                reason: DisconnectReason::ConnectionRefused
            })
        );
        assert_eq!(
            server.recv_event().await,
            Some(SocketEvent::SessionClosed {
                remote,
                reason: DisconnectReason::ConnectionRefused
            })
        );
    })
    .await;
}

/// Test 5a: with a tiny command queue, `try_enqueue_data_on` hands the payload back
/// once it is full. On a current-thread runtime the driver cannot run while this
/// test does not yield, so the queue fills deterministically.
#[tokio::test(flavor = "current_thread")]
async fn full_command_queue_returns_the_payload() {
    bounded("full queue", async {
        let driver = DriverConfig {
            command_capacity: 4,
            ..DriverConfig::default()
        };
        let server = TokioSoeServer::bind_with(loopback(), our_config_for(&CASE), TICK, driver)
            .await
            .unwrap();
        let handle = server.handle();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for i in 0..4u8 {
            assert!(
                handle
                    .try_enqueue_data_on(peer, vec![i], Channel::Reliable(1))
                    .is_ok()
            );
        }
        match handle.try_enqueue_data_on(peer, vec![9, 9, 9], Channel::Reliable(1)) {
            Err(SendError::Full(data)) => assert_eq!(&data[..], [9, 9, 9]),
            other => panic!("expected Full, got {other:?}"),
        }
        assert!(!handle.enqueue_data_on(peer, vec![1], Channel::Unreliable));
        assert!(!handle.connect(peer));
        assert!(
            handle
                .try_terminate(peer, DisconnectReason::Application)
                .unwrap_err()
                .is_full()
        );
        // The async variant waits for the driver to make room.
        handle
            .enqueue_data_on_async(peer, vec![7], Channel::Reliable(0))
            .await
            .unwrap();
        // None of those had a session to go to: counted, not lost silently.
        let stats = handle.stats().await.unwrap();
        assert_eq!(stats.enqueue_refused, 5);

        server.abort();
        loop {
            match handle.try_enqueue_data_on(peer, vec![5], Channel::Reliable(0)) {
                Err(SendError::Stopped(data)) => {
                    assert_eq!(&data[..], [5]);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    })
    .await;
}

/// Test 5b: one server handle used at once from std threads (blocking and `try_`
/// calls) and from tasks; every client receives its stream complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handle_shared_by_threads_and_tasks() {
    const CLIENTS: usize = 6;
    const MESSAGES: u32 = 2_000;
    bounded("concurrent handle", async {
        let config = our_config_for(&CASE);
        let driver = DriverConfig {
            command_capacity: 256,
            ..DriverConfig::default()
        };
        let mut server = TokioSoeServer::bind_with(loopback(), config.clone(), TICK, driver)
            .await
            .unwrap();
        let addr = server.local_addr();
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(
                TokioSoeClient::connect_to(addr, config.clone(), TICK)
                    .await
                    .unwrap(),
            );
        }
        let mut remotes = Vec::new();
        for client in &mut clients {
            assert_eq!(client.recv_event().await, Some(ClientEvent::Connected));
            // Our server reports a session open once the client's first packet after the
            // handshake arrives: say hello rather than wait for a heartbeat.
            assert!(client.handle().enqueue_data(&b"hello"[..]));
        }
        while remotes.len() < CLIENTS {
            if let Some(SocketEvent::SessionOpened { remote }) = server.recv_event().await {
                remotes.push(remote);
            }
        }
        // Map each client to its remote address as the server sees it.
        let by_port: HashMap<u16, usize> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (c.local_addr().port(), i))
            .collect();
        let mut order = [0; CLIENTS];
        for (r, remote) in remotes.iter().enumerate() {
            order[by_port[&remote.port()]] = r;
        }

        let payload = |remote: usize, i: u32| {
            let mut p = format!("{remote}:{i}:").into_bytes();
            p.resize(8 + (i as usize * 31) % 1500, b'x');
            p
        };
        let handle = server.handle();
        let mut threads = Vec::new();
        let mut tasks = Vec::new();
        for (r, &remote) in remotes.iter().enumerate() {
            let handle = handle.clone();
            match r % 3 {
                // Blocking sends from a std thread.
                0 => threads.push(std::thread::spawn(move || {
                    for i in 0..MESSAGES {
                        handle
                            .enqueue_data_on_blocking(remote, payload(r, i), Channel::Reliable(2))
                            .unwrap();
                    }
                })),
                // `try_` with retry from a std thread: the payload comes back.
                1 => threads.push(std::thread::spawn(move || {
                    let mut full = 0u64;
                    for i in 0..MESSAGES {
                        let mut data = bytes::Bytes::from(payload(r, i));
                        loop {
                            match handle.try_enqueue_data_on(remote, data, Channel::Reliable(2)) {
                                Ok(()) => break,
                                Err(SendError::Full(back)) => {
                                    full += 1;
                                    data = back;
                                    std::thread::yield_now();
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                    eprintln!("thread {r}: queue full {full} times");
                })),
                // Async sends from a task.
                _ => tasks.push(tokio::spawn(async move {
                    for i in 0..MESSAGES {
                        handle
                            .enqueue_data_on_async(remote, payload(r, i), Channel::Reliable(2))
                            .await
                            .unwrap();
                    }
                })),
            }
        }
        let mut readers = Vec::new();
        for (c, mut client) in clients.into_iter().enumerate() {
            let r = order[c];
            readers.push(tokio::spawn(async move {
                for i in 0..MESSAGES {
                    match client.recv_event().await {
                        Some(ClientEvent::DataReceived { data, channel }) => {
                            assert_eq!(channel, Channel::Reliable(2));
                            assert!(data == payload(r, i), "client {c} message {i}");
                        }
                        other => panic!("client {c}: {other:?}"),
                    }
                }
                client
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        for reader in readers {
            reader.await.unwrap();
        }
        for thread in threads {
            thread.join().unwrap();
        }
        let stats = server.stats().await.unwrap();
        assert_eq!(stats.enqueue_refused, 0);
        assert_eq!(
            stats.mux.sessions.messages_enqueued,
            u64::from(MESSAGES) * CLIENTS as u64
        );
    })
    .await;
}

/// Test 6: with a tiny event queue and a consumer that stops reading for a while,
/// the driver stops reading the socket instead of dropping events: every message
/// arrives once reading resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_event_queue_applies_backpressure() {
    const PER_CHANNEL: u64 = 750;
    bounded("backpressure", async {
        let case = Case {
            per_channel: PER_CHANNEL,
            unreliable: 0,
            max_size: 4_000,
            bundle_like: true,
            ..CASE
        };
        let config = our_config_for(&case);
        let driver = DriverConfig {
            event_capacity: 4,
            ..DriverConfig::default()
        };
        let mut server = TokioSoeServer::bind_with(loopback(), config.clone(), TICK, driver)
            .await
            .unwrap();
        let mut client = TokioSoeClient::connect_to(server.local_addr(), config, TICK)
            .await
            .unwrap();
        assert_eq!(client.recv_event().await, Some(ClientEvent::Connected));
        let handle = client.handle();
        for i in 0..PER_CHANNEL {
            for ch in 0..4 {
                let data = message(ch, i, case.max_size, case.bundle_like);
                handle
                    .enqueue_data_on_async(data, Channel::Reliable(ch))
                    .await
                    .unwrap();
            }
        }
        // Let the sender fill the event queue and the socket buffer.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let mut checker = Checker::new(case);
        let mut events = Vec::new();
        while !checker.done() {
            events.clear();
            assert!(server.recv_events(&mut events, 64).await > 0);
            for event in events.drain(..) {
                match event {
                    SocketEvent::DataReceived {
                        data,
                        channel: Channel::Reliable(ch),
                        ..
                    } => checker.reliable(ch, &data),
                    SocketEvent::SessionOpened { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        let stats = server.stats().await.unwrap();
        assert!(stats.event_stalls > 0, "{stats:?}");
        assert_eq!(stats.mux.sessions.messages_delivered, 4 * PER_CHANNEL);
        let client_stats = client.stats().await.unwrap();
        assert_eq!(client_stats.enqueue_refused, 0);
        eprintln!(
            "backpressure: {} stalls, {} datagrams read; client resent {} packets",
            stats.event_stalls,
            stats.datagrams_in,
            client_stats.mux.sessions.reliable_packets_resent
        );
    })
    .await;
}

/// A client that never gets an answer reports `ConnectFail`, then stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_server_reports_connect_fail() {
    bounded("connect fail", async {
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind(loopback()).unwrap();
        let mut config = our_config_for(&CASE);
        config.default_session_params.connect_timeout = Duration::from_millis(300);
        config.default_session_params.connect_retry_interval = Duration::from_millis(50);
        let mut client = TokioSoeClient::connect_to(silent.local_addr().unwrap(), config, TICK)
            .await
            .unwrap();
        assert_eq!(
            client.recv_event().await,
            Some(ClientEvent::Disconnected {
                reason: DisconnectReason::ConnectFail
            })
        );
        assert_eq!(client.recv_event().await, None);
        assert!(client.handle().is_stopped());
    })
    .await;
}

/// A session whose queue is full (`max_pending_bytes`) holds its messages back in
/// the driver instead of dropping them; with a small command queue the senders then
/// wait. Every message arrives, in order, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_session_queue_parks_messages_in_order() {
    const PER_CHANNEL: u64 = 500;
    bounded("parking", async {
        let case = Case {
            per_channel: PER_CHANNEL,
            unreliable: 0,
            max_size: 8_000,
            bundle_like: true,
            ..CASE
        };
        let mut config = our_config_for(&case);
        config.default_session_params.max_pending_bytes = 16 << 10;
        let (server, server_handle, echo) = spawn_our_echo_server(config.clone()).await;
        let driver = DriverConfig {
            command_capacity: 32,
            ..DriverConfig::default()
        };
        let mut client = TokioSoeClient::connect_with(loopback(), server, config, TICK, driver)
            .await
            .unwrap();
        assert_eq!(client.recv_event().await, Some(ClientEvent::Connected));
        let handle = client.handle();
        let sender = tokio::spawn(async move {
            let mut full = 0;
            for i in 0..PER_CHANNEL {
                for ch in 0..4 {
                    let data = bytes::Bytes::from(message(ch, i, case.max_size, true));
                    if let Err(e) = handle.try_enqueue_data_on(data, Channel::Reliable(ch)) {
                        assert!(e.is_full());
                        full += 1;
                        handle
                            .enqueue_data_on_async(e.into_inner(), Channel::Reliable(ch))
                            .await
                            .unwrap();
                    }
                }
            }
            full
        });
        let mut checker = Checker::new(case);
        while !checker.done() {
            match client.recv_event().await {
                Some(ClientEvent::DataReceived {
                    data,
                    channel: Channel::Reliable(ch),
                }) => checker.reliable(ch, &data),
                other => panic!("unexpected {other:?}"),
            }
        }
        let full = sender.await.unwrap();
        let stats = client.stats().await.unwrap();
        let server_stats = server_handle.stats().await.unwrap();
        assert_eq!(stats.enqueue_refused + server_stats.enqueue_refused, 0);
        assert!(stats.enqueue_parked > 0, "{stats:?}");
        assert!(full > 0, "the command queue never filled");
        eprintln!(
            "parking: client parked {} and found its queue full {full} times; server parked {}",
            stats.enqueue_parked, server_stats.enqueue_parked
        );
        echo.abort();
    })
    .await;
}

/// An idle driver sleeps: it wakes for `tick_period` (or, with `Duration::ZERO`,
/// only for the multiplexer's timers), not in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_driver_sleeps() {
    bounded("idle", async {
        for (tick, most) in [(Duration::from_millis(10), 80), (Duration::ZERO, 20)] {
            let config = our_config_for(&CASE);
            let mut server = TokioSoeServer::bind(loopback(), config.clone(), tick)
                .await
                .unwrap();
            let mut client = TokioSoeClient::connect_to(server.local_addr(), config, tick)
                .await
                .unwrap();
            assert_eq!(client.recv_event().await, Some(ClientEvent::Connected));
            assert!(client.handle().enqueue_data(&b"hello"[..]));
            assert!(matches!(
                server.recv_event().await,
                Some(SocketEvent::SessionOpened { .. })
            ));
            // Let the handshake's acks and timers settle.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let server_before = server.stats().await.unwrap().turns;
            let client_before = client.stats().await.unwrap().turns;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let server_turns = server.stats().await.unwrap().turns - server_before;
            let client_turns = client.stats().await.unwrap().turns - client_before;
            eprintln!("tick {tick:?}: 500 ms idle = {server_turns} server turns, {client_turns} client turns");
            assert!(server_turns <= most, "server: {server_turns} turns");
            assert!(client_turns <= most, "client: {client_turns} turns");
        }
    })
    .await;
}

/// An echo consumer that waits for room in the command queue while the server's
/// session queues are full and its event queue is full does not deadlock the
/// driver: tiny queues everywhere, every message still comes back in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_tiny_queues_does_not_deadlock() {
    const PER_CHANNEL: u64 = 400;
    bounded("tiny queues", async {
        let case = Case {
            per_channel: PER_CHANNEL,
            unreliable: 0,
            max_size: 3_000,
            bundle_like: true,
            ..CASE
        };
        let mut server_config = our_config_for(&case);
        server_config.default_session_params.max_pending_bytes = 4 << 10;
        let tiny = DriverConfig {
            command_capacity: 2,
            event_capacity: 2,
            ..DriverConfig::default()
        };
        let mut server = TokioSoeServer::bind_with(loopback(), server_config, TICK, tiny)
            .await
            .unwrap();
        let addr = server.local_addr();
        let server_handle = server.handle();
        let echo = tokio::spawn(async move {
            let handle = server.handle();
            while let Some(event) = server.recv_event().await {
                if let SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } = event
                {
                    handle
                        .enqueue_data_on_async(remote, data, channel)
                        .await
                        .unwrap();
                }
            }
        });
        let mut client = TokioSoeClient::connect_to(addr, our_config_for(&case), TICK)
            .await
            .unwrap();
        assert_eq!(client.recv_event().await, Some(ClientEvent::Connected));
        let handle = client.handle();
        let mut pacer = Pacer::new(case, None);
        let mut checker = Checker::new(case);
        pacer.top_up(&checker, |channel, data| {
            let channel = channel.map_or(Channel::Unreliable, Channel::Reliable);
            handle.try_enqueue_data_on(data, channel).unwrap();
        });
        while !checker.done() {
            let event = tokio::time::timeout(Duration::from_secs(10), client.recv_event())
                .await
                .unwrap_or_else(|_| panic!("stuck at {:?}", checker.next));
            match event {
                Some(ClientEvent::DataReceived {
                    data,
                    channel: Channel::Reliable(ch),
                }) => checker.reliable(ch, &data),
                other => panic!("unexpected {other:?}"),
            }
        }
        let stats = server_handle.stats().await.unwrap();
        eprintln!(
            "tiny queues: server parked {}, {} event stalls",
            stats.enqueue_parked, stats.event_stalls
        );
        assert_eq!(stats.enqueue_refused, 0);
        echo.abort();
    })
    .await;
}

/// A server on a socket bound by the caller (`from_std`), with a huge tick period:
/// the multiplexer's own timers drive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_from_std_socket() {
    bounded("from_std", async {
        let config = our_config_for(&CASE);
        let socket = std::net::UdpSocket::bind(loopback()).unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = TokioSoeServer::from_std(
            socket,
            config.clone(),
            Duration::MAX,
            DriverConfig::default(),
        )
        .unwrap();
        assert_eq!(server.local_addr(), addr);
        let mut client = TokioSoeClient::connect_to(addr, config, Duration::MAX)
            .await
            .unwrap();
        assert_eq!(client.recv_event().await, Some(ClientEvent::Connected));
        assert!(
            client
                .handle()
                .enqueue_data_on(&b"ping"[..], Channel::Reliable(3))
        );
        let remote = loop {
            match server.recv_event().await {
                Some(SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                }) => {
                    assert_eq!((&data[..], channel), (&b"ping"[..], Channel::Reliable(3)));
                    break remote;
                }
                Some(SocketEvent::SessionOpened { .. }) => {}
                other => panic!("{other:?}"),
            }
        };
        assert!(server.handle().enqueue_data(remote, &b"pong"[..]));
        assert_eq!(
            client.recv_event().await,
            Some(ClientEvent::DataReceived {
                data: bytes::Bytes::from_static(b"pong"),
                channel: Channel::Reliable(0)
            })
        );
    })
    .await;
}

/// Whichever side vanishes without a Disconnect (its port closed), the other
/// learns it from ICMP port unreachables and ends the session with `IcmpError`
/// once they outlast the grace: in about a second, not at the 30 s inactivity
/// timeout. The client's connected socket reports the error itself; the
/// server's reads its error queue (`IP_RECVERR`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_peer_ends_the_session_with_icmp_error() {
    bounded("icmp", async {
        let mut config = our_config_for(&CASE);
        config.default_session_params.unreachable_grace = Some(Duration::from_millis(300));
        let inactivity = config.default_session_params.inactivity_timeout;

        // The server goes away under a client.
        let server = TokioSoeServer::bind(loopback(), config.clone(), TICK)
            .await
            .unwrap();
        let mut client = TokioSoeClient::connect_to(server.local_addr(), config.clone(), TICK)
            .await
            .unwrap();
        assert_eq!(client.recv_event().await, Some(ClientEvent::Connected));
        server.abort();
        while !server.handle().is_stopped() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(server);
        let start = tokio::time::Instant::now();
        assert!(client.handle().enqueue_data(&b"anyone?"[..]));
        assert_eq!(
            client.recv_event().await,
            Some(ClientEvent::Disconnected {
                reason: DisconnectReason::IcmpError
            })
        );
        assert!(start.elapsed() < inactivity / 4, "{:?}", start.elapsed());

        // A client goes away under the server.
        let mut server = TokioSoeServer::bind(loopback(), config.clone(), TICK)
            .await
            .unwrap();
        let client = TokioSoeClient::connect_to(server.local_addr(), config, TICK)
            .await
            .unwrap();
        assert!(client.handle().enqueue_data(&b"hello"[..]));
        let remote = match server.recv_event().await {
            Some(SocketEvent::SessionOpened { remote }) => remote,
            other => panic!("{other:?}"),
        };
        client.abort();
        while !client.handle().is_stopped() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(client);
        let start = tokio::time::Instant::now();
        assert!(server.handle().enqueue_data(remote, &b"anyone?"[..]));
        loop {
            match server.recv_event().await {
                Some(SocketEvent::SessionClosed { remote: r, reason }) => {
                    assert_eq!((r, reason), (remote, DisconnectReason::IcmpError));
                    break;
                }
                Some(_) => {}
                None => panic!("server stopped"),
            }
        }
        assert!(start.elapsed() < inactivity / 4, "{:?}", start.elapsed());
        let stats = server.stats().await.unwrap();
        assert!(stats.icmp_unreachable >= 2, "{stats:?}");
    })
    .await;
}

/// Draining the Tokio server: the live session is still served, a new client is
/// refused at once with `ConnectionRefused`, and `drain` resolves when the last
/// session has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_newcomers_and_resolves_when_sessions_end() {
    bounded("drain", async {
        let config = our_config_for(&CASE);
        let mut server = TokioSoeServer::bind(loopback(), config.clone(), TICK)
            .await
            .unwrap();
        let addr = server.local_addr();
        let mut client = TokioSoeClient::connect_to(addr, config.clone(), TICK)
            .await
            .unwrap();
        assert_eq!(client.recv_event().await, Some(ClientEvent::Connected));
        assert!(client.handle().enqueue_data(&b"hello"[..]));
        let remote = match server.recv_event().await {
            Some(SocketEvent::SessionOpened { remote }) => remote,
            other => panic!("{other:?}"),
        };
        let handle = server.handle();
        let drain = tokio::spawn(async move { handle.drain().await });

        let mut newcomer = TokioSoeClient::connect_to(addr, config, TICK)
            .await
            .unwrap();
        let mut refused = None;
        while let Some(event) = newcomer.recv_event().await {
            if let ClientEvent::Disconnected { reason } = event {
                refused = Some(reason);
            }
        }
        assert_eq!(refused, Some(DisconnectReason::ConnectionRefused));

        // Still served.
        server.handle().enqueue_data(remote, &b"still here"[..]);
        loop {
            match client.recv_event().await {
                Some(ClientEvent::DataReceived { data, .. }) if &data[..] == b"still here" => {
                    break;
                }
                Some(_) => {}
                None => panic!("client stopped"),
            }
        }
        assert!(!drain.is_finished());
        assert!(client.handle().terminate(DisconnectReason::Application));
        let drained = tokio::time::timeout(Duration::from_secs(10), drain).await;
        assert!(drained.expect("drained promptly").unwrap());
        loop {
            match server.recv_event().await {
                Some(SocketEvent::SessionClosed { remote: r, .. }) if r == remote => break,
                Some(_) => {}
                None => panic!("no SessionClosed"),
            }
        }
    })
    .await;
}
