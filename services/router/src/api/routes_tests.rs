//! Unit tests of the HTTP layer over the fake backend: OpenAI response and error JSON shapes,
//! SSE framing (`data: {json}` chunks ending in `data: [DONE]`), body rejections (malformed
//! JSON, invalid UTF-8, 413), readiness, 404/405, and 429 on a full queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use genarm_fusion::WireDtype;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::api::validate::ValidationConfig;
use crate::api::{router, AppState, Core};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerHandle};
use crate::testing::{fixture_catalog, FakeBackend};
use crate::workers::Catalog;

/// A router's HTTP layer serving on a loopback port over a [`FakeBackend`].
pub(crate) struct Server {
    url: String,
    backend: Arc<FakeBackend>,
    handle: SchedulerHandle,
    client: reqwest::Client,
    _abort: watch::Sender<bool>,
}

async fn serve(max_waiting: usize, run_scheduler: bool) -> Server {
    serve_with(max_waiting, run_scheduler, |_| {}).await
}

async fn serve_with(
    max_waiting: usize,
    run_scheduler: bool,
    configure: impl FnOnce(&mut AppState),
) -> Server {
    serve_catalog(fixture_catalog(512), ValidationConfig::new("tiny"), max_waiting, run_scheduler, configure)
        .await
}

/// Serves `catalog` with `validation` over a fake backend (3 ms per step); with `run_scheduler`
/// false, requests queue and never run.
pub(crate) async fn serve_catalog(
    catalog: Catalog,
    validation: ValidationConfig,
    max_waiting: usize,
    run_scheduler: bool,
    configure: impl FnOnce(&mut AppState),
) -> Server {
    let catalog = Arc::new(catalog);
    let backend = Arc::new(FakeBackend::new(3, catalog.vocab, 100_000));
    let (abort_tx, abort) = watch::channel(false);
    let (sched, handle) = Scheduler::new(
        Arc::clone(&backend),
        SchedulerConfig {
            vocab: catalog.vocab,
            eos: vec![0],
            max_context: catalog.max_context,
            dtype: WireDtype::F32,
            wire: crate::workers::LogitsWire::Full,
            sampling_threads: 2,
            max_batch_size: 8,
            max_batch_tokens: 4096,
            max_waiting,
        },
        abort,
    );
    if run_scheduler {
        tokio::spawn(sched.run());
    } else {
        std::mem::forget(sched);
    }
    let mut state = AppState::new(None, 4096);
    configure(&mut state);
    let state = Arc::new(state);
    let health: Arc<dyn crate::workers::WorkerHealth> = backend.clone();
    let _ = state.core.set(Core { catalog, health, scheduler: handle.clone(), validation });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    Server { url, backend, handle, client: reqwest::Client::new(), _abort: abort_tx }
}

impl Server {
    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, String, String) {
        let r = self.client.post(format!("{}{path}", self.url)).body(body).send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (status, ct, r.text().await.unwrap())
    }

    pub(crate) async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, _, text) = self.post(path, body.to_string()).await;
        (s, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.client.get(format!("{}{path}", self.url)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// Parses an SSE body into its data payloads, checking the framing.
fn sse_data(body: &str) -> Vec<String> {
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .filter(|e| !e.starts_with(':'))
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {e:?}")).to_string())
        .collect()
}

fn assert_error(v: &Value, param: Option<&str>, needle: &str) {
    let e = &v["error"];
    assert!(e["message"].as_str().unwrap().contains(needle), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert_eq!(e["param"].as_str(), param, "{v}");
    assert!(e.as_object().unwrap().contains_key("code"), "{v}");
}

#[tokio::test]
async fn completion_whole_and_streamed_agree() {
    let s = serve(16, true).await;
    let req = json!({"model": "tiny", "prompt": "Hello there", "max_tokens": 12, "seed": 5,
                     "guidance": {"rewards": {"helpful": 1.0}, "beta": 0.5}});
    let (status, v) = s.post_json("/v1/completions", req.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "tiny");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    let choice = &v["choices"][0];
    let reason = choice["finish_reason"].as_str().unwrap();
    assert!(reason == "stop" || reason == "length");
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (status, ct, body) = s.post("/v1/completions", sreq.to_string()).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, choice["text"].as_str().unwrap());
    let last_choice = chunks.iter().rev().find(|c| !c["choices"].as_array().unwrap().is_empty()).unwrap();
    assert_eq!(last_choice["choices"][0]["finish_reason"].as_str().unwrap(), reason);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], *usage);
    // The ARM was called (guided), and everything was released.
    assert!(!s.backend.state(2).steps.is_empty());
    assert!(s.backend.state(1).steps.is_empty(), "an ARM not in the request gets no step");
}

