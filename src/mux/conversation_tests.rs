//! Scripted conversations with a [`SoeMultiplexer`], smoltcp style: the test plays
//! the peers (one per address), writes their datagrams out byte by byte, and checks
//! every datagram the multiplexer sends, with its destination. Time is virtual.
//! Sections (§) are those of `docs/protocol.md`.
//!
//! The multiplexer draws session ids and CRC seeds from the CSPRNG (§7.8): the
//! tests read them from its first datagram and build the expected bytes from them.

#![allow(clippy::disallowed_methods)] // one arbitrary epoch for the virtual clock

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{SocketConfig, SocketEvent, SoeMultiplexer};
use crate::protocol::{DisconnectReason, soe_crc32};
use crate::session::Channel;

use crate::test_support::{CLIENT_ID as ID, REQUEST_V3, hex};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// `cooked` (in hex) with the two-byte CRC trailer of `seed` (§4.1, §4.2).
fn sealed(seed: u32, cooked_hex: &str) -> Vec<u8> {
    let mut datagram = hex(cooked_hex);
    let crc = soe_crc32(seed, &datagram).to_be_bytes();
    datagram.extend_from_slice(&crc[2..]);
    datagram
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes.try_into().unwrap())
}

/// A multiplexer and the virtual clock.
struct Conversation {
    mux: SoeMultiplexer<SocketAddr>,
    epoch: Instant,
}

