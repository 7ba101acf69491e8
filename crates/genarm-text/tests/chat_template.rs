//! Chat templates: the fixtures' ChatML, SmolLM2's real template, and a template exercising what
//! HF templates use, each against transformers' rendering.

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
        let rendered = text.render_chat(&[user("What is 12 + 30?")], false).unwrap();
        assert_eq!(rendered, "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n");
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

#[test]
fn smollm2_template_matches_transformers() {
    // SmolLM2-135M-Instruct's template, copied from the GGUF's tokenizer.chat_template.
    let template = include_str!("data/smollm2_chat_template.jinja");
    let text = fixture_text("llama-mha", Some(template), false);
    let rendered = text
        .render_chat(&[ChatMessage::new("system", "You are terse."), user("What is 2+2?")], true)
        .unwrap();
    // Expected strings: transformers 5's render_jinja_template on the same messages.
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(rendered.ends_with("<|im_start|>assistant\n"));
    assert_eq!(
        text.render_chat(&[user("Hi"), ChatMessage::new("assistant", "Hello!")], false).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    );
}

#[test]
fn kitchen_sink_template_matches_transformers() {
    let template = include_str!("data/kitchen_sink_template.jinja");
    let text = fixture_text("llama-mha", Some(template), false);
    let mut bob = user("Hi  there");
    bob.name = Some("bob".into());
    let messages = [
        ChatMessage::new("system", "  Be  brief.  "),
        bob,
        ChatMessage::new("assistant", "skip me"),
        ChatMessage::new("assistant", " Hello!  "),
        user("now STOP"),
        user("never"),
    ];
    // Expected strings: transformers 5's render_jinja_template (Jinja2 3.1.6) with
    // bos_token = eos_token = "<|endoftext|>".
    assert_eq!(
        text.render_chat(&messages, true).unwrap(),
        "<|endoftext|><|im_start|>system\nToday Date: 26 Jul 2024\nBe  brief.<|im_end|>\n<|im_start|>user (bob)\n\
         Hi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nnow STOP<|im_end|>\n\
         <!-- 3 USER {\"a\": [1, 2.5, null, true], \"b\": \"x<y é\"} {\n  \"k\": [\n    1\n  ]\n} a|b|c Hello World 5 1x2 False -->\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(
        text.render_chat(&[user("x")], false).unwrap(),
        "<|endoftext|><|im_start|>system\nToday Date: 26 Jul 2024\n<|im_end|>\n<|im_start|>user\nx<|im_end|>\n\
         <!-- 1 USER {\"a\": [1, 2.5, null, true], \"b\": \"x<y é\"} {\n  \"k\": [\n    1\n  ]\n} a|b|c Hello World 1 1x2 False -->\n"
    );
    let err = text.render_chat(&[ChatMessage::new("tool", "x")], false).unwrap_err();
    assert!(
        matches!(&err, TextError::TemplateException { message, .. } if message == "Unsupported role: tool"),
        "{err:?}"
    );
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
