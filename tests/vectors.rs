//! The byte-level test vectors of `tests/vectors/*.txt`, checked against the codec
//! (`soe_uring::protocol`) and, for behaviour that needs one, a server session.
//!
//! The file format and the meaning of every key are in `tests/vectors/README.md`;
//! the protocol they exercise is described in `docs/protocol.md`. Every file is
//! read, every vector checked, and a failure names the vector and its file.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use soe_uring::protocol::{
    Crc32, DataBundle, DecodeError, FrameError, Framing, MultiPacket, OpCode, Packet, Rc4KeyState,
    Unframed, soe_crc32,
};
use soe_uring::protocol::{SessionRequest, SessionResponse};
use soe_uring::{Channel, DisconnectReason, SocketConfig, SocketEvent, SoeMultiplexer};

/// One named vector: its keys in file order.
#[derive(Debug)]
struct Vector {
    name: String,
    file: PathBuf,
    line: usize,
    entries: Vec<(String, String)>,
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn parse_hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| {
            assert!(b.len() == 2, "not a hex byte: {b:?}");
            u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("not a hex byte: {b:?}"))
        })
        .collect()
}

fn parse_num(text: &str) -> u64 {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

fn parse_bool(text: &str) -> bool {
    match text.trim() {
        "true" => true,
        "false" => false,
        other => panic!("not a boolean: {other:?}"),
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Vector {
    fn values(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values(key).first().copied()
    }

    fn req(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("{}: missing key {key:?}", self.name))
    }

    fn num(&self, key: &str) -> u64 {
        parse_num(self.req(key))
    }

    fn opt_num(&self, key: &str) -> Option<u64> {
        self.get(key).map(parse_num)
    }

    fn flag(&self, key: &str, default: bool) -> bool {
        self.get(key).map_or(default, parse_bool)
    }

    fn hex(&self, key: &str) -> Vec<u8> {
        parse_hex(self.req(key))
    }

    fn opt_hex(&self, key: &str) -> Option<Vec<u8>> {
        self.get(key).map(parse_hex)
    }

    /// Bytes from `key`, from the hex file named by `key_file`, or text from
    /// `key_text`.
    fn bytes(&self, key: &str) -> Vec<u8> {
        if let Some(file) = self.get(&format!("{key}_file")) {
            let text = std::fs::read_to_string(vectors_dir().join(file))
                .unwrap_or_else(|e| panic!("{}: {file}: {e}", self.name));
            return parse_hex(&text);
        }
        if let Some(text) = self.get(&format!("{key}_text")) {
            return text.as_bytes().to_vec();
        }
        self.hex(key)
    }

    /// Panics on a key the check does not know, so a typo cannot skip a check.
    fn only_keys(&self, allowed: &[&str], prefixes: &[&str]) {
        for (key, _) in &self.entries {
            let known = ["description", "source", "check"].contains(&key.as_str())
                || allowed.contains(&key.as_str())
                || prefixes.iter().any(|p| key.starts_with(p));
            assert!(known, "{}: unknown key {key:?}", self.name);
        }
        for key in ["description", "source", "check"] {
            assert_eq!(
                self.values(key).len(),
                1,
                "{}: needs exactly one {key:?}",
                self.name
            );
        }
        for (key, _) in &self.entries {
            assert!(
                key == "step" || self.values(key).len() == 1,
                "{}: repeated key {key:?}",
                self.name
            );
        }
    }
}

/// Reads one vector file.
fn read_file(path: &Path) -> Vec<Vector> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut vectors: Vec<Vector> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let lineno = i + 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .unwrap_or_else(|| panic!("{path:?}:{lineno}: bad header {line:?}"));
            vectors.push(Vector {
                name: name.to_string(),
                file: path.to_path_buf(),
                line: lineno,
                entries: Vec::new(),
            });
            continue;
        }
        let vector = vectors
            .last_mut()
            .unwrap_or_else(|| panic!("{path:?}:{lineno}: text before the first [name]"));
        if line.starts_with(char::is_whitespace) {
            let (_, value) = vector
                .entries
                .last_mut()
                .unwrap_or_else(|| panic!("{path:?}:{lineno}: continuation of nothing"));
            value.push(' ');
            value.push_str(line.trim());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{path:?}:{lineno}: expected key = value"));
        vector
            .entries
            .push((key.trim().to_string(), value.trim().to_string()));
    }
    vectors
}

