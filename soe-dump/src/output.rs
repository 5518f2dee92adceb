//! Writing events: a human-readable timeline, or one JSON object per line.
//!
//! Text lines start with the session number and the time since the session's first
//! datagram; packets inside multi-packets and bundles are indented by depth, and a
//! message is printed under the packet that completed it.
//!
//! JSON lines all have `session`, `event` and, for events tied to a datagram,
//! `t` (seconds since the session's first datagram), `ts` (capture time, Unix
//! seconds) and `dir` (`c2s`/`s2c`). The other keys depend on `event`: `start`,
//! `packet`, `message`, `crc_mismatch`, `malformed`, `note`, `summary`, `capture`.

use std::fmt::Write as _;
use std::io::{self, Write};

use serde_json::{Map, Value, json};

use crate::event::{
    CaptureSummary, DirStats, Event, EventKind, MessageEvent, PacketEvent, PacketInfo,
    SessionSummary,
};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// The text timeline.
    Text,
    /// JSON lines.
    Json,
}

/// Writes events to `W`.
#[derive(Debug)]
pub struct Printer<W: Write> {
    out: W,
    style: Style,
    summary_only: bool,
}

fn hex(bytes: &[u8], spaced: bool) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if spaced && i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl<W: Write> Printer<W> {
    /// A printer in `style`; with `summary_only`, only session and capture totals
    /// are written.
    pub fn new(out: W, style: Style, summary_only: bool) -> Self {
        Self {
            out,
            style,
            summary_only,
        }
    }

    /// Writes one event.
    pub fn event(&mut self, e: &Event) -> io::Result<()> {
        if self.summary_only && !matches!(e.kind, EventKind::Summary(_) | EventKind::Capture(_)) {
            return Ok(());
        }
        match self.style {
            Style::Json => {
                let line = json_event(e).to_string();
                self.out.write_all(line.as_bytes())?;
                self.out.write_all(b"\n")
            }
            Style::Text => {
                let text = text_event(e);
                self.out.write_all(text.as_bytes())
            }
        }
    }

    /// Flushes the writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn packet_fields(p: &PacketEvent, m: &mut Map<String, Value>) {
    m.insert("op".into(), json!(p.info.name()));
    m.insert("depth".into(), json!(p.depth));
    if let Some(n) = p.wire_len {
        m.insert("wire_len".into(), json!(n));
    }
    if let Some(n) = p.inflated_len {
        m.insert("inflated_len".into(), json!(n));
    }
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    match &p.info {
        PacketInfo::SessionRequest {
            version,
            session_id,
            udp_length,
            protocol,
            retry,
        } => {
            put("version", json!(version));
            put("session_id", json!(session_id));
            put("udp_length", json!(udp_length));
            put("protocol", json!(protocol));
            put("retry", json!(retry));
        }
        PacketInfo::SessionResponse {
            session_id,
            crc_seed,
            crc_length,
            compression,
            encryption,
            udp_length,
            version,
        } => {
            put("session_id", json!(session_id));
            put("crc_seed", json!(crc_seed));
            put("crc_length", json!(crc_length));
            put("compression", json!(compression));
            put("encryption", json!(encryption));
            put("udp_length", json!(udp_length));
            put("version", json!(version));
        }
        PacketInfo::MultiPacket { items, form } => {
            put("items", json!(items));
            put("length_form", json!(form.as_str()));
        }
        PacketInfo::DataBundle { items } => put("items", json!(items)),
        PacketInfo::Disconnect { session_id, reason } => {
            put("session_id", json!(session_id));
            put("reason", json!(reason.to_string()));
            put("reason_code", json!(reason.as_u16()));
        }
        PacketInfo::Reliable {
            channel,
            seq,
            seq64,
            len,
            total,
            order,
            ..
        } => {
            put("channel", json!(channel));
            put("seq", json!(seq));
            put("seq64", json!(seq64));
            put("len", json!(len));
            if let Some(t) = total {
                put("total", json!(t));
            }
            put("order", json!(order.as_str()));
        }
        PacketInfo::Ack { channel, seq, .. } => {
            put("channel", json!(channel));
            put("seq", json!(seq));
        }
        PacketInfo::Ordered { stamp, len, .. } => {
            put("stamp", json!(stamp));
            put("len", json!(len));
        }
        PacketInfo::Unreliable { len } => put("len", json!(len)),
        PacketInfo::RemapConnection {
            session_id,
            crc_seed,
        } => {
            put("session_id", json!(session_id));
            put("crc_seed", json!(crc_seed));
        }
        PacketInfo::Heartbeat
        | PacketInfo::NetStatusRequest
        | PacketInfo::NetStatusResponse
        | PacketInfo::PortAlive
        | PacketInfo::UnknownSender => {}
    }
}

