//! The paged attention kernel gives the gather path's log-probs and greedy tokens: MHA and GQA
//! fixtures, several block sizes, ragged contexts, prefill chunks mixed with decodes, TP = 1 and 2.

mod common;

use common::*;
use genarm_model::{AttentionKernel, Engine, EngineOptions, StepSeq};

const DECODE_STEPS: usize = 12;

/// Tokens of a prompt long enough to cross the kernel's query tiles (16) and key chunks (64), and
/// to be split over threads when it decodes alone.
const LONG_PROMPT: usize = 300;

/// Log-probs of every step and the greedy tokens of a mixed workload: sequence 1 prefills whole,
/// sequence 2 in two chunks while 1 decodes, sequence 3 joins late, sequence 4 (long) prefills in
/// two chunks alongside; then all decode together.
fn workload(engine: &Engine, prompts: &[Vec<u32>]) -> (Vec<Vec<f64>>, Vec<Vec<u32>>) {
    let (p1, p2, p3) = (&prompts[0], &prompts[1], &prompts[2]);
    let p4: Vec<u32> = prompts.iter().flatten().copied().cycle().take(LONG_PROMPT).collect();
    let split = p2.len() / 2;
    let split4 = 2 * LONG_PROMPT / 3;
    let mut logprobs = Vec::new();
    let mut toks: Vec<Vec<u32>> = vec![p1.clone(), p2.clone(), p3.clone(), p4.clone()];
    let mut generated: Vec<Vec<u32>> = vec![Vec::new(); 4];
    let mut push = |k: usize, logits: Vec<f32>, toks: &mut Vec<Vec<u32>>| {
        let next = argmax(&logits);
        toks[k].push(next);
        generated[k].push(next);
        logprobs.push(log_softmax(&logits));
    };
    let out = engine
        .step(vec![
            StepSeq { seq_id: 1, start_pos: 0, tokens: p1.clone() },
            StepSeq { seq_id: 2, start_pos: 0, tokens: p2[..split].to_vec() },
            StepSeq { seq_id: 4, start_pos: 0, tokens: p4[..split4].to_vec() },
        ])
        .unwrap();
    let mut r = out.results.into_iter();
    push(0, r.next().unwrap().unwrap(), &mut toks);
    r.next().unwrap().unwrap();
    r.next().unwrap().unwrap();
    let out = engine
        .step(vec![
            StepSeq { seq_id: 2, start_pos: split, tokens: p2[split..].to_vec() },
            StepSeq { seq_id: 1, start_pos: p1.len(), tokens: vec![*toks[0].last().unwrap()] },
            StepSeq { seq_id: 3, start_pos: 0, tokens: p3.clone() },
            StepSeq { seq_id: 4, start_pos: split4, tokens: p4[split4..].to_vec() },
        ])
        .unwrap();
    let mut r = out.results.into_iter();
    push(1, r.next().unwrap().unwrap(), &mut toks);
    push(0, r.next().unwrap().unwrap(), &mut toks);
    push(2, r.next().unwrap().unwrap(), &mut toks);
    push(3, r.next().unwrap().unwrap(), &mut toks);
    for _ in 0..DECODE_STEPS {
        let batch = (0..4)
            .map(|k| StepSeq {
                seq_id: k as u64 + 1,
                start_pos: toks[k].len() - 1,
                tokens: vec![*toks[k].last().unwrap()],
            })
            .collect();
        let out = engine.step(batch).unwrap();
        for (k, r) in out.results.into_iter().enumerate() {
            push(k, r.unwrap(), &mut toks);
        }
    }
    // The long sequence decodes alone: one tile per KV head, its keys split over threads.
    for _ in 0..2 {
        let pos = toks[3].len() - 1;
        let out =
            engine.step(vec![StepSeq { seq_id: 4, start_pos: pos, tokens: vec![toks[3][pos]] }]).unwrap();
        push(3, out.results.into_iter().next().unwrap().unwrap(), &mut toks);
    }
    for id in 1..=4 {
        assert!(engine.release(id));
    }
    // The no-cache forward of the long context, every position.
    logprobs.extend(rows(&engine.forward_full(&toks[3]).unwrap()).iter().map(|r| log_softmax(r)));
    (logprobs, generated)
}

#[test]
fn paged_equals_gather_across_fixtures_block_sizes_and_tp() {
    for name in FIXTURES {
        let assets = assets(name);
        let prompts = prompt_ids(&assets);
        for block_size in [1, 4, 16] {
            for tp in [1, 2] {
                let run = |attention| {
                    let options = EngineOptions { tp, block_size, attention, ..Default::default() };
                    workload(&Engine::load(&assets, options).unwrap(), &prompts)
                };
                let (want, want_tokens) = run(AttentionKernel::Gather);
                let (got, got_tokens) = run(AttentionKernel::Paged);
                let worst = want.iter().zip(&got).map(|(a, b)| max_abs_diff(a, b)).fold(0.0, f64::max);
                eprintln!(
                    "{name}: block {block_size} TP={tp}: paged vs gather max |Δ log-prob| = {worst:.2e}"
                );
                assert!(worst <= 1e-4, "{name} block {block_size} TP={tp}: differs by {worst}");
                assert_eq!(
                    got_tokens, want_tokens,
                    "{name} block {block_size} TP={tp}: greedy tokens differ"
                );
            }
        }
    }
}

#[test]
fn the_default_engine_runs_the_paged_kernel() {
    assert_eq!(EngineOptions::default().attention, AttentionKernel::Paged);
}
