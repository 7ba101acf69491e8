//! `genarm train-arm`: trains an autoregressive reward model (LoRA adapter in the PEFT format, or
//! a fully fine-tuned model) from JSONL preference pairs.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use genarm_train::model::parse_targets;
use genarm_train::{LoraSpec, TrainConfig, Trainable};

/// Flags of `genarm train-arm`.
#[derive(Debug, Args)]
pub struct TrainArmArgs {
    /// The base model the ARM starts from: a Hugging Face model directory or a .gguf file.
    #[arg(long, env = "GENARM_TRAIN_MODEL", value_name = "PATH")]
    pub model: PathBuf,

    /// Preference pairs, one JSON object per line: {"prompt": "...", "chosen": "...",
    /// "rejected": "..."}, or chat form with "chosen"/"rejected" as message lists ending in the
    /// assistant's response (UltraFeedback-binarized). Prompts are rendered with the model's chat
    /// template; responses get the model's EOS appended.
    #[arg(long, env = "GENARM_TRAIN_DATA", value_name = "PAIRS.jsonl")]
    pub data: PathBuf,

    /// Output directory: adapter_config.json + adapter_model.safetensors (PEFT LoRA; with --full,
    /// a whole HF model directory), train_log.jsonl, train_summary.json and checkpoint-N/.
    #[arg(long, env = "GENARM_TRAIN_OUT", value_name = "DIR")]
    pub out: PathBuf,

    /// base_model_name_or_path written into adapter_config.json (default: the absolute path of
    /// --model, so `genarm-rm-worker --model OUT` finds the backbone). A relative path is
    /// resolved from the adapter directory when the adapter is loaded.
    #[arg(long, env = "GENARM_TRAIN_BASE_NAME", value_name = "NAME")]
    pub base_name: Option<String>,

    /// β_r of the loss −log σ(β_r·[Σ log π(y_w|x) − Σ log π(y_l|x)] − γ).
    #[arg(long, env = "GENARM_TRAIN_BETA_R", default_value_t = 0.05)]
    pub beta_r: f64,

    /// Margin γ subtracted inside the sigmoid.
    #[arg(long, env = "GENARM_TRAIN_MARGIN", default_value_t = 0.0)]
    pub margin: f64,

    /// LoRA rank r.
    #[arg(long, env = "GENARM_TRAIN_LORA_RANK", default_value_t = 8)]
    pub lora_rank: usize,

    /// LoRA α: the update B·A is scaled by α/r.
    #[arg(long, env = "GENARM_TRAIN_LORA_ALPHA", default_value_t = 16.0)]
    pub lora_alpha: f64,

    /// Modules LoRA adapts, comma-separated: q,k,v,o,gate,up,down (or q_proj, ... names).
    #[arg(long, env = "GENARM_TRAIN_LORA_TARGETS", default_value = "q,k,v,o,gate,up,down")]
    pub lora_targets: String,

    /// rsLoRA: scale by α/√r instead of α/r.
    #[arg(long, env = "GENARM_TRAIN_RSLORA")]
    pub rslora: bool,

    /// Fine-tune every weight instead of LoRA (the output is a full HF model directory).
    #[arg(long, env = "GENARM_TRAIN_FULL")]
    pub full: bool,

    /// Peak learning rate (default 5e-4 for LoRA, 1e-5 with --full).
    #[arg(long, env = "GENARM_TRAIN_LR")]
    pub lr: Option<f64>,

    /// AdamW decoupled weight decay.
    #[arg(long, env = "GENARM_TRAIN_WEIGHT_DECAY", default_value_t = 0.0)]
    pub weight_decay: f64,

    /// Updates of linear warmup before the cosine decay.
    #[arg(long, env = "GENARM_TRAIN_WARMUP_STEPS", default_value_t = 10)]
    pub warmup_steps: usize,

    /// Passes over the training pairs.
    #[arg(long, env = "GENARM_TRAIN_EPOCHS", default_value_t = 1)]
    pub epochs: usize,

    /// Total optimizer updates; overrides --epochs.
    #[arg(long, env = "GENARM_TRAIN_MAX_STEPS")]
    pub max_steps: Option<usize>,

    /// Pairs per micro-batch (each pair runs its chosen and rejected sequence together).
    #[arg(long, env = "GENARM_TRAIN_BATCH_SIZE", default_value_t = 4)]
    pub batch_size: usize,

    /// Micro-batches whose gradients are summed per optimizer update.
    #[arg(long, env = "GENARM_TRAIN_GRAD_ACCUM", default_value_t = 1)]
    pub grad_accum: usize,

    /// Clip the global gradient norm to this value (0: no clipping).
    #[arg(long, env = "GENARM_TRAIN_MAX_GRAD_NORM", default_value_t = 1.0)]
    pub max_grad_norm: f64,

    /// Longest prompt + response in tokens: responses are truncated to fit, pairs whose prompt
    /// leaves no room are skipped (and counted).
    #[arg(long, env = "GENARM_TRAIN_MAX_LEN", default_value_t = 512)]
    pub max_len: usize,

    /// Use string prompts as they are instead of rendering them with the chat template.
    #[arg(long, env = "GENARM_TRAIN_NO_CHAT_TEMPLATE")]
    pub no_chat_template: bool,

