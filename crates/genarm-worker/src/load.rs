//! Opening and loading the model: [`open_assets`] (fast: config, tokenizer, tensor index) and
//! [`load_engine`] (the weights into the engine, then a warm-up step).

use std::path::Path;

use genarm_model::{Engine, ModelAssets, StepSeq};

use crate::config::WorkerConfig;
use crate::error::WorkerError;

/// The sequence id the warm-up step uses (released right after; no request runs before the
/// worker reports SERVING).
pub const WARMUP_SEQ_ID: u64 = u64::MAX;

/// Opens the model at `path` (config, tokenizer, chat template, tensor index), with the LoRA
/// adapter directory `lora` merged in when given, without loading the weights.
pub fn open_assets(path: &Path, lora: Option<&Path>) -> Result<ModelAssets, WorkerError> {
    match lora {
        None => ModelAssets::open(path),
        Some(lora) => ModelAssets::open_with_lora(path, lora),
    }
    .map_err(|source| WorkerError::Model { path: path.to_owned(), source })
}

/// Loads `assets` into an engine per `config` (the engine shows a progress bar on stderr) and
/// warms it up with a one-token step that is released at once. Blocking: call it off the async
/// runtime.
pub fn load_engine(assets: &ModelAssets, config: &WorkerConfig) -> Result<Engine, WorkerError> {
    let engine = Engine::load(assets, config.engine.clone())
        .map_err(|source| WorkerError::Model { path: config.model.clone(), source })?;
    warm_up(&engine).map_err(|reason| WorkerError::WarmUp { path: config.model.clone(), reason })?;
    Ok(engine)
}

/// Runs one 1-token step (token 0 at position 0) and releases it, so the first real request does
/// not pay for lazy initialisation.
pub fn warm_up(engine: &Engine) -> Result<(), String> {
    let started = std::time::Instant::now();
    let out = engine
        .step(vec![StepSeq { seq_id: WARMUP_SEQ_ID, start_pos: 0, tokens: vec![0] }])
        .map_err(|e| e.to_string());
    engine.release(WARMUP_SEQ_ID);
    let out = out?;
    match out.results.into_iter().next() {
        Some(Ok(logits)) if logits.len() == engine.config().vocab_size => {
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "warm-up step done");
            Ok(())
        }
        Some(Ok(logits)) => Err(format!(
            "the model returned {} logits, its config says vocab_size {}",
            logits.len(),
            engine.config().vocab_size
        )),
        Some(Err(e)) => Err(format!("{e} (is --kv-capacity-tokens at least one block?)")),
        None => Err("the engine returned no result for the warm-up sequence".into()),
    }
}
