//! genarm's cache directory on this machine: `$GENARM_CACHE_DIR`, else `$HOME/.cache/genarm`
//! (the same rule as `scripts/*.sh` and `.ci/run`: `${GENARM_CACHE_DIR:-$HOME/.cache/genarm}`).

use std::path::PathBuf;

use anyhow::{Context, Result};

/// `$GENARM_CACHE_DIR` when set and not empty, else `$HOME/.cache/genarm`. Does not create it.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("GENARM_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither GENARM_CACHE_DIR nor HOME is set: set GENARM_CACHE_DIR to a writable directory")?;
    Ok(PathBuf::from(home).join(".cache").join("genarm"))
}
