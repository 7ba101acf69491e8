//! Running the benchmark: the plan (concurrency levels × unguided/guided), warm-up, the
//! measured phase with exactly C requests in flight, and the metrics scrapes around it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::accounting::{scrape, StepAccounting};
use crate::client::{stream_chat, RequestRecord, Target};
use crate::report::{BenchReport, ConfigEcho, RunReport};
use crate::BenchError;
use genarm_demo::provenance::{source_dir, Provenance};

/// How much each run measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// Exactly this many requests per run.
    Requests(usize),
    /// New requests are started until this much time has passed; those started are awaited
    /// and counted, and the run's time runs until the last one ends.
    Duration(Duration),
}

/// What `genarm bench` runs.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The router's base URL (`http://host:port`).
    pub url: String,
    /// The prompts, used round-robin: request i sends prompt `i % len`.
    pub prompts: Vec<String>,
    /// Where the prompts came from (for the report).
    pub prompts_source: String,
    /// Concurrency levels, run in this order.
    pub concurrency: Vec<usize>,
    /// `max_tokens` of every request.
    pub max_tokens: u32,
    /// Guidance weights by reward name; empty: unguided runs only.
    pub guidance: BTreeMap<String, f64>,
    /// With guidance, also run every level unguided.
    pub compare_unguided: bool,
    /// Requests or duration per run.
    pub amount: Amount,
    /// Warm-up requests per run (not counted), sent C at a time; `None`: C.
    pub warmup: Option<usize>,
    /// Request i has seed `seed + i`.
    pub seed: u64,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus sampling's `top_p` of every request; `None`: not sent (the router's default, 1).
    pub top_p: Option<f64>,
    /// The `model` field; `None`: the base model listed by `GET /v1/models`.
    pub model: Option<String>,
    /// Bearer key for the router, when it requires one.
    pub api_key: Option<String>,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// The exact command line (for the report's provenance).
    pub command: Vec<String>,
    /// Model files and adapters the router serves, `(name, path)`, hashed into the report's
    /// provenance.
    pub model_files: Vec<(String, PathBuf)>,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
    /// The output directory (for the report).
    pub out: PathBuf,
}

/// Parses `NAME=W,NAME=W,...` into reward weights. Errors name the bad part.
pub fn parse_guidance(spec: &str) -> Result<BTreeMap<String, f64>, BenchError> {
    let mut out = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |why: &str| {
            BenchError::Usage(format!("--guidance {spec:?}: {part:?} {why}; write NAME=WEIGHT,..."))
        };
        let (name, w) = part.split_once('=').ok_or_else(|| bad("has no `=`"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad("has no reward name"));
        }
        let w: f64 = w.trim().parse().map_err(|_| bad("has a weight that is not a number"))?;
        if !w.is_finite() {
            return Err(bad("has a non-finite weight"));
        }
        if out.insert(name.to_string(), w).is_some() {
            return Err(bad("repeats a reward name"));
        }
    }
    if out.is_empty() {
        return Err(BenchError::Usage(format!("--guidance {spec:?} names no reward; write NAME=WEIGHT,...")));
    }
    Ok(out)
}

/// The request body of request `index`: a streamed chat completion with one user message,
/// the usage chunk requested, `top_p` when given, and explicit guidance (`{"rewards": {}}` when
/// unguided, so a router's `--default-guidance` does not apply).
pub fn request_body(
    model: &str,
    prompt: &str,
    max_tokens: u32,
    (temperature, top_p): (f64, Option<f64>),
    seed: u64,
    rewards: &BTreeMap<String, f64>,
) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "stream": true,
        "stream_options": {"include_usage": true},
        "guidance": {"rewards": rewards},
    });
    if let Some(p) = top_p {
        body["top_p"] = json!(p);
    }
    body
}

/// When a phase stops starting requests.
#[derive(Clone, Copy)]
enum Stop {
    After(usize),
    At(Instant),
}

