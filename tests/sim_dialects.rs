#![cfg(feature = "sim")]
//! Whole sessions in the UdpLibrary and EQ dialects on the simulated network, both
//! sides soe-uring: raw-packet encryption passes (Xor, XorBuffer, a user-supplied
//! pass, EQ's compression and XOR) negotiated in the 17-byte handshake, then
//! reliable echo with fragments, multi-packets and a disconnect; and handshakes
//! that negotiate passes a side cannot run, which are refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use soe_uring::protocol::Packet;
use soe_uring::protocol::SessionResponse;
use soe_uring::sim::{LinkConfig, Sim};
use soe_uring::*;

fn config(seed: u64, params: SessionParameters) -> SocketConfig {
    SocketConfig {
        rng_seed: Some(seed),
        default_session_params: params,
        ..SocketConfig::default()
    }
}

/// Steps until `done` holds, for at most two minutes of virtual time (heartbeats
/// keep a session busy forever, so waiting for a lost unreliable message would
/// not end).
fn run_until(sim: &mut Sim, mut done: impl FnMut(&Sim) -> bool) -> bool {
    let deadline = sim.now() + Duration::from_secs(120);
    sim.run_until(|sim| done(sim) || sim.now() > deadline);
    done(sim)
}

fn send(sim: &mut Sim, from: usize, to: usize, data: &[u8], channel: Channel) {
    let to = sim.addr(to);
    sim.node_mut(from)
        .mux
        .enqueue_data_on(&to, data, channel)
        .unwrap();
}

/// The session `node` holds with `peer`.
fn session(sim: &Sim, node: usize, peer: usize) -> &SoeSession {
    sim.node(node)
        .mux
        .session(&sim.addr(peer))
        .expect("a session")
}

/// A message that compresses well and says where it is in a run.
fn message(i: usize, len: usize) -> Vec<u8> {
    let mut m = format!("message {i:04} of the dialect test; ").into_bytes();
    while m.len() < len {
        m.push(b'a' + (m.len() % 7) as u8);
    }
    m.truncate(len);
    m
}

/// A marker that shows up in captured datagrams unless they are encrypted.
const MARKER: &[u8] = b"PLAINTEXT-MARKER-PLAINTEXT-MARKER";

/// What a whole-session run saw on the wire.
struct Wire {
    /// Captured datagrams (sender, bytes) of the data phase.
    datagrams: Vec<(SocketAddr, Vec<u8>)>,
}

impl Wire {
    fn contains(&self, needle: &[u8]) -> bool {
        self.datagrams
            .iter()
            .any(|(_, d)| d.windows(needle.len()).any(|w| w == needle))
    }

    fn any_starts_with(&self, from: SocketAddr, header: &[u8]) -> bool {
        self.datagrams
            .iter()
            .any(|(s, d)| *s == from && d.starts_with(header))
    }
}

