//! The tensors of a Llama-family decoder in HF naming and layout: every name, its shape, and which
//! projections carry a bias. The serving load, the HF export and genarm-train's forward all read
//! this one description, so what one writes the others find.

use crate::config::LlamaConfig;

/// The token embedding, `[vocab, hidden]`.
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
/// The final RMSNorm's weight, `[hidden]`.
pub const FINAL_NORM: &str = "model.norm.weight";
/// The LM head, `[vocab, hidden]`; absent when the embeddings are tied.
pub const LM_HEAD: &str = "lm_head.weight";

/// One of the seven linear projections of a decoder layer (also what a LoRA adapter may target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl Projection {
    /// Every projection, in layer order. genarm-train numbers its LoRA seed streams by this
    /// order, so reordering it changes every seeded LoRA initialization.
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// The HF module name (`q_proj`, ...), as PEFT's `target_modules` lists it.
    pub const fn module_name(self) -> &'static str {
        match self {
            Projection::Q => "q_proj",
            Projection::K => "k_proj",
            Projection::V => "v_proj",
            Projection::O => "o_proj",
            Projection::Gate => "gate_proj",
            Projection::Up => "up_proj",
            Projection::Down => "down_proj",
        }
    }

    /// The block the projection lives in: `self_attn` or `mlp`.
    pub const fn block(self) -> &'static str {
        match self {
            Projection::Q | Projection::K | Projection::V | Projection::O => "self_attn",
            Projection::Gate | Projection::Up | Projection::Down => "mlp",
        }
    }

    /// The projection of HF module name `name` (`q_proj`, ...).
    pub fn from_module_name(name: &str) -> Option<Projection> {
        Projection::ALL.into_iter().find(|p| p.module_name() == name)
    }

    /// Reads a short (`q`) or full (`q_proj`) name, as command lines give them.
    pub fn parse(s: &str) -> Option<Projection> {
        let s = s.trim();
        Projection::ALL
            .into_iter()
            .find(|p| s == p.module_name() || s == p.module_name().trim_end_matches("_proj"))
    }

    /// `(out, in)` features of this projection.
    pub fn dims(self, cfg: &LlamaConfig) -> (usize, usize) {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (q, kv) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        match self {
            Projection::Q => (q, h),
            Projection::K | Projection::V => (kv, h),
            Projection::O => (h, q),
            Projection::Gate | Projection::Up => (i, h),
            Projection::Down => (h, i),
        }
    }

    /// Whether this projection has a bias under `cfg`.
    pub fn has_bias(self, cfg: &LlamaConfig) -> bool {
        match self {
            Projection::Q | Projection::K | Projection::V => cfg.qkv_bias,
            Projection::O => cfg.o_bias,
            Projection::Gate | Projection::Up | Projection::Down => cfg.mlp_bias,
        }
    }

    /// The HF prefix of this projection in decoder layer `layer` (`model.layers.3.self_attn.q_proj`).
    pub fn hf_prefix(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}", self.block(), self.module_name())
    }
}

/// One tensor: its HF name and full (unsharded) shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The HF name.
    pub name: String,
    /// The shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    fn new(name: impl Into<String>, shape: &[usize]) -> Self {
        Self { name: name.into(), shape: shape.to_vec() }
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A linear projection's tensors: the weight `[out, in]` and, when the config has one, the bias
/// `[out]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearTensors {
    /// Which projection.
    pub projection: Projection,
    /// `{prefix}.weight`, `[out, in]`.
    pub weight: TensorSpec,
    /// `{prefix}.bias`, `[out]`.
    pub bias: Option<TensorSpec>,
}

/// The tensors of one decoder layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerTensors {
    /// The RMSNorm before attention, `[hidden]`.
    pub input_norm: TensorSpec,
    /// The seven projections, in [`Projection::ALL`] order.
    pub linears: Vec<LinearTensors>,
    /// The RMSNorm before the MLP, `[hidden]`.
    pub post_norm: TensorSpec,
}

impl LayerTensors {
    /// The tensors of projection `p`.
    pub fn linear(&self, p: Projection) -> &LinearTensors {
        &self.linears[p as usize]
    }
}

/// Every tensor a decoder's forward reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelTensors {
    /// [`EMBED_TOKENS`].
    pub embed: TensorSpec,
    /// The decoder layers, in order.
    pub layers: Vec<LayerTensors>,
    /// [`FINAL_NORM`].
    pub norm: TensorSpec,
    /// [`LM_HEAD`], or `None` when the embeddings are tied.
    pub lm_head: Option<TensorSpec>,
}

