//! Hostile and malformed input against an established server session: nothing
//! panics, memory stays within the caps, and each bad datagram is either dropped and
//! counted or ends the session with the right reason.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use soe_testkit::peer::{self, fragment, reliable};
use soe_uring::protocol::{Compressor, Framing, Packet, SessionResponse};
use soe_uring::*;

const PROTOCOL: &str = "Hostile";

fn client() -> SocketAddr {
    "10.1.1.1:5000".parse().unwrap()
}

struct Server {
    mux: SoeMultiplexer<SocketAddr>,
    now: Instant,
    /// What the client negotiated.
    framing: Framing,
}

fn config(compression: bool) -> SocketConfig {
    let mut c = SocketConfig {
        rng_seed: Some(9),
        ..SocketConfig::default()
    };
    c.default_session_params.application_protocol = PROTOCOL.into();
    c.default_session_params.is_compression_enabled = compression;
    c.default_session_params.max_reassembly_len = 64 << 10;
    // The window the stash and out-of-window tests below are written against.
    c.default_session_params.max_queued_incoming_reliable = 256;
    c
}

fn request(session_id: u32) -> Vec<u8> {
    peer::session_request(3, session_id, 512, Some(PROTOCOL))
}

impl Server {
    /// A server with one established session from `client()`.
    fn new(compression: bool) -> Self {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut mux = SoeMultiplexer::new(config(compression));
        mux.process_incoming(client(), request(0xABCD), now);
        mux.run_tick(now);
        let (_, response) = mux.outgoing(0);
        let Ok(Packet::SessionResponse(SessionResponse {
            crc_seed,
            crc_length,
            ..
        })) = Packet::parse(response)
        else {
            panic!("no response")
        };
        mux.consume_outgoing(usize::MAX);
        let mut server = Self {
            mux,
            now,
            framing: Framing::new(crc_seed, crc_length, compression),
        };
        // A heartbeat completes the handshake (the server opens on the next packet).
        server.feed(&[0x00, 0x06]);
        assert!(matches!(
            server.mux.poll_event(),
            Some(SocketEvent::SessionOpened { .. })
        ));
        server
    }

    /// Frames a cooked contextual packet: flag (uncompressed) and CRC.
    fn seal(&self, cooked: &[u8]) -> Vec<u8> {
        peer::seal(&self.framing, cooked)
    }

    fn send_raw(&mut self, datagram: &[u8]) {
        self.now += Duration::from_millis(1);
        self.mux.process_incoming(client(), datagram, self.now);
        self.mux.run_tick(self.now);
        self.mux.consume_outgoing(usize::MAX);
    }

    fn feed(&mut self, cooked: &[u8]) {
        let sealed = self.seal(cooked);
        self.send_raw(&sealed);
    }

    fn alive(&self) -> bool {
        self.mux.session(&client()).is_some()
    }

    fn closed_reason(&mut self) -> Option<DisconnectReason> {
        while let Some(event) = self.mux.poll_event() {
            if let SocketEvent::SessionClosed { reason, .. } = event {
                return Some(reason);
            }
        }
        None
    }

    fn stats(&self) -> MuxStats {
        self.mux.stats()
    }
}

#[test]
fn garbage_and_truncated_datagrams_are_dropped_and_counted() {
    let mut s = Server::new(false);
    let mut x: u64 = 0x1234_5678;
    for len in 0..600 {
        let datagram: Vec<u8> = (0..len % 70)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        s.send_raw(&datagram);
        // Truncations of a valid packet.
        let valid = s.seal(&reliable(0x4000, b"hello"));
        s.send_raw(&valid[..len % valid.len()]);
    }
    assert!(
        s.alive(),
        "random garbage with bad CRCs must not end the session"
    );
    let st = s.stats();
    assert!(st.sessions.crc_failures + st.sessions.malformed_datagrams > 500);
    assert_eq!(st.sessions.messages_delivered, 0);
}

#[test]
fn oversized_datagram_is_harmless() {
    let mut s = Server::new(false);
    s.send_raw(&vec![0x41; 70_000]);
    let mut big = vec![0x00, 0x09, 0x00, 0x00];
    big.extend(std::iter::repeat_n(7u8, 66_000));
    s.feed(&big);
    // A valid CRC over an oversized packet is still data: delivered once.
    assert!(s.alive());
}

#[test]
fn huge_declared_fragment_length_ends_with_reliable_overflow() {
    let mut s = Server::new(false);
    let mut chunk = 0xFFFF_FFFFu32.to_be_bytes().to_vec();
    chunk.extend_from_slice(&[1; 16]);
    s.feed(&fragment(0, &chunk));
    assert!(!s.alive());
    assert_eq!(s.closed_reason(), Some(DisconnectReason::ReliableOverflow));
    assert_eq!(s.stats().closed_by(DisconnectReason::ReliableOverflow), 1);
}

