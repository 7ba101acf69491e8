//! `TrainError`: everything that can go wrong reading preference data and training an ARM.

use std::path::PathBuf;

/// An error of the trainer. Each message names the cause and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A line of the preference data is not a usable record.
    #[error("{path}:{line}: {reason}")]
    BadRecord {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the record and what was expected.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The data holds no pair that can be trained on.
    #[error("{path}: no usable preference pairs ({reason})")]
    NoData {
        /// The data file.
        path: PathBuf,
        /// Why nothing is left.
        reason: String,
    },
    /// An option is invalid or options contradict each other.
    #[error("invalid training option: {0}")]
    Config(String),
    /// A checkpoint cannot be written, read, or does not match this run.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The loss or the gradient became NaN or infinite.
    #[error(
        "the {what} is not finite at step {step}: lower --lr, raise --max-grad-norm's strictness, \
         or check the data for degenerate pairs"
    )]
    NonFinite {
        /// "loss" or "gradient norm".
        what: &'static str,
        /// The optimizer step.
        step: usize,
    },
    /// Loading or saving a model or adapter failed.
    #[error(transparent)]
    Model(#[from] genarm_model::ModelError),
    /// Tokenizing or rendering a prompt failed.
    #[error(transparent)]
    Text(#[from] genarm_text::TextError),
    /// A tensor operation failed.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    /// An [`TrainError::Io`] for `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { action, path: path.into(), source }
    }
}