/// Every vector of every `*.txt` file in `tests/vectors`.
fn all_vectors() -> Vec<Vector> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(vectors_dir())
        .expect("tests/vectors")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files.iter().flat_map(|f| read_file(f)).collect()
}

// ---------------------------------------------------------------------------
// Packet fields

/// A field of a parsed packet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Num(u64),
    Bytes(Vec<u8>),
    Text(String),
}

impl Val {
    /// Reads `text` as a value of the same kind as `self`.
    fn expected_from(&self, text: &str) -> Val {
        match self {
            Val::Num(_) => Val::Num(parse_num(text)),
            Val::Bytes(_) => Val::Bytes(parse_hex(text)),
            Val::Text(_) => Val::Text(text.trim().to_string()),
        }
    }
}

impl std::fmt::Display for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Val::Num(n) => write!(f, "{n}"),
            Val::Bytes(b) => write!(f, "[{}]", hex_string(b)),
            Val::Text(t) => write!(f, "{t}"),
        }
    }
}

type Fields = BTreeMap<String, Val>;

fn put(out: &mut Fields, prefix: &str, key: &str, val: Val) {
    out.insert(format!("{prefix}{key}"), val);
}

fn decode_error_name(e: DecodeError) -> &'static str {
    match e {
        DecodeError::Empty => "empty",
        DecodeError::UnknownOpCode(_) => "unknown-op",
        DecodeError::TooShort => "too-short",
        DecodeError::BadLength => "bad-length",
        other => panic!("unexpected {other:?}"),
    }
}