fn dir_json(d: &DirStats) -> Value {
    json!({
        "datagrams": d.datagrams,
        "bytes": d.bytes,
        "compressed": d.compressed,
        "crc_mismatches": d.crc_mismatches,
        "malformed": d.malformed,
        "multi_packets": d.multi_packets,
        "reliable": d.reliable,
        "fragments": d.fragments,
        "duplicates": d.duplicates,
        "out_of_order": d.out_of_order,
        "beyond_window": d.beyond_window,
        "acks": d.acks,
        "ack_alls": d.ack_alls,
        "messages": d.messages,
        "message_bytes": d.message_bytes,
        "bundled_messages": d.bundled_messages,
        "fragmented_messages": d.fragmented_messages,
        "unreliable_messages": d.unreliable_messages,
    })
}

fn summary_json(s: &SessionSummary, m: &mut Map<String, Value>) {
    m.insert("client".into(), json!(s.client.to_string()));
    m.insert("server".into(), json!(s.server.to_string()));
    m.insert("handshake".into(), json!(s.handshake));
    m.insert("session_id".into(), json!(s.session_id));
    m.insert("protocol_version".into(), json!(s.protocol_version));
    m.insert("protocol".into(), json!(s.application_protocol));
    m.insert("crc_seed".into(), json!(s.crc_seed));
    m.insert("crc_length".into(), json!(s.crc_length));
    m.insert("compression".into(), json!(s.compression));
    m.insert("duration".into(), json!(s.duration));
    m.insert("c2s".into(), dir_json(&s.c2s));
    m.insert("s2c".into(), dir_json(&s.s2c));
    m.insert(
        "disconnect".into(),
        match s.disconnect {
            Some((dir, reason)) => json!({"dir": dir.as_str(), "reason": reason.to_string()}),
            None => Value::Null,
        },
    );
    m.insert("incomplete".into(), json!(s.incomplete));
}

fn capture_json(c: &CaptureSummary, m: &mut Map<String, Value>) {
    for (k, v) in [
        ("frames", c.frames),
        ("udp_datagrams", c.udp_datagrams),
        ("not_udp", c.not_udp),
        ("ip_fragments", c.ip_fragments),
        ("unsupported_link", c.unsupported_link),
        ("malformed_frames", c.malformed_frames),
        ("bad_ip_checksums", c.bad_ip_checksums),
        ("bad_udp_checksums", c.bad_udp_checksums),
        ("soe_flows", c.soe_flows),
        ("other_flows", c.other_flows),
        ("filtered_flows", c.filtered_flows),
        ("sessions", c.sessions),
    ] {
        m.insert(k.into(), json!(v));
    }
    m.insert("stopped".into(), json!(c.stopped));
}

/// The JSON object of one event.
pub fn json_event(e: &Event) -> Value {
    let mut m = Map::new();
    m.insert("session".into(), json!(e.session));
    let name = match &e.kind {
        EventKind::SessionStart { .. } => "start",
        EventKind::Packet(_) => "packet",
        EventKind::Message(_) => "message",
        EventKind::CrcMismatch { .. } => "crc_mismatch",
        EventKind::Malformed { .. } => "malformed",
        EventKind::Note(_) => "note",
        EventKind::Summary(_) => "summary",
        EventKind::Capture(_) => "capture",
    };
    m.insert("event".into(), json!(name));
    if !matches!(e.kind, EventKind::Capture(_)) {
        m.insert("t".into(), json!((e.offset * 1e6).round() / 1e6));
        m.insert(
            "ts".into(),
            json!((e.time.as_secs_f64() * 1e6).round() / 1e6),
        );
    }
    if let Some(dir) = e.dir {
        m.insert("dir".into(), json!(dir.as_str()));
    }
    match &e.kind {
        EventKind::SessionStart {
            client,
            server,
            handshake,
        } => {
            m.insert("client".into(), json!(client.to_string()));
            m.insert("server".into(), json!(server.to_string()));
            m.insert("handshake".into(), json!(handshake));
        }
        EventKind::Packet(p) => packet_fields(p, &mut m),
        EventKind::Message(msg) => {
            m.insert("channel".into(), json!(msg.channel.to_string()));
            m.insert("len".into(), json!(msg.len));
            m.insert("hex".into(), json!(hex(&msg.preview, false)));
            if let Some(seq) = msg.seq {
                m.insert("seq64".into(), json!(seq));
            }
            m.insert("fragments".into(), json!(msg.fragments));
            m.insert("bundled".into(), json!(msg.bundled));
            m.insert("decrypted".into(), json!(msg.decrypted));
            m.insert("depth".into(), json!(msg.depth));
        }
        EventKind::CrcMismatch {
            len,
            expected,
            found,
        } => {
            m.insert("len".into(), json!(len));
            m.insert("expected".into(), json!(expected));
            m.insert("found".into(), json!(found));
        }
        EventKind::Malformed { len, depth, reason } => {
            m.insert("len".into(), json!(len));
            m.insert("depth".into(), json!(depth));
            m.insert("reason".into(), json!(reason));
        }
        EventKind::Note(text) => {
            m.insert("text".into(), json!(text));
        }
        EventKind::Summary(s) => summary_json(s, &mut m),
        EventKind::Capture(c) => capture_json(c, &mut m),
    }
    Value::Object(m)
}

