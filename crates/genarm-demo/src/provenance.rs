//! Provenance of a report (`eval.json`, `bench.json`): the command line, the git commit of the
//! genarm checkout and whether its tree was dirty (asked of git at run time), and the SHA-256 of
//! every model file and adapter the run names.
//!
//! The git questions go to the source tree this binary was built from (its path is compiled in):
//! that is the code that produced the numbers. Where it is gone or is not a git checkout, the
//! commit and the dirty flag are `null` and `note` says why.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Everything a report records about how it was produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The exact command line.
    pub command: Vec<String>,
    /// The state of the genarm checkout.
    pub git: GitState,
    /// Every model file and adapter file named by the run, with its SHA-256.
    pub files: Vec<FileHash>,
}

/// The genarm checkout at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitState {
    /// The directory git was asked about.
    pub dir: String,
    /// `git rev-parse HEAD`; `None` when not known (see `note`).
    pub commit: Option<String>,
    /// Whether `git status --porcelain` listed anything (untracked files count); `None` when
    /// not known.
    pub dirty: Option<bool>,
    /// Why `commit` or `dirty` is `None`.
    pub note: Option<String>,
}

/// One hashed file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileHash {
    /// What the file is for: the name given with it (`base`, a reward name, ...).
    pub role: String,
    /// Its path: as given, or, for a file found in a given directory, that directory joined
    /// with the file's path inside it.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of its contents.
    pub sha256: String,
}

/// The genarm source tree this binary was built from.
pub fn source_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Provenance {
    /// Asks git about `git_dir` and hashes every `(role, path)`: a file is hashed, a directory
    /// (an HF model directory, a PEFT adapter) has each of its files hashed, in path order,
    /// skipping hidden entries. A path that does not exist is an error.
    pub fn collect(command: Vec<String>, git_dir: &Path, models: &[(String, PathBuf)]) -> Result<Provenance> {
        let mut files = Vec::new();
        for (role, path) in models {
            files.extend(hash_model_path(role, path)?);
        }
        Ok(Provenance { command, git: GitState::of(git_dir), files })
    }

    /// One line for a Markdown report: the commit (and whether the tree was dirty) and the
    /// hashed files, abbreviated.
    pub fn summary(&self) -> String {
        let git = match (&self.git.commit, self.git.dirty) {
            (Some(c), Some(true)) => format!("genarm commit `{c}` (tree dirty)"),
            (Some(c), _) => format!("genarm commit `{c}`"),
            (None, _) => format!("genarm commit unknown ({})", self.git.note.as_deref().unwrap_or("no git")),
        };
        if self.files.is_empty() {
            return format!("{git}; no model files named (pass --model-file NAME=PATH to hash them).");
        }
        let files: Vec<String> = self
            .files
            .iter()
            .map(|f| format!("{} `{}` sha256 `{}`", f.role, f.path, &f.sha256[..f.sha256.len().min(12)]))
            .collect();
        format!("{git}; {}.", files.join(", "))
    }
}

/// Parses `NAME=PATH` (or a bare `PATH`, named `model`) for `--model-file`.
pub fn parse_model_file(spec: &str) -> Result<(String, PathBuf)> {
    let (name, path) = match spec.split_once('=') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') => (name.to_string(), path),
        _ => ("model".to_string(), spec),
    };
    if path.is_empty() {
        bail!("--model-file {spec:?}: give NAME=PATH or PATH");
    }
    Ok((name, PathBuf::from(path)))
}

impl GitState {
    /// `git rev-parse HEAD` and `git status --porcelain` in `dir`, now.
    pub fn of(dir: &Path) -> GitState {
        let mut state = GitState { dir: dir.display().to_string(), commit: None, dirty: None, note: None };
        if !dir.is_dir() {
            state.note = Some(format!("{} does not exist: this genarm was built elsewhere", dir.display()));
            return state;
        }
        match git(dir, &["rev-parse", "HEAD"]) {
            Ok(out) => state.commit = Some(out.trim().to_string()),
            Err(e) => {
                state.note = Some(format!("not in a git checkout: {e}"));
                return state;
            }
        }
        match git(dir, &["status", "--porcelain"]) {
            Ok(out) => state.dirty = Some(!out.trim().is_empty()),
            Err(e) => state.note = Some(format!("git status failed: {e}")),
        }
        state
    }
}

/// Runs `git -C dir args`; its stdout, or why it failed.
fn git(dir: &Path, args: &[&str]) -> std::result::Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("`git {}` failed: {}", args.join(" "), err.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The hashes of `path` (a file, or each file of a directory) under `role`.
pub fn hash_model_path(role: &str, path: &Path) -> Result<Vec<FileHash>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{role}: {}", path.display()))?;
    let mut files = Vec::new();
    if meta.is_dir() {
        list_files(path, &mut files)?;
        if files.is_empty() {
            bail!("{role}: {} holds no files to hash", path.display());
        }
    } else {
        files.push(path.to_path_buf());
    }
    files
        .into_iter()
        .map(|f| {
            let bytes = std::fs::metadata(&f).with_context(|| format!("{role}: {}", f.display()))?.len();
            let sha256 = crate::digest::sha256_file(&f).with_context(|| format!("hashing {role}"))?;
            Ok(FileHash { role: role.to_string(), path: f.display().to_string(), bytes, sha256 })
        })
        .collect()
}

/// The regular files under `dir`, recursively, sorted, hidden entries skipped.
fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            list_files(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_file_specs_take_an_optional_name() {
        assert_eq!(parse_model_file("base=/m/x.gguf").unwrap(), ("base".into(), PathBuf::from("/m/x.gguf")));
        assert_eq!(parse_model_file("/m/a=b").unwrap(), ("model".into(), PathBuf::from("/m/a=b")));
        assert_eq!(parse_model_file("x.gguf").unwrap(), ("model".into(), PathBuf::from("x.gguf")));
        assert!(parse_model_file("base=").is_err());
    }

    #[test]
    fn outside_a_checkout_the_commit_is_null_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let g = GitState::of(dir.path());
        assert_eq!((g.commit.as_deref(), g.dirty), (None, None));
        assert!(g.note.as_deref().unwrap().contains("not in a git checkout"), "{g:?}");
        let g = GitState::of(&dir.path().join("gone"));
        assert!(g.note.unwrap().contains("built elsewhere"));
    }
}
