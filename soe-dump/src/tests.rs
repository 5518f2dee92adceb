//! End to end without sockets: the crate's own multiplexers talk over an in-memory
//! link, every datagram is written to an in-memory capture, and the capture is
//! decoded back through the command-line entry point.
// Tests drive the multiplexers with a made-up clock starting at `Instant::now()`.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use soe_uring::{
    Channel, Rc4KeyState, SessionParameters, SocketConfig, SocketEvent, SoeMultiplexer,
};

use crate::capture::tests::{pcap_file, pcapng_file};
use crate::cli::{Args, decode};
use crate::net::tests::{ipv4_udp, ipv6_udp};
use clap::Parser;

const KEY: [u8; 5] = [1, 2, 3, 4, 5];

struct Recorded {
    /// Microseconds since the run began, source, destination, payload.
    frames: Vec<(u64, SocketAddr, SocketAddr, Vec<u8>)>,
    sent: Vec<usize>,
    echoed: Vec<usize>,
}

fn config(profile: &str, compression: bool, rc4: bool) -> SocketConfig {
    let mut c = SocketConfig {
        default_session_params: SessionParameters::profile(profile).unwrap(),
        ..SocketConfig::default()
    };
    c.default_session_params.application_protocol = "dumptest".into();
    c.default_session_params.is_compression_enabled = compression;
    if rc4 {
        c.app_params.encryption_key_state = Some(Rc4KeyState::new(&KEY));
    }
    c
}

/// One session: the client sends `sizes` on reliable channel 0, the server echoes
/// them. Every 9th server datagram is lost before the capture point (the decoder
/// sees the gap), every 11th client datagram after it (the decoder sees the
/// retransmission).
fn run_session(
    client_addr: SocketAddr,
    server_addr: SocketAddr,
    profile: &str,
    compression: bool,
    rc4: bool,
    sizes: &[usize],
) -> Recorded {
    let t0 = Instant::now();
    let mut client = SoeMultiplexer::new(config(profile, compression, rc4));
    let mut server = SoeMultiplexer::new(config(profile, compression, rc4));
    client.connect(server_addr, t0).unwrap();
    let mut rec = Recorded {
        frames: Vec::new(),
        sent: Vec::new(),
        echoed: Vec::new(),
    };
    let (mut c2s, mut s2c) = (0u32, 0u32);
    let mut now = t0;
    for _ in 0..20_000 {
        now += Duration::from_millis(1);
        let us = now.duration_since(t0).as_micros() as u64;
        client.run_tick(now);
        for (_, d) in client.outgoing_iter() {
            c2s += 1;
            rec.frames.push((us, client_addr, server_addr, d.to_vec()));
            if c2s % 11 != 0 {
                server.process_incoming(client_addr, d, now);
            }
        }
        client.consume_outgoing(usize::MAX);
        while let Some(e) = server.poll_event() {
            if let SocketEvent::DataReceived {
                remote,
                data,
                channel,
            } = e
            {
                server.enqueue_data_on(&remote, &data, channel).unwrap();
            }
        }
        server.run_tick(now);
        for (_, d) in server.outgoing_iter() {
            s2c += 1;
            if s2c % 9 != 0 {
                rec.frames
                    .push((us + 100, server_addr, client_addr, d.to_vec()));
                client.process_incoming(server_addr, d, now);
            }
        }
        server.consume_outgoing(usize::MAX);
        while let Some(e) = client.poll_event() {
            match e {
                SocketEvent::SessionOpened { .. } => {
                    for (i, &n) in sizes.iter().enumerate() {
                        // Starts with A5, as loadgen's messages do.
                        let msg: Vec<u8> = (0..n)
                            .map(|j| if j == 0 { 0xA5 } else { (i * 7 + j) as u8 })
                            .collect();
                        client
                            .enqueue_data_on(&server_addr, &msg, Channel::Reliable(0))
                            .unwrap();
                        rec.sent.push(n);
                    }
                }
                SocketEvent::DataReceived { data, .. } => rec.echoed.push(data.len()),
                _ => {}
            }
        }
        if !rec.sent.is_empty() && rec.echoed.len() == rec.sent.len() {
            break;
        }
    }
    assert_eq!(rec.echoed, rec.sent, "the echo run itself completes");
    rec
}

