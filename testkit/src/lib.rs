//! Test support for soe-uring, kept out of the library: the bodies of the fuzz
//! targets ([`fuzz`]), which `fuzz/fuzz_targets/` and the stable-Rust smoke test
//! (`testkit/tests/fuzz_smoke.rs`) both run, and the scripted peer ([`peer`]) that the
//! fuzz harness, the hostile-input tests and hand-written conversations share.
//!
//! Nothing here is part of soe-uring's API; the crate is never published.

pub mod fuzz;
pub mod peer;