/// Opens a session between a client and a server with these parameters, checks
/// both sides run `expected` passes, then: reliable echo of small and fragmented
/// messages in both directions, a burst of unreliable messages the sender packs
/// into multi-packets (in the profiles that put unreliable data in them), and a
/// disconnect by the client. Returns the wire.
fn whole_session(
    client: SessionParameters,
    server: SessionParameters,
    expected: [EncryptMethod; 2],
    link: LinkConfig,
) -> (Wire, Sim, usize, usize) {
    let coalesce_unreliable = client.coalesce_unreliable;
    let mut sim = Sim::new(11, link);
    let s = sim.add_node(config(1, server));
    let c = sim.add_node(config(2, client));
    sim.connect(c, s);
    assert!(
        run_until(&mut sim, |sim| sim.node(c).opened()),
        "client never opened"
    );
    assert_eq!(session(&sim, c, s).params().encryption_passes, expected);
    assert_eq!(session(&sim, s, c).params().encryption_passes, expected);
    sim.capture();

    // Reliable echo: small messages, one carrying the marker, and two that need
    // fragments (a datagram is at most 512 bytes).
    let mut sent = vec![MARKER.to_vec()];
    sent.extend((0..20).map(|i| message(i, 40 + i * 7)));
    sent.push(message(100, 3000));
    sent.push(message(101, 1500));
    for m in &sent {
        send(&mut sim, c, s, m, Channel::Reliable(0));
    }
    sim.pump(c);
    assert!(
        run_until(&mut sim, |sim| sim.node(s).received().len() == sent.len()),
        "server got {} of {}",
        sim.node(s).received().len(),
        sent.len()
    );
    let got: Vec<Vec<u8>> = sim.node(s).received().into_iter().map(|(d, _)| d).collect();
    assert_eq!(got, sent, "in order, intact");
    for m in &got {
        send(&mut sim, s, c, m, Channel::Reliable(1));
    }
    sim.pump(s);
    assert!(run_until(&mut sim, |sim| sim.node(c).received().len() == sent.len()));
    let echoed: Vec<Vec<u8>> = sim.node(c).received().into_iter().map(|(d, _)| d).collect();
    assert_eq!(echoed, sent);

    // Unreliable messages sent together travel in one multi-packet (`00 03`; the
    // op code is never encrypted).
    let before = sim.node(s).received().len();
    for i in 0..5 {
        send(&mut sim, c, s, &message(200 + i, 30), Channel::Unreliable);
    }
    sim.pump(c);
    let lossless = link.loss == 0.0 && link.duplicate == 0.0 && link.reorder == 0.0;
    let all = run_until(&mut sim, |sim| sim.node(s).received().len() == before + 5);
    assert!(
        all || !lossless,
        "unreliable messages lost on a perfect link"
    );
    let unreliable: Vec<_> = sim.node(s).received()[before..].to_vec();
    let expected: Vec<_> = (0..5).map(|i| message(200 + i, 30)).collect();
    for (data, channel) in &unreliable {
        assert_eq!(*channel, Channel::Unreliable);
        assert!(expected.contains(data), "{data:02x?}");
    }

    let wire = Wire {
        datagrams: sim.take_captured(),
    };
    if coalesce_unreliable {
        assert!(
            wire.any_starts_with(sim.addr(c), &[0x00, 0x03]),
            "no multi-packet from the client"
        );
    }

    // Disconnect.
    let to = sim.addr(s);
    let now = sim.now();
    sim.node_mut(c)
        .mux
        .terminate(&to, DisconnectReason::Application, now);
    sim.pump(c);
    assert!(run_until(&mut sim, |sim| sim.node(s).closed().is_some()));
    assert_eq!(sim.node(c).closed(), Some(DisconnectReason::Application));
    let server_saw = sim.node(s).closed();
    // The Disconnect is one datagram: a lossy link may eat it.
    assert!(
        server_saw == Some(DisconnectReason::Application)
            || (!lossless && server_saw == Some(DisconnectReason::Timeout)),
        "{server_saw:?}"
    );
    for node in [c, s] {
        let stats = sim.node(node).mux.stats().sessions;
        assert_eq!(stats.crc_failures, 0);
        assert_eq!(stats.malformed_datagrams, 0);
        assert_eq!(stats.refused_passes, 0);
    }
    (wire, sim, c, s)
}

/// A server of dialect `base` that runs `passes`.
fn server_with(base: SessionParameters, passes: [EncryptMethod; 2]) -> SessionParameters {
    SessionParameters {
        encryption_passes: passes,
        ..base
    }
}

#[test]
fn udp_library_with_xor() {
    let passes = [EncryptMethod::Xor, EncryptMethod::None];
    let (wire, ..) = whole_session(
        SessionParameters::udp_library(),
        server_with(SessionParameters::udp_library(), passes),
        passes,
        LinkConfig::default(),
    );
    assert!(!wire.contains(MARKER), "Xor left the payload readable");
}

#[test]
fn without_passes_the_payload_is_readable_on_the_wire() {
    // The control for the "marker" checks of the other tests.
    let (wire, ..) = whole_session(
        SessionParameters::udp_library(),
        SessionParameters::udp_library(),
        [EncryptMethod::None; 2],
        LinkConfig::default(),
    );
    assert!(wire.contains(MARKER));
}

#[test]
fn udp_library_with_xor_buffer() {
    let passes = [EncryptMethod::XorBuffer, EncryptMethod::None];
    let (wire, ..) = whole_session(
        SessionParameters::udp_library(),
        server_with(SessionParameters::udp_library(), passes),
        passes,
        LinkConfig::default(),
    );
    assert!(
        !wire.contains(MARKER),
        "XorBuffer left the payload readable"
    );
}

#[test]
fn udp_library_with_both_passes_on_a_lossy_link() {
    let passes = [EncryptMethod::XorBuffer, EncryptMethod::Xor];
    let (wire, ..) = whole_session(
        SessionParameters::udp_library(),
        server_with(SessionParameters::udp_library(), passes),
        passes,
        LinkConfig {
            loss: 0.05,
            duplicate: 0.02,
            reorder: 0.05,
            ..LinkConfig::default()
        },
    );
    assert!(!wire.contains(MARKER));
}

