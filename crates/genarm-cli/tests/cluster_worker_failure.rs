//! Worker failure: killing an rm-worker fails only the requests that use it (in flight and new)
//! with an error naming it, unguided requests and those guided by other ARMs keep working,
//! `/ready` turns false, and comes back when a worker serves that address again. Real processes
//! on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use genarm_testkit::cluster::genarm_command;
use serde_json::json;

#[test]
fn killing_an_rm_worker_fails_only_the_requests_that_use_it() {
    let _serial = serial();
    let mut cluster = Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: vec![("gqa".into(), fixture("llama-gqa-tied")), ("qwen".into(), fixture("qwen2-bias"))],
        // No restart grace: requests using a dead worker fail at once.
        router_args: ["--worker-reprobe-ms", "200", "--worker-restart-grace-secs", "0"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let base = RefModel::load(&fixture(BASE));
    let gqa = RefModel::load(&fixture("llama-gqa-tied"));
    let prompt = "Once upon a time";
    let ids = base.encode(prompt);
    let guided_gqa = with_guidance(completion(prompt, 8), &[("gqa", 1.0)], 1.0);
    let want_guided = base.decode(&greedy(&base, &[(&gqa, 1.0)], &ids, 8).ids);
    assert_eq!(choice_text(&post_ok(&cluster, "/v1/completions", &guided_gqa)), want_guided);

    // In flight when the worker dies: one request using gqa, one unguided.
    let long_gqa = with_guidance(completion(prompt, 300), &[("gqa", 1.0)], 1.0);
    let long_plain = completion(prompt, 300);
    let in_flight_gqa = open_stream_in_flight(&cluster, &long_gqa);
    let in_flight_plain = open_stream_in_flight(&cluster, &long_plain);
    let gqa_url = cluster.rm_grpc_urls("gqa")[0].clone();
    cluster.rm_mut("gqa").kill();

    let (_, errors, _) = drain(in_flight_gqa);
    assert_eq!(
        errors.len(),
        1,
        "the in-flight request guided by the dead worker should end with one error event"
    );
    let message = errors[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("gqa"), "the error should name the dead worker (gqa): {}", errors[0]);
    let (_, errors, done) = drain(in_flight_plain);
    assert!(
        errors.is_empty() && done,
        "the in-flight unguided request failed with the rm-worker: {errors:?}"
    );

    // New requests: those using gqa get a 503 naming it; the others are served.
    let r = http::post_json(&cluster.url("/v1/completions"), &guided_gqa).unwrap();
    assert_error(&r, 503, &["gqa"], "a new request guided by the dead worker");
    let want_plain = base.decode(&greedy(&base, &[], &ids, 8).ids);
    assert_eq!(choice_text(&post_ok(&cluster, "/v1/completions", &completion(prompt, 8))), want_plain);
    post_ok(&cluster, "/v1/completions", &with_guidance(completion(prompt, 8), &[("qwen", 1.0)], 1.0));
    let zero_gqa = with_guidance(completion(prompt, 8), &[("gqa", 0.0), ("qwen", 0.0)], 1.0);
    assert_eq!(
        choice_text(&post_ok(&cluster, "/v1/completions", &zero_gqa)),
        want_plain,
        "α = 0 must not need gqa"
    );
    let chat = json!({"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    post_ok(&cluster, "/v1/chat/completions", &chat);
    assert!(
        poll_until(Duration::from_secs(1), || stats(&cluster.base_grpc_url()).sequences == 0),
        "the base-worker still holds sequences of failed or finished requests"
    );
    assert!(
        poll_until(Duration::from_secs(5), || http::get(&cluster.url("/ready"))
            .is_ok_and(|r| r.status == 503)),
        "/ready should answer 503 while a worker is down"
    );
    assert_eq!(http::get(&cluster.url("/health")).unwrap().status, 200, "/health (liveness) should stay 200");

    // A worker serving gqa again at the same address: ready again, guided requests work again.
    let addr = gqa_url.strip_prefix("http://").unwrap();
    let mut command = genarm_command("genarm-rm-worker").unwrap();
    command.env("CANDLE_NUM_THREADS", "1").arg("--model").arg(fixture("llama-gqa-tied"));
    command.args(["--name", "gqa", "--listen", addr]);
    let mut restarted = ChildProcess::spawn("rm-worker gqa (restarted)", command).unwrap();
    restarted.wait_listening(Instant::now() + Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    cluster.wait_ready(Instant::now() + Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(choice_text(&post_ok(&cluster, "/v1/completions", &guided_gqa)), want_guided);
}
