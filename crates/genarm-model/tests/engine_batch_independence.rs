//! A sequence's log-probs do not depend on which other sequences share its batch.

mod common;

use common::*;
use genarm_model::{EngineOptions, StepSeq};

/// Greedy-decodes `prompt` for `steps` tokens as sequence `id`, with `others` (id, prompt)
/// decoding alongside it in the same steps; returns the log-probs of every step of `id`.
fn run(engine: &genarm_model::Engine, prompt: &[u32], others: &[Vec<u32>], steps: usize) -> Vec<Vec<f64>> {
    let mut seqs: Vec<(u64, Vec<u32>)> = vec![(1, prompt.to_vec())];
    seqs.extend(others.iter().enumerate().map(|(i, p)| (100 + i as u64, p.clone())));
    let mut pending: Vec<Vec<u32>> = seqs.iter().map(|(_, p)| p.clone()).collect();
    let mut lens = vec![0usize; seqs.len()];
    let mut out = Vec::new();
    for _ in 0..steps {
        let batch: Vec<StepSeq> = seqs
            .iter()
            .enumerate()
            .map(|(k, (id, _))| StepSeq { seq_id: *id, start_pos: lens[k], tokens: pending[k].clone() })
            .collect();
        let res = engine.step(batch).unwrap();
        for (k, r) in res.results.into_iter().enumerate() {
            let logits = r.unwrap();
            lens[k] += pending[k].len();
            pending[k] = vec![argmax(&logits)];
            if k == 0 {
                out.push(log_softmax(&logits));
            }
        }
    }
    for (id, _) in &seqs {
        engine.release(*id);
    }
    out
}

#[test]
fn logprobs_do_not_depend_on_batch_mates() {
    for name in FIXTURES {
        let assets = assets(name);
        let engine = genarm_model::Engine::load(&assets, EngineOptions::default()).unwrap();
        let prompts = prompt_ids(&assets);
        let alone = run(&engine, &prompts[0], &[], 8);
        let batched = run(&engine, &prompts[0], &prompts[1..], 8);
        let mut worst = 0.0f64;
        for (a, b) in alone.iter().zip(&batched) {
            worst = worst.max(max_abs_diff(a, b));
        }
        eprintln!("{name}: max |Δ log-prob| alone vs batched = {worst:.2e}");
        // gemm blocks differently for different batch sizes: equal up to f32 rounding.
        assert!(worst <= 1e-4, "{name}: alone vs batched differ by {worst}");
    }
}
