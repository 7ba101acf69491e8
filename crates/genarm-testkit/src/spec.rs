//! What a fixture is: its architecture, sizes, RoPE flavour and seed; the committed and bench specs.

/// RoPE settings of a fixture, and the `config.json` style they are written in.
#[derive(Clone, Debug, PartialEq)]
pub enum FixtureRope {
    /// Plain RoPE written the transformers-4 way: a top-level `"rope_theta"`.
    Legacy {
        /// Base frequency.
        theta: f64,
    },
    /// Plain RoPE written the transformers-5 way:
    /// `"rope_parameters": {"rope_type": "default", "rope_theta": ...}`.
    Default {
        /// Base frequency.
        theta: f64,
    },
    /// Llama 3 frequency scaling, written as `"rope_parameters": {"rope_type": "llama3", ...}`.
    Llama3 {
        /// Base frequency.
        theta: f64,
        /// `factor`: how much the low frequencies are stretched.
        factor: f64,
        /// `low_freq_factor`.
        low: f64,
        /// `high_freq_factor`.
        high: f64,
        /// `original_max_position_embeddings`.
        original_max: usize,
    },
}

/// Everything that determines a fixture directory; equal specs give byte-identical directories.
#[derive(Clone, Debug, PartialEq)]
pub struct FixtureSpec {
    /// Directory name (and model id).
    pub name: String,
    /// `"llama"` or `"qwen2"` (qwen2 has q/k/v biases, no o_proj bias).
    pub model_type: String,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads; `hidden_size / num_attention_heads` is the head dim.
    pub num_attention_heads: usize,
    /// Key/value heads (fewer than query heads: grouped-query attention).
    pub num_key_value_heads: usize,
    /// Embedding/logit rows: `None` = the tokenizer's size; `Some(v)` must be at least that,
    /// the extra rows are random (ids no text encodes to).
    pub vocab_size: Option<usize>,
    /// Whether `lm_head` reuses `embed_tokens` (then no `lm_head.weight` tensor is written).
    pub tie_word_embeddings: bool,
    /// RoPE flavour.
    pub rope: FixtureRope,
    /// `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f64,
    /// Seed of every random weight.
    pub seed: u64,
}

impl FixtureSpec {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether q/k/v projections carry biases (Qwen2 style).
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2"
    }

    /// The transformers class named in `config.json`'s `architectures`.
    pub fn architecture(&self) -> &'static str {
        if self.qkv_bias() {
            "Qwen2ForCausalLM"
        } else {
            "LlamaForCausalLM"
        }
    }
}

/// The three fixtures committed under `fixtures/` (all f32, hidden 128, 2 layers, 8 heads):
/// `llama-mha` (8 kv heads, untied, legacy `rope_theta`), `llama-gqa-tied` (4 kv heads, tied
/// embeddings, Llama 3 RoPE scaling with a 64-token original context so scaling matters at short
/// positions) and `qwen2-bias` (4 kv heads, q/k/v biases, `rope_parameters` default).
pub fn committed_specs() -> Vec<FixtureSpec> {
    let base = FixtureSpec {
        name: String::new(),
        model_type: "llama".into(),
        hidden_size: 128,
        intermediate_size: 256,
        num_hidden_layers: 2,
        num_attention_heads: 8,
        num_key_value_heads: 8,
        vocab_size: None,
        tie_word_embeddings: false,
        rope: FixtureRope::Legacy { theta: 10_000.0 },
        max_position_embeddings: 512,
        rms_norm_eps: 1e-5,
        seed: 0,
    };
    vec![
        FixtureSpec { name: "llama-mha".into(), seed: 1, ..base.clone() },
        FixtureSpec {
            name: "llama-gqa-tied".into(),
            num_key_value_heads: 4,
            tie_word_embeddings: true,
            rope: FixtureRope::Llama3 {
                theta: 500_000.0,
                factor: 8.0,
                low: 1.0,
                high: 4.0,
                original_max: 64,
            },
            seed: 2,
            ..base.clone()
        },
        FixtureSpec {
            name: "qwen2-bias".into(),
            model_type: "qwen2".into(),
            num_key_value_heads: 4,
            rope: FixtureRope::Default { theta: 1_000_000.0 },
            rms_norm_eps: 1e-6,
            seed: 3,
            ..base
        },
    ]
}

/// A larger Llama for benchmarks, e.g. `sized_spec("bench", 512, 1536, 8, 8, 4, 8192)`: 33.6M
/// parameters, a 134 MB `model.safetensors` written in under a second.
/// Written at bench time to a temporary directory, never committed. `vocab` must be at least
/// [`crate::TOKENIZER_VOCAB_SIZE`]; rows beyond the tokenizer are random.
pub fn sized_spec(
    name: &str,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
) -> FixtureSpec {
    FixtureSpec {
        name: name.into(),
        model_type: "llama".into(),
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        vocab_size: Some(vocab),
        tie_word_embeddings: false,
        rope: FixtureRope::Default { theta: 10_000.0 },
        max_position_embeddings: 4096,
        rms_norm_eps: 1e-5,
        seed: 42,
    }
}
