//! Half-precision weights and KV (bf16, f16) track the f32 engine: probabilities close, the same
//! greedy tokens in f16, and cached decode consistent with the full forward.

mod common;

use candle_core::DType;
use common::*;
use genarm_model::{Engine, EngineOptions, StepSeq};

#[test]
fn half_precision_tracks_f32() {
    for name in FIXTURES {
        let assets = assets(name);
        let prompts = prompt_ids(&assets);
        let f32_engine = Engine::load(&assets, EngineOptions::default()).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let engine = Engine::load(&assets, EngineOptions { dtype, ..Default::default() }).unwrap();
            let mut worst = 0.0f64;
            for (i, p) in prompts.iter().enumerate() {
                let reference = rows(&f32_engine.forward_full(p).unwrap());
                let full = rows(&engine.forward_full(p).unwrap());
                let out =
                    engine.step(vec![StepSeq { seq_id: i as u64, start_pos: 0, tokens: p.clone() }]).unwrap();
                let cached = out.results[0].clone().unwrap();
                if dtype == DType::F16 {
                    // bf16 keeps 8 bits of mantissa: with logits in the tens, near-ties may flip.
                    assert_eq!(
                        argmax(&cached),
                        argmax(reference.last().unwrap()),
                        "{name} {dtype:?} prompt {i}"
                    );
                }
                // Same dtype, cached vs uncached: only accumulation order differs.
                let d_cache = max_abs_diff(&log_softmax(&cached), &log_softmax(full.last().unwrap()));
                assert!(d_cache <= 0.25, "{name} {dtype:?}: cached vs full {d_cache}");
                let probs_ref: Vec<f64> =
                    log_softmax(reference.last().unwrap()).iter().map(|l| l.exp()).collect();
                let probs: Vec<f64> = log_softmax(&cached).iter().map(|l| l.exp()).collect();
                worst = worst.max(max_abs_diff(&probs, &probs_ref));
            }
            eprintln!("{name} {dtype:?}: max |Δ prob| vs f32 = {worst:.3e}");
            assert!(worst <= 0.1, "{name} {dtype:?}: probabilities differ from f32 by {worst}");
        }
    }
}
