//! Seeded sampling and concurrency through the HTTP API: a seeded request gives the same text
//! alone and among 8 concurrent others, streamed text concatenates to the non-streamed text, and
//! 32 concurrent greedy requests all equal their in-process references while the scheduler
//! batches them (worker `Stats`: more sequence-steps than steps). Real processes on loopback.

mod common;

use std::sync::Barrier;

use common::*;
use serde_json::{json, Value};

fn start() -> Cluster {
    Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: vec![("gqa".into(), fixture("llama-gqa-tied")), ("qwen".into(), fixture("qwen2-bias"))],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn sampled(prompt: &str, seed: u64, max_tokens: usize) -> Value {
    json!({
        "model": BASE, "prompt": prompt, "max_tokens": max_tokens,
        "temperature": 0.9, "top_p": 0.95, "top_k": 200, "seed": seed,
    })
}

/// Runs every request at once (threads released together); returns the texts in order.
fn concurrently(cluster: &Cluster, requests: &[(bool, &str, Value)]) -> Vec<String> {
    let barrier = Barrier::new(requests.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|(streamed, path, body)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    if *streamed {
                        stream(cluster, path, body.clone()).text
                    } else {
                        choice_text(&post_ok(cluster, path, body))
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("request thread panicked")).collect()
    })
}

/// (steps, sequence_steps) of a worker.
fn batching(url: &str) -> (u64, u64) {
    let s = stats(url);
    (s.steps, s.sequence_steps)
}

#[test]
fn a_seeded_request_gives_the_same_text_alone_and_among_eight_concurrent_others() {
    let _serial = serial();
    let cluster = start();
    let prompt = "The cat sat on the mat.";
    let target = with_guidance(sampled(prompt, 1234, 24), &[("gqa", 0.5)], 1.0);
    let alone = choice_text(&post_ok(&cluster, "/v1/completions", &target));
    assert_eq!(
        choice_text(&post_ok(&cluster, "/v1/completions", &target)),
        alone,
        "same seed, different text"
    );
    let other_seed = with_guidance(sampled(prompt, 4321, 24), &[("gqa", 0.5)], 1.0);
    assert_ne!(
        choice_text(&post_ok(&cluster, "/v1/completions", &other_seed)),
        alone,
        "another seed gave the same text: the seed (or the temperature) is not used"
    );
    let greedy = with_guidance(completion(prompt, 24), &[("gqa", 0.5)], 1.0);
    assert_ne!(
        choice_text(&post_ok(&cluster, "/v1/completions", &greedy)),
        alone,
        "sampling gave the greedy text"
    );

    let others: Vec<(bool, &str, Value)> = (0..8u64)
        .map(|i| {
            let prompts = ["Hello", "Once upon a time", "The weather today is", "日本 and café"];
            let mut body = sampled(prompts[i as usize % 4], 100 + i, 16 + 4 * i as usize);
            if i % 2 == 0 {
                body = with_guidance(body, &[("qwen", 0.8), ("gqa", 0.3)], 0.7);
            }
            (i % 3 == 0, "/v1/completions", body)
        })
        .collect();
    let base = cluster.base_grpc_url();
    for slot in [0, 4, 8] {
        let mut requests = others.clone();
        requests.insert(slot, (false, "/v1/completions", target.clone()));
        let (steps0, seqs0) = batching(&base);
        let texts = concurrently(&cluster, &requests);
        let (steps1, seqs1) = batching(&base);
        assert_eq!(
            texts[slot], alone,
            "the seeded request's text changed among 8 concurrent requests (slot {slot})"
        );
        assert!(
            seqs1 - seqs0 > steps1 - steps0,
            "the 9 requests were not batched together ({} sequence-steps in {} steps)",
            seqs1 - seqs0,
            steps1 - steps0
        );
    }
}

