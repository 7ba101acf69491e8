//! Unit tests of chunked prefill in the scheduler, on the in-process fake backend: a prompt
//! longer than the step's token budget reaches every model in consecutive chunks, no call
//! carries more than the budget, running streams decode in every step meanwhile, and every
//! stream equals that of a large budget (and the reference); also with a replica lost in the
//! middle of a prefill, and with the KV pool exhausted by a partly prefilled prompt.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use genarm_fusion::SamplingParams;

use super::tests::{
    collect, collect_after, config, greedy, reference_tokens, request, start, wait_until, Harness, V,
};
use crate::scheduler::{ArmRequest, Event};
use crate::testing::FakeBackend;

/// The small budget of these tests (`--max-batch-tokens`).
const BUDGET: usize = 16;

/// `n` prompt tokens, none of them EOS, different for each `salt`.
fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| 1 + (i * 7 + salt * 13) % (V as u32 - 1)).collect()
}

/// A scheduler over `models` fake workers of `kv` tokens each, with token budget `budget`.
fn start_with_budget(models: usize, kv: usize, budget: usize) -> Harness {
    let mut cfg = config();
    cfg.max_batch_tokens = budget;
    start(FakeBackend::new(models, V, kv), cfg)
}

/// Per sequence id, its (start position, tokens) in each of model `m`'s calls, in call order.
fn parts(h: &Harness, m: usize) -> HashMap<u64, Vec<(u32, usize)>> {
    let mut out: HashMap<u64, Vec<(u32, usize)>> = HashMap::new();
    for call in &h.backend.state(m).calls {
        for &(id, start, n) in call {
            out.entry(id).or_default().push((start, n));
        }
    }
    out
}

/// Asserts that no call to models `0..models` carried more than `budget` tokens.
fn assert_within_budget(h: &Harness, models: usize, budget: usize) {
    for m in 0..models {
        for call in &h.backend.state(m).calls {
            let tokens: usize = call.iter().map(|&(_, _, n)| n).sum();
            assert!(
                tokens <= budget,
                "model {m}: a call of {tokens} tokens over the budget {budget}: {call:?}"
            );
        }
    }
}

/// Greedy base prompts of `len` tokens whose continuation runs `max_tokens` without EOS.
fn long_running_prompts(count: usize, len: usize, max_tokens: u32) -> Vec<Vec<u32>> {
    let found: Vec<Vec<u32>> = (1..V as u32)
        .map(|i| {
            let mut p = vec![i];
            p.extend(2..len as u32 + 1);
            p
        })
        .filter(|p| reference_tokens(p, &[], greedy(), max_tokens).len() == max_tokens as usize)
        .take(count)
        .collect();
    assert_eq!(found.len(), count, "not enough prompts whose greedy continuation avoids EOS");
    found
}

/// A request of the mix: base prompt, ARMs, sampling, `max_tokens`.
type Mix = (Vec<u32>, Vec<ArmRequest>, SamplingParams, u32);

/// Prompts longer than [`BUDGET`] on some models and not others (each model renders its own),
/// guided and not, greedy and seeded, with a short one among them.
fn mix() -> Vec<Mix> {
    let seeded = |seed| SamplingParams { temperature: 0.8, top_p: Some(0.9), top_k: None, seed };
    vec![
        (
            prompt(100, 1),
            vec![
                ArmRequest { model: 1, alpha: 0.7, prompt: prompt(70, 2) },
                ArmRequest { model: 2, alpha: -0.3, prompt: prompt(130, 3) },
            ],
            seeded(42),
            20,
        ),
        (prompt(50, 4), vec![], greedy(), 20),
        (vec![5, 6, 7], vec![ArmRequest { model: 1, alpha: 1.0, prompt: vec![9, 5, 6, 7] }], seeded(7), 20),
        (prompt(40, 5), vec![ArmRequest { model: 2, alpha: 0.5, prompt: prompt(45, 6) }], greedy(), 20),
    ]
}

/// Runs [`mix`] at once on a fresh scheduler with `budget`; returns it and every stream.
async fn run_mix(budget: usize) -> (Harness, Vec<Vec<u32>>) {
    let h = start_with_budget(3, 1_000_000, budget);
    let rxs: Vec<_> = mix()
        .into_iter()
        .map(|(p, arms, sampling, max)| h.handle.submit(request(p, arms, sampling, max)).unwrap())
        .collect();
    let mut streams = Vec::new();
    for (i, rx) in rxs.into_iter().enumerate() {
        let (tokens, _, fin) = collect(rx).await;
        assert!(fin.is_ok(), "budget {budget}, request {i}: {fin:?}");
        streams.push(tokens);
    }
    (h, streams)
}

