//! [`OpenAiJson`]: the JSON body extractor whose every rejection is an OpenAI error (413 for an
//! oversized body; 400 naming the field for invalid UTF-8, malformed JSON or wrong types).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::state::AppState;

/// A JSON body whose every rejection is an OpenAI error: an oversized body → 413, invalid UTF-8
/// or malformed JSON or wrong field types → 400 with serde's description (line and column). The
/// content type is not checked (clients such as `curl -d` send form types).
pub struct OpenAiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for OpenAiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit: state.max_body_bytes }
            } else {
                ApiError::invalid_body(format!("cannot read the request body: {}", rej.body_text()))
            }
        })?;
        parse_json(&bytes).map(OpenAiJson)
    }
}

/// Parses a request body (see [`OpenAiJson`]).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::invalid_body(format!(
            "the request body is not valid UTF-8 (invalid byte at offset {}); send JSON encoded as UTF-8",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid_body("the request body is empty; send a JSON object"));
    }
    serde_json::from_str(text).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::invalid_body(format!("the request body is not valid JSON: {e}"))
            }
            Category::Data => {
                let msg = e.to_string();
                if let Some(field) = culprit_field::<T>(text) {
                    return ApiError::InvalidRequest {
                        message: format!("invalid `{field}`: {msg}"),
                        param: Some(field),
                    };
                }
                // A required top-level field is missing.
                let param = msg
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split('`').next())
                    .map(str::to_string);
                ApiError::InvalidRequest { message: format!("invalid request: {msg}"), param }
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
