//! A model opened from disk: its config, its tensors, its tokenizer and chat template.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::weights::TensorSource;

/// Everything a worker needs to tokenize for a model and to render its prompts.
#[derive(Clone)]
pub struct TokenizerAssets {
    /// The tokenizer, ready to encode and decode.
    pub tokenizer: tokenizers::Tokenizer,
    /// The same tokenizer serialized as `tokenizer.json` text (what the router receives).
    pub json: String,
    /// The Jinja chat template, when the model has one.
    pub chat_template: Option<String>,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids (generation stops on any of them).
    pub eos_token_ids: Vec<u32>,
    /// Whether prompts get the BOS token prepended when the template doesn't write it.
    pub add_bos_token: bool,
}

impl std::fmt::Debug for TokenizerAssets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenizerAssets")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("chat_template", &self.chat_template.as_ref().map(|t| t.len()))
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("add_bos_token", &self.add_bos_token)
            .finish()
    }
}

/// A model opened from an HF directory or a GGUF file, not yet loaded into an engine.
pub struct ModelAssets {
    /// The served name: the directory's or GGUF file's name.
    pub model_id: String,
    /// Where it was opened from.
    pub path: PathBuf,
    /// The architecture.
    pub config: LlamaConfig,
    /// The weights, in HF naming and layout.
    pub tensors: Arc<dyn TensorSource>,
    /// Tokenizer and chat template.
    pub tokenizer: TokenizerAssets,
}

impl ModelAssets {
    /// Opens `path`: a `.gguf` file or a HF model directory.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(ModelError::MissingFile {
                path: path.to_owned(),
                hint:
                    "pass a HF model directory (config.json, *.safetensors, tokenizer.json) or a .gguf file"
                        .into(),
            });
        }
        if path.is_file() {
            if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
                return crate::gguf::open(path);
            }
            return Err(ModelError::BadFile {
                path: path.to_owned(),
                reason:
                    "a model file must be a .gguf; for safetensors pass the directory holding config.json"
                        .into(),
            });
        }
        crate::hf_dir::open(path)
    }
}

/// The served name of a model path: a directory's name, or a file's name without `.gguf`.
pub fn model_id_of(path: &Path) -> String {
    let name = if path.is_file() { path.file_stem() } else { path.file_name() };
    name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}
