//! The training loop: held-out split, micro-batches with gradient accumulation, AdamW with
//! warmup + cosine, periodic evaluation and checkpoints, resume, logs, and the final PEFT adapter
//! (or full model directory).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use genarm_model::lora::{LoraAdapter, LoraConfig};
use genarm_model::weights::TensorSource;
use genarm_model::ModelAssets;
use serde::Serialize;
use serde_json::{json, Value};

use crate::data::{self, DataOptions, PairExample};
use crate::error::{Result, TrainError};
use crate::loss::{preference_loss, preference_loss_f64};
use crate::model::{SeqBatch, Target, TrainModel, Trainable};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};
use crate::rng::{derive_seed, SplitMix64};

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
            trainable: Trainable::Lora(crate::model::LoraSpec {
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

    fn validate(&self) -> Result<()> {
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

/// What a run did, also written to `OUT/train_summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// The base model path.
    pub model: String,
    /// The data path.
    pub data: String,
    /// `lora` or `full`.
    pub mode: String,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Training pairs.
    pub train_pairs: usize,
    /// Held-out pairs.
    pub eval_pairs: usize,
    /// Records skipped for a prompt longer than `--max-len`.
    pub skipped_long_prompt: usize,
    /// Records skipped for an empty response.
    pub skipped_empty_response: usize,
    /// Responses truncated to `--max-len`.
    pub truncated_responses: usize,
    /// Optimizer updates in the whole run.
    pub steps: usize,
    /// The update this process started from (non-zero when resumed).
    pub resumed_from_step: usize,
    /// Wall time of the updates this process ran, seconds.
    pub train_time_s: f64,
    /// Tokens (prompt + response, both sequences of each pair) through forward and backward.
    pub train_tokens: usize,
    /// `train_tokens / train_time_s`.
    pub tokens_per_s: f64,
    /// Held-out loss before training (absent when resumed or with no held-out pairs).
    pub initial_eval_loss: Option<f64>,
    /// Held-out preference accuracy before training.
    pub initial_eval_accuracy: Option<f64>,
    /// Held-out loss at the end.
    pub final_eval_loss: Option<f64>,
    /// Held-out preference accuracy at the end: fraction of pairs with r(y_w) > r(y_l).
    pub final_eval_accuracy: Option<f64>,
    /// Mean training loss over the last update.
    pub final_train_loss: f64,
    /// Peak resident memory of the process (Linux), MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Held-out metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    /// Mean loss.
    pub loss: f64,
    /// Fraction of pairs whose chosen response has the larger summed log-prob.
    pub accuracy: f64,
    /// Pairs evaluated.
    pub pairs: usize,
}

/// Summed response log-probs of the chosen and rejected responses of `pairs` (`[b]` each), and
/// the batch (chosen and rejected of each pair side by side, right-padded).
pub fn pair_logprobs(
    model: &TrainModel,
    pairs: &[&PairExample],
    grad: bool,
) -> Result<(Tensor, Tensor, SeqBatch)> {
    let seqs: Vec<(&[u32], &[u32])> = pairs
        .iter()
        .flat_map(|p| {
            [(p.prompt.as_slice(), p.chosen.as_slice()), (p.prompt.as_slice(), p.rejected.as_slice())]
        })
        .collect();
    let batch = SeqBatch::new(&seqs);
    let lp = model.response_logprobs(&batch, grad)?.reshape((pairs.len(), 2))?;
    let chosen = lp.narrow(1, 0, 1)?.squeeze(1)?;
    let rejected = lp.narrow(1, 1, 1)?.squeeze(1)?;
    Ok((chosen, rejected, batch))
}

/// Loss and preference accuracy over `pairs`, in batches of `batch_size`, without gradients.
pub fn evaluate(
    model: &TrainModel,
    pairs: &[PairExample],
    batch_size: usize,
    beta: f64,
    margin: f64,
) -> Result<EvalStats> {
    let (mut loss, mut correct) = (0.0, 0usize);
    for chunk in pairs.chunks(batch_size.max(1)) {
        let refs: Vec<&PairExample> = chunk.iter().collect();
        let (c, r, _) = pair_logprobs(model, &refs, false)?;
        let c = c.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let r = r.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        for (c, r) in c.iter().zip(&r) {
            loss += preference_loss_f64(*c, *r, beta, margin);
            correct += usize::from(c > r);
        }
    }
    let n = pairs.len().max(1) as f64;
    Ok(EvalStats { loss: loss / n, accuracy: correct as f64 / n, pairs: pairs.len() })
}

/// Which training pairs each micro-batch and each update takes.
struct Plan {
    n: usize,
    batch: usize,
    accum: usize,
    per_epoch: usize,
    /// Micro-batches in the run when it is sized by epochs.
    total_micro: Option<usize>,
    total_steps: usize,
    seed: u64,
}

impl Plan {
    fn new(cfg: &TrainConfig, n: usize) -> Self {
        let per_epoch = n.div_ceil(cfg.batch_size);
        let (total_micro, total_steps) = match cfg.max_steps {
            Some(s) => (None, s),
            None => {
                let m = cfg.epochs * per_epoch;
                (Some(m), m.div_ceil(cfg.grad_accum))
            }
        };
        Self {
            n,
            batch: cfg.batch_size,
            accum: cfg.grad_accum,
            per_epoch,
            total_micro,
            total_steps,
            seed: cfg.seed,
        }
    }

    /// The shuffled order of epoch `e`.
    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.n).collect();
        SplitMix64::new(derive_seed(self.seed, 1_000_000 + epoch as u64)).shuffle(&mut o);
        o
    }

    /// The micro-batches (pair indices) of update `step`.
    fn step_batches(&self, step: usize) -> Vec<Vec<usize>> {
        let start = step * self.accum;
        let end = match self.total_micro {
            Some(t) => (start + self.accum).min(t),
            None => start + self.accum,
        };
        let mut cache: Option<(usize, Vec<usize>)> = None;
        (start..end)
            .map(|k| {
                let (e, j) = (k / self.per_epoch, k % self.per_epoch);
                if cache.as_ref().map(|c| c.0) != Some(e) {
                    cache = Some((e, self.order(e)));
                }
                let order = &cache.as_ref().expect("just set").1;
                order[j * self.batch..((j + 1) * self.batch).min(self.n)].to_vec()
            })
            .collect()
    }

    fn epoch_of(&self, step: usize) -> f64 {
        ((step + 1) * self.accum) as f64 / self.per_epoch as f64
    }
}

