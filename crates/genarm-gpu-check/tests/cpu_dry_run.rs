//! genarm-gpu-check without a GPU: the CPU build says it has no CUDA, and `--cpu-dry-run` runs the
//! whole check (goldens, tp=2, decode benchmark, JSON and table) on the CPU.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_genarm-gpu-check");

#[cfg(not(feature = "cuda"))]
#[test]
fn cpu_build_says_it_was_built_without_cuda() {
    let out = Command::new(BIN).args(["--out", "/nonexistent/never-written.json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("built without CUDA"), "{stderr}");
    assert!(stderr.contains("scripts/build-gpu-bundle.sh"), "{stderr}");
}

#[test]
fn cpu_dry_run_checks_the_fixtures_and_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("result.json");
    let out = Command::new(BIN)
        .args([
            "--cpu-dry-run",
            "--no-smollm2",
            "--batches",
            "1,4",
            "--decode-steps",
            "3",
            "--prompt-tokens",
            "5",
        ])
        .arg("--out")
        .arg(&json)
        .env_remove("GENARM_GPU_DATA")
        .env_remove("GENARM_SMOLLM2_GGUF")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.trim_end().lines().last().unwrap().starts_with("overall: PASS"), "{stdout}");

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["status"], "pass");
    assert_eq!(report["device"]["kind"], "cpu");
    let logits = report["logits"].as_array().unwrap();
    // 3 fixtures x 3 dtypes, llama-mha tp=2 x 2 dtypes, one skipped SmolLM2 row.
    assert_eq!(logits.len(), 12, "{logits:#?}");
    for row in logits {
        let want = if row["model"] == "smollm2-135m-instruct" { "skip" } else { "pass" };
        assert_eq!(row["status"], want, "{row:#}");
    }
    let decode = report["decode"].as_array().unwrap();
    assert_eq!(decode.len(), 2);
    for row in decode {
        assert_eq!(row["status"], "pass", "{row:#}");
        assert!(row["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(row["floor_ms_per_step"].as_f64().unwrap() > 0.0);
    }
    assert!(report["memory"]["peak_bytes"].as_u64().unwrap() > 0);
}
