//! Following UDP flows and telling which of them are SOE sessions.
//!
//! A flow is the pair of endpoints `client addr:port <-> server addr:port`, in
//! either direction. A flow becomes a session when
//!
//! * it carries a SessionRequest (the sender is the client) or a SessionResponse
//!   (the sender is the server): the session is decoded from its handshake on;
//! * or `--port` selects it, or its first datagram starts like an SOE protocol
//!   packet (`00` and a contextual op code): the session is decoded mid-stream with
//!   the dialect defaults. The endpoint on `--port` is the server; without
//!   `--port`, the one whose port is below the ephemeral range (32768) when only
//!   one is, else the receiver of the first datagram seen.
//!
//! A new SessionRequest with another session id on a flow (or any after a
//! Disconnect) ends the flow's session and starts the next one.

use std::collections::HashMap;
use std::net::SocketAddr;

use soe_uring::OpCode;
use soe_uring::protocol::{Packet, SessionRequest};

use crate::capture::Timestamp;
use crate::event::{CaptureSummary, Direction, Event, EventKind};
use crate::session::{DecodeOptions, SessionDecoder};

/// What the first bytes of a datagram say about its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Looks {
    /// A SessionRequest: the sender is a client starting a session with this id.
    Request(u32),
    /// A SessionResponse: the sender is the server.
    Response,
    /// Another SOE protocol packet.
    Soe,
    /// Anything else.
    Other,
}

fn looks(payload: &[u8]) -> Looks {
    match Packet::parse(payload) {
        // Plausibility checks keep other protocols (a DNS query with id 1, …) out.
        Ok(Packet::SessionRequest(r))
            if r.protocol_version <= 0xFF
                && (64..=0x10000).contains(&r.udp_length)
                && payload.len() <= SessionRequest::FIXED_LEN + 256 =>
        {
            Looks::Request(r.session_id)
        }
        Ok(Packet::SessionResponse(r))
            if r.crc_length <= 4 && (payload.len() == 17 || payload.len() == 21) =>
        {
            Looks::Response
        }
        _ => match payload {
            [0, ty, ..] => match OpCode::from_type_byte(*ty) {
                Some(op) if !op.is_contextless() && op != OpCode::ZeroEscape => Looks::Soe,
                _ => Looks::Other,
            },
            _ => Looks::Other,
        },
    }
}

#[derive(Debug)]
enum FlowState {
    /// Not (yet) an SOE session; checked again for a SessionRequest.
    Other,
    /// Left out by `--port`.
    Filtered,
    /// A session being decoded.
    Session(Box<SessionDecoder>),
}

#[derive(Debug)]
struct Flow {
    state: FlowState,
}

/// Finds the SOE sessions among the UDP datagrams of a capture and decodes them.
#[derive(Debug)]
pub struct FlowTracker {
    opts: DecodeOptions,
    port: Option<u16>,
    flows: HashMap<(SocketAddr, SocketAddr), Flow>,
    next_session: u32,
    summary: CaptureSummary,
}

impl FlowTracker {
    /// A tracker that decodes with `opts` and, with `port`, follows only flows with
    /// that UDP port at one end.
    pub fn new(opts: DecodeOptions, port: Option<u16>) -> Self {
        Self {
            opts,
            port,
            flows: HashMap::new(),
            next_session: 1,
            summary: CaptureSummary::default(),
        }
    }

    /// File-wide counters, for the reader to add its own to.
    pub fn summary_mut(&mut self) -> &mut CaptureSummary {
        &mut self.summary
    }

    fn key(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
        if a <= b { (a, b) } else { (b, a) }
    }

