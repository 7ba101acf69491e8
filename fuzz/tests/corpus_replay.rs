//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/*`) through its target's function,
//! on stable Rust: no input may panic, and every target has a non-empty corpus. A finding fixed
//! once stays fixed, and a target whose code no longer compiles fails CI.
//!
//! Its own `main` (no libtest harness): the chat-template target renders in a `TemplateSandbox`
//! whose children re-execute this binary, so `main` first turns such a child into a render
//! server.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use genarm_fuzz::targets;

/// Every target, by its corpus directory's name.
const TARGETS: [(&str, fn(&[u8])); 7] = [
    ("chat_template", targets::chat_template::chat_template),
    ("detokenize", targets::detokenize::detokenize),
    ("gguf_header", targets::gguf_header::gguf_header),
    ("request_json", targets::request_json::request_json),
    ("safetensors_dir", targets::safetensors_dir::safetensors_dir),
    ("sparse_certificate", targets::sparse_certificate::sparse_certificate),
    ("step_reply", targets::step_reply::step_reply),
];

fn main() -> ExitCode {
    genarm_text::run_sandbox_if_requested();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut failures = Vec::new();
    let mut replayed = 0usize;
    let started = Instant::now();
    for (name, target) in TARGETS {
        let dir = corpus.join(name);
        let mut files: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect(),
            Err(e) => {
                failures.push(format!("{name}: cannot read its corpus {}: {e}", dir.display()));
                continue;
            }
        };
        files.sort();
        if files.is_empty() {
            failures.push(format!("{name}: its corpus {} is empty; commit at least one seed", dir.display()));
        }
        for file in files {
            let data = match std::fs::read(&file) {
                Ok(d) => d,
                Err(e) => {
                    failures.push(format!("{name}: cannot read {}: {e}", file.display()));
                    continue;
                }
            };
            replayed += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: {} panicked: {why}", file.display()));
            }
        }
        println!("corpus_replay: {name} done");
    }
    println!("corpus_replay: {replayed} inputs over {} targets in {:.1?}", TARGETS.len(), started.elapsed());
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("corpus_replay: FAILED {f}");
        }
        ExitCode::FAILURE
    }
}
