//! genarm-model: a Llama-family decoder built for serving. It runs one batched forward over many
//! sequences at different positions, keeps their keys and values in a preallocated block KV cache,
//! splits the model over tensor-parallel ranks, and loads HF directories and GGUF files.

pub mod assets;
pub mod attention;
pub mod communicator;
pub mod config;
pub mod engine;
pub mod error;
pub mod export;
pub mod gather_attention;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod golden;
pub mod hf_dir;
pub mod kv_cache;
pub mod kv_write;
pub mod layers;
pub mod lora;
pub mod model;
pub mod paged_attention;
pub mod prefix_cache;
pub mod progress;
pub mod rope;
pub mod step;
pub mod step_plan;
pub mod tensors;
pub mod weights;

pub use assets::{ModelAssets, TokenizerAssets};
pub use attention::AttentionKernel;
pub use config::LlamaConfig;
pub use engine::{Engine, EngineOptions};
pub use error::{ModelError, Result};
pub use export::save_hf_dir;
pub use kv_cache::KvUsage;
pub use lora::{peft_tensor_name, LoraAdapter, LoraConfig, LoraMergedSource, LoraPart};
pub use prefix_cache::PrefixCacheStats;
pub use step::{StepError, StepOutput, StepSeq};
pub use tensors::{ModelTensors, Projection};
