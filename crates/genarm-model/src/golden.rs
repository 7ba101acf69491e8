//! Reading a transformers golden (written by `scripts/make_goldens.py`, committed under
//! `crates/genarm-model/tests/goldens/` and copied into the GPU bundle): `<name>.json` holds the
//! source, the library versions, the prompt texts and their token ids; `<name>.safetensors` holds
//! `logits.<i>`, transformers' f32 logits `[len, vocab]` at every position of prompt `i`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ModelError;

/// One prompt of a golden.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GoldenPrompt {
    /// The text transformers encoded (`add_special_tokens=False`).
    pub text: String,
    /// The token ids it gave.
    pub ids: Vec<u32>,
}

/// One golden, metadata and logits.
#[derive(Debug, Clone)]
pub struct Golden {
    /// Name (also the file stem).
    pub name: String,
    /// Where the golden came from, as written: `kind`, and `sha256` (for a fixture, a map from
    /// file name to the SHA-256 of the file the golden was computed from; for a GGUF, its hash).
    pub source: serde_json::Value,
    /// The versions of python, torch, transformers, ... that computed it.
    pub versions: serde_json::Value,
    /// Vocabulary size (columns of every logits matrix).
    pub vocab_size: usize,
    /// The prompts, in order.
    pub prompts: Vec<GoldenPrompt>,
    /// Logits `[len * vocab]` per prompt, row-major.
    pub logits: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    #[serde(default)]
    source: serde_json::Value,
    #[serde(default)]
    versions: serde_json::Value,
    vocab_size: usize,
    logits: String,
    prompts: Vec<GoldenPrompt>,
}

/// The committed goldens of this crate's tests (`crates/genarm-model/tests/goldens`).
pub fn committed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("goldens")
}

fn bad(path: &Path, reason: String) -> ModelError {
    ModelError::BadFile { path: path.to_path_buf(), reason }
}

/// Reads `dir/<name>.json` and the logits file it names, checking the name, that there are
/// prompts, and that every `logits.<i>` is F32 `[ids.len(), vocab_size]`.
pub fn load(dir: &Path, name: &str) -> Result<Golden, ModelError> {
    let json_path = dir.join(format!("{name}.json"));
    let text = std::fs::read_to_string(&json_path).map_err(|e| ModelError::MissingFile {
        path: json_path.clone(),
        hint: format!("golden {name} ({e}); regenerate with scripts/make-goldens.sh"),
    })?;
    let meta: Meta = serde_json::from_str(&text).map_err(|e| bad(&json_path, e.to_string()))?;
    if meta.name != name {
        return Err(bad(&json_path, format!("name is {:?}, expected {name:?}", meta.name)));
    }
    if meta.prompts.is_empty() {
        return Err(bad(&json_path, "no prompts".into()));
    }
    let st_path = dir.join(&meta.logits);
    let bytes = std::fs::read(&st_path).map_err(|e| ModelError::MissingFile {
        path: st_path.clone(),
        hint: format!("the logits of golden {name} ({e}); regenerate with scripts/make-goldens.sh"),
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(&st_path, e.to_string()))?;
    let mut logits = Vec::with_capacity(meta.prompts.len());
    for (i, p) in meta.prompts.iter().enumerate() {
        let key = format!("logits.{i}");
        let view = st.tensor(&key).map_err(|e| bad(&st_path, format!("tensor {key}: {e}")))?;
        if view.dtype() != safetensors::Dtype::F32 || view.shape() != [p.ids.len(), meta.vocab_size] {
            return Err(bad(
                &st_path,
                format!(
                    "{key} is {:?} {:?}, expected F32 [{}, {}]",
                    view.dtype(),
                    view.shape(),
                    p.ids.len(),
                    meta.vocab_size
                ),
            ));
        }
        logits.push(
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        );
    }
    Ok(Golden {
        name: meta.name,
        source: meta.source,
        versions: meta.versions,
        vocab_size: meta.vocab_size,
        prompts: meta.prompts,
        logits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_goldens_load_with_logits_shaped_by_their_prompts() {
        let g = load(&committed_dir(), "llama-mha").unwrap();
        assert_eq!(g.name, "llama-mha");
        assert_eq!(g.source["kind"], "fixture");
        assert!(g.versions["transformers"].is_string());
        for (p, l) in g.prompts.iter().zip(&g.logits) {
            assert_eq!(l.len(), p.ids.len() * g.vocab_size);
        }
        let err = load(&committed_dir(), "no-such-golden").unwrap_err().to_string();
        assert!(err.contains("make-goldens.sh"), "{err}");
    }
}
