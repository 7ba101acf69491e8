//! The sparse logits wire over HTTP: a router on `--logits-wire sparse` and one on the full wire,
//! each in front of its own real workers, stream identical text, log-probabilities and top
//! log-probabilities for greedy and seeded sampling with one and two ARMs and a negative weight;
//! the sparse router certified most tokens itself (`genarm_sparse_certified_total`), some of
//! them from refined certificates (`genarm_sparse_refined_total`), and fetched rows for the rest; and a request whose rm-worker replica is killed mid-generation on the sparse
//! wire finishes with the full wire's undisturbed text. Real processes on loopback.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ARMS: [(&str, &str); 2] = [("gqa", "llama-gqa-tied"), ("qwen", "qwen2-bias")];

fn start(sparse: bool, rms: Vec<(String, std::path::PathBuf)>) -> Cluster {
    let mut router_args: Vec<String> = ["--worker-reprobe-ms", "200"].map(String::from).to_vec();
    // Few candidates, so that the certified path, the refined certificates and the fetches of
    // whole rows all run on these fixtures.
    router_args.extend(match sparse {
        true => ["--logits-wire", "sparse", "--sparse-candidates", "16", "--sparse-refine-candidates", "32"]
            .map(String::from)
            .to_vec(),
        false => ["--logits-wire", "full"].map(String::from).to_vec(),
    });
    Cluster::start(ClusterSpec { base: fixture(BASE), rms, router_args, ..Default::default() })
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn arms() -> Vec<(String, std::path::PathBuf)> {
    ARMS.iter().map(|(n, f)| (n.to_string(), fixture(f))).collect()
}

/// The request mix, as (label, body).
fn requests() -> Vec<(&'static str, Value)> {
    let prompt = "The quick brown fox";
    let seeded = |seed: u64| json!({"model": BASE, "prompt": prompt, "max_tokens": 24, "temperature": 0.7, "top_p": 0.9, "seed": seed});
    let pure = json!({"model": BASE, "prompt": prompt, "max_tokens": 24, "temperature": 1.0, "seed": 7});
    let mut logprobs = seeded(3);
    logprobs["logprobs"] = json!(2);
    vec![
        ("greedy, 1 ARM", with_guidance(completion(prompt, 24), &[("gqa", 1.0)], 1.0)),
        ("greedy, 2 ARMs", with_guidance(completion(prompt, 24), &[("gqa", 1.0), ("qwen", 0.5)], 1.0)),
        ("seeded top-p, 1 ARM", with_guidance(seeded(11), &[("gqa", 1.0)], 1.0)),
        ("seeded top-p, 2 ARMs", with_guidance(seeded(12), &[("gqa", 0.5), ("qwen", 1.0)], 1.0)),
        ("pure temperature, 2 ARMs", with_guidance(pure, &[("gqa", 1.0), ("qwen", 1.0)], 1.0)),
        ("negative weight", with_guidance(seeded(13), &[("gqa", -0.5)], 1.0)),
        ("logprobs, 2 ARMs", with_guidance(logprobs, &[("gqa", 1.0), ("qwen", 0.5)], 1.0)),
        ("unguided seeded", seeded(14)),
    ]
}

/// What must be equal across wires: the text and the logprobs object.
fn outcome(resp: &Value) -> (String, Value) {
    (choice_text(resp), resp["choices"][0]["logprobs"].clone())
}

/// A counter of a router's `/metrics`, summed over its label sets.
fn counter_sum(cluster: &Cluster, name: &str) -> f64 {
    genarm_testkit::metrics::total(&http::get(&cluster.url("/metrics")).unwrap().text(), name)
}

#[test]
fn sparse_and_full_wire_clusters_stream_identical_outputs() {
    let _serial = serial();
    let want: Vec<(String, Value)> = {
        let full = start(false, arms());
        requests().iter().map(|(_, body)| outcome(&post_ok(&full, "/v1/completions", body))).collect()
    };
    let sparse = start(true, arms());
    for ((label, body), want) in requests().iter().zip(&want) {
        assert_eq!(&outcome(&post_ok(&sparse, "/v1/completions", body)), want, "{label}");
        // Streamed too: the concatenated text is the same.
        assert_eq!(stream(&sparse, "/v1/completions", body.clone()).text, want.0, "{label}, streamed");
    }
    let certified = counter_sum(&sparse, "genarm_sparse_certified_total");
    let fallbacks = counter_sum(&sparse, "genarm_sparse_fallbacks_total");
    assert!(certified > 0.0, "nothing certified (fallbacks {fallbacks})");
    assert!(fallbacks > 0.0, "nothing fetched, though a negative weight and logprobs always fetch");
    let refined = counter_sum(&sparse, "genarm_sparse_refined_total");
    assert!(
        refined > 0.0,
        "no refined certificate was fetched (certified {certified}, fallbacks {fallbacks})"
    );
    assert!(counter_sum(&sparse, "genarm_model_wire_bytes_total") > 0.0, "no per-model wire bytes counted");
}

#[test]
fn a_killed_replica_on_the_sparse_wire_replays_to_the_full_wires_text() {
    let _serial = serial();
    let body = {
        let b = json!({"model": BASE, "prompt": "Once upon a time", "max_tokens": 160, "temperature": 0.8,
            "top_p": 0.95, "seed": 4242});
        with_guidance(b, &[("gqa", 1.0)], 1.0)
    };
    let want = {
        let full = start(false, vec![("gqa".into(), fixture(ARMS[0].1))]);
        choice_text(&post_ok(&full, "/v1/completions", &body))
    };
    let two = vec![("gqa".to_string(), fixture(ARMS[0].1)), ("gqa".to_string(), fixture(ARMS[0].1))];
    let mut sparse = start(true, two);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let mut s = EventStream::post_json(&sparse.url("/v1/completions"), &streamed).unwrap();
    assert_eq!(s.status, 200);
    let mut text = String::new();
    let mut events = 0;
    while events < 4 {
        let data = s.next_data().unwrap().expect("the stream ended before the replica was killed");
        let v: Value = serde_json::from_str(&data).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
        events += 1;
    }
    let urls = sparse.rm_grpc_urls("gqa");
    let mut holder = None;
    assert!(
        poll_until(Duration::from_secs(5), || {
            holder = urls.iter().position(|u| stats(u).sequences > 0);
            holder.is_some()
        }),
        "no replica holds the request"
    );
    sparse.rms[holder.unwrap()].1.kill();
    while let Some(data) = s.next_data().unwrap() {
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&data).unwrap();
        assert!(v.get("error").is_none(), "error event: {v}");
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
    }
    assert_eq!(text, want);
}
