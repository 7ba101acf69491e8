//! genarm-train: trains an autoregressive reward model (a GenARM ARM) from preference pairs.
//!
//! The ARM's reward for a response is `β_r · Σ_t log π_r(y_t | x, y_<t)`; training minimizes
//! `−log σ(β_r·[log π_r(y_w|x) − log π_r(y_l|x)] − γ)` over pairs (chosen `y_w`, rejected `y_l`),
//! with no reference model. [`data`] reads and tokenizes JSONL pairs, [`model`] is the training
//! forward (differentiable ops only, LoRA or full fine-tuning), [`loss`] the objective, [`optim`]
//! AdamW with its schedule, and [`trainer`] the loop: held-out evaluation, checkpoints, resume,
//! logs, and the PEFT adapter written at the end.

pub mod data;
pub mod error;
mod frozen;
pub mod loss;
pub mod model;
pub mod optim;
pub mod rng;
pub mod trainer;

pub use error::{Result, TrainError};
pub use model::{LoraSpec, SeqBatch, Target, TrainModel, Trainable};
pub use trainer::{train, TrainConfig, TrainSummary};
