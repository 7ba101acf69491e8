//! Helpers shared by the trainer's integration tests: fixtures, random pairs, LoRA values.
#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use genarm_model::ModelAssets;
use genarm_train::data::PairExample;
use genarm_train::rng::SplitMix64;
use genarm_train::{LoraSpec, Target, TrainModel, Trainable};

/// The committed fixtures: MHA, GQA with tied embeddings and llama3 RoPE, Qwen2 with qkv bias.
pub const FIXTURES: &[&str] = &["llama-mha", "llama-gqa-tied", "qwen2-bias"];

pub fn assets(name: &str) -> ModelAssets {
    ModelAssets::open(&genarm_testkit::fixture_dir(name))
        .unwrap_or_else(|e| panic!("open fixture {name}: {e}"))
}

pub fn lora(rank: usize, alpha: f64) -> Trainable {
    Trainable::Lora(LoraSpec { rank, alpha, targets: Target::ALL.to_vec(), use_rslora: false })
}

pub fn model(assets: &ModelAssets, trainable: Trainable, dtype: DType) -> TrainModel {
    TrainModel::new(&assets.config, assets.tensors.as_ref(), trainable, 7, dtype, &Device::Cpu)
        .expect("model")
}

/// Sets every LoRA `B` to seeded uniform values in `[-amp, amp]` (they start at zero), so the
/// adapter changes the model.
pub fn randomize_b(model: &TrainModel, amp: f64, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let mut values: HashMap<String, Tensor> = model.param_values();
    for (name, t) in values.iter_mut() {
        if name.contains("lora_B") {
            let v: Vec<f64> = (0..t.elem_count()).map(|_| (2.0 * rng.next_f64() - 1.0) * amp).collect();
            *t = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap().to_dtype(t.dtype()).unwrap();
        }
    }
    model.set_params(&values).unwrap();
}

/// Random pairs over ids [1, vocab) with prompts and responses of different lengths (so a batch
/// has padding).
pub fn random_pairs(n: usize, vocab: u32, seed: u64) -> Vec<PairExample> {
    let mut rng = SplitMix64::new(seed);
    let mut ids =
        |len: usize| -> Vec<u32> { (0..len).map(|_| 1 + rng.below(vocab as u64 - 1) as u32).collect() };
    (0..n)
        .map(|i| {
            let prompt = ids(3 + i % 4);
            let chosen = ids(2 + (i * 3) % 5);
            let rejected = ids(1 + (i * 7) % 6);
            PairExample { line: i + 1, prompt, chosen, rejected }
        })
        .collect()
}

/// log_softmax of a row, in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// Σ log π(response_t | prompt, response_<t) from full-sequence logits `[len, vocab]`.
pub fn response_logprob_from_logits(logits: &Tensor, prompt_len: usize, response: &[u32]) -> f64 {
    let rows = logits.to_vec2::<f32>().unwrap();
    response.iter().enumerate().map(|(j, &t)| log_softmax(&rows[prompt_len + j - 1])[t as usize]).sum()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Words of the preferred responses of [`write_separable`].
pub const GOOD: &[&str] = &["sun", "happy", "bright", "joy", "smile", "warm"];
/// Words of the rejected responses of [`write_separable`].
pub const BAD: &[&str] = &["rain", "sad", "dark", "gloom", "tear", "cold"];

/// Writes `n` string-form pairs where the chosen response always uses words from [`GOOD`] and the
/// rejected one as many words from [`BAD`]; prompts differ per pair. Returns the path.
pub fn write_separable(dir: &std::path::Path, n: usize, seed: u64) -> std::path::PathBuf {
    let mut rng = SplitMix64::new(seed);
    let mut lines = String::new();
    for i in 0..n {
        let k = 2 + rng.below(4) as usize;
        let mut pick = |set: &[&str]| -> String {
            (0..k).map(|_| set[rng.below(set.len() as u64) as usize]).collect::<Vec<_>>().join(" ")
        };
        let chosen = pick(GOOD);
        let rejected = pick(BAD);
        let rec = serde_json::json!({"prompt": format!("Describe day {i} in a few words."), "chosen": chosen, "rejected": rejected});
        lines.push_str(&format!("{rec}\n"));
    }
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

/// A quick training config on a fixture (quiet, f32, CPU).
pub fn quick_config(
    fixture: &str,
    data: &std::path::Path,
    out: &std::path::Path,
) -> genarm_train::TrainConfig {
    let mut cfg = genarm_train::TrainConfig::new(genarm_testkit::fixture_dir(fixture), data, out);
    cfg.quiet = true;
    cfg.lr = 5e-3;
    cfg.beta_r = 0.1;
    cfg.warmup_steps = 2;
    cfg.batch_size = 4;
    cfg.eval_steps = 0;
    cfg.save_steps = 0;
    cfg
}
