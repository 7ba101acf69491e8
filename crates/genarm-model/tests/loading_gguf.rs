//! GGUF loading: a GGUF and a safetensors export of the same weights give the same logits and
//! tokens; truncated or incomplete GGUF files give errors naming the file; SmolLM2's GGUF runs.
//!
//! The GGUF files are written here from the committed fixtures the way llama.cpp's
//! `convert_hf_to_gguf.py` writes them: GGUF tensor names, q/k rows permuted for llama,
//! tokenizer vocabulary and merges in the `tokenizer.ggml.*` metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use genarm_model::{Engine, EngineOptions, LlamaConfig, ModelAssets, ModelError};
use serde_json::Value as Json;

/// Qwen2's split regex, as the fixtures' tokenizer.json spells it.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF's name of an HF tensor, written independently of the crate's mapping.
fn gguf_name(hf: &str) -> String {
    let top = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = top.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap_or_else(|| panic!("unexpected tensor {hf}"));
    let (layer, rest) = rest.split_once('.').unwrap();
    let renamed = rest
        .replace("self_attn.q_proj", "attn_q")
        .replace("self_attn.k_proj", "attn_k")
        .replace("self_attn.v_proj", "attn_v")
        .replace("self_attn.o_proj", "attn_output")
        .replace("mlp.gate_proj", "ffn_gate")
        .replace("mlp.up_proj", "ffn_up")
        .replace("mlp.down_proj", "ffn_down")
        .replace("post_attention_layernorm", "ffn_norm")
        .replace("input_layernorm", "attn_norm");
    format!("blk.{layer}.{renamed}")
}

/// llama.cpp's `LlamaModel.permute`: `w.reshape(n_head, 2, d/2, ..).swapaxes(1, 2)`.
fn llama_cpp_permute(w: &Tensor, n_head: usize) -> Tensor {
    let dims = w.dims().to_vec();
    let mut split = vec![n_head, 2, dims[0] / n_head / 2];
    split.extend_from_slice(&dims[1..]);
    w.reshape(split).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().reshape(dims).unwrap()
}

/// The `tokenizer.ggml.pre` that reproduces a fixture's tokenizer.json pre-tokenizer.
fn pre_of(tokenizer: &Json) -> &'static str {
    let pre = &tokenizer["pre_tokenizer"];
    if pre["type"] == "ByteLevel" && pre["use_regex"] != false {
        return "default";
    }
    if pre["type"] == "Sequence" {
        let steps = pre["pretokenizers"].as_array().unwrap();
        if steps.len() == 2
            && steps[0]["type"] == "Split"
            && steps[0]["pattern"]["Regex"] == QWEN2_SPLIT
            && steps[1]["type"] == "ByteLevel"
        {
            assert_eq!(tokenizer["normalizer"]["type"], "NFC", "a Qwen2 pre-tokenizer comes with NFC");
            return "qwen2";
        }
    }
    panic!("the fixture's pre-tokenizer has no GGUF equivalent in this test: {pre}");
}

/// The `tokenizer.ggml.*` metadata of a fixture's tokenizer.json and tokenizer_config.json.
fn tokenizer_metadata(dir: &Path, config: &LlamaConfig) -> Vec<(String, Value)> {
    let tok: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    let tok_cfg: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    let mut by_id: HashMap<u64, (String, i32)> = HashMap::new();
    for (token, id) in tok["model"]["vocab"].as_object().unwrap() {
        by_id.insert(id.as_u64().unwrap(), (token.clone(), 1));
    }
    for added in tok["added_tokens"].as_array().unwrap() {
        let kind = if added["special"] == true { 3 } else { 4 };
        by_id.insert(added["id"].as_u64().unwrap(), (added["content"].as_str().unwrap().to_owned(), kind));
    }
    let n = by_id.len() as u64;
    let (tokens, types): (Vec<Value>, Vec<Value>) = (0..n)
        .map(|i| {
            let (t, kind) =
                by_id.remove(&i).unwrap_or_else(|| panic!("vocabulary ids are not dense: {i} missing"));
            (Value::String(t), Value::I32(kind))
        })
        .unzip();
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Json::String(s) => Value::String(s.clone()),
            Json::Array(pair) => {
                Value::String(format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()))
            }
            other => panic!("unexpected merge {other}"),
        })
        .collect();
    let mut md = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre_of(&tok).into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(tok_cfg["add_bos_token"] == true)),
    ];
    if let Some(bos) = config.bos_token_id {
        md.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)));
    }
    if let Some(&eos) = config.eos_token_ids.first() {
        md.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)));
    }
    if let Some(t) = tok_cfg["chat_template"].as_str() {
        md.push(("tokenizer.chat_template".into(), Value::String(t.into())));
    }
    md
}

