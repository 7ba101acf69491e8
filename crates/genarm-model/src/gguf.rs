//! GGUF loading (stub until the GGUF module lands).
use std::path::Path;
use crate::{assets::ModelAssets, error::{ModelError, Result}};
/// Opens a GGUF file.
pub fn open(path: &Path) -> Result<ModelAssets> {
    Err(ModelError::BadFile { path: path.to_owned(), reason: "GGUF support not built yet".into() })
}
