//! The `chat_template` cargo-fuzz target: see [`genarm_fuzz::targets::chat_template`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        genarm_text::run_sandbox_if_requested();
    },
    |data: &[u8]| genarm_fuzz::targets::chat_template::chat_template(data)
);
