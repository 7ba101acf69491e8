//! genarm-worker: the runtime both worker services run — `genarm-base-worker` (the base model,
//! tensor-parallel) and `genarm-rm-worker` (an autoregressive reward model). It loads a model into
//! the engine, serves the `genarm.v1.Worker` gRPC protocol (`Info`, `Step`, `Release`, `Stats`,
//! `FetchRows`, docs/architecture.md §3) and `grpc.health.v1` over it, and follows the process
//! contract: flags with `GENARM_*` env vars, one `GENARM_LISTENING grpc <addr>` line on stdout
//! once bound, logs on stderr, a clean exit on SIGTERM/SIGINT.
//!
//! The two binaries differ only in their [`WorkerRole`]: each parses its flags (flattening
//! [`WorkerArgs`]) and calls [`run_process`].

pub mod args;
pub mod config;
pub mod discovery;
pub mod error;
pub mod info;
pub mod load;
pub mod metrics;
pub mod process;
pub mod role;
pub mod rows;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod stats;
pub mod step;

pub use args::{DtypeArg, WorkerArgs};
pub use config::WorkerConfig;
pub use error::WorkerError;
pub use process::{init_tracing, run_process};
pub use role::WorkerRole;
pub use serve::{announce, bind, run, serve, LISTENING_PREFIX};
pub use service::WorkerService;
pub use shutdown::shutdown_signal;
pub use stats::StepCounters;
