//! Greedy GenARM through the HTTP API equals a reference computed in this process from
//! `genarm_model::Engine` (argmax of ℓ_base + Σ α_i ℓ_i, fed back token by token): unguided, one
//! ARM, two weighted ARMs with β ≠ 1, an ARM smaller than the base; α = 0 everywhere equals
//! unguided and steps no rm-worker. Real processes on loopback.

mod common;

use common::*;
use serde_json::{json, Value};

/// Base `llama-mha`; ARMs `gqa` (llama-gqa-tied), `qwen` (qwen2-bias), `small` (a smaller
/// Llama with extra logit rows).
struct Setup {
    cluster: Cluster,
    base: RefModel,
    gqa: RefModel,
    qwen: RefModel,
    small: RefModel,
    _small_dir: SmallArm,
}

fn setup() -> Setup {
    let small_dir = small_arm();
    let cluster = Cluster::start(ClusterSpec {
        base: fixture(BASE),
        rms: vec![
            ("gqa".into(), fixture("llama-gqa-tied")),
            ("qwen".into(), fixture("qwen2-bias")),
            ("small".into(), small_dir.path.clone()),
        ],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    Setup {
        base: RefModel::load(&fixture(BASE)),
        gqa: RefModel::load(&fixture("llama-gqa-tied")),
        qwen: RefModel::load(&fixture("qwen2-bias")),
        small: RefModel::load(&small_dir.path),
        cluster,
        _small_dir: small_dir,
    }
}

const MAX_TOKENS: usize = 16;

/// Prompts for completions (the second is a rendered ChatML conversation, the third non-ASCII).
const PROMPTS: &[&str] = &[
    "The cat sat on the mat.",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, the naïve fisherman drank a café au lait",
];

impl Setup {
    fn arm(&self, name: &str) -> &RefModel {
        match name {
            "gqa" => &self.gqa,
            "qwen" => &self.qwen,
            "small" => &self.small,
            _ => panic!("no ARM {name}"),
        }
    }

    /// Sends `body` (greedy, with `guidance` rewards/β as given, `logprobs` asked), checks text,
    /// finish reason, usage and every token's fused log-prob against the reference for
    /// `prompt_ids`; returns the text.
    fn check(
        &self,
        what: &str,
        path: &str,
        body: Value,
        prompt_ids: &[u32],
        rewards: &[(&str, f64)],
        beta: f64,
    ) -> String {
        let arms: Vec<(&RefModel, f32)> =
            rewards.iter().map(|(name, w)| (self.arm(name), (*w / beta) as f32)).collect();
        let want = greedy(&self.base, &arms, prompt_ids, MAX_TOKENS);
        assert_unambiguous(what, &want);
        let mut body = if rewards.is_empty() { body } else { with_guidance(body, rewards, beta) };
        if path == "/v1/completions" {
            body["logprobs"] = json!(0);
        } else {
            body["logprobs"] = json!(true);
        }
        let resp = post_ok(&self.cluster, path, &body);
        let text = choice_text(&resp);
        assert_eq!(
            text,
            self.base.decode(&want.ids),
            "{what}: text differs from the reference (reference ids {:?})",
            want.ids
        );
        assert_eq!(finish_reason(&resp), want.finish, "{what}: finish_reason");
        assert_eq!(
            resp["usage"]["prompt_tokens"],
            json!(prompt_ids.len()),
            "{what}: usage {}",
            resp["usage"]
        );
        if want.finish == "length" {
            assert_eq!(resp["usage"]["completion_tokens"], json!(want.ids.len()), "{what}: usage");
        }
        let got: Vec<f64> = if path == "/v1/completions" {
            resp["choices"][0]["logprobs"]["token_logprobs"].as_array()
        } else {
            resp["choices"][0]["logprobs"]["content"].as_array()
        }
        .unwrap_or_else(|| panic!("{what}: no logprobs in {resp}"))
        .iter()
        .map(|l| {
            l.as_f64().or_else(|| l["logprob"].as_f64()).unwrap_or_else(|| panic!("{what}: logprob {l}"))
        })
        .collect();
        assert_eq!(got.len(), want.logprobs.len(), "{what}: one log-prob per generated token");
        for (i, (g, w)) in got.iter().zip(&want.logprobs).enumerate() {
            assert!(
                (g - *w as f64).abs() <= 1e-3 * (1.0 + w.abs() as f64),
                "{what}: token {i} log-prob {g}, reference (fused distribution) {w}"
            );
        }
        text
    }

    fn completion(&self, what: &str, prompt: &str, rewards: &[(&str, f64)], beta: f64) -> String {
        let ids = self.base.encode(prompt);
        self.check(what, "/v1/completions", completion(prompt, MAX_TOKENS), &ids, rewards, beta)
    }

    fn chat(&self, what: &str, content: &str, rewards: &[(&str, f64)], beta: f64) -> String {
        let ids = self.base.encode(&chatml_user(content));
        let body = json!({
            "model": BASE,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        });
        self.check(what, "/v1/chat/completions", body, &ids, rewards, beta)
    }

    fn rm_steps(&self) -> Vec<(String, u64)> {
        ["gqa", "qwen", "small"]
            .iter()
            .map(|name| (name.to_string(), stats(&self.cluster.rm_grpc_urls(name)[0]).steps))
            .collect()
    }
}

#[test]
fn unguided_greedy_equals_the_engine_reference_and_steps_no_arm() {
    let _serial = serial();
    let s = setup();
    let before = s.rm_steps();
    let base_before = stats(&s.cluster.base_grpc_url()).steps;
    for (i, prompt) in PROMPTS.iter().enumerate() {
        s.completion(&format!("unguided completion {i}"), prompt, &[], 1.0);
    }
    s.chat("unguided chat", "Tell me about the sea.", &[], 1.0);
    assert!(stats(&s.cluster.base_grpc_url()).steps > base_before, "the base-worker was not stepped");
    assert_eq!(s.rm_steps(), before, "an rm-worker got steps although no request used guidance");
}

#[test]
fn one_arm_greedy_equals_the_reference_and_changes_the_text() {
    let _serial = serial();
    let s = setup();
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let plain = s.completion(&format!("completion {i} unguided"), prompt, &[], 1.0);
        let guided = s.completion(&format!("completion {i} guided by qwen"), prompt, &[("qwen", 1.0)], 1.0);
        assert_ne!(guided, plain, "completion {i}: guidance by qwen (α = 1) did not change the text");
    }
    let plain = s.chat("chat unguided", "Tell me about the sea.", &[], 1.0);
    let guided = s.chat("chat guided by gqa", "Tell me about the sea.", &[("gqa", 1.5)], 1.0);
    assert_ne!(guided, plain, "chat: guidance by gqa (α = 1.5) did not change the text");
}

#[test]
fn two_weighted_arms_with_beta_equal_the_reference_in_any_order() {
    let _serial = serial();
    let s = setup();
    let rewards = [("gqa", 0.7), ("qwen", 1.3)];
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let plain = s.completion(&format!("completion {i} unguided"), prompt, &[], 1.0);
        let guided =
            s.completion(&format!("completion {i} gqa 0.7 + qwen 1.3, β 0.5"), prompt, &rewards, 0.5);
        assert_ne!(guided, plain, "completion {i}: two-ARM guidance did not change the text");
        // The same guidance with the rewards written in the other order: the same text.
        let raw = format!(
            r#"{{"model": "{BASE}", "prompt": {}, "max_tokens": {MAX_TOKENS}, "temperature": 0,
                "guidance": {{"beta": 0.5, "rewards": {{"qwen": 1.3, "gqa": 0.7}}}}}}"#,
            json!(prompt)
        );
        let r = http::request(
            "POST",
            &s.cluster.url("/v1/completions"),
            &[("Content-Type", "application/json")],
            raw.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(choice_text(&r.json().unwrap()), guided, "completion {i}: reward order changed the text");
    }
    let plain = s.chat("chat unguided", "Why is the sky blue?", &[], 1.0);
    let guided = s.chat("chat gqa 0.7 + qwen 1.3, β 0.5", "Why is the sky blue?", &rewards, 0.5);
    assert_ne!(guided, plain, "chat: two-ARM guidance did not change the text");
}

