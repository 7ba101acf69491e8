//! `ApiError`: every failure a client can see, mapped once to an HTTP status and the OpenAI
//! error JSON `{"error": {"message", "type", "param", "code"}}`. The scheduler's errors
//! ([`SchedulerError`]) become `ApiError`s here and nowhere else.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::scheduler::SchedulerError;

/// An error answered to a client, as an HTTP response or as the last SSE event of a stream.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or asks for something impossible (400).
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong and how to fix it.
        message: String,
        /// The request field at fault, if one is.
        param: Option<String>,
    },
    /// `model` names no served model (404).
    #[error("the model `{requested}` does not exist; this server serves `{served}` (see GET /v1/models)")]
    ModelNotFound {
        /// The name the client sent.
        requested: String,
        /// The served base model's name.
        served: String,
    },
    /// The request body is larger than the limit (413).
    #[error("request body too large: the limit is {limit} bytes (--max-body-bytes); send a smaller request")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The waiting queue is full (429).
    #[error("server overloaded: {waiting} requests are already waiting (--max-waiting); retry later")]
    Overloaded {
        /// The queue's capacity.
        waiting: usize,
    },
    /// A worker this request needs is not connected or not ready, or the router is shutting
    /// down (503).
    #[error("{message}")]
    Unavailable {
        /// What is unavailable.
        message: String,
    },
    /// The router received SIGTERM/SIGINT and is draining: in-flight requests finish, new ones
    /// are refused (503 with `Retry-After`) so that the client retries on another replica.
    #[error("the router is draining (shutting down): it admits no new requests while in-flight ones finish; retry on another replica after {retry_after_secs} s")]
    Draining {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// A worker failed while serving this request (503), naming the worker.
    #[error("{worker} failed: {message}")]
    WorkerFailed {
        /// The worker's display name (`base` or the reward name, with its URL).
        worker: String,
        /// What happened.
        message: String,
    },
    /// No route for this path (404).
    #[error("no route for {method} {path}; the API serves POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /ready, GET /metrics")]
    UnknownRoute {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// The path exists but not with this method (405).
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// A bug or an impossible state on the router's side (500).
    #[error("internal error: {0}")]
    Internal(String),
    /// No `Authorization: Bearer <key>` header, or a key the router does not know (401). The
    /// message never repeats the key that was sent.
    #[error("{message}")]
    Unauthorized {
        /// What is wrong (missing header, unknown key) and how to fix it.
        message: String,
    },
    /// A per-key limit (concurrency, token rate) is exhausted (429 with `Retry-After`).
    #[error("{message}")]
    RateLimited {
        /// The machine-readable code: `concurrency_limit_exceeded` or `token_rate_limit_exceeded`.
        code: &'static str,
        /// Which limit, the key's label, and how to raise it.
        message: String,
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// The whole request took longer than `--request-timeout-secs` (504); its sequences were
    /// cancelled and released on every worker.
    #[error("the request did not finish within {secs} s (--request-timeout-secs); it was cancelled; send a smaller max_tokens, or ask the operator to raise the limit")]
    Timeout {
        /// The limit in seconds.
        secs: u64,
    },
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        match e {
            SchedulerError::Overloaded { waiting } => ApiError::Overloaded { waiting },
            SchedulerError::ShuttingDown | SchedulerError::WorkerNotReady { .. } => {
                ApiError::Unavailable { message: e.to_string() }
            }
            SchedulerError::WorkerFailed { worker, message } => ApiError::WorkerFailed { worker, message },
            SchedulerError::InvalidSampling(message) => ApiError::invalid_body(message),
            SchedulerError::Internal(message) => ApiError::Internal(message),
        }
    }
}

/// The body of an OpenAI error response.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The `error` object of an OpenAI error response.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorDetail {
    /// Human-readable explanation naming the problem and the fix.
    pub message: String,
    /// Error class (`invalid_request_error`, `server_error`, ...).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, or null.
    pub param: Option<String>,
    /// A machine-readable code, or null.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidRequest { message: message.into(), param: Some(param.into()) }
    }

    /// A 400 not tied to one field.
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::InvalidRequest { message: message.into(), param: None }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::ModelNotFound { .. } => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } | Self::Draining { .. } | Self::WorkerFailed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UnknownRoute { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The OpenAI error JSON for this error.
    pub fn body(&self) -> ErrorBody {
        let (kind, code, param) = match self {
            Self::InvalidRequest { param, .. } => ("invalid_request_error", None, param.clone()),
            Self::ModelNotFound { .. } => {
                ("invalid_request_error", Some("model_not_found"), Some("model".to_string()))
            }
            Self::PayloadTooLarge { .. } => ("invalid_request_error", Some("request_too_large"), None),
            Self::Overloaded { .. } => ("rate_limit_error", Some("overloaded"), None),
            Self::Unavailable { .. } => ("service_unavailable_error", Some("not_ready"), None),
            Self::Draining { .. } => ("service_unavailable_error", Some("draining"), None),
            Self::WorkerFailed { .. } => ("service_unavailable_error", Some("worker_failed"), None),
            Self::UnknownRoute { .. } => ("invalid_request_error", Some("unknown_route"), None),
            Self::MethodNotAllowed { .. } => ("invalid_request_error", Some("method_not_allowed"), None),
            Self::Internal(_) => ("server_error", Some("internal_error"), None),
            Self::Unauthorized { .. } => ("invalid_request_error", Some("invalid_api_key"), None),
            Self::RateLimited { code, .. } => ("rate_limit_error", Some(*code), None),
            Self::Timeout { .. } => ("timeout_error", Some("request_timeout"), None),
        };
        ErrorBody { error: ErrorDetail { message: self.to_string(), kind, param, code } }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::RateLimited { retry_after_secs, .. } = &self {
            tracing::debug!(status = status.as_u16(), error = %self, "rate limited");
            let retry = retry_after_secs.to_string();
            return (status, [(axum::http::header::RETRY_AFTER, retry)], axum::Json(self.body()))
                .into_response();
        }
        if let Self::Unauthorized { .. } = &self {
            // The key is never logged; the header of a 401 tells clients the scheme.
            tracing::debug!(status = status.as_u16(), "unauthorized");
            return (status, [(axum::http::header::WWW_AUTHENTICATE, "Bearer")], axum::Json(self.body()))
                .into_response();
        }
        if let Self::Draining { retry_after_secs } = &self {
            tracing::debug!(status = status.as_u16(), "draining: request refused");
            let retry = retry_after_secs.to_string();
            return (status, [(axum::http::header::RETRY_AFTER, retry)], axum::Json(self.body()))
                .into_response();
        }
        if matches!(self, Self::Unavailable { .. }) {
            // Expected while workers load or restart (and polled by readiness probes).
            tracing::debug!(status = status.as_u16(), error = %self, "not available");
        } else if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request refused");
        }
        (status, axum::Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(e: &ApiError) -> serde_json::Value {
        serde_json::to_value(e.body()).unwrap()
    }

    #[test]
    fn shapes_follow_openai() {
        let e = ApiError::invalid("temperature", "`temperature` must be >= 0, got -1");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            json(&e),
            serde_json::json!({"error": {"message": "`temperature` must be >= 0, got -1",
                "type": "invalid_request_error", "param": "temperature", "code": null}})
        );
        let e = ApiError::ModelNotFound { requested: "gpt-4".into(), served: "tiny".into() };
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let v = json(&e);
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-4"));
        assert!(v["error"]["message"].as_str().unwrap().contains("tiny"));
    }

    #[test]
    fn statuses() {
        assert_eq!(ApiError::PayloadTooLarge { limit: 1 }.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(ApiError::Overloaded { waiting: 1 }.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            ApiError::WorkerFailed { worker: "rm helpful".into(), message: "gone".into() }.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(ApiError::Unavailable { message: "x".into() }.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ApiError::Internal("x".into()).status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn auth_limits_and_timeouts_follow_openai() {
        let e = ApiError::Unauthorized { message: "no key".into() };
        assert_eq!(json(&e)["error"]["type"], "invalid_request_error");
        assert_eq!(json(&e)["error"]["code"], "invalid_api_key");
        assert_eq!(e.into_response().status(), StatusCode::UNAUTHORIZED);
        let e = ApiError::RateLimited {
            code: "concurrency_limit_exceeded",
            message: "too many".into(),
            retry_after_secs: 3,
        };
        assert_eq!(json(&e)["error"]["type"], "rate_limit_error");
        assert_eq!(json(&e)["error"]["code"], "concurrency_limit_exceeded");
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "3");
        let e = ApiError::Timeout { secs: 7 };
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(json(&e)["error"]["message"].as_str().unwrap().contains("--request-timeout-secs"));
    }

    #[test]
    fn scheduler_errors_keep_their_message_and_get_their_status() {
        let cases = [
            (SchedulerError::Overloaded { waiting: 3 }, StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            (SchedulerError::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            (
                SchedulerError::WorkerNotReady { worker: "w".into() },
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
            ),
            (
                SchedulerError::WorkerFailed { worker: "w".into(), message: "gone".into() },
                StatusCode::SERVICE_UNAVAILABLE,
                "worker_failed",
            ),
            (SchedulerError::Internal("bug".into()), StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        ];
        for (s, status, code) in cases {
            let text = s.to_string();
            let e = ApiError::from(s);
            assert_eq!((e.status(), e.to_string()), (status, text));
            assert_eq!(json(&e)["error"]["code"], code);
        }
        let e = ApiError::from(SchedulerError::InvalidSampling("bad top_p".into()));
        assert_eq!((e.status(), e.to_string()), (StatusCode::BAD_REQUEST, "bad top_p".to_string()));
    }

    #[test]
    fn draining_is_a_503_with_retry_after() {
        let e = ApiError::Draining { retry_after_secs: 2 };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json(&e)["error"]["code"], "draining");
        assert!(json(&e)["error"]["message"].as_str().unwrap().contains("draining"));
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "2");
    }
}
