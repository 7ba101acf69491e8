//! The fuzz targets' bodies as plain functions: the cargo-fuzz binaries call them on libFuzzer's
//! inputs, and `tests/corpus_replay.rs` on every committed corpus file (on stable Rust).

pub mod chat_template;
pub mod detokenize;
#[cfg(feature = "model")]
pub mod gguf_header;
#[cfg(feature = "router")]
pub mod request_json;
#[cfg(feature = "model")]
pub mod safetensors_dir;
pub mod sparse_certificate;
pub mod step_reply;