#[tokio::test]
async fn a_prompt_longer_than_the_budget_is_prefilled_in_chunks_and_streams_what_a_large_budget_does() {
    let (large, want) = run_mix(4096).await;
    let (small, got) = run_mix(BUDGET).await;
    for (i, ((g, w), (p, arms, sampling, max))) in got.iter().zip(&want).zip(mix()).enumerate() {
        // Had a chunk's logits been sampled from, the stream would hold extra, wrong tokens.
        assert_eq!(g, w, "request {i}: chunked and whole prefill differ");
        assert_eq!(g, &reference_tokens(&p, &arms, sampling, max), "request {i}");
    }
    assert_eq!(large.stats.prefill_chunks.load(Ordering::Relaxed), 0, "4096 tokens hold every prompt");
    assert!(small.stats.prefill_chunks.load(Ordering::Relaxed) > 0, "nothing was chunked");
    assert_within_budget(&small, 3, BUDGET);
    for m in 0..3 {
        for (id, parts) in parts(&small, m) {
            // Each call continues exactly where the last one ended: no gap, no overlap, no replay.
            assert_eq!(parts[0].0, 0, "model {m}, sequence {id}: {parts:?}");
            for w in parts.windows(2) {
                assert_eq!(w[1].0 as usize, w[0].0 as usize + w[0].1, "model {m}, sequence {id}: {parts:?}");
            }
        }
    }
    // The 130-token prompt of the second ARM took at least ⌈130 / 16⌉ prefill calls.
    let most = parts(&small, 2).values().map(|p| p.iter().filter(|&&(_, n)| n > 1).count()).max();
    assert!(most.unwrap_or(0) >= 130usize.div_ceil(BUDGET), "{most:?}");
    wait_until("everything is released", || (0..3).all(|m| small.backend.state(m).held.is_empty())).await;
}

#[tokio::test]
async fn running_streams_decode_in_every_step_while_a_long_prompt_prefills() {
    let h = start_with_budget(1, 1_000_000, BUDGET);
    let max_tokens = 80;
    let prompts = long_running_prompts(4, 3, max_tokens);
    let mut streams = Vec::new();
    for p in &prompts {
        streams.push(h.handle.submit(request(p.clone(), vec![], greedy(), max_tokens)).unwrap());
    }
    // The streams are decoding when the long prompt arrives.
    let mut heads = Vec::new();
    for rx in &mut streams {
        let mut tokens = Vec::new();
        while tokens.len() < 2 {
            match rx.recv().await {
                Some(Event::Token { token, .. }) => tokens.push(token),
                other => panic!("a stream ended early: {:?}", other.is_some()),
            }
        }
        heads.push(tokens);
    }
    let long = prompt(120, 9);
    let long_rx = h.handle.submit(request(long.clone(), vec![], greedy(), 20)).unwrap();
    let (long_tokens, _, fin) = collect(long_rx).await;
    assert!(fin.is_ok(), "{fin:?}");
    assert_eq!(long_tokens, reference_tokens(&long, &[], greedy(), 20));
    for ((rx, head), p) in streams.into_iter().zip(heads).zip(&prompts) {
        let (tokens, _, fin) = collect_after(rx, head).await;
        assert!(fin.is_ok(), "{fin:?}");
        assert_eq!(tokens, reference_tokens(p, &[], greedy(), max_tokens));
    }

    assert_within_budget(&h, 1, BUDGET);
    let st = h.backend.state(0);
    let long_id = st
        .calls
        .iter()
        .flatten()
        .find(|&&(_, start, n)| start == 0 && n > 3)
        .map(|&(id, _, _)| id)
        .expect("the long prompt was sent");
    let stream_ids: Vec<u64> = st.calls[0].iter().map(|&(id, _, _)| id).collect();
    assert_eq!(stream_ids.len(), 4, "the four streams started together: {:?}", st.calls[0]);
    let mut prefill_calls = 0;
    for call in &st.calls {
        if !call.iter().any(|&(id, _, n)| id == long_id && n > 1) {
            continue;
        }
        prefill_calls += 1;
        for id in &stream_ids {
            assert!(
                call.iter().any(|&(s, _, n)| s == *id && n == 1),
                "stream {id} did not decode in a step of the long prefill: {call:?}"
            );
        }
    }
    // 120 tokens at most 16 − 4 decodes a step.
    assert!(prefill_calls >= 120usize.div_ceil(BUDGET - 4), "{prefill_calls} prefill calls");
}

