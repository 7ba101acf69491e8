//! `genarm eval`: the alignment evaluation. Generates through the router's HTTP API for every
//! weight combination of a grid (and a control), scores every output with the demo's
//! deterministic scorers, measures fluency (length; the base model's log-prob per token), and
//! reports means with 95% intervals, win rates against unguided decoding, a Markdown table,
//! the raw JSON and PNG plots.

pub mod evaluate;
pub mod fluency;
pub mod generate;
pub mod grid;
pub mod report;
pub mod stats;

pub use evaluate::{evaluate, EvalConfig};

/// Everything `genarm eval` can fail on.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A malformed `--grid`.
    #[error("--grid {spec}: {reason}")]
    Grid {
        /// The argument.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Arguments that do not fit together.
    #[error("{0}")]
    Usage(String),
    /// A prompt file that cannot be read or parsed.
    #[error("prompt file {0}")]
    Prompts(#[from] genarm_demo::prompts::PromptFileError),
    /// The router could not be used.
    #[error("router at {url}: {reason}")]
    Router {
        /// Its URL.
        url: String,
        /// What went wrong and what to do.
        reason: String,
    },
    /// The base model for the fluency guard could not be loaded or run.
    #[error("--base-model {path}: {reason}")]
    BaseModel {
        /// The model path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Reading or writing a file.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A model file named for the provenance could not be hashed.
    #[error("provenance: {0}")]
    Provenance(String),
    /// A plot could not be drawn.
    #[error(transparent)]
    Plot(#[from] genarm_plot::PlotError),
}
