//! `genarm eval` as a user runs it, against a real cluster (fixture base, one ARM and the base
//! itself served as the control ARM): a one-ARM grid with a control and the base log-prob
//! fluency guard, then a two-ARM grid; eval.json, eval.md and the PNGs are checked against
//! direct requests with the same seeds, the demo scorers, and an in-test base log-prob.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use genarm_testkit::cluster::genarm_command;
use serde_json::{json, Value};

const PROMPTS: [&str; 3] = ["Tell me about the sea.", "What is a good breakfast?", "Say something kind."];

fn start() -> Cluster {
    Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: vec![("arm".into(), fixture("llama-gqa-tied")), ("control".into(), fixture(BASE))],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `genarm eval --url <router> <args>` to completion; returns (success, log tail).
fn eval(cluster: &Cluster, args: &[&str]) -> (bool, String) {
    let mut command = genarm_command("genarm").unwrap();
    command
        .env("CANDLE_NUM_THREADS", "1")
        .arg("eval")
        .arg("--url")
        .arg(format!("http://{}", cluster.router_addr()))
        .args(args);
    let mut child = ChildProcess::spawn("genarm eval", command).unwrap();
    let status = child
        .wait_exit(Instant::now() + Duration::from_secs(150))
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", child.log_tail(40), cluster.log_tails()));
    (status.success(), child.log_tail(60))
}

/// Checks the PNG signature and the IHDR size.
fn assert_png(path: &Path, width: u32, height: u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (width, height), "{}", path.display());
}

/// The base model's mean log-prob per token of `output` after a one-user-message ChatML prompt,
/// computed here from the reference engine (the chat rendered by hand, not by the template).
fn base_logprob(base: &RefModel, prompt: &str, output: &str) -> f64 {
    let mut ids = base.encode(&chatml_user(prompt));
    let out = base.tokenizer.encode(output, false).unwrap().get_ids().to_vec();
    let n = ids.len();
    ids.extend_from_slice(&out);
    let rows: Vec<Vec<f32>> = base.engine.forward_full(&ids).unwrap().to_vec2().unwrap();
    let v = base.vocab();
    let mut total = 0.0;
    for (j, &t) in out.iter().enumerate() {
        let row = &rows[n - 1 + j][..v];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        total += row[t as usize] as f64 - lse;
    }
    total / out.len() as f64
}

fn rows_by_label(report: &Value) -> Vec<(String, &Value)> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["combo"]["label"].as_str().unwrap().to_string(), r))
        .collect()
}

