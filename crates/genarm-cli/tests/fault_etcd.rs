//! etcd stopped (SIGKILL) and restarted under a router that discovers its workers there: while
//! etcd is down the router keeps serving the workers it knows (past their lease TTL); once etcd
//! is back the router's watch recovers and picks up a worker registered after the restart.
//! A real etcd server and real processes on loopback.

mod common;
mod fault_common;

use std::time::{Duration, Instant};

use common::*;
use fault_common::assert_no_kv;
use genarm_testkit::cluster::genarm_command;
use genarm_testkit::etcd::EtcdServer;

const CLUSTER: &str = "faults";
const ARM: &str = "qwen2-bias";
const PROMPT: &str = "Once upon a time";

fn ready_status(url: &str) -> u16 {
    http::get(&format!("{url}/ready")).map(|r| r.status).unwrap_or(0)
}

/// A greedy completion through the router at `url`; its text.
fn complete(url: &str, guided: bool, logs: &dyn Fn() -> String) -> String {
    let mut body = completion(PROMPT, 6);
    if guided {
        body = with_guidance(body, &[("helpful", 1.0)], 1.0);
    }
    let r = http::post_json(&format!("{url}/v1/completions"), &body).unwrap();
    assert_eq!(r.status, 200, "guided={guided}: {}\n{}", r.text(), logs());
    choice_text(&r.json().unwrap())
}

#[test]
fn the_router_survives_an_etcd_restart_and_sees_workers_registered_after_it() {
    let _serial = serial();
    let mut etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e:#}"));
    let mut c = genarm_command("genarm-router").unwrap();
    c.args(["--listen", "127.0.0.1:0", "--etcd", etcd.url(), "--cluster", CLUSTER, "--rm", "helpful"])
        .args(["--worker-reprobe-ms", "200"]);
    let mut router = ChildProcess::spawn("router", c).unwrap();
    let url = format!("http://{}", router.wait_listening(Instant::now() + Duration::from_secs(30)).unwrap());
    let (base, base_url) = etcd_worker(&etcd, CLUSTER, &fixture(BASE), None);
    let (mut rm1, _) = etcd_worker(&etcd, CLUSTER, &fixture(ARM), Some("helpful"));
    let logs = || format!("{}{}", router.log_tail(60), base.log_tail(20));
    assert!(poll_until(Duration::from_secs(30), || ready_status(&url) == 200), "not ready\n{}", logs());

    let (b, a) = (RefModel::load(&fixture(BASE)), RefModel::load(&fixture(ARM)));
    let ids = b.encode(PROMPT);
    let (want_guided, want_plain) =
        (b.decode(&greedy(&b, &[(&a, 1.0)], &ids, 6).ids), b.decode(&greedy(&b, &[], &ids, 6).ids));
    assert_eq!(complete(&url, true, &logs), want_guided);

    // etcd down, for longer than the workers' lease TTL: the router serves the workers it knows.
    etcd.stop();
    let stopped = Instant::now();
    let interrupted = poll_until(Duration::from_secs(10), || router.log_tail(400).contains("etcd watch"));
    assert!(interrupted, "the router did not notice that etcd went away\n{}", router.log_tail(40));
    while stopped.elapsed() < Duration::from_secs(3) {
        assert_eq!(ready_status(&url), 200, "/ready while etcd is down\n{}", router.log_tail(40));
        assert_eq!(complete(&url, true, &|| router.log_tail(40)), want_guided, "guided, etcd down");
        assert_eq!(complete(&url, false, &|| router.log_tail(40)), want_plain, "unguided, etcd down");
        std::thread::sleep(Duration::from_millis(200));
    }

    // etcd back: the watch is restored; a worker registered now joins the pool.
    etcd.restart().unwrap_or_else(|e| panic!("{e:#}"));
    let restored =
        poll_until(Duration::from_secs(20), || router.log_tail(400).contains("etcd watch restored"));
    assert!(restored, "the router's etcd watch was not restored\n{}", router.log_tail(60));
    let (rm2, rm2_url) = etcd_worker(&etcd, CLUSTER, &fixture(ARM), Some("helpful"));
    let added = poll_until(Duration::from_secs(30), || router.log_tail(400).contains("replica added"));
    assert!(
        added,
        "the worker registered after the restart was not added\n{}{}",
        router.log_tail(60),
        rm2.log_tail(20)
    );

    // The first worker leaves (SIGTERM: it deregisters); the router serves with the new one.
    rm1.stop(Duration::from_secs(5));
    let left = poll_until(Duration::from_secs(10), || router.log_tail(400).contains("left the cluster"));
    assert!(left, "the stopped worker's deregistration was not seen\n{}", router.log_tail(60));
    assert!(
        poll_until(Duration::from_secs(10), || ready_status(&url) == 200),
        "not ready\n{}",
        router.log_tail(40)
    );
    assert_eq!(
        complete(&url, true, &|| router.log_tail(40)),
        want_guided,
        "guided, served by the new worker"
    );
    let mut body = with_guidance(completion(PROMPT, 6), &[("helpful", 1.0)], 1.0);
    body["stream"] = serde_json::json!(true);
    let s = EventStream::post_json(&format!("{url}/v1/completions"), &body).unwrap();
    let (text, errors, done) = drain(s);
    assert!(errors.is_empty() && done, "{errors:?}");
    assert_eq!(text, want_guided, "streamed, served by the new worker");
    assert!(stats(&rm2_url).steps > 0, "the new worker served no step");
    assert_no_kv(&[base_url.as_str(), rm2_url.as_str()], Duration::from_secs(5), &router.log_tail(40));
}