#[test]
fn short_master_fragment_and_overflowing_chunks_are_corrupt() {
    let mut s = Server::new(false);
    s.feed(&fragment(0, &[0xab, 0xcd]));
    assert_eq!(s.closed_reason(), Some(DisconnectReason::CorruptPacket));

    let mut s = Server::new(false);
    let mut master = 20u32.to_be_bytes().to_vec();
    master.extend_from_slice(&[1; 16]);
    s.feed(&fragment(0, &master));
    assert!(s.alive());
    s.feed(&fragment(1, &[2; 16]));
    assert_eq!(s.closed_reason(), Some(DisconnectReason::CorruptPacket));

    // A zero total length is corrupt too.
    let mut s = Server::new(false);
    s.feed(&fragment(0, &[0, 0, 0, 0, 1]));
    assert_eq!(s.closed_reason(), Some(DisconnectReason::CorruptPacket));
}

// Vectors: tests/vectors/v18_fragments.txt.
#[test]
fn v18_fragment_shapes() {
    // Three 16-byte fragments of a 48-byte message, delivered once, in order 2, 0, 1.
    let mut s = Server::new(false);
    let data: Vec<u8> = (0..48).collect();
    let mut master = 48u32.to_be_bytes().to_vec();
    master.extend_from_slice(&data[..16]);
    s.feed(&fragment(2, &data[32..]));
    s.feed(&fragment(0, &master));
    s.feed(&fragment(1, &data[16..32]));
    let mut got = Vec::new();
    while let Some(e) = s.mux.poll_event() {
        if let SocketEvent::DataReceived { data, .. } = e {
            got.push(data);
        }
    }
    assert_eq!(got, [data.as_slice()]);
    assert!(s.alive());
}

#[test]
fn bad_multi_packet_lengths_end_the_session_and_stop_processing() {
    // Vector v18_multi_packet_stops_after_corruption: a corrupt master fragment
    // terminates; the data after it is never delivered.
    let mut s = Server::new(false);
    let multi = [
        0x00, 0x03, 0x06, 0x00, 0x0d, 0x00, 0x00, 0xab, 0xcd, 0x06, 0x00, 0x09, 0x00, 0x00, 0x68,
        0x69,
    ];
    s.feed(&multi);
    let mut data = 0;
    let mut reason = None;
    while let Some(e) = s.mux.poll_event() {
        match e {
            SocketEvent::DataReceived { .. } => data += 1,
            SocketEvent::SessionClosed { reason: r, .. } => reason = Some(r),
            _ => {}
        }
    }
    assert_eq!(data, 0);
    assert_eq!(reason, Some(DisconnectReason::CorruptPacket));

    // A length running past the end.
    let mut s = Server::new(false);
    s.feed(&[0x00, 0x03, 0x0a, 0x00, 0x06]);
    assert_eq!(s.closed_reason(), Some(DisconnectReason::CorruptPacket));

    // Deeply nested multi-packets.
    let mut s = Server::new(false);
    let mut nested = vec![0x00, 0x06];
    for _ in 0..10 {
        let mut outer = vec![0x00, 0x03, nested.len() as u8];
        outer.extend_from_slice(&nested);
        nested = outer;
    }
    s.feed(&nested);
    assert_eq!(s.closed_reason(), Some(DisconnectReason::CorruptPacket));
}

#[test]
fn compression_bomb_is_capped() {
    let mut s = Server::new(true);
    let mut body = vec![0x00, 0x00];
    body.extend(std::iter::repeat_n(0u8, 1 << 20));
    let mut packed = vec![0u8; 1 << 20];
    let n = Compressor::new(9).compress(&body, &mut packed).unwrap();
    assert!(n < 2_000);
    let mut datagram = vec![0x00, 0x09, 0x01];
    datagram.extend_from_slice(&packed[..n]);
    s.send_raw(&peer::with_crc(&s.framing, &datagram));
    assert_eq!(s.closed_reason(), Some(DisconnectReason::CorruptPacket));
}

#[test]
fn far_future_and_stale_sequences_are_dropped_and_counted() {
    let mut s = Server::new(false);
    s.feed(&reliable(0, b"first"));
    // A whole window ahead (and more): dropped unacknowledged.
    for seq in [300u16, 1000, 30_000] {
        s.feed(&reliable(seq, b"ahead"));
    }
    // Duplicates of delivered data.
    for _ in 0..5 {
        s.feed(&reliable(0, b"first"));
    }
    let st = s.stats().sessions;
    assert_eq!(st.out_of_window_packets, 3);
    assert_eq!(st.duplicate_packets, 5, "{st:?}");
    assert_eq!(st.messages_delivered, 1);
    assert!(s.alive());
}

