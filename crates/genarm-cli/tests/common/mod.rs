//! Shared helpers of the cluster tests: the fixture models, an in-process reference decoder on
//! `genarm_model::Engine` (greedy GenARM computed independently of the services), worker `Stats`
//! over gRPC, and OpenAI-shaped request helpers over the test HTTP client.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use genarm_model::{Engine, EngineOptions, ModelAssets, StepSeq};
use genarm_proto::tonic;
use genarm_proto::v1::worker_client::WorkerClient;
use genarm_proto::v1::{InfoRequest, InfoResponse, StatsRequest, StatsResponse};
pub use genarm_testkit::cluster::http::{self, EventStream, Response};
pub use genarm_testkit::cluster::{ChildProcess, Cluster, ClusterSpec};
use genarm_testkit::{fixture_dir, write_fixture, FixtureRope, FixtureSpec};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

/// The base model every cluster test serves.
pub const BASE: &str = "llama-mha";

/// Serializes the cluster tests of one test binary under `cargo test` (nextest already runs
/// them one at a time, see `.config/nextest.toml`): they time things and load models.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A committed fixture's directory.
pub fn fixture(name: &str) -> PathBuf {
    fixture_dir(name)
}

/// A fixture ARM smaller than the base (hidden 64 instead of 128, one layer, 4 heads) with the
/// same tokenizer and 64 extra logit rows past it (ids no text encodes to, which the router
/// must cut off), written to a temporary directory.
pub struct SmallArm {
    _dir: tempfile::TempDir,
    /// The model directory.
    pub path: PathBuf,
}

/// Writes [`SmallArm`].
pub fn small_arm() -> SmallArm {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = FixtureSpec {
        name: "llama-small".into(),
        model_type: "llama".into(),
        hidden_size: 64,
        intermediate_size: 160,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        vocab_size: Some(genarm_testkit::TOKENIZER_VOCAB_SIZE + 64),
        tie_word_embeddings: false,
        rope: FixtureRope::Legacy { theta: 10_000.0 },
        max_position_embeddings: 512,
        rms_norm_eps: 1e-5,
        seed: 77,
    };
    let path = dir.path().join(&spec.name);
    write_fixture(&path, &spec).expect("writing the small ARM fixture");
    SmallArm { _dir: dir, path }
}

/// A model loaded in this process, for reference computations.
pub struct RefModel {
    /// The engine (CPU, f32, TP 1).
    pub engine: Engine,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// EOS ids.
    pub eos: Vec<u32>,
    bos: Option<u32>,
    add_bos: bool,
}

impl RefModel {
    /// Loads the model at `path`.
    pub fn load(path: &Path) -> RefModel {
        let assets = ModelAssets::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let engine = Engine::load(&assets, EngineOptions::default()).expect("loading the reference engine");
        RefModel {
            engine,
            tokenizer: assets.tokenizer.tokenizer.clone(),
            eos: assets.tokenizer.eos_token_ids.clone(),
            bos: assets.tokenizer.bos_token_id,
            add_bos: assets.tokenizer.add_bos_token,
        }
    }

