//! genarm-sim-worker: a **load-simulation** worker for benchmarks at production shape (a 70B base
//! on GPUs, batch 128–256, a 128k vocabulary) on a machine that cannot hold such a model. It is
//! never used for serving: its "model" is a bank of logit rows recorded from real models.
//!
//! It speaks the real worker protocol (`Info`, `Step`, `Release`, `Stats`, `grpc.health.v1`) and
//! follows the worker process contract (one `GENARM_LISTENING grpc <addr>` line on stdout, a
//! clean exit on SIGTERM), so the router cannot tell it from a real worker. Per `Step` it waits
//! a simulated forward time (`a + b·batch` ms), then answers each sequence with a recorded row
//! mapped onto the simulated vocabulary ([`rows`]). Which recorded position a sequence gets is a
//! seeded function of `(seq_id, position)`, the same on every simulated model, so the base's and
//! the ARMs' rows at a step come from the same recorded position and disagree as real ones do.

pub mod args;
pub mod rows;
pub mod service;
pub mod vocab;

pub use args::SimArgs;
pub use rows::{RowBank, RowsError};
pub use service::SimService;
