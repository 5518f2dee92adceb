#![no_main]
//! `soe_testkit::fuzz::frame`; see its docs for what the target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| soe_testkit::fuzz::frame(data));
