//! The adapter `train` writes, served through `ModelAssets::open(adapter_dir)` and the engine,
//! gives the response log-prob sums the trainer computes; a fully fine-tuned output directory
//! serves the trainer's model too.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use genarm_model::lora::LoraAdapter;
use genarm_model::{Engine, EngineOptions, ModelAssets};
use genarm_train::data::{self, DataOptions, PairExample};
use genarm_train::trainer::pair_logprobs;
use genarm_train::{TrainModel, Trainable};

const TOL: f64 = 1e-4;

/// Max over `pairs` of |Δ| between the trainer's batched response log-prob sum and the engine's,
/// per response token (each token's log-prob may differ by f32 rounding, ≤ 1e-4 as the engine's
/// own checks allow; a sum of n of them by up to n times that).
fn compare(model: &TrainModel, engine: &Engine, pairs: &[PairExample]) -> f64 {
    let refs: Vec<&PairExample> = pairs.iter().collect();
    let (c, r, _) = pair_logprobs(model, &refs, false).unwrap();
    let (c, r) = (c.to_vec1::<f32>().unwrap(), r.to_vec1::<f32>().unwrap());
    let mut worst: f64 = 0.0;
    for (i, p) in pairs.iter().enumerate() {
        for (resp, ours) in [(&p.chosen, c[i]), (&p.rejected, r[i])] {
            let logits = engine.forward_full(&[p.prompt.clone(), resp.clone()].concat()).unwrap();
            let served = common::response_logprob_from_logits(&logits, p.prompt.len(), resp);
            worst = worst.max((ours as f64 - served).abs() / resp.len() as f64);
        }
    }
    worst
}

#[test]
fn served_adapter_gives_the_trainers_logprobs() {
    let dir = tempfile::tempdir().unwrap();
    let data_path = common::write_separable(dir.path(), 16, 9);
    let out = dir.path().join("arm");
    let mut cfg = common::quick_config("llama-gqa-tied", &data_path, &out);
    cfg.max_steps = Some(6);
    cfg.merge = true;
    genarm_train::train(&cfg).unwrap();

    // The trainer's view: the base with the adapter's matrices, unmerged.
    let adapter = LoraAdapter::open(&out).unwrap();
    let base = common::assets("llama-gqa-tied");
    let model = common::model(&base, common::lora(adapter.config.r, adapter.config.lora_alpha), DType::F32);
    let values: HashMap<String, Tensor> = adapter
        .tensors
        .iter()
        .map(|(k, v)| (k.strip_prefix("base_model.model.").unwrap().to_string(), v.clone()))
        .collect();
    model.set_params(&values).unwrap();
    let moved = adapter
        .tensors
        .iter()
        .filter(|(k, _)| k.contains("lora_B"))
        .any(|(_, t)| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    assert!(moved, "training left every lora_B at zero");

    let text = data::model_text(&base).unwrap();
    let pairs = data::load(&data_path, &text, &DataOptions::default()).unwrap().pairs;

    // Served: the adapter directory alone (its base_model_name_or_path names the backbone).
    let served = ModelAssets::open(&out).unwrap();
    let engine = Engine::load(&served, EngineOptions::default()).unwrap();
    let worst = compare(&model, &engine, &pairs);
    println!("adapter dir served vs trainer: max |Δ Σ log-prob| per token {worst:.2e}");
    assert!(worst <= TOL, "{worst}");

    // The merged directory written by --merge serves the same model.
    let merged =
        Engine::load(&ModelAssets::open(&out.join("merged")).unwrap(), EngineOptions::default()).unwrap();
    let worst = compare(&model, &merged, &pairs);
    println!("merged dir served vs trainer: max |Δ Σ log-prob| per token {worst:.2e}");
    assert!(worst <= TOL, "{worst}");

    // And the trainer-side scores differ from the base model's (the adapter matters).
    let base_engine = Engine::load(&common::assets("llama-gqa-tied"), EngineOptions::default()).unwrap();
    assert!(compare(&model, &base_engine, &pairs) > 0.01);
}

#[test]
fn full_finetune_output_serves_the_trained_model() {
    let dir = tempfile::tempdir().unwrap();
    let data_path = common::write_separable(dir.path(), 8, 4);
    let out = dir.path().join("full");
    let mut cfg = common::quick_config("qwen2-bias", &data_path, &out);
    cfg.trainable = Trainable::Full;
    cfg.lr = 1e-3;
    cfg.max_steps = Some(2);
    cfg.eval_fraction = 0.0;
    genarm_train::train(&cfg).unwrap();
    let written = ModelAssets::open(&out).unwrap();
    // The trainer's model: the written weights loaded as trainable parameters.
    let model = common::model(&written, Trainable::Full, DType::F32);
    let engine = Engine::load(&written, EngineOptions::default()).unwrap();
    let text = data::model_text(&written).unwrap();
    let pairs = data::load(&data_path, &text, &DataOptions::default()).unwrap().pairs;
    let worst = compare(&model, &engine, &pairs);
    assert!(worst <= TOL, "{worst}");
    let base_engine = Engine::load(&common::assets("qwen2-bias"), EngineOptions::default()).unwrap();
    assert!(compare(&model, &base_engine, &pairs) > 1e-3, "full fine-tuning did not change the model");
}
