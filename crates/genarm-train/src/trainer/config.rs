//! A training run's settings ([`TrainConfig`], with the defaults of `genarm train-arm` and their
//! checks) and the device a run computes on.

use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::error::{Result, TrainError};
use crate::model::{LoraSpec, Target, Trainable};

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The base model: HF directory or `.gguf` file.
    pub model: PathBuf,
    /// Preference pairs (JSONL).
    pub data: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// `base_model_name_or_path` of the adapter; default: the model's absolute path.
    pub base_name: Option<String>,
    /// LoRA or full fine-tuning.
    pub trainable: Trainable,
    /// β_r of the loss.
    pub beta_r: f64,
    /// Margin γ of the loss.
    pub margin: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Linear warmup updates.
    pub warmup_steps: usize,
    /// Passes over the training pairs (ignored when `max_steps` is set).
    pub epochs: usize,
    /// Total optimizer updates, overriding `epochs`.
    pub max_steps: Option<usize>,
    /// Pairs per micro-batch (each pair is two sequences).
    pub batch_size: usize,
    /// Micro-batches per optimizer update.
    pub grad_accum: usize,
    /// Global gradient-norm clip (0: off).
    pub max_grad_norm: f64,
    /// Longest sequence in tokens.
    pub max_len: usize,
    /// Render string prompts with the chat template.
    pub chat_template: bool,
    /// Fraction of pairs held out for evaluation.
    pub eval_fraction: f64,
    /// Evaluate every this many updates (0: only at the start and the end).
    pub eval_steps: usize,
    /// Checkpoint every this many updates (0: never).
    pub save_steps: usize,
    /// Checkpoints kept (older ones are deleted; 0 keeps all).
    pub keep_checkpoints: usize,
    /// Print a plain log line every this many updates when stderr is not a terminal.
    pub log_steps: usize,
    /// Seed of the LoRA init, the split and the data order.
    pub seed: u64,
    /// Continue from the latest checkpoint in `out`.
    pub resume: bool,
    /// Allow writing into an `out` that holds a previous run (without resuming it).
    pub overwrite: bool,
    /// Also write `out/merged`, a full HF directory with the adapter merged.
    pub merge: bool,
    /// No progress bar and no log lines on stderr.
    pub quiet: bool,
    /// Compute dtype (f32; f64 for tests).
    pub dtype: DType,
    /// Device.
    pub device: Device,
}

impl TrainConfig {
    /// A LoRA run with the defaults of `genarm train-arm`.
    pub fn new(model: impl Into<PathBuf>, data: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            data: data.into(),
            out: out.into(),
            base_name: None,
            trainable: Trainable::Lora(LoraSpec {
                rank: 8,
                alpha: 16.0,
                targets: Target::ALL.to_vec(),
                use_rslora: false,
            }),
            beta_r: 0.05,
            margin: 0.0,
            lr: 5e-4,
            weight_decay: 0.0,
            warmup_steps: 10,
            epochs: 1,
            max_steps: None,
            batch_size: 4,
            grad_accum: 1,
            max_grad_norm: 1.0,
            max_len: 512,
            chat_template: true,
            eval_fraction: 0.1,
            eval_steps: 50,
            save_steps: 100,
            keep_checkpoints: 2,
            log_steps: 10,
            seed: 0,
            resume: false,
            overwrite: false,
            merge: false,
            quiet: false,
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }

    /// Refuses settings no run can use, naming the flag.
    pub(super) fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(TrainError::Config(s));
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("--batch-size and --grad-accum must be at least 1".into());
        }
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return bad(format!("--lr {} must be a positive number", self.lr));
        }
        if !self.beta_r.is_finite() || self.beta_r <= 0.0 {
            return bad(format!("--beta-r {} must be a positive number", self.beta_r));
        }
        if !self.margin.is_finite() || !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            return bad("--margin must be finite and --weight-decay finite and ≥ 0".into());
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return bad(format!("--eval-fraction {} must be in [0, 1)", self.eval_fraction));
        }
        if self.max_len < 2 {
            return bad(format!("--max-len {} must be at least 2", self.max_len));
        }
        if self.max_steps == Some(0) || (self.max_steps.is_none() && self.epochs == 0) {
            return bad("--epochs (or --max-steps) must be at least 1".into());
        }
        if let Trainable::Lora(spec) = &self.trainable {
            if spec.rank == 0 || !spec.alpha.is_finite() || spec.alpha <= 0.0 {
                return bad("--lora-rank must be ≥ 1 and --lora-alpha > 0".into());
            }
        }
        Ok(())
    }
}

/// The device named by `spec`: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with the `cuda`
/// feature).
pub fn device(spec: &str) -> Result<Device> {
    let bad = |why: String| TrainError::Config(format!("--device {spec:?}: {why}"));
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n = match s.strip_prefix("cuda:") {
                Some(n) => n.parse().map_err(|_| bad("expected cuda:N with N a device number".into()))?,
                None => 0,
            };
            Device::new_cuda(n).map_err(|e| {
                bad(format!("cannot open CUDA device {n} ({e}); is this a build with --features cuda?"))
            })
        }
        _ => Err(bad("expected cpu, cuda or cuda:N".into())),
    }
}
