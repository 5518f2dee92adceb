//! Scripted conversations with one [`SoeSession`], smoltcp style: the test plays
//! the peer, writes its datagrams out byte by byte, and checks every datagram the
//! session sends byte for byte. Time is virtual (`ms` after an arbitrary epoch):
//! the session never reads the clock. Sections (§) are those of
//! `docs/protocol.md`.
//!
//! The session's random values come from the `secret` passed to
//! [`SoeSession::new`] (low half: a client's session id, high half: a server's
//! CRC seed), so here they are fixed and written into the expected bytes.

#![allow(clippy::disallowed_methods)] // one arbitrary epoch for the virtual clock

use std::time::{Duration, Instant};

use super::{
    ApplicationParameters, Channel, SessionEvent, SessionIo, SessionMode, SessionParameters,
    SessionState, SoeSession,
};
use crate::protocol::{DisconnectReason, soe_crc32};

/// The server's CRC seed in every conversation.
const SEED: u32 = 0xA1B2_C3D4;

/// The v3 SessionResponse a default server sends for `REQUEST_V3` (§7.2).
const RESPONSE_V3: &str = concat!(
    "00 02",       // SessionResponse
    "11 22 33 44", // session id, echoed
    "A1 B2 C3 D4", // CRC seed
    "02",          // CRC length 2
    "00",          // no compression flag (§5.1)
    "00",          // no encryption pass 1
    "00 00 02 00", // udp_length 512
    "00 00 00 03", // protocol version 3
);

use crate::test_support::{CLIENT_ID as ID, REQUEST_V3, hex};

/// `cooked` with the CRC trailer of the session's seed: the low two bytes of the
/// seeded CRC-32, most significant first (§4.1, §4.2). No compression flag: none
/// is negotiated in these conversations (§3.1).
fn seal(cooked: &[u8]) -> Vec<u8> {
    let mut datagram = cooked.to_vec();
    datagram.extend_from_slice(&soe_crc32(SEED, cooked).to_be_bytes()[2..]);
    datagram
}

/// A contextual packet written in hex, sealed with its CRC.
fn sealed(cooked_hex: &str) -> Vec<u8> {
    seal(&hex(cooked_hex))
}

/// One session and the buffers it writes into.
struct Conversation {
    session: SoeSession,
    io: SessionIo,
    epoch: Instant,
}

