//! Metrics: after a few requests (whole and streamed, unguided and guided), the router's and the
//! workers' `/metrics` hold the documented series with values that match the requests (tokens
//! generated = the completions' tokens, one TTFT sample per request, worker steps = router
//! steps, KV back to 0 blocks), every histogram renders `_bucket` lines (not summaries), and
//! `promtool check metrics` (Debian's `prometheus` package) accepts both outputs. Real processes
//! on loopback.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A parsed Prometheus text exposition: series (`name{labels}` exactly as rendered) → value.
struct Scrape {
    text: String,
    series: BTreeMap<String, f64>,
}

impl Scrape {
    fn get(url: &str) -> Scrape {
        let r = http::get(url).unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
        assert_eq!(r.status, 200, "GET {url}: {}", r.text());
        let ct = r.header("content-type").unwrap_or_default().to_string();
        assert!(ct.starts_with("text/plain"), "GET {url}: content-type {ct:?}");
        let text = r.text();
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
                (k.to_string(), v.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {l:?}")))
            })
            .collect();
        Scrape { text, series }
    }

    /// The value of the series named `name` whose labels include every `labels` pair; panics
    /// unless exactly one matches.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<(&String, &f64)> = self
            .series
            .iter()
            .filter(|(k, _)| {
                let (n, rest) = k.split_once('{').unwrap_or((k.as_str(), ""));
                n == name && labels.iter().all(|(l, v)| rest.contains(&format!("{l}=\"{v}\"")))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}\n{}", self.text);
        *found[0].1
    }

    /// Asserts `name` is a histogram with buckets (ending in `+Inf`), a count and a sum.
    fn assert_histogram(&self, name: &str) {
        assert!(
            self.text.contains(&format!("# TYPE {name} histogram")),
            "{name} is no histogram\n{}",
            self.text
        );
        assert!(self.text.contains(&format!("# HELP {name} ")), "{name} has no HELP\n{}", self.text);
        assert!(self.text.contains(&format!("{name}_bucket{{")), "{name} has no buckets\n{}", self.text);
        assert!(self.text.contains("le=\"+Inf\""), "no +Inf bucket\n{}", self.text);
        assert!(self.text.contains(&format!("{name}_count")), "{name} has no count\n{}", self.text);
    }

    /// Runs `promtool check metrics` on the text; fails (never skips) when promtool is missing.
    fn assert_promtool_ok(&self, what: &str) {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run promtool ({e}); it comes with Debian's prometheus package: \
                     `apt-get install -y prometheus` (.ci/run installs it)"
                )
            });
        child.stdin.take().unwrap().write_all(self.text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics refused the {what} metrics ({}):\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.text
        );
    }
}

