//! [`WorkerError`]: why a worker could not start or stopped serving; each names the cause and the fix.

use std::path::PathBuf;

/// An error that ends a worker process.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A flag value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The model could not be opened or loaded.
    #[error("cannot load model {path}: {source}")]
    Model {
        /// The `--model` path.
        path: PathBuf,
        /// The engine's error.
        #[source]
        source: genarm_model::ModelError,
    },
    /// The warm-up step after loading failed.
    #[error("warm-up step failed for model {path}: {reason}")]
    WarmUp {
        /// The `--model` path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The listen address could not be resolved or bound.
    #[error(
        "cannot listen on {addr}: {source} (pass --listen host:port with a free port, or port 0 to pick one)"
    )]
    Bind {
        /// The `--listen` value.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Writing the `GENARM_LISTENING` line to stdout failed.
    #[error("cannot announce the listen address on stdout: {0}")]
    Announce(std::io::Error),
    /// A background task died unexpectedly (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}
