//! genarm-text: what the router does with text for each model — chat templates, prompt
//! encoding, streaming detokenization, stop strings — and the vocabulary fingerprint that proves
//! two models share token ids.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod fingerprint;

pub use fingerprint::vocab_fingerprint;
