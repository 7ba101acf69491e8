//! Helpers shared by genarm-text's integration tests: fixture-backed `ModelText`s and a tiny RNG.
#![allow(dead_code)]

use genarm_text::ModelText;

/// The committed fixture names.
pub const FIXTURES: &[&str] = &["llama-mha", "llama-gqa-tied", "qwen2-bias"];

/// A fixture's `tokenizer.json` text.
pub fn tokenizer_json(fixture: &str) -> String {
    std::fs::read_to_string(genarm_testkit::fixture_dir(fixture).join("tokenizer.json")).unwrap()
}

/// A fixture's chat template (from `tokenizer_config.json`).
pub fn chat_template(fixture: &str) -> String {
    let path = genarm_testkit::fixture_dir(fixture).join("tokenizer_config.json");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config["chat_template"].as_str().unwrap().to_string()
}

/// A fixture's `ModelText` as its worker would describe it (BOS = EOS = `<|endoftext|>` = 0,
/// `add_bos_token` false), with `template` in place of the fixture's own if given.
pub fn fixture_text(fixture: &str, template: Option<&str>, add_bos_token: bool) -> ModelText {
    let template = template.map(str::to_string).unwrap_or_else(|| chat_template(fixture));
    ModelText::new(fixture, &tokenizer_json(fixture), Some(template), Some(0), vec![0], add_bos_token)
        .unwrap()
}

/// SplitMix64: deterministic random numbers without a dependency.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
