//! The thread-per-core server over real loopback UDP: echo with 1, 2 and 4 shards,
//! kernel steering and its forwarding fallback, handles from many threads,
//! server-initiated connects, the reference client, and shutdown.
#![cfg(target_os = "linux")]
// Socket drivers read the clock, like any runtime adapter.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use soe_uring::*;

const PROTOCOL: &str = "RuntimeTest";
const LIMIT: Duration = Duration::from_secs(30);

fn config() -> SocketConfig {
    let mut c = SocketConfig::default();
    c.default_session_params.application_protocol = PROTOCOL.into();
    c
}

/// Client sessions, each on its own socket, driven by a multiplexer keyed by
/// socket index.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key(usize);

impl RemoteAddr for Key {
    fn same_host(&self, other: &Self) -> bool {
        self == other
    }
}

struct Clients {
    sockets: Vec<UdpSocket>,
    mux: SoeMultiplexer<Key>,
    server: SocketAddr,
    buf: Vec<u8>,
}

impl Clients {
    fn new(count: usize, server: SocketAddr) -> Self {
        let sockets: Vec<UdpSocket> = (0..count)
            .map(|i| {
                // Spread over several loopback addresses to exercise steering.
                let ip = [127, 0, 0, 1 + (i % 8) as u8];
                let s = UdpSocket::bind(SocketAddr::from((ip, 0))).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        let mut mux = SoeMultiplexer::new(config());
        for i in 0..count {
            mux.connect(Key(i), Instant::now()).unwrap();
        }
        Self {
            sockets,
            mux,
            server,
            buf: vec![0; 65536],
        }
    }

    fn addr(&self, key: Key) -> SocketAddr {
        self.sockets[key.0].local_addr().unwrap()
    }

    fn drive(&mut self) {
        for (i, s) in self.sockets.iter().enumerate() {
            while let Ok((n, _)) = s.recv_from(&mut self.buf) {
                self.mux
                    .process_incoming(Key(i), &self.buf[..n], Instant::now());
            }
        }
        self.mux.run_tick(Instant::now());
        let n = self.mux.outgoing_len();
        for i in 0..n {
            let (key, bytes) = self.mux.outgoing(i);
            let _ = self.sockets[key.0].send_to(bytes, self.server);
        }
        self.mux.consume_outgoing(n);
    }

    /// Drives until every session is open.
    fn open_all(&mut self) {
        let start = Instant::now();
        let mut open = 0;
        while open < self.sockets.len() {
            assert!(start.elapsed() < LIMIT, "only {open} sessions opened");
            self.drive();
            while let Some(e) = self.mux.poll_event() {
                match e {
                    SocketEvent::SessionOpened { .. } => open += 1,
                    SocketEvent::SessionClosed { remote, reason } => {
                        panic!("{remote:?}: {reason:?}")
                    }
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Every session sends `per_session` messages on channels 0–3 and checks the
    /// echoes arrive intact and in order per channel.
    fn echo(&mut self, per_session: u32) {
        let sessions = self.sockets.len();
        let mut sent = vec![0u32; sessions];
        let mut next: HashMap<(usize, usize), u32> = HashMap::new();
        let mut done = 0u64;
        let total = u64::from(per_session) * sessions as u64;
        let start = Instant::now();
        while done < total {
            assert!(start.elapsed() < LIMIT, "echoed {done} of {total}");
            for (i, s) in sent.iter_mut().enumerate() {
                while *s < per_session && *s < (done as u32 / sessions as u32) + 64 {
                    let ch = (*s % 4) as usize;
                    let msg = message(i, *s);
                    match self
                        .mux
                        .enqueue_data_on(&Key(i), &msg, Channel::Reliable(ch))
                    {
                        Ok(()) => *s += 1,
                        Err(EnqueueError::QueueFull) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            self.drive();
            while let Some(e) = self.mux.poll_event() {
                match e {
                    SocketEvent::DataReceived {
                        remote: Key(i),
                        data,
                        channel: Channel::Reliable(ch),
                    } => {
                        let n = next.entry((i, ch)).or_insert(ch as u32);
                        assert_eq!(
                            data.as_ref(),
                            message(i, *n).as_slice(),
                            "session {i} channel {ch}"
                        );
                        *n += 4;
                        done += 1;
                    }
                    SocketEvent::SessionClosed { remote, reason } => {
                        panic!("{remote:?}: {reason:?}")
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

fn message(session: usize, index: u32) -> Vec<u8> {
    let len = 1 + (index as usize * 37 + session * 11) % 1500;
    (0..len)
        .map(|b| (b as u32 ^ index ^ session as u32) as u8)
        .collect()
}

/// An echo handler that records which shard saw which remote.
fn echo_server(shards: usize, steering: bool) -> (SoeServer, Arc<Mutex<Vec<(SocketAddr, usize)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let server = SoeServer::builder("127.0.0.1:0".parse().unwrap(), config())
        .shards(shards)
        .kernel_steering(steering)
        .handler(move |info: ShardInfo| {
            let record = record.clone();
            let shard = info.index;
            move |event: SocketEvent<SocketAddr>, ctx: &mut ShardContext<'_>| match event {
                SocketEvent::SessionOpened { remote } => {
                    record.lock().unwrap().push((remote, shard))
                }
                SocketEvent::DataReceived {
                    remote,
                    data,
                    channel,
                } => {
                    ctx.enqueue_data_on(&remote, &data, channel).unwrap();
                }
                SocketEvent::SessionClosed { .. } => {}
            }
        })
        .start()
        .expect("server starts");
    (server, seen)
}

fn echo_with(shards: usize, steering: bool, clients: usize, messages: u32) -> ServerStats {
    let (server, seen) = echo_server(shards, steering);
    assert_eq!(server.kernel_steering(), steering && shards > 1);
    let mut c = Clients::new(clients, server.local_addr());
    c.open_all();
    c.echo(messages);
    // Every session lives on the shard that owns its address.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), clients);
    for (remote, shard) in &seen {
        assert_eq!(*shard, shard_of(remote, shards), "{remote}");
    }
    let stats = server.stats();
    assert_eq!(stats.shards.len(), shards);
    server.shutdown().unwrap();
    stats
}

#[test]
fn echo_one_shard() {
    let stats = echo_with(1, true, 16, 200);
    assert_eq!(stats.total.mux.sessions_live, 16);
}

#[test]
fn echo_two_shards() {
    echo_with(2, true, 32, 200);
}

#[test]
fn echo_four_shards_more_than_cores() {
    let stats = echo_with(4, true, 64, 100);
    // With the steering program, nothing needs forwarding.
    assert_eq!(stats.total.forwarded_out, 0, "{:?}", stats.total);
    assert!(stats.shards.iter().all(|s| s.mux.sessions_live > 0));
}

#[test]
fn forwarding_without_kernel_steering() {
    let stats = echo_with(4, false, 64, 50);
    // Counted on two shards at slightly different moments: in ≤ out.
    assert!(stats.total.forwarded_in > 0);
    assert!(stats.total.forwarded_in <= stats.total.forwarded_out);
    assert_eq!(stats.total.forward_drops, 0);
}
