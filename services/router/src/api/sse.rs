//! Streamed responses: scheduler events as SSE `data: {json}` chunks ending in `data: [DONE]`; an
//! error after the first token ends the stream with an error event.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::openai::{ChatChunkChoice, ChatDelta, ChatLogprobs, CompletionChoice, CompletionLogprobs};
use super::response::{json, Output};
use super::routes::Kind;
use crate::scheduler::Event;

impl Output {
    /// The SSE data lines for one event (the last event ends with `[DONE]`).
    pub(super) fn stream_chunks(&mut self, ev: Event) -> (Vec<String>, bool) {
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
                            out.push(self.completion_chunk(Vec::new(), Some(usage.into())));
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
                            out.push(self.chat_chunk(Vec::new(), Some(usage.into())));
                        }
                    }
                }
                out.push("[DONE]".into());
                (out, true)
            }
            Event::Failed(e) => {
                tracing::warn!(request_id = %self.id, error = %e, "stream failed");
                out.push(json(&ApiError::from(e).body()));
                out.push("[DONE]".into());
                (out, true)
            }
        }
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
pub(super) fn sse_response(
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
                    let err = ApiError::Internal("generation ended without a final event".into());
                    st.pending.push_back(json(&err.body()));
                    st.pending.push_back("[DONE]".into());
                    st.done = true;
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// The next event, or [`ApiError::Timeout`] once `deadline` (instant, limit in seconds)
/// passes; the caller then drops the receiver, which cancels the request and releases its KV.
pub(super) async fn recv_by(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    deadline: Option<(tokio::time::Instant, u64)>,
) -> Result<Option<Event>, ApiError> {
    match deadline {
        None => Ok(rx.recv().await),
        Some((at, secs)) => tokio::time::timeout_at(at, rx.recv()).await.map_err(|_| {
            tracing::warn!(limit_secs = secs, "request timed out (--request-timeout-secs): cancelling it");
            ApiError::Timeout { secs }
        }),
    }
}
