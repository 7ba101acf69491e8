//! Tests of request validation: every refusal names its field, the limit and the fix.

use genarm_text::ChatMessage;

use super::*;
use crate::api::error::ApiError;
use crate::api::openai::{ChatCompletionRequest, CompletionRequest};

fn catalog() -> Catalog {
    crate::testing::fixture_catalog(64)
}

fn cfg() -> ValidationConfig {
    ValidationConfig::new("tiny")
}

fn completion(v: serde_json::Value) -> Result<Prepared, ApiError> {
    let mut base = serde_json::json!({"model": "tiny", "prompt": "Hello"});
    for (k, x) in v.as_object().unwrap() {
        base[k] = x.clone();
    }
    prepare_completion(serde_json::from_value(base).unwrap(), "cmpl-1".into(), &catalog(), &cfg())
}

fn err_of(r: Result<Prepared, ApiError>) -> (String, Option<String>, u16) {
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
        let mut base = serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]});
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

fn chat(v: serde_json::Value) -> Result<Prepared, ApiError> {
    let mut base = serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]});
    for (k, x) in v.as_object().unwrap() {
        base[k] = x.clone();
    }
    prepare_chat(serde_json::from_value(base).unwrap(), "chatcmpl-1".into(), &catalog(), &cfg())
}

#[test]
fn a_role_outside_the_openai_roles_is_refused_naming_it_and_the_allowed_ones() {
    let (msg, p, s) = err_of(chat(serde_json::json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "wizard", "content": "Hi"}
    ]})));
    assert_eq!((p.as_deref(), s), (Some("messages[1].role"), 400), "{msg}");
    assert!(msg.contains("\"wizard\""), "{msg}");
    for role in prompt::CHAT_ROLES {
        assert!(msg.contains(role), "`{msg}` lacks `{role}`");
    }
    // Role names are case-sensitive, as in the OpenAI API.
    assert_eq!(err_of(chat(serde_json::json!({"messages": [{"role": "User", "content": "Hi"}]}))).2, 400);
    for role in prompt::CHAT_ROLES {
        let messages = serde_json::json!([{"role": role, "content": "x"}, {"role": "user", "content": "Hi"}]);
        chat(serde_json::json!({ "messages": messages })).unwrap_or_else(|e| panic!("{role}: {e}"));
    }
}

#[test]
fn openai_fields_this_server_cannot_honour_are_refused_not_ignored() {
    let tool = serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    let cases = [
        (serde_json::json!({ "tools": tool }), "tools", "not supported"),
        (serde_json::json!({"tool_choice": "required"}), "tool_choice", "not supported"),
        (serde_json::json!({ "functions": tool }), "functions", "not supported"),
        (serde_json::json!({"function_call": {"name": "f"}}), "function_call", "not supported"),
        (serde_json::json!({"response_format": {"type": "json_object"}}), "response_format", "json_object"),
        (serde_json::json!({"temperature": 2.5}), "temperature", "at most 2"),
    ];
    for (body, param, needle) in cases {
        let (msg, p, s) = err_of(chat(body.clone()));
        assert_eq!((p.as_deref(), s), (Some(param), 400), "{body}: {msg}");
        assert!(msg.contains(needle), "{body}: `{msg}` lacks `{needle}`");
    }
    // What asks for nothing is accepted: no tools, tool_choice "none", plain text, T = 2.
    for body in [
        serde_json::json!({"tools": [], "tool_choice": "none", "functions": null}),
        serde_json::json!({"response_format": {"type": "text"}}),
        serde_json::json!({"temperature": 2.0}),
    ] {
        chat(body.clone()).unwrap_or_else(|e| panic!("{body}: {e}"));
    }
    let (msg, p, _) = err_of(completion(serde_json::json!({"temperature": 3})));
    assert_eq!(p.as_deref(), Some("temperature"), "{msg}");
}
