//! genarm-router: the OpenAI-compatible HTTP front of a genarm cluster. It validates requests,
//! renders and tokenizes each model's prompt, admits them into a scheduler actor that runs
//! continuous batching over the base-worker and the reward-model workers (gRPC), fuses their
//! logits per GenARM (DESIGN.md §1), samples, detokenizes and streams the result.
//!
//! Layout: [`args`] (flags), [`error`] (HTTP errors), [`openai`] (wire types), [`validate`]
//! (DESIGN §4 checks → a scheduler request), [`backend`] (the worker interface the scheduler
//! uses), [`workers`] (gRPC clients, startup checks, health), [`text`] (per-request
//! detokenization and stop strings), [`scheduler`] (the actor: queue, batch, preemption),
//! [`step_loop`] (one step: workers, fusion, sampling), [`http`] (axum routes, SSE),
//! [`telemetry`] (Prometheus metrics), [`auth`] (API keys) and [`limits`] (per-key limits), and
//! [`server`] (wiring it all together).
#![warn(missing_docs)]

pub mod args;
pub mod auth;
pub mod backend;
pub mod error;
pub mod http;
pub mod limits;
pub mod openai;
pub mod scheduler;
pub mod server;
pub mod step_loop;
pub mod telemetry;
pub mod text;
pub mod validate;
pub mod workers;

#[cfg(test)]
mod http_tests;
#[cfg(test)]
mod sandbox_tests;
#[cfg(test)]
mod scheduler_tests;
#[cfg(test)]
pub(crate) mod testing;
