//! etcd discovery end to end, with a real etcd server and real processes on loopback: a router
//! with `--etcd` and no workers is not ready; workers registering (after warm-up) make it ready
//! and serve guided completions; a worker stopped with SIGTERM deregisters and is removed at
//! once; a SIGKILLed worker is removed when its lease expires; a worker with another vocabulary
//! is refused with a logged reason naming both models.

mod common;

use std::time::{Duration, Instant};

use common::*;
use genarm_testkit::cluster::genarm_command;
use genarm_testkit::etcd::EtcdServer;

const CLUSTER: &str = "disc";
const ARM: &str = "qwen2-bias";

/// A router discovering workers of reward model `helpful` in `etcd`; returns it and its URL.
fn router(etcd: &EtcdServer) -> (ChildProcess, String) {
    let mut c = genarm_command("genarm-router").unwrap();
    c.args(["--listen", "127.0.0.1:0", "--etcd", etcd.url(), "--cluster", CLUSTER, "--rm", "helpful"])
        .args(["--worker-reprobe-ms", "200"]);
    let mut p = ChildProcess::spawn("router", c).unwrap();
    let addr = p.wait_listening(Instant::now() + Duration::from_secs(30)).unwrap();
    (p, format!("http://{addr}"))
}

fn ready_status(url: &str) -> u16 {
    http::get(&format!("{url}/ready")).map(|r| r.status).unwrap_or(0)
}

fn wait_ready(url: &str, want: u16, within: Duration, logs: &[&ChildProcess]) {
    if !poll_until(within, || ready_status(url) == want) {
        let tails: String = logs.iter().map(|p| p.log_tail(40)).collect();
        panic!("/ready did not become {want} within {within:?} (now {})\n{tails}", ready_status(url));
    }
}

#[test]
fn workers_join_and_leave_through_etcd() {
    let _serial = serial();
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e:#}"));
    let (router, url) = router(&etcd);
    // No workers: not ready, and it serves /ready meanwhile.
    assert_eq!(ready_status(&url), 503);

    let (base, _) = etcd_worker(&etcd, CLUSTER, &fixture(BASE), None);
    let (mut rm, _) = etcd_worker(&etcd, CLUSTER, &fixture(ARM), Some("helpful"));
    wait_ready(&url, 200, Duration::from_secs(30), &[&router, &base, &rm]);

    // A guided completion, checked against the in-process reference.
    let (b, a) = (RefModel::load(&fixture(BASE)), RefModel::load(&fixture(ARM)));
    let prompt = "Once upon a time";
    let want = b.decode(&greedy(&b, &[(&a, 1.0)], &b.encode(prompt), 6).ids);
    let body = with_guidance(completion(prompt, 6), &[("helpful", 1.0)], 1.0);
    let r = http::post_json(&format!("{url}/v1/completions"), &body).unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), router.log_tail(40));
    assert_eq!(choice_text(&r.json().unwrap()), want);

    // SIGTERM: the worker deregisters before it stops; the router drops it at once.
    let t = Instant::now();
    rm.stop(Duration::from_secs(5));
    wait_ready(&url, 503, Duration::from_secs(2), &[&router]);
    eprintln!("removed {:?} after SIGTERM", t.elapsed());

    // A new rm-worker joins; SIGKILL it: removed when its lease (2 s) expires.
    let (mut rm2, _) = etcd_worker(&etcd, CLUSTER, &fixture(ARM), Some("helpful"));
    wait_ready(&url, 200, Duration::from_secs(30), &[&router, &rm2]);
    let left_before = router.log_tail(400).matches("left the cluster").count();
    let t = Instant::now();
    rm2.kill();
    let removed = poll_until(Duration::from_secs(8), || {
        router.log_tail(400).matches("left the cluster").count() > left_before
    });
    assert!(removed, "the killed worker's key did not expire\n{}", router.log_tail(40));
    let took = t.elapsed();
    assert!(took <= Duration::from_secs(6), "removed after {took:?}, lease TTL 2 s");
    assert_eq!(ready_status(&url), 503);
    eprintln!("removed {took:?} after SIGKILL");
}

#[test]
fn a_worker_with_another_vocabulary_is_refused_with_a_reason() {
    let _serial = serial();
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e:#}"));
    // The ARM fixture with two token ids swapped in its tokenizer.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("swapped-vocab");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(fixture(ARM)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let json = std::fs::read_to_string(model.join("tokenizer.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
    let key_of =
        |id: u64| vocab.iter().find(|(_, x)| x.as_u64() == Some(id)).map(|(k, _)| k.clone()).unwrap();
    let (a, b) = (key_of(300), key_of(301));
    vocab.insert(a, 301.into());
    vocab.insert(b, 300.into());
    std::fs::write(model.join("tokenizer.json"), serde_json::to_string(&v).unwrap()).unwrap();

    let (router, url) = router(&etcd);
    let (base, _) = etcd_worker(&etcd, CLUSTER, &fixture(BASE), None);
    let (bad, _) = etcd_worker(&etcd, CLUSTER, &model, Some("helpful"));
    let refused = poll_until(Duration::from_secs(20), || router.log_tail(400).contains("refused worker"));
    assert!(refused, "no refusal logged\n{}{}{}", router.log_tail(40), base.log_tail(20), bad.log_tail(20));
    let log = router.log_tail(400);
    let line = log.lines().find(|l| l.contains("refused worker")).unwrap();
    assert!(line.contains("swapped-vocab") && line.contains(BASE) && line.contains("vocabulary"), "{line}");
    assert_eq!(ready_status(&url), 503, "a refused worker must not make the router ready");

    // A matching worker for the same name is accepted.
    let (good, _) = etcd_worker(&etcd, CLUSTER, &fixture(ARM), Some("helpful"));
    wait_ready(&url, 200, Duration::from_secs(30), &[&router, &good]);
}
