//! Chat templates: the fixtures' ChatML, SmolLM2's real template, and a template exercising what
//! HF templates use, each against transformers' rendering (`tests/data/chat_template_goldens.json`,
//! written by `scripts/make_goldens.py`).

mod common;

use common::{fixture_text, FIXTURES};
use genarm_text::{ChatMessage, ModelText, TextError};

fn user(content: &str) -> ChatMessage {
    ChatMessage::new("user", content)
}

#[test]
fn fixture_chatml_renders_the_test_prompt() {
    // PROMPTS[2] is the rendering of one user turn with the generation prompt.
    for fixture in FIXTURES {
        let text = fixture_text(fixture, None, false);
        assert!(text.check_chat_template().is_ok());
        let rendered = text.render_chat(&[user("What is 12 + 30?")], true).unwrap();
        assert_eq!(rendered, genarm_testkit::PROMPTS[2], "{fixture}");
    }
}

#[test]
fn content_parts_render_like_strings() {
    let text = fixture_text("llama-mha", None, false);
    let messages: Vec<ChatMessage> =
        serde_json::from_str(r#"[{"role":"user","content":[{"type":"text","text":"What is 12 + 30?"}]}]"#)
            .unwrap();
    assert_eq!(text.render_chat(&messages, true).unwrap(), genarm_testkit::PROMPTS[2]);
}

#[test]
fn raise_exception_reaches_the_caller() {
    let template = "{% for m in messages %}{% if m.role == 'system' %}\
        {{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}";
    let text = fixture_text("llama-mha", Some(template), false);
    assert_eq!(text.render_chat(&[user("ok")], true).unwrap(), "ok");
    let err = text.render_chat(&[ChatMessage::new("system", "x"), user("y")], true).unwrap_err();
    match &err {
        TextError::TemplateException { model, message } => {
            assert_eq!(model, "llama-mha");
            assert_eq!(message, "System role not supported");
        }
        other => panic!("expected a template exception, got {other:?}"),
    }
    assert!(err.is_client_error());
    assert!(err.to_string().contains("System role not supported"), "{err}");
}

#[test]
fn missing_or_broken_templates_are_clear_errors() {
    let json = common::tokenizer_json("llama-mha");
    let none = ModelText::new("m", &json, None, Some(0), vec![0], false).unwrap();
    let err = none.render_chat(&[user("x")], true).unwrap_err();
    assert!(matches!(err, TextError::NoChatTemplate { .. }));
    assert!(err.to_string().contains("/v1/completions"), "{err}");
    assert!(none.check_chat_template().is_err());

    // A template that does not compile still leaves the model usable for raw prompts.
    let broken = ModelText::new("m", &json, Some("{% for %}".into()), Some(0), vec![0], false).unwrap();
    let err = broken.check_chat_template().unwrap_err();
    assert!(matches!(err, TextError::TemplateSyntax { .. }), "{err:?}");
    assert!(err.to_string().contains("does not compile"), "{err}");
    assert!(matches!(broken.render_chat(&[user("x")], true), Err(TextError::TemplateSyntax { .. })));
    assert_eq!(broken.encode_prompt("<|im_start|>").unwrap(), vec![1]);

    let runtime = fixture_text("llama-mha", Some("{{ messages[0].content + 1 }}"), false);
    let err = runtime.render_chat(&[user("x")], true).unwrap_err();
    assert!(matches!(err, TextError::TemplateRender { .. }), "{err:?}");
}

/// The template source a golden case names: a file under `tests/data/`, or `fixture` (`None`:
/// the fixture's own ChatML).
fn case_template(name: &str) -> Option<String> {
    (name != "fixture").then(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

#[test]
fn templates_render_like_transformers() {
    // SmolLM2's template is the GGUF's tokenizer.chat_template; the expected strings are
    // transformers' render_jinja_template of the same messages, both written by make_goldens.py.
    let goldens: serde_json::Value =
        serde_json::from_str(include_str!("data/chat_template_goldens.json")).unwrap();
    let cases = goldens["cases"].as_array().unwrap();
    let templates: std::collections::BTreeSet<&str> =
        cases.iter().map(|c| c["template"].as_str().unwrap()).collect();
    assert_eq!(
        templates.into_iter().collect::<Vec<_>>(),
        ["fixture", "kitchen_sink_template.jinja", "smollm2_chat_template.jinja"],
        "every template has goldens"
    );
    for case in cases {
        let name = case["name"].as_str().unwrap();
        // Rendered with the fixtures' BOS and EOS, which fixture_text gives the template.
        assert_eq!(case["bos_token"], genarm_testkit::ENDOFTEXT, "{name}");
        assert_eq!(case["eos_token"], genarm_testkit::ENDOFTEXT, "{name}");
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add_generation_prompt = case["add_generation_prompt"].as_bool().unwrap();
        let template = case_template(case["template"].as_str().unwrap());
        let fixtures = if template.is_none() { FIXTURES } else { &FIXTURES[..1] };
        for fixture in fixtures {
            let text = fixture_text(fixture, template.as_deref(), false);
            let got = text.render_chat(&messages, add_generation_prompt);
            match (case["rendered"].as_str(), case["exception"].as_str()) {
                (Some(want), None) => assert_eq!(got.unwrap(), want, "{name} ({fixture})"),
                (None, Some(want)) => assert!(
                    matches!(&got, Err(TextError::TemplateException { message, .. }) if message == want),
                    "{name} ({fixture}): {got:?}"
                ),
                _ => panic!("{name}: a case has either `rendered` or `exception`"),
            }
        }
    }
}

#[test]
fn strftime_now_formats_the_current_date() {
    let text = fixture_text(
        "llama-mha",
        Some("{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}"),
        false,
    );
    let out = text.render_chat(&[user("x")], true).unwrap();
    let (iso, human) = out.split_once('|').unwrap();
    assert_eq!(iso.len(), 10, "{out}");
    assert!(iso.chars().enumerate().all(|(i, c)| if i == 4 || i == 7 {
        c == '-'
    } else {
        c.is_ascii_digit()
    }));
    assert_eq!(human.len(), 11, "{out}");
}

#[test]
fn bos_and_eos_strings_come_from_the_ids() {
    let template = "[{{ bos_token }}|{{ eos_token }}|{{ bos_token is defined }}]";
    let text = fixture_text("llama-mha", Some(template), false);
    assert_eq!(text.render_chat(&[], false).unwrap(), "[<|endoftext|>|<|endoftext|>|True]");
    let json = common::tokenizer_json("llama-mha");
    let no_bos = ModelText::new("m", &json, Some(template.into()), None, vec![2], false).unwrap();
    assert_eq!(no_bos.render_chat(&[], false).unwrap(), "[|<|im_end|>|False]");
}
