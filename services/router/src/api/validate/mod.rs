//! Request validation (docs/architecture.md §4) and preparation, split by concern: [`model`],
//! [`guidance`], [`sampling`] and [`prompt`]. It checks every field, resolves guidance into per-ARM
//! α, renders and tokenizes each needed model's prompt (its own chat template and BOS rule),
//! checks the context, and builds the scheduler's [`GenRequest`]. Every error names the problem
//! and the fix.

mod guidance;
mod model;
pub mod prompt;
mod sampling;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use genarm_fusion::SamplingParams;
use genarm_text::{ChatMessage, TemplateSandbox};

pub use guidance::resolve_guidance;
pub use model::check_model;
use prompt::{
    check_prompt_limit, check_prompts_nonempty, check_roles, check_unsupported_chat_fields, fit_context,
    render_chat, text_error,
};
use sampling::check_sampling;

use crate::api::error::ApiError;
use crate::api::openai::{ChatCompletionRequest, CompletionRequest, Prompt};
use crate::scheduler::{ArmRequest, GenRequest, RequestText};
use crate::workers::{Catalog, ModelIndex};

/// Most `top_logprobs` / `logprobs` alternatives per token.
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// `max_tokens` of `/v1/completions` when the request gives none (OpenAI's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: u32 = 16;

/// Router-wide settings validation needs.
#[derive(Debug, Clone)]
pub struct ValidationConfig {
    /// The name clients must put in `model`.
    pub served_model: String,
    /// `(model index, α)` applied when a request has no `guidance` (α ≠ 0 only).
    pub default_guidance: Vec<(ModelIndex, f32)>,
    /// Most stop strings per request.
    pub max_stop_sequences: usize,
    /// Longest stop string in bytes (`--max-stop-length`).
    pub max_stop_length: usize,
    /// Longest prompt in tokens for any model (`--max-prompt-tokens`; `None`: the context).
    pub max_prompt_tokens: Option<u32>,
    /// Largest `max_tokens` (`--max-tokens-limit`; `None`: the context).
    pub max_tokens_limit: Option<u32>,
    /// Where chat templates render (`--chat-template-memory-mib`): a memory-limited child
    /// process, or `None` for this process.
    pub chat_template_sandbox: Option<Arc<TemplateSandbox>>,
}

impl ValidationConfig {
    /// Settings with the given served model name, no default guidance and the default limits.
    pub fn new(served_model: impl Into<String>) -> Self {
        ValidationConfig {
            served_model: served_model.into(),
            default_guidance: Vec::new(),
            max_stop_sequences: 4,
            max_stop_length: 1024,
            max_prompt_tokens: None,
            max_tokens_limit: None,
            chat_template_sandbox: None,
        }
    }
}

/// A validated request, ready to submit.
pub struct Prepared {
    /// What the scheduler runs.
    pub gen: GenRequest,
    /// Stream the answer as SSE.
    pub stream: bool,
    /// Send a usage chunk at the end of a stream.
    pub include_usage: bool,
    /// The models the request needs (base first), for the readiness check.
    pub models: Vec<ModelIndex>,
}

/// Assembles the prepared request from per-model prompts (`prompts[0]` is the base's).
#[allow(clippy::too_many_arguments)]
fn assemble(
    request_id: String,
    catalog: &Catalog,
    guidance: &[(ModelIndex, f32)],
    prompts: Vec<Vec<u32>>,
    params: SamplingParams,
    stops: Vec<String>,
    max_tokens: u32,
    top_logprobs: Option<usize>,
    stream: bool,
    include_usage: bool,
) -> Prepared {
    let mut prompts = prompts.into_iter();
    let base_prompt = prompts.next().unwrap_or_default();
    let arms: Vec<ArmRequest> = guidance
        .iter()
        .zip(prompts)
        .map(|(&(model, alpha), prompt)| ArmRequest { model, alpha, prompt })
        .collect();
    let text = Box::new(RequestText::new(&catalog.base().text, &base_prompt, &stops));
    let models = std::iter::once(0).chain(arms.iter().map(|a| a.model)).collect();
    Prepared {
        gen: GenRequest { request_id, base_prompt, arms, sampling: params, max_tokens, top_logprobs, text },
        stream,
        include_usage,
        models,
    }
}

