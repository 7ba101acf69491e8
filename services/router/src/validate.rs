//! Request validation (DESIGN.md §4) and preparation: checks every field, resolves guidance
//! into per-ARM α, renders and tokenizes each needed model's prompt (its own chat template and
//! BOS rule), checks the context, and builds the scheduler's [`GenRequest`]. Every error names
//! the problem and the fix.

use genarm_fusion::{FusionError, SamplingParams};
use std::sync::Arc;

use genarm_text::{ChatMessage, ModelText, TemplateSandbox, TextError};

use crate::backend::ModelIndex;
use crate::error::RouterError;
use crate::openai::{ChatCompletionRequest, CompletionRequest, Guidance, Prompt, SamplingFields};
use crate::scheduler::{ArmRequest, GenRequest};
use crate::text::RequestText;
use crate::workers::Catalog;

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

/// `model` must name the served base model (404 otherwise).
pub fn check_model(model: &str, cfg: &ValidationConfig, catalog: &Catalog) -> Result<(), RouterError> {
    if model == cfg.served_model {
        return Ok(());
    }
    if catalog.reward_index(model).is_some() {
        return Err(RouterError::invalid(
            "model",
            format!(
                "`{model}` is a reward model: it guides generation but does not generate; set \"model\": \"{}\" \
                 and put `{model}` in \"guidance\": {{\"rewards\": {{\"{model}\": 1.0}}}}",
                cfg.served_model
            ),
        ));
    }
    Err(RouterError::ModelNotFound { requested: model.to_string(), served: cfg.served_model.clone() })
}

/// Resolves `guidance` (or the default) into `(model index, α)` pairs with α ≠ 0, sorted by
/// model index (= reward name order).
pub fn resolve_guidance(
    guidance: Option<&Guidance>,
    catalog: &Catalog,
    cfg: &ValidationConfig,
) -> Result<Vec<(ModelIndex, f32)>, RouterError> {
    let Some(g) = guidance else {
        return Ok(cfg.default_guidance.clone());
    };
    let beta = g.beta.unwrap_or(1.0);
    if !(beta.is_finite() && beta > 0.0) {
        return Err(RouterError::invalid(
            "guidance.beta",
            format!("`guidance.beta` must be a finite number > 0 (α = weight / beta), got {beta}"),
        ));
    }
    let mut out = Vec::new();
    for (name, &w) in &g.rewards {
        let Some(index) = catalog.reward_index(name) else {
            let known = catalog.reward_names();
            return Err(RouterError::invalid(
                "guidance.rewards",
                if known.is_empty() {
                    format!(
                        "unknown reward model `{name}`: this server has no reward models; omit \"guidance\""
                    )
                } else {
                    format!("unknown reward model `{name}`; known reward models: {}", known.join(", "))
                },
            ));
        };
        let alpha = (w / beta) as f32;
        if !w.is_finite() || !alpha.is_finite() {
            return Err(RouterError::invalid(
                "guidance.rewards",
                format!("the weight of `{name}` must be a finite number (and weight / beta must fit an f32), got {w}"),
            ));
        }
        if alpha != 0.0 {
            out.push((index, alpha));
        }
    }
    out.sort_by_key(|&(i, _)| i);
    Ok(out)
}

