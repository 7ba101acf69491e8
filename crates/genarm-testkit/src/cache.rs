//! The Python that `.ci/run` prepares for the tests (a venv with the pinned `openai` and
//! `kubernetes-validate`) inside genarm's cache directory ([`genarm_demo::cache::cache_dir`]).

use std::path::PathBuf;

/// `$GENARM_PYTHON`, else the venv `.ci/run` creates (`<cache_dir>/venv/bin/python`) when it
/// exists, else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("GENARM_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    genarm_demo::cache::cache_dir()
        .ok()
        .map(|c| c.join("venv/bin/python"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}
