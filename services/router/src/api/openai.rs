//! OpenAI-compatible request and response types: `/v1/completions`, `/v1/chat/completions`
//! (whole responses and streamed chunks), `/v1/models`, plus the `guidance` extension. Unknown
//! request fields are ignored, as OpenAI clients send extras.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `prompt` of `/v1/completions`: text or token ids (of the base model). Arrays of prompts are
/// parsed so that they can be refused with a clear message.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged, expecting = "`prompt` to be a string or a list of token ids")]
pub enum Prompt {
    /// One prompt as text.
    Text(String),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as text (refused: one prompt per request).
    TextBatch(Vec<String>),
    /// Several prompts as token ids (refused: one prompt per request).
    TokensBatch(Vec<Vec<u32>>),
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged, expecting = "`stop` to be a string or a list of strings")]
pub enum Stop {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `seed`: any integer from i64's minimum to u64's maximum (negative ones are taken modulo
/// 2^64).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(untagged, expecting = "`seed` to be an integer")]
pub enum Seed {
    /// 0 ..= u64::MAX.
    Unsigned(u64),
    /// Negative values.
    Signed(i64),
}

impl Seed {
    /// The sampler's 64-bit seed.
    pub fn as_u64(self) -> u64 {
        match self {
            Seed::Unsigned(x) => x,
            Seed::Signed(x) => x as u64,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and no choices) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The `guidance` extension: `{"rewards": {"helpful": 1.0}, "beta": 1.0}` → α_i = w_i / β.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Guidance {
    /// Reward-model weights by reward name.
    #[serde(default)]
    pub rewards: BTreeMap<String, f64>,
    /// Guidance strength divisor β (> 0). Default 1.
    pub beta: Option<f64>,
}

/// Fields shared by both generation endpoints.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct SamplingFields {
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Softmax temperature over the fused distribution (0 = greedy). Default 1.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass in (0, 1].
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens (extension; vLLM's `-1` means off).
    pub top_k: Option<i64>,
    /// Seed of this request's sampler; random when absent.
    pub seed: Option<Seed>,
    /// Stop strings (not included in the output).
    pub stop: Option<Stop>,
    /// Number of choices; only 1 is supported.
    pub n: Option<u32>,
    /// Stream chunks as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// GenARM guidance (extension).
    pub guidance: Option<Guidance>,
    /// Refused when non-zero (not supported).
    pub presence_penalty: Option<f32>,
    /// Refused when non-zero (not supported).
    pub frequency_penalty: Option<f32>,
    /// Refused when non-empty (not supported).
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /v1/completions` request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CompletionRequest {
    /// The served model's name.
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// Sampling and streaming fields.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// How many top log-probs to return per token (0 = only the sampled token's).
    pub logprobs: Option<u32>,
    /// Echo the prompt (only `false` is supported).
    #[serde(default)]
    pub echo: bool,
    /// Suffix after the completion (not supported).
    pub suffix: Option<String>,
    /// Server-side best-of (only 1 is supported).
    pub best_of: Option<u32>,
}

/// `POST /v1/chat/completions` request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ChatCompletionRequest {
    /// The served model's name.
    pub model: String,
    /// The conversation (content as text or text parts).
    pub messages: Vec<genarm_text::ChatMessage>,
    /// Sampling and streaming fields.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Newer name of `max_tokens` (takes precedence).
    pub max_completion_tokens: Option<u32>,
    /// Return log-probs of the sampled tokens.
    #[serde(default)]
    pub logprobs: bool,
    /// How many top log-probs per token (needs `logprobs: true`).
    pub top_logprobs: Option<u32>,
    /// Tool definitions (refused when non-empty: tool calling is not supported).
    pub tools: Option<serde_json::Value>,
    /// Tool choice (refused unless `"none"`).
    pub tool_choice: Option<serde_json::Value>,
    /// The deprecated function definitions (refused when non-empty).
    pub functions: Option<serde_json::Value>,
    /// The deprecated function choice (refused unless `"none"`).
    pub function_call: Option<serde_json::Value>,
    /// Output format (only `{"type": "text"}` is supported).
    pub response_format: Option<serde_json::Value>,
}

/// `usage` of a response.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the (base model's) prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Their sum.
    pub total_tokens: u32,
}

impl From<crate::scheduler::TokenUsage> for Usage {
    fn from(u: crate::scheduler::TokenUsage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// Log-probs of a completion choice (legacy completions shape).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CompletionLogprobs {
    /// Each sampled token's text.
    pub tokens: Vec<String>,
    /// Each sampled token's log-prob under the fused distribution.
    pub token_logprobs: Vec<f32>,
    /// Per token: the most likely tokens and their log-probs.
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    /// Character offset of each token in the generated text.
    pub text_offset: Vec<usize>,
}

/// One choice of a completion response or chunk.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CompletionChoice {
    /// The text (whole, or this chunk's piece).
    pub text: String,
    /// Always 0 (one choice).
    pub index: u32,
    /// Log-probs when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`; null in chunks before the last.
    pub finish_reason: Option<&'static str>,
}

/// `/v1/completions` response, and each streamed chunk (same object).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CompletionResponse {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// The choices (empty in a usage-only chunk).
    pub choices: Vec<CompletionChoice>,
    /// Token counts (whole responses, and the last chunk when asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One top alternative in chat log-probs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-prob under the fused distribution.
    pub logprob: f32,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// Log-prob entry of one sampled token (chat shape).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-prob under the fused distribution.
    pub logprob: f32,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position.
    pub top_logprobs: Vec<TopLogprob>,
}

/// `logprobs` of a chat choice.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChatLogprobs {
    /// One entry per sampled token.
    pub content: Vec<ChatTokenLogprob>,
}

/// The assistant's message in a chat response.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: &'static str,
    /// The generated text.
    pub content: String,
}

/// One choice of a chat response.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatChoice {
    /// Always 0.
    pub index: u32,
    /// The reply.
    pub message: AssistantMessage,
    /// Log-probs when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
}

