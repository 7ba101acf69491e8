//! The training loop: held-out split, micro-batches with gradient accumulation, AdamW with
//! warmup + cosine, periodic evaluation and checkpoints, resume, logs, and the final PEFT adapter
//! (or full model directory). Each phase has its module: [`TrainConfig`] and its checks, the data
//! schedule, checkpoints and resume, progress and logs, and the written outputs.

mod checkpoint;
mod config;
mod export;
mod report;
mod schedule;

use std::time::Instant;

use candle_core::{DType, Tensor};
use genarm_model::ModelAssets;
use serde_json::json;

use crate::data::{self, DataOptions, PairExample};
use crate::error::{Result, TrainError};
use crate::loss::{preference_loss, preference_loss_f64};
use crate::model::{SeqBatch, TrainModel, Trainable};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};

pub use checkpoint::checkpoints;
pub use config::{device, TrainConfig};
pub use export::{lora_adapter, OverlaySource};
pub use report::TrainSummary;

use checkpoint::{fingerprint, resume, save_checkpoint};
use report::{peak_rss_mib, Log, Reporter, LOG_FILE};
use schedule::Plan;

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
        resume(dir, *step, &fp, &model, &mut opt)?;
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

    export::write_outputs(cfg, assets, &model, base_name)?;
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
    summary.write(out)?;
    Ok(summary)
}
