//! Deterministic tiny random Llama-architecture model directories for genarm's tests and benchmarks.
//!
//! A fixture is a HF model directory (`config.json`, f32 `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json` with a ChatML template, `generation_config.json`) whose bytes depend only
//! on its [`FixtureSpec`]. The three [`committed_specs`] are checked in under `fixtures/` (find them
//! with [`fixture_dir`]; regenerate with `cargo run -p genarm-testkit --bin genarm-fixtures`);
//! benchmarks write a [`sized_spec`] to a temporary directory. [`smollm2`] locates the real demo
//! model.

pub mod cache;
pub mod cluster;
pub mod etcd;
pub mod fault;
mod hf_json;
pub mod lora;
pub mod metrics;
mod rng;
pub mod smollm2;
mod spec;
mod tokenizer;
mod weights;
mod write;

use std::path::PathBuf;

pub use hf_json::CHAT_TEMPLATE;
pub use spec::{committed_specs, sized_spec, FixtureRope, FixtureSpec};
pub use tokenizer::{train_tokenizer, ENDOFTEXT, IM_END, IM_START, TOKENIZER_VOCAB_SIZE};
pub use write::{write_fixture, FIXTURE_FILES};

/// Prompts for tests, of 3, 10, 25 and 43 tokens; the third is a rendered ChatML conversation
/// (special tokens and digits), the last holds non-ASCII text.
pub const PROMPTS: &[&str] = &[
    "Hello",
    "The cat sat on the mat.",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, the naïve fisherman drank a café au lait and counted 17 boats in 日本.",
];

/// Directory of a committed fixture (`crates/genarm-testkit/fixtures/<name>`).
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/")).join(name)
}