impl Conversation {
    fn new(mode: SessionMode, params: SessionParameters) -> Self {
        let epoch = Instant::now();
        let secret = (u64::from(SEED) << 32) | u64::from(ID);
        Self {
            session: SoeSession::new(
                mode,
                params,
                ApplicationParameters::default(),
                secret,
                epoch,
            ),
            io: SessionIo::new(),
            epoch,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// The peer's datagram arrives at `ms`.
    fn recv(&mut self, ms: u64, datagram: &[u8]) {
        let now = self.at(ms);
        self.session.handle_datagram(datagram, now, &mut self.io);
    }

    /// Runs the timers and flushes at `ms`; returns every datagram sent.
    fn tick(&mut self, ms: u64) -> Vec<Vec<u8>> {
        let now = self.at(ms);
        self.session.handle_timeout(now, &mut self.io);
        self.session.flush(now, &mut self.io);
        self.sent()
    }

    /// Datagrams written since the last call.
    fn sent(&mut self) -> Vec<Vec<u8>> {
        let out = self.io.datagrams().map(<[u8]>::to_vec).collect();
        self.io.clear_datagrams();
        out
    }

    /// Events since the last call.
    fn events(&mut self) -> Vec<SessionEvent> {
        self.io.drain_events().map(|(_, e)| e).collect()
    }

    fn enqueue(&mut self, data: &[u8]) {
        self.session
            .enqueue(data, Channel::Reliable(0))
            .expect("queued");
    }
}

fn received(data: &[u8]) -> SessionEvent {
    SessionEvent::DataReceived {
        data: bytes::Bytes::copy_from_slice(data),
        channel: Channel::Reliable(0),
    }
}

/// A default server session past its handshake (checked in
/// `server_v3_handshake`), with every output taken.
fn server(params: SessionParameters) -> Conversation {
    let mut c = Conversation::new(SessionMode::Server, params);
    c.recv(0, &hex(REQUEST_V3));
    assert_eq!(c.tick(0), [hex(RESPONSE_V3)]);
    c.recv(1, &sealed("00 06"));
    assert_eq!(c.tick(1), [sealed("00 06")]);
    assert_eq!(c.events(), [SessionEvent::Opened]);
    c
}

/// A default client session past its handshake (checked in
/// `client_v3_handshake`), with every output taken.
fn client() -> Conversation {
    let mut c = Conversation::new(SessionMode::Client, SessionParameters::default());
    assert_eq!(c.tick(0), [hex(REQUEST_V3)]);
    c.recv(1, &hex(RESPONSE_V3));
    assert_eq!(c.tick(1), [sealed("00 06")]);
    assert_eq!(c.events(), [SessionEvent::Opened]);
    c
}

/// §7.1, §7.3, §7.6: the client's request, its retry, and what it takes from the
/// response.
#[test]
fn client_v3_handshake() {
    let mut c = Conversation::new(SessionMode::Client, SessionParameters::default());
    assert_eq!(c.session.state(), SessionState::Negotiating);
    assert_eq!(c.tick(0), [hex(REQUEST_V3)]);
    // Nothing more until `connect_retry_interval` (1 s), then the same request.
    assert!(c.tick(999).is_empty());
    assert_eq!(c.tick(1000), [hex(REQUEST_V3)]);

    // A response for another session id is ignored (§7.6).
    c.recv(
        1010,
        &hex(concat!(
            "00 02",       // SessionResponse
            "99 99 99 99", // someone else's session id
            "A1 B2 C3 D4", // CRC seed
            "02 00 00",    // CRC length 2, no flag, no pass
            "00 00 02 00", // udp_length 512
            "00 00 00 03", // version 3
        )),
    );
    assert_eq!(c.session.state(), SessionState::Negotiating);
    assert!(c.events().is_empty());
    assert!(c.tick(1010).is_empty());

    // The server's answer: a smaller datagram limit than ours, CRC length 3.
    c.recv(
        1020,
        &hex(concat!(
            "00 02",       // SessionResponse
            "11 22 33 44", // our session id
            "A1 B2 C3 D4", // CRC seed
            "03",          // CRC length 3
            "00",          // no compression flag
            "00",          // no pass 1
            "00 00 01 F0", // the server accepts 496-byte datagrams
            "00 00 00 03", // version 3
        )),
    );
    assert_eq!(c.events(), [SessionEvent::Opened]);
    assert_eq!(c.session.state(), SessionState::Running);
    assert_eq!(c.session.crc_seed(), SEED);
    assert_eq!(c.session.params().crc_length, 3);
    assert_eq!(c.session.params().remote_udp_length, 0x1F0);
    // From now on every contextual datagram ends with the three CRC bytes the
    // server asked for (§4.2).
    let seal3 = |cooked: Vec<u8>| {
        let mut datagram = cooked.clone();
        datagram.extend_from_slice(&soe_crc32(SEED, &cooked).to_be_bytes()[1..]);
        datagram
    };
    // A Heartbeat at once completes the server's side (§7.3 step 3).
    assert_eq!(c.tick(1020), [seal3(hex("00 06"))]);
    // The request is not repeated once running.
    assert!(c.tick(2020).is_empty());

    // Datagrams are cut to the server's limit (§7.7): 496 bytes less CRC (3) and
    // op code + sequence (4) leave 489 payload bytes, of which a first fragment
    // carries 485 after the total length (§9.2).
    c.enqueue(&[0x5A; 600]);
    let mut first = hex(concat!(
        "00 0D",       // ReliableDataFragment, channel 0
        "00 00",       // sequence 0
        "00 00 02 58", // total length 600
    ));
    first.extend_from_slice(&[0x5A; 485]);
    let mut second = hex("00 0D 00 01"); // Fragment, sequence 1
    second.extend_from_slice(&[0x5A; 600 - 485]);
    let out = c.tick(2030);
    assert_eq!(out, [seal3(first), seal3(second)]);
    assert_eq!(out[0].len(), 496);
}

/// §7.4: a client of `protocol_version` 2 sends the 14-byte request and accepts
/// the 17-byte response.
#[test]
fn client_v2_handshake() {
    let params = SessionParameters {
        protocol_version: 2,
        ..SessionParameters::default()
    };
    let mut c = Conversation::new(SessionMode::Client, params);
    assert_eq!(
        c.tick(0),
        [hex(concat!(
            "00 01",       // SessionRequest
            "00 00 00 02", // protocol version 2
            "11 22 33 44", // session id
            "00 00 02 00", // udp_length 512; no name in v2
        ))]
    );
    c.recv(
        5,
        &hex(concat!(
            "00 02",       // SessionResponse, 17-byte form
            "11 22 33 44", // session id
            "A1 B2 C3 D4", // CRC seed
            "02",          // CRC length 2
            "00",          // no compression flag
            "00",          // no pass 1
            "00 00 02 00", // udp_length 512; no version in the v2 form
        )),
    );
    assert_eq!(c.events(), [SessionEvent::Opened]);
    assert_eq!(c.session.crc_seed(), SEED);
    assert_eq!(c.tick(5), [sealed("00 06")]);
}

/// §7.2, §7.3 steps 2 and 4, §13.1: request in, response out; the session opens
/// on the client's first valid packet, and Heartbeats are answered.
#[test]
fn server_v3_handshake() {
    let mut c = Conversation::new(SessionMode::Server, SessionParameters::default());
    c.recv(0, &hex(REQUEST_V3));
    assert_eq!(c.tick(0), [hex(RESPONSE_V3)]);
    // Half-open: not reported before the client proves it has the response.
    assert!(c.events().is_empty());
    assert!(c.session.is_half_open());

    // The client missed the response and asks again: the same response (§7.5).
    c.recv(300, &hex(REQUEST_V3));
    assert_eq!(c.tick(300), [hex(RESPONSE_V3)]);
    assert!(c.events().is_empty());

    // A Heartbeat with a wrong CRC proves nothing and is dropped (§3.3).
    let mut forged = sealed("00 06");
    forged[3] ^= 1;
    c.recv(310, &forged);
    assert!(c.events().is_empty());
    assert!(c.tick(310).is_empty());
    assert_eq!(c.session.stats().crc_failures, 1);

    // The client's Heartbeat: opened, and answered with one (§13.1).
    c.recv(320, &sealed("00 06"));
    assert_eq!(c.events(), [SessionEvent::Opened]);
    assert!(!c.session.is_half_open());
    assert_eq!(c.tick(320), [sealed("00 06")]);
}

/// §7.1, §7.3 step 2: a named request is answered only by a server of that name.
#[test]
fn server_v3_handshake_with_a_protocol_name() {
    let named = SessionParameters {
        application_protocol: "Ping".into(),
        ..SessionParameters::default()
    };
    let request = hex(concat!(
        "00 01",       // SessionRequest
        "00 00 00 03", // version 3
        "11 22 33 44", // session id
        "00 00 02 00", // udp_length 512
        "50 69 6E 67", // "Ping"
        "00",          // terminator
    ));
    let mut c = Conversation::new(SessionMode::Server, named);
    c.recv(0, &request);
    assert_eq!(c.tick(0), [hex(RESPONSE_V3)]);

    // Another name: ProtocolMismatch, without a reply (§7.5).
    let other = SessionParameters {
        application_protocol: "Pong".into(),
        ..SessionParameters::default()
    };
    let mut c = Conversation::new(SessionMode::Server, other);
    c.recv(0, &request);
    assert!(c.tick(0).is_empty());
    assert_eq!(
        c.events(),
        [SessionEvent::Closed(DisconnectReason::ProtocolMismatch)]
    );
}

/// §7.4: the 14-byte request is answered with the 17-byte response.
#[test]
fn server_v2_handshake() {
    let mut c = Conversation::new(SessionMode::Server, SessionParameters::default());
    c.recv(
        0,
        &hex(concat!(
            "00 01",       // SessionRequest
            "00 00 00 02", // protocol version 2
            "11 22 33 44", // session id
            "00 00 02 00", // udp_length 512
        )),
    );
    assert_eq!(
        c.tick(0),
        [hex(concat!(
            "00 02",       // SessionResponse
            "11 22 33 44", // session id
            "A1 B2 C3 D4", // CRC seed
            "02 00 00",    // CRC length 2, no flag, no pass 1
            "00 00 02 00", // udp_length 512; 17 bytes, no version
        ))]
    );
    c.recv(10, &sealed("00 06"));
    assert_eq!(c.events(), [SessionEvent::Opened]);
}

/// §8.1, §8.5, §8.7: one reliable message, sent again after the RTO (500 ms
/// before any round-trip sample) while unacknowledged, then released by an
/// AcknowledgeAll. The session is run as a driver runs it: at the deadlines it
/// reports.
#[test]
fn reliable_message_is_resent_after_the_rto_until_acknowledged() {
    let mut c = server(SessionParameters::default());
    let data = sealed(concat!(
        "00 09",          // ReliableData, channel 0
        "00 00",          // sequence 0
        "68 65 6C 6C 6F", // "hello"
    ));
    c.enqueue(b"hello");
    assert_eq!(c.tick(10), std::slice::from_ref(&data));
    assert_eq!(c.session.next_deadline(), Some(c.at(510)));
    assert!(c.tick(509).is_empty());
    // The RTO: the same bytes again (packets are built once, §8.5).
    assert_eq!(c.tick(510), std::slice::from_ref(&data));
    // Still nothing acknowledged a probe timeout later (before any sample the
    // PTO is the RTO it was armed with, 500 ms): one probe (§8.7).
    assert_eq!(c.session.next_deadline(), Some(c.at(1010)));
    assert_eq!(c.tick(1010), std::slice::from_ref(&data));
    // Then the doubled RTO, 1 s after the last send (§8.7). (The session wakes
    // once on the way, at the RTO of the send before the probe, and finds
    // nothing due.)
    assert_eq!(c.session.next_deadline(), Some(c.at(1510)));
    assert!(c.tick(1510).is_empty());
    assert_eq!(c.session.next_deadline(), Some(c.at(2010)));
    assert!(c.tick(2009).is_empty());
    assert_eq!(c.tick(2010), std::slice::from_ref(&data));
    assert_eq!(c.session.stats().reliable_packets_resent, 3);

    // The peer's AcknowledgeAll of sequence 0 releases it: nothing more, ever.
    c.recv(2020, &sealed("00 15 00 00")); // AcknowledgeAll, channel 0, sequence 0
    assert!(c.session.is_flushed());
    // What is left is the inactivity timeout (§13.2), 30 s after the ack.
    assert_eq!(c.session.next_deadline(), Some(c.at(32_020)));
    for ms in [2020, 3010, 4010, 10_000, 30_000] {
        assert!(c.tick(ms).is_empty(), "sent at {ms} ms");
    }
    assert_eq!(c.session.stats().reliable_packets_resent, 3);
}

/// §8.7: "when nothing at all has been acknowledged for a probe timeout" the
/// oldest packet is sent again. Flushes that send nothing and acknowledge
/// nothing (an application that flushes every game tick, a peer whose other
/// traffic wakes the session) must not push the probe back.
#[test]
fn flushes_that_send_nothing_do_not_postpone_the_probe() {
    let mut c = server(SessionParameters::default());
    let data = sealed("00 09 00 00 68 65 6C 6C 6F"); // ReliableData seq 0, "hello"
    c.enqueue(b"hello");
    assert_eq!(c.tick(10), std::slice::from_ref(&data));
    assert_eq!(c.tick(510), std::slice::from_ref(&data)); // the RTO
    // The application flushes every 100 ms; nothing is due.
    for ms in (610..1010).step_by(100) {
        assert!(c.tick(ms).is_empty(), "sent at {ms} ms");
    }
    // The probe is where it was: 500 ms after the retransmission.
    assert_eq!(c.tick(1010), [data]);
}

/// §8.6, §8.7: an ack that releases something restarts the probe timer, with
/// the round trip it measured: PTO = SRTT + 4·RTTVAR + `peer_max_ack_delay`.
#[test]
fn an_ack_restarts_the_probe_with_the_measured_round_trip() {
    let mut c = server(SessionParameters::default());
    c.enqueue(b"a");
    assert_eq!(c.tick(10), [sealed("00 09 00 00 61")]); // ReliableData seq 0, "a"
    c.enqueue(b"b");
    assert_eq!(c.tick(20), [sealed("00 09 00 01 62")]); // ReliableData seq 1, "b"
    // Sequence 0 acknowledged after 20 ms: SRTT 20, RTTVAR 10, so the PTO is
    // 20 + 40 + 50 (`peer_max_ack_delay`) = 110 ms from the ack; the RTO is
    // later (its 100 ms floor plus the peer's ack delay).
    c.recv(30, &sealed("00 15 00 00")); // AcknowledgeAll 0
    assert_eq!(c.session.rtt(), Some(Duration::from_millis(20)));
    assert!(c.tick(139).is_empty());
    assert_eq!(c.tick(140), [sealed("00 09 00 01 62")]); // the probe
    c.recv(150, &sealed("00 15 00 01")); // AcknowledgeAll 1
    assert!(c.session.is_flushed());
    assert!(c.tick(1000).is_empty());
}

/// §8.6, §8.7: selective acks of three later packets declare the first lost
/// (RFC 9002's packet threshold): it is sent again at the next flush, before any
/// timer.
#[test]
fn selective_acks_past_a_packet_declare_it_lost() {
    let mut c = server(SessionParameters::default());
    for (ms, byte) in [(10, 0x61), (11, 0x62), (12, 0x63), (13, 0x64)] {
        c.enqueue(&[byte]);
        let mut packet = hex("00 09 00"); // ReliableData, channel 0, sequence 00..
        packet.push(byte - 0x61); // ..00 to 03
        packet.push(byte); // "a" to "d"
        assert_eq!(c.tick(ms), [seal(&packet)]);
    }
    c.recv(
        40,
        &sealed(concat!(
            "00 03",          // MultiPacket
            "04 00 11 00 01", // length 4, Acknowledge ch 0, seq 1
            "04 00 11 00 02", // length 4, Acknowledge ch 0, seq 2
            "04 00 11 00 03", // length 4, Acknowledge ch 0, seq 3
        )),
    );
    assert_eq!(c.tick(40), [sealed("00 09 00 00 61")]); // seq 0 again
    assert_eq!(c.session.stats().reliable_packets_resent, 1);
    c.recv(50, &sealed("00 15 00 03")); // AcknowledgeAll 3
    assert!(c.session.is_flushed());
    assert!(c.tick(2000).is_empty());
}

/// §3.3, §10.6, §14.3: a packet whose CRC holds but that does not parse (a
/// multi-packet length past the end) ends the session with `CorruptPacket`, and
/// the peer is told.
#[test]
fn corrupt_packet_with_a_valid_crc_ends_the_session_with_a_disconnect() {
    let mut c = server(SessionParameters::default());
    c.recv(
        10,
        &sealed(concat!(
            "00 03", // MultiPacket
            "05",    // length 5, but only two bytes follow
            "00 06", // Heartbeat
        )),
    );
    assert_eq!(
        c.sent(),
        [sealed(concat!(
            "00 05",       // Disconnect
            "11 22 33 44", // session id
            "00 0F",       // CorruptPacket
        ))]
    );
    assert_eq!(
        c.events(),
        [SessionEvent::Closed(DisconnectReason::CorruptPacket)]
    );
    assert!(c.tick(10).is_empty());
}

/// §8, §10.5: every kind of sub-packet reads in a multi-packet as it reads alone:
/// reliable data and acks, application data (plain and zero-escaped) delivered
/// unreliably, contextless packets and acks of nothing sent ignored and counted;
/// a malformed sub-packet (reliable data without a payload) ends the session,
/// and nothing after it is read.
#[test]
fn every_kind_of_sub_packet_reads_in_a_multi_packet_as_alone() {
    let mut c = server(SessionParameters::default());
    c.recv(
        10,
        &sealed(concat!(
            "00 03",             // MultiPacket
            "05 00 09 00 00 61", // ReliableData seq 0 "a"
            "02 62 63",          // application data "bc"
            "03 00 00 64",       // zero-escaped application data "00 64"
            "02 00 1D",          // UnknownSender: contextless, ignored
            "04 00 15 00 05",    // AcknowledgeAll 5: we sent nothing, ignored
        )),
    );
    assert_eq!(
        c.events(),
        [
            received(&hex("61")),
            SessionEvent::DataReceived {
                data: bytes::Bytes::from_static(b"bc"),
                channel: Channel::Unreliable,
            },
            SessionEvent::DataReceived {
                data: bytes::Bytes::from_static(&[0x00, 0x64]),
                channel: Channel::Unreliable,
            },
        ]
    );
    assert_eq!(c.session.stats().ignored_packets, 2);
    assert_eq!(c.session.state(), SessionState::Running);

    c.recv(
        20,
        &sealed(concat!(
            "00 03",             // MultiPacket
            "04 00 09 00 01",    // ReliableData seq 1 without a payload
            "05 00 09 00 01 62", // ReliableData seq 1 "b": never read
        )),
    );
    assert_eq!(
        c.events(),
        [SessionEvent::Closed(DisconnectReason::CorruptPacket)]
    );
}

/// §8.4, §10.1, §10.5: what a client sends after the handshake shares one
/// multi-packet (one-byte lengths by default); the peer's multi-packets are read
/// sub-packet by sub-packet, and an ack alone goes out as a bare packet.
#[test]
fn acks_heartbeat_and_data_share_multi_packets() {
    let mut c = Conversation::new(SessionMode::Client, SessionParameters::default());
    assert_eq!(c.tick(0), [hex(REQUEST_V3)]);
    c.recv(1, &hex(RESPONSE_V3));
    // Data queued in the same turn rides with the Heartbeat (§7.6).
    c.enqueue(b"hi");
    assert_eq!(
        c.tick(1),
        [sealed(concat!(
            "00 03",                // MultiPacket
            "02 00 06",             // length 2, Heartbeat
            "06 00 09 00 00 68 69", // length 6, ReliableData ch 0, seq 0, "hi"
        ))]
    );

    // The peer acknowledges and sends data of its own in one multi-packet.
    c.recv(
        20,
        &sealed(concat!(
            "00 03",                   // MultiPacket
            "04 00 15 00 00",          // length 4, AcknowledgeAll ch 0, seq 0
            "07 00 09 00 00 61 62 63", // length 7, ReliableData ch 0, seq 0, "abc"
        )),
    );
    assert_eq!(c.events(), [SessionEvent::Opened, received(b"abc")]);
    assert!(c.session.is_flushed());
    // A lone packet's AcknowledgeAll waits `lone_ack_delay` (40 ms) for data
    // to ride on (§8.4); with none, it goes alone: a bare packet (§10.5).
    assert!(c.tick(20).is_empty());
    assert_eq!(c.tick(60), [sealed("00 15 00 00")]);

    // Data both ways: our ack rides along with our new data (§8.4).
    c.recv(80, &sealed("00 09 00 01 64 65 66")); // ReliableData seq 1, "def"
    c.enqueue(b"xyz");
    assert_eq!(
        c.tick(80),
        [sealed(concat!(
            "00 03",                   // MultiPacket
            "04 00 15 00 01",          // length 4, AcknowledgeAll ch 0, seq 1
            "07 00 09 00 01 78 79 7A", // length 7, ReliableData ch 0, seq 1, "xyz"
        ))]
    );
    assert_eq!(c.events(), [received(b"def")]);
}

/// §8.2, §8.3, §8.4: the receiver counts past `FFFF`: sequence `0000` after it is
/// the next packet, not a duplicate, and is acknowledged as `00 00`; a late copy
/// of `FFFF` is a duplicate, answered with AcknowledgeAll of the last delivered.
#[test]
fn receiver_acknowledges_across_the_sequence_wrap() {
    let mut c = server(SessionParameters::default());
    for seq in 0..=0xFFFFu32 {
        let mut cooked = hex("00 09"); // ReliableData, channel 0
        cooked.extend_from_slice(&(seq as u16).to_be_bytes());
        cooked.push(0x2A); // one payload byte
        c.recv(10, &seal(&cooked));
        if seq % 4096 == 4095 {
            assert_eq!(c.events().len(), 4096);
        }
    }
    assert_eq!(c.tick(10), [sealed("00 15 FF FF")]); // AcknowledgeAll, seq FFFF

    // Sequence 0 again, 65 536 packets later: new data.
    c.recv(20, &sealed("00 09 00 00 77 72 61 70")); // seq 0000, "wrap"
    assert_eq!(c.events(), [received(b"wrap")]);
    // Alone, its ack waits `lone_ack_delay` (40 ms) for a ride (§8.4).
    assert!(c.tick(20).is_empty());
    assert_eq!(c.tick(60), [sealed("00 15 00 00")]); // AcknowledgeAll, seq 0000
    assert_eq!(c.session.stats().duplicate_packets, 0);

    // A late copy of FFFF: a duplicate, not delivered, answered at once.
    c.recv(70, &sealed("00 09 FF FF 2A"));
    assert!(c.events().is_empty());
    assert_eq!(c.tick(70), [sealed("00 15 00 00")]);
    assert_eq!(c.session.stats().duplicate_packets, 1);
    // Then quiet.
    assert!(c.tick(100).is_empty());
}

/// A server whose next reliable sequence is `FFFE`: 65 534 one-byte messages
/// sent and acknowledged, with neither coalescing nor congestion control (so each
/// is one packet in one datagram, and they go quickly). Returns the conversation
/// and the next free millisecond.
fn server_about_to_wrap() -> (Conversation, u64) {
    let params = SessionParameters {
        coalesce: false,
        congestion_control: false,
        ..SessionParameters::default()
    };
    let mut c = server(params);
    let mut sent = 0u32;
    let mut ms = 10;
    while sent < 0xFFFE {
        let batch = (0xFFFE - sent).min(128);
        for _ in 0..batch {
            c.enqueue(&[0x2A]);
        }
        assert_eq!(c.tick(ms).len(), batch as usize);
        sent += batch;
        let mut ack = hex("00 15"); // AcknowledgeAll, channel 0
        ack.extend_from_slice(&((sent - 1) as u16).to_be_bytes());
        c.recv(ms, &seal(&ack));
        assert!(c.session.is_flushed());
        ms += 10;
    }
    (c, ms)
}

/// §8.2, §8.6: the sender extends an ack to the newest packet it can name, so
/// an AcknowledgeAll of `00 01` after the wrap covers `FFFE` and `FFFF` before it;
/// one of `FFFF` releases only the packets up to the wrap.
#[test]
fn sender_takes_an_ack_all_after_the_wrap_as_covering_packets_before_it() {
    let (mut c, ms) = server_about_to_wrap();
    // Four packets: sequences FFFE, FFFF, 0000, 0001.
    for byte in [0x01, 0x02, 0x03, 0x04] {
        c.enqueue(&[byte]);
    }
    let start = ms;
    assert_eq!(
        c.tick(start),
        [
            sealed("00 09 FF FE 01"),
            sealed("00 09 FF FF 02"),
            sealed("00 09 00 00 03"),
            sealed("00 09 00 01 04"),
        ]
    );
    // AcknowledgeAll FFFF: the two before the wrap only.
    c.recv(start + 1, &sealed("00 15 FF FF"));
    assert!(!c.session.is_flushed());
    // The RTO (100 ms, the floor, after round trips of zero) resends the other
    // two alone.
    let resent = c.tick(start + 200);
    assert_eq!(resent, [sealed("00 09 00 00 03"), sealed("00 09 00 01 04")]);
    // AcknowledgeAll 0001 covers the rest.
    c.recv(start + 201, &sealed("00 15 00 01"));
    assert!(c.session.is_flushed());
    assert!(c.tick(start + 5000).is_empty());
}

/// §8.2, §8.6: an AcknowledgeAll naming a post-wrap sequence releases every
/// packet before the wrap too.
#[test]
fn one_ack_all_after_the_wrap_releases_packets_before_it() {
    let (mut c, ms) = server_about_to_wrap();
    for byte in [0x01, 0x02, 0x03] {
        c.enqueue(&[byte]);
    }
    assert_eq!(c.tick(ms).len(), 3); // FFFE, FFFF, 0000
    c.recv(ms + 1, &sealed("00 15 00 00")); // AcknowledgeAll 0000
    assert!(c.session.is_flushed());
    assert!(c.tick(ms + 5000).is_empty());
}

/// §9.1, §9.2: a message too large for one packet goes out as fragments, the
/// first with the total length; 502 then 506 bytes per fragment by default.
#[test]
fn large_message_goes_out_as_fragments() {
    let mut c = server(SessionParameters::default());
    let message: Vec<u8> = (0..1200u32).map(|i| (i % 251) as u8).collect();
    c.enqueue(&message);
    let out = c.tick(10);

    let mut first = hex(concat!(
        "00 0D",       // ReliableDataFragment, channel 0
        "00 00",       // sequence 0
        "00 00 04 B0", // total length 1200
    ));
    first.extend_from_slice(&message[..502]);
    let mut second = hex("00 0D 00 01"); // Fragment, sequence 1
    second.extend_from_slice(&message[502..1008]);
    let mut third = hex("00 0D 00 02"); // Fragment, sequence 2
    third.extend_from_slice(&message[1008..]);
    // Each travels alone: too long for a one-byte multi-packet length (§10.4),
    // and the last has nothing to share a datagram with.
    assert_eq!(out, [seal(&first), seal(&second), seal(&third)]);
    assert_eq!(out[0].len(), 512);
    assert_eq!(out[1].len(), 512);

    c.recv(20, &sealed("00 15 00 02")); // AcknowledgeAll 2: all three
    assert!(c.session.is_flushed());
    assert!(c.tick(2000).is_empty());
}

/// §9.1, §9.3, §8.3, §8.4: fragments written by hand, one out of order, make one
/// message; the early one is acknowledged selectively, the rest cumulatively.
#[test]
fn hand_written_fragments_reassemble_into_one_message() {
    let mut c = server(SessionParameters::default());
    c.recv(
        10,
        &sealed(concat!(
            "00 0D",       // ReliableDataFragment, channel 0
            "00 00",       // sequence 0
            "00 00 00 0A", // total length 10
            "01 02 03 04", // the first four bytes
        )),
    );
    assert!(c.events().is_empty());
    // A lone packet: its ack waits `lone_ack_delay` (40 ms) for a ride (§8.4).
    assert!(c.tick(10).is_empty());

    // Sequence 2 before 1: stashed, and the gap is acknowledged at once:
    // selectively, and the held AcknowledgeAll 0 rides in the same datagram.
    c.recv(20, &sealed("00 0D 00 02 08 09 0A")); // Fragment seq 2, last 3 bytes
    assert!(c.events().is_empty());
    assert_eq!(
        c.tick(20),
        [sealed(concat!(
            "00 03",          // MultiPacket
            "04 00 11 00 02", // length 4, Acknowledge 2
            "04 00 15 00 00", // length 4, AcknowledgeAll 0
        ))]
    );

    // Sequence 1 fills the gap: one message of ten bytes.
    c.recv(30, &sealed("00 0D 00 01 05 06 07")); // Fragment seq 1, middle 3 bytes
    assert_eq!(
        c.events(),
        [received(&hex("01 02 03 04 05 06 07 08 09 0A"))]
    );
    assert_eq!(c.tick(30), [sealed("00 15 00 02")]); // AcknowledgeAll 2
    assert_eq!(c.session.buffered_bytes(), 0);
}

/// §14.1, §14.4: the peer's Disconnect ends the session with the peer's reason,
/// without a reply; one with another session id is ignored.
#[test]
fn peer_disconnect_ends_the_session_with_its_reason() {
    let mut c = server(SessionParameters::default());
    c.recv(
        10,
        &sealed(concat!(
            "00 05",       // Disconnect
            "55 66 77 88", // not our session id
            "00 06",       // Application
        )),
    );
    assert!(c.events().is_empty());
    assert_eq!(c.session.state(), SessionState::Running);
    assert_eq!(c.session.stats().ignored_packets, 1);

    c.recv(
        20,
        &sealed(concat!(
            "00 05",       // Disconnect
            "11 22 33 44", // our session id
            "00 08",       // UnacknowledgedTimeout
        )),
    );
    assert_eq!(
        c.events(),
        [SessionEvent::Closed(
            DisconnectReason::UnacknowledgedTimeout
        )]
    );
    assert_eq!(c.session.state(), SessionState::Terminated);
    assert!(c.session.terminated_by_remote());
    assert!(c.tick(20).is_empty());
}

/// §14.1: a Disconnect without the reason field (6 bytes) reads as reason `None`.
#[test]
fn peer_disconnect_without_a_reason_reads_as_none() {
    let mut c = client();
    c.recv(
        10,
        &sealed(concat!(
            "00 05",       // Disconnect
            "11 22 33 44", // session id; no reason
        )),
    );
    assert_eq!(c.events(), [SessionEvent::Closed(DisconnectReason::None)]);
    assert!(c.tick(10).is_empty());
}

/// §14.3: closing sends what is queued, then the Disconnect alone, with the
/// session id and the reason.
#[test]
fn application_close_sends_pending_data_then_disconnect() {
    let mut c = client();
    c.enqueue(b"bye");
    let now = c.at(10);
    c.session
        .terminate(DisconnectReason::Application, true, now, &mut c.io);
    assert_eq!(
        c.sent(),
        [
            sealed("00 09 00 00 62 79 65"), // ReliableData seq 0, "bye"
            sealed(concat!(
                "00 05",       // Disconnect
                "11 22 33 44", // session id
                "00 06",       // Application
            )),
        ]
    );
    assert_eq!(
        c.events(),
        [SessionEvent::Closed(DisconnectReason::Application)]
    );
    assert!(!c.session.terminated_by_remote());
    // Ended: no retransmission of the unacknowledged message.
    assert!(c.tick(5000).is_empty());
}
