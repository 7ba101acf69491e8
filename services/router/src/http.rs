//! The HTTP API (axum): `/v1/completions`, `/v1/chat/completions` (whole responses or SSE
//! streams ending in `data: [DONE]`), `/v1/models`, `/health`, `/ready`, `/metrics`; the JSON
//! body extractor whose rejections are OpenAI errors (malformed JSON, invalid UTF-8, 413); and
//! the conversion of scheduler events into OpenAI responses and chunks.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use genarm_text::ModelText;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::auth::{Auth, KeyIdentity};
use crate::backend::WorkerHealth;
use crate::error::RouterError;
use crate::openai::{
    unix_now, AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatDelta, ChatLogprobs, ChatTokenLogprob, CompletionChoice, CompletionLogprobs,
    CompletionRequest, CompletionResponse, ModelCard, ModelList, TopLogprob, Usage,
};
use crate::scheduler::{Event, FinishReason, SchedulerHandle};
use crate::validate::{prepare_chat, prepare_completion, Prepared, ValidationConfig};
use crate::workers::Catalog;

/// What the handlers need once the workers are connected.
pub struct Core {
    /// The models.
    pub catalog: Arc<Catalog>,
    /// Worker readiness.
    pub health: Arc<dyn WorkerHealth>,
    /// Where requests go.
    pub scheduler: SchedulerHandle,
    /// Validation settings.
    pub validation: ValidationConfig,
}

/// Shared state of the HTTP server.
pub struct AppState {
    /// Set once every worker is connected and checked; until then generation answers 503.
    pub core: OnceLock<Core>,
    /// The Prometheus recorder's handle (`None`: `/metrics` is empty).
    pub metrics: Option<PrometheusHandle>,
    /// The body size limit (for the 413 message).
    pub max_body_bytes: usize,
    /// Set on SIGTERM/SIGINT: new requests get 503 with `Retry-After` (the drain).
    pub shutting_down: AtomicBool,
    /// Requests whose response (body included, for streams) is not finished yet.
    pub in_flight: Arc<AtomicUsize>,
    /// The router's start (Unix seconds), for `/v1/models`.
    pub created: u64,
    /// API keys and per-key limits ([`Auth::open`]: no keys).
    pub auth: Arc<Auth>,
    /// Whole-request timeout (`--request-timeout-secs`; `None`: none).
    pub request_timeout: Option<std::time::Duration>,
}

impl AppState {
    /// A state with no workers connected yet.
    pub fn new(metrics: Option<PrometheusHandle>, max_body_bytes: usize) -> Self {
        AppState {
            core: OnceLock::new(),
            metrics,
            max_body_bytes,
            shutting_down: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
            created: unix_now(),
            auth: Arc::new(Auth::open()),
            request_timeout: None,
        }
    }

    fn core(&self) -> Result<&Core, RouterError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(RouterError::Draining { retry_after_secs: DRAIN_RETRY_AFTER_SECS });
        }
        self.core.get().ok_or_else(|| RouterError::Unavailable {
            message: "the router is still connecting to its workers (they may be loading their models); \
                      retry when GET /ready answers 200"
                .into(),
        })
    }
}

/// The `Retry-After` (seconds) of the 503 answered to new requests while the router drains.
pub const DRAIN_RETRY_AFTER_SECS: u64 = 1;

/// Counts one request in [`AppState::in_flight`] until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Middleware: a request counts as in flight until its response body is finished or dropped
/// (a stream keeps its count while it runs), so that the drain knows when everything is done.
async fn count_in_flight(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let guard = InFlight::new(&st.in_flight);
    let resp = next.run(req).await;
    if axum::body::HttpBody::size_hint(resp.body()).exact().is_some() {
        return resp; // A whole body in memory: done.
    }
    let (parts, body) = resp.into_parts();
    let stream = futures::StreamExt::map(body.into_data_stream(), move |chunk| {
        let _held = &guard;
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// The axum application.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), crate::auth::require_key))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), count_in_flight))
        .with_state(state)
}

/// A JSON body whose every rejection is an OpenAI error: an oversized body → 413, invalid UTF-8
/// or malformed JSON or wrong field types → 400 with serde's description (line and column). The
/// content type is not checked (clients such as `curl -d` send form types).
pub struct OpenAiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for OpenAiJson<T> {
    type Rejection = RouterError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                RouterError::PayloadTooLarge { limit: state.max_body_bytes }
            } else {
                RouterError::invalid_body(format!("cannot read the request body: {}", rej.body_text()))
            }
        })?;
        parse_json(&bytes).map(OpenAiJson)
    }
}

