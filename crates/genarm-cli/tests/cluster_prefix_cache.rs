//! The prefix cache over HTTP with real processes: a cluster whose workers cache prefixes (TP = 2,
//! base and ARM) streams what a cluster without the cache streams, for greedy and seeded
//! requests sharing a long system prompt, one of them while another runs; the workers report
//! the hits. With two replicas of an ARM, a request repeating a prompt goes to the replica that
//! holds it (cache-aware placement), where it hits.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ARM: &str = "llama-gqa-tied";
const SYSTEM: &str = "You are a careful assistant. Answer briefly, stay on the topic, and never \
                      repeat the question. The user asks about stories, weather and small animals.";

fn start(worker_args: &[&str], arm_replicas: usize) -> Cluster {
    let mut args: Vec<String> = ["--kv-block-size", "4"].map(String::from).to_vec();
    args.extend(worker_args.iter().map(|a| a.to_string()));
    Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: (0..arm_replicas).map(|_| ("gqa".to_string(), fixture(ARM))).collect(),
        worker_args: args,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn body(question: &str, seed: Option<u64>) -> Value {
    let mut b = json!({
        "model": BASE, "prompt": format!("{SYSTEM} {question}"), "max_tokens": 12, "logprobs": 0,
        "temperature": 0,
    });
    if let Some(seed) = seed {
        b["temperature"] = json!(0.8);
        b["top_p"] = json!(0.95);
        b["seed"] = json!(seed);
    }
    with_guidance(b, &[("gqa", 1.0)], 1.0)
}

/// Text and per-token log-probs of one completion.
fn run(cluster: &Cluster, body: &Value) -> (String, Vec<f64>) {
    let resp = post_ok(cluster, "/v1/completions", body);
    let logprobs = resp["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no logprobs in {resp}"))
        .iter()
        .map(|l| l.as_f64().unwrap())
        .collect();
    (choice_text(&resp), logprobs)
}

/// The requests: two questions after the same system prompt, greedy and seeded, one repeated
/// exactly; the last one runs while a long stream holds the shared blocks.
fn workload(cluster: &Cluster) -> Vec<(String, Vec<f64>)> {
    let mut out = vec![
        run(cluster, &body("What is a cat?", None)),
        run(cluster, &body("Why does it rain?", None)),
        run(cluster, &body("Tell me a story.", Some(7))),
        run(cluster, &body("What is a cat?", None)),
    ];
    let mut long = body("Describe a dog.", None);
    long["max_tokens"] = json!(200);
    long["stream"] = json!(true);
    let running = open_stream_in_flight(cluster, &long);
    out.push(run(cluster, &body("Describe a bird.", Some(11))));
    let (text, _, done) = drain(running);
    assert!(done, "the long stream ended without [DONE]");
    out.push((text, Vec::new()));
    out
}

fn hit_tokens(urls: &[String]) -> Vec<u64> {
    urls.iter().map(|u| stats(u).prefix_hit_tokens).collect()
}

#[test]
fn a_caching_cluster_streams_what_an_uncached_one_streams() {
    let _serial = serial();
    let want = {
        let cluster = start(&["--tp", "2", "--no-prefix-cache"], 1);
        assert!(!info(&cluster.base_grpc_url()).prefix_cache);
        let out = workload(&cluster);
        assert_eq!(hit_tokens(&cluster.worker_grpc_urls()), vec![0, 0]);
        out
    };
    let cluster = start(&["--tp", "2"], 1);
    assert!(info(&cluster.base_grpc_url()).prefix_cache);
    let got = workload(&cluster);
    for (i, ((wt, wl), (gt, gl))) in want.iter().zip(&got).enumerate() {
        assert_eq!(gt, wt, "request {i}: text differs with the prefix cache");
        assert_eq!(gl.len(), wl.len(), "request {i}");
        for (g, w) in gl.iter().zip(wl) {
            assert!((g - w).abs() <= 1e-3, "request {i}: log-prob {g} vs {w} without the cache");
        }
    }
    let hits = hit_tokens(&cluster.worker_grpc_urls());
    // Every request after the first shares the system prompt on both models.
    assert!(hits.iter().all(|&h| h >= 5 * 16), "hit tokens per worker (base, ARM): {hits:?}");
    // The router counts what the workers reported, per model.
    let metrics = http::get(&cluster.url("/metrics")).unwrap().text();
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("genarm_prefix_cached_tokens_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        counted,
        hits.iter().sum::<u64>() as f64,
        "genarm_prefix_cached_tokens_total vs the workers' Stats"
    );
    let s = stats(&cluster.base_grpc_url());
    assert!(s.prefix_lookup_tokens > s.prefix_hit_tokens && s.prefix_cached_blocks > 0, "{s:?}");
    assert_eq!(s.sequences, 0);
    // The worker's /metrics is not started in this cluster: Stats is the record.
}

#[test]
fn a_repeated_prompt_goes_to_the_replica_that_cached_it() {
    let _serial = serial();
    let cluster = start(&[], 2);
    let arms = cluster.rm_grpc_urls("gqa");
    let first = run(&cluster, &body("What is a cat?", None));
    // Both replicas are idle now, so least-loaded placement would alternate between them.
    for _ in 0..3 {
        // The same text; log-probs equal up to float noise (cached K/V came from another batch).
        let again = run(&cluster, &body("What is a cat?", None));
        assert_eq!(again.0, first.0);
        assert!(again.1.iter().zip(&first.1).all(|(a, b)| (a - b).abs() <= 1e-3), "{again:?} vs {first:?}");
    }
    let hits = hit_tokens(&arms);
    let lookups: Vec<u64> = arms.iter().map(|u| stats(u).prefix_lookup_tokens).collect();
    assert!(
        lookups.iter().filter(|&&l| l > 0).count() == 1 && hits.iter().any(|&h| h > 0),
        "every request should land on one replica and hit there: lookups {lookups:?}, hits {hits:?}"
    );
    // A different prompt has no affinity: it still gets served.
    let other = run(&cluster, &body("Why does it rain?", None));
    assert!(!other.0.is_empty());
    assert!(poll_until(Duration::from_secs(5), || arms.iter().all(|u| stats(u).sequences == 0)));
}