/// Writes fixture `name` as a GGUF of f32 tensors, as llama.cpp's converter would; `skip`
/// leaves out one GGUF tensor.
fn write_gguf(name: &str, out: &Path, skip: Option<&str>) -> PathBuf {
    let dir = genarm_testkit::fixture_dir(name);
    let hf = ModelAssets::open(&dir).unwrap_or_else(|e| panic!("open fixture {name}: {e}"));
    let c = &hf.config;
    let arch = c.model_type.as_str();
    assert!(
        c.rope_scaling.is_none(),
        "{name}: GGUF files store RoPE scaling as rope_freqs, unsupported here"
    );

    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name.into())),
        (format!("{arch}.block_count"), Value::U32(c.num_hidden_layers as u32)),
        (format!("{arch}.context_length"), Value::U32(c.max_position_embeddings as u32)),
        (format!("{arch}.embedding_length"), Value::U32(c.hidden_size as u32)),
        (format!("{arch}.feed_forward_length"), Value::U32(c.intermediate_size as u32)),
        (format!("{arch}.attention.head_count"), Value::U32(c.num_attention_heads as u32)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(c.num_key_value_heads as u32)),
        (format!("{arch}.attention.key_length"), Value::U32(c.head_dim as u32)),
        (format!("{arch}.attention.value_length"), Value::U32(c.head_dim as u32)),
        (format!("{arch}.rope.dimension_count"), Value::U32(c.head_dim as u32)),
        (format!("{arch}.rope.freq_base"), Value::F32(c.rope_theta)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(c.rms_norm_eps as f32)),
    ];
    md.extend(tokenizer_metadata(&dir, c));

    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for hf_name in names {
        let gname = gguf_name(hf_name);
        if Some(gname.as_str()) == skip {
            continue;
        }
        let mut t = weights[hf_name].clone();
        if arch == "llama" {
            if hf_name.contains("self_attn.q_proj") {
                t = llama_cpp_permute(&t, c.num_attention_heads);
            } else if hf_name.contains("self_attn.k_proj") {
                t = llama_cpp_permute(&t, c.num_key_value_heads);
            }
        }
        tensors.push((gname, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }

    let path = out.join(format!("{name}.gguf"));
    let mut file = std::fs::File::create(&path).unwrap();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &md_refs, &t_refs).unwrap();
    path
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn encode(assets: &ModelAssets, text: &str, special: bool) -> Vec<u32> {
    assets.tokenizer.tokenizer.encode(text, special).unwrap().get_ids().to_vec()
}

/// Loading a GGUF and a safetensors export of the same weights gives the same logits and tokens.
fn same_as_safetensors(name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let gguf_path = write_gguf(name, tmp.path(), None);
    let hf = ModelAssets::open(&genarm_testkit::fixture_dir(name)).unwrap();
    let gguf = ModelAssets::open(&gguf_path).unwrap_or_else(|e| panic!("open {name}.gguf: {e}"));

    let (a, b) = (&hf.config, &gguf.config);
    assert_eq!(b.model_type, a.model_type);
    assert_eq!(
        (b.vocab_size, b.hidden_size, b.intermediate_size, b.num_hidden_layers),
        (a.vocab_size, a.hidden_size, a.intermediate_size, a.num_hidden_layers)
    );
    assert_eq!(
        (b.num_attention_heads, b.num_key_value_heads, b.head_dim),
        (a.num_attention_heads, a.num_key_value_heads, a.head_dim)
    );
    assert_eq!(
        (b.rope_theta, b.rms_norm_eps, b.max_position_embeddings),
        (a.rope_theta, a.rms_norm_eps, a.max_position_embeddings)
    );
    assert_eq!(
        (b.tie_word_embeddings, b.qkv_bias, b.o_bias, b.mlp_bias),
        (a.tie_word_embeddings, a.qkv_bias, a.o_bias, a.mlp_bias)
    );
    assert_eq!(gguf.model_id, name);

    assert_eq!(gguf.tokenizer.chat_template, hf.tokenizer.chat_template);
    assert_eq!(gguf.tokenizer.tokenizer.get_vocab_size(true), hf.tokenizer.tokenizer.get_vocab_size(true));
    for prompt in genarm_testkit::PROMPTS {
        for special in [false, true] {
            let ids = encode(&hf, prompt, special);
            assert_eq!(
                encode(&gguf, prompt, special),
                ids,
                "{name}: {prompt:?} (add_special_tokens={special})"
            );
            assert_eq!(gguf.tokenizer.tokenizer.decode(&ids, false).unwrap(), *prompt);
        }
    }

    let e_hf = Engine::load(&hf, EngineOptions::default()).unwrap();
    let e_gguf =
        Engine::load(&gguf, EngineOptions::default()).unwrap_or_else(|e| panic!("load {name}.gguf: {e}"));
    for prompt in genarm_testkit::PROMPTS {
        let ids = encode(&hf, prompt, false);
        let want = e_hf.forward_full(&ids).unwrap();
        let got = e_gguf.forward_full(&ids).unwrap();
        let d = max_abs_diff(&want, &got);
        assert!(d <= 1e-5, "{name}: {prompt:?}: max |Δ logit| = {d}");
    }
}

#[test]
fn gguf_matches_safetensors_llama_mha() {
    same_as_safetensors("llama-mha");
}

#[test]
fn gguf_matches_safetensors_qwen2_bias() {
    same_as_safetensors("qwen2-bias");
}

/// Without the un-permutation the llama q/k rows would be scrambled: check the test notices.
#[test]
fn llama_permutation_matters() {
    let hf = ModelAssets::open(&genarm_testkit::fixture_dir("llama-mha")).unwrap();
    let q = hf
        .tensors
        .load("model.layers.0.self_attn.q_proj.weight", candle_core::DType::F32, &Device::Cpu)
        .unwrap();
    let p = llama_cpp_permute(&q, hf.config.num_attention_heads);
    assert!(max_abs_diff(&q, &p) > 1e-3);
}

#[test]
fn truncated_gguf_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_gguf("llama-mha", tmp.path(), None);
    let full = std::fs::read(&path).unwrap();
    // Cut in the tensor data (past the at most 31 bytes of padding), in the tensor directory, and
    // in the metadata.
    for keep in [full.len() - 40, full.len() / 2, 64, 8, 0] {
        std::fs::write(&path, &full[..keep]).unwrap();
        let e = match ModelAssets::open(&path) {
            Err(e) => e,
            Ok(_) => panic!("a GGUF cut to {keep} of {} bytes opened", full.len()),
        };
        assert!(matches!(e, ModelError::BadFile { .. }), "cut to {keep}: {e}");
        assert!(e.to_string().contains("llama-mha.gguf"), "cut to {keep}: {e}");
    }
}