impl Conversation {
    fn new(config: SocketConfig) -> Self {
        Self {
            mux: SoeMultiplexer::new(config),
            epoch: Instant::now(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// A datagram from `from` arrives at `ms`.
    fn recv(&mut self, ms: u64, from: SocketAddr, datagram: &[u8]) {
        let now = self.at(ms);
        self.mux.process_incoming(from, datagram, now);
    }

    /// Datagrams waiting now (without a tick), with their destinations.
    fn sent(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.mux
            .take_outgoing()
            .into_iter()
            .map(|(a, d)| (a, d.to_vec()))
            .collect()
    }

    /// Runs the timers and flushes at `ms`; returns every datagram sent.
    fn tick(&mut self, ms: u64) -> Vec<(SocketAddr, Vec<u8>)> {
        let now = self.at(ms);
        self.mux.run_tick(now);
        self.sent()
    }

    fn events(&mut self) -> Vec<SocketEvent<SocketAddr>> {
        self.mux.take_events()
    }

    /// Plays a default v3 client at `client` through the handshake (checked in
    /// `server_v3_handshake`), at `ms` and `ms + 1`; returns the CRC seed the
    /// server chose.
    fn open(&mut self, ms: u64, client: SocketAddr) -> u32 {
        self.recv(ms, client, &hex(REQUEST_V3));
        let out = self.tick(ms);
        assert_eq!(out.len(), 1);
        let seed = be_u32(&out[0].1[6..10]);
        self.recv(ms + 1, client, &sealed(seed, "00 06"));
        assert_eq!(self.tick(ms + 1), [(client, sealed(seed, "00 06"))]);
        assert_eq!(
            self.events(),
            [SocketEvent::SessionOpened { remote: client }]
        );
        seed
    }
}

/// The RemapConnection a client at a new address sends (§15.2).
fn remap(session_id: u32, crc_seed: u32) -> Vec<u8> {
    let mut packet = hex("00 1E"); // RemapConnection
    packet.extend_from_slice(&session_id.to_be_bytes());
    packet.extend_from_slice(&crc_seed.to_be_bytes());
    packet
}

/// §7.2, §7.3, §7.5: a SessionRequest from a new address makes a server session
/// that answers with the 21-byte response (the seed is the CSPRNG's); the session
/// opens on the client's first valid datagram.
#[test]
fn server_v3_handshake() {
    let client = addr("10.0.0.1:5000");
    let mut c = Conversation::new(SocketConfig::default());
    c.recv(0, client, &hex(REQUEST_V3));
    let out = c.tick(0);
    assert_eq!(out.len(), 1);
    let (to, response) = &out[0];
    assert_eq!(*to, client);
    let seed = be_u32(&response[6..10]);
    let mut expected = hex(concat!(
        "00 02",       // SessionResponse
        "11 22 33 44", // session id, echoed
    ));
    expected.extend_from_slice(&seed.to_be_bytes()); // CRC seed (random)
    expected.extend_from_slice(&hex(concat!(
        "02",          // CRC length 2
        "00",          // no compression flag
        "00",          // no encryption pass 1
        "00 00 02 00", // udp_length 512
        "00 00 00 03", // protocol version 3
    )));
    assert_eq!(*response, expected);
    // Half-open: the application hears nothing yet (§7.5).
    assert!(c.events().is_empty());
    assert_eq!(c.mux.half_open_count(), 1);

    c.recv(5, client, &sealed(seed, "00 06")); // the client's Heartbeat
    assert_eq!(c.events(), [SocketEvent::SessionOpened { remote: client }]);
    assert_eq!(c.mux.half_open_count(), 0);
    assert_eq!(c.tick(5), [(client, sealed(seed, "00 06"))]);
    assert_eq!(c.mux.session(&client).unwrap().crc_seed(), seed);
}

/// §7.4: the 14-byte v2 request draws the 17-byte response.
#[test]
fn server_v2_handshake() {
    let client = addr("10.0.0.1:5000");
    let mut c = Conversation::new(SocketConfig::default());
    c.recv(
        0,
        client,
        &hex(concat!(
            "00 01",       // SessionRequest
            "00 00 00 02", // protocol version 2
            "11 22 33 44", // session id
            "00 00 02 00", // udp_length 512
        )),
    );
    let out = c.tick(0);
    assert_eq!(out.len(), 1);
    let seed = be_u32(&out[0].1[6..10]);
    let mut expected = hex("00 02 11 22 33 44"); // SessionResponse, session id
    expected.extend_from_slice(&seed.to_be_bytes()); // CRC seed
    expected.extend_from_slice(&hex("02 00 00 00 00 02 00")); // CRC 2, flag 0, pass 0, 512
    assert_eq!(out, [(client, expected)]);
}

/// §7.1, §7.6, §15.4: a client session of the multiplexer: the request carries
/// its random session id; the response opens it; the server's UnknownSender
/// draws a RemapConnection with the session id and CRC seed.
#[test]
fn client_handshake_and_remap_on_unknown_sender() {
    let server = addr("192.0.2.7:20260");
    let mut c = Conversation::new(SocketConfig::default());
    c.mux.connect(server, c.at(0)).unwrap();
    let out = c.tick(0);
    assert_eq!(out.len(), 1);
    let id = be_u32(&out[0].1[6..10]);
    let mut request = hex("00 01 00 00 00 03"); // SessionRequest, version 3
    request.extend_from_slice(&id.to_be_bytes()); // session id (random)
    request.extend_from_slice(&hex("00 00 02 00 00")); // udp_length 512, name ""
    assert_eq!(out, [(server, request)]);

    let seed: u32 = 0x0BAD_5EED;
    let mut response = hex("00 02"); // SessionResponse
    response.extend_from_slice(&id.to_be_bytes()); // session id
    response.extend_from_slice(&seed.to_be_bytes()); // CRC seed
    response.extend_from_slice(&hex("02 00 00 00 00 02 00 00 00 00 03"));
    c.recv(10, server, &response);
    assert_eq!(c.events(), [SocketEvent::SessionOpened { remote: server }]);
    assert_eq!(c.tick(10), [(server, sealed(seed, "00 06"))]); // Heartbeat

    // The server does not know us (our NAT mapping moved): UnknownSender, two
    // bytes, no CRC (§15.1).
    c.recv(20, server, &hex("00 1D"));
    assert_eq!(c.tick(20), [(server, remap(id, seed))]);
    assert!(c.events().is_empty());
}

/// §15.3: a RemapConnection from a new port of the same host, with the session's
/// id and seed, moves the session; its traffic and replies follow it.
#[test]
fn remap_moves_the_session_to_the_new_port() {
    let old = addr("10.0.0.1:5000");
    let new = addr("10.0.0.1:6000");
    let mut c = Conversation::new(SocketConfig::default());
    let seed = c.open(0, old);

    c.recv(100, new, &remap(ID, seed));
    assert_eq!(c.events(), [SocketEvent::SessionRemapped { old, new }]);
    assert!(c.tick(100).is_empty()); // no reply to a remap
    assert_eq!(c.mux.stats().remaps, 1);
    assert!(c.mux.session(&old).is_none());

    // Data from the new address reaches the session; the ack goes there.
    c.recv(110, new, &sealed(seed, "00 09 00 00 68 69")); // ReliableData seq 0, "hi"
    assert_eq!(
        c.events(),
        [SocketEvent::DataReceived {
            remote: new,
            data: Bytes::from_static(b"hi"),
            channel: Channel::Reliable(0),
        }]
    );
    // A lone packet's ack waits `lone_ack_delay` (40 ms) for a ride (§8.4).
    assert!(c.tick(110).is_empty());
    assert_eq!(c.tick(150), [(new, sealed(seed, "00 15 00 00"))]); // AcknowledgeAll 0

    // The old address is a stranger now (§15.1).
    c.recv(120, old, &sealed(seed, "00 06"));
    assert_eq!(c.sent(), [(old, hex("00 1D"))]);
}

/// §15.3: a RemapConnection with a wrong seed or id, or from another host
/// (`allow_address_remaps` is off by default), is refused without a reply and
/// counted; the session stays where it was.
#[test]
fn remap_with_wrong_credentials_or_from_another_host_is_refused() {
    let client = addr("10.0.0.1:5000");
    let mut c = Conversation::new(SocketConfig::default());
    let seed = c.open(0, client);

    let attempts = [
        (addr("10.0.0.1:6000"), remap(ID, seed ^ 1)), // wrong CRC seed
        (addr("10.0.0.1:6001"), remap(ID ^ 1, seed)), // wrong session id
        (addr("10.0.0.2:5000"), remap(ID, seed)),     // right pair, another host
        (client, remap(ID, seed)),                    // from the session's own address
    ];
    for (i, (from, packet)) in attempts.iter().enumerate() {
        c.recv(100 + i as u64, *from, packet);
        assert!(c.sent().is_empty(), "attempt {i} was answered");
    }
    assert!(c.tick(200).is_empty());
    assert!(c.events().is_empty());
    let stats = c.mux.stats();
    assert_eq!(stats.remaps, 0);
    // The last one came from an address with a session: the session ignores it
    // (a contextless packet it has no use for), the multiplexer does not count it.
    assert_eq!(stats.remaps_refused, 3);
    assert_eq!(c.mux.remotes().collect::<Vec<_>>(), [&client]);

    // The session still lives at its address.
    c.recv(210, client, &sealed(seed, "00 09 00 00 61")); // ReliableData seq 0, "a"
    assert_eq!(c.tick(250), [(client, sealed(seed, "00 15 00 00"))]);
}

/// §15.3: with `allow_address_remaps` the right pair moves the session to another
/// host too.
#[test]
fn remap_to_another_host_when_allowed() {
    let old = addr("10.0.0.1:5000");
    let new = addr("10.0.0.2:5000");
    let mut c = Conversation::new(SocketConfig {
        allow_address_remaps: true,
        ..SocketConfig::default()
    });
    let seed = c.open(0, old);
    c.recv(100, new, &remap(ID, seed));
    assert_eq!(c.events(), [SocketEvent::SessionRemapped { old, new }]);
}

/// §15.1: a contextual datagram from an address without a session draws
/// UnknownSender (`reply_unknown_sender`, on by default); a Disconnect or an
/// UnknownSender from such an address does not, and with the option off nothing
/// does.
#[test]
fn unknown_sender_is_answered() {
    let stranger = addr("10.0.0.9:1234");
    let mut c = Conversation::new(SocketConfig::default());
    c.recv(0, stranger, &sealed(0x1234_5678, "00 09 00 00 61")); // ReliableData
    assert_eq!(c.sent(), [(stranger, hex("00 1D"))]); // UnknownSender, at once
    c.recv(1, stranger, &hex("61 62 63")); // an application datagram
    assert_eq!(c.sent(), [(stranger, hex("00 1D"))]);
    c.recv(2, stranger, &sealed(0, "00 05 11 22 33 44 00 06")); // Disconnect
    c.recv(3, stranger, &hex("00 1D")); // UnknownSender
    assert!(c.sent().is_empty());
    assert!(c.tick(10).is_empty());
    assert_eq!(c.mux.stats().unknown_sender_datagrams, 4);
    assert_eq!(c.mux.session_count(), 0);

    let mut quiet = Conversation::new(SocketConfig {
        reply_unknown_sender: false,
        ..SocketConfig::default()
    });
    quiet.recv(0, stranger, &sealed(0x1234_5678, "00 09 00 00 61"));
    assert!(quiet.sent().is_empty());
    assert_eq!(quiet.mux.stats().unknown_sender_datagrams, 1);
}

/// §14.3, §14.4 through the multiplexer: the application's `terminate` sends the
/// Disconnect; the peer's Disconnect closes with its reason.
#[test]
fn disconnects_both_ways() {
    let a = addr("10.0.0.1:5000");
    let b = addr("10.0.0.2:5000");
    let mut c = Conversation::new(SocketConfig::default());
    let seed_a = c.open(0, a);
    let seed_b = c.open(2, b);

    c.mux.terminate(&a, DisconnectReason::Application, c.at(10));
    assert_eq!(
        c.tick(10),
        [(a, sealed(seed_a, "00 05 11 22 33 44 00 06"))] // Disconnect, id, Application
    );
    assert_eq!(
        c.events(),
        [SocketEvent::SessionClosed {
            remote: a,
            reason: DisconnectReason::Application,
        }]
    );

    c.recv(20, b, &sealed(seed_b, "00 05 11 22 33 44 00 02")); // Disconnect, Timeout
    assert_eq!(
        c.events(),
        [SocketEvent::SessionClosed {
            remote: b,
            reason: DisconnectReason::Timeout,
        }]
    );
    assert!(c.tick(20).is_empty());
    assert_eq!(c.mux.session_count(), 0);
}

/// §7.5: while draining, a SessionRequest is answered with a SessionResponse and
/// at once a Disconnect (`ConnectionRefused`), and no session is kept.
#[test]
fn draining_refuses_with_response_and_disconnect() {
    let client = addr("10.0.0.1:5000");
    let mut c = Conversation::new(SocketConfig::default());
    c.mux.set_draining(true);
    c.recv(0, client, &hex(REQUEST_V3));
    let out = c.sent();
    assert_eq!(out.len(), 2);
    let seed = be_u32(&out[0].1[6..10]);
    let mut response = hex("00 02 11 22 33 44"); // SessionResponse, session id
    response.extend_from_slice(&seed.to_be_bytes()); // CRC seed
    response.extend_from_slice(&hex("02 00 00 00 00 02 00 00 00 00 03"));
    let disconnect = sealed(
        seed,
        concat!(
            "00 05",       // Disconnect
            "11 22 33 44", // session id
            "00 0A",       // ConnectionRefused
        ),
    );
    assert_eq!(out, [(client, response), (client, disconnect)]);
    assert!(c.tick(0).is_empty());
    assert!(c.events().is_empty());
    assert_eq!(c.mux.session_count(), 0);
    assert_eq!(c.mux.stats().refused_draining, 1);
}

/// §7.5: an exact SessionRequest with another session id from the address of a
/// server session is a restarted client: the old session ends quietly
/// (`NewConnectionAttempt`) and the request is admitted with a fresh seed.
#[test]
fn a_restarted_client_replaces_its_old_session() {
    let client = addr("10.0.0.1:5000");
    let mut c = Conversation::new(SocketConfig::default());
    c.open(0, client);
    c.recv(
        100,
        client,
        &hex(concat!(
            "00 01",       // SessionRequest
            "00 00 00 03", // version 3
            "55 66 77 88", // a new session id
            "00 00 02 00", // udp_length 512
            "00",          // name ""
        )),
    );
    assert_eq!(
        c.events(),
        [SocketEvent::SessionClosed {
            remote: client,
            reason: DisconnectReason::NewConnectionAttempt,
        }]
    );
    let out = c.tick(100);
    assert_eq!(out.len(), 1); // no Disconnect for the old session
    let seed = be_u32(&out[0].1[6..10]);
    let mut response = hex("00 02 55 66 77 88"); // SessionResponse, the new id
    response.extend_from_slice(&seed.to_be_bytes());
    response.extend_from_slice(&hex("02 00 00 00 00 02 00 00 00 00 03"));
    assert_eq!(out, [(client, response)]);
    assert_eq!(c.mux.session(&client).unwrap().session_id(), 0x5566_7788);
}

/// A session handed to another multiplexer (a shard taking over a client whose
/// address moved) keeps its own clock: its deadlines stay where they were, however
/// late the new multiplexer first ran, and they fire there.
#[test]
fn a_session_moved_to_another_multiplexer_keeps_its_deadlines() {
    let client = addr("10.0.0.1:5000");
    let mut a = Conversation::new(SocketConfig::default());
    a.open(0, client);
    // Data for the client at 1 s, never acknowledged: a resend is due later.
    a.mux.enqueue_data(&client, b"hello").unwrap();
    let first = a.tick(1000);
    assert_eq!(first.len(), 1);
    let due = a.mux.settle_deadline().expect("a resend is due");
    assert!(due > a.at(1001));

    let transfer = a.mux.take_session(&client).expect("the session");
    assert_eq!(a.mux.settle_deadline(), None, "nothing left behind");
    // The new multiplexer started on its own, half a second after `a`.
    let mut b = SoeMultiplexer::new(SocketConfig::default());
    b.run_tick(a.at(500));
    b.adopt_session(transfer).expect("adopted");
    b.run_tick(a.at(1001));
    assert!(b.take_outgoing().is_empty());
    assert_eq!(b.settle_deadline(), Some(due));

    b.run_tick(due);
    let resent: Vec<_> = b
        .take_outgoing()
        .into_iter()
        .map(|(to, d)| (to, d.to_vec()))
        .collect();
    assert_eq!(resent, first, "the same packet, from the new multiplexer");
    assert!(b.take_events().is_empty(), "the application sees no change");
}

/// §9, §12: a deadline that moved later (the ack of the packet it would have
/// resent arrived) is not run when its old time comes: the timer moves to the
/// session's new deadline, which then runs as usual.
#[test]
fn a_timer_whose_deadline_moved_later_moves_instead_of_running() {
    let client = addr("10.0.0.1:5000");
    let mut c = Conversation::new(SocketConfig::default());
    let seed = c.open(0, client);
    c.mux.enqueue_data(&client, b"hello").unwrap();
    assert_eq!(c.tick(1000).len(), 1);
    let resend_at = c.mux.next_deadline().expect("a resend is due");
    // The client acknowledges sequence 0: nothing is due until the inactivity
    // timeout, 30 s after the ack.
    c.recv(1010, client, &sealed(seed, "00 15 00 00"));
    assert!(c.tick(1010).is_empty());
    assert_eq!(c.mux.next_deadline(), Some(resend_at), "the entry is stale");

    let ms = u64::try_from((resend_at - c.at(0)).as_millis()).unwrap() + 1;
    assert!(c.tick(ms).is_empty());
    let stats = c.mux.stats();
    assert_eq!((stats.timers_run, stats.timers_moved), (0, 1));
    // (An older entry, from before the resend was scheduled, is still in the
    // heap; settling drops it.)
    assert_eq!(c.mux.settle_deadline(), Some(c.at(1010 + 30_000)));

    // The moved timer runs when its time comes.
    assert!(c.tick(1010 + 30_000).is_empty());
    assert_eq!(c.mux.stats().timers_run, 1);
    assert_eq!(
        c.events(),
        [SocketEvent::SessionClosed {
            remote: client,
            reason: DisconnectReason::Timeout
        }]
    );
}

/// A turn's bound on timer work holds when timers come due stale: each moved
/// timer counts toward `run_timers`' limit, and the rest wait for the next call.
#[test]
fn moved_timers_count_toward_the_turn_limit() {
    let clients = [addr("10.0.0.1:5000"), addr("10.0.0.2:5000")];
    let mut c = Conversation::new(SocketConfig::default());
    let seeds = clients.map(|client| c.open(0, client));
    for client in clients {
        c.mux.enqueue_data(&client, b"hello").unwrap();
    }
    assert_eq!(c.tick(1000).len(), 2);
    let resend_at = c.mux.next_deadline().expect("resends are due");
    // Both acknowledge: both resend timers go stale.
    for (client, seed) in clients.into_iter().zip(seeds) {
        c.recv(1010, client, &sealed(seed, "00 15 00 00"));
    }
    assert!(c.tick(1010).is_empty());

    let now = resend_at + Duration::from_millis(1);
    assert!(c.mux.run_timers(now, 1), "one moved, one still due");
    assert_eq!(c.mux.stats().timers_moved, 1);
    assert!(!c.mux.run_timers(now, 1));
    let stats = c.mux.stats();
    assert_eq!((stats.timers_run, stats.timers_moved), (0, 2));
    assert!(!c.mux.needs_flush(), "nothing to flush for a moved timer");
}
