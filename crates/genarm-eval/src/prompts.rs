//! Reading the prompt file: JSONL records `{"prompt": "..."}`, or plain text with one prompt per
//! line. Each prompt is sent as one user message.

use std::path::Path;

use crate::EvalError;

/// Parses prompt-file text. A file whose first non-empty line starts with `{` is JSONL (every
/// non-empty line must then be an object with a string `prompt`); otherwise every non-empty
/// line is a prompt. Errors name the line.
pub fn parse_prompts(text: &str, source: &str) -> Result<Vec<String>, EvalError> {
    let jsonl = text.lines().find(|l| !l.trim().is_empty()).is_some_and(|l| l.trim_start().starts_with('{'));
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if jsonl {
            let bad = |reason: String| EvalError::Prompts { path: source.to_string(), line: line_no, reason };
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
            let p = v
                .get("prompt")
                .and_then(|p| p.as_str())
                .ok_or_else(|| bad("expected an object with a string field \"prompt\"".into()))?;
            if p.trim().is_empty() {
                return Err(bad("the prompt is empty".into()));
            }
            prompts.push(p.to_string());
        } else {
            prompts.push(line.trim_end_matches('\r').to_string());
        }
    }
    if prompts.is_empty() {
        return Err(EvalError::Prompts {
            path: source.to_string(),
            line: 0,
            reason:
                "the file has no prompts; write one {\"prompt\": \"...\"} per line (or one prompt per line)"
                    .into(),
        });
    }
    Ok(prompts)
}

/// Reads and parses a prompt file.
pub fn read_prompts(path: &Path) -> Result<Vec<String>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::Io {
        what: format!("reading the prompt file {}", path.display()),
        source: e,
    })?;
    parse_prompts(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_and_plain_text_are_read_and_bad_lines_are_named() {
        let p = parse_prompts("{\"prompt\": \"a\"}\n\n{\"prompt\": \"b c\", \"id\": 3}\n", "f").unwrap();
        assert_eq!(p, ["a", "b c"]);
        let p = parse_prompts("say hi\n\nwrite a poem\r\n", "f").unwrap();
        assert_eq!(p, ["say hi", "write a poem"]);
        let e = parse_prompts("{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n", "p.jsonl").unwrap_err().to_string();
        assert!(e.contains("p.jsonl") && e.contains("line 2") && e.contains("\"prompt\""), "{e}");
        let e = parse_prompts("{\"prompt\": \"a\"}\n{oops\n", "p.jsonl").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("JSON"), "{e}");
        assert!(parse_prompts("\n \n", "f").is_err());
    }
}
