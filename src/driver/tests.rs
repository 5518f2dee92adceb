//! The driver fed by hand: in-memory clients, a virtual clock, sinks of any size.
#![allow(clippy::disallowed_methods)] // an arbitrary epoch for the virtual clock

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::mux::{SocketConfig, SocketEvent, SoeMultiplexer};
use crate::protocol::DisconnectReason;
use crate::session::Channel;

const SERVER: &str = "10.0.0.1:20260";

fn client_addr(n: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 2], 1000 + n))
}

fn config(seed: u64) -> SocketConfig {
    let mut c = SocketConfig {
        rng_seed: Some(seed),
        ..SocketConfig::default()
    };
    c.default_session_params.application_protocol = "DriverTest".into();
    c
}

/// A sink that takes at most `room` events until the test makes more room.
#[derive(Default)]
struct BoundedSink {
    room: usize,
    taken: Vec<SocketEvent<SocketAddr>>,
}

impl EventSink for BoundedSink {
    fn offer(&mut self, event: SocketEvent<SocketAddr>) -> Offer {
        if self.room == 0 {
            return Offer::Full(event);
        }
        self.room -= 1;
        self.taken.push(event);
        Offer::Taken
    }
}

/// A server driver and in-memory clients.
struct Bench {
    now: Instant,
    server: Driver,
    clients: Vec<SoeMultiplexer<SocketAddr>>,
    /// Datagrams from clients the server has not read yet (the socket).
    socket: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Clients whose datagrams are lost on the way to the server.
    mute: Vec<bool>,
    client_events: Vec<Vec<SocketEvent<SocketAddr>>>,
}

impl Bench {
    fn new(clients: usize, server_config: SocketConfig, limits: Limits) -> Self {
        let now = Instant::now();
        let server = Driver::new(SoeMultiplexer::new(server_config), limits, 0);
        let mut bench = Self {
            now,
            server,
            clients: (0..clients)
                .map(|i| {
                    let mut c = config(100 + i as u64);
                    // Keep quiet sessions alive against short server timeouts.
                    c.default_session_params.heartbeat_after = Duration::from_millis(500);
                    SoeMultiplexer::new(c)
                })
                .collect(),
            socket: VecDeque::new(),
            mute: vec![false; clients],
            client_events: vec![Vec::new(); clients],
        };
        let to: SocketAddr = SERVER.parse().unwrap();
        for c in &mut bench.clients {
            c.connect(to, now).unwrap();
        }
        bench
    }

    /// One server turn with `sink`, then the clients run and answer.
    fn turn(&mut self, sink: &mut impl EventSink) {
        self.now += Duration::from_millis(1);
        let now = self.now;
        // Clients send what they have.
        for (i, c) in self.clients.iter_mut().enumerate() {
            c.run_tick(now);
            for (_, d) in c.outgoing_iter() {
                if !self.mute[i] {
                    self.socket.push_back((client_addr(i as u16), d.to_vec()));
                }
            }
            c.consume_outgoing(usize::MAX);
        }
        let d = &mut self.server;
        d.begin_turn(now);
        let mut saturated = false;
        if d.reading() {
            while let Some((from, datagram)) = self.socket.pop_front() {
                d.on_datagram(from, &datagram, now);
                if d.receive_budget() == 0 {
                    saturated = !self.socket.is_empty();
                    break;
                }
            }
        }
        d.after_receive(saturated, now);
        d.deliver(sink);
        d.tick(now);
        let outgoing: Vec<(SocketAddr, Vec<u8>)> =
            d.outgoing().map(|(a, b)| (*a, b.to_vec())).collect();
        d.sent(outgoing.len());
        d.deliver(sink);
        let server: SocketAddr = SERVER.parse().unwrap();
        for (to, datagram) in outgoing {
            let i = usize::from(to.port() - 1000);
            self.clients[i].process_incoming(server, &datagram, now);
        }
        for (i, c) in self.clients.iter_mut().enumerate() {
            self.client_events[i].extend(c.drain_events());
        }
    }

