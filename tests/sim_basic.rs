#![cfg(feature = "sim")]
//! Session scenarios on the simulated network: handshake variants, timeouts,
//! heartbeats, channels, termination, remapping, limits and coalescing.
#![allow(clippy::disallowed_methods)] // wall-clock checks of "takes milliseconds"

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use soe_uring::protocol::Packet;
use soe_uring::protocol::RemapConnection;
use soe_uring::sim::{LinkConfig, Sim};
use soe_uring::*;

fn config(seed: u64) -> SocketConfig {
    let mut c = SocketConfig {
        rng_seed: Some(seed),
        ..SocketConfig::default()
    };
    c.default_session_params.application_protocol = "Test".into();
    c
}

/// A client and a server with an open session (the server has seen a packet).
fn pair(
    link: LinkConfig,
    client_cfg: SocketConfig,
    server_cfg: SocketConfig,
) -> (Sim, usize, usize) {
    let mut sim = Sim::new(1, link);
    let server = sim.add_node(server_cfg);
    let client = sim.add_node(client_cfg);
    sim.connect(client, server);
    assert!(
        sim.run_until(|s| s.node(client).opened()),
        "client never opened"
    );
    let to = sim.addr(server);
    sim.node_mut(client).mux.enqueue_data(&to, b"hi").unwrap();
    sim.pump(client);
    assert!(
        sim.run_until(|s| s.node(server).opened()),
        "server never opened"
    );
    (sim, client, server)
}

fn send(sim: &mut Sim, from: usize, to: usize, data: &[u8], channel: Channel) {
    let to = sim.addr(to);
    sim.node_mut(from)
        .mux
        .enqueue_data_on(&to, data, channel)
        .unwrap();
    sim.pump(from);
}

#[test]
fn handshake_and_echo() {
    let (mut sim, client, server) = pair(LinkConfig::default(), config(2), config(1));
    assert!(sim.run_until(|s| s.node(server).received().len() == 1));
    send(&mut sim, server, client, b"world", Channel::Reliable(0));
    assert!(sim.run_until(|s| !s.node(client).received().is_empty()));
    assert_eq!(
        sim.node(client).received(),
        [(b"world".to_vec(), Channel::Reliable(0))]
    );
}

#[test]
fn idle_timeout_of_30_seconds_takes_milliseconds() {
    let mut c = config(2);
    c.default_session_params.heartbeat_after = Duration::ZERO;
    let wall = Instant::now();
    let (mut sim, client, server) = pair(LinkConfig::default(), c, config(1));
    let start = sim.elapsed();
    assert!(
        sim.run_until(|s| s.node(client).closed().is_some() && s.node(server).closed().is_some())
    );
    assert_eq!(sim.node(client).closed(), Some(DisconnectReason::Timeout));
    assert_eq!(sim.node(server).closed(), Some(DisconnectReason::Timeout));
    let idle = sim.elapsed() - start;
    assert!(
        idle >= Duration::from_secs(30) && idle < Duration::from_secs(31),
        "{idle:?}"
    );
    assert!(wall.elapsed() < Duration::from_secs(2));
    assert_eq!(sim.node(client).mux.session_count(), 0);
    assert_eq!(sim.node(server).mux.session_count(), 0);
}

#[test]
fn heartbeats_keep_an_idle_session_alive_on_a_lossy_link() {
    let (mut sim, client, server) = pair(LinkConfig::lossy(0.3), config(2), config(1));
    sim.run_for(Duration::from_secs(600));
    assert_eq!(sim.node(client).closed(), None);
    assert_eq!(sim.node(server).closed(), None);
    let beats = sim.node(server).mux.stats().sessions.datagrams_received;
    // About one heartbeat per 25 s plus retries: a handful, not one per tick.
    assert!((20..200).contains(&beats), "{beats} datagrams");
}

#[test]
fn client_retries_a_lost_session_request() {
    let mut sim = Sim::new(
        3,
        LinkConfig {
            loss: 1.0,
            ..LinkConfig::default()
        },
    );
    let server = sim.add_node(config(1));
    let client = sim.add_node(config(2));
    sim.connect(client, server);
    sim.run_for(Duration::from_millis(2500));
    assert!(!sim.node(client).opened());
    sim.set_link(LinkConfig::default());
    assert!(sim.run_until(|s| s.node(client).opened()));
    let requests = sim.node(client).mux.stats().sessions.datagrams_sent;
    assert!(requests >= 3, "{requests}");
}

