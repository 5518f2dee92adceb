//! Heap allocations per echoed message in steady state, ours against `soe-protocol`
//! 2.3.0, on the in-memory echo of `support/mod.rs`.
//!
//! A counting global allocator wraps the system allocator. Each configuration is
//! built, connected and warmed up (with delivery checks), then the counters are
//! read around a stretch of at least `MESSAGES` echoed messages. Counted as an
//! allocation: every `alloc`, `alloc_zeroed` and `realloc` call (a growing `realloc`
//! is as costly as a fresh allocation, so it counts too); frees are reported apart.
//! The driver itself allocates nothing per message (messages live on the stack and
//! its bookkeeping vectors are sized at start-up), so what is counted is the
//! implementation's own work.
//!
//! Run: `cargo bench --bench allocations` (full: 200 000 messages per row), or
//! `cargo bench --bench allocations -- --quick` (20 000 messages per row; also what
//! `cargo test --benches` runs) as a regression check: the process exits with status
//! 1 when any of our rows reaches one allocation per echoed message.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use support::{EchoPair, Ours, Reference};

/// Checked warm-up rounds before measuring.
const WARM_UP_ROUNDS: u64 = 300;

/// The system allocator, counting calls and bytes.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged,
// so `System`'s guarantees (a valid block for `layout`, or null on failure) carry
// over; the counters are plain relaxed atomics that neither allocate nor touch the
// memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s
        // contract (non-zero size).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        FREES.fetch_add(1, Relaxed);
        // SAFETY: the caller passes a block this allocator (hence `System`) handed
        // out, with the layout it was allocated with.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size.saturating_sub(layout.size()) as u64, Relaxed);
        // SAFETY: the caller passes a block `System` handed out, its layout, and a
        // valid non-zero new size, as `GlobalAlloc::realloc` requires.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocator counters at one instant.
#[derive(Clone, Copy)]
struct Snapshot {
    allocs: u64,
    reallocs: u64,
    frees: u64,
    bytes: u64,
}

impl Snapshot {
    fn take() -> Self {
        Self {
            allocs: ALLOCS.load(Relaxed),
            reallocs: REALLOCS.load(Relaxed),
            frees: FREES.load(Relaxed),
            bytes: BYTES.load(Relaxed),
        }
    }
}

/// One measured row.
struct Row {
    name: &'static str,
    sessions: usize,
    window: usize,
    messages: u64,
    allocs: u64,
    reallocs: u64,
    frees: u64,
    bytes: u64,
}

impl Row {
    /// Allocations (including reallocs) per echoed message.
    fn per_message(&self) -> f64 {
        (self.allocs + self.reallocs) as f64 / self.messages as f64
    }
}

fn measure<P: EchoPair>(sessions: usize, window: usize, messages: u64) -> Row {
    let mut pair = P::new(sessions, window);
    // Warm-up: checked rounds, then enough traffic for every buffer to reach its
    // steady-state capacity (arena chunks recycled, queues grown). 300 rounds send
    // at least 300 packets per session and direction, so every slot of the send and
    // receive windows (196 and 256 packets) has been used once: buffers a window
    // slot allocates on first use are a start-up cost, not a per-message one.
    pair.warm_up(WARM_UP_ROUNDS);
    pair.run_messages(messages / 4);
    let before = Snapshot::take();
    let echoed = pair.run_messages(messages);
    let after = Snapshot::take();
    pair.warm_up(5);
    Row {
        name: P::NAME,
        sessions,
        window,
        messages: echoed,
        allocs: after.allocs - before.allocs,
        reallocs: after.reallocs - before.reallocs,
        frees: after.frees - before.frees,
        bytes: after.bytes - before.bytes,
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and then the
    // quick check runs. Other harness flags are ignored.
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    let messages: u64 = if quick { 20_000 } else { 200_000 };
    let configs = [(64, 32), (1, 1), (64, 1), (1, 32)];

    let mut rows = Vec::new();
    for (sessions, window) in configs {
        rows.push(measure::<Ours>(sessions, window, messages));
        rows.push(measure::<Reference>(sessions, window, messages));
    }

    println!(
        "{:<13} {:>8} {:>9} {:>10} {:>10} {:>9} {:>10} {:>12} {:>11}",
        "impl",
        "sessions",
        "window",
        "messages",
        "allocs",
        "reallocs",
        "frees",
        "alloc/msg",
        "bytes/msg"
    );
    for r in &rows {
        println!(
            "{:<13} {:>8} {:>9} {:>10} {:>10} {:>9} {:>10} {:>12.4} {:>11.1}",
            r.name,
            r.sessions,
            r.window,
            r.messages,
            r.allocs,
            r.reallocs,
            r.frees,
            r.per_message(),
            r.bytes as f64 / r.messages as f64
        );
    }

    let failing: Vec<&Row> = rows
        .iter()
        .filter(|r| r.name == Ours::NAME && r.per_message() >= 1.0)
        .collect();
    if failing.is_empty() {
        println!("ok: soe-uring stays below 1 allocation per echoed message");
        ExitCode::SUCCESS
    } else {
        for r in failing {
            println!(
                "FAIL: soe-uring {}x{} makes {:.3} allocations per echoed message (goal < 1)",
                r.sessions,
                r.window,
                r.per_message()
            );
        }
        ExitCode::FAILURE
    }
}
