//! Checkpoints and resume: what identifies a run ([`fingerprint`]), the `checkpoint-N`
//! directories (parameters, optimizer moments, the adapter so far, the state file) written
//! atomically and pruned, and the check that a resumed run is the computation it continues.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use crate::data::PairExample;
use crate::error::{Result, TrainError};
use crate::model::{TrainModel, Trainable};
use crate::optim::AdamW;

use super::export::lora_adapter;
use super::schedule::Plan;
use super::TrainConfig;

const STATE_FILE: &str = "trainer_state.json";
const PARAMS_FILE: &str = "params.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// What makes two runs the same computation: a resumed run must match it.
pub(super) fn fingerprint(
    cfg: &TrainConfig,
    plan: &Plan,
    train: &[PairExample],
    eval: &[PairExample],
) -> Value {
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

fn save_tensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> =
        map.iter().map(|(k, v)| Ok((k.clone(), v.contiguous()?))).collect::<Result<_>>()?;
    candle_core::safetensors::save(&map, path).map_err(|e| ckpt_err(path, format!("cannot write: {e}")))
}

fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| ckpt_err(path, format!("cannot read: {e}")))
}

/// Continues from the checkpoint `dir` written after update `step`: refuses it, naming every
/// setting that differs, unless it was written by the run `fp` describes, then loads its
/// parameters into `model` and its moments into `opt`.
pub(super) fn resume(dir: &Path, step: usize, fp: &Value, model: &TrainModel, opt: &mut AdamW) -> Result<()> {
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(STATE_FILE))
            .map_err(|e| TrainError::io("reading", dir.join(STATE_FILE), e))?,
    )
    .map_err(|e| ckpt_err(dir, format!("{STATE_FILE} is not valid JSON: {e}")))?;
    let saved = state.get("fingerprint").cloned().unwrap_or(Value::Null);
    if saved != *fp {
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
    opt.load_state(model.params(), &load_tensors(&dir.join(OPTIMIZER_FILE))?, step)?;
    Ok(())
}

/// Writes `checkpoint-{step}` (through a temporary directory renamed into place, so a crash
/// leaves no half checkpoint) and deletes the oldest beyond `keep_checkpoints`.
pub(super) fn save_checkpoint(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_lists_complete_ones_by_step() {
        let out = tempfile::tempdir().unwrap();
        for (dir, complete) in [
            ("checkpoint-10", true),
            ("checkpoint-2", true),
            ("checkpoint-5", false),
            (".checkpoint-7.tmp", true),
        ] {
            let d = out.path().join(dir);
            std::fs::create_dir_all(&d).unwrap();
            if complete {
                std::fs::write(d.join(STATE_FILE), "{}").unwrap();
            }
        }
        std::fs::write(out.path().join("checkpoint-3"), "a file, not a checkpoint").unwrap();
        let steps: Vec<usize> = checkpoints(out.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, [2, 10], "numeric order, only directories with a state file");
        assert!(checkpoints(&out.path().join("missing")).is_empty());
    }
}
