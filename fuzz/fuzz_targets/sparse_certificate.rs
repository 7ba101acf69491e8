//! The `sparse_certificate` cargo-fuzz target: see [`genarm_fuzz::targets::sparse_certificate`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| genarm_fuzz::targets::sparse_certificate::sparse_certificate(data));