/// What makes two runs the same computation: a resumed run must match it.
fn fingerprint(cfg: &TrainConfig, plan: &Plan, train: &[PairExample], eval: &[PairExample]) -> Value {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in train.iter().chain(eval) {
        for &t in p.prompt.iter().chain(&[u32::MAX]).chain(&p.chosen).chain(&[u32::MAX]).chain(&p.rejected) {
            h = (h ^ t as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    let trainable = match &cfg.trainable {
        Trainable::Full => json!("full"),
        Trainable::Lora(s) => json!({
            "rank": s.rank, "alpha": s.alpha, "use_rslora": s.use_rslora,
            "targets": s.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
        }),
    };
    json!({
        "trainable": trainable,
        "seed": cfg.seed,
        "beta_r": cfg.beta_r,
        "margin": cfg.margin,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "warmup_steps": cfg.warmup_steps,
        "total_steps": plan.total_steps,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "max_grad_norm": cfg.max_grad_norm,
        "train_pairs": train.len(),
        "eval_pairs": eval.len(),
        "data_hash": format!("{h:016x}"),
        "dtype": format!("{:?}", cfg.dtype),
    })
}

const STATE_FILE: &str = "trainer_state.json";
const PARAMS_FILE: &str = "params.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const LOG_FILE: &str = "train_log.jsonl";
const SUMMARY_FILE: &str = "train_summary.json";

/// Checkpoints in `out` as `(step, dir)`, oldest first; only complete ones (with a state file).
pub fn checkpoints(out: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().join(STATE_FILE).is_file().then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

fn ckpt_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint { path: path.to_owned(), reason: reason.into() }
}

/// The adapter (PEFT names, f32) of a LoRA model.
pub fn lora_adapter(model: &TrainModel, base_name: Option<String>) -> Result<Option<LoraAdapter>> {
    let Trainable::Lora(spec) = model.trainable() else { return Ok(None) };
    let mut tensors = HashMap::new();
    for p in model.params() {
        let name = format!("base_model.model.{}", p.name);
        debug_assert!(genarm_model::lora::parse_peft_tensor_name(&name).is_some(), "{name}");
        tensors.insert(name, p.var.as_tensor().to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
    }
    Ok(Some(LoraAdapter {
        config: LoraConfig {
            r: spec.rank,
            lora_alpha: spec.alpha,
            target_modules: spec.targets.iter().map(|t| t.module_name().to_string()).collect(),
            base_model_name_or_path: base_name,
            use_rslora: spec.use_rslora,
        },
        tensors,
    }))
}

/// A model's tensors with some replaced (the weights of a fully fine-tuned model).
pub struct OverlaySource {
    base: Arc<dyn TensorSource>,
    tensors: HashMap<String, Tensor>,
}

impl OverlaySource {
    /// `base` with `tensors` (HF names) replacing its own.
    pub fn new(base: Arc<dyn TensorSource>, tensors: HashMap<String, Tensor>) -> Self {
        Self { base, tensors }
    }
}

impl TensorSource for OverlaySource {
    fn location(&self) -> &Path {
        self.base.location()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self.tensors.get(name) {
            Some(t) => Some(t.dims().to_vec()),
            None => self.base.shape(name),
        }
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> genarm_model::Result<Tensor> {
        match self.tensors.get(name) {
            Some(t) => Ok(t.to_dtype(dtype)?.to_device(device)?),
            None => self.base.load(name, dtype, device),
        }
    }
}

fn save_tensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> =
        map.iter().map(|(k, v)| Ok((k.clone(), v.contiguous()?))).collect::<Result<_>>()?;
    candle_core::safetensors::save(&map, path).map_err(|e| ckpt_err(path, format!("cannot write: {e}")))
}

fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| ckpt_err(path, format!("cannot read: {e}")))
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Progress output: a bar on a terminal, plain lines otherwise, nothing when quiet.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    log_steps: usize,
}

impl Reporter {
    fn new(cfg: &TrainConfig, total: usize, start: usize) -> Self {
        let bar = (!cfg.quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            let style = indicatif::ProgressStyle::with_template(
                "train [{bar:30}] {pos}/{len} ({elapsed}<{eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_position(start as u64);
            bar
        });
        Self { bar, quiet: cfg.quiet, log_steps: cfg.log_steps.max(1) }
    }

    fn line(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    fn step(&self, step: usize, total: usize, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.set_position(step as u64);
                b.set_message(msg.to_owned());
            }
            None if !self.quiet && (step % self.log_steps == 0 || step == total) => {
                eprintln!("step {step}/{total} {msg}")
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Appends JSON lines to `OUT/train_log.jsonl`.
struct Log {
    file: std::fs::File,
    path: PathBuf,
}

impl Log {
    /// Opens the log; on resume keeps only the records up to `keep_until` (steps after the
    /// checkpoint are recomputed).
    fn open(out: &Path, keep_until: Option<usize>) -> Result<Self> {
        let path = out.join(LOG_FILE);
        let kept = match keep_until {
            Some(step) => std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s as usize <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            None => String::new(),
        };
        std::fs::write(&path, kept).map_err(|e| TrainError::io("writing", &path, e))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io("opening", &path, e))?;
        Ok(Self { file, path })
    }

    fn write(&mut self, v: &Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| TrainError::io("writing", &self.path, e))
    }
}

/// Runs training as `cfg` says and writes the outputs into `cfg.out`: the PEFT adapter
/// (`adapter_config.json`, `adapter_model.safetensors`) for LoRA or a full HF directory for full
/// fine-tuning, `train_log.jsonl`, `train_summary.json`, checkpoints, and `merged/` with `merge`.
pub fn train(cfg: &TrainConfig) -> Result<TrainSummary> {
    cfg.validate()?;
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io("creating", out, e))?;
    let previous = checkpoints(out);
    let resume_from = if cfg.resume { previous.last().cloned() } else { None };
    if !cfg.resume && !cfg.overwrite && (!previous.is_empty() || out.join(LOG_FILE).exists()) {
        return Err(TrainError::Config(format!(
            "{} holds a previous run: pass --resume to continue it, --overwrite to start over in it, or \
             choose another --out",
            out.display()
        )));
    }
    if cfg.overwrite && !cfg.resume {
        for (_, dir) in &previous {
            std::fs::remove_dir_all(dir).map_err(|e| TrainError::io("removing", dir, e))?;
        }
    }

    let assets = ModelAssets::open(&cfg.model)?;
    let text = data::model_text(&assets)?;
    let opts = DataOptions {
        max_len: cfg.max_len.min(assets.config.max_position_embeddings),
        chat_template: cfg.chat_template,
    };
    let loaded = data::load(&cfg.data, &text, &opts)?;
    let (skipped_long, skipped_empty, truncated) =
        (loaded.skipped_long_prompt, loaded.skipped_empty_response, loaded.truncated_responses);
    let (train_pairs, eval_pairs) = data::split(loaded.pairs, cfg.eval_fraction, cfg.seed);
    if train_pairs.is_empty() {
        return Err(TrainError::NoData {
            path: cfg.data.clone(),
            reason: "every pair went to the held-out split; lower --eval-fraction".into(),
        });
    }
    let plan = Plan::new(cfg, train_pairs.len());
    let fp = fingerprint(cfg, &plan, &train_pairs, &eval_pairs);

    let model = TrainModel::new(
        &assets.config,
        assets.tensors.as_ref(),
        cfg.trainable.clone(),
        cfg.seed,
        cfg.dtype,
        &cfg.device,
    )?;
    let params = model.params().to_vec();
    let trainable_params: usize = params.iter().map(|p| p.var.elem_count()).sum();
    let adam = AdamWConfig { weight_decay: cfg.weight_decay, ..Default::default() };
    let mut opt = AdamW::new(&params, adam)?;
    let sched = Schedule { lr: cfg.lr, warmup: cfg.warmup_steps, total: plan.total_steps };

    let reporter_note = format!(
        "{} training pairs, {} held out ({} skipped: prompt ≥ --max-len {}; {} skipped: empty response; {} responses truncated); {} updates of {}×{} pairs; {} trainable parameters",
        train_pairs.len(),
        eval_pairs.len(),
        skipped_long,
        opts.max_len,
        skipped_empty,
        truncated,
        plan.total_steps,
        cfg.batch_size,
        cfg.grad_accum,
        trainable_params
    );

    let base_name = match &cfg.base_name {
        Some(n) => n.clone(),
        None => std::fs::canonicalize(&cfg.model)
            .unwrap_or_else(|_| cfg.model.clone())
            .to_string_lossy()
            .into_owned(),
    };
    let mut start = 0;
    if let Some((step, dir)) = &resume_from {
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(STATE_FILE))
                .map_err(|e| TrainError::io("reading", dir.join(STATE_FILE), e))?,
        )
        .map_err(|e| ckpt_err(dir, format!("{STATE_FILE} is not valid JSON: {e}")))?;
        let saved = state.get("fingerprint").cloned().unwrap_or(Value::Null);
        if saved != fp {
            let diff: Vec<String> = fp
                .as_object()
                .expect("an object")
                .iter()
                .filter(|(k, v)| saved.get(k.as_str()) != Some(v))
                .map(|(k, v)| {
                    format!("{k}: checkpoint {} vs now {v}", saved.get(k.as_str()).unwrap_or(&Value::Null))
                })
                .collect();
            return Err(ckpt_err(
                dir,
                format!(
                    "was written by a run with other settings or data ({}); resume with the same options, or pass --overwrite to start over",
                    diff.join("; ")
                ),
            ));
        }
        model.set_params(&load_tensors(&dir.join(PARAMS_FILE))?)?;
        opt.load_state(&params, &load_tensors(&dir.join(OPTIMIZER_FILE))?, *step)?;
        start = *step;
    }
    let mut log = Log::open(out, resume_from.as_ref().map(|r| r.0))?;
    let reporter = Reporter::new(cfg, plan.total_steps, start);
    reporter.line(&reporter_note);
    if let Some((step, dir)) = &resume_from {
        reporter.line(&format!("resuming from {} (update {step})", dir.display()));
    } else if cfg.resume {
        reporter.line(&format!("no checkpoint in {}: starting from scratch", out.display()));
    }

    let eval_bs = cfg.batch_size.max(1);
    let mut initial = None;
    if resume_from.is_none() && !eval_pairs.is_empty() {
        let e = evaluate(&model, &eval_pairs, eval_bs, cfg.beta_r, cfg.margin)?;
        reporter.line(&format!("held-out before training: loss {:.4} accuracy {:.3}", e.loss, e.accuracy));
        log.write(&json!({"step": 0, "eval_loss": e.loss, "eval_accuracy": e.accuracy}))?;
        initial = Some(e);
    }

    let started = Instant::now();
    let mut total_tokens = 0usize;
    let mut last_loss = f64::NAN;
    let mut last_eval = None;
    for step in start..plan.total_steps {
        let t0 = Instant::now();
        let lr = sched.lr_at(step);
        let micro = plan.step_batches(step);
        let step_pairs: usize = micro.iter().map(Vec::len).sum();
        let mut grads: Vec<Tensor> =
            params.iter().map(|p| p.var.as_tensor().zeros_like()).collect::<candle_core::Result<_>>()?;
        let (mut loss_sum, mut correct, mut tokens) = (0.0f64, 0usize, 0usize);
        for idx in &micro {
            let pairs: Vec<&PairExample> = idx.iter().map(|&i| &train_pairs[i]).collect();
            let (c, r, batch) = pair_logprobs(&model, &pairs, true)?;
            let losses = preference_loss(&c, &r, cfg.beta_r, cfg.margin)?;
            let loss = (losses.sum_all()? / step_pairs as f64)?;
            let store = loss.backward()?;
            for (g, p) in grads.iter_mut().zip(&params) {
                if let Some(d) = store.get(p.var.as_tensor()) {
                    *g = (&*g + d)?;
                }
            }
            loss_sum += losses.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
            let cv = c.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            let rv = r.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            correct += cv.iter().zip(&rv).filter(|(c, r)| c > r).count();
            tokens += batch.real_tokens;
        }
        if !loss_sum.is_finite() {
            return Err(TrainError::NonFinite { what: "loss", step: step + 1 });
        }
        let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite { what: "gradient norm", step: step + 1 });
        }
        opt.step(&params, &grads, lr)?;
        let dt = t0.elapsed().as_secs_f64();
        total_tokens += tokens;
        let n = step + 1;
        last_loss = loss_sum / step_pairs as f64;
        let acc = correct as f64 / step_pairs as f64;
        let tps = tokens as f64 / dt.max(1e-9);
        log.write(&json!({
            "step": n, "epoch": plan.epoch_of(step), "loss": last_loss, "accuracy": acc, "lr": lr,
            "grad_norm": grad_norm, "pairs": step_pairs, "tokens": tokens, "tokens_per_s": tps, "time_s": dt,
        }))?;
        reporter.step(
            n,
            plan.total_steps,
            &format!("loss {last_loss:.4} acc {acc:.2} {tps:.0} tok/s lr {lr:.2e}"),
        );
        let is_last = n == plan.total_steps;
        if !eval_pairs.is_empty() && (is_last || (cfg.eval_steps > 0 && n % cfg.eval_steps == 0)) {
            let e = evaluate(&model, &eval_pairs, eval_bs, cfg.beta_r, cfg.margin)?;
            reporter.line(&format!("update {n}: held-out loss {:.4} accuracy {:.3}", e.loss, e.accuracy));
            log.write(&json!({"step": n, "eval_loss": e.loss, "eval_accuracy": e.accuracy}))?;
            last_eval = Some(e);
        }
        if cfg.save_steps > 0 && n % cfg.save_steps == 0 && !is_last {
            save_checkpoint(cfg, &model, &opt, n, &fp, &base_name)?;
        }
    }
    reporter.finish();
    let train_time_s = started.elapsed().as_secs_f64();

    // Outputs.
    match lora_adapter(&model, Some(base_name))? {
        Some(adapter) => {
            adapter.save(out)?;
            if cfg.merge {
                let merged = ModelAssets::open(&cfg.model)?.with_lora(adapter, out)?;
                genarm_model::save_hf_dir(&merged, &out.join("merged"))?;
            }
        }
        None => {
            let overlay = OverlaySource::new(assets.tensors.clone(), model.param_values());
            let full = ModelAssets { tensors: Arc::new(overlay), ..assets };
            genarm_model::save_hf_dir(&full, out)?;
        }
    }
    let summary = TrainSummary {
        model: cfg.model.display().to_string(),
        data: cfg.data.display().to_string(),
        mode: match cfg.trainable {
            Trainable::Lora(_) => "lora".into(),
            Trainable::Full => "full".into(),
        },
        trainable_params,
        train_pairs: train_pairs.len(),
        eval_pairs: eval_pairs.len(),
        skipped_long_prompt: skipped_long,
        skipped_empty_response: skipped_empty,
        truncated_responses: truncated,
        steps: plan.total_steps,
        resumed_from_step: start,
        train_time_s,
        train_tokens: total_tokens,
        tokens_per_s: total_tokens as f64 / train_time_s.max(1e-9),
        initial_eval_loss: initial.map(|e| e.loss),
        initial_eval_accuracy: initial.map(|e| e.accuracy),
        final_eval_loss: last_eval.map(|e| e.loss),
        final_eval_accuracy: last_eval.map(|e| e.accuracy),
        final_train_loss: last_loss,
        peak_rss_mib: peak_rss_mib(),
    };
    let path = out.join(SUMMARY_FILE);
    let text = serde_json::to_string_pretty(&summary).expect("the summary serializes") + "\n";
    std::fs::write(&path, text).map_err(|e| TrainError::io("writing", &path, e))?;
    Ok(summary)
}

