//! Hostile chat templates and messages: rendering must return Ok or an error, within the fuel,
//! recursion and output limits and the sandbox's memory budget (never panic, hang or exhaust
//! the fuzzer's memory).
//!
//! Input: `template \0 role \x01 content \x02 role \x01 content ...` (lossy UTF-8); the first byte
//! of the template part also picks `add_generation_prompt` (its low bit).
//!
//! Each input renders in a `TemplateSandbox` whose children are the running binary re-executed
//! (it must call `genarm_text::run_sandbox_if_requested` first: the fuzz binary's `init` block,
//! the replay test's `main`), as the router renders. A render that
//! finishes there fits the budget, so it is then repeated in process — for coverage, which the
//! child's run does not feed back, and as a differential check of the sandbox's JSON hop: both
//! must give the same text or the same error.

use std::sync::OnceLock;

use crate::model_text;
use genarm_text::{ChatMessage, TemplateSandbox, TextError};

/// Each child's memory budget.
const BUDGET: u64 = 512 << 20;

fn sandbox() -> &'static TemplateSandbox {
    static SANDBOX: OnceLock<TemplateSandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| TemplateSandbox::new(BUDGET).expect("the fuzz binary's own path"))
}

/// Runs one input of the `chat_template` target (panics on a finding).
pub fn chat_template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (template, rest) = text.split_once('\0').unwrap_or((&text, ""));
    let add_generation_prompt = data.first().is_some_and(|b| b & 1 == 1);
    let messages: Vec<ChatMessage> = rest
        .split('\x02')
        .filter(|m| !m.is_empty())
        .map(|m| {
            let (role, content) = m.split_once('\x01').unwrap_or(("user", m));
            ChatMessage::new(role, content)
        })
        .collect();
    let mt = model_text(Some(template.to_string()));
    let _ = mt.check_chat_template();
    let boxed = mt.render_chat_in(Some(sandbox()), &messages, add_generation_prompt);
    if let Err(TextError::TemplateRender { reason, .. }) = &boxed {
        if reason.contains("memory budget") || reason.contains("sandbox process") {
            return; // Too hungry (or too slow) to repeat in process.
        }
    }
    let local = mt.render_chat(&messages, add_generation_prompt);
    // strftime_now reads the clock: the two renders may straddle a second.
    if !template.contains("strftime") {
        match (&boxed, &local) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "sandboxed and in-process renders differ"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "the errors differ"),
            _ => panic!("sandboxed {boxed:?} but in process {local:?}"),
        }
    }
    if let Ok(rendered) = local {
        // Short renders also go through the tokenizer, as the router does next.
        if rendered.len() <= 4096 {
            let _ = mt.encode_prompt(&rendered);
        }
    }
}
