//! Cached incremental decoding equals a full no-cache forward, with prefill (whole and chunked)
//! and decode mixed in the same steps.

mod common;

use common::*;
use genarm_model::{EngineOptions, StepSeq};

const DECODE_STEPS: usize = 24;

#[test]
fn cached_decode_matches_full_forward() {
    for name in FIXTURES {
        let assets = assets(name);
        let engine =
            genarm_model::Engine::load(&assets, EngineOptions { block_size: 4, ..Default::default() })
                .unwrap();
        let prompts = prompt_ids(&assets);
        // Three sequences of different prompt lengths; the longest is prefilled in two chunks.
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| prompts[i].len());
        let picks = [order[0], order[order.len() / 2], order[order.len() - 1]];
        let mut toks: Vec<Vec<u32>> = picks.iter().map(|&i| prompts[i].clone()).collect();
        let prompt_lens: Vec<usize> = toks.iter().map(Vec::len).collect();
        assert!(
            prompt_lens[0] < prompt_lens[1] && prompt_lens[1] < prompt_lens[2],
            "{name}: {prompt_lens:?}"
        );
        let mut step_logits: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 3];
        let split = prompt_lens[2] / 2;

        // Step 1: seq 0 whole prompt, seq 2 first chunk.
        let out = engine
            .step(vec![
                StepSeq { seq_id: 10, start_pos: 0, tokens: toks[0].clone() },
                StepSeq { seq_id: 12, start_pos: 0, tokens: toks[2][..split].to_vec() },
            ])
            .unwrap();
        step_logits[0].push(out.results[0].clone().unwrap());
        // Step 2: seq 0 decodes, seq 1 whole prompt, seq 2 second chunk.
        let next0 = argmax(step_logits[0].last().unwrap());
        toks[0].push(next0);
        let out = engine
            .step(vec![
                StepSeq { seq_id: 10, start_pos: prompt_lens[0], tokens: vec![next0] },
                StepSeq { seq_id: 11, start_pos: 0, tokens: toks[1].clone() },
                StepSeq { seq_id: 12, start_pos: split, tokens: toks[2][split..].to_vec() },
            ])
            .unwrap();
        for (k, r) in out.results.into_iter().enumerate() {
            step_logits[k].push(r.unwrap());
        }
        // Then everyone decodes together.
        for _ in 0..DECODE_STEPS {
            let mut batch = Vec::new();
            for k in 0..3 {
                let next = argmax(step_logits[k].last().unwrap());
                let start_pos = toks[k].len();
                toks[k].push(next);
                batch.push(StepSeq { seq_id: 10 + k as u64, start_pos, tokens: vec![next] });
            }
            let out = engine.step(batch).unwrap();
            for (k, r) in out.results.into_iter().enumerate() {
                step_logits[k].push(r.unwrap());
            }
        }

        let mut worst = 0.0f64;
        for k in 0..3 {
            // Every step's logits predict the token after position (prompt_len - 1 + i).
            let full = rows(&engine.forward_full(&toks[k]).unwrap());
            let steps = &step_logits[k];
            let first_pos = prompt_lens[k] - 1;
            assert!(steps.len() >= 20);
            for (i, logits) in steps.iter().enumerate() {
                let pos = first_pos + i;
                if pos >= full.len() {
                    break; // the last step's prediction has no full-forward row yet
                }
                let d = max_abs_diff(&log_softmax(logits), &log_softmax(&full[pos]));
                worst = worst.max(d);
                assert!(d <= 1e-4, "{name}: seq {k} step {i} (position {pos}): max |Δ log-prob| = {d}");
            }
        }
        eprintln!("{name}: max |Δ log-prob| cached vs full = {worst:.2e}");
        for k in 0..3 {
            assert!(engine.release(10 + k));
        }
        assert_eq!(engine.kv_usage().used_blocks, 0);
    }
}
