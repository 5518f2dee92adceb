//! What a peer that never acknowledges can make a server hold, measured with a
//! counting allocator: the heap grows by no more than the session's documented cap
//! (`max_pending_bytes`, which counts buffer capacity and per-message overhead)
//! plus one send window of packets, however long the application keeps sending.
//! One test per binary, so no other test's allocations are counted.
#![allow(clippy::disallowed_methods)] // an arbitrary epoch for the virtual clock

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use soe_uring::{EnqueueError, SocketConfig, SocketEvent, SoeMultiplexer};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed through unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn config(seed: u64) -> SocketConfig {
    let mut c = SocketConfig {
        rng_seed: Some(seed),
        ..SocketConfig::default()
    };
    c.default_session_params.application_protocol = "Memory".into();
    c
}

#[test]
fn a_peer_that_never_acknowledges_holds_at_most_the_session_cap() {
    const CAP: usize = 1 << 20;
    let client_addr: SocketAddr = "10.0.0.2:5000".parse().unwrap();
    let server_addr: SocketAddr = "10.0.0.1:20260".parse().unwrap();
    let mut server_config = config(1);
    server_config.default_session_params.max_pending_bytes = CAP;
    let mut server = SoeMultiplexer::new(server_config);
    let mut client = SoeMultiplexer::new(config(2));
    let mut now = Instant::now();
    client.connect(server_addr, now).unwrap();
    // Handshake, and one message so the server opens the session.
    for step in 0..20 {
        now += Duration::from_millis(1);
        if step == 5 {
            client.enqueue_data(&server_addr, b"hello").unwrap();
        }
        client.run_tick(now);
        for (_, d) in client.outgoing_iter() {
            server.process_incoming(client_addr, d, now);
        }
        client.consume_outgoing(usize::MAX);
        server.run_tick(now);
        for (_, d) in server.outgoing_iter() {
            client.process_incoming(server_addr, d, now);
        }
        server.consume_outgoing(usize::MAX);
    }
    assert!(
        server
            .take_events()
            .iter()
            .any(|e| matches!(e, SocketEvent::SessionOpened { .. }))
    );

    // From now on the client is gone: nothing it would send reaches the server.
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let message = vec![0x5A; 1000];
    let mut accepted = 0u64;
    let mut refused = 0u64;
    let mut peak = before;
    // 20 s: within the inactivity timeout, so only the cap can stop it.
    for _ in 0..2000 {
        now += Duration::from_millis(10);
        for _ in 0..20 {
            match server.enqueue_data(&client_addr, &message) {
                Ok(()) => accepted += 1,
                Err(EnqueueError::QueueFull) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        server.run_tick(now);
        server.consume_outgoing(usize::MAX);
        peak = peak.max(LIVE_BYTES.load(Ordering::Relaxed));
    }
    let grown = (peak - before) as usize;
    let window = 196 * 512 + (16 << 10);
    eprintln!("accepted {accepted}, refused {refused}; heap grew by {grown} bytes (cap {CAP})");
    assert!(refused > 0, "the cap was reached");
    assert!(
        grown <= CAP + window,
        "a never-acknowledging peer made the server hold {grown} bytes"
    );
}
