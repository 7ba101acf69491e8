//! The model crate's error type: every variant names the cause and, where there is one, the fix.

use std::path::PathBuf;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file the model needs is not there.
    #[error("missing file {path}: {hint}")]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// What the file is for and how to provide it.
        hint: String,
    },
    /// A file exists but could not be read or parsed.
    #[error("cannot read {path}: {reason}")]
    BadFile {
        /// The offending file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The config names an architecture this engine does not implement.
    #[error("unsupported model_type {model_type:?} in {path}: genarm serves the Llama family (llama, mistral, qwen2)")]
    UnsupportedModelType {
        /// The `model_type` (or GGUF `general.architecture`) that was found.
        model_type: String,
        /// The config file or GGUF file it came from.
        path: PathBuf,
    },
    /// The config holds an invalid or unsupported value.
    #[error("invalid model config ({path}): {reason}")]
    BadConfig {
        /// The config file (or GGUF file).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the architecture needs is absent from the weights.
    #[error("tensor {name} is missing from {path}")]
    MissingTensor {
        /// The tensor's name (HF naming).
        name: String,
        /// The weights file or directory that lacks it.
        path: PathBuf,
    },
    /// A tensor exists but its shape does not match the config.
    #[error("tensor {name} in {path} has shape {actual:?}, but the config implies {expected:?}")]
    TensorShape {
        /// The tensor's name (HF naming).
        name: String,
        /// The weights file it came from.
        path: PathBuf,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape found in the file.
        actual: Vec<usize>,
    },
    /// The tensor-parallel degree does not divide the model's dimensions.
    #[error(
        "tensor parallelism {tp} does not divide {what} ({value}); choose --tp among the divisors of {value}"
    )]
    TpIndivisible {
        /// The requested number of ranks.
        tp: usize,
        /// Which dimension (e.g. `num_key_value_heads`).
        what: &'static str,
        /// The dimension's size.
        value: usize,
    },
    /// The tokenizer could not be built or used.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A KV-cache or step error (see [`crate::StepError`]).
    #[error(transparent)]
    Step(#[from] crate::StepError),
    /// A tensor-parallel rank failed or went away.
    #[error("tensor-parallel rank {rank} failed: {reason}")]
    Rank {
        /// The rank that failed.
        rank: usize,
        /// Why.
        reason: String,
    },
    /// An error from candle while computing.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