#[test]
fn eval_runs_a_one_arm_grid_with_a_control_and_a_two_arm_grid() {
    let _serial = serial();
    let cluster = start();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = PROMPTS.iter().map(|p| json!({ "prompt": p }).to_string()).collect();
    std::fs::write(&prompts, lines.join("\n") + "\n").unwrap();
    let prompts = prompts.to_str().unwrap().to_string();
    let base_dir = fixture(BASE);

    // --- One ARM, weights {0, 1}, with the control and the base log-prob guard.
    let out1 = dir.path().join("one");
    let (ok, log) = eval(
        &cluster,
        &[
            "--prompts",
            &prompts,
            "--grid",
            "arm=0,1",
            "--control",
            "control",
            "--samples",
            "2",
            "--seed",
            "7",
            "--max-tokens",
            "8",
            "--temperature",
            "0.9",
            "--concurrency",
            "4",
            "--base-model",
            base_dir.to_str().unwrap(),
            "--out",
            out1.to_str().unwrap(),
        ],
    );
    assert!(ok, "genarm eval failed:\n{log}\n{}", cluster.log_tails());
    println!("genarm eval (one ARM + control):\n{log}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out1.join("eval.json")).unwrap()).unwrap();
    let rows = rows_by_label(&report);
    let labels: Vec<&str> = rows.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["unguided", "arm=1", "control control=1"]);
    assert_eq!(rows[1].1["combo"]["rewards"], json!({"arm": 1.0}));
    assert_eq!(rows[2].1["combo"]["rewards"], json!({"control": 1.0}));
    assert_eq!(rows[2].1["combo"]["weights"], json!({"arm": 1.0}));
    assert_eq!(rows[0].1["combo"]["rewards"], json!({}));
    for (label, row) in &rows {
        assert_eq!(row["n_ok"], 6, "{label}: 3 prompts × 2 samples");
        assert_eq!(row["n_failed"], 0, "{label}");
    }
    assert_eq!(report["failures"], 0);
    let provenance = &report["provenance"];
    let cmd: Vec<&str> =
        provenance["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(cmd[1], "eval");
    assert!(cmd.contains(&"arm=0,1") && cmd.contains(&"--control"), "{cmd:?}");
    // The genarm checkout (or why it is unknown) and every file of --base-model, hashed.
    let git = &provenance["git"];
    assert!(git["commit"].as_str().is_some_and(|c| c.len() == 40) || git["note"].is_string(), "{git}");
    let files = provenance["files"].as_array().unwrap();
    let config = base_dir.join("config.json").display().to_string();
    let entry = files.iter().find(|f| f["path"] == config.as_str()).unwrap_or_else(|| panic!("{files:?}"));
    assert_eq!(entry["role"], "base-model");
    let want = genarm_demo::digest::sha256_file(&base_dir.join("config.json")).unwrap();
    assert_eq!(entry["sha256"], want.as_str());
    let outputs = report["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 3 * 3 * 2);

    // Every output scored by every demo scorer, exactly as the scorer scores its text.
    let text_of = |o: &Value| o["text"].as_str().unwrap().to_string();
    for o in outputs {
        for scorer in genarm_demo::scorers::all() {
            assert_eq!(o["scores"][scorer.name()].as_f64().unwrap(), scorer.score(&text_of(o)), "{o}");
        }
        assert!(
            o["completion_tokens"].as_u64().unwrap() >= 1 && o["completion_tokens"].as_u64().unwrap() <= 8
        );
    }
    // The table's mean of each row is the mean of its outputs' scores.
    for (combo, (label, row)) in rows.iter().enumerate() {
        for obj in row["objectives"].as_array().unwrap() {
            let name = obj["objective"].as_str().unwrap();
            let scores: Vec<f64> = outputs
                .iter()
                .filter(|o| o["combo"] == combo)
                .map(|o| o["scores"][name].as_f64().unwrap())
                .collect();
            let mean = scores.iter().sum::<f64>() / scores.len() as f64;
            assert!((obj["mean"]["value"].as_f64().unwrap() - mean).abs() < 1e-9, "{label} {name}");
            if combo == 0 {
                // Unguided against itself: every pair ties.
                assert_eq!(obj["win_rate_vs_unguided"]["value"], 0.5, "{label} {name}");
                assert_eq!(obj["win_rate_vs_unguided"]["n"], 6);
            }
        }
    }

    // Each output is what a direct request with the same seed gives (unguided, ARM, control).
    let mut checked = 0;
    for o in outputs.iter().filter(|o| o["prompt"] == 1 || o["sample"] == 1) {
        let combo = o["combo"].as_u64().unwrap() as usize;
        let mut body = json!({
            "model": BASE,
            "messages": [{"role": "user", "content": PROMPTS[o["prompt"].as_u64().unwrap() as usize]}],
            "max_tokens": 8, "temperature": 0.9, "seed": o["seed"],
        });
        let rewards = &rows[combo].1["combo"]["rewards"];
        if rewards != &json!({}) {
            body["guidance"] = json!({ "rewards": rewards });
        }
        let direct = choice_text(&post_ok(&cluster, "/v1/chat/completions", &body));
        assert_eq!(direct, text_of(o), "{} prompt {} seed {}", rows[combo].0, o["prompt"], o["seed"]);
        checked += 1;
    }
    assert_eq!(checked, 3 * 4);
    // Seeds are seed + sample index.
    assert!(outputs.iter().all(|o| o["seed"].as_u64().unwrap() == 7 + o["sample"].as_u64().unwrap()));

    // The fluency guard: base log-prob per token against the reference engine.
    let base = RefModel::load(&base_dir);
    let mut compared = 0;
    for o in outputs.iter().take(6) {
        let text = text_of(o);
        let p = PROMPTS[o["prompt"].as_u64().unwrap() as usize];
        match o["base_logprob_per_token"].as_f64() {
            Some(lp) => {
                let want = base_logprob(&base, p, &text);
                assert!((lp - want).abs() < 1e-4, "base log-prob {lp} vs reference {want} for {text:?}");
                assert!(lp < 0.0);
                compared += 1;
            }
            None => assert!(base.tokenizer.encode(text.as_str(), false).unwrap().get_ids().is_empty()),
        }
    }
    assert!(compared >= 3, "only {compared} outputs had a base log-prob");
    for (label, row) in &rows {
        assert!(row["mean_base_logprob_per_token"].as_f64().is_some(), "{label}");
        assert!(row["mean_tokens"].as_f64().unwrap() > 0.0, "{label}");
    }

    // eval.md: one table line per row, the control next to its ARM row.
    let md = std::fs::read_to_string(out1.join("eval.md")).unwrap();
    let table: Vec<&str> =
        md.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| weights")).collect();
    assert_eq!(table.len(), 3, "{md}");
    assert!(table[0].starts_with("| unguided | unguided | 6 |"), "{md}");
    assert!(table[1].starts_with("| arm=1 | ARM | 6 |"), "{md}");
    assert!(table[2].starts_with("| control control=1 | control | 6 |"), "{md}");
    assert!(md.contains("No request failed."), "{md}");
    for scorer in genarm_demo::scorers::all() {
        assert_png(&out1.join(format!("score_vs_weight_{}.png", scorer.name())), 900, 600);
    }
    assert!(!out1.join("pareto.png").exists());

    // --- Two ARMs, the full 2 × 2 grid: four rows and a Pareto plot.
    let out2 = dir.path().join("two");
    let (ok, log) = eval(
        &cluster,
        &[
            "--prompts",
            &prompts,
            "--grid",
            "arm=0,1",
            "--grid",
            "control=0,0.5",
            "--seed",
            "3",
            "--max-tokens",
            "6",
            "--out",
            out2.to_str().unwrap(),
        ],
    );
    assert!(ok, "genarm eval (two ARMs) failed:\n{log}\n{}", cluster.log_tails());
    println!("genarm eval (two ARMs):\n{log}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("eval.json")).unwrap()).unwrap();
    let rows = rows_by_label(&report);
    let labels: Vec<&str> = rows.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["unguided", "arm=0 control=0.5", "arm=1 control=0", "arm=1 control=0.5"]);
    assert_eq!(rows[3].1["combo"]["rewards"], json!({"arm": 1.0, "control": 0.5}));
    assert_eq!(report["outputs"].as_array().unwrap().len(), 4 * 3);
    assert!(rows.iter().all(|(_, r)| r["n_ok"] == 3 && r["mean_base_logprob_per_token"].is_null()));
    assert_png(&out2.join("pareto.png"), 900, 650);
    assert!(!out2.join("score_vs_weight_upbeat.png").exists());

    // --- Requests the router refuses (top_p 1.5): each retried once, counted, listed, and the run
    // fails after writing the report.
    let out3 = dir.path().join("failing");
    let (ok, log) = eval(
        &cluster,
        &["--prompts", &prompts, "--grid", "arm=1", "--top-p", "1.5", "--out", out3.to_str().unwrap()],
    );
    assert!(!ok, "{log}");
    assert!(log.contains("6 of 6 requests failed"), "{log}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out3.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["failures"], 6);
    for o in report["outputs"].as_array().unwrap() {
        assert_eq!(o["attempts"], 2, "{o}");
        assert!(o["text"].is_null() && o["error"].as_str().unwrap().contains("HTTP 400"), "{o}");
    }
    assert!(report["rows"].as_array().unwrap().iter().all(|r| r["n_ok"] == 0 && r["n_failed"] == 3));
    let md = std::fs::read_to_string(out3.join("eval.md")).unwrap();
    assert!(md.contains("**6 requests failed after a retry**") && md.contains("top_p"), "{md}");

    // --- A reward model the router does not serve: refused before generating, naming the known ones.
    let (ok, log) = eval(
        &cluster,
        &["--prompts", &prompts, "--grid", "nope=1", "--out", dir.path().join("x").to_str().unwrap()],
    );
    assert!(!ok);
    assert!(log.contains("`nope`") && log.contains("arm, control"), "{log}");
}
