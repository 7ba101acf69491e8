//! The genarm demo: two transparent, deliberately conflicting objectives with deterministic
//! scorers, the prompt set they are trained and evaluated on, and fetching the demo base model.

pub mod cache;
pub mod digest;
pub mod fetch;
pub mod pairs;
pub mod prompts;
pub mod provenance;
pub mod scorers;
pub mod smollm2;
