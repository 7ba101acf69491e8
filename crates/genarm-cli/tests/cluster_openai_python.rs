//! The official `openai` Python client against a real cluster: completions, chat, streaming,
//! log-probs, `extra_body={"guidance": ...}` and error classes (tests/python/openai_client_check.py),
//! its greedy texts checked against the in-process reference. Fails — does not skip — when
//! Python or the `openai` package is missing.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The pinned client version `.ci/run` installs.
const OPENAI_VERSION: &str = "3.57.0";

fn install_hint() -> String {
    format!(
        "install it with: python3 -m venv ~/.cache/genarm/venv && ~/.cache/genarm/venv/bin/pip install \
         openai=={OPENAI_VERSION} (or point GENARM_PYTHON at a Python that has openai); .ci/run does this"
    )
}

#[test]
fn the_official_openai_python_client_works() {
    let _serial = serial();
    let python = genarm_testkit::cache::python();
    let probe = Command::new(&python).args(["-c", "import openai; print(openai.__version__)"]).output();
    match probe {
        Err(e) => panic!("cannot run {}: {e}; {}", python.display(), install_hint()),
        Ok(o) if !o.status.success() => panic!(
            "{} cannot import openai ({}); {}",
            python.display(),
            String::from_utf8_lossy(&o.stderr).trim(),
            install_hint()
        ),
        Ok(o) => {
            eprintln!("using {} with openai {}", python.display(), String::from_utf8_lossy(&o.stdout).trim())
        }
    }

    let cluster = Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: vec![("gqa".into(), fixture("llama-gqa-tied"))],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let script =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/openai_client_check.py"));
    let mut command = Command::new(&python);
    command.arg(&script).args([&format!("http://{}", cluster.router_addr()), BASE, "gqa"]);
    let mut child = ChildProcess::spawn("openai_client_check.py", command).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let line = child
        .wait_stdout_line(deadline, |l| l.starts_with('{'))
        .unwrap_or_else(|e| panic!("the Python check failed: {e:#}\n{}", cluster.log_tails()));
    let status = child.wait_exit(deadline).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "the Python check failed ({status}):\n{}", child.log_tail(80));
    let out: serde_json::Value = serde_json::from_str(&line).unwrap();

    let base = RefModel::load(&fixture(BASE));
    let gqa = RefModel::load(&fixture("llama-gqa-tied"));
    let completion_ids = base.encode("Once upon a time");
    let chat_ids = base.encode(&chatml_user("Tell me about the sea."));
    let expect = [
        ("completion", greedy(&base, &[], &completion_ids, 12)),
        ("chat", greedy(&base, &[], &chat_ids, 12)),
        ("chat_guided", greedy(&base, &[(&gqa, 1.0)], &chat_ids, 12)),
    ];
    for (key, want) in expect {
        assert_unambiguous(key, &want);
        assert_eq!(
            out[key].as_str(),
            Some(base.decode(&want.ids).as_str()),
            "{key} through the openai client"
        );
    }
}
