//! The `Info` answer: what the worker serves and what the router needs to tokenize for it,
//! computed once from the opened model and the configuration.

use genarm_model::ModelAssets;
use genarm_proto::v1::{InfoResponse, LogitsWire, PROTOCOL_VERSION};

use crate::config::WorkerConfig;

/// Builds the `Info` response for `assets` served under `config`, with a fresh random
/// `instance_id`.
///
/// `vocab_fingerprint` covers the tokenizer's full size (`get_vocab_size(true)`, added tokens
/// included); the router recomputes it over the base's range from `tokenizer_json` when sizes differ.
pub fn build_info(assets: &ModelAssets, config: &WorkerConfig) -> InfoResponse {
    let tok = &assets.tokenizer;
    let tokenizer_size = tok.tokenizer.get_vocab_size(true);
    InfoResponse {
        protocol_version: PROTOCOL_VERSION,
        model_id: assets.model_id.clone(),
        role: config.role.proto() as i32,
        reward_name: config.role.reward_name().to_owned(),
        vocab_size: saturating_u32(assets.config.vocab_size),
        vocab_fingerprint: genarm_text::vocab_fingerprint(&tok.tokenizer, tokenizer_size).to_vec(),
        max_positions: saturating_u32(assets.config.max_position_embeddings),
        dtype: config.dtype.name().to_owned(),
        tp_size: saturating_u32(config.engine.tp),
        kv_capacity_tokens: config.kv_capacity_rounded() as u64,
        kv_block_size: saturating_u32(config.engine.block_size),
        tokenizer_json: tok.json.clone(),
        chat_template: tok.chat_template.clone(),
        bos_token_id: tok.bos_token_id,
        eos_token_ids: tok.eos_token_ids.clone(),
        add_bos_token: tok.add_bos_token,
        instance_id: uuid::Uuid::new_v4().to_string(),
        // Every worker computes certificates from its f32 rows (genarm_fusion::certify_row).
        logits_wires: vec![LogitsWire::Full as i32, LogitsWire::Sparse as i32],
        prefix_cache: config.engine.prefix_cache,
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
