//! Shared harness of the fault-injection tests (`fault_*.rs`): a base-worker and one rm-worker
//! (`gqa`), optionally behind `genarm-fault-proxy`, a router in front of them, and the checks
//! every fault ends with — the router still serving (`/ready`, a fresh request with the right
//! output) and no KV left behind on any worker.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use genarm_testkit::cluster::http::{self, EventStream};
use genarm_testkit::cluster::{genarm_command, ChildProcess};
use genarm_testkit::fault::FaultProxy;
use serde_json::{json, Value};

use crate::common::{completion, fixture, greedy, poll_until, stats, with_guidance, RefModel, BASE};

/// The reward name of the rm-worker.
pub const ARM_NAME: &str = "gqa";
/// Its fixture.
pub const ARM: &str = "llama-gqa-tied";
/// The prompt of every request.
pub const PROMPT: &str = "Once upon a time";

/// A worker process on 127.0.0.1:0 (`reward`: an rm-worker of that name, else the base).
pub fn spawn_worker(model: &Path, reward: Option<&str>, extra: &[&str]) -> (ChildProcess, String) {
    let bin = if reward.is_some() { "genarm-rm-worker" } else { "genarm-base-worker" };
    let mut c = genarm_command(bin).unwrap();
    c.env("CANDLE_NUM_THREADS", "1").arg("--model").arg(model).args(["--listen", "127.0.0.1:0"]);
    if let Some(name) = reward {
        c.args(["--name", name]);
    }
    c.args(extra);
    let mut p = ChildProcess::spawn(&format!("{bin} {}", reward.unwrap_or("")), c).unwrap();
    let addr = p.wait_listening(Instant::now() + Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    (p, format!("http://{addr}"))
}

/// A router on 127.0.0.1:`port` (0: any) with `--base` and `--rm gqa=URL`.
pub fn spawn_router(port: u16, base_url: &str, rm_url: &str, extra: &[&str]) -> (ChildProcess, String) {
    let mut c = genarm_command("genarm-router").unwrap();
    c.args(["--listen", &format!("127.0.0.1:{port}"), "--base", base_url])
        .arg("--rm")
        .arg(format!("{ARM_NAME}={rm_url}"))
        .args(extra);
    let mut p = ChildProcess::spawn("router", c).unwrap();
    let addr = p.wait_listening(Instant::now() + Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e:#}"));
    (p, format!("http://{addr}"))
}

/// The processes of one fault test, stopped (router first) when dropped.
pub struct FaultCluster {
    /// The router.
    pub router: ChildProcess,
    /// `http://ip:port` of the router.
    pub router_url: String,
    /// The proxy between the router and the rm-worker, if any.
    pub proxy: Option<FaultProxy>,
    /// The rm-worker `gqa`.
    pub arm: ChildProcess,
    /// Its gRPC URL (the worker itself, not the proxy).
    pub arm_url: String,
    /// The base-worker.
    pub base: ChildProcess,
    /// Its gRPC URL.
    pub base_url: String,
    /// The reference models.
    pub refs: (RefModel, RefModel),
}

impl FaultCluster {
    /// Starts the workers (with `worker_args`), the proxy in front of the rm-worker when
    /// `proxied`, and the router (with `router_args`); waits for `/ready`.
    pub fn start(proxied: bool, router_args: &[&str], worker_args: &[&str]) -> FaultCluster {
        let (base, base_url) = spawn_worker(&fixture(BASE), None, worker_args);
        let (arm, arm_url) = spawn_worker(&fixture(ARM), Some(ARM_NAME), worker_args);
        let proxy =
            proxied.then(|| FaultProxy::start("fault-proxy", &arm_url).unwrap_or_else(|e| panic!("{e:#}")));
        let rm_url = proxy.as_ref().map(|p| p.url().to_string()).unwrap_or_else(|| arm_url.clone());
        let (router, router_url) = spawn_router(0, &base_url, &rm_url, router_args);
        let refs = (RefModel::load(&fixture(BASE)), RefModel::load(&fixture(ARM)));
        let c = FaultCluster { router, router_url, proxy, arm, arm_url, base, base_url, refs };
        c.wait_ready(Duration::from_secs(60));
        c
    }

    /// The proxy (panics if the cluster has none).
    pub fn proxy(&self) -> &FaultProxy {
        self.proxy.as_ref().expect("this cluster has no fault proxy")
    }

    /// `<router><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.router_url)
    }

    /// The last log lines of every process.
    pub fn logs(&self) -> String {
        let mut out = self.router.log_tail(60);
        if let Some(p) = &self.proxy {
            out.push_str(&p.process.log_tail(20));
        }
        out.push_str(&self.arm.log_tail(30));
        out.push_str(&self.base.log_tail(30));
        out
    }

    /// Waits until `/ready` answers 200.
    pub fn wait_ready(&self, within: Duration) {
        let ok = poll_until(within, || http::get(&self.url("/ready")).is_ok_and(|r| r.status == 200));
        assert!(ok, "the router's /ready did not answer 200 within {within:?}\n{}", self.logs());
    }

    /// The reference text of `max_tokens` greedy tokens of [`PROMPT`], guided by the ARM
    /// (α = 1) or not.
    pub fn reference(&self, guided: bool, max_tokens: usize) -> String {
        let (base, arm) = &self.refs;
        let ids = base.encode(PROMPT);
        let arms: Vec<(&RefModel, f32)> = if guided { vec![(arm, 1.0)] } else { vec![] };
        base.decode(&greedy(base, &arms, &ids, max_tokens).ids)
    }

    /// A greedy completion body of [`PROMPT`], guided by the ARM or not.
    pub fn body(guided: bool, max_tokens: usize) -> Value {
        let body = completion(PROMPT, max_tokens);
        if guided {
            with_guidance(body, &[(ARM_NAME, 1.0)], 1.0)
        } else {
            body
        }
    }

    /// POSTs a completion; the raw response.
    pub fn post(&self, guided: bool, max_tokens: usize) -> http::Response {
        http::post_json(&self.url("/v1/completions"), &Self::body(guided, max_tokens))
            .unwrap_or_else(|e| panic!("POST /v1/completions: {e:#}\n{}", self.logs()))
    }

    /// POSTs a completion that must succeed; its text.
    pub fn complete(&self, guided: bool, max_tokens: usize) -> String {
        let r = self.post(guided, max_tokens);
        assert_eq!(r.status, 200, "guided={guided}: {} {}\n{}", r.status, r.text(), self.logs());
        crate::common::choice_text(&r.json().unwrap())
    }

    /// Opens a streamed completion and reads its first `chunks` text events.
    pub fn open_stream(&self, guided: bool, max_tokens: usize, chunks: usize) -> (EventStream, String) {
        let mut body = Self::body(guided, max_tokens);
        body["stream"] = json!(true);
        let mut s = EventStream::post_json(&self.url("/v1/completions"), &body).unwrap();
        assert_eq!(s.status, 200, "{}", self.logs());
        let mut text = String::new();
        for _ in 0..chunks {
            let data = s.next_data().unwrap().expect("the stream ended early");
            let v: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{data:?}: {e}"));
            assert!(v.get("error").is_none(), "{data}\n{}", self.logs());
            text.push_str(v["choices"][0]["text"].as_str().unwrap_or_default());
        }
        (s, text)
    }

    /// The router's `/metrics` value of an unlabelled counter (0 if absent).
    pub fn metric(&self, name: &str) -> f64 {
        let text = http::get(&self.url("/metrics")).map(|r| r.text()).unwrap_or_default();
        genarm_testkit::metrics::total(&text, name)
    }

    /// The ending every fault test shares: `/ready` 200 (within `within`), a fresh unguided and
    /// a fresh guided request answered with the reference text, and no sequence or KV block
    /// left on either worker.
    pub fn assert_recovered(&self, within: Duration) {
        self.wait_ready(within);
        assert_eq!(self.complete(false, 6), self.reference(false, 6), "a fresh unguided request");
        assert_eq!(self.complete(true, 6), self.reference(true, 6), "a fresh guided request");
        self.assert_no_kv(Duration::from_secs(5));
    }

    /// Every worker holds no sequence and no KV block within `within`.
    pub fn assert_no_kv(&self, within: Duration) {
        assert_no_kv(&[self.base_url.as_str(), self.arm_url.as_str()], within, &self.logs());
    }
}

/// Every worker at `urls` holds no sequence and no KV block within `within` (polled).
pub fn assert_no_kv(urls: &[&str], within: Duration, logs: &str) {
    for url in urls {
        let clean = poll_until(within, || {
            let s = stats(url);
            s.sequences == 0 && s.kv_used_blocks == 0
        });
        let s = stats(url);
        assert!(
            clean,
            "the worker at {url} still holds {} sequences / {} KV blocks\n{logs}",
            s.sequences, s.kv_used_blocks
        );
    }
}
