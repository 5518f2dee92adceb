#![cfg(feature = "sim")]
//! The ack policy for interactive traffic on the simulated network: the ack of a
//! lone packet rides on the reply (an echo, the client's next input), while gaps
//! are still reported at once and loss recovery takes no longer.

use std::net::SocketAddr;
use std::time::Duration;

use soe_uring::sim::{LinkConfig, Sim};
use soe_uring::*;

/// A message every 33 ms (a 30 Hz client), echoed by the server on arrival.
const INTERVAL: Duration = Duration::from_millis(33);

fn config(seed: u64, lone_ack_delay: Option<Duration>) -> SocketConfig {
    let mut c = SocketConfig {
        rng_seed: Some(seed),
        ..SocketConfig::default()
    };
    let p = &mut c.default_session_params;
    p.application_protocol = "Acks".into();
    if let Some(delay) = lone_ack_delay {
        p.lone_ack_delay = delay;
        if delay.is_zero() {
            // The defaults before delayed acks of lone packets.
            p.peer_max_ack_delay = Duration::from_millis(25);
        }
    }
    c
}

/// A 30 Hz echo between a client and a server on one link.
struct Echo {
    sim: Sim,
    client: usize,
    server: usize,
    /// Messages the client sent, by index, and when.
    sent_at: Vec<Duration>,
    /// Echoes back at the client, by message index, and when.
    echoed_at: Vec<Option<Duration>>,
    /// When the server received each message.
    arrived_at: Vec<Option<Duration>>,
}

impl Echo {
    fn new(lone_ack_delay: Option<Duration>) -> Self {
        let mut sim = Sim::new(3, LinkConfig::default());
        let server = sim.add_node(config(1, lone_ack_delay));
        let client = sim.add_node(config(2, lone_ack_delay));
        sim.connect(client, server);
        let mut echo = Self {
            sim,
            client,
            server,
            sent_at: Vec::new(),
            echoed_at: Vec::new(),
            arrived_at: Vec::new(),
        };
        assert!(echo.sim.run_until(|s| {
            s.node(client)
                .events
                .iter()
                .any(|e| matches!(e, SocketEvent::SessionOpened { .. }))
        }));
        echo
    }

    fn server_addr(&self) -> SocketAddr {
        self.sim.addr(self.server)
    }

    /// Runs until `until`, the server echoing every message the moment it
    /// arrives (as a shard-local handler does, before its turn's flush).
    fn run_until(&mut self, until: Duration) {
        let epoch = self.sim.now() - self.sim.elapsed();
        while self.sim.next_event().is_some_and(|t| t - epoch <= until) {
            self.sim.step();
            self.serve();
        }
        let left = until.saturating_sub(self.sim.elapsed());
        self.sim.run_for(left);
        self.serve();
    }

    fn serve(&mut self) {
        let now = self.sim.elapsed();
        let mut echoed = false;
        for e in std::mem::take(&mut self.sim.node_mut(self.server).events) {
            if let SocketEvent::DataReceived {
                remote,
                data,
                channel,
            } = e
            {
                let i = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
                self.arrived_at[i] = Some(now);
                self.sim
                    .node_mut(self.server)
                    .mux
                    .enqueue_data_on(&remote, &data, channel)
                    .unwrap();
                echoed = true;
            }
        }
        if echoed {
            self.sim.pump(self.server);
        }
        for e in std::mem::take(&mut self.sim.node_mut(self.client).events) {
            if let SocketEvent::DataReceived { data, .. } = e {
                let i = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
                assert!(self.echoed_at[i].is_none(), "message {i} echoed twice");
                self.echoed_at[i] = Some(now);
            }
        }
    }

