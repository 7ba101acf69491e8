//! Writing a model (HF directory, GGUF file, or backbone with a LoRA adapter merged in) as a full
//! HF model directory that [`ModelAssets::open`] reads back identically and transformers loads.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::assets::ModelAssets;
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::tensors::ModelTensors;
use crate::weights::{load_checked, Split};

/// Names of every tensor the engine loads for `cfg`, in HF naming (no `lm_head.weight` when the
/// embeddings are tied), in [`ModelTensors::iter`] order.
pub fn engine_tensor_names(cfg: &LlamaConfig) -> Vec<String> {
    ModelTensors::new(cfg).iter().map(|t| t.name.clone()).collect()
}

/// transformers' `config.json` for `cfg`.
pub fn hf_config_json(cfg: &LlamaConfig, path: &Path) -> Result<Value> {
    let bad = |reason: String| ModelError::BadConfig { path: path.to_owned(), reason };
    let architectures = match cfg.model_type.as_str() {
        "llama" => "LlamaForCausalLM",
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        other => return Err(bad(format!("cannot export model_type {other:?}"))),
    };
    let mut c = json!({
        "architectures": [architectures],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta as f64,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    let o = c.as_object_mut().expect("a JSON object");
    if cfg.model_type == "qwen2" {
        if !cfg.qkv_bias || cfg.o_bias || cfg.mlp_bias {
            return Err(bad(
                "a qwen2 model has q/k/v biases and no o_proj or MLP biases; this one differs, so \
                 transformers' qwen2 cannot represent it"
                    .into(),
            ));
        }
        o.insert("use_sliding_window".into(), json!(false));
    } else {
        if cfg.qkv_bias != cfg.o_bias {
            return Err(bad(format!(
                "model_type {} has biases on q/k/v and o_proj together (attention_bias) or not at all; \
                 this one has q/k/v bias {} and o_proj bias {}",
                cfg.model_type, cfg.qkv_bias, cfg.o_bias
            )));
        }
        o.insert("attention_bias".into(), json!(cfg.qkv_bias));
        o.insert("mlp_bias".into(), json!(cfg.mlp_bias));
    }
    if let Some(s) = &cfg.rope_scaling {
        o.insert(
            "rope_scaling".into(),
            json!({
                "rope_type": "llama3",
                "factor": s.factor as f64,
                "low_freq_factor": s.low_freq_factor as f64,
                "high_freq_factor": s.high_freq_factor as f64,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            }),
        );
    }
    if let Some(b) = cfg.bos_token_id {
        o.insert("bos_token_id".into(), json!(b));
    }
    match cfg.eos_token_ids.as_slice() {
        [] => {}
        [one] => {
            o.insert("eos_token_id".into(), json!(one));
        }
        many => {
            o.insert("eos_token_id".into(), json!(many));
        }
    }
    Ok(c)
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("a JSON value serializes") + "\n";
    std::fs::write(path, text)
        .map_err(|e| ModelError::BadFile { path: path.to_owned(), reason: e.to_string() })
}

/// Writes `assets` as a full HF model directory in `out` (created if missing): `config.json`,
/// an f32 `model.safetensors` holding every tensor the engine loads (LoRA adapters merged;
/// no `lm_head.weight` when the embeddings are tied), `tokenizer.json`, `tokenizer_config.json`
/// (chat template, BOS/EOS, `add_bos_token`) and `generation_config.json`.
/// [`ModelAssets::open`] on `out` gives the same config, tokenizer and weights.
pub fn save_hf_dir(assets: &ModelAssets, out: &Path) -> Result<()> {
    let cfg = &assets.config;
    let io = |p: &Path, e: std::io::Error| ModelError::BadFile { path: p.to_owned(), reason: e.to_string() };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let config = hf_config_json(cfg, &assets.path)?;

    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    let src = assets.tensors.as_ref();
    for spec in ModelTensors::new(cfg).iter() {
        // The shape the engine will insist on when it reads the directory back, checked now so
        // a bad source fails here rather than at serving time.
        let t =
            load_checked(src, &spec.name, &spec.shape, Split::Replicated, 0, 1, DType::F32, &Device::Cpu)?;
        tensors.insert(spec.name.clone(), t.contiguous()?);
    }
    let weights = out.join("model.safetensors");
    let metadata: Option<std::collections::HashMap<String, String>> =
        Some([("format".to_owned(), "pt".to_owned())].into());
    safetensors::tensor::serialize_to_file(tensors.iter().map(|(k, v)| (k.as_str(), v)), metadata, &weights)
        .map_err(|e| ModelError::BadFile { path: weights.clone(), reason: format!("cannot write: {e}") })?;
    drop(tensors);

    let tok = &assets.tokenizer;
    let text_of = |id: Option<u32>| id.and_then(|i| tok.tokenizer.id_to_token(i));
    let mut tok_cfg = json!({
        "add_bos_token": tok.add_bos_token,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": cfg.max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let o = tok_cfg.as_object_mut().expect("a JSON object");
    if let Some(t) = &tok.chat_template {
        o.insert("chat_template".into(), json!(t));
    }
    if let Some(b) = text_of(tok.bos_token_id) {
        o.insert("bos_token".into(), json!(b));
    }
    if let Some(e) = text_of(tok.eos_token_ids.first().copied()) {
        o.insert("eos_token".into(), json!(e));
    }
    let mut gen = json!({ "do_sample": false });
    let g = gen.as_object_mut().expect("a JSON object");
    if let Some(b) = tok.bos_token_id {
        g.insert("bos_token_id".into(), json!(b));
    }
    match tok.eos_token_ids.as_slice() {
        [] => {}
        [one] => {
            g.insert("eos_token_id".into(), json!(one));
        }
        many => {
            g.insert("eos_token_id".into(), json!(many));
        }
    }

    write_json(&out.join("config.json"), &config)?;
    let tok_path = out.join("tokenizer.json");
    std::fs::write(&tok_path, &tok.json).map_err(|e| io(&tok_path, e))?;
    write_json(&out.join("tokenizer_config.json"), &tok_cfg)?;
    write_json(&out.join("generation_config.json"), &gen)?;
    // A stale template file would override tokenizer_config.json's on read.
    let stale = out.join("chat_template.jinja");
    if stale.exists() {
        std::fs::remove_file(&stale).map_err(|e| io(&stale, e))?;
    }
    Ok(())
}