/// Every field of `p`, keys prefixed with `prefix`.
fn dump(p: &Packet<'_>, prefix: &str, out: &mut Fields) {
    use Val::{Bytes, Num, Text};
    let ty = match p {
        Packet::SessionRequest(_) => "SessionRequest",
        Packet::SessionResponse(_) => "SessionResponse",
        Packet::MultiPacket(_) => "MultiPacket",
        Packet::Disconnect(_) => "Disconnect",
        Packet::Heartbeat => "Heartbeat",
        Packet::NetStatusRequest(_) => "NetStatusRequest",
        Packet::NetStatusResponse(_) => "NetStatusResponse",
        Packet::ReliableData { .. } => "ReliableData",
        Packet::ReliableDataFragment { .. } => "ReliableDataFragment",
        Packet::Acknowledge { .. } => "Acknowledge",
        Packet::AcknowledgeAll { .. } => "AcknowledgeAll",
        Packet::DataBundle(_) => "DataBundle",
        Packet::Ordered { .. } => "Ordered",
        Packet::PortAlive(_) => "PortAlive",
        Packet::UnknownSender => "UnknownSender",
        Packet::RemapConnection(_) => "RemapConnection",
        Packet::ZeroEscaped(_) => "ZeroEscaped",
        Packet::Application(_) => "Application",
    };
    put(out, prefix, "type", Text(ty.into()));
    match *p {
        Packet::SessionRequest(r) => {
            put(
                out,
                prefix,
                "protocol_version",
                Num(r.protocol_version.into()),
            );
            put(out, prefix, "session_id", Num(r.session_id.into()));
            put(out, prefix, "udp_length", Num(r.udp_length.into()));
            let name = r.application_protocol.map_or("none".to_string(), |n| {
                String::from_utf8_lossy(n).into_owned()
            });
            put(out, prefix, "application_protocol", Text(name));
        }
        Packet::SessionResponse(r) => {
            put(out, prefix, "session_id", Num(r.session_id.into()));
            put(out, prefix, "crc_seed", Num(r.crc_seed.into()));
            put(out, prefix, "crc_length", Num(r.crc_length.into()));
            put(out, prefix, "compression", Num(r.compression.into()));
            put(
                out,
                prefix,
                "encryption_pass_1",
                Num(r.encryption_pass_1.into()),
            );
            put(out, prefix, "udp_length", Num(r.udp_length.into()));
            let version = r
                .protocol_version
                .map_or(Text("none".into()), |v| Num(v.into()));
            put(out, prefix, "protocol_version", version);
        }
        Packet::Disconnect(d) => {
            put(out, prefix, "session_id", Num(d.session_id.into()));
            put(out, prefix, "reason", Text(format!("{:?}", d.reason)));
        }
        Packet::RemapConnection(r) => {
            put(out, prefix, "session_id", Num(r.session_id.into()));
            put(out, prefix, "crc_seed", Num(r.crc_seed.into()));
        }
        Packet::NetStatusRequest(r) => {
            put(out, prefix, "timestamp", Num(r.timestamp.into()));
            put(out, prefix, "master_ping", Num(r.master_ping.into()));
            put(out, prefix, "average_ping", Num(r.average_ping.into()));
            put(out, prefix, "low_ping", Num(r.low_ping.into()));
            put(out, prefix, "high_ping", Num(r.high_ping.into()));
            put(out, prefix, "last_ping", Num(r.last_ping.into()));
            put(out, prefix, "our_sent", Num(r.our_sent));
            put(out, prefix, "our_received", Num(r.our_received));
        }
        Packet::NetStatusResponse(r) => {
            put(out, prefix, "timestamp", Num(r.timestamp.into()));
            put(out, prefix, "server_stamp", Num(r.server_stamp.into()));
            put(out, prefix, "your_sent", Num(r.your_sent));
            put(out, prefix, "your_received", Num(r.your_received));
            put(out, prefix, "our_sent", Num(r.our_sent));
            put(out, prefix, "our_received", Num(r.our_received));
        }
        Packet::ReliableData {
            channel,
            sequence,
            payload,
        }
        | Packet::ReliableDataFragment {
            channel,
            sequence,
            payload,
        } => {
            put(out, prefix, "channel", Num(channel.into()));
            put(out, prefix, "sequence", Num(sequence.into()));
            put(out, prefix, "payload", Bytes(payload.to_vec()));
            put(out, prefix, "payload_len", Num(payload.len() as u64));
            if matches!(p, Packet::ReliableData { .. })
                && payload.len() > 2
                && payload.starts_with(&[0x00, 0x19])
                && let Ok(bundle) = Packet::parse(payload)
            {
                dump(&bundle, &format!("{prefix}payload."), out);
            }
        }
        Packet::Acknowledge { channel, sequence }
        | Packet::AcknowledgeAll { channel, sequence } => {
            put(out, prefix, "channel", Num(channel.into()));
            put(out, prefix, "sequence", Num(sequence.into()));
        }
        Packet::Ordered {
            second,
            stamp,
            payload,
        } => {
            put(out, prefix, "second", Text(second.to_string()));
            put(out, prefix, "stamp", Num(stamp.into()));
            put(out, prefix, "payload", Bytes(payload.to_vec()));
        }
        Packet::MultiPacket(multi) => {
            let mut count = 0u64;
            for sub in multi.iter() {
                match sub {
                    Ok(sub) => {
                        let at = format!("{prefix}sub.{count}.");
                        put(out, prefix, &format!("sub.{count}"), Bytes(sub.to_vec()));
                        put(out, &at, "len", Num(sub.len() as u64));
                        match Packet::parse(sub) {
                            Ok(p) => dump(&p, &at, out),
                            Err(e) => put(out, &at, "error", Text(decode_error_name(e).into())),
                        }
                        count += 1;
                    }
                    Err(e) => put(out, prefix, "sub.error", Text(decode_error_name(e).into())),
                }
            }
            put(out, prefix, "sub.count", Num(count));
        }
        Packet::DataBundle(bundle) => {
            let mut count = 0u64;
            for item in bundle.iter() {
                match item {
                    Ok(item) => {
                        put(out, prefix, &format!("item.{count}"), Bytes(item.to_vec()));
                        put(
                            out,
                            prefix,
                            &format!("item.{count}.len"),
                            Num(item.len() as u64),
                        );
                        count += 1;
                    }
                    Err(e) => put(out, prefix, "item.error", Text(decode_error_name(e).into())),
                }
            }
            put(out, prefix, "item.count", Num(count));
        }
        Packet::PortAlive(body) => put(out, prefix, "body", Bytes(body.to_vec())),
        Packet::ZeroEscaped(data) | Packet::Application(data) => {
            put(out, prefix, "data", Bytes(data.to_vec()))
        }
        Packet::Heartbeat | Packet::UnknownSender => {}
    }
}

