//! Preference data: JSONL records `{"prompt", "chosen", "rejected"}` (strings, or chat message
//! lists as in UltraFeedback-binarized), rendered with the model's chat template and tokenized
//! into prompt and response ids.

use std::path::Path;

use genarm_text::{ChatMessage, ModelText};
use serde_json::Value;

use crate::error::{Result, TrainError};

/// A preference record before tokenization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPair {
    /// 1-based line number in the data file.
    pub line: usize,
    /// The prompt.
    pub prompt: Prompt,
    /// The preferred response text.
    pub chosen: String,
    /// The dispreferred response text.
    pub rejected: String,
}

/// A prompt: plain text, or the chat messages before the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A string prompt (rendered as one user message when the model has a chat template).
    Text(String),
    /// Chat messages; the response is the next assistant message.
    Messages(Vec<ChatMessage>),
}

/// A tokenized preference pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairExample {
    /// 1-based line number in the data file.
    pub line: usize,
    /// Prompt ids (rendered, BOS rule applied).
    pub prompt: Vec<u32>,
    /// Preferred response ids (EOS appended, unless truncated).
    pub chosen: Vec<u32>,
    /// Dispreferred response ids (EOS appended, unless truncated).
    pub rejected: Vec<u32>,
}

impl PairExample {
    /// Tokens of the longer of the two sequences.
    pub fn max_len(&self) -> usize {
        self.prompt.len() + self.chosen.len().max(self.rejected.len())
    }
}

/// How records become token ids.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Longest sequence (prompt + response) in tokens: responses are truncated to fit, prompts
    /// that leave no room for a response are skipped.
    pub max_len: usize,
    /// Render string prompts with the model's chat template (as one user message) when it has one.
    pub chat_template: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self { max_len: 512, chat_template: true }
    }
}

/// The tokenized data and what was dropped or cut.
#[derive(Debug, Clone)]
pub struct PairData {
    /// Usable pairs, in file order.
    pub pairs: Vec<PairExample>,
    /// Records skipped because the prompt alone leaves no room in `max_len`.
    pub skipped_long_prompt: usize,
    /// Records skipped because a response is empty.
    pub skipped_empty_response: usize,
    /// Responses cut to fit `max_len` (counted per response).
    pub truncated_responses: usize,
}

/// Reads every record of a JSONL file; the first bad line is an error naming it.
pub fn read_jsonl(path: &Path) -> Result<Vec<RawPair>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io("reading", path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_record(line, line_no).map_err(|reason| TrainError::BadRecord {
            path: path.to_owned(),
            line: line_no,
            reason,
        })?);
    }
    if out.is_empty() {
        return Err(TrainError::NoData {
            path: path.to_owned(),
            reason: "the file has no records; expected one JSON object per line with \"prompt\", \
                     \"chosen\" and \"rejected\""
                .into(),
        });
    }
    Ok(out)
}

const EXPECTED: &str = "expected {\"prompt\": string, \"chosen\": string, \"rejected\": string}, or chat \
                        form with \"chosen\"/\"rejected\" as message lists ending in the assistant's response";

/// Parses one JSONL line into a pair, or says what is wrong with it.
pub fn parse_record(line: &str, line_no: usize) -> std::result::Result<RawPair, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
    let Value::Object(obj) = value else {
        return Err(format!("a record must be a JSON object, not {}; {EXPECTED}", kind(&value)));
    };
    let field = |name: &str| obj.get(name).ok_or_else(|| format!("missing field \"{name}\"; {EXPECTED}"));
    let chosen = field("chosen")?;
    let rejected = field("rejected")?;
    let prompt = obj.get("prompt");
    match (chosen, rejected) {
        (Value::String(c), Value::String(r)) => {
            let prompt = match prompt {
                Some(Value::String(p)) => Prompt::Text(p.clone()),
                Some(Value::Array(_)) => Prompt::Messages(messages("prompt", prompt.expect("present"))?),
                Some(other) => {
                    return Err(format!("\"prompt\" must be a string or a message list, not {}", kind(other)))
                }
                None => return Err(format!("missing field \"prompt\"; {EXPECTED}")),
            };
            Ok(RawPair { line: line_no, prompt, chosen: c.clone(), rejected: r.clone() })
        }
        (Value::Array(_), Value::Array(_)) => {
            let c = messages("chosen", chosen)?;
            let r = messages("rejected", rejected)?;
            let (c_last, c_prefix) = split_response("chosen", &c)?;
            let (r_last, r_prefix) = split_response("rejected", &r)?;
            if c_prefix != r_prefix {
                return Err("\"chosen\" and \"rejected\" differ before their last (assistant) message: \
                            both must continue the same conversation"
                    .into());
            }
            let prompt = if !c_prefix.is_empty() {
                Prompt::Messages(c_prefix.to_vec())
            } else {
                match prompt {
                    Some(Value::String(p)) => Prompt::Messages(vec![ChatMessage::new("user", p.clone())]),
                    Some(v @ Value::Array(_)) => Prompt::Messages(messages("prompt", v)?),
                    Some(other) => {
                        return Err(format!(
                            "\"prompt\" must be a string or a message list, not {}",
                            kind(other)
                        ))
                    }
                    None => {
                        return Err("\"chosen\"/\"rejected\" hold only the response and there is no \
                                    \"prompt\": give the conversation before it"
                            .into())
                    }
                }
            };
            Ok(RawPair { line: line_no, prompt, chosen: c_last.to_string(), rejected: r_last.to_string() })
        }
        (c, r) => Err(format!(
            "\"chosen\" is {} and \"rejected\" is {}: both must be strings or both message lists; {EXPECTED}",
            kind(c),
            kind(r)
        )),
    }
}