#[tokio::test]
async fn chat_whole_and_streamed_with_logprobs() {
    let s = serve(16, true).await;
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
                     "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let (status, v) = s.post_json("/v1/chat/completions", req.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap());
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert!(content[0]["logprob"].as_f64().unwrap() <= 0.0);
    assert!(content[0]["bytes"].is_array());

    let mut sreq = req;
    sreq["stream"] = json!(true);
    let (_, _, body) = s.post("/v1/chat/completions", sreq.to_string()).await;
    let data = sse_data(&body);
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, v["choices"][0]["message"]["content"].as_str().unwrap());
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
}

#[tokio::test]
async fn body_rejections_are_openai_errors() {
    let s = serve(16, true).await;
    let (st, ct, body) = s.post("/v1/completions", "{\"model\": \"tiny\", \"prompt\": ").await;
    assert_eq!(st, 400);
    assert!(ct.starts_with("application/json"));
    assert_error(&serde_json::from_str(&body).unwrap(), None, "not valid JSON");

    let (st, _, body) =
        s.post("/v1/completions", b"{\"model\": \"tiny\", \"prompt\": \"\xff\xfe\"}".to_vec()).await;
    assert_eq!(st, 400);
    assert_error(&serde_json::from_str(&body).unwrap(), None, "UTF-8");

    let big = json!({"model": "tiny", "prompt": "x".repeat(10_000)}).to_string();
    let (st, _, body) = s.post("/v1/completions", big).await;
    assert_eq!(st, 413);
    assert_error(&serde_json::from_str(&body).unwrap(), None, "4096");

    let (st, v) = s.post_json("/v1/completions", json!({"prompt": "x"})).await;
    assert_eq!(st, 400);
    assert_error(&v, Some("model"), "missing field `model`");

    let (st, v) = s
        .post_json(
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "guidance": {"rewards": {"a": "heavy"}}}),
        )
        .await;
    assert_eq!(st, 400);
    assert_error(&v, Some("guidance"), "heavy");
    let (st, v) =
        s.post_json("/v1/completions", json!({"model": "tiny", "prompt": "x", "max_tokens": -1})).await;
    assert_eq!(st, 400);
    assert_error(&v, Some("max_tokens"), "-1");
    let (st, v) =
        s.post_json("/v1/chat/completions", json!({"model": "tiny", "messages": [{"content": "x"}]})).await;
    assert_eq!(st, 400);
    assert_error(&v, Some("messages"), "role");
    let (st, v) = s
        .post_json(
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}),
        )
        .await;
    assert_eq!(st, 400);
    assert_error(
        &v,
        Some("messages[0].role"),
        "\"wizard\", which is not a chat role; use one of system, developer",
    );

    let (st, v) = s.post_json("/v1/completions", json!({"model": "nope", "prompt": "x"})).await;
    assert_eq!(st, 404);
    assert_error(&v, Some("model"), "nope");
    assert_eq!(v["error"]["code"], "model_not_found");

    let (st, v) =
        s.post_json("/v1/completions", json!({"model": "tiny", "prompt": "x", "temperature": -2})).await;
    assert_eq!(st, 400);
    assert_error(&v, Some("temperature"), "-2");

    let (st, body) = s.get("/v1/nothing").await;
    assert_eq!(st, 404);
    assert_error(&serde_json::from_str(&body).unwrap(), None, "/v1/nothing");
    let (st, body) = s.get("/v1/completions").await;
    assert_eq!(st, 405);
    assert_error(&serde_json::from_str(&body).unwrap(), None, "GET");

    // Still serving.
    let (st, _) =
        s.post_json("/v1/completions", json!({"model": "tiny", "prompt": "x", "max_tokens": 2})).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn readiness_follows_the_workers() {
    let s = serve(16, true).await;
    assert_eq!(s.get("/health").await.0, 200);
    assert_eq!(s.get("/ready").await.0, 200);
    let (st, body) = s.get("/v1/models").await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tiny", "harmless", "helpful"]);
    assert!(v["data"].as_array().unwrap().iter().all(|m| m["owned_by"] == "genarm"));

    s.backend.models[2].ready.store(false, Ordering::SeqCst);
    let (st, body) = s.get("/ready").await;
    assert_eq!(st, 503);
    assert!(body.contains("arm2"), "{body}");
    let (st, v) = s
        .post_json(
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "guidance": {"rewards": {"helpful": 1.0}}}),
        )
        .await;
    assert_eq!(st, 503);
    assert_error(&v, None, "arm2");
    let (st, _) =
        s.post_json("/v1/completions", json!({"model": "tiny", "prompt": "x", "max_tokens": 2})).await;
    assert_eq!(st, 200, "unguided requests keep working");
}

