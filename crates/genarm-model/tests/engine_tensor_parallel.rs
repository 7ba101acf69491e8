//! Tensor parallelism (TP = 2, 4 over in-process CPU ranks) gives TP = 1's log-probs.

mod common;

use common::*;
use genarm_model::{Engine, EngineOptions, ModelError, StepSeq};

fn logprobs_of(engine: &Engine, prompts: &[Vec<u32>]) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    // No-cache forward of one prompt, every position.
    out.extend(rows(&engine.forward_full(&prompts[1]).unwrap()).iter().map(|r| log_softmax(r)));
    // Cached steps: two prompts batched, then four decode steps.
    let mut seqs: Vec<(u64, usize, Vec<u32>)> = vec![(1, 0, prompts[0].clone()), (2, 0, prompts[2].clone())];
    for _ in 0..5 {
        let batch = seqs
            .iter()
            .map(|(id, pos, t)| StepSeq { seq_id: *id, start_pos: *pos, tokens: t.clone() })
            .collect();
        let res = engine.step(batch).unwrap();
        for (s, r) in seqs.iter_mut().zip(res.results) {
            let logits = r.unwrap();
            s.1 += s.2.len();
            s.2 = vec![argmax(&logits)];
            out.push(log_softmax(&logits));
        }
    }
    out
}

#[test]
fn tp2_and_tp4_match_tp1() {
    for name in FIXTURES {
        let assets = assets(name);
        let prompts = prompt_ids(&assets);
        let reference = logprobs_of(&Engine::load(&assets, EngineOptions::default()).unwrap(), &prompts);
        for tp in [2, 4] {
            let engine = Engine::load(&assets, EngineOptions { tp, ..Default::default() }).unwrap();
            let got = logprobs_of(&engine, &prompts);
            let worst = reference.iter().zip(&got).map(|(a, b)| max_abs_diff(a, b)).fold(0.0, f64::max);
            eprintln!("{name}: TP={tp} vs TP=1 max |Δ log-prob| = {worst:.2e}");
            assert!(worst <= 1e-4, "{name}: TP={tp} differs from TP=1 by {worst}");
        }
    }
}

#[test]
fn indivisible_heads_are_a_clear_error() {
    let assets = assets("llama-gqa-tied");
    let err =
        Engine::load(&assets, EngineOptions { tp: 3, ..Default::default() }).err().expect("tp=3 must fail");
    assert!(matches!(err, ModelError::TpIndivisible { tp: 3, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("num_attention_heads") && msg.contains("--tp"), "{msg}");
}
