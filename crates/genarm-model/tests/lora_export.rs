//! `save_hf_dir`: a fixture, a LoRA-merged fixture and SmolLM2's GGUF (plain and with an adapter)
//! written as HF directories read back with the same config, tokenizer and logits; the merged
//! models' logits differ from their backbone's.

use std::path::Path;

use genarm_model::{save_hf_dir, Engine, EngineOptions, ModelAssets};
use genarm_testkit::lora::{self, LoraDims};
use genarm_testkit::{fixture_dir, PROMPTS};

/// Every module an adapter may target.
const TARGETS: &[&str] = &genarm_model::lora::TARGET_MODULES;

/// Logits at every position of every prompt.
fn logits(assets: &ModelAssets, prompts: &[&str]) -> Vec<Vec<f32>> {
    let engine = Engine::load(assets, EngineOptions { kv_capacity_tokens: 256, ..Default::default() })
        .unwrap_or_else(|e| panic!("load {}: {e}", assets.model_id));
    let mut out = Vec::new();
    for p in prompts {
        let ids = assets.tokenizer.tokenizer.encode(*p, false).unwrap().get_ids().to_vec();
        let t = engine.forward_full(&ids).unwrap();
        out.extend(t.to_vec2::<f32>().unwrap());
    }
    out
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (*p as f64 - *q as f64).abs())
        })
        .fold(0.0, f64::max)
}

/// Exports `assets`, reopens the directory, and checks config, tokenizer and logits agree.
/// Returns the reopened model's logits.
fn round_trip(assets: &ModelAssets, out: &Path, prompts: &[&str]) -> Vec<Vec<f32>> {
    save_hf_dir(assets, out).unwrap();
    assert!(!out.join("chat_template.jinja").exists());
    let back = ModelAssets::open(out).unwrap();
    assert_eq!(back.config, assets.config, "config of {}", assets.model_id);
    let (t1, t2) = (&assets.tokenizer, &back.tokenizer);
    assert_eq!(t1.json, t2.json);
    assert_eq!(t1.chat_template, t2.chat_template);
    assert_eq!(t1.bos_token_id, t2.bos_token_id);
    assert_eq!(t1.eos_token_ids, t2.eos_token_ids);
    assert_eq!(t1.add_bos_token, t2.add_bos_token);
    let weights =
        safetensors::SafeTensors::deserialize(&std::fs::read(out.join("model.safetensors")).unwrap())
            .unwrap()
            .names()
            .len();
    assert_eq!(weights as u64, genarm_model::model::tensor_count(&assets.config), "tensors written");
    let before = logits(assets, prompts);
    let after = logits(&back, prompts);
    let d = max_diff(&before, &after);
    println!(
        "{}: export round trip, max |Δ logit| = {d:.2e} over {} positions",
        assets.model_id,
        before.len()
    );
    assert!(d <= 1e-6, "{}: {d}", assets.model_id);
    after
}

#[test]
fn fixtures_plain_and_merged_round_trip() {
    for fixture in ["llama-gqa-tied", "qwen2-bias"] {
        let tmp = tempfile::tempdir().unwrap();
        let plain = ModelAssets::open(&fixture_dir(fixture)).unwrap();
        let base_logits = round_trip(&plain, &tmp.path().join("plain"), PROMPTS);
        if fixture == "llama-gqa-tied" {
            let cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(tmp.path().join("plain/config.json")).unwrap())
                    .unwrap();
            assert_eq!(cfg["tie_word_embeddings"], true);
            assert_eq!(cfg["rope_scaling"]["rope_type"], "llama3");
        }

        let adapter = tmp.path().join("arm");
        lora::write_random_adapter(&fixture_dir(fixture), &adapter, 4, TARGETS, 11, 0.5).unwrap();
        let merged = ModelAssets::open(&adapter).unwrap();
        let merged_logits = round_trip(&merged, &tmp.path().join("merged"), PROMPTS);
        let moved = max_diff(&base_logits, &merged_logits);
        println!("{fixture}: merged vs backbone, max |Δ logit| = {moved:.3}");
        assert!(moved > 0.5, "{fixture}: the adapter does not move the logits ({moved})");
    }
}

#[test]
fn smollm2_gguf_plain_and_merged_round_trip() {
    let gguf = genarm_testkit::smollm2::gguf_path().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let plain = ModelAssets::open(&gguf).unwrap();
    let prompts = &PROMPTS[1..3];
    let base_logits = round_trip(&plain, &tmp.path().join("plain"), prompts);

    let c = &plain.config;
    let dims = LoraDims {
        num_layers: c.num_hidden_layers,
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        q_out: c.num_attention_heads * c.head_dim,
        kv_out: c.num_key_value_heads * c.head_dim,
    };
    let adapter = tmp.path().join("smol-arm");
    let base = gguf.to_str().unwrap();
    lora::write_random_adapter_with(&dims, Some(base), &adapter, 2, &["q_proj", "v_proj"], 5, 0.5).unwrap();
    let merged = ModelAssets::open(&adapter).unwrap();
    assert_eq!(merged.model_id, "smol-arm");
    let merged_logits = round_trip(&merged, &tmp.path().join("merged"), prompts);
    let moved = max_diff(&base_logits, &merged_logits);
    println!("smollm2: merged vs backbone, max |Δ logit| = {moved:.3}");
    assert!(moved > 0.1, "the adapter does not move SmolLM2's logits ({moved})");
}
