//! The `step_reply` cargo-fuzz target: see [`genarm_fuzz::targets::step_reply`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| genarm_fuzz::targets::step_reply::step_reply(data));