#[tokio::test]
async fn a_replica_lost_in_the_middle_of_a_chunked_prefill_replays_it_and_loses_nothing() {
    let h = start_with_budget(2, 100_000, 8);
    let params = SamplingParams { temperature: 0.9, top_p: None, top_k: None, seed: 3 };
    // The ARM's replica fails once it holds 16 of its 40 prompt tokens; then the base's, once it
    // holds 24 of its 60 while the ARM (10 tokens) already has its logits.
    let cases = [(1usize, 16usize, 60usize, 40usize), (0, 24, 60, 10)];
    for (i, &(lost_model, after, base_len, arm_len)) in cases.iter().enumerate() {
        h.backend.state(lost_model).lose_when_holding = Some(after);
        let base = prompt(base_len, 20 + i as u32);
        let arms = vec![ArmRequest { model: 1, alpha: 1.0, prompt: prompt(arm_len, 30 + i as u32) }];
        let replays = h.stats.replays.load(Ordering::Relaxed);
        let rx = h.handle.submit(request(base.clone(), arms.clone(), params, 24)).unwrap();
        let (tokens, _, fin) = collect(rx).await;
        assert!(fin.is_ok(), "case {i}: {fin:?}");
        assert_eq!(tokens, reference_tokens(&base, &arms, params, 24), "case {i}");
        assert!(h.backend.state(lost_model).lose_when_holding.is_none(), "case {i}: the failure was met");
        assert!(h.stats.replays.load(Ordering::Relaxed) > replays, "case {i}: nothing was replayed");
        wait_until("released", || (0..2).all(|m| h.backend.state(m).held.is_empty())).await;
    }
    assert_within_budget(&h, 2, 8);
    // The lost model restarted each sequence from position 0 after the chunk that was lost.
    for (i, &(lost_model, after, ..)) in cases.iter().enumerate() {
        let restarted = parts(&h, lost_model)
            .values()
            .any(|p| p.windows(2).any(|w| w[0].0 as usize == after && w[1].0 == 0));
        assert!(restarted, "case {i}: no replay from 0 after the chunk at {after}");
    }
}

#[tokio::test]
async fn a_partly_prefilled_prompt_that_exhausts_the_kv_pool_is_requeued_and_replayed() {
    // Two streams of 4 + 20 tokens and a 30-token prompt (+ 10) under a budget of 8. With 46
    // tokens of KV, the long prompt's last chunk does not fit beside the streams: it is requeued
    // (released, partly prefilled as it is) and replayed once they finish. With 50, its prefill
    // fits but its first decode does not: it is preempted as the youngest, then replayed.
    for kv in [46usize, 50] {
        let h = start_with_budget(1, kv, 8);
        let streams = long_running_prompts(2, 4, 20);
        let long = prompt(30, 11);
        let mut rxs: Vec<_> = streams
            .iter()
            .map(|p| (p.clone(), 20, h.handle.submit(request(p.clone(), vec![], greedy(), 20)).unwrap()))
            .collect();
        rxs.push((long.clone(), 10, h.handle.submit(request(long.clone(), vec![], greedy(), 10)).unwrap()));
        for (p, max, rx) in rxs {
            let (tokens, _, fin) = collect(rx).await;
            assert!(fin.is_ok(), "kv {kv}: {fin:?}");
            assert_eq!(tokens, reference_tokens(&p, &[], greedy(), max), "kv {kv}");
        }
        assert!(h.stats.preemptions.load(Ordering::Relaxed) > 0, "kv {kv}: the pool never ran out");
        assert!(h.stats.prefill_chunks.load(Ordering::Relaxed) > 0, "kv {kv}: nothing was chunked");
        assert_within_budget(&h, 1, 8);
        let long_parts = parts(&h, 0).into_values().find(|p| p[0].1 > 4).expect("the long prompt was sent");
        let restarts = long_parts.iter().filter(|&&(start, _)| start == 0).count();
        assert!(restarts >= 2, "kv {kv}: the long prompt was not replayed from 0: {long_parts:?}");
        wait_until("everything is released", || h.backend.state(0).held.is_empty()).await;
    }
}