/// Parses a request body (see [`OpenAiJson`]).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RouterError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        RouterError::invalid_body(format!(
            "the request body is not valid UTF-8 (invalid byte at offset {}); send JSON encoded as UTF-8",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(RouterError::invalid_body("the request body is empty; send a JSON object"));
    }
    serde_json::from_str(text).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                RouterError::invalid_body(format!("the request body is not valid JSON: {e}"))
            }
            Category::Data => {
                let msg = e.to_string();
                if let Some(field) = culprit_field::<T>(text) {
                    return RouterError::InvalidRequest {
                        message: format!("invalid `{field}`: {msg}"),
                        param: Some(field),
                    };
                }
                // A required top-level field is missing.
                let param = msg
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split('`').next())
                    .map(str::to_string);
                RouterError::InvalidRequest { message: format!("invalid request: {msg}"), param }
            }
        }
    })
}

/// The top-level field whose value makes `text` fail to deserialize as `T` (serde's messages
/// name the expected type but not the field): the one whose removal fixes the error (or turns it
/// into that field missing). Only for objects of a sensible size.
fn culprit_field<T: DeserializeOwned>(text: &str) -> Option<String> {
    let serde_json::Value::Object(map) = serde_json::from_str::<serde_json::Value>(text).ok()? else {
        return None;
    };
    if map.len() > 64 {
        return None;
    }
    map.keys().find_map(|k| {
        let mut rest = map.clone();
        rest.remove(k);
        match serde_json::from_value::<T>(serde_json::Value::Object(rest)) {
            Ok(_) => Some(k.clone()),
            Err(e) if e.to_string().starts_with(&format!("missing field `{k}`")) => Some(k.clone()),
            Err(_) => None,
        }
    })
}

/// Counts a finished HTTP exchange.
fn count(endpoint: &'static str, status: StatusCode) {
    metrics::counter!("genarm_requests_total", "endpoint" => endpoint, "status" => status.as_u16().to_string())
        .increment(1);
}

/// `POST /v1/completions`.
#[tracing::instrument(skip_all, fields(endpoint = "completions"))]
async fn completions(
    State(st): State<Arc<AppState>>,
    key: Option<axum::Extension<KeyIdentity>>,
    body: Result<OpenAiJson<CompletionRequest>, RouterError>,
) -> Response {
    let resp = match body {
        Err(e) => e.into_response(),
        Ok(OpenAiJson(req)) => {
            let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
            generate(&st, key.map(|k| k.0), Kind::Completion, id, |id, core| {
                prepare_completion(req, id, &core.catalog, &core.validation)
            })
            .await
        }
    };
    count("completions", resp.status());
    resp
}

/// `POST /v1/chat/completions`.
#[tracing::instrument(skip_all, fields(endpoint = "chat_completions"))]
async fn chat_completions(
    State(st): State<Arc<AppState>>,
    key: Option<axum::Extension<KeyIdentity>>,
    body: Result<OpenAiJson<ChatCompletionRequest>, RouterError>,
) -> Response {
    let resp = match body {
        Err(e) => e.into_response(),
        Ok(OpenAiJson(req)) => {
            let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
            generate(&st, key.map(|k| k.0), Kind::Chat, id, |id, core| {
                prepare_chat(req, id, &core.catalog, &core.validation)
            })
            .await
        }
    };
    count("chat_completions", resp.status());
    resp
}

/// Which response shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