#[tokio::test]
async fn a_full_queue_answers_429() {
    // The scheduler does not run: the first request waits forever, the second finds the queue full.
    let s = Arc::new(serve(1, false).await);
    let s2 = Arc::clone(&s);
    let first = tokio::spawn(async move {
        s2.post_json("/v1/completions", json!({"model": "tiny", "prompt": "x"})).await
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.handle.waiting() < 1 {
        assert!(std::time::Instant::now() < deadline, "the first request never reached the queue");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (st, v) = s.post_json("/v1/completions", json!({"model": "tiny", "prompt": "x"})).await;
    assert_eq!(st, 429);
    assert_error(&v, None, "overloaded");
    first.abort();
}

#[tokio::test]
async fn a_not_connected_router_is_not_ready() {
    let state = Arc::new(AppState::new(None, 1024));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    let r = reqwest::get(format!("{url}/ready")).await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let v: Value = r.json().await.unwrap();
    assert_error(&v, None, "connecting");
    assert_eq!(reqwest::get(format!("{url}/health")).await.unwrap().status().as_u16(), 200);
}

#[tokio::test]
async fn keys_are_required_except_on_health_and_ready() {
    use crate::api::auth::Auth;
    use crate::api::limits::KeyLimits;
    let s = serve_with(16, true, |st| {
        st.auth = Arc::new(Auth::new(&["sk-unit-1".into()], None, true, KeyLimits::new(4, 0)).unwrap());
    })
    .await;
    let body = json!({"model": "tiny", "prompt": "Hello", "max_tokens": 2});
    let post = |key: Option<&'static str>| {
        let mut r = s.client.post(format!("{}/v1/completions", s.url)).body(body.to_string());
        if let Some(k) = key {
            r = r.header("Authorization", k);
        }
        r.send()
    };
    for key in [None, Some("Bearer sk-unit-2"), Some("sk-unit-1")] {
        let r = post(key).await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{key:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
        assert!(!v.to_string().contains("sk-unit"), "{v}");
    }
    assert_eq!(post(Some("Bearer sk-unit-1")).await.unwrap().status().as_u16(), 200);
    assert_eq!(s.get("/health").await.0, 200);
    assert_eq!(s.get("/ready").await.0, 200);
    assert_eq!(s.get("/metrics").await.0, 401, "--protect-metrics");
    assert_eq!(s.get("/v1/models").await.0, 401);
}

#[tokio::test]
async fn a_request_past_its_timeout_gets_a_504_and_is_cancelled() {
    // The scheduler never answers: the request can only end by its timeout.
    let s =
        serve_with(16, false, |st| st.request_timeout = Some(std::time::Duration::from_millis(300))).await;
    let started = std::time::Instant::now();
    let (st, v) = s.post_json("/v1/completions", json!({"model": "tiny", "prompt": "x"})).await;
    assert_eq!(st, 504, "{v}");
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("--request-timeout-secs"), "{v}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn a_stream_past_its_timeout_ends_with_an_error_event_after_its_tokens_and_is_released() {
    let s = serve_with(16, true, |st| st.request_timeout = Some(std::time::Duration::from_millis(400))).await;
    // EOS (id 0) can never be sampled, so only the timeout can end this request: at least 2 ms
    // per step (the fake's delay) for 500 tokens is over twice the 400 ms deadline.
    s.backend.state(0).poison = vec![(0, f32::NEG_INFINITY)];
    let req = json!({"model": "tiny", "prompt": "x", "max_tokens": 500, "stream": true});
    let started = std::time::Instant::now();
    let (status, ct, body) = s.post("/v1/completions", req.to_string()).await;
    assert_eq!(status, 200, "the stream started before the deadline: {body}");
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let data = sse_data(&body);
    let events: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let (error, tokens) = events.split_last().unwrap();
    assert!(tokens.len() >= 2, "tokens were streamed before the deadline: {body}");
    assert!(tokens.iter().all(|c| c["choices"][0]["text"].is_string()), "{body}");
    assert_eq!(error["error"]["code"], "request_timeout", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("--request-timeout-secs"), "{error}");
    // The scheduler sees the closed stream, stops stepping the sequence and releases it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let released_after_steps = {
            let st = s.backend.state(0);
            (st.held.is_empty() && !st.released.is_empty()).then_some(st.steps.len())
        };
        if let Some(steps) = released_after_steps {
            // Cancelled at the deadline, not run to max_tokens (≥ 2 ms per step: ≤ 200 steps).
            assert!(steps < 400, "the sequence ran {steps} steps after its timeout");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the timed-out sequence was not released");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