#[test]
fn missing_gguf_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_gguf("llama-mha", tmp.path(), Some("blk.1.ffn_up.weight"));
    let assets = ModelAssets::open(&path).unwrap();
    let e = Engine::load(&assets, EngineOptions::default()).err().expect("a tensor is missing");
    let msg = e.to_string();
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("model.layers.1.mlp.up_proj.weight") && msg.contains("llama-mha.gguf"), "{msg}");
}

#[test]
fn unsupported_architecture_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("falcon.gguf");
    let arch = Value::String("falcon".into());
    let mut file = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut file, &[("general.architecture", &arch)], &[]).unwrap();
    drop(file);
    let e = ModelAssets::open(&path).err().expect("falcon is not served");
    assert!(matches!(e, ModelError::UnsupportedModelType { .. }), "{e}");
    assert!(e.to_string().contains("falcon"), "{e}");
}

/// Greedy continuation of `prompt` (no KV cache), up to `max` tokens or the first EOS.
fn greedy(engine: &Engine, assets: &ModelAssets, prompt: &str, max: usize) -> String {
    let mut ids = encode(assets, prompt, true);
    let start = ids.len();
    for _ in 0..max {
        let logits = engine.forward_full(&ids).unwrap();
        let last = logits.get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap();
        let best = last.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
        ids.push(best);
        if assets.tokenizer.eos_token_ids.contains(&best) {
            break;
        }
    }
    assets.tokenizer.tokenizer.decode(&ids[start..], false).unwrap()
}

/// The real SmolLM2 GGUF (Q4_1/Q8_0, llama q/k permutation) loads and answers sensibly. Left
/// permuted, the q/k rows still give a rotary encoding (pairs within one half), so the model
/// stays fluent-looking but loses these answers ("The answer is:\nThe answer is: ...").
#[test]
fn smollm2_answers_sensibly() {
    let path = genarm_testkit::smollm2::gguf_path().unwrap_or_else(|e| panic!("{e}"));
    let assets = ModelAssets::open(&path).unwrap();
    let engine = Engine::load(&assets, EngineOptions::default()).unwrap();
    let chat = |q: &str| format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
    let france = greedy(&engine, &assets, &chat("What is the capital of France?"), 12);
    assert!(france.contains("Paris"), "{france:?}");
    let primes = greedy(&engine, &assets, &chat("List the first five prime numbers."), 24);
    assert!(primes.contains("2, 3, 5, 7"), "{primes:?}");
}