/// Compares every `field.*` of `v` with the fields of the parsed packet.
fn check_fields(v: &Vector, fields: &Fields) {
    for (key, expected) in &v.entries {
        let Some(name) = key.strip_prefix("field.") else {
            continue;
        };
        let actual = fields.get(name).unwrap_or_else(|| {
            panic!(
                "{}: the packet has no field {name:?}; it has {:?}",
                v.name,
                fields.keys().collect::<Vec<_>>()
            )
        });
        let expected = actual.expected_from(expected);
        assert_eq!(
            *actual, expected,
            "{}: field {name}: got {actual}, expected {expected}",
            v.name
        );
    }
}

// ---------------------------------------------------------------------------
// Checks

fn check_crc(v: &Vector) {
    v.only_keys(
        &["seed", "data", "data_file", "crc", "wrong_seed"],
        &["trailer."],
    );
    let seed = v.num("seed") as u32;
    let data = v.bytes("data");
    let crc = Crc32::new(seed);
    let mut checked = false;
    if let Some(expected) = v.opt_num("crc") {
        assert_eq!(
            u64::from(soe_crc32(seed, &data)),
            expected,
            "{}: CRC",
            v.name
        );
        assert_eq!(u64::from(crc.checksum(&data)), expected, "{}: CRC", v.name);
        checked = true;
    }
    for n in 0..=4u8 {
        let Some(trailer) = v.get(&format!("trailer.{n}")) else {
            continue;
        };
        let trailer = parse_hex(trailer);
        let mut buf = data.clone();
        buf.resize(data.len() + usize::from(n), 0);
        let end = crc.append(&mut buf, data.len(), n);
        assert_eq!(end, buf.len(), "{}: sealed length", v.name);
        assert_eq!(
            hex_string(&buf[data.len()..]),
            hex_string(&trailer),
            "{}: trailer of CRC length {n}",
            v.name
        );
        assert_eq!(
            crc.verify(&buf, n),
            Some(&data[..]),
            "{}: verify with CRC length {n}",
            v.name
        );
        checked = true;
    }
    if let Some(wrong) = v.opt_num("wrong_seed") {
        let wrong = Crc32::new(wrong as u32);
        for n in 1..=4u8 {
            let mut buf = data.clone();
            buf.resize(data.len() + usize::from(n), 0);
            crc.append(&mut buf, data.len(), n);
            assert_eq!(crc.verify(&buf, n), Some(&data[..]), "{}", v.name);
            assert_eq!(
                wrong.verify(&buf, n),
                None,
                "{}: CRC length {n} passed under the wrong seed",
                v.name
            );
        }
        checked = true;
    }
    assert!(checked, "{}: checks nothing", v.name);
}

