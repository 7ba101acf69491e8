//! The prefix cache changes what is computed, never what comes out: a shared system prompt, two
//! concurrent requests sharing it, a next chat turn holding the previous answer, a chunked
//! prefill and eviction under pressure all give the no-cache engine's log-probs and greedy
//! tokens, on every fixture at TP = 1 and 2, and the pool's accounting returns to empty.

mod common;

use common::*;
use genarm_model::{Engine, EngineOptions, StepSeq};

const DECODE_STEPS: usize = 6;

/// What a workload produced: log-probs of every sampled position, the greedy tokens per
/// sequence, and the tokens the engine took from its cache.
struct Outcome {
    logprobs: Vec<Vec<f64>>,
    tokens: Vec<Vec<u32>>,
    cached: usize,
}

/// Drives sequences through steps, decoding greedily, and records everything it sees.
struct Driver<'a> {
    engine: &'a Engine,
    held: Vec<(u64, Vec<u32>)>,
    out: Outcome,
}

impl<'a> Driver<'a> {
    fn new(engine: &'a Engine) -> Self {
        Self {
            engine,
            held: Vec::new(),
            out: Outcome { logprobs: Vec::new(), tokens: Vec::new(), cached: 0 },
        }
    }

    /// One step: `starts` are new sequences (id, prompt chunk) and every held sequence decodes.
    fn step(&mut self, starts: Vec<(u64, Vec<u32>)>) {
        let mut seqs: Vec<StepSeq> = self
            .held
            .iter()
            .map(|(id, t)| StepSeq { seq_id: *id, start_pos: t.len() - 1, tokens: vec![*t.last().unwrap()] })
            .collect();
        seqs.extend(starts.iter().map(|(id, p)| StepSeq { seq_id: *id, start_pos: 0, tokens: p.clone() }));
        let out = self.engine.step(seqs).unwrap();
        self.out.cached += out.cached_tokens.iter().sum::<usize>();
        let mut results = out.results.into_iter();
        for (_, toks) in self.held.iter_mut() {
            let logits = results.next().unwrap().unwrap();
            toks.push(argmax(&logits));
            self.out.logprobs.push(log_softmax(&logits));
        }
        for (id, prompt) in starts {
            let logits = results.next().unwrap().unwrap();
            let mut toks = prompt;
            toks.push(argmax(&logits));
            self.out.logprobs.push(log_softmax(&logits));
            self.held.push((id, toks));
        }
    }

    /// Continues a held sequence's prefill with `chunk` (no decode this step for it).
    fn chunk(&mut self, id: u64, chunk: &[u32]) {
        let (_, toks) = self.held.iter_mut().find(|(s, _)| *s == id).unwrap();
        // The held tokens end with a sampled token the chunk replaces.
        toks.pop();
        let start_pos = toks.len();
        let out = self.engine.step(vec![StepSeq { seq_id: id, start_pos, tokens: chunk.to_vec() }]).unwrap();
        self.out.cached += out.cached_tokens[0];
        let logits = out.results.into_iter().next().unwrap().unwrap();
        toks.extend_from_slice(chunk);
        toks.push(argmax(&logits));
        self.out.logprobs.push(log_softmax(&logits));
    }

    fn finish(&mut self, id: u64) -> Vec<u32> {
        let i = self.held.iter().position(|(s, _)| *s == id).unwrap();
        let (_, toks) = self.held.remove(i);
        assert!(self.engine.release(id));
        self.out.tokens.push(toks.clone());
        toks
    }
}

/// A 40-token system prompt, then: two requests sharing it (the second joins while the first
/// decodes), the next chat turn of the first (its whole conversation plus a new question), and a
/// chunked prefill of the second's prompt.
fn workload(engine: &Engine, prompts: &[Vec<u32>]) -> Outcome {
    let system: Vec<u32> = prompts.iter().flatten().copied().cycle().take(40).collect();
    let with = |p: &Vec<u32>| -> Vec<u32> { system.iter().chain(p).copied().collect() };
    let mut d = Driver::new(engine);
    d.step(vec![(1, with(&prompts[0]))]);
    d.step(vec![(2, with(&prompts[1]))]);
    for _ in 0..DECODE_STEPS {
        d.step(vec![]);
    }
    let conversation = d.finish(1);
    let next_turn: Vec<u32> = conversation.iter().chain(&prompts[2]).copied().collect();
    d.step(vec![(3, next_turn)]);
    let second = with(&prompts[1]);
    d.step(vec![(4, second[..16].to_vec())]);
    d.chunk(4, &second[16..]);
    for _ in 0..DECODE_STEPS {
        d.step(vec![]);
    }
    for id in [2, 3, 4] {
        d.finish(id);
    }
    d.out
}