fn packet_text(p: &PacketEvent) -> String {
    let mut s = String::from(p.info.name());
    let _ = match &p.info {
        PacketInfo::SessionRequest {
            version,
            session_id,
            udp_length,
            protocol,
            retry,
        } => {
            let _ = write!(s, " v{version} id=0x{session_id:08x} udp={udp_length}");
            if let Some(name) = protocol {
                let _ = write!(s, " proto={name:?}");
            }
            if *retry {
                s.push_str(" (retry)");
            }
            Ok(())
        }
        PacketInfo::SessionResponse {
            session_id,
            crc_seed,
            crc_length,
            compression,
            encryption,
            udp_length,
            version,
        } => {
            let _ = write!(
                s,
                " id=0x{session_id:08x} crc_seed=0x{crc_seed:08x} crc_len={crc_length} compression={compression}"
            );
            if *encryption != 0 {
                let _ = write!(s, " encryption={encryption}");
            }
            let _ = write!(s, " udp={udp_length}");
            if let Some(v) = version {
                let _ = write!(s, " v{v}");
            }
            Ok(())
        }
        PacketInfo::MultiPacket { items, form } => {
            write!(s, " {items} items ({} lengths)", form.as_str())
        }
        PacketInfo::DataBundle { items } => write!(s, " {items} items"),
        PacketInfo::Disconnect { session_id, reason } => {
            write!(s, " id=0x{session_id:08x} reason={reason}")
        }
        PacketInfo::Reliable {
            channel,
            seq,
            seq64,
            len,
            total,
            order,
            ..
        } => {
            let _ = write!(s, " ch{channel} seq={seq}");
            if let Some(q) = seq64
                && *q != u64::from(*seq)
            {
                let _ = write!(s, " ({q})");
            }
            let _ = write!(s, " {len} B");
            if let Some(t) = total {
                let _ = write!(s, " of {t}");
            }
            if *order != crate::event::Order::InOrder {
                let _ = write!(s, " {}", order.as_str().to_uppercase());
            }
            Ok(())
        }
        PacketInfo::Ack { channel, seq, .. } => write!(s, " ch{channel} seq={seq}"),
        PacketInfo::Ordered { stamp, len, .. } => write!(s, " stamp={stamp} {len} B"),
        PacketInfo::Unreliable { len } => write!(s, " {len} B"),
        PacketInfo::RemapConnection {
            session_id,
            crc_seed,
        } => write!(s, " id=0x{session_id:08x} crc_seed=0x{crc_seed:08x}"),
        PacketInfo::Heartbeat
        | PacketInfo::NetStatusRequest
        | PacketInfo::NetStatusResponse
        | PacketInfo::PortAlive
        | PacketInfo::UnknownSender => Ok(()),
    };
    if let Some(n) = p.wire_len {
        match p.inflated_len {
            Some(i) => {
                let _ = write!(s, "  [{n} B, zlib -> {i} B]");
            }
            None => {
                let _ = write!(s, "  [{n} B]");
            }
        }
    }
    s
}

fn message_text(m: &MessageEvent) -> String {
    let mut s = format!("message {}", m.channel);
    if let Some(seq) = m.seq {
        let _ = write!(s, " @{seq}");
    }
    let _ = write!(s, " {} B", m.len);
    let mut tags = Vec::new();
    if m.fragments > 1 {
        tags.push(format!("{} fragments", m.fragments));
    }
    if m.bundled {
        tags.push("bundled".to_string());
    }
    if m.decrypted {
        tags.push("rc4".to_string());
    }
    if !tags.is_empty() {
        let _ = write!(s, " ({})", tags.join(", "));
    }
    let _ = write!(s, ": {}", hex(&m.preview, true));
    if m.len > m.preview.len() {
        s.push_str(" ..");
    }
    s
}

