//! Invalid requests get the right 4xx with an OpenAI error JSON whose message names the problem,
//! and the router keeps serving after each: every invalid input of docs/architecture.md §4, malformed JSON,
//! invalid UTF-8, an oversized body, a prompt longer than the context, an unknown model; and an
//! overloaded router answers 429 at once. Real processes on loopback.

mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const MAX_BODY: usize = 64 * 1024;

/// One bad request: what it is, its raw body, the status, the error's `param` (when the request
/// is about one field), and words of which the message must contain at least one.
struct Case {
    what: &'static str,
    path: &'static str,
    body: Vec<u8>,
    status: u16,
    param: Option<&'static str>,
    any_of: &'static [&'static str],
}

fn case(
    what: &'static str,
    body: Value,
    status: u16,
    param: Option<&'static str>,
    any_of: &'static [&'static str],
) -> Case {
    Case { what, path: "/v1/completions", body: body.to_string().into_bytes(), status, param, any_of }
}

fn chat_case(
    what: &'static str,
    body: Value,
    param: Option<&'static str>,
    any_of: &'static [&'static str],
) -> Case {
    Case {
        what,
        path: "/v1/chat/completions",
        body: body.to_string().into_bytes(),
        status: 400,
        param,
        any_of,
    }
}

fn raw(what: &'static str, body: &[u8], status: u16, any_of: &'static [&'static str]) -> Case {
    Case { what, path: "/v1/completions", body: body.to_vec(), status, param: None, any_of }
}

/// A valid completion body with `field` set to `value`.
fn with(field: &str, value: Value) -> Value {
    let mut body = json!({"model": BASE, "prompt": "Hello", "max_tokens": 4});
    body[field] = value;
    body
}

fn guided(guidance: Value) -> Value {
    with("guidance", guidance)
}

fn cases() -> Vec<Case> {
    let long_prompt = "the cat sat on the mat ".repeat(200); // ~1200 tokens > 512 positions
    let huge_prompt = "x".repeat(MAX_BODY + 1024);
    let chat = |messages: Value| json!({"model": BASE, "messages": messages, "max_tokens": 4});
    vec![
        raw("malformed JSON", br#"{"model": "llama-mha", "prompt": "Hel"#, 400, &["json", "eof", "parse"]),
        raw("not an object", b"[1, 2, 3]", 400, &["json", "object", "map", "sequence"]),
        raw(
            "invalid UTF-8",
            b"{\"model\": \"llama-mha\", \"prompt\": \"caf\xe9 \xff\", \"max_tokens\": 4}",
            400,
            &["utf-8", "utf8", "unicode"],
        ),
        raw(
            "oversized body",
            json!({"model": BASE, "prompt": huge_prompt, "max_tokens": 4}).to_string().as_bytes(),
            413,
            &["large", "limit", "65536", "bytes"],
        ),
        case(
            "prompt longer than the context",
            with("prompt", json!(long_prompt)),
            400,
            None,
            &["context", "512"],
        ),
        case("unknown model", with("model", json!("no-such-model")), 404, Some("model"), &["no-such-model"]),
        case("missing model", json!({"prompt": "Hello"}), 400, None, &["model"]),
        case("missing prompt", json!({"model": BASE}), 400, None, &["prompt"]),
        case("several prompts", with("prompt", json!(["a", "b"])), 400, Some("prompt"), &["prompt"]),
        case("prompt of the wrong type", with("prompt", json!({"text": "x"})), 400, None, &["prompt"]),
        case(
            "prompt token id past the vocabulary",
            with("prompt", json!([1, 2, 100000])),
            400,
            Some("prompt"),
            &["100000", "vocab"],
        ),
        case("max_tokens of the wrong type", with("max_tokens", json!("ten")), 400, None, &["max_tokens"]),
        case("negative max_tokens", with("max_tokens", json!(-1)), 400, None, &["max_tokens"]),
        case("zero max_tokens", with("max_tokens", json!(0)), 400, Some("max_tokens"), &["max_tokens"]),
        case(
            "negative temperature",
            with("temperature", json!(-1)),
            400,
            Some("temperature"),
            &["temperature"],
        ),
        case("top_p above 1", with("top_p", json!(1.5)), 400, Some("top_p"), &["top_p"]),
        case("top_p negative", with("top_p", json!(-0.1)), 400, Some("top_p"), &["top_p"]),
        case("negative top_k other than -1", with("top_k", json!(-5)), 400, Some("top_k"), &["top_k"]),
        case(
            "n above 1",
            with("n", json!(2)),
            400,
            Some("n"),
            &["`n`", "n must", "n =", "one choice", "n >"],
        ),
        case("stop of the wrong type", with("stop", json!(5)), 400, None, &["stop"]),
        case(
            "too many stop strings",
            with("stop", json!(["a", "b", "c", "d", "e"])),
            400,
            Some("stop"),
            &["stop"],
        ),
        case("unknown reward model", guided(json!({"rewards": {"nope": 1.0}})), 400, None, &["nope"]),
        case("beta of zero", guided(json!({"rewards": {"gqa": 1.0}, "beta": 0})), 400, None, &["beta", "β"]),
        case(
            "negative beta",
            guided(json!({"rewards": {"gqa": 1.0}, "beta": -2.0})),
            400,
            None,
            &["beta", "β"],
        ),
        raw(
            "infinite weight",
            format!(
                r#"{{"model": "{BASE}", "prompt": "Hello", "guidance": {{"rewards": {{"gqa": 1e999}}}}}}"#
            )
            .as_bytes(),
            400,
            &["weight", "finite", "number", "range"],
        ),
        case(
            "weight of the wrong type",
            guided(json!({"rewards": {"gqa": "heavy"}})),
            400,
            None,
            &["gqa", "rewards", "guidance", "weight"],
        ),
        case(
            "rewards of the wrong type",
            guided(json!({"rewards": [1.0]})),
            400,
            None,
            &["rewards", "guidance"],
        ),
        case(
            "presence_penalty (unsupported)",
            with("presence_penalty", json!(0.5)),
            400,
            Some("presence_penalty"),
            &["presence_penalty"],
        ),
        case(
            "logit_bias (unsupported)",
            with("logit_bias", json!({"5": 10})),
            400,
            Some("logit_bias"),
            &["logit_bias"],
        ),
        case("echo (unsupported)", with("echo", json!(true)), 400, Some("echo"), &["echo"]),
        case("best_of above 1", with("best_of", json!(3)), 400, Some("best_of"), &["best_of"]),
        chat_case("no messages", chat(json!([])), Some("messages"), &["messages"]),
        chat_case(
            "top_logprobs without logprobs",
            json!({"model": BASE, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}),
            Some("top_logprobs"),
            &["logprobs"],
        ),
        chat_case("messages of the wrong type", chat(json!("hi")), None, &["messages"]),
        chat_case("a message without role", chat(json!([{"content": "hi"}])), None, &["role"]),
    ]
}

#[test]
fn every_invalid_request_gets_the_right_4xx_naming_the_problem_and_the_router_keeps_serving() {
    let _serial = serial();
    let cluster = Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: vec![("gqa".into(), fixture("llama-gqa-tied"))],
        router_args: vec!["--max-body-bytes".into(), MAX_BODY.to_string()],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let mut failures = Vec::new();
    for c in cases() {
        let r = http::request("POST", &cluster.url(c.path), &[("Content-Type", "application/json")], &c.body)
            .unwrap_or_else(|e| panic!("{}: {e:#}", c.what));
        if let Err(problem) = check(&r, &c) {
            failures.push(format!("{}: {problem}", c.what));
        }
        // Still serving after every bad request.
        post_ok(&cluster, "/v1/completions", &completion("Hello", 2));
    }
    // The known reward names are listed when an unknown one is asked for.
    let r =
        http::post_json(&cluster.url("/v1/completions"), &guided(json!({"rewards": {"nope": 1.0}}))).unwrap();
    let message = r.json().unwrap()["error"]["message"].as_str().unwrap_or_default().to_string();
    if !message.contains("gqa") {
        failures
            .push(format!("unknown reward model: the message should list the known one (gqa): {message:?}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n")
    );
}

fn check(r: &Response, c: &Case) -> Result<(), String> {
    if r.status != c.status {
        return Err(format!("expected HTTP {}, got {} {}", c.status, r.status, r.text()));
    }
    let body = r.json().map_err(|e| format!("{e:#}"))?;
    let err = &body["error"];
    for key in ["message", "type", "param", "code"] {
        if err.get(key).is_none() {
            return Err(format!("the error JSON lacks `{key}`: {body}"));
        }
    }
    let message = err["message"].as_str().ok_or_else(|| format!("message is not a string: {body}"))?;
    let lower = message.to_lowercase();
    if !c.any_of.iter().any(|w| lower.contains(&w.to_lowercase())) {
        return Err(format!("the message should name the problem (one of {:?}): {message:?}", c.any_of));
    }
    if let Some(param) = c.param {
        if err["param"] != json!(param) {
            return Err(format!("param should be {param:?}: {body}"));
        }
    }
    Ok(())
}

#[test]
fn an_overloaded_router_answers_429_at_once_and_recovers() {
    let _serial = serial();
    let cluster = Cluster::start(ClusterSpec {
        base: fixture(BASE),
        router_args: ["--max-batch-size", "1", "--max-waiting", "1"].map(String::from).to_vec(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let n = 8;
    let barrier = Barrier::new(n);
    let results: Vec<(u16, Duration, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (barrier, cluster) = (&barrier, &cluster);
                scope.spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    let r = http::post_json(
                        &cluster.url("/v1/completions"),
                        &completion("Once upon a time", 150),
                    )
                    .unwrap();
                    (r.status, started.elapsed(), r.text())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(ok >= 1, "no request succeeded: {results:?}");
    assert!(
        !refused.is_empty(),
        "8 concurrent requests with one batch slot and one queue slot: none got 429: {results:?}"
    );
    assert_eq!(ok + refused.len(), n, "statuses other than 200/429: {results:?}");
    let slowest_ok = results.iter().filter(|r| r.0 == 200).map(|r| r.1).max().unwrap();
    for (_, took, body) in &refused {
        assert!(*took < slowest_ok, "a 429 took {took:?}, as long as serving ({slowest_ok:?}): not at once");
        let v: Value = serde_json::from_str(body).unwrap();
        assert!(v["error"]["message"].is_string(), "429 without an OpenAI error: {body}");
    }
    post_ok(&cluster, "/v1/completions", &completion("Hello", 2));
}