#[test]
fn streamed_text_concatenates_to_the_non_streamed_text() {
    let _serial = serial();
    let cluster = start();
    let cases: Vec<(&str, &str, Value)> = vec![
        ("greedy completion", "/v1/completions", completion("Once upon a time, the naïve fisherman", 32)),
        (
            "seeded guided completion",
            "/v1/completions",
            with_guidance(sampled("日本 and café au lait", 99, 40), &[("qwen", 1.0)], 1.0),
        ),
        (
            "seeded chat with two ARMs",
            "/v1/chat/completions",
            with_guidance(
                json!({"model": BASE, "messages": [{"role": "user", "content": "Tell me a story."}],
                       "max_tokens": 40, "temperature": 1.0, "seed": 5}),
                &[("gqa", 0.6), ("qwen", 0.4)],
                0.5,
            ),
        ),
    ];
    for (what, path, body) in cases {
        let whole = post_ok(&cluster, path, &body);
        let streamed = stream(&cluster, path, body.clone());
        assert!(streamed.done, "{what}: the stream did not end with data: [DONE]");
        assert!(streamed.chunks >= 2, "{what}: {} chunks is not a stream", streamed.chunks);
        assert!(!streamed.text.is_empty(), "{what}: empty text");
        assert_eq!(streamed.text, choice_text(&whole), "{what}: streamed text differs");
        assert_eq!(streamed.finish.as_deref(), Some(finish_reason(&whole).as_str()), "{what}: finish_reason");
    }
}

#[test]
fn thirty_two_concurrent_requests_all_equal_their_references_and_are_batched() {
    let _serial = serial();
    let cluster = start();
    let base = RefModel::load(&fixture(BASE));
    let gqa = RefModel::load(&fixture("llama-gqa-tied"));
    let qwen = RefModel::load(&fixture("qwen2-bias"));
    let prompts = [
        "Hello",
        "The cat sat on the mat.",
        "Once upon a time",
        "The weather today is",
        "日本 and café au lait",
        "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
        "A fisherman counted 17 boats",
        "Why is the sky blue?",
    ];
    let guidances: [&[(&str, f64)]; 4] =
        [&[], &[("gqa", 1.0)], &[("qwen", 0.5)], &[("gqa", 0.4), ("qwen", 0.9)]];
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for i in 0..32 {
        let prompt = prompts[i % prompts.len()];
        let rewards = guidances[(i / prompts.len()) % guidances.len()];
        let max_tokens = 8 + (i * 5) % 17;
        let arms: Vec<(&RefModel, f32)> =
            rewards.iter().map(|(n, w)| (if *n == "gqa" { &gqa } else { &qwen }, *w as f32)).collect();
        let want = greedy(&base, &arms, &base.encode(prompt), max_tokens);
        assert_unambiguous(&format!("request {i}"), &want);
        expected.push(base.decode(&want.ids));
        let body = completion(prompt, max_tokens);
        let body = if rewards.is_empty() { body } else { with_guidance(body, rewards, 1.0) };
        requests.push((i % 4 == 3, "/v1/completions", body));
    }
    let before: Vec<(u64, u64)> = cluster.worker_grpc_urls().iter().map(|u| batching(u)).collect();
    let texts = concurrently(&cluster, &requests);
    for (i, (text, want)) in texts.iter().zip(&expected).enumerate() {
        assert_eq!(text, want, "request {i} ({}) differs from its reference", requests[i].2);
    }
    let after: Vec<(u64, u64)> = cluster.worker_grpc_urls().iter().map(|u| batching(u)).collect();
    for (url, ((s0, q0), (s1, q1))) in cluster.worker_grpc_urls().iter().zip(before.iter().zip(&after)) {
        assert!(
            q1 - q0 > s1 - s0,
            "worker {url}: {} sequence-steps in {} steps: no batching",
            q1 - q0,
            s1 - s0
        );
    }
    let metrics = http::get(&cluster.url("/metrics")).unwrap();
    assert_eq!(metrics.status, 200, "/metrics: {}", metrics.text());
}