    /// The client sends message `i` now; `lost` drops every datagram it sends
    /// with it.
    fn send(&mut self, lost: bool) {
        let i = self.sent_at.len() as u32;
        let mut message = [7u8; 64];
        message[..4].copy_from_slice(&i.to_be_bytes());
        self.sent_at.push(self.sim.elapsed());
        self.echoed_at.push(None);
        self.arrived_at.push(None);
        let to = self.server_addr();
        self.sim
            .node_mut(self.client)
            .mux
            .enqueue_data(&to, &message)
            .unwrap();
        if lost {
            self.sim.set_link(LinkConfig {
                loss: 1.0,
                ..LinkConfig::default()
            });
        }
        self.sim.pump(self.client);
        self.sim.set_link(LinkConfig::default());
    }

    /// Sends `count` messages at 30 Hz (message `lose` and every datagram sent
    /// with it lost), then lets every echo and ack settle. Returns the
    /// datagrams each side sent per message.
    fn run(&mut self, count: usize, lose: Option<usize>) -> (f64, f64) {
        let stats = |sim: &Sim, n: usize| sim.node(n).mux.stats().sessions.datagrams_sent;
        let (c0, s0) = (stats(&self.sim, self.client), stats(&self.sim, self.server));
        let start = self.sim.elapsed();
        for k in 0..count {
            self.run_until(start + INTERVAL * k as u32);
            self.send(lose == Some(k));
        }
        self.run_until(start + INTERVAL * count as u32 + Duration::from_secs(1));
        assert!(
            self.echoed_at.iter().all(Option::is_some),
            "every message came back"
        );
        let per = |d: u64| d as f64 / count as f64;
        (
            per(stats(&self.sim, self.client) - c0),
            per(stats(&self.sim, self.server) - s0),
        )
    }
}

#[test]
fn an_echo_carries_the_ack_of_the_message_and_the_next_message_the_ack_of_the_echo() {
    let (client, server) = Echo::new(None).run(200, None);
    // One datagram per message each way: the server's ack rides on the echo,
    // the client's ack of the echo on its next message.
    assert!(client <= 1.02, "client sent {client} datagrams per message");
    assert!(server <= 1.02, "server sent {server} datagrams per message");

    // Acknowledging every lone packet at once costs the client a datagram more
    // per message.
    let (client, _) = Echo::new(Some(Duration::ZERO)).run(200, None);
    assert!(client >= 1.95, "without the delay: {client} per message");
}

#[test]
fn acks_of_a_slow_stream_go_alone_within_the_delay() {
    // 10 Hz: nothing rides, and each ack goes out by itself 40 ms after its
    // message, well before the sender would probe (its PTO adds 50 ms).
    let mut echo = Echo::new(None);
    let start = echo.sim.elapsed();
    let count = 20;
    for k in 0..count {
        echo.run_until(start + Duration::from_millis(100) * k);
        echo.send(false);
    }
    echo.run_until(start + Duration::from_secs(3));
    let s = echo.sim.node(echo.client).mux.stats().sessions;
    assert!(echo.echoed_at.iter().all(Option::is_some));
    let server = echo.sim.node(echo.server).mux.stats().sessions;
    assert_eq!(server.reliable_packets_resent, 0, "no spurious probe");
    assert_eq!(s.reliable_packets_resent, 0, "no spurious probe");
}

/// When the lost message reached the server, after it was first sent.
fn recovery(lone_ack_delay: Option<Duration>, lose: usize) -> Duration {
    let mut echo = Echo::new(lone_ack_delay);
    echo.run(40, Some(lose));
    echo.arrived_at[lose].unwrap() - echo.sent_at[lose]
}

#[test]
fn a_gap_is_acknowledged_at_once_and_recovery_takes_no_longer() {
    // `Some(ZERO)`: the old defaults (every lone packet acknowledged in the next
    // flush, `peer_max_ack_delay` 25 ms).
    for lose in [5, 20] {
        let delayed = recovery(None, lose);
        let immediate = recovery(Some(Duration::ZERO), lose);
        assert!(
            delayed <= immediate + Duration::from_millis(1),
            "message {lose}: recovered after {delayed:?} with delayed acks, {immediate:?} without"
        );
        // Found by the next message's selective ack (one interval and a round
        // trip), not by a timer.
        assert!(
            delayed <= INTERVAL + Duration::from_millis(15),
            "message {lose}: {delayed:?}"
        );
    }
    // The last message has no gap behind it: the probe timeout finds it, and
    // that now allows for the peer's 50 ms instead of 25 ms.
    let delayed = recovery(None, 39);
    let immediate = recovery(Some(Duration::ZERO), 39);
    assert!(
        delayed <= immediate + Duration::from_millis(26),
        "tail: recovered after {delayed:?} with delayed acks, {immediate:?} without"
    );
}

