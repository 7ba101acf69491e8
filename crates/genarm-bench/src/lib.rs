//! `genarm bench`: an async load generator over the router's OpenAI HTTP API. For every
//! concurrency level (and unguided and/or guided), it sends warm-up requests, then a fixed
//! number of requests (or requests for a fixed duration) with exactly C streamed chat
//! completions in flight, measures TTFT and inter-token latency from the SSE chunk arrival
//! times, scrapes the router's `/metrics` before and after for the per-step accounting, and
//! writes `bench.json`, `bench.md`, `throughput.png` and `latency.png`.

pub mod accounting;
pub mod client;
pub mod prom;
pub mod report;
pub mod run;
pub mod sse;
pub mod stats;

pub use report::{BenchReport, RunReport};
pub use run::{parse_guidance, run_bench, Amount, BenchConfig};

/// Everything `genarm bench` can fail on.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Arguments that are malformed or do not fit together.
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
    /// Reading or writing a file.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A model file named for the provenance could not be hashed.
    #[error("provenance: {0}")]
    Provenance(String),
    /// A plot could not be drawn.
    #[error("drawing {file}")]
    Plot {
        /// The PNG file.
        file: String,
        /// The cause.
        source: genarm_plot::PlotError,
    },
}
