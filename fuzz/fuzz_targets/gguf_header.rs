//! The `gguf_header` cargo-fuzz target: see [`genarm_fuzz::targets::gguf_header`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| genarm_fuzz::targets::gguf_header::gguf_header(data));