/// The metrics address a worker printed (`GENARM_LISTENING metrics <addr>`).
fn metrics_addr(worker: &mut ChildProcess) -> SocketAddr {
    let line = worker
        .wait_stdout_line(Instant::now() + Duration::from_secs(10), |l| {
            l.starts_with("GENARM_LISTENING metrics ")
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    line.rsplit(' ').next().unwrap().parse().unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn router_and_worker_metrics_match_the_requests_and_pass_promtool() {
    let _serial = serial();
    let mut cluster = Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: vec![("gqa".into(), fixture("llama-gqa-tied"))],
        worker_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let base_metrics = format!("http://{}/metrics", metrics_addr(&mut cluster.base));
    let rm_metrics = format!("http://{}/metrics", metrics_addr(cluster.rm_mut("gqa")));

    // Requests: whole and streamed, unguided and guided; count the tokens each generated.
    let mut completion_tokens = 0u64;
    let mut base_tokens = 0u64; // tokens the base-worker processed: prompt + completion - 1
    let mut requests = 0u64;
    for (prompt, max_tokens, guided) in
        [("The cat sat on the mat.", 9, false), ("Once upon a time", 7, true), ("Hello there", 5, true)]
    {
        let mut body = completion(prompt, max_tokens);
        if guided {
            body = with_guidance(body, &[("gqa", 0.7)], 1.0);
        }
        let resp = post_ok(&cluster, "/v1/completions", &body);
        let usage = &resp["usage"];
        let (p, c) = (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
        assert!(c >= 1, "{resp}");
        completion_tokens += c;
        base_tokens += p + c - 1;
        requests += 1;
    }
    let (p, c) = streamed_usage(&cluster, "A streamed story", 6);
    assert!((1..=6).contains(&c), "the streamed request generated {c} tokens");
    completion_tokens += c;
    base_tokens += p + c - 1;
    requests += 1;
    // An error is counted too.
    let r = http::post_json(&cluster.url("/v1/completions"), &serde_json::json!({"prompt": 1})).unwrap();
    assert_eq!(r.status, 400);

    // Router: values match what was asked.
    let router_url = cluster.url("/metrics");
    // KV gauges come from a poller (every 2 s): wait until it saw the pool and the releases.
    // The batch and queue gauges are set at the end of the step after a response's last token
    // went out: poll until they settle too, never read them once.
    let mut router = Scrape::get(&router_url);
    assert!(
        poll_until(Duration::from_secs(15), || {
            router = Scrape::get(&router_url);
            router.series.get("genarm_batch_size") == Some(&0.0)
                && router.series.get("genarm_queue_depth") == Some(&0.0)
                && router.series.keys().any(|k| k.starts_with("genarm_kv_blocks_capacity{"))
                && router
                    .series
                    .iter()
                    .filter(|(k, _)| k.starts_with("genarm_kv_blocks_used{"))
                    .all(|(_, v)| *v == 0.0)
                && router.series.iter().filter(|(k, _)| k.starts_with("genarm_kv_blocks_used{")).count() == 2
        }),
        "no KV gauges for both workers, KV still used, or the batch and queue gauges not back at 0\n{}",
        router.text
    );
    let r = &router;
    assert_eq!(r.value("genarm_generated_tokens_total", &[]), completion_tokens as f64);
    assert_eq!(
        r.value("genarm_requests_total", &[("endpoint", "completions"), ("status", "200")]),
        requests as f64
    );
    assert_eq!(r.value("genarm_requests_total", &[("endpoint", "completions"), ("status", "400")]), 1.0);
    for h in [
        "genarm_time_to_first_token_seconds",
        "genarm_inter_token_latency_seconds",
        "genarm_request_duration_seconds",
        "genarm_step_duration_seconds",
        "genarm_backend_step_duration_seconds",
        "genarm_fusion_sampling_seconds",
    ] {
        r.assert_histogram(h);
    }
    assert_eq!(r.value("genarm_time_to_first_token_seconds_count", &[]), requests as f64);
    assert_eq!(r.value("genarm_request_duration_seconds_count", &[]), requests as f64);
    assert_eq!(
        r.value("genarm_inter_token_latency_seconds_count", &[]),
        (completion_tokens - requests) as f64
    );
    let ttft_sum = r.value("genarm_time_to_first_token_seconds_sum", &[]);
    let e2e_sum = r.value("genarm_request_duration_seconds_sum", &[]);
    assert!(ttft_sum > 0.0 && ttft_sum <= e2e_sum && e2e_sum < 120.0, "TTFT {ttft_sum} s, e2e {e2e_sum} s");
    let steps = r.value("genarm_steps_total", &[]);
    assert!(steps >= 9.0, "{steps} steps");
    let base_addr = cluster.base_grpc_url();
    let rm_addr = cluster.rm_grpc_urls("gqa")[0].clone();
    let base_labels = [("worker", "base"), ("address", base_addr.as_str())];
    let rm_labels = [("worker", "gqa"), ("address", rm_addr.as_str())];
    assert_eq!(r.value("genarm_backend_step_duration_seconds_count", &base_labels), steps);
    let rm_steps = r.value("genarm_backend_step_duration_seconds_count", &rm_labels);
    assert!(rm_steps >= 7.0 && rm_steps < steps, "{rm_steps} rm steps of {steps}");
    assert_eq!(r.value("genarm_fusion_sampling_seconds_count", &[]), steps);
    assert_eq!(r.value("genarm_kv_blocks_capacity", &base_labels), 256.0); // 4096 tokens / 16
    assert_eq!(r.value("genarm_kv_blocks_used", &rm_labels), 0.0);
    assert_eq!(r.value("genarm_backend_ready", &rm_labels), 1.0);
    assert_eq!(r.value("genarm_replays_total", &[]), 0.0);
    assert_eq!(r.value("genarm_failovers_total", &[]), 0.0);
    assert_eq!(r.value("genarm_preemptions_total", &[]), 0.0);
    assert_eq!(r.value("genarm_queue_depth", &[]), 0.0);
    assert_eq!(r.value("genarm_batch_size", &[]), 0.0);
    r.assert_promtool_ok("router");

    // Workers: the base served every router step; counters agree with the requests.
    let b = Scrape::get(&base_metrics);
    let base = [("worker", "base")];
    assert_eq!(b.value("genarm_worker_steps_total", &base), steps);
    assert_eq!(
        b.value("genarm_worker_sequence_steps_total", &base),
        r.value("genarm_step_sequences_total", &[])
    );
    assert_eq!(b.value("genarm_worker_tokens_total", &base), base_tokens as f64);
    for h in
        ["genarm_worker_step_forward_seconds", "genarm_worker_step_sequences", "genarm_worker_step_tokens"]
    {
        b.assert_histogram(h);
    }
    assert_eq!(b.value("genarm_worker_step_forward_seconds_count", &base), steps);
    assert_eq!(b.value("genarm_worker_step_tokens_sum", &base), b.value("genarm_worker_tokens_total", &base));
    assert_eq!(b.value("genarm_worker_kv_blocks_capacity", &base), 256.0);
    assert_eq!(b.value("genarm_worker_kv_blocks_used", &base), 0.0);
    assert_eq!(b.value("genarm_worker_sequences", &base), 0.0);
    assert_eq!(b.value("genarm_worker_ready", &base), 1.0);
    b.assert_promtool_ok("base-worker");

    let g = Scrape::get(&rm_metrics);
    let gqa = [("worker", "gqa")];
    assert_eq!(g.value("genarm_worker_steps_total", &gqa), rm_steps);
    assert!(g.value("genarm_worker_tokens_total", &gqa) > 0.0);
    assert_eq!(g.value("genarm_worker_kv_blocks_used", &gqa), 0.0);
    g.assert_promtool_ok("rm-worker");
}

/// Streams a completion of `prompt` with `include_usage`; returns its (prompt, completion)
/// token counts from the usage chunk.
fn streamed_usage(cluster: &Cluster, prompt: &str, max_tokens: usize) -> (u64, u64) {
    let mut body = completion(prompt, max_tokens);
    body["stream"] = serde_json::json!(true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let mut s = EventStream::post_json(&cluster.url("/v1/completions"), &body).unwrap();
    assert_eq!(s.status, 200);
    let mut usage = None;
    while let Some(data) = s.next_data().unwrap() {
        if data == "[DONE]" {
            break;
        }
        let chunk: serde_json::Value = serde_json::from_str(&data).unwrap();
        if chunk["usage"].is_object() {
            usage = Some(chunk["usage"].clone());
        }
    }
    let u = usage.expect("a usage chunk");
    (u["prompt_tokens"].as_u64().unwrap(), u["completion_tokens"].as_u64().unwrap())
}
