//! Router limits with real processes: `--max-tokens-limit`, `--max-prompt-tokens`,
//! `--max-stop-sequences`, `--max-stop-length` answer 400 naming the flag and `--max-body-bytes`
//! 413; the per-key concurrency limit answers 429 with `Retry-After` while the key's request is
//! in flight, and the token-rate limit once its budget is spent; and the step watchdog
//! (`--step-timeout-secs`): an rm-worker paused with SIGSTOP makes the in-flight request it
//! guides fail within the deadline with an error naming it, while unguided requests (in flight
//! and new) are served, and after SIGCONT no sequence is left in any worker's KV.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A refused request: what it is, its body, the status, the error's `param`, words of its message.
type Case = (&'static str, Vec<u8>, u16, Option<&'static str>, Vec<String>);

fn post_with(cluster: &Cluster, auth: &str, body: &[u8]) -> Response {
    let headers = [("Content-Type", "application/json"), ("Authorization", auth)];
    http::request("POST", &cluster.url("/v1/completions"), &headers, body).unwrap()
}

/// A streamed completion sent with an `Authorization` header, read until its first data event
/// (so the request is running); the stream is returned open.
fn open_keyed_stream(cluster: &Cluster, auth: &str, body: &Value) -> EventStream {
    let mut s =
        EventStream::post_json_with(&cluster.url("/v1/completions"), &[("Authorization", auth)], body)
            .unwrap_or_else(|e| panic!("the keyed stream: {e:#}"));
    assert_eq!(s.status, 200, "the keyed stream was refused");
    loop {
        let data = s.next_data().unwrap().expect("the stream ended before its first event");
        if data.starts_with('{') {
            return s;
        }
    }
}

