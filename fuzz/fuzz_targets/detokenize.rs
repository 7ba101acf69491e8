//! The `detokenize` cargo-fuzz target: see [`genarm_fuzz::targets::detokenize`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| genarm_fuzz::targets::detokenize::detokenize(data));
