//! A model opened from disk (HF directory, GGUF file, or LoRA adapter over either): its config,
//! its tensors, its tokenizer and chat template.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::lora::{LoraAdapter, LoraMergedSource, ADAPTER_CONFIG_FILE};
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
                hint: "pass a HF model directory (config.json, *.safetensors, tokenizer.json), a .gguf file \
                       or a LoRA adapter directory (adapter_config.json)"
                    .into(),
            });
        }
        if crate::lora::is_adapter_dir(path) {
            return Self::open_adapter_dir(path);
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

    /// Opens the backbone `model` (a HF directory or a `.gguf` file, not itself an adapter) with
    /// the LoRA adapter directory `lora` merged in. The served name is the adapter directory's.
    pub fn open_with_lora(model: &Path, lora: &Path) -> Result<Self> {
        if crate::lora::is_adapter_dir(model) {
            return Err(ModelError::BadFile {
                path: model.to_owned(),
                reason: "this is a LoRA adapter directory; with --lora pass its backbone as --model \
                         (or pass the adapter alone as --model to use its base_model_name_or_path)"
                    .into(),
            });
        }
        let adapter = LoraAdapter::open(lora)?;
        Self::open(model)?.with_lora(adapter, lora)
    }

    /// These assets with `adapter` (from directory `adapter_dir`, which also names the result)
    /// merged into their weights; checks that the adapter fits the model.
    pub fn with_lora(self, adapter: LoraAdapter, adapter_dir: &Path) -> Result<Self> {
        let src = LoraMergedSource::new(self.tensors, Arc::new(adapter), adapter_dir);
        src.validate(&self.config)?;
        Ok(Self {
            model_id: model_id_of(adapter_dir),
            path: adapter_dir.to_owned(),
            config: self.config,
            tensors: Arc::new(src),
            tokenizer: self.tokenizer,
        })
    }

    /// Opens an adapter directory with the backbone its `base_model_name_or_path` names.
    fn open_adapter_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
        let adapter = LoraAdapter::open(dir)?;
        let Some(id) = adapter.config.base_model_name_or_path.clone() else {
            return Err(ModelError::BadFile {
                path: cfg_path,
                reason: "key \"base_model_name_or_path\" is missing, so the backbone is unknown: \
                         pass --model BACKBONE --lora ADAPTER"
                    .into(),
            });
        };
        let given = Path::new(&id);
        let backbone = if given.is_absolute() { given.to_owned() } else { dir.join(given) };
        if id.is_empty() || !backbone.exists() {
            return Err(ModelError::BadFile {
                path: cfg_path,
                reason: format!(
                    "backbone '{id}' is not a local path: pass --model BACKBONE --lora ADAPTER \
                     (base_model_name_or_path must be an existing directory or .gguf file, absolute or \
                     relative to the adapter directory; genarm never downloads from the hub)"
                ),
            });
        }
        if crate::lora::is_adapter_dir(&backbone) {
            return Err(ModelError::BadFile {
                path: cfg_path,
                reason: format!(
                    "backbone '{id}' is itself a LoRA adapter; merge it first (genarm merge) and name the \
                     merged directory in base_model_name_or_path"
                ),
            });
        }
        Self::open(&backbone)?.with_lora(adapter, dir)
    }
}

/// The served name of a model path: a directory's name, or a file's name without `.gguf`.
pub fn model_id_of(path: &Path) -> String {
    let name = if path.is_file() { path.file_stem() } else { path.file_name() };
    name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}