#[test]
fn request_limits_answer_400_413_and_429_naming_the_limit() {
    let _serial = serial();
    let key = "sk-limits-test-key";
    let auth = format!("Bearer {key}");
    let cluster = Cluster::start(ClusterSpec {
        base: fixture(BASE),
        router_args: [
            "--api-key",
            key,
            "--max-tokens-limit",
            "400",
            "--max-prompt-tokens",
            "30",
            "--max-stop-sequences",
            "2",
            "--max-stop-length",
            "8",
            "--max-body-bytes",
            "4096",
            "--key-max-concurrent",
            "1",
            "--key-tokens-per-minute",
            "60",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let base = RefModel::load(&fixture(BASE));
    let body = |extra: Value| {
        let mut b = completion("Once upon a time", 4);
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b.to_string().into_bytes()
    };
    // A prompt just over the limit, by the base tokenizer's count.
    let mut long = String::from("Once upon a time");
    while base.encode(&long).len() <= 30 {
        long.push_str(" there");
    }
    let n_long = base.encode(&long).len();
    let cases: Vec<Case> = vec![
        (
            "max_tokens over --max-tokens-limit",
            body(json!({"max_tokens": 401})),
            400,
            Some("max_tokens"),
            vec!["--max-tokens-limit".into(), "401".into()],
        ),
        (
            "a prompt over --max-prompt-tokens",
            body(json!({"prompt": long})),
            400,
            Some("prompt"),
            vec!["--max-prompt-tokens".into(), n_long.to_string()],
        ),
        (
            "too many stop strings",
            body(json!({"stop": ["a", "b", "c"]})),
            400,
            Some("stop"),
            vec!["at most 2".into()],
        ),
        (
            "a stop string over --max-stop-length",
            body(json!({"stop": ["123456789"]})),
            400,
            Some("stop"),
            vec!["--max-stop-length".into(), "9 bytes".into()],
        ),
        (
            "a body over --max-body-bytes",
            body(json!({"prompt": "x".repeat(5000)})),
            413,
            None,
            vec!["--max-body-bytes".into(), "4096".into()],
        ),
    ];
    for (what, raw, status, param, words) in &cases {
        let r = post_with(&cluster, &auth, raw);
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        assert_error(&r, *status, &words, what);
        assert_eq!(r.json().unwrap()["error"]["param"].as_str(), *param, "{what}");
    }

    // Concurrency: the key's one slot is held by a running stream, held still by pausing the
    // base-worker; a second request of the key gets 429 with Retry-After at once.
    let long_stream = json!({"model": BASE, "prompt": "Once upon a time", "max_tokens": 300,
        "temperature": 0, "stream": true});
    let mut held = open_keyed_stream(&cluster, &auth, &long_stream);
    let base_pid = cluster.base.pid() as libc::pid_t;
    // SAFETY: kill(2) on the base-worker's process group, which the harness created.
    unsafe { libc::kill(-base_pid, libc::SIGSTOP) };
    let started = Instant::now();
    let r = post_with(&cluster, &auth, &body(json!({})));
    assert!(started.elapsed() < Duration::from_secs(5), "the 429 should come at once");
    assert_error(&r, 429, &["--key-max-concurrent", "key-1"], "a second concurrent request of one key");
    assert_eq!(r.json().unwrap()["error"]["code"], "concurrency_limit_exceeded");
    let retry: u64 = r.header("retry-after").expect("a 429 carries Retry-After").parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    // SAFETY: as above.
    unsafe { libc::kill(-base_pid, libc::SIGCONT) };
    // Read to the last event.
    let mut rest = Vec::new();
    while let Some(data) = held.next_data().unwrap_or(None) {
        let done = data == "[DONE]";
        rest.push(data);
        if done {
            break;
        }
    }
    assert!(
        rest.last().is_some_and(|d| d == "[DONE]") && !rest.iter().any(|d| d.contains("\"error\"")),
        "the held stream: {rest:?}"
    );
    drop(held);

    // Token rate: 60 tokens per minute; the 300-token stream was admitted on the full bucket
    // and left it in debt, so the next request waits (Retry-After) for the budget to come back.
    let r = post_with(&cluster, &auth, &body(json!({})));
    assert_error(&r, 429, &["--key-tokens-per-minute", "key-1"], "a request over the token budget");
    assert_eq!(r.json().unwrap()["error"]["code"], "token_rate_limit_exceeded");
    let retry: u64 = r.header("retry-after").expect("a 429 carries Retry-After").parse().unwrap();
    // A debt of 300 + prompt - 60 tokens, less what came back since (1 token/s), plus this
    // request's prompt + 4 tokens, at 1 token/s.
    assert!((230..=280).contains(&retry), "Retry-After {retry}");
    assert!(poll_until(Duration::from_secs(2), || stats(&cluster.base_grpc_url()).sequences == 0));
}

#[test]
fn a_stalled_worker_fails_its_requests_within_the_step_deadline_and_leaks_no_kv() {
    let _serial = serial();
    let mut cluster = Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: vec![("gqa".into(), fixture("llama-gqa-tied"))],
        router_args: [
            "--step-timeout-secs",
            "2",
            "--worker-restart-grace-secs",
            "0",
            "--worker-reprobe-ms",
            "200",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let prompt = "Once upon a time";
    let guided = with_guidance(completion(prompt, 300), &[("gqa", 1.0)], 1.0);
    let plain = completion(prompt, 300);
    let in_flight_guided = open_stream_in_flight(&cluster, &guided);
    let in_flight_plain = open_stream_in_flight(&cluster, &plain);
    let gqa_url = cluster.rm_grpc_urls("gqa")[0].clone();
    let paused = Instant::now();
    cluster.rm_mut("gqa").signal_group(libc::SIGSTOP);

    let (_, errors, done) = drain(in_flight_guided);
    let failed_after = paused.elapsed();
    assert_eq!(errors.len(), 1, "the guided request should end with one error event: {errors:?}");
    assert!(done, "the failed stream should still end with [DONE]");
    let message = errors[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("gqa") && message.contains(gqa_url.trim_start_matches("http://")),
        "the error should name the stalled worker (gqa at {gqa_url}): {}",
        errors[0]
    );
    assert!(
        failed_after < Duration::from_secs(2 + 5),
        "the guided request failed {failed_after:?} after the pause; the step deadline is 2 s"
    );
    let (_, errors, done) = drain(in_flight_plain);
    assert!(errors.is_empty() && done, "the unguided request failed with the stalled worker: {errors:?}");

    // While gqa is paused: unguided requests are served, guided ones refused naming it.
    let r = http::post_json(&cluster.url("/v1/completions"), &completion(prompt, 8)).unwrap();
    assert_eq!(r.status, 200, "an unguided request while gqa is paused: {}", r.text());
    let r = http::post_json(
        &cluster.url("/v1/completions"),
        &with_guidance(completion(prompt, 8), &[("gqa", 1.0)], 1.0),
    )
    .unwrap();
    assert_error(&r, 503, &["gqa"], "a guided request while gqa is paused");

    // Resumed: ready again, nothing left in any worker's KV, guided requests work again.
    cluster.rm_mut("gqa").signal_group(libc::SIGCONT);
    cluster.wait_ready(Instant::now() + Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}"));
    for url in cluster.worker_grpc_urls() {
        assert!(
            poll_until(Duration::from_secs(10), || stats(&url).sequences == 0),
            "{url} still holds sequences after the stall: {:?}\n{}",
            stats(&url),
            cluster.log_tails()
        );
    }
    post_ok(&cluster, "/v1/completions", &with_guidance(completion(prompt, 8), &[("gqa", 1.0)], 1.0));
}