    /// Fraction of pairs held out (seeded) for the held-out loss and preference accuracy.
    #[arg(long, env = "GENARM_TRAIN_EVAL_FRACTION", default_value_t = 0.1)]
    pub eval_fraction: f64,

    /// Evaluate on the held-out pairs every this many updates (and at the start and end; 0: only
    /// then).
    #[arg(long, env = "GENARM_TRAIN_EVAL_STEPS", default_value_t = 50)]
    pub eval_steps: usize,

    /// Write OUT/checkpoint-N (adapter, optimizer state, step) every this many updates (0: never).
    #[arg(long, env = "GENARM_TRAIN_SAVE_STEPS", default_value_t = 100)]
    pub save_steps: usize,

    /// Checkpoints kept; older ones are deleted (0: keep all).
    #[arg(long, env = "GENARM_TRAIN_KEEP_CHECKPOINTS", default_value_t = 2)]
    pub keep_checkpoints: usize,

    /// Without a terminal, print a progress line every this many updates.
    #[arg(long, env = "GENARM_TRAIN_LOG_STEPS", default_value_t = 10)]
    pub log_steps: usize,

    /// Continue from the latest OUT/checkpoint-N (same options and data required); the result
    /// equals an uninterrupted run.
    #[arg(long, env = "GENARM_TRAIN_RESUME")]
    pub resume: bool,

    /// Start over in an OUT that holds a previous run (its checkpoints are deleted).
    #[arg(long, env = "GENARM_TRAIN_OVERWRITE")]
    pub overwrite: bool,

    /// Also write OUT/merged: a full HF model directory with the adapter merged in.
    #[arg(long, env = "GENARM_TRAIN_MERGE")]
    pub merge: bool,

    /// Seed of the LoRA initialization, the held-out split and the data order.
    #[arg(long, env = "GENARM_TRAIN_SEED", default_value_t = 0)]
    pub seed: u64,

    /// CPU threads for the tensor kernels (default: all cores). On a machine whose cores are
    /// busy with other work, 1 is often fastest: candle's kernel threads spin-wait for each other.
    #[arg(long, env = "GENARM_TRAIN_THREADS")]
    pub threads: Option<usize>,

    /// Device: cpu, or cuda / cuda:N (needs a build with the cuda feature).
    #[arg(long, env = "GENARM_TRAIN_DEVICE", default_value = "cpu")]
    pub device: String,

    /// No progress bar or log lines (the files in OUT are still written).
    #[arg(long, env = "GENARM_TRAIN_QUIET")]
    pub quiet: bool,
}

/// The training configuration the flags describe.
pub fn config(args: &TrainArmArgs) -> Result<TrainConfig> {
    let trainable = if args.full {
        Trainable::Full
    } else {
        Trainable::Lora(LoraSpec {
            rank: args.lora_rank,
            alpha: args.lora_alpha,
            targets: parse_targets(&args.lora_targets)?,
            use_rslora: args.rslora,
        })
    };
    let mut cfg = TrainConfig::new(&args.model, &args.data, &args.out);
    cfg.base_name = args.base_name.clone();
    cfg.trainable = trainable;
    cfg.beta_r = args.beta_r;
    cfg.margin = args.margin;
    cfg.lr = args.lr.unwrap_or(if args.full { 1e-5 } else { 5e-4 });
    cfg.weight_decay = args.weight_decay;
    cfg.warmup_steps = args.warmup_steps;
    cfg.epochs = args.epochs;
    cfg.max_steps = args.max_steps;
    cfg.batch_size = args.batch_size;
    cfg.grad_accum = args.grad_accum;
    cfg.max_grad_norm = args.max_grad_norm;
    cfg.max_len = args.max_len;
    cfg.chat_template = !args.no_chat_template;
    cfg.eval_fraction = args.eval_fraction;
    cfg.eval_steps = args.eval_steps;
    cfg.save_steps = args.save_steps;
    cfg.keep_checkpoints = args.keep_checkpoints;
    cfg.log_steps = args.log_steps;
    cfg.seed = args.seed;
    cfg.resume = args.resume;
    cfg.overwrite = args.overwrite;
    cfg.merge = args.merge;
    cfg.quiet = args.quiet;
    cfg.device = genarm_train::trainer::device(&args.device)?;
    Ok(cfg)
}

/// Runs `genarm train-arm`.
pub fn run(args: TrainArmArgs) -> Result<()> {
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // Read by candle's kernels when their thread pool starts, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    }
    let cfg = config(&args)?;
    let summary = genarm_train::train(&cfg)?;
    let acc = |a: Option<f64>| a.map(|a| format!("{:.1}%", 100.0 * a)).unwrap_or_else(|| "n/a".into());
    eprintln!(
        "genarm train-arm: {} updates in {:.1} s ({:.0} tokens/s); held-out accuracy {} -> {}; wrote {}",
        summary.steps,
        summary.train_time_s,
        summary.tokens_per_s,
        acc(summary.initial_eval_accuracy),
        acc(summary.final_eval_accuracy),
        args.out.display()
    );
    Ok(())
}