/// A user-supplied pass: reverses the body, XORs it with the session id and
/// appends a checksum byte (so it expands by one and detects damage).
#[derive(Debug)]
struct Reverse;

impl EncryptionPass for Reverse {
    fn expansion(&self) -> usize {
        1
    }

    fn encrypt(&self, context: &PassContext, body: &[u8], out: &mut Vec<u8>) {
        let key = context.session_id as u8;
        out.extend(body.iter().rev().map(|b| b ^ key));
        out.push(body.iter().fold(0x5C, |a, b| a ^ b));
    }

    fn decrypt(
        &self,
        context: &PassContext,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), DecryptError> {
        let key = context.session_id as u8;
        let (&sum, body) = body.split_last().ok_or(DecryptError)?;
        out.extend(body.iter().rev().map(|b| b ^ key));
        if out.iter().fold(0x5C, |a, b| a ^ b) == sum {
            Ok(())
        } else {
            Err(DecryptError)
        }
    }
}

#[test]
fn udp_library_with_a_user_supplied_pass() {
    let hook: Arc<dyn EncryptionPass> = Arc::new(Reverse);
    let passes = [EncryptMethod::UserSupplied, EncryptMethod::None];
    let client = SessionParameters {
        user_supplied: Some(hook.clone()),
        ..SessionParameters::udp_library()
    };
    let server = SessionParameters {
        user_supplied: Some(hook),
        ..server_with(SessionParameters::udp_library(), passes)
    };
    let (wire, ..) = whole_session(client, server, passes, LinkConfig::default());
    assert!(!wire.contains(MARKER), "the pass left the payload readable");
    // Expanding passes shrink what a datagram carries, never the datagram limit.
    assert!(wire.datagrams.iter().all(|(_, d)| d.len() <= 512));
}

#[test]
fn user_supplied_2_runs_as_pass_1() {
    let hook: Arc<dyn EncryptionPass> = Arc::new(Reverse);
    let passes = [EncryptMethod::Xor, EncryptMethod::UserSupplied2];
    let client = SessionParameters {
        user_supplied_2: Some(hook.clone()),
        ..SessionParameters::udp_library()
    };
    let server = SessionParameters {
        user_supplied_2: Some(hook),
        ..server_with(SessionParameters::udp_library(), passes)
    };
    whole_session(client, server, passes, LinkConfig::default());
}

#[test]
fn eq_with_compression_and_xor() {
    let passes = [EncryptMethod::Compression, EncryptMethod::Xor];
    let (wire, ..) = whole_session(
        SessionParameters::eq(),
        server_with(SessionParameters::eq(), passes),
        passes,
        LinkConfig::default(),
    );
    assert!(!wire.contains(MARKER));
}

#[test]
fn eq_handshake_bytes() {
    // The 14-byte request with version 3 and no name, answered with 17 bytes
    // naming compression (1) and XOR (4) in EQ's codes.
    let passes = [EncryptMethod::Compression, EncryptMethod::Xor];
    let mut sim = Sim::new(3, LinkConfig::default());
    let server = sim.add_node(config(1, server_with(SessionParameters::eq(), passes)));
    let client = sim.add_node(config(2, SessionParameters::eq()));
    sim.capture();
    sim.connect(client, server);
    assert!(run_until(&mut sim, |sim| sim.node(client).opened()));
    let handshake = sim.take_captured();
    let request = &handshake[0].1;
    assert_eq!(request.len(), 14);
    assert_eq!(request[..6], [0, 1, 0, 0, 0, 3]);
    let response = handshake
        .iter()
        .find(|(from, _)| *from == sim.addr(server))
        .map(|(_, d)| d.clone())
        .unwrap();
    assert_eq!(response.len(), 17);
    assert_eq!(response[11..13], [1, 4]);
}

#[test]
fn eq_compression_shrinks_compressible_traffic() {
    let bytes = |passes: [EncryptMethod; 2]| {
        let (wire, ..) = whole_session(
            SessionParameters::eq(),
            server_with(SessionParameters::eq(), passes),
            passes,
            LinkConfig::default(),
        );
        let compressed = wire
            .datagrams
            .iter()
            .filter(|(_, d)| d.len() > 2 && d[0] == 0 && d[2] == 0x5A)
            .count();
        let total: usize = wire.datagrams.iter().map(|(_, d)| d.len()).sum();
        (compressed, total)
    };
    let (compressed, packed) = bytes([EncryptMethod::Compression, EncryptMethod::None]);
    assert!(compressed > 0, "no datagram flagged 5A");
    let (none, plain) = bytes([EncryptMethod::None, EncryptMethod::None]);
    assert_eq!(none, 0);
    assert!(packed * 2 < plain, "{packed} vs {plain}");
}

