//! The HTTP routes (axum): `/v1/completions`, `/v1/chat/completions` (whole responses or SSE
//! streams), `/v1/models`, `/health`, `/ready`, `/metrics`, and the OpenAI errors for unknown
//! routes and methods. A generation request is validated, charged to its key, submitted to the
//! scheduler, and answered by [`super::response`] or [`super::sse`].

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use super::auth::KeyIdentity;
use super::error::ApiError;
use super::json::OpenAiJson;
use super::openai::{unix_now, ChatCompletionRequest, CompletionRequest, ModelCard, ModelList};
use super::response::{whole_response, Output};
use super::sse::{recv_by, sse_response};
use super::state::{count_in_flight, AppState, Core};
use super::validate::{prepare_chat, prepare_completion, Prepared};
use crate::scheduler::Event;

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
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), super::auth::require_key))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), count_in_flight))
        .with_state(state)
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
    body: Result<OpenAiJson<CompletionRequest>, ApiError>,
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
    body: Result<OpenAiJson<ChatCompletionRequest>, ApiError>,
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
pub(super) enum Kind {
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
    prepare: impl FnOnce(String, &Core) -> Result<Prepared, ApiError>,
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
        return ApiError::Unavailable {
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
            return ApiError::from(e).into_response();
        }
    };
    let first = match recv_by(&mut rx, deadline).await {
        Err(e) => return e.into_response(),
        Ok(Some(Event::Failed(e))) => return ApiError::from(e).into_response(),
        Ok(first) => first,
    };
    let first = match first {
        Some(ev) => ev,
        None => return ApiError::Internal("the scheduler dropped the request".into()).into_response(),
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
                .unwrap_or_else(|_| ApiError::Timeout { secs }.into_response()),
        }
    }
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
        ApiError::Unavailable {
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
    ApiError::UnknownRoute { method: method.to_string(), path: uri.path().to_string() }.into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }.into_response()
}
