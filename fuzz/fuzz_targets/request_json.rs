//! The `request_json` cargo-fuzz target: see [`genarm_fuzz::targets::request_json`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| genarm_fuzz::targets::request_json::request_json(data));
