//! Provenance as the reports record it: the command line, the git commit and dirty flag of a
//! real checkout (a throwaway repository, clean then dirty), `null` with a reason outside one,
//! and the SHA-256 of each file of a model path, right for known contents.

use std::path::Path;
use std::process::Command;

use genarm_demo::provenance::{source_dir, GitState, Provenance};

const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=genarm-test",
            "-c",
            "user.email=test@genarm.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn records_command_commit_dirty_flag_and_file_hashes() {
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    std::fs::write(repo.path().join("README"), "x").unwrap();
    git(repo.path(), &["add", "README"]);
    git(repo.path(), &["commit", "-q", "-m", "one"]);
    let head = git(repo.path(), &["rev-parse", "HEAD"]);

    let models = tempfile::tempdir().unwrap();
    let gguf = models.path().join("base.gguf");
    std::fs::write(&gguf, b"abc").unwrap();
    let adapter = models.path().join("arm");
    std::fs::create_dir_all(adapter.join("sub")).unwrap();
    std::fs::write(adapter.join("adapter_model.safetensors"), b"").unwrap();
    std::fs::write(adapter.join("adapter_config.json"), b"abc").unwrap();
    std::fs::write(adapter.join("sub/extra"), b"abc").unwrap();
    std::fs::write(adapter.join(".hidden"), b"skipped").unwrap();

    let command = vec!["genarm".to_string(), "eval".into(), "--out".into(), "my dir".into()];
    let models_arg = [("base".to_string(), gguf.clone()), ("upbeat".to_string(), adapter.clone())];
    let p = Provenance::collect(command.clone(), repo.path(), &models_arg).unwrap();
    assert_eq!(p.command, command);
    assert_eq!(p.git.commit.as_deref(), Some(head.as_str()));
    assert_eq!((p.git.dirty, p.git.note.as_deref()), (Some(false), None));
    let got: Vec<(&str, String, u64, &str)> =
        p.files.iter().map(|f| (f.role.as_str(), f.path.clone(), f.bytes, f.sha256.as_str())).collect();
    let path = |p: &Path| p.display().to_string();
    assert_eq!(
        got,
        [
            ("base", path(&gguf), 3, ABC_SHA256),
            ("upbeat", path(&adapter.join("adapter_config.json")), 3, ABC_SHA256),
            ("upbeat", path(&adapter.join("adapter_model.safetensors")), 0, EMPTY_SHA256),
            ("upbeat", path(&adapter.join("sub/extra")), 3, ABC_SHA256),
        ]
    );

    // The JSON the reports embed carries every field, null where unknown.
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["git"]["commit"], head.as_str());
    assert_eq!(json["git"]["dirty"], false);
    assert!(json["git"]["note"].is_null());
    assert_eq!(json["files"][0]["sha256"], ABC_SHA256);
    assert_eq!(json["command"][3], "my dir");
    let back: Provenance = serde_json::from_value(json).unwrap();
    assert_eq!(back, p);

    // An untracked file makes the tree dirty.
    std::fs::write(repo.path().join("new"), "y").unwrap();
    assert_eq!(GitState::of(repo.path()).dirty, Some(true));

    // Outside a checkout: null, and the note says so.
    let g = GitState::of(models.path());
    assert_eq!((g.commit, g.dirty), (None, None));
    assert!(g.note.unwrap().contains("not in a git checkout"));

    // A model path that does not exist fails the collection (before an hour of generation).
    let missing = [("base".to_string(), models.path().join("nope.gguf"))];
    let err = format!("{:#}", Provenance::collect(vec![], repo.path(), &missing).unwrap_err());
    assert!(err.contains("nope.gguf"), "{err}");
}

#[test]
fn the_source_tree_is_the_checkout_these_tests_run_in() {
    let g = GitState::of(&source_dir());
    match &g.commit {
        Some(c) => {
            assert_eq!(c.len(), 40, "{g:?}");
            assert!(c.chars().all(|ch| ch.is_ascii_hexdigit()), "{g:?}");
            assert!(g.dirty.is_some(), "{g:?}");
        }
        // A source tree without .git (an unpacked archive) says why.
        None => assert!(g.note.is_some(), "{g:?}"),
    }
}