    /// Token ids of a prompt as the router encodes it: no post-processor specials, BOS
    /// prepended when the model asks for it.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = self.tokenizer.encode(text, false).expect("encoding").get_ids().to_vec();
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        ids
    }

    /// The text generated ids decode to (special tokens skipped, as OpenAI text output).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).expect("decoding")
    }

    /// V: the tokenizer's size, which every model's logits are cut to.
    pub fn vocab(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// A ChatML conversation with one user turn, rendered as the fixtures' chat template does.
pub fn chatml_user(content: &str) -> String {
    format!("<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n")
}

/// The result of [`greedy`].
#[derive(Debug, Clone)]
pub struct Greedy {
    /// Generated ids (the EOS included when generation stopped on it).
    pub ids: Vec<u32>,
    /// `stop` (EOS) or `length`.
    pub finish: &'static str,
    /// The log-probability of each generated token under `softmax(fused)`.
    pub logprobs: Vec<f32>,
    /// The smallest gap between the best and second-best fused score over the steps: how far
    /// the reference is from a tie that f32 rounding could flip.
    pub min_margin: f32,
}

/// `log_softmax` in f32 with an f64 sum, the first `v` values.
fn log_softmax(logits: &[f32], v: usize) -> Vec<f32> {
    let x = &logits[..v];
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = x.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_sum = sum.ln() as f32;
    x.iter().map(|&l| (l - max) - log_sum).collect()
}

/// Greedy GenARM decoding computed directly on the engines: at each step the next id is the
/// argmax (lowest id on ties) of `ℓ_base + Σ α_i ℓ_i` (`ℓ = log_softmax(logits[..V])` in f32,
/// V the base tokenizer's size), fed back to every model one token at a time. Every model gets
/// the same `prompt` ids (the fixtures share one tokenizer and template). Stops after
/// `max_tokens` or on the base's EOS.
pub fn greedy(base: &RefModel, arms: &[(&RefModel, f32)], prompt: &[u32], max_tokens: usize) -> Greedy {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    let seq_id = SEQ.fetch_add(1, Ordering::Relaxed);
    let v = base.vocab();
    let models: Vec<(&RefModel, f32)> =
        std::iter::once((base, 1.0)).chain(arms.iter().copied().filter(|(_, a)| *a != 0.0)).collect();
    let mut out =
        Greedy { ids: Vec::new(), finish: "length", logprobs: Vec::new(), min_margin: f32::INFINITY };
    let mut start = 0;
    let mut feed = prompt.to_vec();
    for _ in 0..max_tokens {
        let mut fused = vec![0f32; v];
        for (i, (model, alpha)) in models.iter().enumerate() {
            let step = model
                .engine
                .step(vec![StepSeq { seq_id, start_pos: start, tokens: feed.clone() }])
                .expect("reference step");
            let logits = step.results.into_iter().next().unwrap().expect("reference step result");
            assert!(logits.len() >= v, "a model has {} logits, fewer than V = {v}", logits.len());
            let l = log_softmax(&logits, v);
            for (f, x) in fused.iter_mut().zip(l) {
                if i == 0 {
                    *f = x;
                } else {
                    *f += alpha * x;
                }
            }
        }
        start += feed.len();
        let mut best = 0;
        for (id, &x) in fused.iter().enumerate() {
            if x > fused[best] {
                best = id;
            }
        }
        let second =
            fused.iter().enumerate().filter(|&(id, _)| id != best).map(|(_, &x)| x).fold(f32::MIN, f32::max);
        out.min_margin = out.min_margin.min(fused[best] - second);
        let max = fused[best];
        let log_sum = fused.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln() as f32;
        out.logprobs.push(-log_sum);
        let token = best as u32;
        out.ids.push(token);
        if base.eos.contains(&token) {
            out.finish = "stop";
            break;
        }
        feed = vec![token];
    }
    for (model, _) in &models {
        model.engine.release(seq_id);
    }
    out
}

/// Asserts that a reference is not within f32 rounding of a tie (else the comparison with the
/// services, which batch and cache differently, could flip a token for no fault of theirs).
pub fn assert_unambiguous(what: &str, g: &Greedy) {
    assert!(
        g.min_margin > 1e-3,
        "{what}: the reference decode has a near-tie (margin {}); pick another prompt",
        g.min_margin
    );
}

/// Runs `call` on a fresh gRPC client of the worker at `url`, with deadlines.
fn worker_call<T, F>(
    url: &str,
    what: &str,
    call: impl FnOnce(WorkerClient<tonic::transport::Channel>) -> F,
) -> T
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let client = tokio::time::timeout(Duration::from_secs(10), WorkerClient::connect(url.to_string()))
            .await
            .unwrap_or_else(|_| panic!("connecting to {url}: timed out"))
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        tokio::time::timeout(Duration::from_secs(10), call(client))
            .await
            .unwrap_or_else(|_| panic!("{what} of {url}: timed out"))
            .unwrap_or_else(|e| panic!("{what} of {url}: {e}"))
            .into_inner()
    })
}

/// A worker's `Stats`.
pub fn stats(url: &str) -> StatsResponse {
    worker_call(url, "Stats", |mut c| async move { c.stats(StatsRequest {}).await })
}

/// A worker's `Info`.
pub fn info(url: &str) -> InfoResponse {
    worker_call(url, "Info", |mut c| async move { c.info(InfoRequest {}).await })
}

/// `POST path` with `body`; panics (with every service's last log lines) unless the answer is 200.
pub fn post_ok(cluster: &Cluster, path: &str, body: &Value) -> Value {
    let r = http::post_json(&cluster.url(path), body).unwrap_or_else(|e| panic!("POST {path}: {e:#}"));
    assert_eq!(r.status, 200, "POST {path} {body}\n-> {} {}\n{}", r.status, r.text(), cluster.log_tails());
    r.json().unwrap()
}