#[test]
fn connect_fails_after_the_connect_timeout() {
    let mut sim = Sim::new(3, LinkConfig::default());
    let server = sim.add_node(config(1));
    let mut other = config(2);
    other.default_session_params.application_protocol = "Other".into();
    let client = sim.add_node(other);
    sim.connect(client, server);
    assert!(sim.run_until(|s| s.node(client).closed().is_some()));
    assert_eq!(
        sim.node(client).closed(),
        Some(DisconnectReason::ConnectFail)
    );
    assert_eq!(sim.elapsed(), Duration::from_secs(10));
    assert!(sim.node(server).mux.stats().refused_protocol_mismatch >= 10);
    assert!(sim.node(server).events.is_empty());
}

#[test]
fn repeated_requests_get_the_same_response() {
    let mut c = SocketConfig {
        rng_seed: Some(5),
        ..SocketConfig::default()
    };
    c.default_session_params.application_protocol = "Test".into();
    let mut server = SoeMultiplexer::<SocketAddr>::new(c);
    let from: SocketAddr = "10.0.0.9:9".parse().unwrap();
    let request = {
        let p = Packet::SessionRequest(soe_uring::protocol::SessionRequest {
            protocol_version: 3,
            session_id: 77,
            udp_length: 512,
            application_protocol: Some(b"Test"),
        });
        let mut b = vec![0; p.encoded_len()];
        p.emit(&mut b);
        b
    };
    let now = Instant::now();
    let mut responses = Vec::new();
    for i in 0..3 {
        server.process_incoming(from, &request, now + Duration::from_millis(i));
        server.run_tick(now + Duration::from_millis(i));
        responses.extend(server.take_outgoing());
    }
    assert_eq!(responses.len(), 3);
    assert!(responses.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(responses[0].1.len(), 21);
    assert_eq!(server.session_count(), 1);
}

#[test]
fn client_ignores_a_response_for_another_session_id() {
    let now = Instant::now();
    let mut client = SoeMultiplexer::<SocketAddr>::new(config(4));
    let server: SocketAddr = "10.0.0.1:1".parse().unwrap();
    client.connect(server, now).unwrap();
    let id = client.session(&server).unwrap().session_id();
    let response = |session_id| {
        let p = Packet::SessionResponse(soe_uring::protocol::SessionResponse {
            session_id,
            crc_seed: 1,
            crc_length: 2,
            compression: 0,
            encryption_pass_1: 0,
            udp_length: 512,
            protocol_version: Some(3),
        });
        let mut b = vec![0; p.encoded_len()];
        p.emit(&mut b);
        b
    };
    client.process_incoming(server, response(id.wrapping_add(1)), now);
    assert_eq!(
        client.session(&server).unwrap().state(),
        SessionState::Negotiating
    );
    client.process_incoming(server, response(id), now);
    assert_eq!(
        client.session(&server).unwrap().state(),
        SessionState::Running
    );
    assert_eq!(
        client.poll_event(),
        Some(SocketEvent::SessionOpened { remote: server })
    );
}

#[test]
fn v2_handshake_with_unnamed_protocol() {
    let mut c = config(2);
    c.default_session_params.application_protocol.clear();
    c.default_session_params.protocol_version = 2;
    let mut s = config(1);
    s.default_session_params.application_protocol.clear();
    let (mut sim, client, server) = pair(LinkConfig::default(), c, s);
    send(&mut sim, server, client, b"v2 works", Channel::Reliable(1));
    assert!(sim.run_until(|s| !s.node(client).received().is_empty()));
    // A named server refuses unnamed requests.
    let mut sim = Sim::new(2, LinkConfig::default());
    let named = sim.add_node(config(1));
    let mut c = config(2);
    c.default_session_params.application_protocol.clear();
    c.default_session_params.protocol_version = 2;
    let client = sim.add_node(c);
    sim.connect(client, named);
    sim.run_for(Duration::from_secs(2));
    assert!(!sim.node(client).opened());
}

#[test]
fn terminate_notifies_the_peer_with_the_reason() {
    let (mut sim, client, server) = pair(LinkConfig::default(), config(2), config(1));
    let to = sim.addr(server);
    let now = sim.now();
    sim.node_mut(client)
        .mux
        .terminate(&to, DisconnectReason::Application, now);
    sim.pump(client);
    assert_eq!(
        sim.node(client).closed(),
        Some(DisconnectReason::Application)
    );
    assert!(sim.run_until(|s| s.node(server).closed().is_some()));
    assert_eq!(
        sim.node(server).closed(),
        Some(DisconnectReason::Application)
    );
    assert_eq!(sim.node(server).mux.session_count(), 0);
    assert_eq!(
        sim.node(server)
            .mux
            .stats()
            .closed_by(DisconnectReason::Application),
        1
    );
}

#[test]
fn pending_data_is_flushed_before_the_disconnect() {
    let (mut sim, client, server) = pair(LinkConfig::default(), config(2), config(1));
    let to = sim.addr(server);
    for i in 0..50u8 {
        sim.node_mut(client)
            .mux
            .enqueue_data(&to, &[i; 30])
            .unwrap();
    }
    let now = sim.now();
    sim.node_mut(client)
        .mux
        .terminate(&to, DisconnectReason::Application, now);
    sim.pump(client);
    assert!(sim.run_until(|s| s.node(server).closed().is_some()));
    assert_eq!(sim.node(server).received().len(), 51);
}

#[test]
fn unreliable_ordered_and_promoted_messages() {
    let (mut sim, client, server) = pair(LinkConfig::default(), config(2), config(1));
    send(
        &mut sim,
        client,
        server,
        b"\x00starts with zero",
        Channel::Unreliable,
    );
    send(&mut sim, client, server, &[0x42; 2000], Channel::Unreliable);
    send(&mut sim, client, server, b"ordered", Channel::Ordered);
    assert!(sim.run_until(|s| s.node(server).received().len() == 4));
    let got = sim.node(server).received();
    assert!(got.contains(&(b"\x00starts with zero".to_vec(), Channel::Unreliable)));
    // Too large for a datagram: promoted to reliable channel 0.
    assert!(got.contains(&(vec![0x42; 2000], Channel::Reliable(0))));
    assert!(got.contains(&(b"ordered".to_vec(), Channel::Ordered)));
}

#[test]
fn stale_ordered_packets_are_dropped() {
    let (mut sim, client, server) = pair(
        LinkConfig {
            reorder: 0.5,
            reorder_delay: Duration::from_millis(40),
            ..LinkConfig::default()
        },
        config(2),
        config(1),
    );
    for i in 0..200u16 {
        send(&mut sim, client, server, &i.to_be_bytes(), Channel::Ordered);
        sim.run_for(Duration::from_millis(1));
    }
    sim.run_for(Duration::from_secs(1));
    let stamps: Vec<u16> = sim
        .node(server)
        .received()
        .into_iter()
        .filter(|(_, c)| *c == Channel::Ordered)
        .map(|(d, _)| u16::from_be_bytes([d[0], d[1]]))
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "ordered delivery");
    let dropped = sim.node(server).mux.stats().sessions.stale_ordered_packets;
    assert!(dropped > 0);
    assert_eq!(stamps.len() as u64 + dropped, 200);
}