    /// Handles one UDP datagram from `src` to `dst`; appends its events to `out`.
    pub fn datagram(
        &mut self,
        time: Timestamp,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        out: &mut Vec<Event>,
    ) {
        let key = Self::key(src, dst);
        if !self.flows.contains_key(&key) {
            self.summary.other_flows += 1;
            self.flows.insert(
                key,
                Flow {
                    state: FlowState::Other,
                },
            );
        }
        // What the flow is so far: `None` while it is not a session.
        let current = match &self.flows[&key].state {
            FlowState::Filtered => return,
            FlowState::Other => None,
            FlowState::Session(s) => Some((s.ended(), s.request_id(), s.client())),
        };
        let port = self.port;
        let start = match (current, looks(payload)) {
            (None, _) if port.is_some_and(|p| src.port() != p && dst.port() != p) => {
                if let Some(flow) = self.flows.get_mut(&key) {
                    flow.state = FlowState::Filtered;
                }
                self.summary.other_flows -= 1;
                self.summary.filtered_flows += 1;
                return;
            }
            (None, Looks::Request(_)) => Some((src, dst, true)),
            (None, Looks::Response) => Some((dst, src, true)),
            (None, Looks::Soe) => Some(self.orient(src, dst)),
            (None, Looks::Other) if port.is_some() => Some(self.orient(src, dst)),
            (None, Looks::Other) => None,
            (Some((ended, request, client)), Looks::Request(id))
                if ended || request.is_some_and(|r| r != id) || client != src =>
            {
                Some((src, dst, true))
            }
            (Some(_), _) => None,
        };
        if let Some((client, server, handshake)) = start {
            let Some(flow) = self.flows.get_mut(&key) else {
                return;
            };
            let previous = std::mem::replace(&mut flow.state, FlowState::Other);
            match previous {
                FlowState::Session(old) => old.finish(out),
                _ => {
                    self.summary.other_flows -= 1;
                    self.summary.soe_flows += 1;
                }
            }
            let id = self.next_session;
            self.next_session += 1;
            self.summary.sessions += 1;
            let mut session =
                SessionDecoder::new(id, client, server, time, handshake, self.opts.clone());
            session.start_events(handshake, out);
            flow.state = FlowState::Session(Box::new(session));
        }
        if let Some(Flow {
            state: FlowState::Session(session),
        }) = self.flows.get_mut(&key)
        {
            let dir = if src == session.client() {
                Direction::ClientToServer
            } else {
                Direction::ServerToClient
            };
            session.datagram(time, dir, payload, out);
        }
    }

    /// Client and server of a flow seen without its handshake.
    fn orient(&self, src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr, bool) {
        // Clients get ephemeral ports (32768 and up on Linux, 49152 and up
        // elsewhere); servers usually listen below.
        let ephemeral = |a: SocketAddr| a.port() >= 32_768;
        let server_is_dst = match self.port {
            Some(p) if dst.port() == p => true,
            Some(p) if src.port() == p => false,
            _ if ephemeral(src) != ephemeral(dst) => !ephemeral(dst),
            // No telling by the ports: the first datagram seen goes to the server.
            _ => true,
        };
        if server_is_dst {
            (src, dst, false)
        } else {
            (dst, src, false)
        }
    }

