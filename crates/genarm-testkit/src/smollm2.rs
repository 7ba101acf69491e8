//! Where the tests find the real demo model, SmolLM2-135M-Instruct (GGUF, Q4_1), and its
//! checksum check; the pin itself is [`genarm_demo::smollm2::SMOLLM2`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use genarm_demo::smollm2::SMOLLM2;

/// Where the GGUF is expected: `$GENARM_SMOLLM2_GGUF`, else
/// `${GENARM_CACHE_DIR:-$HOME/.cache/genarm}/smollm2-135m-instruct.gguf`. Does not check that it exists.
pub fn expected_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GENARM_SMOLLM2_GGUF").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    SMOLLM2.cached_gguf()
}

/// The cached GGUF's path ([`expected_path`]); an error telling how to fetch it if it is missing.
pub fn gguf_path() -> Result<PathBuf> {
    let path = expected_path()?;
    if !path.is_file() {
        bail!(
            "SmolLM2-135M-Instruct GGUF not found at {}: run scripts/fetch-smollm2.sh \
             (or point GENARM_SMOLLM2_GGUF at a copy)",
            path.display()
        );
    }
    Ok(path)
}

/// Checks that `path` hashes to the pinned GGUF SHA-256 (streamed: the file is about 100 MB).
pub fn verify_checksum(path: &Path) -> Result<()> {
    let actual = genarm_demo::digest::sha256_file(path)?;
    if actual != SMOLLM2.gguf_sha256 {
        bail!(
            "{} has SHA-256 {actual}, expected {}: delete it and run scripts/fetch-smollm2.sh",
            path.display(),
            SMOLLM2.gguf_sha256
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"abc").unwrap();
        let err = verify_checksum(&path).unwrap_err().to_string();
        assert!(err.contains("fetch-smollm2.sh") && err.contains(SMOLLM2.gguf_sha256), "{err}");
    }
}
