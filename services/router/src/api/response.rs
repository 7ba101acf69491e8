//! Whole (non-streamed) responses: [`Output`] turns scheduler events into the OpenAI JSON of a
//! completion or a chat completion, log-probs included.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::Json;
use genarm_text::ModelText;
use serde::Serialize;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse, ChatLogprobs,
    ChatTokenLogprob, CompletionChoice, CompletionLogprobs, CompletionResponse, TopLogprob, Usage,
};
use super::routes::Kind;
use crate::scheduler::{Event, FinishReason, TokenUsage};

/// Turns events into OpenAI JSON.
pub(super) struct Output {
    pub(super) kind: Kind,
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) text: Arc<ModelText>,
    pub(super) want_logprobs: bool,
    pub(super) include_usage: bool,
    /// Chat streams: the `role` chunk went out.
    pub(super) role_sent: bool,
    /// Bytes of text emitted so far (completions' `text_offset`).
    pub(super) text_len: usize,
}

/// One token's log-prob data as text.
pub(super) struct TokenLp {
    pub(super) token: String,
    pub(super) logprob: f32,
    pub(super) top: Vec<(String, f32)>,
}

impl Output {
    pub(super) fn token_text(&self, id: u32) -> String {
        self.text.token_text(id).unwrap_or_default()
    }

    pub(super) fn token_lp(&self, token: u32, logprob: Option<f32>, top: &[(u32, f32)]) -> TokenLp {
        TokenLp {
            token: self.token_text(token),
            logprob: logprob.unwrap_or(0.0),
            top: top.iter().map(|&(id, lp)| (self.token_text(id), lp)).collect(),
        }
    }

    pub(super) fn chat_lp(lp: TokenLp) -> ChatTokenLogprob {
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

    pub(super) fn push_completion_lp(&self, acc: &mut CompletionLogprobs, lp: TokenLp) {
        acc.text_offset.push(self.text_len);
        acc.tokens.push(lp.token);
        acc.token_logprobs.push(lp.logprob);
        let mut map = BTreeMap::new();
        for (t, l) in lp.top {
            map.entry(t).or_insert(l);
        }
        acc.top_logprobs.push(map);
    }

    pub(super) fn completion_chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> String {
        json(&CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }

    pub(super) fn chat_chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> String {
        json(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }
}

pub(super) fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|e| format!("{{\"error\":{{\"message\":\"serialization failed: {e}\"}}}}"))
}

/// Collects every event into one response.
pub(super) async fn whole_response(
    mut out: Output,
    first: Event,
    mut rx: mpsc::UnboundedReceiver<Event>,
) -> Response {
    let mut text = String::new();
    let mut comp_lp = CompletionLogprobs::default();
    let mut chat_lp = ChatLogprobs::default();
    let mut next = Some(first);
    let (reason, usage): (FinishReason, TokenUsage) = loop {
        let Some(ev) = next.take() else {
            return ApiError::Internal("generation ended without a final event".into()).into_response();
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
            Event::Failed(e) => return ApiError::from(e).into_response(),
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
            usage: Some(usage.into()),
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
            usage: usage.into(),
        })
        .into_response(),
    }
}