#[test]
fn every_reliable_channel_is_independent() {
    let (mut sim, client, server) = pair(LinkConfig::lossy(0.1), config(2), config(1));
    for i in 0..400u32 {
        let ch = (i % 4) as usize;
        send(
            &mut sim,
            client,
            server,
            &i.to_be_bytes(),
            Channel::Reliable(ch),
        );
    }
    assert!(sim.run_until(|s| s.node(server).received().len() == 401));
    for ch in 0..4 {
        let seq: Vec<u32> = sim
            .node(server)
            .received()
            .into_iter()
            .filter(|(d, c)| *c == Channel::Reliable(ch) && d.len() == 4)
            .map(|(d, _)| u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
            .collect();
        let expected: Vec<u32> = (0..400).filter(|i| i % 4 == ch as u32).collect();
        assert_eq!(seq, expected);
    }
}

/// Sends `total` 4-byte counters on channel 0 without coalescing (one packet per
/// message) and checks they arrive in order. Returns the receiver's ack count.
fn stream_counters(link: LinkConfig, total: u32) -> u64 {
    let mut c = config(2);
    c.default_session_params.coalesce = false;
    let (mut sim, client, server) = pair(link, c, config(1));
    let to = sim.addr(server);
    let mut sent = 0u32;
    let mut next = 0u32;
    while next < total {
        while sent < total
            && sim
                .node(client)
                .mux
                .session(&to)
                .is_some_and(|s| s.pending_bytes() < 4096)
        {
            sim.node_mut(client)
                .mux
                .enqueue_data(&to, &sent.to_be_bytes())
                .unwrap();
            sent += 1;
        }
        sim.pump(client);
        assert!(sim.step());
        for e in std::mem::take(&mut sim.node_mut(server).events) {
            match e {
                SocketEvent::DataReceived { data, .. } if data.len() == 4 => {
                    assert_eq!(
                        u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
                        next
                    );
                    next += 1;
                }
                SocketEvent::SessionClosed { reason, .. } => panic!("{reason:?}"),
                _ => {}
            }
        }
    }
    let client_stats = sim.node(client).mux.stats().sessions;
    assert!(client_stats.reliable_packets_sent >= u64::from(total));
    sim.node(server).mux.stats().sessions.acks_sent
}

#[test]
fn sequence_numbers_wrap_several_times() {
    let total = 4 * 65_536 + 1_000;
    // Cumulative acks stay batched across the wraps (the references' truncated
    // comparison sent one per tick after the first wrap).
    let acks = stream_counters(LinkConfig::default(), total);
    assert!(
        acks < u64::from(total) / 8,
        "{acks} acks for {total} packets"
    );
    // With loss, every packet behind a hole is acknowledged selectively.
    stream_counters(LinkConfig::lossy(0.02), total);
}

#[test]
fn remap_moves_a_session_to_a_new_port_of_the_same_host() {
    let (mut sim, client, server) = pair(LinkConfig::default(), config(2), config(1));
    let old = sim.addr(client);
    let session = sim.node(server).mux.session(&old).unwrap();
    let (id, seed) = (session.session_id(), session.crc_seed());
    let remap = |sid, seed| {
        let p = Packet::RemapConnection(RemapConnection {
            session_id: sid,
            crc_seed: seed,
        });
        let mut b = vec![0; p.encoded_len()];
        p.emit(&mut b);
        b
    };
    let now = sim.now();
    let mux = &mut sim.node_mut(server).mux;
    let other_host: SocketAddr = "10.9.9.9:20001".parse().unwrap();
    mux.process_incoming(other_host, remap(id, seed), now);
    let wrong_seed: SocketAddr = SocketAddr::new(old.ip(), 40_000);
    mux.process_incoming(wrong_seed, remap(id, seed ^ 1), now);
    assert!(mux.session(&old).is_some());
    assert_eq!(mux.stats().remaps_refused, 2);
    let new = SocketAddr::new(old.ip(), 40_001);
    mux.process_incoming(new, remap(id, seed), now);
    assert!(mux.session(&old).is_none());
    assert!(mux.session(&new).is_some());
    assert_eq!(mux.stats().remaps, 1);
    assert!(
        mux.take_events()
            .contains(&SocketEvent::SessionRemapped { old, new })
    );
    // Port remaps can be switched off; address remaps on.
    let mut s = config(1);
    s.allow_port_remaps = false;
    s.allow_address_remaps = true;
    let (mut sim, client, server) = pair(LinkConfig::default(), config(2), s);
    let old = sim.addr(client);
    let session = sim.node(server).mux.session(&old).unwrap();
    let (id, seed) = (session.session_id(), session.crc_seed());
    let now = sim.now();
    let mux = &mut sim.node_mut(server).mux;
    mux.process_incoming(SocketAddr::new(old.ip(), 40_001), remap(id, seed), now);
    assert!(mux.session(&old).is_some());
    mux.process_incoming(other_host, remap(id, seed), now);
    assert!(mux.session(&other_host).is_some());
}

/// The client's NAT mapping moves in the middle of a transfer both ways: the
/// server answers the new address with UnknownSender, the client proves it owns
/// the session, and every message arrives, in order, with nothing closed.
#[test]
fn a_client_that_moves_mid_transfer_loses_nothing() {
    for new_host in [false, true] {
        let mut s = config(1);
        s.allow_address_remaps = new_host;
        let (mut sim, client, server) = pair(LinkConfig::default(), config(2), s);
        let to = sim.addr(server);
        let old = sim.addr(client);
        sim.node_mut(server).events.clear(); // the opening "hi"
        let mut sent = 0u32;
        let mut echoed = Vec::new();
        let mut remapped = None;
        for round in 0..400u32 {
            if round == 150 {
                let new = if new_host {
                    "10.7.7.7:31000".parse().unwrap()
                } else {
                    SocketAddr::new(old.ip(), old.port() + 1000)
                };
                sim.set_addr(client, new);
                remapped = Some(new);
            }
            for _ in 0..3 {
                let msg = sent.to_be_bytes().repeat(1 + (sent % 90) as usize);
                if sim.node_mut(client).mux.enqueue_data(&to, &msg).is_ok() {
                    sent += 1;
                }
            }
            sim.pump(client);
            sim.run_for(Duration::from_millis(5));
            for e in std::mem::take(&mut sim.node_mut(server).events) {
                match e {
                    SocketEvent::DataReceived {
                        remote,
                        data,
                        channel,
                    } => sim
                        .node_mut(server)
                        .mux
                        .enqueue_data_on(&remote, &data, channel)
                        .unwrap(),
                    SocketEvent::SessionRemapped { old: o, new } => {
                        assert_eq!((o, Some(new)), (old, remapped));
                    }
                    SocketEvent::SessionClosed { reason, .. } => panic!("closed: {reason:?}"),
                    SocketEvent::SessionOpened { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            sim.pump(server);
            for e in std::mem::take(&mut sim.node_mut(client).events) {
                match e {
                    SocketEvent::DataReceived { data, .. } => {
                        echoed.push(u32::from_be_bytes(data[..4].try_into().unwrap()))
                    }
                    SocketEvent::SessionClosed { reason, .. } => {
                        panic!("client closed: {reason:?}")
                    }
                    _ => {}
                }
            }
        }
        sim.run_for(Duration::from_secs(3));
        for e in std::mem::take(&mut sim.node_mut(client).events) {
            if let SocketEvent::DataReceived { data, .. } = e {
                echoed.push(u32::from_be_bytes(data[..4].try_into().unwrap()));
            }
        }
        assert_eq!(
            echoed,
            (0..sent).collect::<Vec<_>>(),
            "new host: {new_host}"
        );
        let stats = sim.node(server).mux.stats();
        assert_eq!(stats.remaps, 1, "{stats:?}");
        assert!(sim.node(server).mux.session(&remapped.unwrap()).is_some());
    }
}

/// A server that allows no remaps still answers UnknownSender; the client gives
/// up after a few refused attempts, long before its inactivity timeout.
#[test]
fn a_client_that_cannot_remap_fails_fast() {
    let mut s = config(1);
    s.allow_port_remaps = false;
    let (mut sim, client, server) = pair(LinkConfig::default(), config(2), s);
    let old = sim.addr(client);
    sim.set_addr(client, SocketAddr::new(old.ip(), old.port() + 1));
    let start = sim.elapsed();
    send(&mut sim, client, server, b"hello?", Channel::Reliable(0));
    assert!(sim.run_until(|s| s.node(client).closed().is_some()));
    assert_eq!(
        sim.node(client).closed(),
        Some(DisconnectReason::UnreachableConnection)
    );
    assert!(
        sim.elapsed() - start < Duration::from_secs(5),
        "{:?}",
        sim.elapsed() - start
    );
}

#[test]
fn unknown_sender_reply_ends_the_peers_session() {
    let s = config(1);
    let (mut sim, client, server) = pair(LinkConfig::default(), config(2), s.clone());
    // The server forgets everything (a restart).
    sim.node_mut(server).mux = SoeMultiplexer::new(s);
    send(
        &mut sim,
        client,
        server,
        b"anyone there?",
        Channel::Reliable(0),
    );
    assert!(sim.run_until(|s| s.node(client).closed().is_some()));
    assert_eq!(
        sim.node(client).closed(),
        Some(DisconnectReason::UnreachableConnection)
    );
}

#[test]
fn session_limit_refuses_extra_requests() {
    let mut sim = Sim::new(1, LinkConfig::default());
    let mut s = config(1);
    s.max_sessions = 2;
    let server = sim.add_node(s);
    let clients: Vec<usize> = (0..3).map(|i| sim.add_node(config(10 + i))).collect();
    for &c in &clients {
        sim.connect(c, server);
    }
    sim.run_for(Duration::from_millis(500));
    let open = clients.iter().filter(|&&c| sim.node(c).opened()).count();
    assert_eq!(open, 2);
    assert!(sim.node(server).mux.stats().refused_session_limit >= 1);
}

#[test]
fn full_queue_hands_the_payload_back() {
    let mut c = config(2);
    c.default_session_params.max_pending_bytes = 10_000;
    let (mut sim, client, server) = pair(LinkConfig::default(), c, config(1));
    // A dead link from now on: nothing drains the queue.
    sim.set_link(LinkConfig {
        loss: 1.0,
        ..LinkConfig::default()
    });
    sim.run_for(Duration::from_millis(100));
    let to = sim.addr(server);
    let mux = &mut sim.node_mut(client).mux;
    let mut accepted = 0;
    let result = loop {
        match mux.enqueue_data(&to, &[7; 1000]) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(result, EnqueueError::QueueFull);
    // The cap counts memory: each message's bytes, 5 of overhead, and the queue's
    // spare capacity (it grows by at most half its length at a time). Ten messages
    // would need 10 050 even without spare capacity.
    assert!((7..=9).contains(&accepted), "{accepted}");
    assert!(mux.session(&to).unwrap().pending_bytes() <= 10_000);
    assert_eq!(
        mux.enqueue_data(&to, &[7; 9_996]),
        Err(EnqueueError::TooLarge)
    );
    assert_eq!(mux.enqueue_data(&to, &[]), Err(EnqueueError::Empty));
    assert_eq!(
        mux.enqueue_data_on(&to, b"x", Channel::Reliable(4)),
        Err(EnqueueError::InvalidChannel)
    );
    let nobody: SocketAddr = "1.2.3.4:5".parse().unwrap();
    assert_eq!(
        mux.enqueue_data(&nobody, b"x"),
        Err(EnqueueError::NoSession)
    );
}

#[test]
fn echo_with_coalescing_sends_few_datagrams_per_message() {
    let run = |coalesce: bool| -> f64 {
        let mut c = config(2);
        c.default_session_params.coalesce = coalesce;
        let mut s = config(1);
        s.default_session_params.coalesce = coalesce;
        let (mut sim, client, server) = pair(LinkConfig::default(), c, s);
        let to = sim.addr(server);
        let start = sim.node(client).mux.stats().sessions.datagrams_sent
            + sim.node(server).mux.stats().sessions.datagrams_sent;
        let mut echoed = 0usize;
        for _ in 0..50 {
            for i in 0..32u8 {
                sim.node_mut(client)
                    .mux
                    .enqueue_data(&to, &[i; 64])
                    .unwrap();
            }
            sim.pump(client);
            let target = echoed + 32;
            while echoed < target {
                assert!(sim.step());
                for e in std::mem::take(&mut sim.node_mut(server).events) {
                    if let SocketEvent::DataReceived {
                        remote,
                        data,
                        channel,
                    } = e
                    {
                        sim.node_mut(server)
                            .mux
                            .enqueue_data_on(&remote, &data, channel)
                            .unwrap();
                    }
                }
                sim.pump(server);
                echoed += std::mem::take(&mut sim.node_mut(client).events)
                    .iter()
                    .filter(|e| matches!(e, SocketEvent::DataReceived { .. }))
                    .count();
            }
        }
        let end = sim.node(client).mux.stats().sessions.datagrams_sent
            + sim.node(server).mux.stats().sessions.datagrams_sent;
        (end - start) as f64 / echoed as f64
    };
    let with = run(true);
    let without = run(false);
    assert!(
        with < 0.5, // ~7 messages of 64 bytes per 512-byte datagram each way: 2/7 is the floor
        "{with} datagrams per echoed message with coalescing"
    );
    assert!(
        without > 1.5,
        "{without} datagrams per echoed message without"
    );
}

#[test]
fn compression_shrinks_compressible_traffic() {
    let bytes = |compression: bool| {
        let mut s = config(1);
        s.default_session_params.is_compression_enabled = compression;
        let (mut sim, client, server) = pair(LinkConfig::default(), config(2), s);
        let text = b"all work and no play makes jack a dull boy. ".repeat(10);
        for _ in 0..100 {
            send(&mut sim, client, server, &text, Channel::Reliable(0));
        }
        assert!(sim.run_until(|s| s.node(server).received().len() == 101));
        assert!(
            sim.node(server).received()[1..]
                .iter()
                .all(|(d, _)| *d == text)
        );
        sim.node(client).mux.stats().sessions.bytes_sent
    };
    let plain = bytes(false);
    let packed = bytes(true);
    assert!(packed * 3 < plain, "{packed} vs {plain}");
}

#[test]
fn connecting_to_self_is_detected() {
    let mut sim = Sim::new(1, LinkConfig::default());
    let node = sim.add_node(config(1));
    sim.connect(node, node);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        sim.node(node).closed(),
        Some(DisconnectReason::ConnectingToSelf)
    );
}

#[test]
fn net_status_requests_are_answered() {
    let (mut sim, client, server) = pair(LinkConfig::default(), config(2), config(1));
    let _ = client;
    let session = sim.node(server).mux.session(&sim.addr(client)).unwrap();
    let crc = soe_uring::protocol::Crc32::new(session.crc_seed());
    let request = Packet::NetStatusRequest(soe_uring::protocol::NetStatusRequest {
        timestamp: 0xFB5C,
        our_sent: 2,
        our_received: 1,
        ..Default::default()
    });
    let mut datagram = vec![0; request.encoded_len() + 2];
    request.emit(&mut datagram);
    crc.append(&mut datagram, request.encoded_len(), 2);
    let now = sim.now();
    let from = sim.addr(client);
    let mux = &mut sim.node_mut(server).mux;
    mux.consume_outgoing(usize::MAX);
    mux.process_incoming(from, &datagram, now);
    mux.run_tick(now);
    let (_, reply) = mux.outgoing(0);
    let body = crc.verify(reply, 2).expect("valid CRC");
    let Ok(Packet::NetStatusResponse(r)) = Packet::parse(body) else {
        panic!("{reply:02x?}")
    };
    assert_eq!((r.timestamp, r.your_sent, r.your_received), (0xFB5C, 2, 1));
}

/// What a reader that takes one length byte (h1emu-core, UdpLibrary, EQEmu) makes of
/// a cooked packet: `Err` where it would misread it. Checks multi-packet items and
/// the item lengths of data bundles inside reliable packets, recursively.
fn one_byte_reader(packet: &[u8]) -> Result<(), String> {
    match packet {
        [0, 0x03, body @ ..] => {
            let mut rest = body;
            while !rest.is_empty() {
                let len = usize::from(rest[0]);
                let item = rest
                    .get(1..1 + len)
                    .ok_or_else(|| format!("item of {len} B runs past the end"))?;
                if item.len() < 2 && item.first() == Some(&0) {
                    return Err("item too short".into());
                }
                one_byte_reader(item)?;
                rest = &rest[1 + len..];
            }
            Ok(())
        }
        [0, 0x09..=0x0C, _, _, 0, 0x19, items @ ..] => {
            let mut rest = items;
            while !rest.is_empty() {
                let len = usize::from(rest[0]);
                if len == 0xFF {
                    return Err("bundle item with a long length".into());
                }
                rest = rest
                    .get(1 + len..)
                    .ok_or_else(|| format!("bundle item of {len} B runs past the end"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Echoes messages of 1 B to 2 kB (fragments, full-size packets, bundles) with
/// `params` on both sides; returns the datagrams both sides sent, CRC removed.
fn echo_capture(multi_length: MultiLength) -> (Vec<Vec<u8>>, f64) {
    let mut c = config(2);
    c.default_session_params.multi_length = multi_length;
    let mut s = config(1);
    s.default_session_params.multi_length = multi_length;
    let (mut sim, client, server) = pair(LinkConfig::default(), c, s);
    sim.capture();
    let to = sim.addr(server);
    let mut rng = soe_uring::sim::SimRng::new(7);
    let mut echoed = 0usize;
    let mut sent = 0usize;
    for _ in 0..40 {
        for _ in 0..8 {
            let len = 1 + rng.below(2000) as usize;
            let msg = vec![1 + (len % 200) as u8; len];
            sim.node_mut(client).mux.enqueue_data(&to, &msg).unwrap();
            sent += 1;
        }
        sim.pump(client);
        while echoed < sent {
            assert!(sim.step());
            for e in std::mem::take(&mut sim.node_mut(server).events) {
                if let SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } = e
                {
                    sim.node_mut(server)
                        .mux
                        .enqueue_data_on(&remote, &data, channel)
                        .unwrap();
                }
            }
            sim.pump(server);
            echoed += std::mem::take(&mut sim.node_mut(client).events)
                .iter()
                .filter(|e| matches!(e, SocketEvent::DataReceived { .. }))
                .count();
        }
    }
    let datagrams: Vec<Vec<u8>> = sim
        .take_captured()
        .into_iter()
        .map(|(_, d)| d[..d.len() - 2].to_vec()) // CRC length 2, no compression
        .collect();
    let per_message = datagrams.len() as f64 / echoed as f64;
    (datagrams, per_message)
}

#[test]
fn by_default_every_datagram_reads_with_one_byte_lengths() {
    let (datagrams, per_message) = echo_capture(MultiLength::default());
    let multis = datagrams.iter().filter(|d| d.starts_with(&[0, 3])).count();
    assert!(
        multis > 10,
        "acks and small packets still coalesce ({multis})"
    );
    for d in &datagrams {
        if let Err(why) = one_byte_reader(d) {
            panic!("{why}: {d:02x?}");
        }
    }
    // The long forms are an explicit option, and they do show up with it.
    let (varint, varint_per_message) = echo_capture(MultiLength::Varint);
    assert!(varint.iter().any(|d| one_byte_reader(d).is_err()));
    assert!(
        per_message < varint_per_message * 1.5,
        "{per_message} vs {varint_per_message}"
    );
}

/// A client with `clock_sync_interval` learns its round trip, the server's clock
/// offset and each direction's loss from ClockSync/ClockReflect; without it
/// nothing is sent.
#[test]
fn clock_sync_measures_round_trip_offset_and_loss() {
    let link = LinkConfig {
        loss: 0.1,
        latency: Duration::from_millis(20),
        ..LinkConfig::default()
    };
    let mut client_cfg = config(7);
    client_cfg.default_session_params.clock_sync_interval = Some(Duration::from_secs(1));
    let (mut sim, client, server) = pair(link, client_cfg, config(8));
    for i in 0..600u32 {
        send(
            &mut sim,
            client,
            server,
            &i.to_le_bytes(),
            Channel::Unreliable,
        );
        send(
            &mut sim,
            server,
            client,
            &i.to_le_bytes(),
            Channel::Unreliable,
        );
        sim.run_for(Duration::from_millis(50));
    }
    let server_addr = sim.addr(server);
    let session = sim.node(client).mux.session(&server_addr).unwrap();
    let status = session.net_status().expect("reflects arrived");
    let stats = session.stats();
    assert!(stats.clock_syncs_sent >= 25, "{stats:?}");
    // A sync or its reflect is lost about one time in five.
    assert!(u64::from(status.samples) >= stats.clock_syncs_sent * 6 / 10);
    assert_eq!(stats.clock_reflects_received, u64::from(status.samples));
    assert!(
        (40..=42).contains(&status.lowest_round_trip.as_millis()),
        "{status:?}"
    );
    assert!(status.highest_round_trip.as_millis() <= 45, "{status:?}");
    // The server's session clock started when the request arrived, 20 ms later.
    assert!(
        (-23..=-17).contains(&status.peer_clock_offset_ms),
        "{status:?}"
    );
    assert!((0.05..0.15).contains(&status.outgoing_loss), "{status:?}");
    assert!((0.05..0.15).contains(&status.incoming_loss), "{status:?}");

    // Off by default: no syncs, no status.
    let (mut sim, client, server) = pair(LinkConfig::default(), config(9), config(10));
    sim.run_for(Duration::from_secs(10));
    let session = sim.node(client).mux.session(&sim.addr(server)).unwrap();
    assert!(session.net_status().is_none());
    assert_eq!(session.stats().clock_syncs_sent, 0);
}

/// A client with `port_alive_interval` sends PortAlive while it has nothing else
/// to send; the server drops them without counting them as corrupt, and they do
/// not keep the session alive on the server's side.
#[test]
fn port_alive_keeps_quiet_and_is_dropped_by_the_server() {
    let mut client_cfg = config(11);
    client_cfg.default_session_params.port_alive_interval = Some(Duration::from_secs(1));
    let (mut sim, client, server) = pair(LinkConfig::default(), client_cfg, config(12));
    sim.run_for(Duration::from_millis(10_500));
    let server_addr = sim.addr(server);
    let sent = sim
        .node(client)
        .mux
        .session(&server_addr)
        .unwrap()
        .stats()
        .port_alives_sent;
    assert!((9..=11).contains(&sent), "{sent}");
    let client_addr = sim.addr(client);
    let theirs = sim.node(server).mux.session(&client_addr).unwrap().stats();
    assert_eq!((theirs.crc_failures, theirs.malformed_datagrams), (0, 0));
    assert!(theirs.ignored_packets >= 9, "{theirs:?}");
    // Traffic pushes them back: none while the client sends every 500 ms.
    for _ in 0..10 {
        send(&mut sim, client, server, b"tick", Channel::Reliable(0));
        sim.run_for(Duration::from_millis(500));
    }
    let after = sim
        .node(client)
        .mux
        .session(&server_addr)
        .unwrap()
        .stats()
        .port_alives_sent;
    assert_eq!(after, sent);
}

/// ICMP port-unreachable reports end a session only when they outlast the
/// grace with nothing heard from the peer in between.
#[test]
fn unreachable_reports_end_a_session_after_the_grace() {
    let (mut sim, client, server) = pair(LinkConfig::default(), config(13), config(14));
    let client_addr = sim.addr(client);
    let report = |sim: &mut Sim| {
        let now = sim.now();
        sim.node_mut(server)
            .mux
            .process_unreachable(&client_addr, now);
        sim.pump(server);
    };
    report(&mut sim);
    sim.run_for(Duration::from_secs(3));
    // The client is heard from: the grace starts over.
    send(&mut sim, client, server, b"alive", Channel::Reliable(0));
    sim.run_for(Duration::from_millis(100));
    sim.run_for(Duration::from_secs(3));
    report(&mut sim);
    assert_eq!(sim.node(server).closed(), None);
    sim.run_for(Duration::from_secs(4));
    report(&mut sim);
    assert_eq!(sim.node(server).closed(), None, "4 s into a 5 s grace");
    sim.run_for(Duration::from_secs(1));
    report(&mut sim);
    assert_eq!(sim.node(server).closed(), Some(DisconnectReason::IcmpError));
    // Reports for addresses without a session are only counted.
    let now = sim.now();
    sim.node_mut(server)
        .mux
        .process_unreachable(&client_addr, now);
    assert_eq!(sim.node(server).mux.stats().unreachable_unknown, 1);
}

/// `max_send_rate` holds over a lossy link, retransmissions included: a 300 KB
/// burst at a 50 kB/s cap goes out at no more than the cap on average.
#[test]
fn rate_cap_counts_retransmissions() {
    let mut client_cfg = config(15);
    client_cfg.default_session_params.max_send_rate = Some(50_000);
    let (mut sim, client, server) = pair(LinkConfig::lossy(0.2), client_cfg, config(16));
    let server_addr = sim.addr(server);
    let sent_before = sim
        .node(client)
        .mux
        .session(&server_addr)
        .unwrap()
        .stats()
        .bytes_sent;
    let start = sim.elapsed();
    for i in 0..300u32 {
        let msg = vec![i as u8; 1000];
        send(&mut sim, client, server, &msg, Channel::Reliable(0));
    }
    assert!(sim.run_until(|s| {
        s.node(server).received().len() == 301 // the "hi" of `pair`, then ours
    }));
    let took = sim.elapsed() - start;
    let stats = sim.node(client).mux.session(&server_addr).unwrap().stats();
    assert!(stats.reliable_packets_resent > 0, "{stats:?}");
    let bytes = stats.bytes_sent - sent_before;
    assert!(bytes > 300_000, "{bytes}");
    // Average over the transfer: at most the cap plus one burst's allowance.
    let rate = bytes as f64 / took.as_secs_f64();
    assert!(rate <= 50_000.0 * 1.1, "{rate:.0} B/s over {took:?}");
}
