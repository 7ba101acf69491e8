//! genarm-router: the OpenAI-compatible HTTP front of a genarm cluster. It validates requests,
//! renders and tokenizes each model's prompt, admits them into a scheduler actor that runs
//! continuous batching over the base-worker and the reward-model workers (gRPC), fuses their
//! logits per GenARM (docs/architecture.md §1), samples, detokenizes and streams the result.
//!
//! Layout, one layer per directory, each importing only from the layers below it:
//! - [`api`]: HTTP routes, OpenAI types, validation, SSE, auth, limits, the HTTP error mapping;
//! - [`scheduler`]: the actor (queue, batch, preemption) and the step in its phases;
//! - [`workers`]: the backend trait, the catalog, membership (static and etcd), the pool
//!   (placement, failover) and the gRPC calls;
//!
//! and at the top: [`args`] (flags), [`telemetry`] (Prometheus metrics) and [`server`] (wiring it
//! all together).

pub mod api;
pub mod args;
pub mod scheduler;
pub mod server;
pub mod telemetry;
pub mod workers;

#[cfg(test)]
pub(crate) mod testing;