/// `/v1/chat/completions` response.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatCompletionResponse {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// The choices.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// The `delta` of a streamed chat chunk.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChatDelta {
    /// `assistant` in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a streamed chat chunk.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatChunkChoice {
    /// Always 0.
    pub index: u32,
    /// The new piece.
    pub delta: ChatDelta,
    /// Log-probs of the tokens in this chunk when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// Set in the last chunk.
    pub finish_reason: Option<&'static str>,
}

/// A streamed chat chunk.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatCompletionChunk {
    /// Same id in every chunk of a response.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// The choices (empty in the usage-only chunk).
    pub choices: Vec<ChatChunkChoice>,
    /// Token counts, in the last chunk when `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One entry of `/v1/models`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelCard {
    /// The name to use: the served base model's name, or a reward name.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds (the router's start).
    pub created: u64,
    /// `genarm`.
    pub owned_by: &'static str,
    /// Extension: `base` or `reward`.
    pub role: &'static str,
    /// Extension: the underlying model id the worker reports.
    pub root: String,
    /// Extension: the longest context in tokens (for the base: the effective context).
    pub max_model_len: u32,
}

/// `/v1/models` response.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// The base model first, then the reward models by name.
    pub data: Vec<ModelCard>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_request_accepts_openai_shapes_and_ignores_extras() {
        let r: CompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "prompt": "hi", "max_tokens": 5, "temperature": 0, "stop": "\n",
            "user": "u", "extra_thing": {"a": 1}, "guidance": {"rewards": {"helpful": 1.0}, "beta": 2.0},
            "stream": true, "stream_options": {"include_usage": true}, "logprobs": 3
        }))
        .unwrap();
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        assert_eq!(r.sampling.max_tokens, Some(5));
        assert_eq!(r.sampling.temperature, Some(0.0));
        assert_eq!(r.sampling.stop, Some(Stop::One("\n".into())));
        assert_eq!(r.sampling.guidance.as_ref().unwrap().rewards["helpful"], 1.0);
        assert!(r.sampling.stream && r.sampling.stream_options.unwrap().include_usage);
        assert_eq!(r.logprobs, Some(3));
    }

    #[test]
    fn seeds_take_any_64_bit_integer() {
        let f = |v: serde_json::Value| serde_json::from_value::<Seed>(v).map(Seed::as_u64);
        assert_eq!(f(serde_json::json!(7)).unwrap(), 7);
        assert_eq!(f(serde_json::json!(u64::MAX)).unwrap(), u64::MAX);
        assert_eq!(f(serde_json::json!(-1)).unwrap(), u64::MAX);
        assert!(f(serde_json::json!(1.5)).unwrap_err().to_string().contains("`seed`"));
        // Through the flattened fields too.
        let r: CompletionRequest =
            serde_json::from_str(r#"{"model": "m", "prompt": "x", "seed": 18446744073709551615}"#).unwrap();
        assert_eq!(r.sampling.seed.unwrap().as_u64(), u64::MAX);
    }

    #[test]
    fn wrong_prompt_types_say_what_is_expected() {
        let e = serde_json::from_str::<CompletionRequest>(r#"{"model": "m", "prompt": 5}"#).unwrap_err();
        assert!(e.to_string().contains("`prompt` to be a string or a list of token ids"), "{e}");
    }

    #[test]
    fn prompt_variants() {
        let p: Prompt = serde_json::from_str("[1, 2, 3]").unwrap();
        assert_eq!(p, Prompt::Tokens(vec![1, 2, 3]));
        let p: Prompt = serde_json::from_str(r#"["a", "b"]"#).unwrap();
        assert_eq!(p, Prompt::TextBatch(vec!["a".into(), "b".into()]));
        let p: Prompt = serde_json::from_str("[[1], [2]]").unwrap();
        assert_eq!(p, Prompt::TokensBatch(vec![vec![1], vec![2]]));
    }

    #[test]
    fn chat_request_with_parts() {
        let r: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "m",
            "messages": [{"role": "system", "content": "be nice"},
                         {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                         {"role": "assistant", "content": null}],
            "logprobs": true, "top_logprobs": 2, "max_completion_tokens": 7
        }))
        .unwrap();
        assert_eq!(r.messages.len(), 3);
        assert!(r.logprobs);
        assert_eq!(r.max_completion_tokens, Some(7));
    }

    #[test]
    fn chunks_serialize_like_openai() {
        let c = ChatCompletionChunk {
            id: "chatcmpl-1".into(),
            object: "chat.completion.chunk",
            created: 1,
            model: "m".into(),
            choices: vec![ChatChunkChoice {
                index: 0,
                delta: ChatDelta { role: Some("assistant"), content: Some(String::new()) },
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["choices"][0]["delta"], serde_json::json!({"role": "assistant", "content": ""}));
        assert!(v["choices"][0]["finish_reason"].is_null());
        assert!(v.get("usage").is_none());
    }
}