#[test]
fn eq_default_profile_compresses() {
    whole_session(
        SessionParameters::eq(),
        SessionParameters::eq(),
        [EncryptMethod::Compression, EncryptMethod::None],
        LinkConfig::lossy(0.03),
    );
}

#[test]
fn v3_response_carries_pass_1() {
    // Byte 12 of the 21-byte response names pass 1 in UdpLibrary codes; byte 11
    // stays the compression flag.
    let mut client = SessionParameters::soe_uring();
    client.application_protocol = "Test".into();
    let mut server = client.clone();
    server.encryption_passes = [EncryptMethod::None, EncryptMethod::Xor];
    server.is_compression_enabled = true;
    let passes = [EncryptMethod::None, EncryptMethod::Xor];
    let mut sim = Sim::new(3, LinkConfig::default());
    let s = sim.add_node(config(1, server.clone()));
    let c = sim.add_node(config(2, client.clone()));
    sim.capture();
    sim.connect(c, s);
    assert!(run_until(&mut sim, |sim| sim.node(c).opened()));
    let response = sim
        .take_captured()
        .into_iter()
        .find(|(from, _)| *from == sim.addr(s))
        .map(|(_, d)| d)
        .unwrap();
    assert_eq!(response.len(), 21);
    assert_eq!(response[11..13], [1, 4]);
    assert!(session(&sim, c, s).params().is_compression_enabled);
    let (wire, ..) = whole_session(client, server, passes, LinkConfig::default());
    assert!(!wire.contains(MARKER));
}

// ----------------------------------------------------------------------------------
// Refusals
// ----------------------------------------------------------------------------------

/// A client whose server names passes it cannot run ends at once with
/// `ProtocolMismatch`, counted in `refused_passes`.
fn assert_client_refuses(client: SessionParameters, server: SessionParameters) {
    let mut sim = Sim::new(5, LinkConfig::default());
    let s = sim.add_node(config(1, server));
    let c = sim.add_node(config(2, client));
    sim.connect(c, s);
    assert!(run_until(&mut sim, |sim| sim.node(c).closed().is_some()));
    assert!(!sim.node(c).opened());
    assert_eq!(
        sim.node(c).closed(),
        Some(DisconnectReason::ProtocolMismatch)
    );
    assert_eq!(sim.node(c).mux.stats().sessions.refused_passes, 1);
}

#[test]
fn user_supplied_pass_without_a_hook_is_refused() {
    let hook: Arc<dyn EncryptionPass> = Arc::new(Reverse);
    let server = SessionParameters {
        user_supplied: Some(hook),
        ..server_with(
            SessionParameters::udp_library(),
            [EncryptMethod::UserSupplied, EncryptMethod::None],
        )
    };
    assert_client_refuses(SessionParameters::udp_library(), server);
}

#[test]
fn eq_codes_do_not_define_xor_buffer() {
    // An EQ client reading UdpLibrary's XorBuffer code (3) knows no such method.
    let server = server_with(
        SessionParameters::udp_library(),
        [EncryptMethod::XorBuffer, EncryptMethod::None],
    );
    let mut client = SessionParameters::eq();
    client.protocol_version = 2;
    assert_client_refuses(client, server);
}

#[test]
fn unknown_codes_in_a_response_are_refused() {
    for (byte_11, byte_12) in [(7, 0), (0, 9), (4, 0xFF)] {
        let mut sim = Sim::new(5, LinkConfig::default());
        let s = sim.add_node(config(1, SessionParameters::udp_library()));
        let c = sim.add_node(config(2, SessionParameters::udp_library()));
        sim.capture();
        let to = sim.addr(s);
        let now = sim.now();
        sim.node_mut(c).mux.connect(to, now).unwrap();
        sim.node_mut(c).mux.run_tick(now);
        // Answer the request by hand, before the server does.
        let request = sim.node(c).mux.outgoing(0).1.to_vec();
        let Ok(Packet::SessionRequest(request)) = Packet::parse(&request) else {
            panic!("{request:02x?}");
        };
        let response = Packet::SessionResponse(SessionResponse {
            session_id: request.session_id,
            crc_seed: 0x1234_5678,
            crc_length: 2,
            compression: byte_11,
            encryption_pass_1: byte_12,
            udp_length: 512,
            protocol_version: None,
        });
        let mut bytes = [0u8; SessionResponse::V2_LEN];
        response.emit(&mut bytes);
        let mux = &mut sim.node_mut(c).mux;
        mux.consume_outgoing(usize::MAX);
        mux.process_incoming(to, bytes, now);
        mux.run_tick(now);
        let events: Vec<_> = mux.drain_events().collect();
        assert_eq!(
            events,
            [SocketEvent::SessionClosed {
                remote: to,
                reason: DisconnectReason::ProtocolMismatch
            }],
            "{byte_11} {byte_12}"
        );
        // Nothing goes back: a session that never ran sends no Disconnect.
        assert_eq!(mux.outgoing_len(), 0);
        assert_eq!(mux.stats().sessions.refused_passes, 1);
        let _ = s;
    }
}