/// Checks the fields shared by both endpoints; returns the sampling parameters, the stop strings
/// and `(stream, include_usage)`.
fn check_sampling(
    s: &SamplingFields,
    cfg: &ValidationConfig,
) -> Result<(SamplingParams, Vec<String>, bool, bool), RouterError> {
    if let Some(n) = s.n {
        if n != 1 {
            return Err(RouterError::invalid(
                "n",
                format!("only n = 1 is supported, got {n}; send separate requests"),
            ));
        }
    }
    for (name, v) in [("presence_penalty", s.presence_penalty), ("frequency_penalty", s.frequency_penalty)] {
        if let Some(v) = v {
            if v != 0.0 {
                return Err(RouterError::invalid(
                    name,
                    format!("`{name}` is not supported (got {v}); omit it or send 0"),
                ));
            }
        }
    }
    if s.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(RouterError::invalid("logit_bias", "`logit_bias` is not supported; omit it"));
    }
    if s.max_tokens == Some(0) {
        return Err(RouterError::invalid("max_tokens", "`max_tokens` must be at least 1, got 0"));
    }
    let top_k = match s.top_k {
        None | Some(-1) => None,
        Some(k) if k >= 1 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        Some(k) => {
            return Err(RouterError::invalid(
                "top_k",
                format!("`top_k` must be >= 1 (or -1 for no limit), got {k}"),
            ))
        }
    };
    let params = SamplingParams {
        temperature: s.temperature.unwrap_or(1.0),
        top_k,
        top_p: s.top_p,
        seed: s.seed.map(|x| x.as_u64()).unwrap_or_else(rand::random),
    };
    params.validate().map_err(|e| match e {
        FusionError::InvalidParam { field, message } => {
            RouterError::invalid(field, format!("`{field}` {message}"))
        }
        other => RouterError::invalid_body(other.to_string()),
    })?;
    let stops = s.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stops.len() > cfg.max_stop_sequences {
        return Err(RouterError::invalid(
            "stop",
            format!("at most {} stop strings are allowed, got {}", cfg.max_stop_sequences, stops.len()),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(RouterError::invalid("stop", "stop strings must not be empty"));
    }
    if let Some(long) = stops.iter().find(|s| s.len() > cfg.max_stop_length) {
        return Err(RouterError::invalid(
            "stop",
            format!(
                "a stop string is {} bytes long, more than the limit of {} bytes (--max-stop-length); send \
                 shorter stop strings",
                long.len(),
                cfg.max_stop_length
            ),
        ));
    }
    if let (Some(m), Some(limit)) = (s.max_tokens, cfg.max_tokens_limit) {
        if m > limit {
            return Err(RouterError::invalid(
                "max_tokens",
                format!(
                    "max_tokens is {m}, more than this server's limit of {limit} (--max-tokens-limit); send \
                     max_tokens <= {limit}"
                ),
            ));
        }
    }
    let include_usage = s.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if s.stream_options.is_some() && !s.stream {
        return Err(RouterError::invalid(
            "stream_options",
            "`stream_options` is only allowed with \"stream\": true",
        ));
    }
    Ok((params, stops, s.stream, include_usage))
}

/// Renders a chat for `text`'s model, in `sandbox` if given. The sandbox's round trip blocks
/// the thread (about 50 µs, up to its 10 s deadline for a runaway template), so on a
/// multi-threaded Tokio runtime it runs under `block_in_place` and other tasks move off this
/// worker thread meanwhile.
fn render_chat(
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
fn text_error(e: TextError, param: &str) -> RouterError {
    if e.is_client_error() {
        RouterError::invalid(param, e.to_string())
    } else {
        RouterError::Internal(e.to_string())
    }
}

/// Checks `--max-prompt-tokens` against the longest prompt, naming `param`.
fn check_prompt_limit(longest: usize, cfg: &ValidationConfig, param: &str) -> Result<(), RouterError> {
    match cfg.max_prompt_tokens {
        Some(limit) if longest > limit as usize => Err(RouterError::invalid(
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
fn fit_context(
    prompt_len: usize,
    max_tokens: Option<u32>,
    default: u32,
    ctx: u32,
) -> Result<u32, RouterError> {
    let ctx_len = ctx as usize;
    if prompt_len == 0 {
        return Err(RouterError::invalid(
            "prompt",
            "the prompt is empty (it encodes to no tokens); send some text",
        ));
    }
    if prompt_len >= ctx_len {
        return Err(RouterError::invalid(
            "prompt",
            format!(
                "the prompt is {prompt_len} tokens, which leaves no room in the context of {ctx} tokens; shorten \
                 the prompt"
            ),
        ));
    }
    let room = (ctx_len - prompt_len) as u32;
    match max_tokens {
        Some(m) if m > room => Err(RouterError::invalid(
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
fn check_prompts_nonempty(
    prompts: &[Vec<u32>],
    catalog: &Catalog,
    guidance: &[(ModelIndex, f32)],
    param: &str,
) -> Result<(), RouterError> {
    let models = std::iter::once(0).chain(guidance.iter().map(|&(m, _)| m));
    for (p, m) in prompts.iter().zip(models) {
        if p.is_empty() {
            return Err(RouterError::invalid(
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
) -> Result<Prepared, RouterError> {
    check_model(&req.model, cfg, catalog)?;
    let (params, stops, stream, include_usage) = check_sampling(&req.sampling, cfg)?;
    if req.echo {
        return Err(RouterError::invalid("echo", "`echo` is not supported; omit it or send false"));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(RouterError::invalid("suffix", "`suffix` is not supported; omit it"));
    }
    if let Some(b) = req.best_of {
        if b != 1 {
            return Err(RouterError::invalid("best_of", format!("only best_of = 1 is supported, got {b}")));
        }
    }
    let top_logprobs = match req.logprobs {
        Some(n) if n > MAX_TOP_LOGPROBS => {
            return Err(RouterError::invalid(
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
                return Err(RouterError::invalid(
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
            return Err(RouterError::invalid(
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
) -> Result<Prepared, RouterError> {
    check_model(&req.model, cfg, catalog)?;
    let mut sampling = req.sampling;
    if req.max_completion_tokens.is_some() {
        sampling.max_tokens = req.max_completion_tokens;
    }
    if sampling.max_tokens == Some(0) {
        let param = if req.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
        return Err(RouterError::invalid(param, format!("`{param}` must be at least 1, got 0")));
    }
    let (params, stops, stream, include_usage) =
        check_sampling(&sampling, cfg).map_err(|e| match (e, req.max_completion_tokens.is_some()) {
            (RouterError::InvalidRequest { message, param: Some(p) }, true) if p == "max_tokens" => {
                RouterError::invalid(
                    "max_completion_tokens",
                    message.replace("max_tokens", "max_completion_tokens"),
                )
            }
            (e, _) => e,
        })?;
    if req.messages.is_empty() {
        return Err(RouterError::invalid("messages", "`messages` is empty; send at least one message"));
    }
    let top_logprobs = match (req.logprobs, req.top_logprobs) {
        (_, Some(n)) if n > MAX_TOP_LOGPROBS => {
            return Err(RouterError::invalid(
                "top_logprobs",
                format!("`top_logprobs` must be at most {MAX_TOP_LOGPROBS}, got {n}"),
            ))
        }
        (false, Some(n)) if n > 0 => {
            return Err(RouterError::invalid("top_logprobs", "`top_logprobs` needs \"logprobs\": true"))
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
                (RouterError::InvalidRequest { message, param: Some(p) }, true) if p == "max_tokens" => {
                    RouterError::invalid(
                        "max_completion_tokens",
                        message.replace("max_tokens", "max_completion_tokens"),
                    )
                }
                (RouterError::InvalidRequest { message, param: Some(p) }, _) if p == "prompt" => {
                    RouterError::invalid("messages", message)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        crate::testing::fixture_catalog(64)
    }

    fn cfg() -> ValidationConfig {
        ValidationConfig::new("tiny")
    }

    fn completion(v: serde_json::Value) -> Result<Prepared, RouterError> {
        let mut base = serde_json::json!({"model": "tiny", "prompt": "Hello"});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        prepare_completion(serde_json::from_value(base).unwrap(), "cmpl-1".into(), &catalog(), &cfg())
    }

    fn err_of(r: Result<Prepared, RouterError>) -> (String, Option<String>, u16) {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => {
                let status = e.status().as_u16();
                let param = e.body().error.param;
                (e.to_string(), param, status)
            }
        }
    }

    #[test]
    fn a_plain_request_is_prepared_with_defaults() {
        let p = completion(serde_json::json!({})).unwrap();
        assert_eq!(p.gen.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS);
        assert_eq!(p.gen.sampling.temperature, 1.0);
        assert!(p.gen.arms.is_empty());
        assert_eq!(p.models, vec![0]);
        assert!(!p.gen.base_prompt.is_empty());
    }

    #[test]
    fn guidance_resolves_to_sorted_nonzero_alphas() {
        let p = completion(serde_json::json!({
            "guidance": {"rewards": {"helpful": 1.0, "harmless": 0.5}, "beta": 2.0}
        }))
        .unwrap();
        let arms: Vec<(usize, f32)> = p.gen.arms.iter().map(|a| (a.model, a.alpha)).collect();
        assert_eq!(arms, vec![(1, 0.25), (2, 0.5)]);
        assert_eq!(p.models, vec![0, 1, 2]);
        let p = completion(serde_json::json!({"guidance": {"rewards": {"helpful": 0.0}}})).unwrap();
        assert!(p.gen.arms.is_empty(), "alpha = 0 ARMs are not called");
    }

    #[test]
    fn invalid_fields_are_refused_naming_the_param() {
        let cases = [
            (serde_json::json!({"model": "gpt-4"}), Some("model"), 404, "gpt-4"),
            (serde_json::json!({"model": "helpful"}), Some("model"), 400, "reward model"),
            (
                serde_json::json!({"guidance": {"rewards": {"nice": 1.0}}}),
                Some("guidance.rewards"),
                400,
                "harmless, helpful",
            ),
            (
                serde_json::json!({"guidance": {"rewards": {"helpful": 1.0}, "beta": 0}}),
                Some("guidance.beta"),
                400,
                "> 0",
            ),
            (
                serde_json::json!({"guidance": {"rewards": {"helpful": 1.0}, "beta": -1}}),
                Some("guidance.beta"),
                400,
                "-1",
            ),
            (
                serde_json::json!({"guidance": {"rewards": {"helpful": 1e300}}}),
                Some("guidance.rewards"),
                400,
                "finite",
            ),
            (serde_json::json!({"temperature": -1}), Some("temperature"), 400, "-1"),
            (serde_json::json!({"top_p": 0}), Some("top_p"), 400, "(0, 1]"),
            (serde_json::json!({"top_p": 1.5}), Some("top_p"), 400, "1.5"),
            (serde_json::json!({"top_k": 0}), Some("top_k"), 400, ">= 1"),
            (serde_json::json!({"max_tokens": 0}), Some("max_tokens"), 400, "at least 1"),
            (serde_json::json!({"n": 2}), Some("n"), 400, "n = 1"),
            (serde_json::json!({"stop": ["a", "b", "c", "d", "e"]}), Some("stop"), 400, "at most 4"),
            (serde_json::json!({"stop": ""}), Some("stop"), 400, "empty"),
            (serde_json::json!({"logprobs": 21}), Some("logprobs"), 400, "20"),
            (serde_json::json!({"prompt": ["a", "b"]}), Some("prompt"), 400, "one prompt"),
            (serde_json::json!({"prompt": [[1], [2]]}), Some("prompt"), 400, "one prompt"),
            (serde_json::json!({"prompt": [1, 99999]}), Some("prompt"), 400, "99999"),
            (serde_json::json!({"prompt": ""}), Some("prompt"), 400, "empty"),
            (serde_json::json!({"echo": true}), Some("echo"), 400, "echo"),
            (serde_json::json!({"presence_penalty": 0.5}), Some("presence_penalty"), 400, "not supported"),
            (
                serde_json::json!({"stream_options": {"include_usage": true}}),
                Some("stream_options"),
                400,
                "stream",
            ),
        ];
        for (body, param, status, needle) in cases {
            let (msg, p, s) = err_of(completion(body.clone()));
            assert_eq!((p.as_deref(), s), (param, status), "{body}: {msg}");
            assert!(msg.contains(needle), "{body}: `{msg}` lacks `{needle}`");
        }
    }

    #[test]
    fn the_context_is_checked_with_both_numbers() {
        // The base's context is 64 positions.
        let (msg, p, _) = err_of(completion(serde_json::json!({"max_tokens": 100})));
        assert_eq!(p.as_deref(), Some("max_tokens"));
        assert!(msg.contains("100") && msg.contains("64"), "{msg}");
        let long = "word ".repeat(200);
        let (msg, p, _) = err_of(completion(serde_json::json!({"prompt": long})));
        assert_eq!(p.as_deref(), Some("prompt"));
        assert!(msg.contains("64"), "{msg}");
        // A defaulted max_tokens is clamped to the room left.
        let p = completion(serde_json::json!({"prompt": vec![1; 60]})).unwrap();
        assert_eq!(p.gen.max_tokens, 4);
    }

    #[test]
    fn the_operator_limits_are_enforced_naming_the_flag() {
        let c = catalog();
        let mut cfg = cfg();
        cfg.max_prompt_tokens = Some(3);
        cfg.max_tokens_limit = Some(5);
        cfg.max_stop_length = 4;
        let run = |v: serde_json::Value, cfg: &ValidationConfig| {
            let mut base = serde_json::json!({"model": "tiny", "prompt": [1, 2]});
            for (k, x) in v.as_object().unwrap() {
                base[k] = x.clone();
            }
            prepare_completion(serde_json::from_value(base).unwrap(), "c".into(), &c, cfg)
        };
        let (msg, p, s) = err_of(run(serde_json::json!({"prompt": [1, 2, 3, 4]}), &cfg));
        assert_eq!((p.as_deref(), s), (Some("prompt"), 400));
        assert!(msg.contains("--max-prompt-tokens") && msg.contains('4') && msg.contains('3'), "{msg}");
        run(serde_json::json!({"prompt": [1, 2, 3]}), &cfg).expect("at the limit");
        let (msg, p, _) = err_of(run(serde_json::json!({"max_tokens": 6}), &cfg));
        assert_eq!(p.as_deref(), Some("max_tokens"));
        assert!(msg.contains("--max-tokens-limit") && msg.contains('6'), "{msg}");
        assert_eq!(run(serde_json::json!({"max_tokens": 5}), &cfg).unwrap().gen.max_tokens, 5);
        assert_eq!(run(serde_json::json!({}), &cfg).unwrap().gen.max_tokens, 5, "the default is capped");
        let (msg, p, _) = err_of(run(serde_json::json!({"stop": ["abcde"]}), &cfg));
        assert_eq!(p.as_deref(), Some("stop"));
        assert!(msg.contains("--max-stop-length") && msg.contains('5'), "{msg}");
        run(serde_json::json!({"stop": ["abcd"]}), &cfg).expect("at the limit");
        // Chat: the limit names the field the client used, and a missing one is capped.
        let chat = |v: serde_json::Value| {
            let mut base =
                serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]});
            for (k, x) in v.as_object().unwrap() {
                base[k] = x.clone();
            }
            let mut cfg = cfg.clone();
            cfg.max_prompt_tokens = None;
            prepare_chat(serde_json::from_value(base).unwrap(), "c".into(), &c, &cfg)
        };
        let (msg, p, _) = err_of(chat(serde_json::json!({"max_completion_tokens": 9})));
        assert_eq!(p.as_deref(), Some("max_completion_tokens"), "{msg}");
        assert_eq!(chat(serde_json::json!({})).unwrap().gen.max_tokens, 5);
    }

    #[test]
    fn chat_renders_each_models_own_prompt() {
        let req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "tiny",
            "messages": [{"role": "user", "content": "Hi"}],
            "guidance": {"rewards": {"helpful": 1.0}},
            "logprobs": true, "top_logprobs": 2, "max_completion_tokens": 5
        }))
        .unwrap();
        let p = prepare_chat(req, "chatcmpl-1".into(), &catalog(), &cfg()).unwrap();
        assert_eq!(p.gen.max_tokens, 5);
        assert_eq!(p.gen.top_logprobs, Some(2));
        assert_eq!(p.gen.arms.len(), 1);
        let c = catalog();
        let rendered = c.base().text.render_chat(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(p.gen.base_prompt, c.base().text.encode_prompt(&rendered).unwrap());
        // top_logprobs without logprobs, and empty messages, are refused.
        let req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2
        }))
        .unwrap();
        assert_eq!(err_of(prepare_chat(req, "x".into(), &c, &cfg())).1.as_deref(), Some("top_logprobs"));
        let req: ChatCompletionRequest =
            serde_json::from_value(serde_json::json!({"model": "tiny", "messages": []})).unwrap();
        assert_eq!(err_of(prepare_chat(req, "x".into(), &c, &cfg())).1.as_deref(), Some("messages"));
    }

    #[test]
    fn default_guidance_applies_only_without_a_guidance_field() {
        let mut c = cfg();
        c.default_guidance = vec![(2, 1.5)];
        let req = |v: serde_json::Value| -> CompletionRequest { serde_json::from_value(v).unwrap() };
        let p = prepare_completion(
            req(serde_json::json!({"model": "tiny", "prompt": "x"})),
            "a".into(),
            &catalog(),
            &c,
        )
        .unwrap();
        assert_eq!(p.gen.arms.iter().map(|a| (a.model, a.alpha)).collect::<Vec<_>>(), vec![(2, 1.5)]);
        let p = prepare_completion(
            req(serde_json::json!({"model": "tiny", "prompt": "x", "guidance": {"rewards": {}}})),
            "a".into(),
            &catalog(),
            &c,
        )
        .unwrap();
        assert!(p.gen.arms.is_empty());
    }
}