/// The last message's content (which must be the assistant's) and the messages before it.
fn split_response<'a>(
    name: &str,
    msgs: &'a [ChatMessage],
) -> std::result::Result<(&'a str, &'a [ChatMessage]), String> {
    let (last, prefix) = msgs.split_last().ok_or_else(|| format!("\"{name}\" is an empty message list"))?;
    if last.role != "assistant" {
        return Err(format!(
            "the last message of \"{name}\" has role \"{}\"; it must be the assistant's response",
            last.role
        ));
    }
    Ok((&last.content, prefix))
}

fn messages(name: &str, v: &Value) -> std::result::Result<Vec<ChatMessage>, String> {
    serde_json::from_value::<Vec<ChatMessage>>(v.clone()).map_err(|e| {
        format!("\"{name}\" must be a list of {{\"role\": ..., \"content\": ...}} messages ({e})")
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Tokenizes records for `text`'s model: the prompt rendered (chat template with the generation
/// prompt, or raw text) and encoded with the model's BOS rule, each response tokenized on its own
/// (no special tokens added) with the first EOS id appended. `path` names the file in errors.
pub fn tokenize(raw: &[RawPair], text: &ModelText, opts: &DataOptions, path: &Path) -> Result<PairData> {
    let mut data = PairData {
        pairs: Vec::new(),
        skipped_long_prompt: 0,
        skipped_empty_response: 0,
        truncated_responses: 0,
    };
    let bad = |line: usize, reason: String| TrainError::BadRecord { path: path.to_owned(), line, reason };
    let eos = text.eos_token_ids().first().copied();
    for r in raw {
        if r.chosen.is_empty() || r.rejected.is_empty() {
            data.skipped_empty_response += 1;
            continue;
        }
        let rendered = match &r.prompt {
            Prompt::Text(p) if opts.chat_template && text.check_chat_template().is_ok() => {
                text.render_chat(&[ChatMessage::new("user", p.clone())], true)
            }
            Prompt::Text(p) => Ok(p.clone()),
            Prompt::Messages(m) => text.render_chat(m, true),
        }
        .map_err(|e| bad(r.line, e.to_string()))?;
        let prompt = text.encode_prompt(&rendered).map_err(|e| bad(r.line, e.to_string()))?;
        if prompt.is_empty() {
            return Err(bad(r.line, "the prompt encodes to no tokens; give a non-empty prompt".into()));
        }
        if prompt.len() >= opts.max_len {
            data.skipped_long_prompt += 1;
            continue;
        }
        let room = opts.max_len - prompt.len();
        let mut response = |s: &str| -> Result<Vec<u32>> {
            let enc = text.tokenizer().encode_fast(s, false).map_err(|e| bad(r.line, e.to_string()))?;
            let mut ids = enc.get_ids().to_vec();
            ids.extend(eos);
            if ids.len() > room {
                ids.truncate(room);
                data.truncated_responses += 1;
            }
            Ok(ids)
        };
        let chosen = response(&r.chosen)?;
        let rejected = response(&r.rejected)?;
        data.pairs.push(PairExample { line: r.line, prompt, chosen, rejected });
    }
    if data.pairs.is_empty() {
        return Err(TrainError::NoData {
            path: path.to_owned(),
            reason: format!(
                "{} records skipped because the prompt has --max-len {} tokens or more, {} because a \
                 response is empty",
                data.skipped_long_prompt, opts.max_len, data.skipped_empty_response
            ),
        });
    }
    Ok(data)
}

/// Reads and tokenizes a JSONL file ([`read_jsonl`] then [`tokenize`]).
pub fn load(path: &Path, text: &ModelText, opts: &DataOptions) -> Result<PairData> {
    let raw = read_jsonl(path)?;
    tokenize(&raw, text, opts, path)
}

/// Builds a model's [`ModelText`] from its assets (tokenizer, chat template, BOS/EOS rules).
pub fn model_text(assets: &genarm_model::ModelAssets) -> Result<ModelText> {
    let t = &assets.tokenizer;
    Ok(ModelText::new(
        &assets.model_id,
        &t.json,
        t.chat_template.clone(),
        t.bos_token_id,
        t.eos_token_ids.clone(),
        t.add_bos_token,
    )?)
}

/// The held-out split: a seeded choice of `round(fraction · n)` pairs (at least one when
/// `fraction > 0` and there are two or more pairs, and never all of them). Returns (train, eval).
pub fn split(pairs: Vec<PairExample>, fraction: f64, seed: u64) -> (Vec<PairExample>, Vec<PairExample>) {
    let n = pairs.len();
    let mut n_eval = (fraction * n as f64).round() as usize;
    if fraction > 0.0 && n >= 2 {
        n_eval = n_eval.max(1);
    }
    n_eval = n_eval.min(n.saturating_sub(1));
    let mut order: Vec<usize> = (0..n).collect();
    crate::rng::SplitMix64::new(seed ^ 0x5eed_e7a1).shuffle(&mut order);
    let eval_set: std::collections::HashSet<usize> = order[..n_eval].iter().copied().collect();
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (i, p) in pairs.into_iter().enumerate() {
        if eval_set.contains(&i) {
            eval.push(p)
        } else {
            train.push(p)
        }
    }
    (train, eval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_form() {
        let r = parse_record(r#"{"prompt":"p","chosen":"a","rejected":"b"}"#, 3).unwrap();
        assert_eq!(r.prompt, Prompt::Text("p".into()));
        assert_eq!((r.chosen.as_str(), r.rejected.as_str(), r.line), ("a", "b", 3));
    }

    #[test]
    fn chat_form_takes_shared_prefix() {
        let r = parse_record(
            r#"{"prompt":"q","chosen":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],
               "rejected":[{"role":"user","content":"q"},{"role":"assistant","content":"b"}]}"#,
            1,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Messages(vec![ChatMessage::new("user", "q")]));
        assert_eq!((r.chosen.as_str(), r.rejected.as_str()), ("a", "b"));
    }

    #[test]
    fn chat_form_response_only_uses_prompt_string() {
        let r = parse_record(
            r#"{"prompt":"q","chosen":[{"role":"assistant","content":"a"}],
               "rejected":[{"role":"assistant","content":"b"}]}"#,
            1,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Messages(vec![ChatMessage::new("user", "q")]));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = |s: &str| parse_record(s, 1).unwrap_err();
        assert!(e("{").contains("not valid JSON"));
        assert!(e("[1]").contains("JSON object"));
        assert!(e(r#"{"prompt":"p","chosen":"a"}"#).contains("\"rejected\""));
        assert!(e(r#"{"prompt":"p","chosen":"a","rejected":3}"#).contains("a number"));
        assert!(e(r#"{"chosen":"a","rejected":"b"}"#).contains("\"prompt\""));
        let m = r#"{"chosen":[{"role":"user","content":"q"},{"role":"user","content":"a"}],
                   "rejected":[{"role":"user","content":"q"},{"role":"assistant","content":"b"}]}"#;
        assert!(e(m).contains("role \"user\""));
        let m = r#"{"chosen":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],
                   "rejected":[{"role":"user","content":"x"},{"role":"assistant","content":"b"}]}"#;
        assert!(e(m).contains("differ"));
    }

    #[test]
    fn split_is_seeded_and_partitions() {
        let pairs: Vec<PairExample> = (0..20)
            .map(|i| PairExample { line: i, prompt: vec![1], chosen: vec![2], rejected: vec![3] })
            .collect();
        let (t1, e1) = split(pairs.clone(), 0.1, 7);
        let (t2, e2) = split(pairs.clone(), 0.1, 7);
        assert_eq!((t1.len(), e1.len()), (18, 2));
        assert_eq!(e1, e2);
        assert_eq!(t1, t2);
        let (_, e3) = split(pairs, 0.1, 8);
        assert_ne!(e1, e3);
    }
}