fn check_frame(v: &Vector) {
    v.only_keys(
        &[
            "seed",
            "crc_length",
            "compression",
            "datagram",
            "datagram_file",
            "datagram_tail",
            "expect",
            "op",
            "compressed",
            "body",
            "data",
        ],
        &["field."],
    );
    let framing = Framing::new(
        v.num("seed") as u32,
        v.num("crc_length") as u8,
        v.flag("compression", false),
    );
    let mut datagram = v.bytes("datagram");
    if let Some(tail) = v.opt_hex("datagram_tail") {
        datagram.extend_from_slice(&tail);
    }
    let got = framing.unframe(&datagram);
    let error = |e: FrameError| match e {
        FrameError::Empty => "empty",
        FrameError::CrcMismatch => "crc-mismatch",
        FrameError::TooShort => "too-short",
        FrameError::UnknownOpCode(_) => "unknown-op",
        FrameError::Pass(_) => "pass",
        other => panic!("unexpected {other:?}"),
    };
    match (v.req("expect"), got) {
        (
            "contextual",
            Ok(Unframed::Contextual {
                op,
                compressed,
                body,
            }),
        ) => {
            assert_eq!(u64::from(op.type_byte()), v.num("op"), "{}: op", v.name);
            assert_eq!(
                compressed,
                v.flag("compressed", false),
                "{}: compressed",
                v.name
            );
            if let Some(expected) = v.opt_hex("body") {
                assert_eq!(hex_string(body), hex_string(&expected), "{}: body", v.name);
            }
            let packet = Packet::parse_contextual(op, body)
                .unwrap_or_else(|e| panic!("{}: body does not parse: {e}", v.name));
            let mut fields = Fields::new();
            dump(&packet, "", &mut fields);
            check_fields(v, &fields);
        }
        ("contextless", Ok(Unframed::Contextless(op, _))) => {
            assert_eq!(u64::from(op.type_byte()), v.num("op"), "{}: op", v.name);
        }
        ("application", Ok(Unframed::Application(data))) => {
            assert_eq!(hex_string(data), hex_string(&v.hex("data")), "{}", v.name);
        }
        (expected, Err(e)) if expected == error(e) => {}
        (expected, got) => panic!("{}: expected {expected}, got {got:?}", v.name),
    }
}

fn check_packet(v: &Vector) {
    v.only_keys(&["bytes", "expect", "reemit"], &["field."]);
    let bytes = v.hex("bytes");
    let parsed = Packet::parse(&bytes);
    let expect = v.get("expect").unwrap_or("ok");
    if expect != "ok" {
        match parsed {
            Err(e) => assert_eq!(decode_error_name(e), expect, "{}", v.name),
            Ok(p) => panic!("{}: expected {expect}, parsed {p:?}", v.name),
        }
        if let Err(DecodeError::UnknownOpCode(ty)) = parsed {
            assert_eq!(Some(&ty), bytes.get(1), "{}: reported type byte", v.name);
        }
        return;
    }
    let packet = parsed.unwrap_or_else(|e| panic!("{}: does not parse: {e}", v.name));
    let mut fields = Fields::new();
    dump(&packet, "", &mut fields);
    check_fields(v, &fields);
    let mut emitted = vec![0u8; packet.encoded_len()];
    assert_eq!(packet.emit(&mut emitted), emitted.len(), "{}", v.name);
    let expected = match v.get("reemit").unwrap_or("exact") {
        "exact" => &bytes[..],
        "none" => return,
        other => {
            let n = other
                .strip_prefix("prefix:")
                .unwrap_or_else(|| panic!("{}: bad reemit {other:?}", v.name));
            &bytes[..parse_num(n) as usize]
        }
    };
    assert_eq!(
        hex_string(&emitted),
        hex_string(expected),
        "{}: emitted",
        v.name
    );
}

