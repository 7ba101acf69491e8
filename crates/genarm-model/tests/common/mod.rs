//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use candle_core::Tensor;
use genarm_model::{Engine, EngineOptions, ModelAssets};

/// The committed fixtures every numeric test runs on.
pub const FIXTURES: &[&str] = &["llama-mha", "llama-gqa-tied", "qwen2-bias"];

pub fn assets(name: &str) -> ModelAssets {
    ModelAssets::open(&genarm_testkit::fixture_dir(name))
        .unwrap_or_else(|e| panic!("open fixture {name}: {e}"))
}

pub fn engine(name: &str, options: EngineOptions) -> Engine {
    Engine::load(&assets(name), options).unwrap_or_else(|e| panic!("load fixture {name}: {e}"))
}

/// The fixture prompts as token ids, without special tokens added.
pub fn prompt_ids(assets: &ModelAssets) -> Vec<Vec<u32>> {
    genarm_testkit::PROMPTS
        .iter()
        .map(|p| assets.tokenizer.tokenizer.encode(*p, false).expect("encode").get_ids().to_vec())
        .collect()
}

/// log_softmax of a row of logits, in f64 for a reference independent of candle's kernels.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    row.iter().map(|&x| x as f64 - lse).collect()
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

pub fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().expect("f32 matrix")
}

pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}
