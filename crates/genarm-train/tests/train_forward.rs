//! The training forward equals the serving engine's `forward_full`: without an adapter, with a
//! non-zero LoRA adapter merged into the served model (unmerged == merged), and batched with
//! padding (each sequence's response log-prob equals the one computed from its own logits).

mod common;

use candle_core::DType;
use genarm_model::{Engine, EngineOptions};
use genarm_train::data::PairExample;
use genarm_train::trainer::{lora_adapter, pair_logprobs};

const TOL: f64 = 1e-4;

fn tokens(vocab: u32) -> Vec<Vec<u32>> {
    common::random_pairs(3, vocab, 21)
        .into_iter()
        .map(|p| [p.prompt, p.chosen, p.rejected].concat())
        .chain([(0..40).map(|i| (i * 37 + 5) % vocab).collect()])
        .collect()
}

#[test]
fn training_forward_equals_engine_without_and_with_merged_adapter() {
    for name in common::FIXTURES {
        let assets = common::assets(name);
        let vocab = assets.config.vocab_size as u32;
        let model = common::model(&assets, common::lora(4, 8.0), DType::F32);
        let engine = Engine::load(&assets, EngineOptions::default()).unwrap();
        let mut worst: f64 = 0.0;
        for t in tokens(vocab) {
            let d = common::max_abs_diff(&model.logits(&t).unwrap(), &engine.forward_full(&t).unwrap());
            worst = worst.max(d);
        }
        println!("{name}: base, max |Δ logit| {worst:.2e}");
        assert!(worst <= TOL, "{name}: training forward differs from the engine by {worst}");

        // A non-zero adapter: unmerged in the trainer, merged by genarm-model into the served weights.
        common::randomize_b(&model, 0.05, 3);
        let dir = tempfile::tempdir().unwrap();
        let adapter = lora_adapter(&model, None).unwrap().expect("a LoRA model has an adapter");
        let merged = common::assets(name).with_lora(adapter, dir.path()).unwrap();
        let merged_engine = Engine::load(&merged, EngineOptions::default()).unwrap();
        let (mut worst, mut moved): (f64, f64) = (0.0, 0.0);
        for t in tokens(vocab) {
            let ours = model.logits(&t).unwrap();
            worst = worst.max(common::max_abs_diff(&ours, &merged_engine.forward_full(&t).unwrap()));
            moved = moved.max(common::max_abs_diff(&ours, &engine.forward_full(&t).unwrap()));
        }
        println!("{name}: adapter moves logits by up to {moved:.3}; unmerged vs merged max |Δ| {worst:.2e}");
        assert!(
            moved > 0.05,
            "{name}: the adapter barely changes the model ({moved}); the check would be weak"
        );
        assert!(worst <= TOL, "{name}: unmerged LoRA differs from the merged model by {worst}");
    }
}

#[test]
fn batched_response_logprobs_equal_per_sequence_reference() {
    for name in common::FIXTURES {
        let assets = common::assets(name);
        let model = common::model(&assets, common::lora(4, 8.0), DType::F32);
        common::randomize_b(&model, 0.05, 4);
        let engine_assets = common::assets(name);
        let dir = tempfile::tempdir().unwrap();
        let merged =
            engine_assets.with_lora(lora_adapter(&model, None).unwrap().unwrap(), dir.path()).unwrap();
        let engine = Engine::load(&merged, EngineOptions::default()).unwrap();
        let pairs = common::random_pairs(5, assets.config.vocab_size as u32, 8);
        let refs: Vec<&PairExample> = pairs.iter().collect();
        let (c, r, batch) = pair_logprobs(&model, &refs, false).unwrap();
        assert!(batch.ids.len() > batch.real_tokens, "the batch must hold padding");
        let (c, r) = (c.to_vec1::<f32>().unwrap(), r.to_vec1::<f32>().unwrap());
        let mut worst: f64 = 0.0;
        for (i, p) in pairs.iter().enumerate() {
            for (resp, got) in [(&p.chosen, c[i]), (&p.rejected, r[i])] {
                let seq = [p.prompt.clone(), resp.clone()].concat();
                let logits = engine.forward_full(&seq).unwrap();
                let want = common::response_logprob_from_logits(&logits, p.prompt.len(), resp);
                worst = worst.max((got as f64 - want).abs());
            }
        }
        println!("{name}: batched response log-prob sums vs engine, max |Δ| {worst:.2e}");
        assert!(worst <= TOL, "{name}: {worst}");
    }
}
