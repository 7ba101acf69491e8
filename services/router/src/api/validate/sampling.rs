//! The fields both generation endpoints share: sampling parameters (temperature, top-k, top-p,
//! seed), stop strings, `n`, penalties, `logit_bias`, `max_tokens` and streaming options.

use genarm_fusion::{FusionError, SamplingParams};

use super::ValidationConfig;
use crate::api::error::ApiError;
use crate::api::openai::SamplingFields;

/// The largest `temperature` the OpenAI API accepts.
pub const MAX_TEMPERATURE: f32 = 2.0;

/// Checks the fields shared by both endpoints; returns the sampling parameters, the stop strings
/// and `(stream, include_usage)`.
pub(super) fn check_sampling(
    s: &SamplingFields,
    cfg: &ValidationConfig,
) -> Result<(SamplingParams, Vec<String>, bool, bool), ApiError> {
    if let Some(n) = s.n {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("only n = 1 is supported, got {n}; send separate requests"),
            ));
        }
    }
    for (name, v) in [("presence_penalty", s.presence_penalty), ("frequency_penalty", s.frequency_penalty)] {
        if let Some(v) = v {
            if v != 0.0 {
                return Err(ApiError::invalid(
                    name,
                    format!("`{name}` is not supported (got {v}); omit it or send 0"),
                ));
            }
        }
    }
    if s.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::invalid("logit_bias", "`logit_bias` is not supported; omit it"));
    }
    if s.max_tokens == Some(0) {
        return Err(ApiError::invalid("max_tokens", "`max_tokens` must be at least 1, got 0"));
    }
    let top_k = match s.top_k {
        None | Some(-1) => None,
        Some(k) if k >= 1 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be >= 1 (or -1 for no limit), got {k}"),
            ))
        }
    };
    if let Some(t) = s.temperature.filter(|t| *t > MAX_TEMPERATURE) {
        return Err(ApiError::invalid(
            "temperature",
            format!(
                "`temperature` must be at most {MAX_TEMPERATURE} (the OpenAI API's range is [0, 2]), got {t}"
            ),
        ));
    }
    let params = SamplingParams {
        temperature: s.temperature.unwrap_or(1.0),
        top_k,
        top_p: s.top_p,
        seed: s.seed.map(|x| x.as_u64()).unwrap_or_else(rand::random),
    };
    params.validate().map_err(|e| match e {
        FusionError::InvalidParam { field, message } => {
            ApiError::invalid(field, format!("`{field}` {message}"))
        }
        other => ApiError::invalid_body(other.to_string()),
    })?;
    let stops = s.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stops.len() > cfg.max_stop_sequences {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {} stop strings are allowed, got {}", cfg.max_stop_sequences, stops.len()),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    if let Some(long) = stops.iter().find(|s| s.len() > cfg.max_stop_length) {
        return Err(ApiError::invalid(
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
            return Err(ApiError::invalid(
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
        return Err(ApiError::invalid(
            "stream_options",
            "`stream_options` is only allowed with \"stream\": true",
        ));
    }
    Ok((params, stops, s.stream, include_usage))
}
