//! Encryption passes cost no allocation per datagram: two multiplexers echo
//! messages in memory, and once warmed up a session with Xor, XorBuffer or EQ's
//! compression and XOR allocates per message no more than one without passes
//! (the receive arena's occasional chunk). Counted with a global allocator; one
//! test per binary, so no other test's allocations are counted.
#![allow(clippy::disallowed_methods)] // an arbitrary epoch for the virtual clock

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use soe_uring::{
    Channel, EncryptMethod, SessionParameters, SocketConfig, SocketEvent, SoeMultiplexer,
};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator and only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract is passed through unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Moves every datagram `from` has queued into `to`.
fn deliver(
    from: &mut SoeMultiplexer<SocketAddr>,
    from_addr: SocketAddr,
    to: &mut SoeMultiplexer<SocketAddr>,
    now: Instant,
) -> usize {
    let n = from.outgoing_len();
    for i in 0..n {
        let (_, datagram) = from.outgoing(i);
        to.process_incoming(from_addr, datagram, now);
    }
    from.consume_outgoing(n);
    n
}

/// Allocations per echoed message in steady state, for sessions in `params`.
fn allocations_per_message(params: SessionParameters) -> f64 {
    let client_addr: SocketAddr = "10.0.0.2:5000".parse().unwrap();
    let server_addr: SocketAddr = "10.0.0.1:6000".parse().unwrap();
    let config = |seed| SocketConfig {
        rng_seed: Some(seed),
        default_session_params: params.clone(),
        ..SocketConfig::default()
    };
    let mut server = SoeMultiplexer::new(config(1));
    let mut client = SoeMultiplexer::new(config(2));
    let mut now = Instant::now();
    client.connect(server_addr, now).unwrap();
    let message: Vec<u8> = b"a message that compresses a little: ".repeat(4);
    let round = |server: &mut SoeMultiplexer<SocketAddr>,
                 client: &mut SoeMultiplexer<SocketAddr>,
                 now: Instant,
                 send: bool| {
        if send {
            let _ = client.enqueue_data_on(&server_addr, &message, Channel::Reliable(0));
        }
        client.run_tick(now);
        deliver(client, client_addr, server, now);
        server.run_tick(now);
        for event in server.drain_events() {
            if let SocketEvent::DataReceived { remote, data, .. } = event {
                let _ = (remote, data);
            }
        }
        // The server echoes on its own: send the same bytes back.
        if send {
            let _ = server.enqueue_data_on(&client_addr, &message, Channel::Reliable(0));
        }
        server.run_tick(now);
        deliver(server, server_addr, client, now);
        client.run_tick(now);
        client
            .drain_events()
            .filter(|e| matches!(e, SocketEvent::DataReceived { .. }))
            .count() as u64
    };
    // Handshake and warm-up: buffers reach their steady size.
    for _ in 0..2_000 {
        now += Duration::from_millis(1);
        round(&mut server, &mut client, now, true);
    }
    let before = ALLOCS.load(Relaxed);
    let mut messages = 0;
    for _ in 0..5_000 {
        now += Duration::from_millis(1);
        messages += round(&mut server, &mut client, now, true);
    }
    let allocs = ALLOCS.load(Relaxed) - before;
    assert!(messages >= 4_900, "{messages} echoed");
    allocs as f64 / messages as f64
}

#[test]
fn passes_do_not_allocate_per_datagram() {
    let udp = SessionParameters::udp_library();
    let plain = allocations_per_message(udp.clone());
    let cases = [
        (
            "xor",
            SessionParameters {
                encryption_passes: [EncryptMethod::Xor, EncryptMethod::None],
                ..udp.clone()
            },
        ),
        (
            "xor-buffer",
            SessionParameters {
                encryption_passes: [EncryptMethod::XorBuffer, EncryptMethod::Xor],
                ..udp.clone()
            },
        ),
        (
            "eq",
            SessionParameters {
                encryption_passes: [EncryptMethod::Compression, EncryptMethod::Xor],
                ..SessionParameters::eq()
            },
        ),
    ];
    assert!(
        plain < 0.5,
        "{plain} allocations per message without passes"
    );
    for (name, params) in cases {
        let with = allocations_per_message(params);
        assert!(
            with <= plain + 0.05,
            "{name}: {with} allocations per message, {plain} without passes"
        );
    }
}
