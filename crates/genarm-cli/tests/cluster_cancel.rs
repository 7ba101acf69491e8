//! Cancellation: a streaming client that disconnects after 2 tokens has its sequence freed on
//! every worker within a second, and generation for it stops long before its `max_tokens`.
//! Real processes on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const MAX_TOKENS: usize = 300;

#[test]
fn a_streaming_client_that_disconnects_after_two_tokens_is_released_everywhere_within_a_second() {
    let _serial = serial();
    let cluster = Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: vec![("gqa".into(), fixture("llama-gqa-tied")), ("qwen".into(), fixture("qwen2-bias"))],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let prompt = "Once upon a time";
    let rewards = [("gqa", 0.5), ("qwen", 0.5)];

    // The request would run MAX_TOKENS steps if nobody cancelled it: its greedy continuation
    // never reaches EOS (checked on the reference), so an early end can only be the disconnect.
    let base = RefModel::load(&fixture(BASE));
    let arms =
        [(&RefModel::load(&fixture("llama-gqa-tied")), 0.5), (&RefModel::load(&fixture("qwen2-bias")), 0.5)];
    let want = greedy(&base, &arms, &base.encode(prompt), MAX_TOKENS);
    assert_eq!(
        want.finish,
        "length",
        "the reference stops on EOS after {} tokens; pick another prompt",
        want.ids.len()
    );

    let workers = cluster.worker_grpc_urls();
    let before: Vec<u64> = workers.iter().map(|u| stats(u).sequence_steps).collect();
    let mut body = with_guidance(completion(prompt, MAX_TOKENS), &rewards, 1.0);
    body["stream"] = json!(true);
    let mut events = EventStream::post_json(&cluster.url("/v1/completions"), &body).unwrap();
    assert_eq!(events.status, 200);
    for i in 0..2 {
        let data = events.next_data().unwrap().unwrap_or_else(|| panic!("the stream ended after {i} events"));
        assert_ne!(data, "[DONE]", "the stream ended after {i} events");
    }
    for url in &workers {
        assert_eq!(stats(url).sequences, 1, "worker {url} should hold the running sequence");
    }
    drop(events);
    let disconnected = Instant::now();

    let freed = poll_until(Duration::from_secs(1), || workers.iter().all(|u| stats(u).sequences == 0));
    let took = disconnected.elapsed();
    let held: Vec<String> =
        workers.iter().map(|u| format!("{u}: {} sequences", stats(u).sequences)).collect();
    assert!(freed, "1 s after the disconnect the workers still hold KV: {held:?}\n{}", cluster.log_tails());
    eprintln!("sequence freed on every worker {took:?} after the disconnect");

    // Nothing runs any more, and far fewer than MAX_TOKENS steps ran.
    let settled = settled_steps(&workers);
    assert_no_steps_for(&workers, &settled, Duration::from_millis(300));
    for ((url, b), s) in workers.iter().zip(&before).zip(&settled) {
        assert!(
            s - b < MAX_TOKENS as u64 / 2,
            "worker {url} ran {} sequence-steps for a request cancelled after 2 tokens",
            s - b
        );
    }
    // The router keeps serving.
    post_ok(&cluster, "/v1/completions", &completion("Hello", 4));
}

#[test]
fn a_non_streaming_client_that_disconnects_is_released_everywhere_within_a_second() {
    let _serial = serial();
    let cluster = Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: vec![("gqa".into(), fixture("llama-gqa-tied"))],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let prompt = "Once upon a time";
    let base = RefModel::load(&fixture(BASE));
    let gqa = RefModel::load(&fixture("llama-gqa-tied"));
    let want = greedy(&base, &[(&gqa, 0.5)], &base.encode(prompt), MAX_TOKENS);
    assert_eq!(
        want.finish,
        "length",
        "the reference stops on EOS after {} tokens; pick another prompt",
        want.ids.len()
    );

    let workers = cluster.worker_grpc_urls();
    let before: Vec<u64> = workers.iter().map(|u| stats(u).sequence_steps).collect();
    let body = with_guidance(completion(prompt, MAX_TOKENS), &[("gqa", 0.5)], 1.0).to_string();
    let mut conn = std::net::TcpStream::connect(cluster.router_addr()).unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    std::io::Write::write_all(&mut conn, format!("{head}{body}").as_bytes()).unwrap();
    assert!(
        poll_until(Duration::from_secs(5), || workers.iter().all(|u| stats(u).sequences == 1)),
        "the request never started on every worker"
    );
    drop(conn);
    let disconnected = Instant::now();
    let freed = poll_until(Duration::from_secs(1), || workers.iter().all(|u| stats(u).sequences == 0));
    assert!(freed, "1 s after the disconnect the workers still hold KV\n{}", cluster.log_tails());
    eprintln!("sequence freed on every worker {:?} after the disconnect", disconnected.elapsed());
    for ((url, b), s) in workers.iter().zip(&before).zip(settled_steps(&workers)) {
        let ran = s - b;
        assert!(ran < MAX_TOKENS as u64 / 2, "worker {url} ran {ran} sequence-steps for a cancelled request");
    }
    post_ok(&cluster, "/v1/completions", &completion("Hello", 4));
}

/// The workers' `sequence_steps` once the step that may still have been in flight at the cancel
/// is done: read every 100 ms until two reads in a row agree, failing after 10 s of change.
fn settled_steps(workers: &[String]) -> Vec<u64> {
    let read = || workers.iter().map(|u| stats(u).sequence_steps).collect::<Vec<u64>>();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = read();
        if now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the workers still step 10 s after the cancel: {last:?} -> {now:?}"
        );
        last = now;
    }
}

/// Watches the workers for `window` (reading every 20 ms) and fails at the first step any of
/// them runs beyond `settled`: after a cancel nothing may step again.
fn assert_no_steps_for(workers: &[String], settled: &[u64], window: Duration) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        for (url, s) in workers.iter().zip(settled) {
            assert_eq!(stats(url).sequence_steps, *s, "worker {url} is still stepping after the cancel");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
