//! `SchedulerError`: why the scheduler refused or failed a request. It knows nothing of HTTP;
//! `crate::api::error` maps each kind to a status code once.

/// Why a request was refused or failed inside the scheduler.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// The waiting queue is full.
    #[error("server overloaded: {waiting} requests are already waiting (--max-waiting); retry later")]
    Overloaded {
        /// The queue's capacity.
        waiting: usize,
    },
    /// The router is shutting down: the request was refused or aborted.
    #[error("the router is shutting down")]
    ShuttingDown,
    /// A worker the request needs is not connected or not ready.
    #[error("{worker} is not ready (disconnected or still loading); retry later")]
    WorkerNotReady {
        /// The worker's display name.
        worker: String,
    },
    /// A worker failed while serving the request, naming the worker.
    #[error("{worker} failed: {message}")]
    WorkerFailed {
        /// The worker's display name (`base-worker` or the reward name, with its URL).
        worker: String,
        /// What happened.
        message: String,
    },
    /// The sampling parameters are invalid (request validation prevents this).
    #[error("{0}")]
    InvalidSampling(String),
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}