/// Validates, submits, and answers (whole or streamed). Errors before the first token are
/// plain HTTP errors; later ones end the stream with an error event.
async fn generate(
    st: &Arc<AppState>,
    key: Option<KeyIdentity>,
    kind: Kind,
    id: String,
    prepare: impl FnOnce(String, &Core) -> Result<Prepared, RouterError>,
) -> Response {
    let received = std::time::Instant::now();
    let core = match st.core() {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let prepared = match prepare(id.clone(), core) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Some(&m) = prepared.models.iter().find(|&&m| !core.health.is_ready(m)) {
        return RouterError::Unavailable {
            message: format!(
                "{} is not ready (disconnected or still loading); retry later{}",
                core.health.display_name(m),
                if m == 0 { "" } else { ", or send the request without guidance by this reward model" }
            ),
        }
        .into_response();
    }
    let charged = match &key {
        Some(key) => {
            let cost = prepared.gen.base_prompt.len() as u64 + u64::from(prepared.gen.max_tokens);
            if let Err(e) = st.auth.limits.charge_tokens(&key.label, cost, std::time::Instant::now()) {
                return e.into_response();
            }
            Some((&key.label, cost))
        }
        None => None,
    };
    let deadline = st.request_timeout.map(|t| (tokio::time::Instant::from_std(received) + t, t.as_secs()));
    let Prepared { gen, stream, include_usage, .. } = prepared;
    let want_logprobs = gen.top_logprobs.is_some();
    tracing::debug!(request_id = %id, prompt_tokens = gen.base_prompt.len(), arms = gen.arms.len(),
        max_tokens = gen.max_tokens, stream, "request admitted");
    let mut rx = match core.scheduler.submit_received(gen, received) {
        Ok(rx) => rx,
        Err(e) => {
            // Refused before any work (queue full, draining): the key keeps its budget.
            if let Some((label, cost)) = charged {
                st.auth.limits.refund_tokens(label, cost);
            }
            return e.into_response();
        }
    };
    let first = match recv_by(&mut rx, deadline).await {
        Err(e) => return e.into_response(),
        Ok(Some(Event::Failed(e))) => return e.into_response(),
        Ok(first) => first,
    };
    let first = match first {
        Some(ev) => ev,
        None => return RouterError::Internal("the scheduler dropped the request".into()).into_response(),
    };
    let out = Output {
        kind,
        id,
        created: unix_now(),
        model: core.validation.served_model.clone(),
        text: Arc::clone(&core.catalog.base().text),
        want_logprobs,
        include_usage,
        role_sent: false,
        text_len: 0,
    };
    if stream {
        sse_response(out, first, rx, deadline)
    } else {
        match deadline {
            None => whole_response(out, first, rx).await,
            Some((at, secs)) => tokio::time::timeout_at(at, whole_response(out, first, rx))
                .await
                .unwrap_or_else(|_| RouterError::Timeout { secs }.into_response()),
        }
    }
}

/// The next event, or [`RouterError::Timeout`] once `deadline` (instant, limit in seconds)
/// passes; the caller then drops the receiver, which cancels the request and releases its KV.
async fn recv_by(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    deadline: Option<(tokio::time::Instant, u64)>,
) -> Result<Option<Event>, RouterError> {
    match deadline {
        None => Ok(rx.recv().await),
        Some((at, secs)) => tokio::time::timeout_at(at, rx.recv()).await.map_err(|_| {
            tracing::warn!(limit_secs = secs, "request timed out (--request-timeout-secs): cancelling it");
            RouterError::Timeout { secs }
        }),
    }
}

/// Turns events into OpenAI JSON.
struct Output {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    text: Arc<ModelText>,
    want_logprobs: bool,
    include_usage: bool,
    /// Chat streams: the `role` chunk went out.
    role_sent: bool,
    /// Bytes of text emitted so far (completions' `text_offset`).
    text_len: usize,
}

/// One token's log-prob data as text.
struct TokenLp {
    token: String,
    logprob: f32,
    top: Vec<(String, f32)>,
}

impl Output {
    fn token_text(&self, id: u32) -> String {
        self.text.token_text(id).unwrap_or_default()
    }

    fn token_lp(&self, token: u32, logprob: Option<f32>, top: &[(u32, f32)]) -> TokenLp {
        TokenLp {
            token: self.token_text(token),
            logprob: logprob.unwrap_or(0.0),
            top: top.iter().map(|&(id, lp)| (self.token_text(id), lp)).collect(),
        }
    }

    fn chat_lp(lp: TokenLp) -> ChatTokenLogprob {
        ChatTokenLogprob {
            bytes: lp.token.as_bytes().to_vec(),
            token: lp.token,
            logprob: lp.logprob,
            top_logprobs: lp
                .top
                .into_iter()
                .map(|(t, l)| TopLogprob { bytes: t.as_bytes().to_vec(), token: t, logprob: l })
                .collect(),
        }
    }

    fn push_completion_lp(&self, acc: &mut CompletionLogprobs, lp: TokenLp) {
        acc.text_offset.push(self.text_len);
        acc.tokens.push(lp.token);
        acc.token_logprobs.push(lp.logprob);
        let mut map = BTreeMap::new();
        for (t, l) in lp.top {
            map.entry(t).or_insert(l);
        }
        acc.top_logprobs.push(map);
    }

    fn completion_chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> String {
        json(&CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }

    fn chat_chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> String {
        json(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }

    /// The SSE data lines for one event (the last event ends with `[DONE]`).
    fn stream_chunks(&mut self, ev: Event) -> (Vec<String>, bool) {
        let mut out = Vec::new();
        if self.kind == Kind::Chat && !self.role_sent {
            self.role_sent = true;
            out.push(self.chat_chunk(
                vec![ChatChunkChoice {
                    index: 0,
                    delta: ChatDelta { role: Some("assistant"), content: Some(String::new()) },
                    logprobs: None,
                    finish_reason: None,
                }],
                None,
            ));
        }
        match ev {
            Event::Token { token, text, logprob, top } => {
                if text.is_empty() && !self.want_logprobs {
                    return (out, false);
                }
                let lp = self.want_logprobs.then(|| self.token_lp(token, logprob, &top));
                match self.kind {
                    Kind::Completion => {
                        let logprobs = lp.map(|lp| {
                            let mut acc = CompletionLogprobs::default();
                            self.push_completion_lp(&mut acc, lp);
                            acc
                        });
                        self.text_len += text.len();
                        out.push(self.completion_chunk(
                            vec![CompletionChoice { text, index: 0, logprobs, finish_reason: None }],
                            None,
                        ));
                    }
                    Kind::Chat => {
                        let logprobs = lp.map(|lp| ChatLogprobs { content: vec![Self::chat_lp(lp)] });
                        out.push(self.chat_chunk(
                            vec![ChatChunkChoice {
                                index: 0,
                                delta: ChatDelta { role: None, content: Some(text) },
                                logprobs,
                                finish_reason: None,
                            }],
                            None,
                        ));
                    }
                }
                (out, false)
            }
            Event::Finished { reason, usage } => {
                match self.kind {
                    Kind::Completion => {
                        out.push(self.completion_chunk(
                            vec![CompletionChoice {
                                text: String::new(),
                                index: 0,
                                logprobs: None,
                                finish_reason: Some(reason.as_str()),
                            }],
                            None,
                        ));
                        if self.include_usage {
                            out.push(self.completion_chunk(Vec::new(), Some(usage)));
                        }
                    }
                    Kind::Chat => {
                        out.push(self.chat_chunk(
                            vec![ChatChunkChoice {
                                index: 0,
                                delta: ChatDelta::default(),
                                logprobs: None,
                                finish_reason: Some(reason.as_str()),
                            }],
                            None,
                        ));
                        if self.include_usage {
                            out.push(self.chat_chunk(Vec::new(), Some(usage)));
                        }
                    }
                }
                out.push("[DONE]".into());
                (out, true)
            }
            Event::Failed(e) => {
                tracing::warn!(request_id = %self.id, error = %e, "stream failed");
                out.push(json(&e.body()));
                out.push("[DONE]".into());
                (out, true)
            }
        }
    }
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|e| format!("{{\"error\":{{\"message\":\"serialization failed: {e}\"}}}}"))
}

/// Collects every event into one response.
async fn whole_response(mut out: Output, first: Event, mut rx: mpsc::UnboundedReceiver<Event>) -> Response {
    let mut text = String::new();
    let mut comp_lp = CompletionLogprobs::default();
    let mut chat_lp = ChatLogprobs::default();
    let mut next = Some(first);
    let (reason, usage): (FinishReason, Usage) = loop {
        let Some(ev) = next.take() else {
            return RouterError::Internal("generation ended without a final event".into()).into_response();
        };
        match ev {
            Event::Token { token, text: t, logprob, top } => {
                if out.want_logprobs {
                    let lp = out.token_lp(token, logprob, &top);
                    match out.kind {
                        Kind::Completion => out.push_completion_lp(&mut comp_lp, lp),
                        Kind::Chat => chat_lp.content.push(Output::chat_lp(lp)),
                    }
                }
                out.text_len += t.len();
                text.push_str(&t);
            }
            Event::Finished { reason, usage } => break (reason, usage),
            Event::Failed(e) => return e.into_response(),
        }
        next = rx.recv().await;
    };
    match out.kind {
        Kind::Completion => Json(CompletionResponse {
            id: out.id,
            object: "text_completion",
            created: out.created,
            model: out.model,
            choices: vec![CompletionChoice {
                text,
                index: 0,
                logprobs: out.want_logprobs.then_some(comp_lp),
                finish_reason: Some(reason.as_str()),
            }],
            usage: Some(usage),
        })
        .into_response(),
        Kind::Chat => Json(ChatCompletionResponse {
            id: out.id,
            object: "chat.completion",
            created: out.created,
            model: out.model,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage { role: "assistant", content: text },
                logprobs: out.want_logprobs.then_some(chat_lp),
                finish_reason: reason.as_str(),
            }],
            usage,
        })
        .into_response(),
    }
}