#[test]
fn a_lost_echo_is_recovered_as_fast_as_before() {
    // The server's echo of message `lose` is lost: the client reports the gap at
    // the next echo, and the server resends at once.
    let run = |lone_ack_delay: Option<Duration>| {
        let mut echo = Echo::new(lone_ack_delay);
        let start = echo.sim.elapsed();
        let lose = 10;
        for k in 0..20usize {
            echo.run_until(start + INTERVAL * k as u32);
            echo.send(false);
            if k == lose {
                // Lose what the server sends when message `lose` arrives (5 ms
                // later): its echo, with the ack.
                let arrive = echo.sim.elapsed() + Duration::from_millis(5);
                echo.run_until(arrive - Duration::from_micros(1));
                echo.sim.set_link(LinkConfig {
                    loss: 1.0,
                    ..LinkConfig::default()
                });
                echo.run_until(arrive);
                echo.sim.set_link(LinkConfig::default());
            }
        }
        echo.run_until(start + Duration::from_secs(2));
        assert!(echo.echoed_at.iter().all(Option::is_some));
        echo.echoed_at[lose].unwrap() - echo.sent_at[lose]
    };
    let delayed = run(None);
    let immediate = run(Some(Duration::ZERO));
    assert!(
        delayed <= immediate + Duration::from_millis(5),
        "echo recovered after {delayed:?} with delayed acks, {immediate:?} without"
    );
}

#[test]
fn a_round_trip_learnt_from_prompt_acks_does_not_time_out_on_delayed_ones() {
    // 80 ms round trip. Pairs of packets (acknowledged promptly: more than one
    // packet) teach the server the path; then lone updates the client never answers,
    // each acknowledged only after `lone_ack_delay`: 120 ms after sending,
    // beyond the 100 ms floor of the timeout, but within it and the probe
    // timeout once they allow for the peer's delay.
    let link = LinkConfig {
        latency: Duration::from_millis(40),
        ..LinkConfig::default()
    };
    let mut sim = Sim::new(5, link);
    let server = sim.add_node(config(1, None));
    let client = sim.add_node(config(2, None));
    sim.connect(client, server);
    let to = sim.addr(server);
    assert!(sim.run_until(|s| {
        s.node(client)
            .events
            .iter()
            .any(|e| matches!(e, SocketEvent::SessionOpened { .. }))
    }));
    sim.node_mut(client)
        .mux
        .enqueue_data(&to, b"hello")
        .unwrap();
    sim.pump(client);
    sim.run_for(Duration::from_millis(200));
    let remote = sim.addr(client);
    // Pairs of packets, each pair acknowledged at once: a steady 80 ms sample.
    for i in 0..40u8 {
        for _ in 0..2 {
            sim.node_mut(server)
                .mux
                .enqueue_data(&remote, &[i; 40])
                .unwrap();
            sim.pump(server);
        }
        sim.run_for(Duration::from_millis(100));
    }
    for i in 0..30u8 {
        sim.node_mut(server)
            .mux
            .enqueue_data(&remote, &[i; 40])
            .unwrap();
        sim.pump(server);
        sim.run_for(Duration::from_millis(300));
    }
    let s = sim.node(server).mux.stats().sessions;
    let c = sim.node(client).mux.stats().sessions;
    assert_eq!(c.messages_delivered, 110);
    assert_eq!(s.reliable_packets_resent, 0, "{s:?}");
}
