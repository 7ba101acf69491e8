//! Chunked prefill over HTTP: a router with a small `--max-batch-tokens`, which prefills every
//! prompt in chunks across steps, and one with the default budget, which prefills each prompt in
//! one step, each in front of its own real base-worker and rm-worker (one ARM), give identical
//! outputs — text, tokens and usage, log-probabilities within float noise — for greedy and seeded requests, one at a time
//! and with a long prompt arriving while another request streams. The small-budget cluster
//! really chunked: `genarm_prefill_chunks_total` counts its chunks, and its workers served more
//! `Step` calls for exactly the same tokens. Real processes on loopback.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The small budget: every prompt below is several times longer.
const SMALL_BUDGET: &str = "16";

fn start(budget: Option<&str>) -> Cluster {
    let mut router_args: Vec<String> = ["--worker-reprobe-ms", "200"].map(String::from).to_vec();
    if let Some(b) = budget {
        router_args.extend(["--max-batch-tokens".to_string(), b.to_string()]);
    }
    let rms = vec![("gqa".to_string(), fixture("llama-gqa-tied"))];
    // Without the prefix cache: the repeated requests below would reuse K/V, and this test
    // isolates what chunking does (cluster_prefix_cache covers the cache).
    let worker_args = vec!["--no-prefix-cache".to_string()];
    Cluster::start(ClusterSpec { base: fixture(BASE), rms, router_args, worker_args, ..Default::default() })
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A prompt of a few dozen words (far more tokens than [`SMALL_BUDGET`]), different per `topic`.
fn long_prompt(topic: &str) -> String {
    format!(
        "Here is a long story about {topic}. Once upon a time, in a small village by the sea, there \
         lived an old fisherman who went out every morning before dawn. He knew the winds, the \
         tides and the birds, and he told the children of the village what the sea had taught him \
         about {topic}, patience and luck. One day"
    )
}

/// The requests run one at a time, as (label, body).
fn requests() -> Vec<(&'static str, Value)> {
    let seeded = |topic: &str, seed: u64| {
        json!({"model": BASE, "prompt": long_prompt(topic), "max_tokens": 24, "temperature": 0.8,
            "top_p": 0.9, "seed": seed, "logprobs": 2})
    };
    let mut greedy = completion(&long_prompt("the moon"), 24);
    greedy["logprobs"] = json!(2);
    let mut unguided = completion(&long_prompt("rivers"), 24);
    unguided["logprobs"] = json!(0);
    vec![
        ("greedy, 1 ARM", with_guidance(greedy, &[("gqa", 1.0)], 1.0)),
        ("seeded top-p, 1 ARM", with_guidance(seeded("a lighthouse", 11), &[("gqa", 1.0)], 1.0)),
        ("seeded, negative weight", with_guidance(seeded("storms", 12), &[("gqa", -0.5)], 1.0)),
        ("greedy, unguided", unguided),
    ]
}

/// What must be equal across budgets: the text, the logprobs object (tokens, their
/// log-probabilities, the top alternatives) and the usage.
fn outcome(resp: &Value) -> (String, Value, Value) {
    (choice_text(resp), resp["choices"][0]["logprobs"].clone(), resp["usage"].clone())
}

/// Equal JSON, numbers within 1e-4: chunk boundaries change how the engine batches a prompt's
/// positions, which moves log-probs by float noise (about 1e-6) and nothing else.
fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= 1e-4,
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

/// The same text and usage, the same tokens and alternatives with log-probs within noise.
fn assert_same(got: &(String, Value, Value), want: &(String, Value, Value), what: &str) {
    assert_eq!((&got.0, &got.2), (&want.0, &want.2), "{what}: text or usage differ");
    assert!(close(&got.1, &want.1), "{what}: logprobs differ:\n{}\nvs\n{}", got.1, want.1);
}

/// A counter of a router's `/metrics`, summed over its label sets.
fn counter_sum(cluster: &Cluster, name: &str) -> f64 {
    genarm_testkit::metrics::total(&http::get(&cluster.url("/metrics")).unwrap().text(), name)
}

/// (Step calls, tokens) the cluster's workers served, summed over them.
fn worker_work(cluster: &Cluster) -> (u64, u64) {
    cluster
        .worker_grpc_urls()
        .iter()
        .map(|u| stats(u))
        .fold((0, 0), |(s, t), st| (s + st.steps, t + st.tokens))
}

/// A long streamed guided request, and a long prompt posted once the stream is in flight (its
/// prefill chunks share steps with the stream's decodes): the stream's text after its first two
/// events, and the posted request's outcome.
fn concurrent(cluster: &Cluster) -> (String, (String, Value, Value)) {
    let streamed = with_guidance(
        json!({"model": BASE, "prompt": long_prompt("a garden"), "max_tokens": 64, "temperature": 0.7,
            "seed": 21}),
        &[("gqa", 1.0)],
        1.0,
    );
    let s = open_stream_in_flight(cluster, &streamed);
    let arriving = with_guidance(
        json!({"model": BASE, "prompt": long_prompt("mountains and a very old road"), "max_tokens": 16,
            "temperature": 0, "logprobs": 1}),
        &[("gqa", 0.5)],
        1.0,
    );
    let posted = outcome(&post_ok(cluster, "/v1/completions", &arriving));
    let (text, errors, done) = drain(s);
    assert!(errors.is_empty() && done, "the stream failed: {errors:?}");
    (text, posted)
}

#[test]
fn a_chunked_prefill_cluster_streams_exactly_what_a_whole_prefill_cluster_streams() {
    let _serial = serial();
    let (want, want_work, want_concurrent) = {
        let whole = start(None);
        let outs: Vec<_> =
            requests().iter().map(|(_, body)| outcome(&post_ok(&whole, "/v1/completions", body))).collect();
        let work = worker_work(&whole);
        let concurrent = concurrent(&whole);
        assert_eq!(counter_sum(&whole, "genarm_prefill_chunks_total"), 0.0, "the default budget chunked");
        (outs, work, concurrent)
    };
    let chunked = start(Some(SMALL_BUDGET));
    let got: Vec<_> =
        requests().iter().map(|(_, body)| outcome(&post_ok(&chunked, "/v1/completions", body))).collect();
    let got_work = worker_work(&chunked);
    for (((label, _), got), want) in requests().iter().zip(&got).zip(&want) {
        let prompt_tokens = got.2["prompt_tokens"].as_u64().unwrap_or(0);
        assert!(prompt_tokens > 3 * 16, "{label}: a prompt of {prompt_tokens} tokens is hardly chunked");
        assert_same(got, want, label);
    }
    // The chunks went out as more Step calls, carrying exactly the same tokens.
    let chunks = counter_sum(&chunked, "genarm_prefill_chunks_total");
    assert!(chunks >= 2.0 * 2.0 * requests().len() as f64, "only {chunks} prefill chunks");
    assert_eq!(
        got_work.1, want_work.1,
        "the workers processed other tokens (steps {got_work:?} vs {want_work:?})"
    );
    assert!(got_work.0 > want_work.0, "no more Step calls when chunked: {got_work:?} vs {want_work:?}");
    // Streamed too: the concatenated text is the same.
    for ((label, body), want) in requests().iter().zip(&want) {
        assert_eq!(stream(&chunked, "/v1/completions", body.clone()).text, want.0, "{label}, streamed");
    }
    let got_concurrent = concurrent(&chunked);
    assert_eq!(got_concurrent.0, want_concurrent.0, "the stream beside the long prompt");
    assert_same(&got_concurrent.1, &want_concurrent.1, "a long prompt arriving while a request streams");
    let released = || chunked.worker_grpc_urls().iter().all(|u| stats(u).sequences == 0);
    assert!(poll_until(Duration::from_secs(5), released), "a sequence was left on a worker");
}