/// Validates and prepares a `/v1/completions` request.
pub fn prepare_completion(
    req: CompletionRequest,
    request_id: String,
    catalog: &Catalog,
    cfg: &ValidationConfig,
) -> Result<Prepared, ApiError> {
    check_model(&req.model, cfg, catalog)?;
    let (params, stops, stream, include_usage) = check_sampling(&req.sampling, cfg)?;
    if req.echo {
        return Err(ApiError::invalid("echo", "`echo` is not supported; omit it or send false"));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "`suffix` is not supported; omit it"));
    }
    if let Some(b) = req.best_of {
        if b != 1 {
            return Err(ApiError::invalid("best_of", format!("only best_of = 1 is supported, got {b}")));
        }
    }
    let top_logprobs = match req.logprobs {
        Some(n) if n > MAX_TOP_LOGPROBS => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("`logprobs` must be at most {MAX_TOP_LOGPROBS}, got {n}"),
            ))
        }
        Some(n) => Some(n as usize),
        None => None,
    };
    let guidance = resolve_guidance(req.sampling.guidance.as_ref(), catalog, cfg)?;
    let prompts: Vec<Vec<u32>> = match req.prompt {
        Prompt::Text(text) => std::iter::once(0)
            .chain(guidance.iter().map(|&(m, _)| m))
            .map(|m| catalog.models[m].text.encode_prompt(&text).map_err(|e| text_error(e, "prompt")))
            .collect::<Result<_, _>>()?,
        Prompt::Tokens(ids) => {
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= catalog.vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("token id {bad} is out of range: the vocabulary has {} tokens", catalog.vocab),
                ));
            }
            vec![ids; 1 + guidance.len()]
        }
        Prompt::TextBatch(v) if v.len() == 1 => {
            let text = &v[0];
            std::iter::once(0)
                .chain(guidance.iter().map(|&(m, _)| m))
                .map(|m| catalog.models[m].text.encode_prompt(text).map_err(|e| text_error(e, "prompt")))
                .collect::<Result<_, _>>()?
        }
        Prompt::TextBatch(_) | Prompt::TokensBatch(_) => {
            return Err(ApiError::invalid(
                "prompt",
                "only one prompt per request is supported: send a string (or one list of token ids), not a \
                 list of prompts",
            ))
        }
    };
    check_prompts_nonempty(&prompts, catalog, &guidance, "prompt")?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    check_prompt_limit(longest, cfg, "prompt")?;
    let default = DEFAULT_COMPLETION_MAX_TOKENS.min(cfg.max_tokens_limit.unwrap_or(u32::MAX));
    let max_tokens = fit_context(longest, req.sampling.max_tokens, default, catalog.max_context)?;
    Ok(assemble(
        request_id,
        catalog,
        &guidance,
        prompts,
        params,
        stops,
        max_tokens,
        top_logprobs,
        stream,
        include_usage,
    ))
}

/// Validates and prepares a `/v1/chat/completions` request: each needed model renders the
/// messages with its own chat template.
pub fn prepare_chat(
    req: ChatCompletionRequest,
    request_id: String,
    catalog: &Catalog,
    cfg: &ValidationConfig,
) -> Result<Prepared, ApiError> {
    check_model(&req.model, cfg, catalog)?;
    check_roles(&req.messages)?;
    check_unsupported_chat_fields(&req)?;
    let mut sampling = req.sampling;
    if req.max_completion_tokens.is_some() {
        sampling.max_tokens = req.max_completion_tokens;
    }
    if sampling.max_tokens == Some(0) {
        let param = if req.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
        return Err(ApiError::invalid(param, format!("`{param}` must be at least 1, got 0")));
    }
    let (params, stops, stream, include_usage) =
        check_sampling(&sampling, cfg).map_err(|e| match (e, req.max_completion_tokens.is_some()) {
            (ApiError::InvalidRequest { message, param: Some(p) }, true) if p == "max_tokens" => {
                ApiError::invalid(
                    "max_completion_tokens",
                    message.replace("max_tokens", "max_completion_tokens"),
                )
            }
            (e, _) => e,
        })?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` is empty; send at least one message"));
    }
    let top_logprobs = match (req.logprobs, req.top_logprobs) {
        (_, Some(n)) if n > MAX_TOP_LOGPROBS => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("`top_logprobs` must be at most {MAX_TOP_LOGPROBS}, got {n}"),
            ))
        }
        (false, Some(n)) if n > 0 => {
            return Err(ApiError::invalid("top_logprobs", "`top_logprobs` needs \"logprobs\": true"))
        }
        (true, n) => Some(n.unwrap_or(0) as usize),
        (false, _) => None,
    };
    let guidance = resolve_guidance(sampling.guidance.as_ref(), catalog, cfg)?;
    let messages: &[ChatMessage] = &req.messages;
    let prompts: Vec<Vec<u32>> = std::iter::once(0)
        .chain(guidance.iter().map(|&(m, _)| m))
        .map(|m| {
            let text = &catalog.models[m].text;
            let rendered = render_chat(text, cfg.chat_template_sandbox.as_deref(), messages)
                .map_err(|e| text_error(e, "messages"))?;
            text.encode_prompt(&rendered).map_err(|e| text_error(e, "messages"))
        })
        .collect::<Result<_, _>>()?;
    check_prompts_nonempty(&prompts, catalog, &guidance, "messages")?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    check_prompt_limit(longest, cfg, "messages")?;
    let default = cfg.max_tokens_limit.unwrap_or(u32::MAX);
    let max_tokens =
        fit_context(longest, sampling.max_tokens, default, catalog.max_context).map_err(|e| {
            match (e, req.max_completion_tokens.is_some()) {
                (ApiError::InvalidRequest { message, param: Some(p) }, true) if p == "max_tokens" => {
                    ApiError::invalid(
                        "max_completion_tokens",
                        message.replace("max_tokens", "max_completion_tokens"),
                    )
                }
                (ApiError::InvalidRequest { message, param: Some(p) }, _) if p == "prompt" => {
                    ApiError::invalid("messages", message)
                }
                (e, _) => e,
            }
        })?;
    Ok(assemble(
        request_id,
        catalog,
        &guidance,
        prompts,
        params,
        stops,
        max_tokens,
        top_logprobs,
        stream,
        include_usage,
    ))
}