fn dir_text(name: &str, d: &DirStats) -> String {
    format!(
        "  {name}: {} datagrams, {} B ({} compressed), {} reliable ({} fragments, {} duplicates, {} out of order, {} beyond window), {} acks + {} ack-alls, {} multi-packets, {} messages / {} B ({} bundled, {} fragmented, {} unreliable), {} CRC mismatches, {} malformed\n",
        d.datagrams,
        d.bytes,
        d.compressed,
        d.reliable,
        d.fragments,
        d.duplicates,
        d.out_of_order,
        d.beyond_window,
        d.acks,
        d.ack_alls,
        d.multi_packets,
        d.messages,
        d.message_bytes,
        d.bundled_messages,
        d.fragmented_messages,
        d.unreliable_messages,
        d.crc_mismatches,
        d.malformed
    )
}

/// The text line(s) of one event, newline included.
pub fn text_event(e: &Event) -> String {
    let prefix = match e.dir {
        Some(dir) => format!("#{} +{:.6} {}", e.session, e.offset, dir.arrow()),
        None => format!("#{}", e.session),
    };
    let depth_of = |d: u8| "  ".repeat(usize::from(d));
    match &e.kind {
        EventKind::SessionStart {
            client,
            server,
            handshake,
        } => format!(
            "#{} session {client} -> {server}{}\n",
            e.session,
            if *handshake {
                ""
            } else {
                " (mid-session: no handshake seen)"
            }
        ),
        EventKind::Packet(p) => format!("{prefix} {}{}\n", depth_of(p.depth), packet_text(p)),
        EventKind::Message(m) => {
            format!("{prefix} {}  -> {}\n", depth_of(m.depth), message_text(m))
        }
        EventKind::CrcMismatch {
            len,
            expected,
            found,
        } => format!(
            "{prefix} CRC MISMATCH {len} B: computed 0x{expected:x}, datagram has 0x{found:x}\n"
        ),
        EventKind::Malformed { len, depth, reason } => {
            format!("{prefix} {}MALFORMED {len} B: {reason}\n", depth_of(*depth))
        }
        EventKind::Note(text) => format!("{prefix} note: {text}\n"),
        EventKind::Summary(s) => {
            let mut t = format!(
                "#{} summary {} -> {}: {:.3} s",
                e.session, s.client, s.server, s.duration
            );
            match (s.handshake, s.session_id) {
                (true, Some(id)) => {
                    let _ = write!(t, ", handshake id=0x{id:08x}");
                }
                _ => t.push_str(", no complete handshake"),
            }
            if let Some(v) = s.protocol_version {
                let _ = write!(t, " v{v}");
            }
            if let Some(p) = &s.application_protocol {
                let _ = write!(t, " proto={p:?}");
            }
            let _ = write!(
                t,
                ", crc_len={} crc_seed=0x{:08x} compression={}",
                s.crc_length,
                s.crc_seed,
                if s.compression { "on" } else { "off" }
            );
            if let Some((dir, reason)) = s.disconnect {
                let _ = write!(t, ", disconnect {} {reason}", dir.as_str());
            }
            t.push('\n');
            t += &dir_text("c2s", &s.c2s);
            t += &dir_text("s2c", &s.s2c);
            for line in &s.incomplete {
                let _ = writeln!(t, "  incomplete: {line}");
            }
            t
        }
        EventKind::Capture(c) => {
            let mut t = format!(
                "capture: {} frames, {} UDP datagrams, {} SOE sessions on {} flows; skipped: {} other UDP flows, {} filtered by --port, {} not UDP, {} IP fragments, {} unsupported link type, {} malformed frames; checksum errors: {} IPv4, {} UDP\n",
                c.frames,
                c.udp_datagrams,
                c.sessions,
                c.soe_flows,
                c.other_flows,
                c.filtered_flows,
                c.not_udp,
                c.ip_fragments,
                c.unsupported_link,
                c.malformed_frames,
                c.bad_ip_checksums,
                c.bad_udp_checksums
            );
            if let Some(why) = &c.stopped {
                let _ = writeln!(t, "capture: reading stopped early: {why}");
            }
            t
        }
    }
}
