//! The Llama-family architecture config, read from HF `config.json` (Llama 2/3, Mistral, Qwen2).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Llama 3 style RoPE frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    /// Overall scale factor of the context extension.
    pub factor: f32,
    /// Wavelengths longer than `original_max / low_freq_factor` are fully scaled.
    pub low_freq_factor: f32,
    /// Wavelengths shorter than `original_max / high_freq_factor` are left alone.
    pub high_freq_factor: f32,
    /// Context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
}

/// Everything the engine needs to know about a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `model_type` as written by transformers (`llama`, `mistral`, `qwen2`).
    pub model_type: String,
    /// Number of rows of the embedding and the LM head.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (GQA when smaller than `num_attention_heads`).
    pub num_key_value_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Optional Llama 3 frequency scaling.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on q, k and v projections (Qwen2, or Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on gate/up/down (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    /// Beginning-of-sequence id, when the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids (Llama 3 lists several).
    pub eos_token_ids: Vec<u32>,
}

/// The subset of transformers' config.json we read; everything else is ignored.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

const SUPPORTED: &[&str] = &["llama", "mistral", "qwen2"];

impl LlamaConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile {
                    path: path.to_owned(),
                    hint: "a HF model directory needs config.json next to its weights".into(),
                }
            } else {
                ModelError::BadFile { path: path.to_owned(), reason: e.to_string() }
            }
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses config.json text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::BadFile { path: path.to_owned(), reason: e.to_string() })?;
        let bad = |reason: String| ModelError::BadConfig { path: path.to_owned(), reason };
        let model_type = raw.model_type.clone().ok_or_else(|| bad("no model_type".into()))?;
        if !SUPPORTED.contains(&model_type.as_str()) {
            return Err(ModelError::UnsupportedModelType { model_type, path: path.to_owned() });
        }
        let need = |v: Option<usize>, name: &str| v.ok_or_else(|| bad(format!("no {name}")));
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(num_attention_heads);
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None => {
                if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
                    return Err(bad(format!(
                        "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
                    )));
                }
                hidden_size / num_attention_heads
            }
        };
        // transformers >= 4.56 moved rope_theta/rope_scaling into rope_parameters; read both.
        let rope_params = raw.rope_parameters.as_ref().filter(|v| v.is_object());
        let rope_theta = raw
            .rope_theta
            .or_else(|| rope_params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64))
            .unwrap_or(10_000.0) as f32;
        let scaling = raw.rope_scaling.as_ref().filter(|v| v.is_object()).or(rope_params);
        let rope_scaling = match scaling {
            Some(s) => parse_rope_scaling(s).map_err(bad)?,
            None => None,
        };
        let is_qwen2 = model_type == "qwen2";
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let cfg = LlamaConfig {
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: is_qwen2 || attention_bias,
            o_bias: !is_qwen2 && attention_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            bos_token_id: raw.bos_token_id.as_ref().and_then(Value::as_u64).map(|v| v as u32),
            eos_token_ids: token_ids(raw.eos_token_id.as_ref()),
            model_type,
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Checks the internal consistency of the dimensions.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_key_value_heads == 0 || self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if self.vocab_size == 0 || self.num_hidden_layers == 0 {
            return Err("vocab_size and num_hidden_layers must be positive".into());
        }
        Ok(())
    }

    /// Number of query heads that share one key/value head.
    pub fn gqa_group(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Number of parameters (weights and biases; a tied LM head counted once), for reporting.
    pub fn num_parameters(&self) -> usize {
        crate::tensors::ModelTensors::new(self).iter().map(|t| t.elem_count()).sum()
    }
}

fn parse_rope_scaling(s: &Value) -> std::result::Result<Option<Llama3RopeScaling>, String> {
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let f = |k: &str| {
                s.get(k)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| format!("rope_scaling of type llama3 lacks {k}"))
            };
            Ok(Some(Llama3RopeScaling {
                factor: f("factor")? as f32,
                low_freq_factor: f("low_freq_factor")? as f32,
                high_freq_factor: f("high_freq_factor")? as f32,
                original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
            }))
        }
        other => Err(format!("rope_scaling type {other:?} is not supported (supported: default, llama3)")),
    }
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<LlamaConfig> {
        LlamaConfig::from_json_str(json, Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size":100,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4"#;

    #[test]
    fn rope_theta_read_from_rope_parameters() {
        let c = parse(&format!(
            r#"{{"model_type":"llama",{BASE},"rope_parameters":{{"rope_type":"default","rope_theta":500000.0}}}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.head_dim, 16);
        assert!(c.rope_scaling.is_none());
    }

    #[test]
    fn llama3_scaling_and_eos_list() {
        let c = parse(&format!(
            r#"{{"model_type":"llama",{BASE},"rope_theta":500000,"eos_token_id":[1,2],
            "rope_scaling":{{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}}}"#
        ))
        .unwrap();
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert_eq!(c.rope_scaling.unwrap().original_max_position_embeddings, 8192);
    }

    #[test]
    fn qwen2_has_qkv_bias_only() {
        let c = parse(&format!(r#"{{"model_type":"qwen2",{BASE}}}"#)).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
    }

    #[test]
    fn unsupported_model_type_is_named() {
        let e = parse(&format!(r#"{{"model_type":"gpt_neox",{BASE}}}"#)).unwrap_err().to_string();
        assert!(e.contains("gpt_neox") && e.contains("llama"), "{e}");
    }

    #[test]
    fn missing_field_is_named() {
        let e = parse(r#"{"model_type":"llama","vocab_size":3}"#).unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");
    }
}
