//! The fluency guard's base log-prob: the mean log-probability per token of an output under the
//! base model, computed in this process (`--base-model`): the prompt rendered with the base's
//! chat template as the router renders it, the output re-encoded, one full forward over both,
//! `log_softmax` over the tokenizer's vocabulary, mean over the output tokens.

use std::path::Path;

use genarm_model::{Engine, EngineOptions, ModelAssets};
use genarm_text::{ChatMessage, ModelText};

use crate::EvalError;

/// The base model, loaded for scoring outputs.
pub struct BaseLogprob {
    engine: Engine,
    text: ModelText,
    path: String,
}

impl BaseLogprob {
    /// Loads the base model at `path` (a HF directory or a `.gguf` file) on the CPU in f32.
    pub fn open(path: &Path) -> Result<BaseLogprob, EvalError> {
        let shown = path.display().to_string();
        let err = |reason: String| EvalError::BaseModel { path: shown.clone(), reason };
        let assets = ModelAssets::open(path).map_err(|e| err(e.to_string()))?;
        let tok = &assets.tokenizer;
        let text = ModelText::new(
            &assets.model_id,
            &tok.json,
            tok.chat_template.clone(),
            tok.bos_token_id,
            tok.eos_token_ids.clone(),
            tok.add_bos_token,
        )
        .map_err(|e| err(e.to_string()))?;
        text.check_chat_template().map_err(|e| {
            err(format!("{e}; the evaluation sends chat completions, so the base needs a chat template"))
        })?;
        let engine = Engine::load(&assets, EngineOptions::default()).map_err(|e| err(e.to_string()))?;
        Ok(BaseLogprob { engine, text, path: shown })
    }

    /// The prompt ids of a one-user-message chat, as the router encodes them.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>, EvalError> {
        let err = |reason: String| EvalError::BaseModel { path: self.path.clone(), reason };
        let rendered = self
            .text
            .render_chat(&[ChatMessage::new("user", prompt)], true)
            .map_err(|e| err(e.to_string()))?;
        self.text.encode_prompt(&rendered).map_err(|e| err(e.to_string()))
    }

    /// Mean log-prob per token of `output` after the chat prompt `prompt`, and the number of
    /// output tokens; `None` for an empty output. The output is re-encoded from its text (no
    /// special tokens), so a final EOS is not counted.
    pub fn mean_logprob(&self, prompt: &str, output: &str) -> Result<Option<(f64, usize)>, EvalError> {
        let err = |reason: String| EvalError::BaseModel { path: self.path.clone(), reason };
        let mut ids = self.prompt_ids(prompt)?;
        let out = self.text.tokenizer().encode_fast(output, false).map_err(|e| err(e.to_string()))?;
        let out = out.get_ids();
        if out.is_empty() {
            return Ok(None);
        }
        let prompt_len = ids.len();
        ids.extend_from_slice(out);
        let max = self.engine.config().max_position_embeddings;
        if ids.len() > max {
            return Err(err(format!(
                "prompt + output is {} tokens, over the model's context of {max}",
                ids.len()
            )));
        }
        let logits = self.engine.forward_full(&ids).map_err(|e| err(e.to_string()))?;
        let rows: Vec<Vec<f32>> = logits.to_vec2().map_err(|e| err(e.to_string()))?;
        let v = self.text.vocab_size().min(rows[0].len());
        let mut total = 0.0;
        for (j, &target) in out.iter().enumerate() {
            let row = &rows[prompt_len - 1 + j][..v];
            total += log_prob(row, target as usize)
                .ok_or_else(|| err(format!("output token {target} is outside the vocabulary of {v}")))?;
        }
        Ok(Some((total / out.len() as f64, out.len())))
    }
}

/// `log_softmax(row)[target]` in f64; `None` when `target` is out of range.
pub fn log_prob(row: &[f32], target: usize) -> Option<f64> {
    let x = *row.get(target)? as f64;
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    Some(x - max - sum.ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prob_is_the_log_softmax_entry() {
        // softmax([0, ln 3]) = [1/4, 3/4].
        let row = [0.0f32, 3f32.ln()];
        assert!((log_prob(&row, 0).unwrap() - 0.25f64.ln()).abs() < 1e-6);
        assert!((log_prob(&row, 1).unwrap() - 0.75f64.ln()).abs() < 1e-6);
        assert!(log_prob(&row, 2).is_none());
    }
}
