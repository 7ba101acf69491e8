//! The `safetensors_dir` cargo-fuzz target: see [`genarm_fuzz::targets::safetensors_dir`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| genarm_fuzz::targets::safetensors_dir::safetensors_dir(data));