#[test]
fn out_of_order_stash_is_bounded_by_the_window() {
    let mut s = Server::new(false);
    // Everything but sequence 0, twice: stashed once, never delivered, never grows.
    for round in 0..2 {
        for seq in 1..400u16 {
            s.feed(&reliable(seq, &[round as u8; 400]));
        }
    }
    let st = s.stats().sessions;
    assert_eq!(st.out_of_order_packets, 255);
    assert_eq!(st.messages_delivered, 0);
    s.feed(&reliable(0, b"go"));
    let mut n = 0;
    while let Some(e) = s.mux.poll_event() {
        if let SocketEvent::DataReceived { data, .. } = e {
            if n > 0 {
                assert_eq!(data.as_ref(), &[0u8; 400][..], "first copy kept");
            }
            n += 1;
        }
    }
    assert_eq!(n, 256);
}

#[test]
fn session_request_flood_is_bounded() {
    let mut c = config(false);
    c.max_half_open_sessions = 64;
    c.max_sessions = 1_000;
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut mux = SoeMultiplexer::<SocketAddr>::new(c);
    for i in 0..20_000u32 {
        let from = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 4000));
        mux.process_incoming(from, request(i), now);
        if i % 256 == 0 {
            mux.run_tick(now);
            mux.consume_outgoing(usize::MAX);
        }
    }
    assert!(mux.session_count() <= 64);
    assert_eq!(mux.half_open_count(), mux.session_count());
    assert_eq!(mux.stats().evicted_half_open, 20_000 - 64);
    // No events for sessions the application never saw opened.
    assert_eq!(mux.poll_event(), None);
}

#[test]
fn requests_with_the_wrong_protocol_are_refused() {
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut mux = SoeMultiplexer::<SocketAddr>::new(config(false));
    let mut wrong = request(1);
    let at = wrong.len() - 2;
    wrong[at] ^= 1;
    mux.process_incoming(client(), &wrong, now);
    let mut v9 = request(2);
    v9[5] = 9;
    mux.process_incoming(client(), &v9, now);
    mux.run_tick(now);
    assert_eq!(mux.session_count(), 0);
    assert_eq!(mux.outgoing_len(), 0);
    assert_eq!(mux.stats().refused_protocol_mismatch, 2);
}

#[test]
fn forged_contextless_packets_do_not_kill_a_session() {
    let mut s = Server::new(false);
    // UnknownSender must be exactly two bytes; a longer look-alike is ignored.
    s.send_raw(&[0x00, 0x1d, 0x00, 0x07, 0x12, 0x34]);
    // A SessionRequest fragment with a new id but a bad shape does not replace it.
    let mut req = request(0x9999);
    req.push(0x55);
    s.send_raw(&req);
    // A SessionResponse to a server is ignored.
    s.send_raw(&[
        0x00, 0x02, 0, 0, 0xab, 0xcd, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3,
    ]);
    assert!(s.alive());
    // A well-formed request with a new id is a restarted client: the old session goes.
    s.send_raw(&request(0x9999));
    assert_eq!(
        s.mux.session(&client()).map(|x| x.session_id()),
        Some(0x9999)
    );
}

#[test]
fn many_sessions_beyond_the_half_open_cap_all_open() {
    // Half-open is a pool of sessions waiting for their first packet, not a cap on
    // sessions: clients that complete their handshake make room for more.
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut c = config(false);
    c.max_half_open_sessions = 64;
    let mut mux = SoeMultiplexer::<SocketAddr>::new(c);
    let n = 1_000u32;
    for i in 0..n {
        let from = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 7000));
        mux.process_incoming(from, request(i), now);
        mux.run_tick(now);
        let (_, response) = mux.outgoing(0);
        let Ok(Packet::SessionResponse(r)) = Packet::parse(response) else {
            panic!("no response for {i}")
        };
        mux.consume_outgoing(usize::MAX);
        let hb = peer::seal(&Framing::new(r.crc_seed, 2, false), &[0x00, 0x06]);
        mux.process_incoming(from, &hb, now);
        mux.run_tick(now);
        mux.consume_outgoing(usize::MAX);
    }
    assert_eq!(mux.session_count(), n as usize);
    assert_eq!(mux.half_open_count(), 0);
    assert_eq!(mux.stats().evicted_half_open, 0);
}