/// One phase: `concurrency` workers, each sending requests one after another until `stop`.
/// Returns the records in index order and the wall time from the first send to the last end.
#[allow(clippy::too_many_arguments)]
async fn phase(
    client: &reqwest::Client,
    target: &Target,
    cfg: &BenchConfig,
    model: &str,
    rewards: &BTreeMap<String, f64>,
    concurrency: usize,
    stop: Stop,
    seed_base: u64,
    bar: &indicatif::ProgressBar,
) -> (Vec<RequestRecord>, f64) {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let worker = || async {
        let mut done = Vec::new();
        loop {
            if let Stop::At(t) = stop {
                if Instant::now() >= t {
                    break;
                }
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            if let Stop::After(n) = stop {
                if i >= n {
                    break;
                }
            }
            let prompt = &cfg.prompts[i % cfg.prompts.len()];
            let body = request_body(
                model,
                prompt,
                cfg.max_tokens,
                (cfg.temperature, cfg.top_p),
                seed_base.wrapping_add(i as u64),
                rewards,
            );
            let rec = stream_chat(client, target, i, &body).await;
            match stop {
                Stop::After(_) => bar.inc(1),
                Stop::At(_) => bar.set_position(start.elapsed().as_secs().min(bar.length().unwrap_or(0))),
            }
            if !rec.ok() {
                bar.set_message(format!("errors so far; last: {}", rec.error.as_deref().unwrap_or_default()));
            }
            done.push(rec);
        }
        done
    };
    let all = futures::future::join_all((0..concurrency).map(|_| worker())).await;
    let elapsed = start.elapsed().as_secs_f64();
    let mut records: Vec<RequestRecord> = all.into_iter().flatten().collect();
    records.sort_by_key(|r| r.index);
    (records, elapsed)
}

fn progress_bar(cfg: &BenchConfig, len: u64, label: String) -> indicatif::ProgressBar {
    if !cfg.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let unit = match cfg.amount {
        Amount::Requests(_) => "requests",
        Amount::Duration(_) => "s",
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{prefix}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} {{msg}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(label);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Asks `GET /v1/models` for the base model's name and the reward models' names.
async fn models(client: &reqwest::Client, target: &Target) -> Result<(String, Vec<String>), BenchError> {
    let err = |reason: String| BenchError::Router { url: target.url.clone(), reason };
    let resp =
        target.request(client, reqwest::Method::GET, "/v1/models").send().await.map_err(|e| {
            err(format!("GET /v1/models failed: {e}; is the router running (genarm launch)?"))
        })?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| err(format!("GET /v1/models: {e}")))?;
    if !status.is_success() {
        let hint = if status.as_u16() == 401 { " (pass --api-key)" } else { "" };
        return Err(err(format!("GET /v1/models answered {status}{hint}: {text}")));
    }
    let body: Value =
        serde_json::from_str(&text).map_err(|e| err(format!("GET /v1/models: bad JSON: {e}")))?;
    genarm_demo::pairs::parse_models_listing(&body).map_err(err)
}

/// Checks the configuration before anything is sent.
fn check(cfg: &BenchConfig) -> Result<(), BenchError> {
    if cfg.concurrency.is_empty() || cfg.concurrency.contains(&0) {
        return Err(BenchError::Usage(format!(
            "--concurrency {:?}: give one or more levels ≥ 1, e.g. 1,4,16",
            cfg.concurrency
        )));
    }
    if cfg.prompts.is_empty() {
        return Err(BenchError::Usage("no prompts".into()));
    }
    match cfg.amount {
        Amount::Requests(0) => return Err(BenchError::Usage("--requests must be ≥ 1".into())),
        Amount::Duration(d) if d.is_zero() => return Err(BenchError::Usage("--duration must be > 0".into())),
        _ => {}
    }
    if let Some(p) = cfg.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(BenchError::Usage(format!("--top-p {p}: give a number in (0, 1]")));
        }
    }
    if cfg.max_tokens == 0 {
        return Err(BenchError::Usage("--max-tokens must be ≥ 1".into()));
    }
    if cfg.compare_unguided && cfg.guidance.is_empty() {
        return Err(BenchError::Usage(
            "--compare-unguided needs --guidance NAME=W,... (without guidance every run is unguided)".into(),
        ));
    }
    Ok(())
}

