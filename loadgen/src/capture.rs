//! `run --capture FILE`: a pcap of every datagram the clients send and receive.
//!
//! The file is classic libpcap (microsecond timestamps, little-endian) with link
//! type `LINKTYPE_RAW` (101): each record is an IPv4 or IPv6 header and a UDP
//! header synthesized around the datagram, with correct lengths and checksums, so
//! `tcpdump -r`, Wireshark and `soe-dump` read it. Addresses are the client
//! socket's own (as the kernel bound it) and the server's; timestamps come from the
//! wall clock when the datagram was sent or received.
//!
//! Cost on the client threads: each thread owns a [`Recorder`] that writes records
//! into its own reused buffer (no allocation per datagram once the buffer has
//! grown) and hands the buffer to the shared file under a lock only every
//! [`FLUSH_AT`] bytes. Records of one thread — and so of one session — stay in
//! time order; records of different threads interleave in chunks.
//!
//! Bound: at most `limit_packets` datagrams are written (`--capture-limit`,
//! default 1,000,000), so the file holds at most `24 + limit × (16 + 48 + largest
//! datagram)` bytes (about 580 MB at the default limit and 512-byte datagrams).
//! Datagrams past the limit are counted, not written.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use soe_dump::net::{fold, ones_sum, udp_checksum};

/// `LINKTYPE_RAW`: records start with an IPv4 or IPv6 header.
pub const LINKTYPE_RAW: u32 = 101;
/// Snapshot length written in the header: every record is complete.
const SNAPLEN: u32 = 262_144;
/// A recorder hands its buffer to the file when it holds this many bytes.
pub const FLUSH_AT: usize = 64 << 10;
/// The default of `--capture-limit`.
pub const DEFAULT_LIMIT: u64 = 1_000_000;

const IPPROTO_UDP: u8 = 17;
const TTL: u8 = 64;

/// Which way a datagram went, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Sent by the client.
    Sent,
    /// Received by the client.
    Received,
}

struct Shared {
    path: PathBuf,
    file: Mutex<Option<BufWriter<File>>>,
    limit: u64,
    /// Datagrams admitted (up to `limit`).
    admitted: AtomicU64,
    /// Bytes of records admitted.
    bytes: AtomicU64,
    /// Datagrams over the limit.
    dropped: AtomicU64,
    /// The first write error; after it nothing more is written.
    error: Mutex<Option<String>>,
}

/// The capture file, shared by the client threads (cheap to clone).
#[derive(Clone)]
pub struct Capture {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("path", &self.shared.path)
            .field("limit", &self.shared.limit)
            .finish_non_exhaustive()
    }
}

/// What was written, for the report at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSummary {
    /// Datagrams written.
    pub written: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// Datagrams left out because the limit was reached.
    pub dropped: u64,
}