fn check_varint(v: &Vector) {
    v.only_keys(&["form", "wire", "value", "used", "encode", "sizes"], &[]);
    let form = v.req("form");
    let read = |wire: &[u8]| match form {
        "multi" => MultiPacket::read_prefix(wire),
        "bundle" => DataBundle::read_prefix(wire),
        other => panic!("{}: unknown form {other:?}", v.name),
    };
    if let Some(sizes) = v.get("sizes") {
        for pair in sizes.split_whitespace() {
            let (value, len) = pair
                .split_once(':')
                .unwrap_or_else(|| panic!("{}: bad size {pair:?}", v.name));
            let (value, len) = (parse_num(value) as u32, parse_num(len) as usize);
            let mut out = [0u8; 7];
            let n = match form {
                "multi" => MultiPacket::write_prefix(value, 0, &mut out),
                _ => DataBundle::write_prefix(value, &mut out),
            };
            assert_eq!(n, len, "{}: size of {value}", v.name);
            let mut wire = out[..n].to_vec();
            wire.push(0);
            assert_eq!(read(&wire), Ok((value, n)), "{}: reads back", v.name);
        }
        return;
    }
    let wire = v.hex("wire");
    let (value, used) = (v.num("value") as u32, v.num("used") as usize);
    assert_eq!(read(&wire), Ok((value, used)), "{}: read", v.name);
    let mut out = [0u8; 7];
    let n = match form {
        "multi" => MultiPacket::write_prefix(value, wire.get(used).copied().unwrap_or(0), &mut out),
        _ => DataBundle::write_prefix(value, &mut out),
    };
    let same = out[..n] == wire[..used];
    assert_eq!(
        same,
        parse_bool(v.req("encode")),
        "{}: the writer gives [{}]",
        v.name,
        hex_string(&out[..n])
    );
}

fn check_rc4(v: &Vector) {
    v.only_keys(
        &[
            "key",
            "key_text",
            "plaintext",
            "plaintext_text",
            "ciphertext",
            "split",
            "advance",
        ],
        &[],
    );
    let key = v.bytes("key");
    let plain = v.bytes("plaintext");
    let cipher = v.hex("ciphertext");
    let mut buf = plain.clone();
    Rc4KeyState::new(&key).apply(&mut buf);
    assert_eq!(hex_string(&buf), hex_string(&cipher), "{}: encrypt", v.name);
    Rc4KeyState::new(&key).transform_in_place(&mut buf);
    assert_eq!(buf, plain, "{}: decrypt", v.name);
    if let Some(split) = v.opt_num("split") {
        let mut state = Rc4KeyState::new(&key);
        let mut buf = plain.clone();
        let (a, b) = buf.split_at_mut(split as usize);
        state.apply(a);
        state.apply(b);
        assert_eq!(buf, cipher, "{}: split at {split}", v.name);
    }
    if let Some(n) = v.opt_num("advance") {
        let n = n as usize;
        let mut state = Rc4KeyState::new(&key);
        state.advance(n);
        let mut byte = [plain[n]];
        state.apply(&mut byte);
        assert_eq!(byte[0], cipher[n], "{}: advance {n}", v.name);
    }
}

// ---------------------------------------------------------------------------
// Sessions

const SESSION_ID: u32 = 0xABCD;
const PROTOCOL: &str = "vectors";

/// A server multiplexer with one established session from `client`.
struct Harness {
    name: String,
    mux: SoeMultiplexer<SocketAddr>,
    now: Instant,
    client: SocketAddr,
    stranger: SocketAddr,
}

