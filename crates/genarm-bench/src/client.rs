//! One streamed chat completion, timed on the client: the time to the first content chunk
//! (TTFT), the gaps between content chunks (inter-token latency), the whole request, and the
//! output tokens the router reports in its `usage` chunk.

use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sse::SseParser;

/// Where and how requests are sent.
#[derive(Debug, Clone)]
pub struct Target {
    /// The router's base URL, without a trailing slash.
    pub url: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
}

impl Target {
    /// A request builder with the API key applied.
    pub fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let rb = client.request(method, format!("{}{path}", self.url));
        match &self.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }
}

/// What one request gave.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The request's index within its phase (prompt `index % prompts`, seed `seed + index`).
    pub index: usize,
    /// The error, when the request failed (HTTP error, error event, cut stream, timeout).
    pub error: Option<String>,
    /// Seconds from sending to the first chunk with non-empty content.
    pub ttft_s: Option<f64>,
    /// Seconds from sending to the end of the stream.
    pub e2e_s: f64,
    /// Output tokens: `usage.completion_tokens`, or the content chunks when the router sent no
    /// usage (see `usage_reported`).
    pub output_tokens: u64,
    /// Whether the router reported `usage.completion_tokens`.
    pub usage_reported: bool,
    /// Chunks with non-empty content.
    pub content_chunks: usize,
    /// `finish_reason` of the last choice chunk.
    pub finish_reason: Option<String>,
    /// Seconds between consecutive content chunks (not written to bench.json).
    #[serde(skip)]
    pub itl_s: Vec<f64>,
}

impl RequestRecord {
    /// True when the request completed without error.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// The message of an OpenAI error body, or the body itself (cut to 300 characters).
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(300).collect())
}

/// Per-stream state while chunks arrive.
#[derive(Default)]
struct StreamState {
    done: bool,
    first: Option<Instant>,
    last: Option<Instant>,
    chunks: usize,
    itl: Vec<f64>,
    usage_tokens: Option<u64>,
    finish_reason: Option<String>,
}

impl StreamState {
    /// Handles one SSE event's data that arrived at `now`.
    fn event(&mut self, data: &str, now: Instant) -> Result<(), String> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if self.done {
            return Err("data after [DONE]".into());
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            format!("a stream chunk is not JSON ({e}): {}", data.chars().take(200).collect::<String>())
        })?;
        if v.get("error").is_some() {
            return Err(format!("error event in the stream: {}", error_message(data)));
        }
        if let Some(tokens) = v.get("usage").and_then(|u| u.get("completion_tokens")).and_then(Value::as_u64)
        {
            self.usage_tokens = Some(tokens);
        }
        if let Some(choice) = v.get("choices").and_then(|c| c.get(0)) {
            let content =
                choice.pointer("/delta/content").or_else(|| choice.get("text")).and_then(Value::as_str);
            if content.is_some_and(|c| !c.is_empty()) {
                if let Some(last) = self.last {
                    self.itl.push(now.duration_since(last).as_secs_f64());
                } else {
                    self.first = Some(now);
                }
                self.last = Some(now);
                self.chunks += 1;
            }
            if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(r.to_string());
            }
        }
        Ok(())
    }
}

/// Sends `body` (a chat completion with `"stream": true`) and reads the stream to its end.
pub async fn stream_chat(
    client: &reqwest::Client,
    target: &Target,
    index: usize,
    body: &Value,
) -> RequestRecord {
    let start = Instant::now();
    let mut rec = RequestRecord { index, ..Default::default() };
    let mut state = StreamState::default();
    let result = read_stream(client, target, body, &mut state).await;
    let end = Instant::now();
    rec.e2e_s = end.duration_since(start).as_secs_f64();
    rec.ttft_s = state.first.map(|t| t.duration_since(start).as_secs_f64());
    rec.content_chunks = state.chunks;
    rec.usage_reported = state.usage_tokens.is_some();
    rec.output_tokens = state.usage_tokens.unwrap_or(state.chunks as u64);
    rec.finish_reason = state.finish_reason.take();
    rec.itl_s = std::mem::take(&mut state.itl);
    rec.error = result.err();
    rec
}

async fn read_stream(
    client: &reqwest::Client,
    target: &Target,
    body: &Value,
    state: &mut StreamState,
) -> Result<(), String> {
    let resp = target
        .request(client, reqwest::Method::POST, "/v1/chat/completions")
        .json(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {}", describe(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(format!("HTTP {}: {}", status.as_u16(), error_message(&text)));
    }
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| {
            format!("reading the stream after {} content chunks failed: {}", state.chunks, describe(&e))
        })?;
        let now = Instant::now();
        parser.push(&piece, &mut events);
        for data in events.drain(..) {
            state.event(&data, now)?;
        }
    }
    if !state.done {
        return Err(format!(
            "the stream ended without `data: [DONE]` after {} content chunks{}",
            state.chunks,
            if parser.has_partial() { " (in the middle of an event)" } else { "" }
        ));
    }
    Ok(())
}

/// A reqwest error with its source chain (reqwest's Display hides the cause).
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if e.is_timeout() {
        s.push_str(" (timed out: raise --request-timeout-secs)");
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn chunks_give_ttft_gaps_usage_and_errors() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = StreamState::default();
        // The role chunk (empty content) does not count as the first token.
        s.event(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#, at(5)).unwrap();
        s.event(r#"{"choices":[{"index":0,"delta":{"content":"He"}}]}"#, at(20)).unwrap();
        s.event(r#"{"choices":[{"index":0,"delta":{"content":"llo"}}]}"#, at(50)).unwrap();
        s.event(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#, at(60)).unwrap();
        s.event(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
            at(61),
        )
        .unwrap();
        s.event("[DONE]", at(62)).unwrap();
        assert_eq!(s.first, Some(at(20)));
        assert_eq!(s.chunks, 2);
        assert_eq!(s.itl.len(), 1);
        assert!((s.itl[0] - 0.030).abs() < 1e-9);
        assert_eq!(s.usage_tokens, Some(2));
        assert_eq!(s.finish_reason.as_deref(), Some("length"));
        assert!(s.done);
        assert!(s.event("{}", at(63)).unwrap_err().contains("after [DONE]"));

        let mut s = StreamState::default();
        let e = s.event(r#"{"error":{"message":"worker base failed","type":"x"}}"#, at(1)).unwrap_err();
        assert!(e.contains("worker base failed"), "{e}");
        assert!(s.event("not json", at(2)).unwrap_err().contains("not JSON"));
        assert_eq!(error_message("plain text"), "plain text");
    }
}
