//! Prompts: chat messages checked and rendered with each model's own template (in the template
//! sandbox), text tokenized per model, and the prompt checked against the limits and the context.

use genarm_text::{ChatMessage, ModelText, TemplateSandbox, TextError};

use super::ValidationConfig;
use crate::api::error::ApiError;
use crate::api::openai::ChatCompletionRequest;
use crate::workers::{Catalog, ModelIndex};

/// Renders a chat for `text`'s model, in `sandbox` if given. The sandbox's round trip blocks
/// the thread (about 50 µs, up to its 10 s deadline for a runaway template), so on a
/// multi-threaded Tokio runtime it runs under `block_in_place` and other tasks move off this
/// worker thread meanwhile.
pub(super) fn render_chat(
    text: &ModelText,
    sandbox: Option<&TemplateSandbox>,
    messages: &[ChatMessage],
) -> Result<String, TextError> {
    let render = || text.render_chat_in(sandbox, messages, true);
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if sandbox.is_some() && multi_thread {
        tokio::task::block_in_place(render)
    } else {
        render()
    }
}

/// Maps a text error: the request's fault (400 on `messages`) or the server's (500).
pub(super) fn text_error(e: TextError, param: &str) -> ApiError {
    if e.is_client_error() {
        ApiError::invalid(param, e.to_string())
    } else {
        ApiError::Internal(e.to_string())
    }
}

/// Checks `--max-prompt-tokens` against the longest prompt, naming `param`.
pub(super) fn check_prompt_limit(
    longest: usize,
    cfg: &ValidationConfig,
    param: &str,
) -> Result<(), ApiError> {
    match cfg.max_prompt_tokens {
        Some(limit) if longest > limit as usize => Err(ApiError::invalid(
            param,
            format!(
                "the prompt is {longest} tokens, more than this server's limit of {limit} tokens \
                 (--max-prompt-tokens); shorten the prompt"
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks that prompt + max_tokens fit the effective context; returns max_tokens (defaulted ones
/// are clamped to what is left).
pub(super) fn fit_context(
    prompt_len: usize,
    max_tokens: Option<u32>,
    default: u32,
    ctx: u32,
) -> Result<u32, ApiError> {
    let ctx_len = ctx as usize;
    if prompt_len == 0 {
        return Err(ApiError::invalid(
            "prompt",
            "the prompt is empty (it encodes to no tokens); send some text",
        ));
    }
    if prompt_len >= ctx_len {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "the prompt is {prompt_len} tokens, which leaves no room in the context of {ctx} tokens; shorten \
                 the prompt"
            ),
        ));
    }
    let room = (ctx_len - prompt_len) as u32;
    match max_tokens {
        Some(m) if m > room => Err(ApiError::invalid(
            "max_tokens",
            format!(
                "the prompt ({prompt_len} tokens) plus max_tokens ({m}) is {} tokens, more than the context of \
                 {ctx} tokens; lower max_tokens to at most {room} or shorten the prompt",
                prompt_len as u64 + m as u64
            ),
        )),
        Some(m) => Ok(m),
        None => Ok(default.min(room)),
    }
}

/// Every model needs at least one prompt token (its first step computes the logits of the
/// first generated token).
pub(super) fn check_prompts_nonempty(
    prompts: &[Vec<u32>],
    catalog: &Catalog,
    guidance: &[(ModelIndex, f32)],
    param: &str,
) -> Result<(), ApiError> {
    let models = std::iter::once(0).chain(guidance.iter().map(|&(m, _)| m));
    for (p, m) in prompts.iter().zip(models) {
        if p.is_empty() {
            return Err(ApiError::invalid(
                param,
                format!(
                    "the prompt is empty: it encodes to no tokens for model {} (which adds no BOS token); \
                     send some text",
                    catalog.models[m].model_id
                ),
            ));
        }
    }
    Ok(())
}

/// The chat roles of the OpenAI API.
pub const CHAT_ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// Every message's role must be one of [`CHAT_ROLES`] (OpenAI answers 400 to any other); the
/// error names the message, its role and the allowed ones.
pub(super) fn check_roles(messages: &[ChatMessage]) -> Result<(), ApiError> {
    for (i, m) in messages.iter().enumerate() {
        if !CHAT_ROLES.contains(&m.role.as_str()) {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!(
                    "`messages[{i}].role` is {:?}, which is not a chat role; use one of {}",
                    m.role,
                    CHAT_ROLES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Chat fields that ask for what the router cannot do (tool calls, structured output) are
/// refused rather than ignored: a client that sends tools expects tool calls.
pub(super) fn check_unsupported_chat_fields(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    let present = |v: &Option<serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::String(s)) => s != "none",
        Some(_) => true,
    };
    for (name, v) in [
        ("tools", &req.tools),
        ("tool_choice", &req.tool_choice),
        ("functions", &req.functions),
        ("function_call", &req.function_call),
    ] {
        if present(v) {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` is not supported: this server does not call tools; omit it"),
            ));
        }
    }
    if let Some(format) = &req.response_format {
        let kind = format.get("type").and_then(serde_json::Value::as_str);
        if !format.is_null() && kind != Some("text") {
            return Err(ApiError::invalid(
                "response_format",
                format!(
                    "only `response_format` {{\"type\": \"text\"}} is supported, got {format}; omit it for \
                     plain text"
                ),
            ));
        }
    }
    Ok(())
}