    fn client_data(&self, i: usize) -> Vec<Bytes> {
        self.client_events[i]
            .iter()
            .filter_map(|e| match e {
                SocketEvent::DataReceived { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect()
    }

    /// Opens every client's session on the server (and drains the events).
    fn open(&mut self) {
        let mut sink = BoundedSink {
            room: usize::MAX,
            ..Default::default()
        };
        for _ in 0..20 {
            self.turn(&mut sink);
        }
        // A client's first data proves the handshake to the server.
        let to: SocketAddr = SERVER.parse().unwrap();
        for c in &mut self.clients {
            c.enqueue_data(&to, b"hello").unwrap();
        }
        for _ in 0..20 {
            self.turn(&mut sink);
        }
        let opened = sink
            .taken
            .iter()
            .filter(|e| matches!(e, SocketEvent::SessionOpened { .. }))
            .count();
        assert_eq!(opened, self.clients.len());
    }
}

/// The ids of messages made by [`message`], and whether each has the length it
/// should (compact enough to print when an assertion fails).
fn ids(messages: &[Bytes], len: usize) -> Vec<(u32, bool)> {
    messages
        .iter()
        .map(|m| {
            let id = u32::from_be_bytes(m[..4].try_into().unwrap());
            (id, m.len() == len && *m == message(id, len))
        })
        .collect()
}

fn expected(count: u32) -> Vec<(u32, bool)> {
    (0..count).map(|i| (i, true)).collect()
}

fn message(i: u32, len: usize) -> Bytes {
    let mut m = vec![(i % 251) as u8 + 1; len];
    m[..4].copy_from_slice(&i.to_be_bytes());
    Bytes::from(m)
}

#[test]
fn a_full_event_sink_pauses_reading_and_loses_nothing() {
    let mut bench = Bench::new(1, config(1), Limits::default());
    bench.open();
    let to: SocketAddr = SERVER.parse().unwrap();
    for i in 0..200u32 {
        bench.clients[0].enqueue_data(&to, &message(i, 40)).unwrap();
    }
    let mut sink = BoundedSink::default();
    let mut got = Vec::new();
    for turn in 0..2000 {
        // The application takes two events every third turn.
        if turn % 3 == 0 {
            sink.room += 2;
        }
        bench.turn(&mut sink);
        let plan = bench.server.wait_plan(false);
        if bench.server.stalled.is_some() {
            assert!(!plan.read && plan.event_room, "{plan:?}");
        } else {
            assert!(
                plan.read,
                "a driver that is not stalled always watches the socket"
            );
        }
        got.extend(sink.taken.drain(..).filter_map(|e| match e {
            SocketEvent::DataReceived { data, .. } => Some(data),
            _ => None,
        }));
        if got.len() == 200 {
            break;
        }
    }
    assert_eq!(ids(&got, 40), expected(200));
    assert!(bench.server.stats.event_stalls > 0);
}

#[test]
fn messages_for_a_full_session_wait_in_order_then_flow() {
    let mut server_config = config(1);
    server_config.default_session_params.max_pending_bytes = 2048;
    let mut bench = Bench::new(1, server_config, Limits::default());
    bench.open();
    let remote = client_addr(0);
    let now = bench.now;
    for i in 0..100u32 {
        bench.server.apply(
            Command::Send {
                remote,
                data: message(i, 500),
                channel: Channel::Reliable(0),
            },
            now,
        );
    }
    bench.server.apply(
        Command::Terminate {
            remote,
            reason: DisconnectReason::Application,
        },
        now,
    );
    assert!(
        bench.server.parked.len() > 50,
        "the session took only ~4 messages"
    );
    let mut sink = BoundedSink {
        room: usize::MAX,
        ..Default::default()
    };
    for _ in 0..3000 {
        bench.turn(&mut sink);
        if bench.server.mux.session_count() == 0 {
            break;
        }
    }
    assert_eq!(
        ids(&bench.client_data(0), 500),
        expected(100),
        "every message, in order, then the end"
    );
    assert!(bench.client_events[0].iter().any(|e| matches!(
        e,
        SocketEvent::SessionClosed {
            reason: DisconnectReason::Application,
            ..
        }
    )));
    let stats = bench.server.snapshot();
    assert!(stats.enqueue_parked >= 50);
    assert_eq!(stats.enqueue_refused, 0);
}

/// Two clients; the first stops acknowledging. Once the parking bound has held
/// the driver up for the grace period, the server ends that session (the
/// application sees why) and the other one is unaffected.
#[test]
fn at_the_parking_bound_a_server_ends_the_session_that_does_not_keep_up() {
    let mut server_config = config(1);
    server_config.default_session_params.max_pending_bytes = 4096;
    let limits = Limits {
        max_parked: 32,
        overflow_grace: Duration::from_millis(50),
        ..Limits::default()
    };
    let mut bench = Bench::new(2, server_config, limits);
    bench.open();
    bench.mute[0] = true;
    let mut sink = BoundedSink {
        room: usize::MAX,
        ..Default::default()
    };
    let mut sent = [0u32; 2];
    for _ in 0..400 {
        for (i, count) in sent.iter_mut().enumerate() {
            if bench.server.accepting() && *count < 100 {
                let now = bench.now;
                bench.server.apply(
                    Command::Send {
                        remote: client_addr(i as u16),
                        data: message(*count, 300),
                        channel: Channel::Reliable(0),
                    },
                    now,
                );
                *count += 1;
            }
        }
        bench.turn(&mut sink);
    }
    let closed: Vec<_> = sink
        .taken
        .iter()
        .filter_map(|e| match e {
            SocketEvent::SessionClosed { remote, reason } => Some((*remote, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        closed,
        [(client_addr(0), DisconnectReason::ReliableOverflow)]
    );
    assert_eq!(ids(&bench.client_data(1), 300), expected(100));
    assert_eq!(bench.server.stats.parked_overflows, 1);
}

/// A client driver (one session) never ends its session at the bound: it stops
/// taking commands until the session drains (back-pressure to the application).
#[test]
fn at_the_parking_bound_a_client_back_pressures() {
    let mut server_config = config(1);
    server_config.default_session_params.max_pending_bytes = 4096;
    let limits = Limits {
        max_parked: 8,
        close_overflowing: false,
        ..Limits::default()
    };
    let mut bench = Bench::new(1, server_config, limits);
    bench.open();
    let mut sink = BoundedSink {
        room: usize::MAX,
        ..Default::default()
    };
    let mut sent = 0u32;
    let mut refused_turns = 0;
    while sent < 200 {
        // The application produces faster than the link drains.
        for _ in 0..10 {
            if !bench.server.accepting() {
                refused_turns += 1;
                break;
            }
            if sent < 200 {
                let now = bench.now;
                bench.server.apply(
                    Command::Send {
                        remote: client_addr(0),
                        data: message(sent, 700),
                        channel: Channel::Reliable(0),
                    },
                    now,
                );
                sent += 1;
            }
        }
        bench.turn(&mut sink);
    }
    for _ in 0..500 {
        bench.turn(&mut sink);
    }
    assert!(refused_turns > 0, "the bound was reached");
    assert_eq!(ids(&bench.client_data(0), 700), expected(200));
    assert_eq!(bench.server.stats.parked_overflows, 0);
}

#[test]
fn overload_closes_admission_until_a_turn_drains_the_socket() {
    let limits = Limits {
        datagrams_per_turn: 4,
        ..Limits::default()
    };
    let mut bench = Bench::new(12, config(1), limits);
    let mut sink = BoundedSink {
        room: usize::MAX,
        ..Default::default()
    };
    // Twelve SessionRequests arrive at once; four are read per turn.
    bench.turn(&mut sink);
    bench.turn(&mut sink);
    assert!(bench.server.overloaded());
    assert!(!bench.server.mux.is_admitting());
    for _ in 0..100 {
        bench.turn(&mut sink);
    }
    // The backlog drained, admission reopened, the clients retried and got in.
    assert!(bench.server.mux.is_admitting());
    let stats = bench.server.snapshot();
    assert!(stats.overloaded_turns > 0);
    assert!(stats.mux.refused_admission_closed > 0, "{stats:?}");
}

#[test]
fn commands_for_unknown_sessions_are_counted_not_parked() {
    let mut bench = Bench::new(0, config(1), Limits::default());
    let now = bench.now;
    bench.server.apply(
        Command::Send {
            remote: client_addr(9),
            data: message(1, 10),
            channel: Channel::Reliable(0),
        },
        now,
    );
    bench.server.apply(Command::Connect(client_addr(9)), now);
    bench.server.apply(Command::Connect(client_addr(9)), now);
    let stats = bench.server.snapshot();
    assert_eq!(stats.enqueue_refused, 1);
    assert_eq!(stats.connect_refused, 1);
    assert!(bench.server.parked.is_empty());
    // A client session that is still connecting keeps the message until it opens.
    bench.server.apply(
        Command::Send {
            remote: client_addr(9),
            data: message(2, 10),
            channel: Channel::Reliable(0),
        },
        now,
    );
    assert_eq!(bench.server.parked.len(), 1);
}

/// A small deterministic generator for the randomized test below.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Random interleavings of what a driver meets, for many seeds: datagrams from
/// four clients (read from the socket or forwarded by another shard, in any
/// order with commands), one client that stops acknowledging, commands from
/// handles whenever the driver takes them, an event sink that fills up and drains,
/// small queues. Every message the driver accepted arrives, in order, or the
/// application saw its session's `SessionClosed` with the reason.
#[test]
fn every_accepted_message_is_delivered_or_its_session_closed_with_a_reason() {
    for seed in 1..=24u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut server_config = config(seed);
        server_config.default_session_params.max_pending_bytes = 2048 + rng.below(30_000) as usize;
        let max_message = server_config.default_session_params.max_message_len();
        server_config.default_session_params.inactivity_timeout = Duration::from_secs(2);
        let limits = Limits {
            datagrams_per_turn: 2 + rng.below(64) as usize,
            commands_per_turn: 1 + rng.below(16) as usize,
            max_parked: 2 + rng.below(64) as usize,
            overflow_grace: Duration::from_millis(20 + rng.below(300)),
            ..Limits::default()
        };
        let mut bench = Bench::new(4, server_config, limits);
        bench.open();
        let mut sink = BoundedSink::default();
        let mut accepted: Vec<Vec<u32>> = vec![Vec::new(); 4];
        let mut next_id = 0u32;
        let sizes = [1usize, 40, 300, 1500, 4000];
        for turn in 0..4000 {
            if turn == 500 {
                bench.mute[3] = true; // client 3 is gone from now on
            }
            // Handles queue commands while the driver takes them.
            let now = bench.now;
            for _ in 0..rng.below(6) {
                if !bench.server.accepting() || turn > 2500 {
                    break;
                }
                let to = rng.below(4) as usize;
                let len = sizes[rng.below(sizes.len() as u64) as usize].max(4);
                if len > max_message {
                    continue; // a handle refuses it up front (SendError::Invalid)
                }
                bench.server.apply(
                    Command::Send {
                        remote: client_addr(to as u16),
                        data: message(next_id, len),
                        channel: Channel::Reliable(0),
                    },
                    now,
                );
                accepted[to].push(next_id);
                next_id += 1;
            }
            // Some datagrams arrive through another shard instead of the socket.
            if rng.chance(30)
                && let Some((from, datagram)) = bench.socket.pop_front()
            {
                bench.server.on_forwarded(from, &datagram, now);
            }
            if rng.chance(40) {
                sink.room += rng.below(8) as usize;
            }
            bench.turn(&mut sink);
        }
        // Drain: the application keeps up from now on.
        sink.room = usize::MAX;
        for _ in 0..4000 {
            bench.turn(&mut sink);
        }
        let closed: Vec<(SocketAddr, DisconnectReason)> = sink
            .taken
            .iter()
            .filter_map(|e| match e {
                SocketEvent::SessionClosed { remote, reason } => Some((*remote, *reason)),
                _ => None,
            })
            .collect();
        for (i, sent) in accepted.iter().enumerate() {
            let got: Vec<u32> = bench
                .client_data(i)
                .iter()
                .map(|m| u32::from_be_bytes(m[..4].try_into().unwrap()))
                .collect();
            let reason = closed
                .iter()
                .find(|(remote, _)| *remote == client_addr(i as u16))
                .map(|(_, reason)| *reason);
            match reason {
                None => assert_eq!(&got, sent, "seed {seed}, client {i}: lost or reordered"),
                Some(reason) => {
                    assert!(
                        sent.starts_with(&got),
                        "seed {seed}, client {i}: delivered out of order before {reason:?}"
                    );
                    assert!(
                        matches!(
                            reason,
                            DisconnectReason::ReliableOverflow | DisconnectReason::Timeout
                        ),
                        "seed {seed}, client {i}: {reason:?}"
                    );
                }
            }
            if i < 3 {
                assert!(
                    reason.is_none(),
                    "seed {seed}: live client {i} closed: {reason:?}"
                );
            }
        }
        assert!(
            closed.iter().any(|(r, _)| *r == client_addr(3)),
            "seed {seed}: the silent client's session ended"
        );
    }
}

#[test]
fn tick_aligned_flush_sends_one_datagram_per_session_per_tick() {
    let limits = Limits {
        flush_interval: Some(Duration::from_millis(10)),
        ..Limits::default()
    };
    let mut bench = Bench::new(2, config(1), limits);
    bench.open();
    let mut sink = BoundedSink {
        room: usize::MAX,
        ..Default::default()
    };
    let to: SocketAddr = SERVER.parse().unwrap();
    let mut flushes = Vec::new();
    let turns = 200u32;
    for turn in 0..turns {
        // The application queues a message for each session every turn (1 ms);
        // the clients send an input every third turn.
        for i in 0..2 {
            bench
                .server
                .mux_mut()
                .enqueue_data(&client_addr(i), &message(turn, 20))
                .unwrap();
        }
        if turn % 3 == 0 {
            for c in &mut bench.clients {
                c.enqueue_data(&to, b"input").unwrap();
            }
        }
        let before = bench.server.stats.datagrams_out;
        bench.turn(&mut sink);
        let sent = bench.server.stats.datagrams_out - before;
        if sent > 0 {
            assert_eq!(sent, 2, "turn {turn}: one datagram per session");
            flushes.push(turn);
        }
        // Between ticks the driver sleeps, until the next one when sessions
        // wait for it.
        let held = bench.server.mux().needs_flush();
        let plan = bench.server.wait_plan(false);
        assert!(!plan.again, "turn {turn}: {plan:?}");
        assert!(
            !held
                || plan
                    .deadline
                    .is_some_and(|d| d <= bench.now + Duration::from_millis(10)),
            "turn {turn}: {plan:?}"
        );
    }
    assert!(flushes.len() >= 19, "{flushes:?}");
    for pair in flushes.windows(2) {
        assert_eq!(pair[1] - pair[0], 10, "{flushes:?}");
    }
    // Nothing was lost or reordered by the wait.
    for _ in 0..30 {
        bench.turn(&mut sink);
    }
    for i in 0..2 {
        let got = bench.client_data(i);
        assert_eq!(ids(&got, 20), expected(turns), "client {i}");
    }
    let inputs = sink
        .taken
        .iter()
        .filter(
            |e| matches!(e, SocketEvent::DataReceived { data, .. } if data.as_ref() == b"input"),
        )
        .count();
    assert_eq!(inputs, 2 * turns.div_ceil(3) as usize);
}

#[test]
fn a_turn_with_nothing_left_sleeps_past_deadlines_that_went_away() {
    // The data's retransmission timer stays in the multiplexer's heap after the
    // ack arrives; the wait plan names the next deadline that needs work.
    let mut bench = Bench::new(1, config(1), Limits::default());
    bench.open();
    let mut sink = BoundedSink {
        room: usize::MAX,
        ..Default::default()
    };
    bench
        .server
        .mux_mut()
        .enqueue_data(&client_addr(0), b"state")
        .unwrap();
    for _ in 0..100 {
        bench.turn(&mut sink);
    }
    assert_eq!(bench.client_data(0).len(), 1);
    let plan = bench.server.wait_plan(false);
    let deadline = plan.deadline.expect("the inactivity timeout");
    assert!(
        deadline >= bench.now + Duration::from_secs(20),
        "{:?} from now",
        deadline - bench.now
    );
}
