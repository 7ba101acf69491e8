//! `genarm bench` as a user runs it, against a real cluster (fixture base plus one smaller ARM):
//! concurrency 1 and 2, unguided and guided, a few requests each. bench.json must hold the four
//! runs with no errors, ordered percentiles, tokens within max_tokens, throughput = tokens /
//! time, per-run token counts equal to the router's own `genarm_generated_tokens_total` deltas,
//! and the whole bench's tokens (warm-up included) equal to the delta this test scrapes itself;
//! bench.md and both PNGs must exist. Failed requests are reported (count and message) and fail
//! the command; an unknown reward name is refused. Real processes on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use genarm_testkit::cluster::genarm_command;
use serde_json::Value;

/// `genarm_generated_tokens_total` read from the router's /metrics by plain line matching
/// (independent of genarm-bench's parser); 0 before the first token.
fn generated_tokens(cluster: &Cluster) -> f64 {
    let r = http::get(&cluster.url("/metrics")).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.status, 200);
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("genarm_generated_tokens_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

#[test]
fn bench_reports_consistent_runs_for_unguided_and_guided_load() {
    let _serial = serial();
    let arm = small_arm();
    let cluster = Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: vec![("small".into(), arm.path.clone())],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"Once upon a time\"}\n{\"prompt\": \"The weather today\"}\n{\"prompt\": \"Tell me a story\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let max_tokens = 6u64;
    let requests = 3u64;

    let before = generated_tokens(&cluster);
    let mut command = genarm_command("genarm").unwrap();
    command
        .arg("bench")
        .args(["--url", &cluster.url("")])
        .arg("--prompts")
        .arg(&prompts)
        .args(["--concurrency", "1,2", "--max-tokens", &max_tokens.to_string()])
        .args(["--guidance", "small=1", "--compare-unguided"])
        .args(["--requests", &requests.to_string(), "--warmup", "1", "--seed", "5"])
        .arg(format!("--model-file=small={}", arm.path.display()))
        .arg("--out")
        .arg(&out);
    let mut bench = ChildProcess::spawn("genarm bench", command).unwrap();
    let status =
        bench.wait_exit(Instant::now() + Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        status.success(),
        "genarm bench failed ({status}):\n{}\n{}",
        bench.log_tail(80),
        cluster.log_tails()
    );
    let after = generated_tokens(&cluster);

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap();
    let provenance = &report["provenance"];
    assert!(provenance["command"].as_array().unwrap().iter().any(|a| a == "bench"), "{provenance}");
    let git = &provenance["git"];
    assert!(git["commit"].as_str().is_some_and(|c| c.len() == 40) || git["note"].is_string(), "{git}");
    // --model-file: every file of the ARM's directory, hashed.
    let files = provenance["files"].as_array().unwrap();
    let config = arm.path.join("config.json");
    let entry = files
        .iter()
        .find(|f| f["path"] == config.display().to_string().as_str())
        .unwrap_or_else(|| panic!("{files:?}"));
    assert_eq!(entry["role"], "small");
    assert_eq!(entry["sha256"], genarm_demo::digest::sha256_file(&config).unwrap().as_str());
    let runs = report["runs"].as_array().unwrap();
    let plan: Vec<(u64, &str)> =
        runs.iter().map(|r| (r["concurrency"].as_u64().unwrap(), r["mode"].as_str().unwrap())).collect();
    assert_eq!(plan, [(1, "unguided"), (1, "guided"), (2, "unguided"), (2, "guided")]);
    let mut all_tokens = 0.0;
    for r in runs {
        let label = format!("c={} {}", r["concurrency"], r["mode"]);
        assert_eq!(r["requests"].as_u64(), Some(requests), "{label}");
        assert_eq!(r["ok"].as_u64(), Some(requests), "{label}: {}", r["error_messages"]);
        assert_eq!(r["errors"].as_u64(), Some(0), "{label}");
        assert_eq!(r["warmup_errors"].as_u64(), Some(0), "{label}");
        assert_eq!(r["warmup_requests"].as_u64(), Some(1), "{label}");
        assert_eq!(r["usage_reported"], true, "{label}");
        let guided = r["mode"] == "guided";
        assert_eq!(r["guidance"].as_object().unwrap().contains_key("small"), guided, "{label}");
        // Tokens: each request 1..=max_tokens; the run's total is their sum.
        let recs = r["request_records"].as_array().unwrap();
        assert_eq!(recs.len() as u64, requests);
        let mut sum = 0;
        for q in recs {
            let t = q["output_tokens"].as_u64().unwrap();
            assert!((1..=max_tokens).contains(&t), "{label}: {q}");
            assert!(q["content_chunks"].as_u64().unwrap() <= t, "{label}: {q}");
            assert!(f(q, "/ttft_s") <= f(q, "/e2e_s"), "{label}: {q}");
            sum += t;
        }
        let tokens = r["output_tokens"].as_u64().unwrap();
        assert_eq!(tokens, sum, "{label}");
        assert!(tokens > 0);
        let tps = f(r, "/output_tokens_per_s");
        assert!((tps - tokens as f64 / f(r, "/duration_s")).abs() < 1e-6 * tps.max(1.0), "{label}");
        assert!((f(r, "/requests_per_s") - requests as f64 / f(r, "/duration_s")).abs() < 1e-6, "{label}");
        // Percentiles are ordered and within the samples.
        for key in ["ttft", "latency", "itl"] {
            let s = &r[key];
            if s["count"].as_u64().unwrap() == 0 {
                assert_eq!(key, "itl", "{label}: no {key} samples");
                continue;
            }
            let (p50, p95, p99, max) = (f(s, "/p50"), f(s, "/p95"), f(s, "/p99"), f(s, "/max"));
            assert!(0.0 <= p50 && p50 <= p95 && p95 <= p99 && p99 <= max, "{label} {key}: {s}");
        }
        assert_eq!(r["ttft"]["count"].as_u64(), Some(requests), "{label}");
        // The router counted exactly the run's tokens during the measured phase.
        let acc = &r["step_accounting"];
        assert_eq!(f(acc, "/router_generated_tokens"), tokens as f64, "{label}: {acc}");
        assert!(f(acc, "/steps") > 0.0, "{label}: {acc}");
        let batch = f(acc, "/mean_batch_size");
        let c = r["concurrency"].as_f64().unwrap();
        assert!((1.0..=c).contains(&batch), "{label}: mean batch {batch} outside [1, {c}]");
        for key in
            ["mean_step_wall_s", "mean_slowest_forward_s", "mean_router_overhead_s", "wire_bytes_per_step"]
        {
            // The router exports the per-step accounting: every figure is present and positive.
            let v = acc[key].as_f64().unwrap_or_else(|| panic!("{label}: {key} missing in {acc}"));
            assert!(v > 0.0, "{label}: {key} = {v}");
        }
        let (wall, fwd) = (f(acc, "/mean_step_wall_s"), f(acc, "/mean_slowest_forward_s"));
        assert!(fwd <= wall, "{label}: slowest forward {fwd} > step wall {wall}");
        let overhead = f(acc, "/mean_router_overhead_s");
        assert!(
            (wall - fwd - overhead).abs() <= 1e-3 * wall.max(1e-3),
            "{label}: {wall} - {fwd} != {overhead}"
        );
        all_tokens += (tokens
            + r["failed_output_tokens"].as_u64().unwrap()
            + r["warmup_output_tokens"].as_u64().unwrap()) as f64;
    }
    assert_eq!(after - before, all_tokens, "tokens the router generated during the bench vs bench.json");

    // Failed requests are counted, reported with their message and fail the command; an unknown
    // reward name is refused before anything is sent.
    let bad_out = dir.path().join("bad");
    let mut command = genarm_command("genarm").unwrap();
    command.arg("bench").args(["--url", &cluster.url("")]).arg("--prompts").arg(&prompts);
    command.args(["--concurrency", "2", "--max-tokens", "100000", "--requests", "3", "--warmup", "0"]);
    command.arg("--out").arg(&bad_out);
    let mut bad = ChildProcess::spawn("genarm bench (failing)", command).unwrap();
    let status = bad.wait_exit(Instant::now() + Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    let log = bad.log_tail(40);
    assert!(!status.success() && log.contains("3 requests failed"), "{status}:\n{log}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(bad_out.join("bench.json")).unwrap()).unwrap();
    let run = &report["runs"][0];
    assert_eq!((run["errors"].as_u64(), run["ok"].as_u64()), (Some(3), Some(0)), "{run}");
    // One message per prompt (they name its token count); every failure is counted.
    let messages = run["error_messages"].as_array().unwrap();
    assert_eq!(messages.iter().map(|m| m["count"].as_u64().unwrap()).sum::<u64>(), 3, "{run}");
    for m in messages {
        let text = m["message"].as_str().unwrap();
        assert!(text.contains("HTTP 400") && text.contains("max_tokens"), "{m}");
    }
    let mut command = genarm_command("genarm").unwrap();
    command.arg("bench").args(["--url", &cluster.url("")]).arg("--prompts").arg(&prompts);
    command.args(["--guidance", "nope=1", "--out"]).arg(dir.path().join("nope"));
    let mut bad = ChildProcess::spawn("genarm bench (unknown reward)", command).unwrap();
    let status = bad.wait_exit(Instant::now() + Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    let log = bad.log_tail(40);
    assert!(!status.success() && log.contains("\"nope\"") && log.contains("small"), "{status}:\n{log}");

    let md = std::fs::read_to_string(out.join("bench.md")).unwrap();
    eprintln!("{md}");
    assert!(md.contains("| 2 | guided |") && md.contains("Per-step accounting"), "{md}");
    for png in ["throughput.png", "latency.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(
            bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{png}: {} bytes",
            bytes.len()
        );
    }
}