impl Capture {
    /// Creates `path` and writes the pcap header. At most `limit` datagrams will be
    /// written.
    pub fn create(path: &Path, limit: u64) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        let mut header = [0u8; 24];
        header[0..4].copy_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes());
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        // Bytes 8..16: time zone and accuracy, both 0.
        header[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
        header[20..24].copy_from_slice(&LINKTYPE_RAW.to_le_bytes());
        out.write_all(&header)?;
        Ok(Self {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                file: Mutex::new(Some(out)),
                limit,
                admitted: AtomicU64::new(0),
                bytes: AtomicU64::new(header.len() as u64),
                dropped: AtomicU64::new(0),
                error: Mutex::new(None),
            }),
        })
    }

    /// The capture `run --capture PATH --capture-limit LIMIT` asks for, if any.
    pub fn for_run(path: Option<&Path>, limit: u64) -> Result<Option<Self>, String> {
        path.map(|p| {
            Self::create(p, limit).map_err(|e| format!("cannot create {}: {e}", p.display()))
        })
        .transpose()
    }

    /// [`Capture::finish`], then one line on stderr saying what was written.
    pub fn finish_and_report(&self) -> Result<(), String> {
        let s = self.finish()?;
        let dropped = if s.dropped > 0 {
            format!("; {} more not written (--capture-limit)", s.dropped)
        } else {
            String::new()
        };
        eprintln!(
            "loadgen: capture: {} datagrams ({} bytes) written to {}{dropped}",
            s.written,
            s.bytes,
            self.path().display(),
        );
        Ok(())
    }

    /// A recorder for one client thread.
    pub fn recorder(&self) -> Recorder {
        Recorder {
            shared: self.shared.clone(),
            buf: Vec::with_capacity(FLUSH_AT + 1024),
            endpoints: Vec::new(),
            ip_id: 0,
        }
    }

    /// Flushes and closes the file (call after every recorder is dropped; what a
    /// live recorder still buffers is lost).
    pub fn finish(&self) -> Result<CaptureSummary, String> {
        let file = self
            .shared
            .file
            .lock()
            .map_err(|_| "a client thread panicked while writing the capture")?
            .take();
        if let Some(mut file) = file
            && let Err(e) = file.flush()
        {
            set_error(&self.shared, &e);
        }
        if let Some(e) = self.shared.error.lock().ok().and_then(|e| e.clone()) {
            return Err(e);
        }
        Ok(CaptureSummary {
            written: self.shared.admitted.load(Ordering::Relaxed),
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

fn set_error(shared: &Shared, e: &io::Error) {
    if let Ok(mut slot) = shared.error.lock()
        && slot.is_none()
    {
        *slot = Some(format!("cannot write {}: {e}", shared.path.display()));
    }
}

/// One client thread's writer into the shared capture.
pub struct Recorder {
    shared: Arc<Shared>,
    buf: Vec<u8>,
    /// By socket key: (client address, server address), learnt once per socket.
    endpoints: Vec<Option<(SocketAddr, SocketAddr)>>,
    ip_id: u16,
}

/// Anything with the two addresses of a connected UDP socket.
pub trait Endpoints {
    /// The local address.
    fn local(&self) -> io::Result<SocketAddr>;
    /// The connected peer.
    fn peer(&self) -> io::Result<SocketAddr>;
}

impl Endpoints for mio::net::UdpSocket {
    fn local(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
    fn peer(&self) -> io::Result<SocketAddr> {
        self.peer_addr()
    }
}

impl Recorder {
    /// Records one datagram that went `way` on the connected socket with key
    /// `key` (the socket's addresses are looked up once per key, then cached:
    /// call [`Recorder::forget`] when a key gets a new socket). A socket whose
    /// addresses cannot be read (closed under us) is not recorded.
    pub fn record(&mut self, key: usize, socket: &impl Endpoints, way: Way, datagram: &[u8]) {
        let (client, server) = match self.endpoints.get(key).copied().flatten() {
            Some(e) => e,
            None => match (socket.local(), socket.peer()) {
                (Ok(local), Ok(peer)) => {
                    if self.endpoints.len() <= key {
                        self.endpoints.resize(key + 1, None);
                    }
                    self.endpoints[key] = Some((local, peer));
                    (local, peer)
                }
                _ => return,
            },
        };
        let (src, dst) = match way {
            Way::Sent => (client, server),
            Way::Received => (server, client),
        };
        self.write(src, dst, datagram);
    }

    /// The socket of `key` was replaced.
    pub fn forget(&mut self, key: usize) {
        if let Some(slot) = self.endpoints.get_mut(key) {
            *slot = None;
        }
    }

    /// Appends one record for a datagram from `src` to `dst`.
    pub fn write(&mut self, src: SocketAddr, dst: SocketAddr, datagram: &[u8]) {
        let ip_len = match (src.ip(), dst.ip()) {
            (IpAddr::V4(_), IpAddr::V4(_)) => 20,
            (IpAddr::V6(_), IpAddr::V6(_)) => 40,
            // A socket has one family; mixed pairs cannot happen.
            _ => return,
        };
        let udp_len = 8 + datagram.len();
        if udp_len > usize::from(u16::MAX) || ip_len + udp_len > SNAPLEN as usize {
            return;
        }
        let record_len = 16 + ip_len + udp_len;
        let shared = &self.shared;
        if shared.admitted.fetch_add(1, Ordering::Relaxed) >= shared.limit {
            shared.admitted.fetch_sub(1, Ordering::Relaxed);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        shared.bytes.fetch_add(record_len as u64, Ordering::Relaxed);

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let buf = &mut self.buf;
        buf.extend_from_slice(&(now.as_secs() as u32).to_le_bytes());
        buf.extend_from_slice(&now.subsec_micros().to_le_bytes());
        let captured = ((ip_len + udp_len) as u32).to_le_bytes();
        buf.extend_from_slice(&captured);
        buf.extend_from_slice(&captured);

        // Sum of the pseudo header (addresses, protocol, UDP length).
        let mut pseudo = u32::from(IPPROTO_UDP) + udp_len as u32;
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.ip_id = self.ip_id.wrapping_add(1);
                let start = buf.len();
                buf.extend_from_slice(&[0x45, 0]);
                buf.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
                buf.extend_from_slice(&self.ip_id.to_be_bytes());
                buf.extend_from_slice(&[0x40, 0, TTL, IPPROTO_UDP, 0, 0]); // DF, checksum 0
                buf.extend_from_slice(&s.octets());
                buf.extend_from_slice(&d.octets());
                let checksum = !fold(ones_sum(0, &buf[start..start + 20]));
                buf[start + 10..start + 12].copy_from_slice(&checksum.to_be_bytes());
                pseudo = ones_sum(pseudo, &buf[start + 12..start + 20]);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let start = buf.len();
                buf.extend_from_slice(&[0x60, 0, 0, 0]);
                buf.extend_from_slice(&(udp_len as u16).to_be_bytes());
                buf.extend_from_slice(&[IPPROTO_UDP, TTL]);
                buf.extend_from_slice(&s.octets());
                buf.extend_from_slice(&d.octets());
                pseudo = ones_sum(pseudo, &buf[start + 8..start + 40]);
            }
            _ => unreachable!("families checked above"),
        }
        let udp = buf.len();
        buf.extend_from_slice(&src.port().to_be_bytes());
        buf.extend_from_slice(&dst.port().to_be_bytes());
        buf.extend_from_slice(&(udp_len as u16).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(datagram);
        let checksum = udp_checksum(ones_sum(pseudo, &buf[udp..]));
        buf[udp + 6..udp + 8].copy_from_slice(&checksum.to_be_bytes());
        if buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// Hands the buffered records to the file.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Ok(mut file) = self.shared.file.lock()
            && let Some(out) = file.as_mut()
            && let Err(e) = out.write_all(&self.buf)
        {
            set_error(&self.shared, &e);
            *file = None;
        }
        self.buf.clear();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("loadgen-capture-{}-{name}", std::process::id()))
    }

    /// Ones' complement sum over a header including its checksum: all ones.
    fn verifies(sum: u32) -> bool {
        fold(sum) == 0xFFFF
    }

    #[test]
    fn records_have_valid_headers_and_checksums() {
        let path = temp("valid.pcap");
        let capture = Capture::create(&path, 10).unwrap();
        let mut r = capture.recorder();
        let c4: SocketAddr = "127.0.0.2:40000".parse().unwrap();
        let s4: SocketAddr = "127.0.0.1:20260".parse().unwrap();
        let c6: SocketAddr = "[::1]:40001".parse().unwrap();
        let s6: SocketAddr = "[::1]:20260".parse().unwrap();
        r.write(c4, s4, b"\x00\x15\x00\x01abc");
        r.write(s6, c6, b"odd");
        drop(r);
        let summary = capture.finish().unwrap();
        assert_eq!((summary.written, summary.dropped), (2, 0));
        let file = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.len() as u64, summary.bytes);
        assert_eq!(&file[..4], &0xA1B2_C3D4u32.to_le_bytes());
        assert_eq!(&file[20..24], &101u32.to_le_bytes());

        // IPv4 record.
        let rec = &file[24..];
        let len = u32::from_le_bytes(rec[8..12].try_into().unwrap()) as usize;
        assert_eq!(len, 20 + 8 + 7);
        let ip = &rec[16..16 + len];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, len);
        assert!(verifies(ones_sum(0, &ip[..20])));
        let udp = &ip[20..];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 40000);
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 15);
        let pseudo = ones_sum(u32::from(IPPROTO_UDP) + 15, &ip[12..20]);
        assert!(verifies(ones_sum(pseudo, udp)));
        assert_eq!(&udp[8..], b"\x00\x15\x00\x01abc");

        // IPv6 record.
        let rec = &rec[16 + len..];
        let len = u32::from_le_bytes(rec[8..12].try_into().unwrap()) as usize;
        assert_eq!(len, 40 + 8 + 3);
        let ip = &rec[16..16 + len];
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 11);
        let udp = &ip[40..];
        let pseudo = ones_sum(u32::from(IPPROTO_UDP) + 11, &ip[8..40]);
        assert!(verifies(ones_sum(pseudo, udp)));
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 40001);
    }

    #[test]
    fn the_limit_is_counted() {
        let path = temp("limit.pcap");
        let capture = Capture::create(&path, 3).unwrap();
        let mut a = capture.recorder();
        let mut b = capture.recorder();
        let (c, s) = ("10.0.0.2:1".parse().unwrap(), "10.0.0.1:2".parse().unwrap());
        for _ in 0..4 {
            a.write(c, s, &[1; 100]);
            b.write(s, c, &[2; 100]);
        }
        drop((a, b));
        let summary = capture.finish().unwrap();
        assert_eq!((summary.written, summary.dropped), (3, 5));
        let file = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.len(), 24 + 3 * (16 + 20 + 8 + 100));
    }

    #[test]
    fn endpoints_are_learnt_once_per_key() {
        struct Fake(SocketAddr, SocketAddr, std::cell::Cell<u32>);
        impl Endpoints for Fake {
            fn local(&self) -> io::Result<SocketAddr> {
                self.2.set(self.2.get() + 1);
                Ok(self.0)
            }
            fn peer(&self) -> io::Result<SocketAddr> {
                Ok(self.1)
            }
        }
        let path = temp("keys.pcap");
        let capture = Capture::create(&path, 100).unwrap();
        let mut r = capture.recorder();
        let sock = Fake(
            "10.0.0.2:5".parse().unwrap(),
            "10.0.0.1:6".parse().unwrap(),
            Default::default(),
        );
        r.record(3, &sock, Way::Sent, b"a");
        r.record(3, &sock, Way::Received, b"b");
        assert_eq!(sock.2.get(), 1);
        r.forget(3);
        r.record(3, &sock, Way::Sent, b"c");
        assert_eq!(sock.2.get(), 2);
        drop(r);
        assert_eq!(capture.finish().unwrap().written, 3);
        std::fs::remove_file(&path).unwrap();
    }
}