/// State of an SSE stream.
struct StreamState {
    out: Output,
    rx: mpsc::UnboundedReceiver<Event>,
    pending: VecDeque<String>,
    done: bool,
    deadline: Option<(tokio::time::Instant, u64)>,
}

/// Streams events as `data: {json}` chunks ending in `data: [DONE]`. Dropping the stream (the
/// client went away) drops the receiver, which cancels the request.
fn sse_response(
    mut out: Output,
    first: Event,
    rx: mpsc::UnboundedReceiver<Event>,
    deadline: Option<(tokio::time::Instant, u64)>,
) -> Response {
    let (chunks, done) = out.stream_chunks(first);
    let state = StreamState { out, rx, pending: chunks.into(), done, deadline };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(data) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), st));
            }
            if st.done {
                return None;
            }
            let next = match recv_by(&mut st.rx, st.deadline).await {
                Ok(next) => next,
                Err(e) => {
                    // Cancels the request now (the scheduler sees the closed channel).
                    st.rx.close();
                    st.pending.push_back(json(&e.body()));
                    st.pending.push_back("[DONE]".into());
                    st.done = true;
                    continue;
                }
            };
            match next {
                Some(ev) => {
                    let (chunks, done) = st.out.stream_chunks(ev);
                    st.pending.extend(chunks);
                    st.done = done;
                }
                None => {
                    let err = RouterError::Internal("generation ended without a final event".into());
                    st.pending.push_back(json(&err.body()));
                    st.pending.push_back("[DONE]".into());
                    st.done = true;
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// `GET /v1/models`: the served base model, then the reward models.
#[tracing::instrument(skip_all)]
async fn models(State(st): State<Arc<AppState>>) -> Response {
    let core = match st.core() {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let data = core
        .catalog
        .models
        .iter()
        .map(|m| ModelCard {
            id: m.reward_name.clone().unwrap_or_else(|| core.validation.served_model.clone()),
            object: "model",
            created: st.created,
            owned_by: "genarm",
            role: if m.reward_name.is_some() { "reward" } else { "base" },
            root: m.model_id.clone(),
            max_model_len: if m.reward_name.is_some() { m.max_positions } else { core.catalog.max_context },
        })
        .collect();
    Json(ModelList { object: "list", data }).into_response()
}

/// `GET /health`: 200 while the process serves.
async fn health() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `GET /ready`: 200 when the base and every reward model are connected and ready.
#[tracing::instrument(skip_all)]
async fn ready(State(st): State<Arc<AppState>>) -> Response {
    let core = match st.core() {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let down: Vec<String> = (0..core.health.num_models())
        .filter(|&m| !core.health.is_ready(m))
        .map(|m| core.health.display_name(m))
        .collect();
    if down.is_empty() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        RouterError::Unavailable {
            message: format!("not ready: {} not connected or not ready", down.join(", ")),
        }
        .into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let body = st.metrics.as_ref().map(PrometheusHandle::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn unknown_route(method: Method, uri: Uri) -> Response {
    RouterError::UnknownRoute { method: method.to_string(), path: uri.path().to_string() }.into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    RouterError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }.into_response()
}
