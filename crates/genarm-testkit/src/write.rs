//! Writing a fixture directory: weights, tokenizer and the HF JSON files.

use std::path::Path;

use anyhow::{ensure, Context, Result};

use crate::hf_json::{self, SpecialIds};
use crate::spec::FixtureSpec;
use crate::tokenizer::{id_of, tokenizer_json, train_tokenizer, ENDOFTEXT, IM_END, IM_START};
use crate::weights::write_safetensors;

/// Files every fixture directory holds.
pub const FIXTURE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// Writes the HF model directory for `spec` into `dir` (created if missing; the files in
/// [`FIXTURE_FILES`] are overwritten). The bytes depend only on `spec`.
pub fn write_fixture(dir: &Path, spec: &FixtureSpec) -> Result<()> {
    ensure!(
        spec.model_type == "llama" || spec.model_type == "qwen2",
        "fixture {}: model_type {:?} is neither \"llama\" nor \"qwen2\"",
        spec.name,
        spec.model_type
    );
    ensure!(
        spec.num_attention_heads > 0
            && spec.num_key_value_heads > 0
            && spec.hidden_size % spec.num_attention_heads == 0
            && spec.num_attention_heads % spec.num_key_value_heads == 0
            && spec.head_dim() % 2 == 0,
        "fixture {}: hidden {} / heads {} / kv heads {} do not give an even head dim shared by whole groups",
        spec.name,
        spec.hidden_size,
        spec.num_attention_heads,
        spec.num_key_value_heads
    );
    let tokenizer = train_tokenizer()?;
    let tok_vocab = tokenizer.get_vocab_size(true);
    let vocab = spec.vocab_size.unwrap_or(tok_vocab);
    ensure!(
        vocab >= tok_vocab,
        "fixture {}: vocab_size {vocab} is smaller than the tokenizer's {tok_vocab}",
        spec.name
    );
    let ids = SpecialIds {
        endoftext: id_of(&tokenizer, ENDOFTEXT)?,
        im_start: id_of(&tokenizer, IM_START)?,
        im_end: id_of(&tokenizer, IM_END)?,
    };

    let files = [
        ("config.json", hf_json::to_text(&hf_json::config(spec, vocab, &ids))),
        ("generation_config.json", hf_json::to_text(&hf_json::generation_config(&ids))),
        ("tokenizer.json", tokenizer_json(&tokenizer)?),
        ("tokenizer_config.json", hf_json::to_text(&hf_json::tokenizer_config(spec, &ids))),
    ];
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    write_safetensors(&dir.join("model.safetensors"), spec, vocab)
}
