//! Reading the prompt file: JSONL records `{"prompt": "..."}`, or plain text with one prompt per
//! line. Each prompt is sent as one user message.

use std::path::Path;

use crate::EvalError;

/// Parses prompt-file text ([`genarm_demo::prompts::parse_prompt_file`]).
pub fn parse_prompts(text: &str, source: &str) -> Result<Vec<String>, EvalError> {
    genarm_demo::prompts::parse_prompt_file(text, source).map_err(|e| EvalError::Prompts {
        path: e.path,
        line: e.line,
        reason: e.reason,
    })
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
    fn errors_keep_the_file_and_line() {
        assert_eq!(parse_prompts("{\"prompt\": \"a\"}\n", "f").unwrap(), ["a"]);
        let e = parse_prompts("{\"prompt\": \"a\"}\n{oops\n", "p.jsonl").unwrap_err().to_string();
        assert!(e.contains("p.jsonl") && e.contains("line 2") && e.contains("JSON"), "{e}");
    }
}
