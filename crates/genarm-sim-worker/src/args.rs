//! `SimArgs`: the simulation worker's flags, each with a `GENARM_SIM_*` (or the workers'
//! `GENARM_*`) environment variable for containers.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Which side of the cluster the simulated worker plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimRole {
    /// The base model (`--base` of the router).
    Base,
    /// A reward model (`--rm NAME=URL` of the router; needs `--reward-name`).
    Reward,
}

/// A load-simulation worker: the genarm worker protocol over recorded logit rows and a simulated
/// forward time. For benchmarks only; it runs no model and must never serve users.
#[derive(Debug, Clone, Parser)]
#[command(name = "genarm-sim-worker", version, about, long_about = None)]
pub struct SimArgs {
    /// Address to serve gRPC on, as host:port (port 0 picks a free port; the bound address is
    /// printed on stdout as `GENARM_LISTENING grpc <ip:port>`).
    #[arg(long, env = "GENARM_LISTEN", value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    pub listen: String,

    /// The simulated model's role.
    #[arg(long, env = "GENARM_SIM_ROLE", value_enum, default_value_t = SimRole::Base)]
    pub role: SimRole,

    /// The reward name of a simulated reward model (`--role reward`).
    #[arg(long, env = "GENARM_REWARD_NAME", value_name = "NAME")]
    pub reward_name: Option<String>,

    /// The model id reported in `Info` (default: `sim-base` or `sim-arm-<NAME>`).
    #[arg(long, env = "GENARM_SIM_MODEL_ID", value_name = "ID")]
    pub model_id: Option<String>,

    /// The simulated vocabulary size V (e.g. 128256 for Llama 3, 49152 for SmolLM2). The worker
    /// reports a synthetic tokenizer of exactly V tokens, the same for every simulated model.
    #[arg(long, env = "GENARM_SIM_VOCAB", value_name = "V", default_value_t = 128_256)]
    pub vocab_size: usize,

    /// Recorded logit rows (a safetensors file written by `genarm-sim-worker record` or
    /// `RowBank::write`). Without it, `--synthetic-rows` must be given.
    #[arg(long, env = "GENARM_SIM_ROWS", value_name = "FILE", conflicts_with = "synthetic_rows")]
    pub rows: Option<PathBuf>,

    /// The tensor of `--rows` this worker answers with (default: `base` for the base,
    /// `arm.<NAME>` for a reward model).
    #[arg(long, env = "GENARM_SIM_ROWS_TENSOR", value_name = "NAME")]
    pub rows_tensor: Option<String>,

    /// Instead of recorded rows, N seeded Zipf-shaped synthetic rows (protocol tests only: their
    /// entropy and base/ARM disagreement are not a real model's).
    #[arg(long, env = "GENARM_SIM_SYNTHETIC_ROWS", value_name = "N")]
    pub synthetic_rows: Option<usize>,

    /// Fixed part of the simulated forward time of one `Step`, in milliseconds.
    #[arg(long, env = "GENARM_SIM_FORWARD_MS", value_name = "MS", default_value_t = 25.0)]
    pub forward_ms: f64,

    /// Per-sequence part of the simulated forward time, in milliseconds: a `Step` of `n`
    /// sequences waits `forward_ms + n · forward_ms_per_seq`.
    #[arg(long, env = "GENARM_SIM_FORWARD_MS_PER_SEQ", value_name = "MS", default_value_t = 0.0)]
    pub forward_ms_per_seq: f64,

    /// Seeds which recorded row each `(sequence, position)` gets; give every simulated model of
    /// a cluster the same seed.
    #[arg(long, env = "GENARM_SIM_SEED", value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Longest context reported in `Info`.
    #[arg(long, env = "GENARM_SIM_MAX_POSITIONS", value_name = "N", default_value_t = 131_072)]
    pub max_positions: u32,

    /// Tokens the simulated KV cache holds over all sequences (KV_EXHAUSTED beyond).
    #[arg(long, env = "GENARM_KV_CAPACITY_TOKENS", value_name = "N", default_value_t = 1 << 24)]
    pub kv_capacity_tokens: u64,

    /// The chat template reported in `Info` (a Jinja template, as in tokenizer_config.json);
    /// default: `<role> <content>` per message, then `assistant` ([`crate::vocab::SIM_CHAT_TEMPLATE`]).
    /// An empty string reports none (the router then serves only `/v1/completions`).
    #[arg(long, env = "GENARM_SIM_CHAT_TEMPLATE", value_name = "JINJA", default_value = crate::vocab::SIM_CHAT_TEMPLATE, hide_default_value = true)]
    pub chat_template: String,

    /// Largest gRPC message accepted or sent, in bytes (a full f32 step at batch 256 and a 128k
    /// vocabulary is 131 MB).
    #[arg(long, env = "GENARM_MAX_MESSAGE_BYTES", value_name = "BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_message_bytes: usize,
}

impl SimArgs {
    /// The reward name (`""` for the base), checking that a reward model has one.
    pub fn reward_name(&self) -> Result<&str, String> {
        match (self.role, self.reward_name.as_deref()) {
            (SimRole::Base, None) => Ok(""),
            (SimRole::Base, Some(n)) => Err(format!("--reward-name {n} is only for --role reward")),
            (SimRole::Reward, Some(n)) if !n.is_empty() => Ok(n),
            (SimRole::Reward, _) => Err("--role reward needs --reward-name NAME".into()),
        }
    }

    /// The model id reported in `Info`.
    pub fn model_id(&self) -> String {
        self.model_id.clone().unwrap_or_else(|| match (self.role, self.reward_name.as_deref()) {
            (SimRole::Reward, Some(n)) => format!("sim-arm-{n}"),
            _ => "sim-base".into(),
        })
    }

    /// The chat template to report (`None` for an empty `--chat-template`).
    pub fn chat_template(&self) -> Option<String> {
        (!self.chat_template.is_empty()).then(|| self.chat_template.clone())
    }

    /// The tensor of the rows file to answer with.
    pub fn rows_tensor(&self) -> String {
        self.rows_tensor.clone().unwrap_or_else(|| match (self.role, self.reward_name.as_deref()) {
            (SimRole::Reward, Some(n)) => format!("arm.{n}"),
            _ => "base".into(),
        })
    }

    /// The simulated forward time of a step of `batch` sequences.
    pub fn forward_time(&self, batch: usize) -> std::time::Duration {
        let ms = self.forward_ms + batch as f64 * self.forward_ms_per_seq;
        std::time::Duration::from_secs_f64((ms / 1000.0).max(0.0))
    }
}
