//! Failover by replay: with two replicas of an ARM, killing (SIGKILL) the replica that holds a
//! long guided request mid-generation, or killing and restarting it (empty KV) on the same
//! port, lets the request finish with text identical to an undisturbed run (greedy, checked
//! against the in-process reference too, and seeded sampling); the router counts it in
//! `genarm_failovers_total`. A base-worker restarted on the same port within the router's
//! restart grace period lets a greedy request finish with identical text; past the grace period
//! it fails with a 503-class error naming the base. Real processes on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use genarm_testkit::cluster::genarm_command;
use serde_json::{json, Value};

const ARM: &str = "llama-gqa-tied";
const TOKENS: usize = 200;
const PROMPT: &str = "Once upon a time";

fn start() -> Cluster {
    Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: vec![("gqa".into(), fixture(ARM)), ("gqa".into(), fixture(ARM))],
        router_args: ["--worker-reprobe-ms", "200"].map(String::from).to_vec(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn greedy_body() -> Value {
    with_guidance(completion(PROMPT, TOKENS), &[("gqa", 1.0)], 1.0)
}

fn seeded_body() -> Value {
    let body = json!({
        "model": BASE, "prompt": PROMPT, "max_tokens": TOKENS,
        "temperature": 0.8, "top_p": 0.95, "top_k": 200, "seed": 4242,
    });
    with_guidance(body, &[("gqa", 1.0)], 1.0)
}

/// Appends the text of the stream's remaining events; panics on an error event; returns
/// whether `[DONE]` ended it.
fn read_rest(s: &mut EventStream, text: &mut String, limit: Option<usize>) -> bool {
    let mut events = 0;
    while let Some(data) = s.next_data().unwrap_or_else(|e| panic!("reading the stream: {e:#}")) {
        if data == "[DONE]" {
            return true;
        }
        let v: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event {data:?}: {e}"));
        assert!(v.get("error").is_none(), "error event in the stream: {v}");
        if let Some(t) = v["choices"][0]["text"].as_str() {
            text.push_str(t);
        }
        events += 1;
        if limit.is_some_and(|l| events >= l) {
            return false;
        }
    }
    false
}

/// The index (in `cluster.rms`) of the replica holding the running request's sequence.
fn holder(cluster: &Cluster) -> usize {
    let urls: Vec<String> = cluster.rm_grpc_urls("gqa");
    let mut found = None;
    let held = poll_until(Duration::from_secs(5), || {
        found = urls.iter().position(|u| stats(u).sequences > 0);
        found.is_some()
    });
    assert!(held, "no replica holds the request's sequence (did it finish already?)");
    found.unwrap()
}

/// A counter of the router's `/metrics`.
fn counter(cluster: &Cluster, name: &str) -> f64 {
    let r = http::get(&cluster.url("/metrics")).unwrap();
    let text = r.text();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the router's metrics:\n{text}"))
}

/// The router's `genarm_failovers_total`.
fn failovers(cluster: &Cluster) -> f64 {
    counter(cluster, "genarm_failovers_total")
}

/// How many times the router logged replica `url` back to ready (among its last log lines).
fn times_back(cluster: &Cluster, url: &str) -> usize {
    cluster
        .router
        .log_tail(400)
        .lines()
        .filter(|l| l.contains("worker is back: ready") && l.contains(url))
        .count()
}

/// [`restart`]s replica `idx`, which the router saw fail, and waits until the router's monitor
/// finds it ready again (its log says so).
fn restart_and_wait_ready(cluster: &mut Cluster, idx: usize) {
    let url = cluster.rm_grpc_urls("gqa")[idx].clone();
    let before = times_back(cluster, &url);
    restart(cluster, idx);
    assert!(
        poll_until(Duration::from_secs(30), || times_back(cluster, &url) > before),
        "the router never found the restarted replica {url} ready\n{}",
        cluster.log_tails()
    );
}

/// Starts a new rm-worker for "gqa" on replica `idx`'s address (its KV empty).
fn restart(cluster: &mut Cluster, idx: usize) {
    let url = cluster.rm_grpc_urls("gqa")[idx].clone();
    let addr = url.strip_prefix("http://").unwrap();
    let mut command = genarm_command("genarm-rm-worker").unwrap();
    command.env("CANDLE_NUM_THREADS", "1").arg("--model").arg(fixture(ARM));
    command.args(["--name", "gqa", "--listen", addr]);
    let mut worker = ChildProcess::spawn("rm-worker gqa (restarted)", command).unwrap();
    worker.wait_listening(Instant::now() + Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    cluster.rms[idx].1 = worker;
}

/// Runs `body` streamed; after a few tokens, `act` gets the replica holding it. Returns the text
/// and that replica.
fn disturbed(cluster: &mut Cluster, body: &Value, act: impl FnOnce(&mut Cluster, usize)) -> (String, usize) {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let mut s = EventStream::post_json(&cluster.url("/v1/completions"), &body).unwrap();
    assert_eq!(s.status, 200);
    let mut text = String::new();
    assert!(!read_rest(&mut s, &mut text, Some(4)), "the request ended before the replica was disturbed");
    let idx = holder(cluster);
    act(cluster, idx);
    assert!(read_rest(&mut s, &mut text, None), "the stream ended without [DONE]");
    (text, idx)
}

#[test]
fn a_request_survives_losing_its_replica_with_identical_text() {
    let _serial = serial();
    let mut cluster = start();
    let base = RefModel::load(&fixture(BASE));
    let gqa = RefModel::load(&fixture(ARM));
    let reference = greedy(&base, &[(&gqa, 1.0)], &base.encode(PROMPT), TOKENS);
    let steps_before: Vec<u64> = cluster.rm_grpc_urls("gqa").iter().map(|u| stats(u).steps).collect();
    let want_greedy = stream(&cluster, "/v1/completions", greedy_body()).text;
    if reference.min_margin > 1e-3 {
        assert_eq!(want_greedy, base.decode(&reference.ids), "undisturbed run vs. the reference");
    }
    let want_seeded = stream(&cluster, "/v1/completions", seeded_body()).text;
    assert_eq!(failovers(&cluster), 0.0);
    // New sequences are balanced: the two requests went to different replicas.
    for (url, before) in cluster.rm_grpc_urls("gqa").iter().zip(steps_before) {
        assert!(stats(url).steps > before, "replica {url} got no sequence of the two requests");
    }

    // Greedy: SIGKILL the replica holding the sequence.
    let (got, killed) = disturbed(&mut cluster, &greedy_body(), |c, idx| {
        c.rms[idx].1.kill();
    });
    assert_eq!(got, want_greedy, "greedy text after a failover");
    assert!(failovers(&cluster) >= 1.0, "genarm_failovers_total should count the failover");
    // The router re-probes the restarted replica (every 200 ms) before the next failover.
    restart_and_wait_ready(&mut cluster, killed);

    // Seeded sampling: the sampler must not advance while the sequence is replayed.
    let before = failovers(&cluster);
    let (got, killed) = disturbed(&mut cluster, &seeded_body(), |c, idx| {
        c.rms[idx].1.kill();
    });
    assert_eq!(got, want_seeded, "seeded text after a failover");
    assert!(failovers(&cluster) > before, "genarm_failovers_total should count the second failover");

    // Restart with an empty KV on the same port, mid-request.
    restart_and_wait_ready(&mut cluster, killed);
    let replays = |c: &Cluster| counter(c, "genarm_replays_total");
    let replays_before = replays(&cluster);
    let (got, _) = disturbed(&mut cluster, &greedy_body(), |c, idx| {
        c.rms[idx].1.kill();
        restart(c, idx);
    });
    assert_eq!(got, want_greedy, "greedy text after its replica restarted");
    assert!(replays(&cluster) > replays_before, "the sequence should have been replayed");

    // The cluster serves again (on either replica), and nothing is left on any worker.
    assert_eq!(stream(&cluster, "/v1/completions", greedy_body()).text, want_greedy);
    for url in cluster.worker_grpc_urls() {
        assert!(
            poll_until(Duration::from_secs(2), || stats(&url).sequences == 0),
            "{url} still holds sequences after every request ended"
        );
    }
}

#[test]
fn launch_starts_a_replica_per_repeated_reward_name() {
    let _serial = serial();
    let rm = format!("gqa={}", fixture(ARM).display());
    let mut command = genarm_command("genarm").unwrap();
    command.env("CANDLE_NUM_THREADS", "1").arg("launch").args(["--port", "0", "--quiet"]);
    command.arg("--base").arg(fixture(BASE)).args(["--rm", &rm, "--rm", &rm]);
    let mut launcher = ChildProcess::spawn("genarm launch", command).unwrap();
    let addr = launcher
        .wait_listening(Instant::now() + Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let banner = launcher.stdout_lines().join("\n");
    // `  rm-worker gqa pid N grpc http://ADDR`, once per replica.
    let replicas: Vec<String> = launcher
        .stdout_lines()
        .iter()
        .filter(|l| l.trim_start().starts_with("rm-worker gqa") && l.contains(" pid "))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    assert_eq!(replicas.len(), 2, "two rm-workers for gqa:\n{banner}");
    assert_ne!(replicas[0], replicas[1]);
    assert!(banner.contains("rm-worker gqa #2"), "the second replica's label:\n{banner}");
    let url = format!("http://{addr}");
    assert_eq!(http::get(&format!("{url}/ready")).unwrap().status, 200);
    // Two requests in turn: one per replica.
    let before: Vec<u64> = replicas.iter().map(|r| stats(r).steps).collect();
    for _ in 0..2 {
        let body = with_guidance(completion(PROMPT, 4), &[("gqa", 1.0)], 1.0);
        let r = http::post_json(&format!("{url}/v1/completions"), &body).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for (replica, before) in replicas.iter().zip(before) {
        assert!(stats(replica).steps > before, "replica {replica} served no step:\n{banner}");
    }
    launcher.signal_group(libc::SIGTERM);
    let status =
        launcher.wait_exit(Instant::now() + Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "launcher exit: {status}\n{}", launcher.log_tail(40));
}

/// A base-only cluster whose router waits `grace` seconds for a lost base-worker.
fn start_base_only(grace: &str) -> Cluster {
    Cluster::start(ClusterSpec {
        base: fixture(BASE),
        router_args: ["--worker-reprobe-ms", "200", "--worker-restart-grace-secs", grace]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Starts a new base-worker on the base's address (its KV empty).
fn restart_base(cluster: &mut Cluster) {
    let url = cluster.base_grpc_url();
    let addr = url.strip_prefix("http://").unwrap();
    let mut command = genarm_command("genarm-base-worker").unwrap();
    command.env("CANDLE_NUM_THREADS", "1").arg("--model").arg(fixture(BASE));
    command.args(["--listen", addr]);
    let mut worker = ChildProcess::spawn("base-worker (restarted)", command).unwrap();
    worker.wait_listening(Instant::now() + Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    cluster.base = worker;
}

/// Opens a greedy stream and reads its first few events.
fn open_greedy_stream(cluster: &Cluster) -> (EventStream, String) {
    let mut body = completion(PROMPT, TOKENS);
    body["stream"] = json!(true);
    let mut s = EventStream::post_json(&cluster.url("/v1/completions"), &body).unwrap();
    assert_eq!(s.status, 200);
    let mut text = String::new();
    assert!(!read_rest(&mut s, &mut text, Some(4)), "the request ended before the base-worker was disturbed");
    (s, text)
}

#[test]
fn a_request_survives_a_base_worker_restart_within_the_grace_period() {
    let _serial = serial();
    let mut cluster = start_base_only("30");
    let want = stream(&cluster, "/v1/completions", completion(PROMPT, TOKENS)).text;
    let started = Instant::now();
    let (mut s, mut text) = open_greedy_stream(&cluster);
    cluster.base.kill();
    restart_base(&mut cluster);
    assert!(read_rest(&mut s, &mut text, None), "the stream ended without [DONE]");
    eprintln!("disturbed request took {:?}", started.elapsed());
    assert_eq!(text, want, "greedy text after the base-worker restarted");
    assert!(counter(&cluster, "genarm_replays_total") >= 1.0, "the sequence should have been replayed");
    assert!(
        poll_until(Duration::from_secs(2), || stats(&cluster.base_grpc_url()).sequences == 0),
        "the restarted base-worker still holds sequences"
    );
}

#[test]
fn past_the_grace_period_a_lost_base_worker_fails_the_request_with_503() {
    let _serial = serial();
    let mut cluster = start_base_only("1");
    let (mut s, _) = open_greedy_stream(&cluster);
    let started = Instant::now();
    cluster.base.kill();
    let mut error = None;
    while let Some(data) = s.next_data().unwrap_or_else(|e| panic!("reading the stream: {e:#}")) {
        let v: Value = serde_json::from_str(&data).unwrap_or_default();
        if v.get("error").is_some() {
            error = Some(v);
            break;
        }
    }
    let took = started.elapsed();
    let error = error.expect("the request should end with an error event");
    assert!(took < Duration::from_secs(15), "failed after {took:?} with a grace period of 1 s");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(error["error"]["type"], "service_unavailable_error", "{error}");
    for word in ["base", BASE, "grace period of 1 s"] {
        assert!(message.contains(word), "the error should name `{word}`: {message}");
    }
    // The router keeps serving once the base is back.
    restart_base(&mut cluster);
    cluster.wait_ready(Instant::now() + Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e:#}"));
    let r = http::post_json(&cluster.url("/v1/completions"), &completion(PROMPT, 8)).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
