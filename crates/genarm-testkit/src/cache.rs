//! Where the test tooling lives on a machine: genarm's cache directory and the Python that
//! `.ci/run` prepares (a venv with the pinned `openai` and `kubernetes-validate`).

use std::path::PathBuf;

use anyhow::{anyhow, Result};

/// `$GENARM_CACHE_DIR`, else `$HOME/.cache/genarm` (what `scripts/fetch-smollm2.sh` and
/// `.ci/run` use).
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("GENARM_CACHE_DIR").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| anyhow!("neither GENARM_CACHE_DIR nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".cache").join("genarm"))
}

/// `$GENARM_PYTHON`, else the venv `.ci/run` creates (`<cache_dir>/venv/bin/python`) when it
/// exists, else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("GENARM_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    cache_dir()
        .ok()
        .map(|c| c.join("venv/bin/python"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}
