//! The SOE reliable-UDP protocol (Sony Online Entertainment / Daybreak "UdpLibrary"):
//! a sans-IO core, a thread-per-core server, and a Tokio adapter.
//!
//! # Layers
//! Dependencies flow one way; only the runtimes touch sockets, threads or the clock.
//!
//! * [`protocol`] — the wire: op codes, typed packet views and emitters, seeded
//!   CRC-32, zlib, RC4, variable-length integers, framing. Parsers never panic.
//! * `session` — [`SoeSession`], one peer: handshake (v3 and v2), four reliable
//!   channels (windows, fragmentation, acks, adaptive retransmission), unreliable and
//!   ordered channels, heartbeats, timeouts, and coalescing on send.
//! * `mux` — [`SoeMultiplexer`], many sessions over one socket: admission, caps,
//!   a timer heap, a reusable outgoing queue, events.
//! * `driver` — the loop turn both runtimes wrap: commands, parked messages,
//!   event back-pressure, overload, per-turn bounds ([`DriverStats`]).
//! * `runtime` (Linux, feature `runtime`, on by default) — [`SoeServer`]: one pinned shard thread per core, each
//!   with its own `SO_REUSEPORT` socket and multiplexer; [`SoeHandle`] reaches any
//!   shard from any thread.
//! * `tokio_rt` (feature `tokio`) — `TokioSoeServer`/`TokioSoeClient` with the API
//!   of `soe-protocol` 2.3.0.
//! * `sim` (feature `sim`) — a virtual clock and a seeded lossy link for
//!   deterministic tests.
//!
//! # Driving the core
//! The multiplexer never reads a clock: every call takes `now`. Per loop turn, feed
//! datagrams with [`SoeMultiplexer::process_incoming`], apply commands
//! ([`SoeMultiplexer::enqueue_data_on`], …), call [`SoeMultiplexer::run_tick`] once
//! (due timers, then one coalesced flush), send [`SoeMultiplexer::outgoing_iter`],
//! and handle [`SoeMultiplexer::poll_event`]; then sleep until
//! [`SoeMultiplexer::next_deadline`] or the next datagram.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use soe_uring::{Channel, SocketConfig, SocketEvent, SoeMultiplexer};
//!
//! # #[allow(clippy::disallowed_methods)]
//! let t0 = Instant::now();
//! let mut client = SoeMultiplexer::new(SocketConfig::default());
//! let mut server = SoeMultiplexer::new(SocketConfig::default());
//! let (c, s): (std::net::SocketAddr, std::net::SocketAddr) =
//!     ("10.0.0.2:5000".parse().unwrap(), "10.0.0.1:20260".parse().unwrap());
//! client.connect(s, t0).unwrap();
//! let mut now = t0;
//! let mut echoed = None;
//! for _ in 0..10 {
//!     now += Duration::from_millis(1);
//!     client.run_tick(now);
//!     for (_, d) in client.outgoing_iter() { server.process_incoming(c, d, now); }
//!     client.consume_outgoing(usize::MAX);
//!     while let Some(e) = server.poll_event() {
//!         if let SocketEvent::DataReceived { remote, data, channel } = e {
//!             server.enqueue_data_on(&remote, &data, channel).unwrap(); // echo
//!         }
//!     }
//!     server.run_tick(now);
//!     for (_, d) in server.outgoing_iter() { client.process_incoming(s, d, now); }
//!     server.consume_outgoing(usize::MAX);
//!     while let Some(e) = client.poll_event() {
//!         match e {
//!             SocketEvent::SessionOpened { .. } => {
//!                 client.enqueue_data_on(&s, b"hello", Channel::Reliable(0)).unwrap()
//!             }
//!             SocketEvent::DataReceived { data, .. } => echoed = Some(data),
//!             _ => {}
//!         }
//!     }
//! }
//! assert_eq!(echoed.as_deref(), Some(&b"hello"[..]));
//! ```
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(all(target_os = "linux", feature = "runtime"), feature = "tokio"))]
// Some of the driver serves the thread-per-core runtime only.
#[cfg_attr(not(all(target_os = "linux", feature = "runtime")), allow(dead_code))]
mod driver;
mod mux;
pub mod protocol;
#[cfg(all(target_os = "linux", feature = "runtime"))]
mod runtime;
mod send_error;
mod session;
#[cfg(any(test, feature = "sim"))]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
#[cfg(any(all(target_os = "linux", feature = "runtime"), feature = "tokio"))]
mod socket;
#[cfg(all(target_os = "linux", any(feature = "runtime", feature = "tokio")))]
mod sys;
#[cfg(test)]
mod test_support;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio_rt;

#[cfg(any(all(target_os = "linux", feature = "runtime"), feature = "tokio"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "runtime", feature = "tokio"))))]
pub use driver::DriverStats;
pub use mux::{
    ConnectError, MuxStats, RemoteAddr, SessionTransfer, SocketConfig, SocketEvent, SoeMultiplexer,
    seed_lane,
};
pub use protocol::{
    DecryptError, DisconnectReason, EncryptMethod, EncryptionPass, OpCode, PassCodes, PassContext,
    Rc4KeyState,
};
#[cfg(all(target_os = "linux", feature = "runtime"))]
#[cfg_attr(docsrs, doc(cfg(all(target_os = "linux", feature = "runtime"))))]
pub use runtime::{
    DrainReport, EventStream, ServerError, ServerStats, ShardContext, ShardHandler, ShardHealth,
    ShardInfo, ShardState, ShardStats, SoeHandle, SoeServer, SoeServerBuilder, shard_of,
};
pub use send_error::SendError;
pub use session::{
    ApplicationParameters, Channel, EnqueueError, MultiLength, NetStatus, SessionEvent, SessionIo,
    SessionMode, SessionParameters, SessionSnapshot, SessionState, SessionStats, SoeSession,
    ZeroEscape,
};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use tokio_rt::{ClientEvent, SoeClientHandle, TokioSoeClient, TokioSoeServer};

/// The README's Rust examples, compiled (and run where not `no_run`) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;

/// Handles are shared across threads and tasks: a change that made one of them
/// `!Send` or `!Sync` must fail to compile here, not in a user's code.
#[allow(dead_code)]
const HANDLES_ARE_SEND_AND_SYNC: () = {
    const fn send_sync<T: Send + Sync>() {}
    #[cfg(all(target_os = "linux", feature = "runtime"))]
    {
        send_sync::<SoeHandle>();
        send_sync::<SoeServer>();
        send_sync::<EventStream>();
        send_sync::<ServerError>();
    }
    #[cfg(feature = "tokio")]
    {
        send_sync::<tokio_rt::SoeHandle>();
        send_sync::<SoeClientHandle>();
    }
    send_sync::<SendError<bytes::Bytes>>();
    send_sync::<ConnectError>();
    send_sync::<EnqueueError>();
};
