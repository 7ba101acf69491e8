//! The HTTP server's shared state: [`AppState`] (set up before the workers are connected) and
//! [`Core`] (what the handlers need once they are), and the in-flight count the drain waits on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::{Request, State};
use axum::response::Response;
use metrics_exporter_prometheus::PrometheusHandle;

use super::auth::Auth;
use super::error::ApiError;
use super::openai::unix_now;
use super::validate::ValidationConfig;
use crate::scheduler::SchedulerHandle;
use crate::workers::{Catalog, WorkerHealth};

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

    pub(super) fn core(&self) -> Result<&Core, ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::Draining { retry_after_secs: DRAIN_RETRY_AFTER_SECS });
        }
        self.core.get().ok_or_else(|| ApiError::Unavailable {
            message: "the router is still connecting to its workers (they may be loading their models); \
                      retry when GET /ready answers 200"
                .into(),
        })
    }
}

/// The `Retry-After` (seconds) of the 503 answered to new requests while the router drains.
pub const DRAIN_RETRY_AFTER_SECS: u64 = 1;

/// Counts one request in [`AppState::in_flight`] until dropped.
pub(super) struct InFlight(Arc<AtomicUsize>);

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
pub(super) async fn count_in_flight(
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