impl Harness {
    fn new(v: &Vector) -> Self {
        let mut config = SocketConfig {
            rng_seed: Some(0x5EC7),
            ..SocketConfig::default()
        };
        let params = &mut config.default_session_params;
        params.application_protocol = PROTOCOL.into();
        params.crc_length = 0;
        params.is_compression_enabled = false;
        if let Some(window) = v.opt_num("window") {
            params.max_queued_incoming_reliable = window as u16;
        }
        params.acknowledge_all_data = v.flag("ack_every_packet", false);
        // The vectors record the references' ack timing: a lone in-order packet
        // is acknowledged in the next flush. `lone_ack_delay_ms` tests the delay.
        params.lone_ack_delay = Duration::from_millis(v.opt_num("lone_ack_delay_ms").unwrap_or(0));
        if let Some(key) = v.opt_hex("rc4_key") {
            config.app_params.encryption_key_state = Some(Rc4KeyState::new(&key));
        }
        #[allow(clippy::disallowed_methods)] // the tests' arbitrary epoch
        let now = Instant::now();
        let mut h = Self {
            name: v.name.clone(),
            mux: SoeMultiplexer::new(config),
            now,
            client: "10.0.0.2:5000".parse().unwrap(),
            stranger: "10.0.0.3:6000".parse().unwrap(),
        };
        let request = Packet::SessionRequest(SessionRequest {
            protocol_version: 3,
            session_id: SESSION_ID,
            udp_length: 512,
            application_protocol: Some(PROTOCOL.as_bytes()),
        });
        let mut bytes = vec![0u8; request.encoded_len()];
        request.emit(&mut bytes);
        h.mux.process_incoming(h.client, &bytes, now);
        h.mux.run_tick(now);
        let (to, response) = h.mux.outgoing(0);
        assert_eq!(*to, h.client);
        let Ok(Packet::SessionResponse(SessionResponse {
            session_id: SESSION_ID,
            crc_length: 0,
            compression: 0,
            ..
        })) = Packet::parse(response)
        else {
            panic!("{}: unexpected response {response:02x?}", h.name)
        };
        h.mux.consume_outgoing(1);
        // The server opens the session on the client's next packet.
        h.mux.process_incoming(h.client, [0x00, 0x06], now);
        assert_eq!(
            h.mux.poll_event(),
            Some(SocketEvent::SessionOpened { remote: h.client })
        );
        h.mux.run_tick(now);
        h.expect_out(h.client, &[0x00, 0x06]);
        h.expect_quiet();
        h
    }

    fn expect_out(&mut self, to: SocketAddr, bytes: &[u8]) {
        assert!(
            self.mux.outgoing_len() > 0,
            "{}: expected datagram [{}], none sent",
            self.name,
            hex_string(bytes)
        );
        let (addr, got) = self.mux.outgoing(0);
        assert_eq!(
            (*addr, hex_string(got)),
            (to, hex_string(bytes)),
            "{}: datagram",
            self.name
        );
        self.mux.consume_outgoing(1);
    }

    fn expect_event(&mut self, expected: SocketEvent<SocketAddr>) {
        let got = self.mux.poll_event();
        assert_eq!(got, Some(expected), "{}: event", self.name);
    }

    fn expect_quiet(&mut self) {
        if self.mux.outgoing_len() > 0 {
            let (addr, bytes) = self.mux.outgoing(0);
            panic!(
                "{}: unexpected datagram to {addr}: [{}]",
                self.name,
                hex_string(bytes)
            );
        }
        if let Some(e) = self.mux.poll_event() {
            panic!("{}: unexpected event {e:?}", self.name);
        }
    }

