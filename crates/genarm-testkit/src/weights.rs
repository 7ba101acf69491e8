//! A fixture's random weights, in HF tensor names and layout, as an f32 `model.safetensors`.
//!
//! Scales keep every activation near unit size and give logits a standard deviation of about
//! [`LOGIT_STD`], so top-1/top-2 gaps stand far above f32 rounding noise and greedy decoding is
//! the same across implementations (cached vs. full forward, tensor parallel, transformers).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::rng;
use crate::spec::FixtureSpec;

/// Target standard deviation of the logits.
const LOGIT_STD: f64 = 6.0;
/// Standard deviation of the noise around 1 in RMSNorm weights.
const NORM_NOISE: f64 = 0.1;
/// Standard deviation of the q/k/v biases.
const BIAS_STD: f64 = 0.5;
/// Standard deviation of tied embeddings (untied ones are N(0, 1)); see [`Weights::head`].
const TIED_EMBED_STD: f64 = 0.25;

/// The tensors of one fixture, by name: shape and little-endian f32 bytes.
struct Weights {
    seed: u64,
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
}

impl Weights {
    /// Adds a tensor of `mean + std * N(0, 1)` values, drawn from a stream keyed by (seed, name).
    fn add(&mut self, name: String, shape: &[usize], mean: f64, std: f64) {
        let n: usize = shape.iter().product();
        let mut stream = rng::for_tensor(self.seed, &name);
        let mut bytes = Vec::with_capacity(4 * n);
        for _ in 0..n {
            bytes.extend_from_slice(&((mean + std * rng::normal(&mut stream)) as f32).to_le_bytes());
        }
        self.tensors.push((name, shape.to_vec(), bytes));
    }

    /// A projection `[rows, fan_in]`: N(0, 1/fan_in) keeps activations at unit scale.
    fn linear(&mut self, name: String, rows: usize, fan_in: usize) {
        self.add(name, &[rows, fan_in], 0.0, 1.0 / (fan_in as f64).sqrt());
    }

    /// An RMSNorm weight: 1 plus a little noise.
    fn norm(&mut self, name: String, h: usize) {
        self.add(name, &[h], 1.0, NORM_NOISE);
    }

    /// The final norm and the output projection: logits = norm(x) · W_outᵀ, and unit-RMS rows
    /// times N(0, s²) entries give logits of std s·sqrt(h).
    fn head(&mut self, spec: &FixtureSpec, vocab: usize) {
        let h = spec.hidden_size;
        let unit_head = LOGIT_STD / (h as f64).sqrt();
        if spec.tie_word_embeddings {
            // W_out is the embedding, so the final norm carries the scale. A token's own
            // embedding is still in the residual stream and adds ~Σ_j w_j e_j² / rms(x) to its
            // own logit: with weights near 1 and N(0, 1) embeddings, greedy decoding would only
            // repeat the last token. Zero-mean weights make that self-term random, and small
            // embeddings (next to the unit-scale layer outputs) make it small.
            self.add("model.norm.weight".into(), &[h], 0.0, unit_head / TIED_EMBED_STD);
        } else {
            self.norm("model.norm.weight".into(), h);
            self.add("lm_head.weight".into(), &[vocab, h], 0.0, unit_head);
        }
    }
}

/// All tensors of `spec` with `vocab` embedding rows.
fn weights(spec: &FixtureSpec, vocab: usize) -> Weights {
    let (h, i) = (spec.hidden_size, spec.intermediate_size);
    let q_dim = spec.num_attention_heads * spec.head_dim();
    let kv_dim = spec.num_key_value_heads * spec.head_dim();
    let mut w = Weights { seed: spec.seed, tensors: Vec::new() };
    let embed_std = if spec.tie_word_embeddings { TIED_EMBED_STD } else { 1.0 };
    w.add("model.embed_tokens.weight".into(), &[vocab, h], 0.0, embed_std);
    for l in 0..spec.num_hidden_layers {
        let p = format!("model.layers.{l}");
        w.norm(format!("{p}.input_layernorm.weight"), h);
        for (m, rows) in [("q", q_dim), ("k", kv_dim), ("v", kv_dim)] {
            w.linear(format!("{p}.self_attn.{m}_proj.weight"), rows, h);
            if spec.qkv_bias() {
                w.add(format!("{p}.self_attn.{m}_proj.bias"), &[rows], 0.0, BIAS_STD);
            }
        }
        w.linear(format!("{p}.self_attn.o_proj.weight"), h, q_dim);
        w.norm(format!("{p}.post_attention_layernorm.weight"), h);
        w.linear(format!("{p}.mlp.gate_proj.weight"), i, h);
        w.linear(format!("{p}.mlp.up_proj.weight"), i, h);
        w.linear(format!("{p}.mlp.down_proj.weight"), h, i);
    }
    w.head(spec, vocab);
    w
}

/// Writes `model.safetensors` for `spec` (f32, `{"format": "pt"}` metadata like transformers).
pub(crate) fn write_safetensors(path: &Path, spec: &FixtureSpec, vocab: usize) -> Result<()> {
    let w = weights(spec, vocab);
    let views = w
        .tensors
        .iter()
        .map(|(name, shape, bytes)| Ok((name.as_str(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata))?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
