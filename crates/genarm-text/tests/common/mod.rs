//! Helpers shared by genarm-text's integration tests: fixture-backed `ModelText`s and seeded draws.
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

pub use genarm_fusion::rng::SplitMix64;

/// A number in `[0, n)` by plain modulo rather than [`SplitMix64::below`]'s rejection: the seeded
/// cases of these tests were drawn this way, and a failing case number must keep naming its ids.
pub fn below(rng: &mut SplitMix64, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}