impl ModelTensors {
    /// The tensors of `cfg`'s architecture.
    pub fn new(cfg: &LlamaConfig) -> Self {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| LayerTensors {
                input_norm: TensorSpec::new(format!("model.layers.{i}.input_layernorm.weight"), &[h]),
                linears: Projection::ALL
                    .into_iter()
                    .map(|p| {
                        let (out, inp) = p.dims(cfg);
                        let prefix = p.hf_prefix(i);
                        LinearTensors {
                            projection: p,
                            weight: TensorSpec::new(format!("{prefix}.weight"), &[out, inp]),
                            bias: p.has_bias(cfg).then(|| TensorSpec::new(format!("{prefix}.bias"), &[out])),
                        }
                    })
                    .collect(),
                post_norm: TensorSpec::new(format!("model.layers.{i}.post_attention_layernorm.weight"), &[h]),
            })
            .collect();
        Self {
            embed: TensorSpec::new(EMBED_TOKENS, &[v, h]),
            layers,
            norm: TensorSpec::new(FINAL_NORM, &[h]),
            lm_head: (!cfg.tie_word_embeddings).then(|| TensorSpec::new(LM_HEAD, &[v, h])),
        }
    }

    /// Every tensor: the embedding; per layer its input norm, each projection's weight and bias,
    /// its post-attention norm; the final norm; the LM head.
    pub fn iter(&self) -> impl Iterator<Item = &TensorSpec> {
        let layers = self.layers.iter().flat_map(|l| {
            std::iter::once(&l.input_norm)
                .chain(l.linears.iter().flat_map(|lin| std::iter::once(&lin.weight).chain(&lin.bias)))
                .chain(std::iter::once(&l.post_norm))
        });
        std::iter::once(&self.embed).chain(layers).chain(std::iter::once(&self.norm)).chain(&self.lm_head)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(extra: &str) -> LlamaConfig {
        let json = format!(
            r#"{{"vocab_size":100,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2{extra}}}"#
        );
        LlamaConfig::from_json_str(&json, Path::new("config.json")).unwrap()
    }

    #[test]
    fn names_and_shapes_follow_the_hf_layout() {
        let t = ModelTensors::new(&config(r#","model_type":"llama","tie_word_embeddings":false"#));
        let all: Vec<(&str, &[usize])> = t.iter().map(|s| (s.name.as_str(), s.shape.as_slice())).collect();
        assert_eq!(all.len(), 1 + 2 * 9 + 2);
        assert_eq!(all[0], ("model.embed_tokens.weight", &[100, 64][..]));
        assert_eq!(all[1], ("model.layers.0.input_layernorm.weight", &[64][..]));
        assert_eq!(all[2], ("model.layers.0.self_attn.q_proj.weight", &[64, 64][..]));
        assert_eq!(all[3], ("model.layers.0.self_attn.k_proj.weight", &[32, 64][..]));
        assert_eq!(all[5], ("model.layers.0.self_attn.o_proj.weight", &[64, 64][..]));
        assert_eq!(all[6], ("model.layers.0.mlp.gate_proj.weight", &[128, 64][..]));
        assert_eq!(all[8], ("model.layers.0.mlp.down_proj.weight", &[64, 128][..]));
        assert_eq!(all[9], ("model.layers.0.post_attention_layernorm.weight", &[64][..]));
        assert_eq!(all[19], ("model.norm.weight", &[64][..]));
        assert_eq!(all[20], ("lm_head.weight", &[100, 64][..]));
    }

    #[test]
    fn biases_and_the_tied_head_follow_the_config() {
        let qwen = ModelTensors::new(&config(r#","model_type":"qwen2","tie_word_embeddings":true"#));
        assert!(qwen.lm_head.is_none());
        let biased: Vec<Projection> =
            qwen.layers[1].linears.iter().filter(|l| l.bias.is_some()).map(|l| l.projection).collect();
        assert_eq!(biased, [Projection::Q, Projection::K, Projection::V]);
        assert_eq!(
            qwen.layers[1].linear(Projection::V).bias.as_ref().unwrap(),
            &TensorSpec::new("model.layers.1.self_attn.v_proj.bias", &[32])
        );
        let llama =
            ModelTensors::new(&config(r#","model_type":"llama","attention_bias":true,"mlp_bias":true"#));
        assert!(llama.layers[0].linears.iter().all(|l| l.bias.is_some()));
    }

    #[test]
    fn projections_parse_from_short_and_module_names() {
        for p in Projection::ALL {
            assert_eq!(Projection::from_module_name(p.module_name()), Some(p));
            assert_eq!(Projection::parse(p.module_name()), Some(p));
            assert_eq!(Projection::parse(p.module_name().trim_end_matches("_proj")), Some(p));
            assert_eq!(Projection::ALL[p as usize], p);
        }
        assert_eq!(Projection::parse(" gate "), Some(Projection::Gate));
        assert_eq!(Projection::from_module_name("lm_head"), None);
        assert_eq!(Projection::parse("qk"), None);
    }
}