/// Runs every (concurrency, mode) pair and returns the report (nothing is written).
pub async fn run_bench(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    check(cfg)?;
    // Hash the model files first: a bad path fails before the load does.
    let provenance = Provenance::collect(cfg.command.clone(), &source_dir(), &cfg.model_files)
        .map_err(|e| BenchError::Provenance(format!("{e:#}")))?;
    let target = Target { url: cfg.url.trim_end_matches('/').to_string(), api_key: cfg.api_key.clone() };
    let client = reqwest::Client::builder()
        .timeout(cfg.request_timeout)
        .pool_max_idle_per_host(cfg.concurrency.iter().copied().max().unwrap_or(1) + 4)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| BenchError::Usage(format!("cannot build the HTTP client: {e}")))?;
    let (listed_base, rewards) = models(&client, &target).await?;
    if let Some(unknown) = cfg.guidance.keys().find(|k| !rewards.contains(k)) {
        return Err(BenchError::Usage(format!(
            "--guidance names the reward model {unknown:?}, which the router does not serve; it serves: {}",
            if rewards.is_empty() {
                "none (start it with --rm NAME=MODEL)".to_string()
            } else {
                rewards.join(", ")
            }
        )));
    }
    let model = cfg.model.clone().unwrap_or(listed_base);
    let mut modes: Vec<(&str, BTreeMap<String, f64>)> = Vec::new();
    if cfg.guidance.is_empty() || cfg.compare_unguided {
        modes.push(("unguided", BTreeMap::new()));
    }
    if !cfg.guidance.is_empty() {
        modes.push(("guided", cfg.guidance.clone()));
    }
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut runs = Vec::new();
    for &c in &cfg.concurrency {
        for (mode, rewards) in &modes {
            let label = format!("c={c} {mode}");
            let warmup = cfg.warmup.unwrap_or(c);
            let (warm, _) = if warmup > 0 {
                let bar = progress_bar(cfg, warmup as u64, format!("{label} warm-up"));
                let r = phase(
                    &client,
                    &target,
                    cfg,
                    &model,
                    rewards,
                    c.min(warmup),
                    Stop::After(warmup),
                    cfg.seed.wrapping_add(1 << 32),
                    &bar,
                )
                .await;
                bar.finish_and_clear();
                r
            } else {
                (Vec::new(), 0.0)
            };
            let before = scrape(&client, &target).await;
            let (stop, len) = match cfg.amount {
                Amount::Requests(n) => (Stop::After(n), n as u64),
                Amount::Duration(d) => (Stop::At(Instant::now() + d), d.as_secs().max(1)),
            };
            let bar = progress_bar(cfg, len, label.clone());
            let (records, elapsed) =
                phase(&client, &target, cfg, &model, rewards, c, stop, cfg.seed, &bar).await;
            bar.finish_and_clear();
            let after = scrape(&client, &target).await;
            let accounting = StepAccounting::between(&before, &after);
            let run = RunReport::new(c, mode, rewards.clone(), &warm, records, elapsed, accounting);
            eprintln!("{}", crate::report::one_line(&run));
            runs.push(run);
        }
    }
    Ok(BenchReport {
        tool: "genarm bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        provenance,
        started_unix,
        model,
        config: ConfigEcho::of(cfg),
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guidance_specs_parse_and_bad_ones_are_explained() {
        let g = parse_guidance("a=1, b=0.5").unwrap();
        assert_eq!(g, BTreeMap::from([("a".to_string(), 1.0), ("b".to_string(), 0.5)]));
        for (bad, why) in [
            ("a", "no `=`"),
            ("=1", "no reward name"),
            ("a=x", "not a number"),
            ("a=1,a=2", "repeats"),
            ("a=inf", "non-finite"),
            ("", "names no reward"),
        ] {
            let e = parse_guidance(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn top_p_outside_zero_to_one_is_refused_before_anything_is_sent() {
        let cfg = |top_p| BenchConfig {
            url: "http://127.0.0.1:1".into(),
            prompts: vec!["hi".into()],
            prompts_source: "p".into(),
            concurrency: vec![1],
            max_tokens: 4,
            guidance: BTreeMap::new(),
            compare_unguided: false,
            amount: Amount::Requests(1),
            warmup: None,
            seed: 0,
            temperature: 0.7,
            top_p,
            model: None,
            api_key: None,
            request_timeout: Duration::from_secs(1),
            command: vec![],
            model_files: vec![],
            progress: false,
            out: PathBuf::from("out"),
        };
        for ok in [None, Some(0.9), Some(1.0)] {
            check(&cfg(ok)).unwrap();
        }
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            let e = check(&cfg(Some(bad))).unwrap_err().to_string();
            assert!(e.contains("--top-p") && e.contains("(0, 1]"), "{bad}: {e}");
        }
    }

    #[test]
    fn bodies_are_streamed_seeded_and_explicit_about_guidance() {
        let b = request_body("m", "hi", 8, (0.0, None), 7, &BTreeMap::new());
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["guidance"], json!({"rewards": {}}));
        assert_eq!(b["seed"], 7);
        assert_eq!(b["messages"][0]["content"], "hi");
        assert!(b.get("top_p").is_none(), "no top_p unless given: {b}");
        let b = request_body("m", "hi", 8, (0.7, Some(0.9)), 7, &BTreeMap::from([("x".to_string(), 2.0)]));
        assert_eq!(b["guidance"]["rewards"]["x"], 2.0);
        assert_eq!((b["temperature"].as_f64(), b["top_p"].as_f64()), (Some(0.7), Some(0.9)));
    }
}
