//! Echo throughput: our multiplexers against `soe-protocol` 2.3.0, in memory.
//!
//! For each configuration `echo/{sessions}x{window}` both implementations run the
//! same work (see `support/mod.rs`): one client and one server multiplexer, N
//! sessions each keeping W 64-byte reliable messages in flight, the server echoing
//! every message. One criterion iteration is N·W echoed messages (whole exchange
//! rounds, so the reported throughput is in echoed messages per second). The pair is
//! built, connected and warmed up (with delivery checks) before timing starts and
//! stays alive across iterations.
//!
//! Run: `cargo bench --bench echo -- --warm-up-time 1 --measurement-time 3`.

mod support;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use support::{EchoPair, Ours, Reference};

/// (sessions, window) configurations. `2000x1` is the game server's shape (many
/// sessions, one message each at a time): every session's state is cold in the
/// cache when its datagram comes, which `1x1` never shows.
const CONFIGS: [(usize, usize); 5] = [(1, 1), (1, 32), (64, 1), (64, 32), (2000, 1)];
/// Checked warm-up rounds before timing.
const WARM_UP_ROUNDS: u64 = 200;

fn bench_pair<P: EchoPair>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    sessions: usize,
    window: usize,
) {
    // Built on first use, so a filtered-out benchmark costs nothing, and kept alive
    // across criterion's calls: connect, handshake and checked warm-up are untimed.
    let mut pair: Option<P> = None;
    let batch = (sessions * window) as u64;
    group.bench_function(BenchmarkId::from_parameter(P::NAME), |b| {
        let pair = pair.get_or_insert_with(|| {
            let mut pair = P::new(sessions, window);
            pair.warm_up(WARM_UP_ROUNDS);
            pair
        });
        b.iter(|| pair.run_messages(batch))
    });
    // Every timed message was checked on arrival (size, session, in-order sequence);
    // a final checked stretch proves the pair still runs at full rate.
    if let Some(pair) = pair.as_mut() {
        pair.warm_up(10);
    }
}

fn echo(c: &mut Criterion) {
    for (sessions, window) in CONFIGS {
        let mut group = c.benchmark_group(format!("echo/{sessions}x{window}"));
        group.throughput(Throughput::Elements((sessions * window) as u64));
        bench_pair::<Ours>(&mut group, sessions, window);
        bench_pair::<Reference>(&mut group, sessions, window);
        group.finish();
    }
}

criterion_group!(benches, echo);
criterion_main!(benches);
