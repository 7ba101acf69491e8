//! The decode benchmark: a random Llama-architecture model generated directly on the device (no
//! file, no host copy of the weights), and timed batched decode steps through the engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, ensure, Result};
use candle_core::{DType, Device, Tensor};
use genarm_model::weights::TensorSource;
use genarm_model::{Engine, LlamaConfig, ModelAssets, StepSeq, TokenizerAssets};

/// Shape of the random model.
#[derive(Debug, Clone, Copy)]
pub struct BenchShape {
    /// Decoder layers.
    pub layers: usize,
    /// Residual width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Vocabulary (embedding and tied LM head rows).
    pub vocab: usize,
}

impl BenchShape {
    /// Llama 3.2 1B's shape (1.24 B parameters, tied embeddings): big enough that a decode step
    /// is bound by reading the weights from HBM.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub const LLAMA_1B: BenchShape =
        BenchShape { layers: 16, hidden: 2048, intermediate: 8192, heads: 32, kv_heads: 8, vocab: 128_256 };

    /// A toy shape for `--cpu-dry-run`.
    pub const TINY: BenchShape =
        BenchShape { layers: 2, hidden: 128, intermediate: 256, heads: 4, kv_heads: 2, vocab: 1024 };

    /// The engine config of this shape.
    pub fn config(&self) -> LlamaConfig {
        LlamaConfig {
            model_type: "llama".into(),
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            intermediate_size: self.intermediate,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: self.kv_heads,
            head_dim: self.hidden / self.heads,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    /// `layers=16 hidden=2048 ...`.
    pub fn describe(&self) -> String {
        format!(
            "layers={} hidden={} mlp={} heads={}/{} vocab={}",
            self.layers, self.hidden, self.intermediate, self.heads, self.kv_heads, self.vocab
        )
    }
}

/// Tensor names and shapes of a tied-embedding Llama in HF naming.
fn shapes(cfg: &LlamaConfig) -> BTreeMap<String, Vec<usize>> {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let mut m = BTreeMap::new();
    m.insert("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, h]);
    m.insert("model.norm.weight".to_string(), vec![h]);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("self_attn.q_proj.weight", vec![cfg.num_attention_heads * hd, h]),
            ("self_attn.k_proj.weight", vec![cfg.num_key_value_heads * hd, h]),
            ("self_attn.v_proj.weight", vec![cfg.num_key_value_heads * hd, h]),
            ("self_attn.o_proj.weight", vec![h, cfg.num_attention_heads * hd]),
            ("mlp.gate_proj.weight", vec![cfg.intermediate_size, h]),
            ("mlp.up_proj.weight", vec![cfg.intermediate_size, h]),
            ("mlp.down_proj.weight", vec![h, cfg.intermediate_size]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            m.insert(format!("{p}.{name}"), shape);
        }
    }
    m
}

/// Random weights made on the requested device when the engine asks for them: N(0, 0.02) for
/// matrices, ones for the norms.
struct RandomSource {
    location: PathBuf,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl TensorSource for RandomSource {
    fn location(&self) -> &Path {
        &self.location
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shapes.get(name).cloned()
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> genarm_model::Result<Tensor> {
        let shape = self.shapes.get(name).ok_or_else(|| genarm_model::ModelError::MissingTensor {
            name: name.into(),
            path: self.location.clone(),
        })?;
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape.as_slice(), dtype, device)?
        } else {
            Tensor::randn(0f32, 0.02f32, shape.as_slice(), device)?.to_dtype(dtype)?
        };
        Ok(t)
    }
}

/// Model assets for `shape` with random weights; `tokenizer` is borrowed from a fixture (the
/// engine never tokenizes).
pub fn random_assets(shape: &BenchShape, tokenizer: TokenizerAssets) -> Result<ModelAssets> {
    let config = shape.config();
    config.validate().map_err(|e| anyhow!("bench config: {e}"))?;
    let location = PathBuf::from(format!("<random {}>", shape.describe()));
    let tensors = Arc::new(RandomSource { location: location.clone(), shapes: shapes(&config) });
    Ok(ModelAssets { model_id: "random-llama".into(), path: location, config, tensors, tokenizer })
}

/// Parameters of `cfg` as [`random_assets`] builds it (tied embeddings counted once).
pub fn param_count(cfg: &LlamaConfig) -> u64 {
    shapes(cfg).values().map(|s| s.iter().product::<usize>() as u64).sum()
}

/// Timing of one batch size.
#[derive(Debug, Clone, Copy)]
pub struct DecodeTiming {
    /// Mean seconds per decode step.
    pub step_s: f64,
}

/// Prefills `batch` fresh sequences with `prompt` random tokens in one step, runs `warmup` decode
/// steps, then times `steps` more (one token per sequence per step, logits back on the host), and
/// releases the sequences.
pub fn decode(
    engine: &Engine,
    batch: usize,
    prompt: usize,
    warmup: usize,
    steps: usize,
    first_seq_id: u64,
) -> Result<DecodeTiming> {
    ensure!(batch > 0 && prompt > 0 && steps > 0, "batch, prompt and steps must be positive");
    let vocab = engine.config().vocab_size as u64;
    let mut rng = first_seq_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut token = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % vocab) as u32
    };
    let ids: Vec<u64> = (0..batch as u64).map(|i| first_seq_id + i).collect();
    let run = |seqs: Vec<StepSeq>| -> Result<()> {
        let out = engine.step(seqs).map_err(|e| anyhow!("step: {e}"))?;
        for r in out.results {
            r.map_err(|e| anyhow!("step: {e}"))?;
        }
        Ok(())
    };
    let result = (|| {
        run(ids
            .iter()
            .map(|&seq_id| StepSeq { seq_id, start_pos: 0, tokens: (0..prompt).map(|_| token()).collect() })
            .collect())?;
        let mut started = Instant::now();
        for s in 0..warmup + steps {
            if s == warmup {
                started = Instant::now();
            }
            run(ids
                .iter()
                .map(|&seq_id| StepSeq { seq_id, start_pos: prompt + s, tokens: vec![token()] })
                .collect())?;
        }
        Ok(DecodeTiming { step_s: started.elapsed().as_secs_f64() / steps as f64 })
    })();
    for &id in &ids {
        engine.release(id);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_1b_shape_has_a_billion_parameters() {
        let cfg = BenchShape::LLAMA_1B.config();
        cfg.validate().unwrap();
        let p = param_count(&cfg);
        assert!((1_200_000_000..1_300_000_000).contains(&p), "{p}");
    }
}