    fn step(&mut self, step: &str) {
        let (op, rest) = step.split_once(' ').unwrap_or((step, ""));
        let channel_and_hex = |rest: &str| {
            let (ch, hex) = rest.split_once(' ').unwrap_or((rest, ""));
            let channel = match ch {
                "r0" => Channel::Reliable(0),
                "r1" => Channel::Reliable(1),
                "r2" => Channel::Reliable(2),
                "r3" => Channel::Reliable(3),
                "unreliable" => Channel::Unreliable,
                "ordered" => Channel::Ordered,
                other => panic!("{}: unknown channel {other:?}", self.name),
            };
            (channel, parse_hex(hex))
        };
        match op {
            "in" => self
                .mux
                .process_incoming(self.client, parse_hex(rest), self.now),
            "stranger-in" => self
                .mux
                .process_incoming(self.stranger, parse_hex(rest), self.now),
            "in-run" => {
                let mut words = rest.splitn(3, ' ');
                let from = parse_num(words.next().unwrap_or_default());
                let to = parse_num(words.next().unwrap_or_default());
                let payload = parse_hex(words.next().unwrap_or_default());
                let mut packet = OpCode::ReliableData(0).to_bytes().to_vec();
                packet.extend_from_slice(&[0, 0]);
                packet.extend_from_slice(&payload);
                for seq in from..to {
                    packet[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
                    self.mux.process_incoming(self.client, &packet, self.now);
                    while let Some(e) = self.mux.poll_event() {
                        assert!(
                            matches!(e, SocketEvent::DataReceived { .. }),
                            "{}: unexpected event {e:?} at sequence {seq}",
                            self.name
                        );
                    }
                }
            }
            "send" => {
                let (channel, data) = channel_and_hex(rest);
                self.mux
                    .enqueue_data_on(&self.client, &data, channel)
                    .unwrap_or_else(|e| panic!("{}: enqueue: {e}", self.name));
            }
            "tick" => {
                self.now += Duration::from_millis(parse_num(rest));
                self.mux.run_tick(self.now);
            }
            "out" => self.expect_out(self.client, &parse_hex(rest)),
            "stranger-out" => self.expect_out(self.stranger, &parse_hex(rest)),
            "out-end" => assert_eq!(self.mux.outgoing_len(), 0, "{}: datagrams left", self.name),
            "deliver" => {
                let (channel, data) = channel_and_hex(rest);
                self.expect_event(SocketEvent::DataReceived {
                    remote: self.client,
                    data: data.into(),
                    channel,
                });
            }
            "closed" => {
                let reason = DisconnectReason::ALL
                    .into_iter()
                    .find(|r| format!("{r:?}") == rest)
                    .unwrap_or_else(|| panic!("{}: unknown reason {rest:?}", self.name));
                self.expect_event(SocketEvent::SessionClosed {
                    remote: self.client,
                    reason,
                });
            }
            "events-end" => {
                if let Some(e) = self.mux.poll_event() {
                    panic!("{}: unexpected event {e:?}", self.name);
                }
            }
            other => panic!("{}: unknown step {other:?}", self.name),
        }
    }
}

fn check_session(v: &Vector) {
    v.only_keys(&["rc4_key", "window", "ack_every_packet", "step"], &[]);
    let mut h = Harness::new(v);
    let mut steps = 0;
    for step in v.values("step") {
        h.step(step);
        steps += 1;
    }
    assert!(steps > 0, "{}: no steps", v.name);
    h.expect_quiet();
}

// ---------------------------------------------------------------------------

#[test]
fn every_vector_holds() {
    let vectors = all_vectors();
    let mut names = HashSet::new();
    let mut failures = Vec::new();
    for v in &vectors {
        assert!(
            names.insert(v.name.clone()),
            "{}: name used twice ({:?}:{})",
            v.name,
            v.file,
            v.line
        );
        let file = v.file.file_name().unwrap_or_default().to_string_lossy();
        let group = file.split('_').next().unwrap_or_default();
        assert!(
            v.name.starts_with(&format!("{group}_")),
            "{}: name does not start with its file's prefix {group}_",
            v.name
        );
        let outcome = std::panic::catch_unwind(|| match v.req("check") {
            "crc" => check_crc(v),
            "frame" => check_frame(v),
            "packet" => check_packet(v),
            "varint" => check_varint(v),
            "rc4" => check_rc4(v),
            "session" => check_session(v),
            other => panic!("{}: unknown check {other:?}", v.name),
        });
        if outcome.is_err() {
            failures.push(format!("{} ({}:{})", v.name, file, v.line));
        }
    }
    assert!(failures.is_empty(), "failing vectors: {failures:#?}");
    // Every group of the collection is here.
    for group in 1..=26 {
        let prefix = format!("v{group:02}_");
        assert!(
            vectors.iter().any(|v| v.name.starts_with(&prefix)),
            "no vector of group {group}"
        );
    }
}