fn save_checkpoint(
    cfg: &TrainConfig,
    model: &TrainModel,
    opt: &AdamW,
    step: usize,
    fp: &Value,
    base_name: &str,
) -> Result<()> {
    let dir = cfg.out.join(format!("checkpoint-{step}"));
    let tmp = cfg.out.join(format!(".checkpoint-{step}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io("removing", &tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io("creating", &tmp, e))?;
    save_tensors(&model.param_values(), &tmp.join(PARAMS_FILE))?;
    save_tensors(&opt.state(model.params()), &tmp.join(OPTIMIZER_FILE))?;
    if let Some(adapter) = lora_adapter(model, Some(base_name.to_owned()))? {
        adapter.save(&tmp)?;
    }
    let state = json!({"step": step, "fingerprint": fp});
    let state_path = tmp.join(STATE_FILE);
    std::fs::write(&state_path, serde_json::to_string_pretty(&state).expect("serializes") + "\n")
        .map_err(|e| TrainError::io("writing", &state_path, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io("removing", &dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| TrainError::io("renaming", &tmp, e))?;
    if cfg.keep_checkpoints > 0 {
        let all = checkpoints(&cfg.out);
        let excess = all.len().saturating_sub(cfg.keep_checkpoints);
        for (_, old) in all.into_iter().take(excess) {
            std::fs::remove_dir_all(&old).map_err(|e| TrainError::io("removing", &old, e))?;
        }
    }
    Ok(())
}
