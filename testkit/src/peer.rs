//! The scripted peer: writes packets as the other side of a session would and reads
//! back what the code under test sent, with nothing but the public wire codec
//! (`soe_uring::protocol`). The fuzz harness ([`crate::fuzz`]) and the hostile-input
//! tests (`testkit/tests/hostile.rs`) both drive a multiplexer through it.

use std::net::SocketAddr;

use soe_uring::protocol::{Decompressor, Framing, Packet, SessionRequest, Unframed};
use soe_uring::{SessionState, SoeMultiplexer};

/// How deep a reader follows multi-packets inside multi-packets.
pub const MAX_DEPTH: u8 = 4;

/// The most a peer inflates one compressed packet to.
pub const MAX_INFLATED: usize = 1 << 16;

/// The framing of what the session with `remote` sends and expects: the
/// negotiated one once it runs; before that only contextless packets, which carry
/// no CRC.
pub fn framing_of(mux: &SoeMultiplexer<SocketAddr>, remote: &SocketAddr) -> Option<Framing> {
    let s = mux.session(remote)?;
    Some(if s.state() == SessionState::Running {
        Framing::new(
            s.crc_seed(),
            s.params().crc_length,
            s.params().is_compression_enabled,
        )
    } else {
        Framing::new(0, 0, false)
    })
}

/// `bytes` with the CRC trailer of `framing` appended; nothing else changes.
pub fn with_crc(framing: &Framing, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out.resize(bytes.len() + usize::from(framing.crc_length()), 0);
    let n = framing
        .crc()
        .append(&mut out, bytes.len(), framing.crc_length());
    debug_assert_eq!(n, out.len());
    out
}

/// A cooked contextual packet (`00 op body`) as the peer sends it: the
/// compression flag byte "not compressed" after the op code when `framing`
/// negotiated one, then the CRC.
pub fn seal(framing: &Framing, cooked: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cooked.len() + 1);
    out.extend_from_slice(&cooked[..2.min(cooked.len())]);
    if framing.compression() && cooked.len() >= 2 {
        out.push(0);
    }
    out.extend_from_slice(cooked.get(2..).unwrap_or_default());
    with_crc(framing, &out)
}

/// A v3 (`protocol_version` 3, named) or v2 SessionRequest.
pub fn session_request(
    protocol_version: u32,
    session_id: u32,
    udp_length: u32,
    protocol: Option<&str>,
) -> Vec<u8> {
    let p = Packet::SessionRequest(SessionRequest {
        protocol_version,
        session_id,
        udp_length,
        application_protocol: protocol.map(str::as_bytes),
    });
    let mut out = vec![0; p.encoded_len()];
    p.emit(&mut out);
    out
}

fn with_sequence(op: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x00, op];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A cooked reliable packet of channel 0 (`00 09 seq payload`).
pub fn reliable(seq: u16, payload: &[u8]) -> Vec<u8> {
    with_sequence(0x09, seq, payload)
}

/// A cooked fragment of channel 0 (`00 0D seq payload`); the first fragment's
/// payload starts with the message's 4-byte total length.
pub fn fragment(seq: u16, payload: &[u8]) -> Vec<u8> {
    with_sequence(0x0D, seq, payload)
}

/// A cooked AcknowledgeAll of channel 0 (`00 15 seq`).
pub fn ack_all(seq: u16) -> Vec<u8> {
    with_sequence(0x15, seq, &[])
}

/// Reads one datagram as the peer would under `framing`: the application
/// messages it carries outside reliable channels (plain, zero-escaped, or in
/// multi-packets), or `None` when the peer could not read it at all (bad CRC,
/// undecodable packet, corrupt zlib).
pub fn read_as_peer(
    framing: &Framing,
    datagram: &[u8],
    decompressor: &mut Decompressor,
) -> Option<Vec<Vec<u8>>> {
    let mut messages = Vec::new();
    match framing.unframe(datagram).ok()? {
        Unframed::Contextless(_, bytes) => {
            Packet::parse(bytes).ok()?;
        }
        Unframed::Application(data) => {
            if data.is_empty() {
                return None;
            }
            messages.push(data.to_vec());
        }
        Unframed::Contextual {
            op,
            compressed,
            body,
        } => {
            let mut inflated = Vec::new();
            let body = if compressed {
                decompressor
                    .inflate(body, &mut inflated, MAX_INFLATED)
                    .ok()?;
                &inflated[..]
            } else {
                body
            };
            let p = Packet::parse_contextual(op, body).ok()?;
            read_packet(&p, 0, &mut messages)?;
        }
    }
    Some(messages)
}

fn read_packet(p: &Packet<'_>, depth: u8, messages: &mut Vec<Vec<u8>>) -> Option<()> {
    match p {
        Packet::MultiPacket(m) => {
            if depth >= MAX_DEPTH {
                return None;
            }
            for sub in m.iter() {
                read_packet(&Packet::parse(sub.ok()?).ok()?, depth + 1, messages)?;
            }
        }
        Packet::Application(data) | Packet::ZeroEscaped(data) if depth > 0 => {
            messages.push(data.to_vec());
        }
        _ => {}
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_packets_unframe_to_what_was_sealed() {
        for (crc_length, compression) in [(0, false), (2, false), (3, true), (4, true)] {
            let framing = Framing::new(0xDEAD_BEEF, crc_length, compression);
            let cooked = reliable(7, b"payload");
            let datagram = seal(&framing, &cooked);
            assert_eq!(
                datagram.len(),
                cooked.len() + usize::from(compression) + usize::from(crc_length)
            );
            match framing.unframe(&datagram) {
                Ok(Unframed::Contextual {
                    compressed, body, ..
                }) => {
                    assert!(!compressed);
                    assert_eq!(body, &cooked[2..]);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_corrupted_datagram_is_unreadable() {
        let framing = Framing::new(1, 2, false);
        let mut datagram = seal(&framing, &[0x00, 0x03, 0x02, 0x41, 0x42]);
        let mut d = Decompressor::new();
        assert_eq!(
            read_as_peer(&framing, &datagram, &mut d),
            Some(vec![b"AB".to_vec()])
        );
        datagram[3] ^= 1;
        assert_eq!(read_as_peer(&framing, &datagram, &mut d), None);
    }
}
