//! Bad preference records are refused with the file, the line number and what is wrong; good
//! records in string and chat form tokenize as the serving side renders and encodes them.

mod common;

use genarm_text::ChatMessage;
use genarm_train::data::{self, DataOptions};

fn train_error(lines: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let cfg = common::quick_config("llama-mha", &path, &dir.path().join("out"));
    genarm_train::train(&cfg).unwrap_err().to_string()
}

const GOOD: &str = r#"{"prompt": "hi", "chosen": "a", "rejected": "b"}"#;

#[test]
fn bad_lines_are_named() {
    let cases: &[(&str, &str)] = &[
        (r#"{"prompt": "hi", "chosen": "a""#, "not valid JSON"),
        (r#"{"prompt": "hi", "chosen": "a"}"#, "missing field \"rejected\""),
        (r#"{"prompt": "hi", "chosen": "a", "rejected": 5}"#, "\"rejected\" is a number"),
        (r#"["hi", "a", "b"]"#, "must be a JSON object"),
        (r#"{"chosen": "a", "rejected": "b"}"#, "missing field \"prompt\""),
        (
            r#"{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}"#,
            "differ before their last",
        ),
        (
            r#"{"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "q"}]}"#,
            "must be the assistant's response",
        ),
        (
            r#"{"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": []}"#,
            "\"chosen\" must be a list of",
        ),
    ];
    for (bad, want) in cases {
        // Line 3: a good line, a blank line, then the bad one.
        let e = train_error(&[GOOD, "", bad, GOOD]);
        println!("{e}");
        assert!(e.contains("bad.jsonl:3:"), "error does not name line 3: {e}");
        assert!(e.contains(want), "error lacks {want:?}: {e}");
    }
    let e = train_error(&["", "  "]);
    assert!(e.contains("no records"), "{e}");
}

#[test]
fn string_and_chat_forms_tokenize_like_serving() {
    let assets = common::assets("llama-mha");
    let text = data::model_text(&assets).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    let chat = r#"{"prompt": "What is 2+2?", "chosen": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}], "rejected": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "five"}]}"#;
    let plain = r#"{"prompt": "What is 2+2?", "chosen": "4", "rejected": "five"}"#;
    std::fs::write(&path, format!("{plain}\n{chat}\n")).unwrap();
    let d = data::load(&path, &text, &DataOptions::default()).unwrap();
    let rendered = text.render_chat(&[ChatMessage::new("user", "What is 2+2?")], true).unwrap();
    assert!(rendered.contains("<|im_start|>assistant"), "{rendered}");
    let prompt = text.encode_prompt(&rendered).unwrap();
    let eos = text.eos_token_ids()[0];
    let resp = |s: &str| {
        let mut ids = text.tokenizer().encode(s, false).unwrap().get_ids().to_vec();
        ids.push(eos);
        ids
    };
    for p in &d.pairs {
        assert_eq!(p.prompt, prompt, "line {}", p.line);
        assert_eq!(p.chosen, resp("4"));
        assert_eq!(p.rejected, resp("five"));
    }
    assert_eq!(d.pairs.len(), 2);

    // Truncation: responses cut to fit, prompts that leave no room skipped and counted.
    let long = format!(r#"{{"prompt": "{}", "chosen": "a", "rejected": "b"}}"#, "word ".repeat(200));
    let long_answer = format!(r#"{{"prompt": "hi", "chosen": "{}", "rejected": "b"}}"#, "yes ".repeat(100));
    std::fs::write(&path, format!("{long}\n{long_answer}\n")).unwrap();
    let d = data::load(&path, &text, &DataOptions { max_len: 64, chat_template: true }).unwrap();
    assert_eq!((d.pairs.len(), d.skipped_long_prompt, d.truncated_responses), (1, 1, 1));
    assert_eq!(d.pairs[0].max_len(), 64);
}