#[test]
fn a_server_that_cannot_run_its_passes_refuses_every_session() {
    // UserSupplied configured without the hook to run it.
    let server = server_with(
        SessionParameters::udp_library(),
        [EncryptMethod::UserSupplied, EncryptMethod::None],
    );
    let mut client = SessionParameters::udp_library();
    client.connect_timeout = Duration::from_secs(3);
    let mut sim = Sim::new(5, LinkConfig::default());
    let s = sim.add_node(config(1, server));
    let c = sim.add_node(config(2, client));
    sim.connect(c, s);
    assert!(run_until(&mut sim, |sim| sim.node(c).closed().is_some()));
    assert_eq!(sim.node(c).closed(), Some(DisconnectReason::ConnectFail));
    let stats = sim.node(s).mux.stats();
    assert!(stats.sessions.refused_passes >= 1);
    assert_eq!(
        stats.sessions.refused_passes,
        stats.refused_protocol_mismatch
    );
    // Pass 0 cannot be named in the 21-byte response a named request gets.
    let mut server = SessionParameters::soe_uring();
    server.encryption_passes = [EncryptMethod::Xor, EncryptMethod::None];
    let mut client = SessionParameters::soe_uring();
    client.connect_timeout = Duration::from_secs(3);
    let mut sim = Sim::new(5, LinkConfig::default());
    let s = sim.add_node(config(1, server));
    let c = sim.add_node(config(2, client));
    sim.connect(c, s);
    assert!(run_until(&mut sim, |sim| sim.node(c).closed().is_some()));
    assert_eq!(sim.node(c).closed(), Some(DisconnectReason::ConnectFail));
    assert!(sim.node(s).mux.stats().sessions.refused_passes >= 1);
}

#[test]
fn a_corrupt_pass_ends_the_session() {
    // The CRC holds but the user-supplied pass refuses the body: UdpLibrary calls
    // that a corrupt packet and so do we.
    let hook: Arc<dyn EncryptionPass> = Arc::new(Reverse);
    let passes = [EncryptMethod::UserSupplied, EncryptMethod::None];
    let client = SessionParameters {
        user_supplied: Some(hook.clone()),
        ..SessionParameters::udp_library()
    };
    let server = SessionParameters {
        user_supplied: Some(hook),
        ..server_with(SessionParameters::udp_library(), passes)
    };
    let mut sim = Sim::new(5, LinkConfig::default());
    let s = sim.add_node(config(1, server));
    let c = sim.add_node(config(2, client));
    sim.connect(c, s);
    assert!(run_until(&mut sim, |sim| sim.node(c).opened()));
    send(&mut sim, c, s, b"hello", Channel::Reliable(0));
    sim.pump(c);
    assert!(run_until(&mut sim, |sim| sim.node(s).opened()
        && sim.node(s).received().len() == 1));
    let crc = soe_uring::protocol::Crc32::new(session(&sim, s, c).crc_seed());
    // A heartbeat whose body fails the pass's checksum, with a valid CRC.
    let mut datagram = vec![0x00, 0x06, 0xEE, 0, 0];
    crc.append(&mut datagram, 3, 2);
    let from = sim.addr(c);
    let now = sim.now();
    let mux = &mut sim.node_mut(s).mux;
    mux.process_incoming(from, &datagram, now);
    mux.run_tick(now);
    let events: Vec<_> = mux.drain_events().collect();
    assert!(
        events.contains(&SocketEvent::SessionClosed {
            remote: from,
            reason: DisconnectReason::CorruptPacket
        }),
        "{events:?}"
    );
}
