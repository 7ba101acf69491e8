//! Opening a HF model directory: config.json, (sharded) safetensors, tokenizer.json and its config.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::str::FromStr;

use crate::assets::{model_id_of, ModelAssets, TokenizerAssets};
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::weights::TensorSource;

/// Memory-mapped safetensors files of one model, addressed by tensor name.
pub struct SafetensorsSource {
    dir: PathBuf,
    files: MmapedSafetensors,
}

impl SafetensorsSource {
    /// Maps `model.safetensors`, or every shard listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths = if single.exists() {
            vec![single]
        } else if index.exists() {
            shard_paths(&index)?
        } else {
            return Err(ModelError::MissingFile {
                path: single,
                hint: "the directory holds neither model.safetensors nor model.safetensors.index.json".into(),
            });
        };
        for p in &paths {
            if !p.exists() {
                return Err(ModelError::MissingFile {
                    path: p.clone(),
                    hint: "model.safetensors.index.json names this shard; copy every shard of the model"
                        .into(),
                });
            }
        }
        // SAFETY: the files are mapped read-only; the model directory must not be modified while
        // the process runs (the same contract as every mmap-based loader).
        let files = unsafe { MmapedSafetensors::multi(&paths) }.map_err(|e| ModelError::BadFile {
            path: paths.first().cloned().unwrap_or_else(|| dir.to_owned()),
            reason: format!("not a valid safetensors file: {e}"),
        })?;
        Ok(Self { dir: dir.to_owned(), files })
    }
}

fn shard_paths(index: &Path) -> Result<Vec<PathBuf>> {
    let bad = |reason: String| ModelError::BadFile { path: index.to_owned(), reason };
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
    if files.is_empty() {
        return Err(bad("weight_map names no files".into()));
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

impl TensorSource for SafetensorsSource {
    fn location(&self) -> &Path {
        &self.dir
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.files.get(name).ok().map(|v| v.shape().to_vec())
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self.files.load(name, device).map_err(|e| ModelError::BadFile {
            path: self.dir.clone(),
            reason: format!("tensor {name}: {e}"),
        })?;
        Ok(t.to_dtype(dtype)?)
    }
}

/// Opens a HF model directory.
pub fn open(dir: &Path) -> Result<ModelAssets> {
    let mut config = LlamaConfig::from_file(&dir.join("config.json"))?;
    let tensors = SafetensorsSource::open(dir)?;
    let tokenizer = load_tokenizer(dir, &mut config)?;
    Ok(ModelAssets {
        model_id: model_id_of(dir),
        path: dir.to_owned(),
        config,
        tensors: Arc::new(tensors),
        tokenizer,
    })
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ModelError::BadFile { path: path.to_owned(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::BadFile { path: path.to_owned(), reason: e.to_string() }),
    }
}

/// A special token as written in tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

fn load_tokenizer(dir: &Path, config: &mut LlamaConfig) -> Result<TokenizerAssets> {
    let path = dir.join("tokenizer.json");
    let json = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile {
                path: path.clone(),
                hint: "the router tokenizes with the model's own tokenizer.json; copy it into the model directory".into(),
            }
        } else {
            ModelError::BadFile { path: path.clone(), reason: e.to_string() }
        }
    })?;
    let tokenizer = tokenizers::Tokenizer::from_str(&json)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
    let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    // transformers >= 4.43 may write the template to its own file.
    let chat_template = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
        Ok(t) => Some(t),
        Err(_) => match tok_cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: serve the default one.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        },
    };
    let id_of = |v: Option<&Value>| token_text(v).and_then(|t| tokenizer.token_to_id(t));
    let bos_token_id = config.bos_token_id.or_else(|| id_of(tok_cfg.get("bos_token")));
    let mut eos_token_ids = config.eos_token_ids.clone();
    if let Some(gen) = read_json(&dir.join("generation_config.json"))? {
        match gen.get("eos_token_id") {
            Some(Value::Number(n)) => eos_token_ids.extend(n.as_u64().map(|x| x as u32)),
            Some(Value::Array(a)) => {
                eos_token_ids.extend(a.iter().filter_map(Value::as_u64).map(|x| x as u32))
            }
            _ => {}
        }
    }
    if eos_token_ids.is_empty() {
        eos_token_ids.extend(id_of(tok_cfg.get("eos_token")));
    }
    eos_token_ids.sort_unstable();
    eos_token_ids.dedup();
    config.bos_token_id = bos_token_id;
    config.eos_token_ids = eos_token_ids.clone();
    Ok(TokenizerAssets {
        tokenizer,
        json,
        chat_template,
        bos_token_id,
        eos_token_ids,
        add_bos_token: tok_cfg.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false),
    })
}