fn dump(capture: &[u8], extra: &[&str]) -> Vec<Value> {
    let mut argv = vec!["soe-dump", "-", "--json"];
    argv.extend_from_slice(extra);
    let args = Args::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    decode(capture, &args, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn check(events: &[Value], rec: &Recorded, compressed: bool) {
    let of = |kind: &'static str| events.iter().filter(move |e| e["event"] == kind);
    assert_eq!(of("crc_mismatch").count(), 0);
    assert_eq!(
        of("malformed").count(),
        0,
        "{:?}",
        of("malformed").collect::<Vec<_>>()
    );
    let lens = |dir: &str| -> Vec<usize> {
        of("message")
            .filter(|m| m["dir"] == dir)
            .map(|m| m["len"].as_u64().unwrap() as usize)
            .collect()
    };
    assert_eq!(lens("c2s"), rec.sent);
    assert_eq!(lens("s2c"), rec.sent);
    // The plaintext pattern (decrypted when the session uses RC4).
    for m in of("message") {
        assert_eq!(m["hex"].as_str().unwrap().get(..2), Some("a5"), "{m}");
    }
    let summary = of("summary").next().unwrap();
    assert_eq!(summary["handshake"], true);
    assert_eq!(summary["protocol"], "dumptest");
    assert_eq!(summary["incomplete"], Value::Array(Vec::new()));
    let total =
        |key: &str| summary["c2s"][key].as_u64().unwrap() + summary["s2c"][key].as_u64().unwrap();
    assert!(total("fragmented_messages") >= 2, "{summary}");
    // Which direction retransmits a packet the other side already had depends on
    // the loss recovery's timing; the dropped acks make at least one.
    assert!(total("duplicates") > 0, "{summary}");
    assert!(
        summary["s2c"]["out_of_order"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert_eq!(total("compressed") > 0, compressed, "{summary}");
    let capture = events.last().unwrap();
    assert_eq!(capture["event"], "capture");
    assert_eq!(capture["bad_udp_checksums"], 0);
    assert_eq!(capture["sessions"], 1);
}

const SIZES: &[usize] = &[16, 64, 1, 300, 2000, 90, 5000, 20, 20, 20, 700, 16];

#[test]
fn plain_session_in_classic_pcap() {
    let (c, s) = (
        "10.0.0.2:40000".parse().unwrap(),
        "10.0.0.1:20260".parse().unwrap(),
    );
    let rec = run_session(c, s, "default", false, false, SIZES);
    let frames: Vec<(u32, u32, Vec<u8>)> = rec
        .frames
        .iter()
        .map(|(us, src, dst, d)| {
            let t = 1_700_000_000_000_000 + us;
            (
                (t / 1_000_000) as u32,
                (t % 1_000_000) as u32,
                ipv4_udp(*src, *dst, d),
            )
        })
        .collect();
    let refs: Vec<(u32, u32, &[u8])> = frames.iter().map(|(a, b, d)| (*a, *b, &d[..])).collect();
    let file = pcap_file(101, &refs);
    let events = dump(&file, &[]);
    check(&events, &rec, false);
    // The text timeline decodes the same file.
    let args = Args::try_parse_from(["soe-dump", "-"]).unwrap();
    let mut out = Vec::new();
    decode(&file[..], &args, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("SessionRequest v3"), "{text}");
    assert!(text.contains("-> message reliable:0"), "{text}");
}

#[test]
fn compressed_rc4_varint_session_in_pcapng_over_ethernet_and_ipv6() {
    let (c, s) = (
        "[fd00::2]:40000".parse().unwrap(),
        "[fd00::1]:20260".parse().unwrap(),
    );
    let rec = run_session(c, s, "soe-uring", true, true, SIZES);
    let frames: Vec<(u64, Vec<u8>)> = rec
        .frames
        .iter()
        .map(|(us, src, dst, d)| {
            let mut eth = vec![0x02; 12];
            eth.extend_from_slice(&[0x86, 0xDD]);
            eth.extend(ipv6_udp(*src, *dst, d, false));
            (1_700_000_000_000_000 + us, eth)
        })
        .collect();
    let refs: Vec<(u64, &[u8])> = frames.iter().map(|(t, d)| (*t, &d[..])).collect();
    let file = pcapng_file(1, None, &refs);
    let key = "0102030405";
    let events = dump(&file, &["--rc4-key", key, "--profile", "soe-uring"]);
    // Acks and handshake-sized packets stay uncompressed, and RC4 output does not
    // compress: only check that decoding is right.
    let compressed = events
        .iter()
        .any(|e| e["event"] == "packet" && e.get("inflated_len").is_some());
    check(&events, &rec, compressed);
    assert!(
        events
            .iter()
            .filter(|e| e["event"] == "message")
            .all(|m| m["decrypted"] == true)
    );
}

#[test]
fn compressed_session_is_inflated() {
    let (c, s) = (
        "10.0.0.2:40000".parse().unwrap(),
        "10.0.0.1:20260".parse().unwrap(),
    );
    let rec = run_session(c, s, "default", true, false, SIZES);
    let frames: Vec<(u64, Vec<u8>)> = rec
        .frames
        .iter()
        .map(|(us, src, dst, d)| (*us, ipv4_udp(*src, *dst, d)))
        .collect();
    let refs: Vec<(u64, &[u8])> = frames.iter().map(|(t, d)| (*t, &d[..])).collect();
    let file = pcapng_file(101, Some(6), &refs);
    let events = dump(&file, &[]);
    check(&events, &rec, true);
    let summary = events.iter().find(|e| e["event"] == "summary").unwrap();
    assert_eq!(summary["compression"], true);
}

#[test]
fn summary_only_and_port_filter() {
    let (c, s) = (
        "10.0.0.2:40000".parse().unwrap(),
        "10.0.0.1:20260".parse().unwrap(),
    );
    let rec = run_session(c, s, "default", false, false, &[100, 3000]);
    let frames: Vec<(u64, Vec<u8>)> = rec
        .frames
        .iter()
        .map(|(us, src, dst, d)| (*us, ipv4_udp(*src, *dst, d)))
        .collect();
    let refs: Vec<(u64, &[u8])> = frames.iter().map(|(t, d)| (*t, &d[..])).collect();
    let file = pcapng_file(228, None, &refs);
    let events = dump(&file, &["--summary"]);
    let kinds: Vec<_> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["summary", "capture"]);
    assert_eq!(events[0]["c2s"]["messages"], 2);
    let events = dump(&file, &["--summary", "--port", "1234"]);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["filtered_flows"], 1);
}
