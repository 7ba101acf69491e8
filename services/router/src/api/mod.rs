//! The HTTP layer: everything a client talks to, and the only layer that knows HTTP and the
//! OpenAI types.
//!
//! - [`routes`]: the axum routes and handlers; [`state`]: the shared state and in-flight count;
//! - [`openai`]: the request and response types (with the `guidance` extension);
//! - [`json`]: the body extractor whose rejections are OpenAI errors;
//! - [`validate`]: request validation, split by concern, building the scheduler's request;
//! - `response` and `sse`: scheduler events as whole responses or SSE streams;
//! - [`auth`] (API keys) and [`limits`] (per-key limits);
//! - [`error`]: [`ApiError`], every failure mapped once to a status code and the OpenAI error
//!   JSON (the scheduler's errors included).

pub mod auth;
pub mod error;
pub mod json;
pub mod limits;
pub mod openai;
mod response;
pub mod routes;
mod sse;
pub mod state;
pub mod validate;

#[cfg(test)]
mod routes_tests;
#[cfg(test)]
mod sandbox_tests;

pub use error::ApiError;
pub use routes::router;
pub use state::{AppState, Core, DRAIN_RETRY_AFTER_SECS};