    /// Ends every open session: appends their summaries (in session order) and the
    /// file-wide [`EventKind::Capture`] event.
    pub fn finish(mut self, out: &mut Vec<Event>) -> CaptureSummary {
        let mut sessions: Vec<_> = self
            .flows
            .drain()
            .filter_map(|(_, f)| match f.state {
                FlowState::Session(s) => Some(s),
                _ => None,
            })
            .collect();
        sessions.sort_by_key(|s| s.id());
        for s in &sessions {
            s.finish(out);
        }
        out.push(Event {
            session: 0,
            time: Timestamp::default(),
            offset: 0.0,
            dir: None,
            kind: EventKind::Capture(self.summary.clone()),
        });
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::hex;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn starts(events: &[Event]) -> Vec<(u32, SocketAddr, SocketAddr, bool)> {
        events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::SessionStart {
                    client,
                    server,
                    handshake,
                } => Some((e.session, client, server, handshake)),
                _ => None,
            })
            .collect()
    }

    const REQUEST: &str =
        "00 01 00 00 00 03 3c 17 8c 63 00 00 02 00 4c 6f 67 69 6e 55 64 70 5f 39 00";
    const RESPONSE: &str = "00 02 3c 17 8c 63 00 00 00 00 02 00 00 00 00 02 00 00 00 00 03";

    #[test]
    fn sessions_are_found_and_oriented() {
        let mut t = FlowTracker::new(DecodeOptions::default(), None);
        let mut out = Vec::new();
        let (c, s) = (addr("10.0.0.2:51000"), addr("10.0.0.1:20260"));
        let ts = Timestamp::default();
        // A DNS query (id 1) is not a session.
        let (dns_c, dns_s) = (addr("10.0.0.2:53000"), addr("10.0.0.53:53"));
        t.datagram(
            ts,
            dns_c,
            dns_s,
            &hex("00 01 01 00 00 01 00 00 00 00 00 00 03 77"),
            &mut out,
        );
        assert!(out.is_empty());
        // V5 + V6: a session from its handshake; the sender of the request is the client.
        t.datagram(ts, c, s, &hex(REQUEST), &mut out);
        t.datagram(ts, s, c, &hex(RESPONSE), &mut out);
        t.datagram(ts, s, c, &hex("00 15 00 01 8e 64"), &mut out);
        assert_eq!(starts(&out), [(1, c, s, true)]);
        let acks: Vec<_> = out
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Packet(_)))
            .map(|e| e.dir)
            .collect();
        assert_eq!(
            acks,
            [
                Some(Direction::ClientToServer),
                Some(Direction::ServerToClient),
                Some(Direction::ServerToClient)
            ]
        );
        out.clear();
        // A flow seen mid-session (first datagram an AckAll from the server):
        // followed; the port below the ephemeral range is the server's.
        let (c2, s2) = (addr("10.0.0.3:40001"), addr("10.0.0.1:20260"));
        t.datagram(ts, s2, c2, &hex("00 15 00 01 8e 64"), &mut out);
        assert_eq!(starts(&out), [(2, c2, s2, false)]);
        assert!(out.iter().any(|e| matches!(e.kind, EventKind::Note(_))));
        out.clear();
        // Both ports ephemeral: the first datagram goes to the server.
        let (c4, s4) = (addr("10.0.0.4:40001"), addr("10.0.0.1:55000"));
        t.datagram(ts, c4, s4, &hex("00 06 12 34"), &mut out);
        assert_eq!(starts(&out), [(3, c4, s4, false)]);
        out.clear();
        // A retried request keeps the session; a new session id starts the next one.
        t.datagram(ts, c, s, &hex(REQUEST), &mut out);
        assert!(starts(&out).is_empty());
        let mut other = hex(REQUEST);
        other[9] ^= 1;
        t.datagram(ts, c, s, &other, &mut out);
        assert_eq!(starts(&out), [(4, c, s, true)]);
        assert!(
            out.iter()
                .any(|e| e.session == 1 && matches!(e.kind, EventKind::Summary(_))),
            "the replaced session is summed up"
        );
        out.clear();
        let summary = t.finish(&mut out);
        assert_eq!(summary.sessions, 4);
        assert_eq!((summary.soe_flows, summary.other_flows), (3, 1));
        let ended: Vec<_> = out
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Summary(_)))
            .map(|e| e.session)
            .collect();
        assert_eq!(ended, [2, 3, 4]);
        assert!(matches!(out.last().unwrap().kind, EventKind::Capture(_)));
    }

    #[test]
    fn port_filter_and_port_orientation() {
        let mut t = FlowTracker::new(DecodeOptions::default(), Some(7000));
        let mut out = Vec::new();
        let ts = Timestamp::default();
        let (c, s) = (addr("10.0.0.2:51000"), addr("10.0.0.1:20260"));
        t.datagram(ts, c, s, &hex(REQUEST), &mut out);
        assert!(out.is_empty(), "another port");
        // On the selected port any datagram starts a session, the port's end being
        // the server even when it is the higher port.
        let (c2, s2) = (addr("10.0.0.2:5000"), addr("10.0.0.1:7000"));
        t.datagram(ts, s2, c2, b"\x05application", &mut out);
        assert_eq!(starts(&out), [(1, c2, s2, false)]);
        let summary = t.finish(&mut Vec::new());
        assert_eq!((summary.filtered_flows, summary.soe_flows), (1, 1));
    }
}
