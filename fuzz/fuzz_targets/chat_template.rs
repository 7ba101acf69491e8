//! Hostile chat templates and messages: rendering must return Ok or an error, within the fuel,
//! recursion and output limits (never panic, hang or exhaust memory).
//!
//! Input: `template \0 role \x01 content \x02 role \x01 content ...` (lossy UTF-8); the first byte
//! of the template part also picks `add_generation_prompt` (its low bit).
#![no_main]

use genarm_fuzz::model_text;
use genarm_text::ChatMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
    if let Ok(rendered) = mt.render_chat(&messages, add_generation_prompt) {
        // Short renders also go through the tokenizer, as the router does next.
        if rendered.len() <= 4096 {
            let _ = mt.encode_prompt(&rendered);
        }
    }
});
