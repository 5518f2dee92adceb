//! A bounded, deterministic run of every fuzz target body on stable Rust (what CI
//! runs; `fuzz/` holds the coverage-guided setup).
//!
//! Each target runs on its seeds (`fuzz/seeds/<target>/`), then on pseudo-random
//! inputs and mutations of the seeds (bit flips, byte writes, truncations, insertions,
//! splices) from a fixed xorshift seed, so a failure replays exactly. A failing input
//! is printed in hex before the panic is passed on.
//!
//! `FUZZ_SMOKE_ITERS` (inputs per target, default below) and `FUZZ_SMOKE_SEED`
//! override the budget and the seed for longer local runs; `FUZZ_SMOKE_VERBOSE=1`
//! prints every input before running it (for failures that abort the process);
//! `FUZZ_SMOKE_REPLAY=<hex>` runs just that input, e.g.
//! `FUZZ_SMOKE_REPLAY=0880000401 cargo test --test fuzz_smoke -- --exact session`.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Once;

use soe_testkit::fuzz as fuzzing;

/// Inputs that once found bugs, run first on every smoke run (regressions).
const REGRESSIONS: &[(&str, &str)] = &[
    // `Framing::unframe` sliced past the end of a contextual datagram shorter than
    // an op code once its CRC was removed (`00` + its 1-byte CRC), and let `00 00`
    // + CRC with one byte left through as an empty message. Any client knows the
    // seed, so any client could crash a server.
    ("frame", "01000000530006"),
    ("frame", "040000008b00"),
    ("session", "011400000100"),
    ("client_session", "00000100000053000100"),
    // `Decompressor::inflate` appended `max + 1` bytes when reporting `TooLarge`.
    (
        "inflate",
        "78daedc1010d000000c2a0f74f6d0f0714000000706f10010001",
    ),
    // Compression with `compress_min_len: 0` sliced past the end on an empty body
    // (a heartbeat), and the assembler's `Drop` panicked again while unwinding.
    ("session", "0880000400"),
    ("client_session", "00800800000000"),
    // With `coalesce_unreliable`, an unreliable message alone in a flush was sent as
    // if it were an internal packet (a 1-byte one panicked; with compression the
    // flag landed inside the payload).
    ("session", "0008000c020441"),
    ("client_session", "0008000000000000000c020441"),
    ("session", "0808000c0c0468656c6c6f20776f726c64"),
];

thread_local! {
    /// `(file, message)` of the last panic on this thread.
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Records panics instead of printing them; `run_one` prints those it does not
/// tolerate.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        panic::set_hook(Box::new(|info| {
            let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                String::from("(non-string panic)")
            };
            let location = info.location().map_or_else(String::new, |l| {
                format!("{}:{}:{}", l.file(), l.line(), l.column())
            });
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((location, message)));
        }));
    });
}

/// Tiny xorshift64* generator: deterministic, no dependencies.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("seed entry").path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("seed file"))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// One mutation of `input`, possibly splicing in part of `other`.
fn mutate(rng: &mut XorShift, input: &mut Vec<u8>, other: &[u8], max_len: usize) {
    match rng.below(8) {
        0 | 1 => {
            if !input.is_empty() {
                let at = rng.below(input.len());
                input[at] ^= 1 << rng.below(8);
            }
        }
        2 => {
            if !input.is_empty() {
                let at = rng.below(input.len());
                input[at] = match rng.below(4) {
                    0 => 0,
                    1 => 0xFF,
                    2 => rng.byte() % 0x20,
                    _ => rng.byte(),
                };
            }
        }
        3 => {
            let keep = rng.below(input.len() + 1);
            input.truncate(keep);
        }
        4 => {
            let at = rng.below(input.len() + 1);
            let n = 1 + rng.below(8);
            let extra = rng.bytes(n);
            input.splice(at..at, extra);
        }
        5 => {
            if !input.is_empty() {
                let start = rng.below(input.len());
                let end = (start + 1 + rng.below(8)).min(input.len());
                input.drain(start..end);
            }
        }
        6 => {
            // Splice: our prefix, then a piece of the other input.
            let at = rng.below(input.len() + 1);
            let from = rng.below(other.len() + 1);
            let to = from + rng.below(other.len() - from + 1);
            input.truncate(at);
            input.extend_from_slice(&other[from..to]);
        }
        _ => {
            // Duplicate a slice in place (repeated chunks, repeated sub-packets).
            if !input.is_empty() {
                let start = rng.below(input.len());
                let end = (start + 1 + rng.below(16)).min(input.len());
                let piece = input[start..end].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, piece);
            }
        }
    }
    input.truncate(max_len);
}

/// Runs `target` on `input`; on a panic prints the input and passes the panic on.
fn run_one(name: &str, target: fn(&[u8]), input: &[u8]) {
    if std::env::var_os("FUZZ_SMOKE_VERBOSE").is_some() {
        // A panic while unwinding aborts the process before it can print the input.
        eprintln!("{name}: {}", hex(input));
    }
    let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| target(input))) else {
        return;
    };
    let (location, message) = LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .unwrap_or_default();
    eprintln!("{name}: panicked at {location}: {message}");
    eprintln!(
        "{name}: failing input ({} bytes): {}",
        input.len(),
        hex(input)
    );
    panic::resume_unwind(panic);
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `target` on its seeds and on `iters` generated inputs of at most `max_len`.
fn smoke(name: &str, target: fn(&[u8]), iters: u64, max_len: usize) {
    if let Ok(text) = std::env::var("FUZZ_SMOKE_REPLAY") {
        // Only this input, with the default panic output (and backtrace).
        target(&unhex(text.trim()));
        return;
    }
    install_panic_hook();
    for (_, reproducer) in REGRESSIONS.iter().filter(|(t, _)| *t == name) {
        run_one(name, target, &unhex(reproducer));
    }
    let seeds = seeds(name);
    for seed in &seeds {
        run_one(name, target, seed);
    }
    let iters = env_or("FUZZ_SMOKE_ITERS", iters);
    let mut rng = XorShift(env_or("FUZZ_SMOKE_SEED", 0x50E_F022) | 1);
    // Mix in the target's name, so targets do not share one input sequence.
    for b in name.bytes() {
        rng.0 = (rng.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01B3) | 1;
    }
    for i in 0..iters {
        let input = if i % 4 == 0 {
            let n = rng.below(max_len + 1);
            rng.bytes(n)
        } else {
            let mut input = seeds[rng.below(seeds.len())].clone();
            let other = &seeds[rng.below(seeds.len())];
            for _ in 0..1 + rng.below(6) {
                mutate(&mut rng, &mut input, other, max_len);
            }
            input
        };
        run_one(name, target, &input);
    }
}

#[test]
fn packet() {
    smoke("packet", fuzzing::packet, 200_000, 600);
}

#[test]
fn frame() {
    smoke("frame", fuzzing::frame, 200_000, 300);
}

#[test]
fn inflate() {
    smoke("inflate", fuzzing::inflate, 20_000, 600);
}

#[test]
fn session() {
    smoke("session", fuzzing::session, 40_000, 1_024);
}

#[test]
fn client_session() {
    smoke("client_session", fuzzing::client_session, 40_000, 1_024);
}