fn compare(what: &str, want: &Outcome, got: &Outcome) {
    assert_eq!(got.tokens, want.tokens, "{what}: greedy tokens differ");
    let worst = want.logprobs.iter().zip(&got.logprobs).map(|(a, b)| max_abs_diff(a, b)).fold(0.0, f64::max);
    eprintln!("{what}: cache vs no cache max |Δ log-prob| = {worst:.2e}, {} tokens reused", got.cached);
    assert!(worst <= 1e-4, "{what}: log-probs differ by {worst}");
}

#[test]
fn the_cache_gives_the_no_cache_outputs_across_fixtures_and_tp() {
    for name in FIXTURES {
        let assets = assets(name);
        let prompts = prompt_ids(&assets);
        for tp in [1, 2] {
            let run = |prefix_cache| {
                let options = EngineOptions { tp, block_size: 4, prefix_cache, ..Default::default() };
                let engine = Engine::load(&assets, options).unwrap();
                let out = workload(&engine, &prompts);
                (out, engine.kv_usage())
            };
            let (want, off) = run(false);
            let (got, on) = run(true);
            assert_eq!(want.cached, 0);
            assert_eq!(off.prefix.cached_blocks, 0);
            // The second request reuses the system prompt (40 tokens = 10 blocks), the next turn
            // its whole first turn, the chunk the rest of the second prompt's blocks.
            assert!(got.cached >= 40 + 40 + 8, "{name} TP={tp}: only {} tokens reused", got.cached);
            assert_eq!(on.prefix.hit_tokens, got.cached as u64);
            compare(&format!("{name} TP={tp}"), &want, &got);
            assert_eq!((on.used_blocks, on.sequences), (0, 0), "{name} TP={tp}: blocks still held");
            assert!(on.prefix.cached_blocks > 0);
        }
    }
}

#[test]
fn eviction_under_pressure_keeps_outputs_and_accounting() {
    let assets = assets("llama-gqa-tied");
    let prompts = prompt_ids(&assets);
    // 32 blocks of 4 tokens: two live sequences fit, the cache must keep evicting.
    let run = |prefix_cache| {
        let options =
            EngineOptions { block_size: 4, kv_capacity_tokens: 128, prefix_cache, ..Default::default() };
        let engine = Engine::load(&assets, options).unwrap();
        let mut d = Driver::new(&engine);
        let mut id = 0;
        for round in 0..4 {
            for p in &prompts {
                // Each round's prompts are new (misses that fill the pool); each runs twice in a
                // row (the second time it hits), the repeat joining while the first decodes.
                let prompt: Vec<u32> = p.iter().cycle().take(40).map(|&t| (t + round * 3) % 512).collect();
                d.step(vec![(id + 1, prompt.clone())]);
                d.step(vec![(id + 2, prompt)]);
                d.step(vec![]);
                d.finish(id + 1);
                d.finish(id + 2);
                id += 2;
            }
        }
        let usage = engine.kv_usage();
        (std::mem::replace(&mut d.out, Outcome { logprobs: vec![], tokens: vec![], cached: 0 }), usage)
    };
    let (want, _) = run(false);
    let (got, on) = run(true);
    compare("llama-gqa-tied under pressure", &want, &got);
    assert!(got.cached > 0, "repeated prompts hit");
    assert!(on.prefix.evicted_blocks > 0, "the small pool evicts: {:?}", on.prefix);
    assert_eq!((on.used_blocks, on.sequences), (0, 0));
    assert!(on.prefix.cached_blocks as usize <= on.total_blocks);
}
