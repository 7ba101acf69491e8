//! Arbitrary request bodies through the router's OpenAI request types (serde) and validation
//! (`prepare_completion` / `prepare_chat`) against a catalog of fixture-tokenizer models (a base
//! and one reward model "rm"): every body gives a `Prepared` request or a `ApiError`.
//!
//! Input: byte 0 picks the endpoint (low bit: chat), the rest is the JSON body.

use crate::shared_text;
use genarm_router::api::openai::{ChatCompletionRequest, CompletionRequest};
use genarm_router::api::validate::{prepare_chat, prepare_completion, ValidationConfig};
use genarm_router::workers::{Catalog, ModelEntry};
use std::sync::OnceLock;

fn catalog() -> &'static (Catalog, ValidationConfig) {
    static C: OnceLock<(Catalog, ValidationConfig)> = OnceLock::new();
    C.get_or_init(|| {
        let text = shared_text();
        let vocab = text.vocab_size();
        let entry = |index: usize, reward_name: Option<&str>| ModelEntry {
            index,
            reward_name: reward_name.map(str::to_string),
            model_id: "fixture".into(),
            url: "http://127.0.0.1:1".into(),
            vocab_size: vocab as u32,
            max_positions: 256,
            text: text.clone(),
        };
        let catalog = Catalog { models: vec![entry(0, None), entry(1, Some("rm"))], vocab, max_context: 256 };
        let mut cfg = ValidationConfig::new("base");
        cfg.max_prompt_tokens = Some(200);
        (catalog, cfg)
    })
}

/// Runs one input of the `request_json` target (panics on a finding).
pub fn request_json(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let (catalog, cfg) = catalog();
    if kind & 1 == 1 {
        if let Ok(req) = serde_json::from_slice::<ChatCompletionRequest>(body) {
            let _ = prepare_chat(req, "req".into(), catalog, cfg);
        }
    } else if let Ok(req) = serde_json::from_slice::<CompletionRequest>(body) {
        let _ = prepare_completion(req, "req".into(), catalog, cfg);
    }
}
