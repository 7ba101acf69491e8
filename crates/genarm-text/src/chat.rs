//! `ChatMessage`: one message of an OpenAI chat request, as the chat templates see it.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// One message of a chat conversation (`{"role": ..., "content": ..., "name": ...}`).
///
/// `content` arrives either as a string or, as OpenAI clients also send it, as a list of parts
/// `[{"type": "text", "text": "..."}, ...]`; text parts are joined with `"\n"` (as vLLM does for
/// templates that expect string content). Any other part type (images, audio, ...) is rejected
/// with an error naming it. `null` content (an assistant message that only made tool calls)
/// becomes the empty string; a missing `content` is an error. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks: `system`, `user`, `assistant`, ... (the template decides which it accepts).
    pub role: String,
    /// The text of the message.
    #[serde(deserialize_with = "deserialize_content")]
    pub content: String,
    /// An optional participant name, passed to the template as `message.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message with `role` and `content` and no name.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into(), name: None }
    }
}

/// Reads `content`: a string, `null`, or a list of `{"type": "text", "text": ...}` parts.
fn deserialize_content<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (i, part) in parts.iter().enumerate() {
                texts.push(text_of_part(i, part).map_err(D::Error::custom)?);
            }
            Ok(texts.join("\n"))
        }
        other => Err(D::Error::custom(format!(
            "message content must be a string or a list of {{\"type\": \"text\", \"text\": ...}} parts, \
             not {}",
            json_kind(&other)
        ))),
    }
}

/// The text of content part `i`, or why it is not a text part.
fn text_of_part(i: usize, part: &Value) -> Result<String, String> {
    let Some(obj) = part.as_object() else {
        return Err(format!(
            "content part {i} must be an object {{\"type\": \"text\", \"text\": ...}}, not {}",
            json_kind(part)
        ));
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some(other) => {
            return Err(format!(
                "content part {i} has type \"{other}\", but only \"text\" parts are supported: this \
                 server generates from text alone"
            ))
        }
        None => return Err(format!("content part {i} lacks a string \"type\" (expected \"text\")")),
    }
    match obj.get("text") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("content part {i}: \"text\" must be a string, not {}", json_kind(other))),
        None => Err(format!("content part {i} of type \"text\" lacks its \"text\" field")),
    }
}

/// A JSON value's kind, for error messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ChatMessage, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn string_content() {
        let m = parse(r#"{"role":"user","content":"hi"}"#).unwrap();
        assert_eq!(m, ChatMessage::new("user", "hi"));
    }

    #[test]
    fn text_parts_are_joined() {
        let m = parse(
            r#"{"role":"user","name":"bob","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(m.content, "a\nb");
        assert_eq!(m.name.as_deref(), Some("bob"));
    }

    #[test]
    fn null_content_is_empty() {
        let m = parse(r#"{"role":"assistant","content":null,"tool_calls":[]}"#).unwrap();
        assert_eq!(m.content, "");
    }

    #[test]
    fn other_parts_are_rejected_by_name() {
        let e =
            parse(r#"{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}"#).unwrap_err();
        assert!(e.contains("\"image_url\""), "{e}");
        let e = parse(r#"{"role":"user","content":42}"#).unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        let e = parse(r#"{"role":"user","content":[{"type":"text"}]}"#).unwrap_err();
        assert!(e.contains("lacks its \"text\""), "{e}");
        let e = parse(r#"{"role":"user"}"#).unwrap_err();
        assert!(e.contains("content"), "{e}");
    }

    #[test]
    fn serializes_without_absent_name() {
        let s = serde_json::to_string(&ChatMessage::new("user", "x")).unwrap();
        assert_eq!(s, r#"{"role":"user","content":"x"}"#);
    }
}