/// A `/v1/completions` body for the base model.
pub fn completion(prompt: &str, max_tokens: usize) -> Value {
    json!({"model": BASE, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

/// Adds `"guidance": {"rewards": rewards, "beta": beta}` to a request body.
pub fn with_guidance(mut body: Value, rewards: &[(&str, f64)], beta: f64) -> Value {
    let rewards: serde_json::Map<String, Value> =
        rewards.iter().map(|(n, w)| (n.to_string(), json!(w))).collect();
    body["guidance"] = json!({"rewards": rewards, "beta": beta});
    body
}

/// `choices[0].text` (completions) or `choices[0].message.content` (chat).
pub fn choice_text(resp: &Value) -> String {
    let c = &resp["choices"][0];
    c["text"]
        .as_str()
        .or_else(|| c["message"]["content"].as_str())
        .unwrap_or_else(|| panic!("no text in {resp}"))
        .to_string()
}

/// `choices[0].finish_reason`.
pub fn finish_reason(resp: &Value) -> String {
    resp["choices"][0]["finish_reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no finish_reason in {resp}"))
        .to_string()
}

/// A streamed response, reassembled.
#[derive(Debug)]
pub struct Streamed {
    /// Concatenated text (`choices[0].text` or `choices[0].delta.content` of every chunk).
    pub text: String,
    /// The last non-null `finish_reason`.
    pub finish: Option<String>,
    /// Chunks received before `[DONE]`.
    pub chunks: usize,
    /// Whether `data: [DONE]` ended the stream.
    pub done: bool,
}

/// POSTs `body` with `"stream": true` and reads the whole event stream.
pub fn stream(cluster: &Cluster, path: &str, mut body: Value) -> Streamed {
    body["stream"] = json!(true);
    let mut s =
        EventStream::post_json(&cluster.url(path), &body).unwrap_or_else(|e| panic!("POST {path}: {e:#}"));
    if s.status != 200 {
        let status = s.status;
        panic!("streaming POST {path}: HTTP {status} {}", s.rest_text().unwrap_or_default());
    }
    let mut out = Streamed { text: String::new(), finish: None, chunks: 0, done: false };
    while let Some(data) = s.next_data().unwrap_or_else(|e| panic!("reading the stream: {e:#}")) {
        if data == "[DONE]" {
            out.done = true;
            break;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("chunk {data:?}: {e}"));
        assert!(chunk.get("error").is_none(), "error event in the stream: {chunk}");
        out.chunks += 1;
        if let Some(c) = chunk["choices"].get(0) {
            if let Some(t) = c["text"].as_str().or_else(|| c["delta"]["content"].as_str()) {
                out.text.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                out.finish = Some(f.to_string());
            }
        }
    }
    assert!(s.next_data().unwrap().is_none(), "events after [DONE]");
    out
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts an OpenAI error response: `status`, the `{"error": {message, type, param, code}}`
/// shape, and a message containing every one of `words` (case-insensitive).
pub fn assert_error(r: &Response, status: u16, words: &[&str], what: &str) {
    assert_eq!(r.status, status, "{what}: expected HTTP {status}, got {} {}", r.status, r.text());
    let body = r.json().unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let err = &body["error"];
    for key in ["message", "type", "param", "code"] {
        assert!(err.get(key).is_some(), "{what}: error JSON lacks `{key}`: {body}");
    }
    let message =
        err["message"].as_str().unwrap_or_else(|| panic!("{what}: message is not a string: {body}"));
    for word in words {
        assert!(
            message.to_lowercase().contains(&word.to_lowercase()),
            "{what}: the message should name `{word}`: {message:?}"
        );
    }
}

/// Reads a stream to its end: (the text of every chunk, the error events, whether `[DONE]`
/// ended it).
pub fn drain(mut s: EventStream) -> (String, Vec<Value>, bool) {
    let (mut text, mut errors, mut done) = (String::new(), Vec::new(), false);
    while let Ok(Some(data)) = s.next_data() {
        if data == "[DONE]" {
            done = true;
            break;
        }
        let v: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event {data:?}: {e}"));
        if v.get("error").is_some() {
            errors.push(v);
        } else if let Some(t) = v["choices"][0]["text"].as_str() {
            text.push_str(t);
        }
    }
    (text, errors, done)
}

/// Opens `body` as a streamed completion on `cluster` and reads its first two events, which
/// must not be errors: the request is then in flight.
pub fn open_stream_in_flight(cluster: &Cluster, body: &Value) -> EventStream {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let mut s = EventStream::post_json(&cluster.url("/v1/completions"), &body).unwrap();
    assert_eq!(s.status, 200);
    for _ in 0..2 {
        let data = s.next_data().unwrap().expect("stream ended early");
        assert!(!data.contains("error"), "{data}");
    }
    s
}

/// A worker on 127.0.0.1:0 registering in `etcd` under `cluster` with a 2 s lease (`reward`:
/// an rm-worker of that name, else the base); returns it and its gRPC URL.
pub fn etcd_worker(
    etcd: &genarm_testkit::etcd::EtcdServer,
    cluster: &str,
    model: &Path,
    reward: Option<&str>,
) -> (ChildProcess, String) {
    let bin = if reward.is_some() { "genarm-rm-worker" } else { "genarm-base-worker" };
    let mut c = genarm_testkit::cluster::genarm_command(bin).unwrap();
    c.env("CANDLE_NUM_THREADS", "1").arg("--model").arg(model).args([
        "--listen",
        "127.0.0.1:0",
        "--etcd",
        etcd.url(),
        "--cluster",
        cluster,
        "--lease-ttl-secs",
        "2",
    ]);
    if let Some(name) = reward {
        c.args(["--name", name]);
    }
    let mut p = ChildProcess::spawn(reward.unwrap_or("base-worker"), c).unwrap();
    let addr = p.wait_listening(Instant::now() + Duration::from_secs(30)).unwrap();
    (p, format!("http://{addr}"))
}
