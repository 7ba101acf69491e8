//! The fuzz targets ([`targets`]) and their shared helpers: the fixture tokenizer and a tiny byte
//! reader.

pub mod targets;

use std::sync::{Arc, OnceLock};

use genarm_text::ModelText;

/// The `llama-mha` fixture's `tokenizer.json` (the testkit's byte-fallback SentencePiece tokenizer).
pub fn tokenizer_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crates/genarm-testkit/fixtures/llama-mha/tokenizer.json"
        );
        std::fs::read_to_string(path).expect("fixture tokenizer.json (run from a genarm checkout)")
    })
}

/// A `ModelText` over the fixture tokenizer with `template` as its chat template.
pub fn model_text(template: Option<String>) -> ModelText {
    ModelText::new("fuzz-model", tokenizer_json(), template, Some(1), vec![2], true)
        .expect("fixture tokenizer")
}

/// The fixture `ModelText` without a template, built once.
pub fn shared_text() -> Arc<ModelText> {
    static TEXT: OnceLock<Arc<ModelText>> = OnceLock::new();
    TEXT.get_or_init(|| Arc::new(model_text(Some(SIMPLE_TEMPLATE.to_string())))).clone()
}

/// A ChatML-like template used where the template is not what is fuzzed.
pub const SIMPLE_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

/// Reads fuzz input piecewise.
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    /// The next byte (0 once empty).
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    /// The next 4 bytes little-endian (zero-padded).
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        for x in &mut b {
            *x = self.u8();
        }
        u32::from_le_bytes(b)
    }
    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    /// The rest.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }
    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
