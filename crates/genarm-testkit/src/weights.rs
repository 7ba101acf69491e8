//! A fixture's random weights, in HF tensor names and layout, as an f32 `model.safetensors`.
//!
//! Scales are chosen so that a forward pass is well conditioned and the logits have a standard
//! deviation of about [`LOGIT_STD`], so top-1/top-2 gaps sit far above f32 rounding noise and greedy
//! decoding is stable across implementations (cached vs. full forward, tensor parallel, ...).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::rng::Rng;
use crate::spec::FixtureSpec;

/// Target standard deviation of the logits.
const LOGIT_STD: f64 = 6.0;
/// Standard deviation of the noise around 1 in RMSNorm weights.
const NORM_NOISE: f64 = 0.1;
/// Standard deviation of the q/k/v biases.
const BIAS_STD: f64 = 0.5;
/// Standard deviation of tied embeddings (untied ones are N(0, 1)); see [`tensors`].
const TIED_EMBED_STD: f64 = 0.25;

/// One tensor: shape and little-endian f32 bytes.
struct Tensor {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Random f32 values `mean + std * N(0, 1)`, drawn from a stream keyed by `(seed, name)`.
fn normal(seed: u64, name: &str, shape: Vec<usize>, mean: f64, std: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut rng = Rng::for_tensor(seed, name);
    let mut bytes = Vec::with_capacity(4 * n);
    for _ in 0..n {
        bytes.extend_from_slice(&((mean + std * rng.normal()) as f32).to_le_bytes());
    }
    Tensor { shape, bytes }
}

/// All tensors of `spec` with `vocab` embedding rows, by HF name.
fn tensors(spec: &FixtureSpec, vocab: usize) -> Vec<(String, Tensor)> {
    let (h, i, seed) = (spec.hidden_size, spec.intermediate_size, spec.seed);
    let q_dim = spec.num_attention_heads * spec.head_dim();
    let kv_dim = spec.num_key_value_heads * spec.head_dim();
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, mean: f64, std: f64| {
        let t = normal(seed, &name, shape, mean, std);
        out.push((name, t));
    };
    // A projection [out, in]: N(0, 1/in) keeps activations at unit scale.
    let proj = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();

    let embed_std = if spec.tie_word_embeddings {
        TIED_EMBED_STD
    } else {
        1.0
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![vocab, h],
        0.0,
        embed_std,
    );
    for l in 0..spec.num_hidden_layers {
        let p = format!("model.layers.{l}");
        add(
            format!("{p}.input_layernorm.weight"),
            vec![h],
            1.0,
            NORM_NOISE,
        );
        for (m, rows) in [("q", q_dim), ("k", kv_dim), ("v", kv_dim)] {
            add(
                format!("{p}.self_attn.{m}_proj.weight"),
                vec![rows, h],
                0.0,
                proj(h),
            );
            if spec.qkv_bias() {
                add(
                    format!("{p}.self_attn.{m}_proj.bias"),
                    vec![rows],
                    0.0,
                    BIAS_STD,
                );
            }
        }
        add(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, q_dim],
            0.0,
            proj(q_dim),
        );
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            1.0,
            NORM_NOISE,
        );
        add(
            format!("{p}.mlp.gate_proj.weight"),
            vec![i, h],
            0.0,
            proj(h),
        );
        add(format!("{p}.mlp.up_proj.weight"), vec![i, h], 0.0, proj(h));
        add(
            format!("{p}.mlp.down_proj.weight"),
            vec![h, i],
            0.0,
            proj(i),
        );
    }
    // logits = norm(x) · W_out: unit-RMS rows of N(0, s²) entries give std s·sqrt(h).
    let unit_head = LOGIT_STD / (h as f64).sqrt();
    if spec.tie_word_embeddings {
        // W_out is the embedding, so the final norm carries the scale. A token's own embedding
        // is still in the residual stream and adds ~sum_j w_j e_j^2 / rms(x) to its own logit:
        // with weights near 1 and N(0, 1) embeddings, greedy decoding would only repeat the last
        // token. Zero-mean weights make that self-term random, and small embeddings (relative
        // to the unit-scale layer outputs) make it small.
        add(
            "model.norm.weight".into(),
            vec![h],
            0.0,
            unit_head / embed_std,
        );
    } else {
        add("model.norm.weight".into(), vec![h], 1.0, NORM_NOISE);
        add("lm_head.weight".into(), vec![vocab, h], 0.0, unit_head);
    }
    out
}

/// Writes `model.safetensors` for `spec` (f32, `{"format": "pt"}` metadata like transformers).
pub(crate) fn write_safetensors(path: &Path, spec: &FixtureSpec, vocab: usize) -> Result<()> {
    let tensors = tensors(spec, vocab);
    let views = tensors
        .iter()
        .map(|(name, t)| {
            Ok((
                name.as_str(),
                TensorView::new(Dtype::F32, t.shape.clone(), &t.bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata))?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