#[test]
fn half_open_bookkeeping_stays_bounded_under_churn() {
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut mux = SoeMultiplexer::<SocketAddr>::new(config(false));
    // 50 000 clients connect, complete the handshake and leave.
    for i in 0..50_000u32 {
        let from = SocketAddr::from(([10, 2, (i >> 8) as u8, i as u8], (i >> 16) as u16 + 1));
        mux.process_incoming(from, request(i), now);
        mux.run_tick(now);
        let (_, response) = mux.outgoing(0);
        let Ok(Packet::SessionResponse(r)) = Packet::parse(response) else {
            panic!()
        };
        mux.consume_outgoing(usize::MAX);
        let hb = peer::seal(&Framing::new(r.crc_seed, 2, false), &[0x00, 0x06]);
        mux.process_incoming(from, &hb, now);
        mux.terminate(&from, DisconnectReason::Application, now);
        mux.run_tick(now);
        mux.consume_outgoing(usize::MAX);
        while mux.poll_event().is_some() {}
    }
    assert_eq!(mux.session_count(), 0);
    assert_eq!(mux.half_open_count(), 0);
    assert_eq!(mux.stats().sessions_opened, 50_000);
}

#[test]
fn buffer_budget_bounds_what_all_sessions_hold() {
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut c = config(false);
    c.max_buffered_bytes = 4_000;
    let mut mux = SoeMultiplexer::<SocketAddr>::new(c);
    // Two clients, each with a sealing helper.
    let mut seals = Vec::new();
    for i in 0..2u8 {
        let from = SocketAddr::from(([10, 3, 0, i], 4000));
        mux.process_incoming(from, request(u32::from(i)), now);
        mux.run_tick(now);
        let (_, response) = mux.outgoing(0);
        let Ok(Packet::SessionResponse(r)) = Packet::parse(response) else {
            panic!()
        };
        mux.consume_outgoing(usize::MAX);
        seals.push((from, Framing::new(r.crc_seed, 2, false)));
    }
    let send = |mux: &mut SoeMultiplexer<SocketAddr>, who: usize, cooked: &[u8]| {
        let (from, framing) = &seals[who];
        mux.process_incoming(*from, peer::seal(framing, cooked), now);
        mux.run_tick(now);
        mux.consume_outgoing(usize::MAX);
    };
    // Client 0 fills the budget with out-of-order packets (a gap at sequence 0).
    for seq in 1..20u16 {
        send(&mut mux, 0, &reliable(seq, &[7; 400]));
    }
    assert!(mux.buffered_bytes() <= 4_000);
    assert_eq!(mux.buffered_bytes(), 10 * 400);
    let st = mux.stats().sessions;
    assert_eq!(st.over_budget_packets, 9);
    // Client 1 cannot start a large reassembly now: its session ends.
    let mut master = 10_000u32.to_be_bytes().to_vec();
    master.extend_from_slice(&[1; 500]);
    send(&mut mux, 1, &fragment(0, &master));
    assert!(mux.session(&seals[1].0).is_none());
    assert_eq!(mux.stats().closed_by(DisconnectReason::ReliableOverflow), 1);
    // Client 0 fills its gap: everything stashed is delivered and released.
    send(&mut mux, 0, &reliable(0, b"gap"));
    assert_eq!(mux.buffered_bytes(), 0);
    // Ending a session gives back what it held.
    for seq in 20..25u16 {
        send(&mut mux, 0, &reliable(seq, &[8; 400]));
    }
    assert_eq!(mux.buffered_bytes(), 5 * 400);
    mux.terminate(&seals[0].0, DisconnectReason::Application, now);
    assert_eq!(mux.buffered_bytes(), 0);
}

/// A truncated SessionRequest from a new address opens nothing: a session made
/// for it could only wait out its handshake, so a spoofed stream of them would
/// fill `max_sessions`.
#[test]
#[allow(clippy::disallowed_methods)] // an arbitrary epoch
fn truncated_session_requests_open_no_sessions() {
    let mut mux = SoeMultiplexer::<SocketAddr>::new(config(false));
    let now = Instant::now();
    let full = request(7);
    for i in 0..1000u32 {
        let from = SocketAddr::from(([10, 2, (i >> 8) as u8, i as u8], 4000));
        let cut = 2 + (i as usize % 12);
        mux.process_incoming(from, &full[..cut], now);
    }
    assert_eq!(mux.session_count(), 0);
    assert_eq!(mux.stats().refused_malformed, 1000);
    assert!(mux.outgoing_len() == 0, "nothing answered");
}