#[test]
fn an_arm_smaller_than_the_base_equals_the_reference() {
    let _serial = serial();
    let s = setup();
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let plain = s.completion(&format!("completion {i} unguided"), prompt, &[], 1.0);
        let small = s.completion(&format!("completion {i} small 1.0"), prompt, &[("small", 1.0)], 1.0);
        assert_ne!(small, plain, "completion {i}: the small ARM did not change the text");
        let mix = s.completion(
            &format!("completion {i} small 0.8 + gqa 0.4, β 2"),
            prompt,
            &[("small", 0.8), ("gqa", 0.4)],
            2.0,
        );
        assert_ne!(mix, plain, "completion {i}: small + gqa did not change the text");
    }
}

#[test]
fn zero_alpha_equals_unguided_and_steps_no_arm() {
    let _serial = serial();
    let s = setup();
    let before = s.rm_steps();
    let base_before = stats(&s.cluster.base_grpc_url()).steps;
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let ids = s.base.encode(prompt);
        let want = greedy(&s.base, &[], &ids, MAX_TOKENS);
        let body = with_guidance(
            completion(prompt, MAX_TOKENS),
            &[("gqa", 0.0), ("qwen", 0.0), ("small", 0.0)],
            1.0,
        );
        let text = choice_text(&post_ok(&s.cluster, "/v1/completions", &body));
        assert_eq!(
            text,
            s.base.decode(&want.ids),
            "completion {i}: α = 0 for every ARM differs from unguided"
        );
        let body = with_guidance(completion(prompt, MAX_TOKENS), &[("qwen", 0.0)], 3.0);
        let text = choice_text(&post_ok(&s.cluster, "/v1/completions", &body));
        assert_eq!(text, s.base.decode(&want.ids), "completion {i}: α = 0 for qwen differs from unguided");
    }
    assert!(stats(&s.cluster.base_grpc_url()).steps > base_before, "the base-worker was not stepped");
    assert_eq!(s.rm_steps(), before, "an rm-worker was stepped for requests whose every α is 0");
}
