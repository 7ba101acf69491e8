//! The simulated tokenizer: a word-level vocabulary of exactly V tokens (`t0`, `t1`, …), the
//! same for every simulated model, so that the router's vocabulary check (invariant 6) passes
//! and its detokenizer has real text to stream.

use serde_json::{json, Map, Value};

/// The id that ends generation for the simulated models. No recorded row favours it, so
/// benchmarks generate their full `max_tokens`.
pub const SIM_EOS_ID: u32 = 0;

/// The simulated models' chat template (reported in `Info`, so the router serves
/// `/v1/chat/completions` over them as over a real model): each message as `<role> <content>`,
/// then `assistant` for the generation prompt. Words outside `t0 … t{V-1}` encode as `t0`.
pub const SIM_CHAT_TEMPLATE: &str = "{% for m in messages %}{{ m.role }} {{ m.content }}\n{% endfor %}\
{% if add_generation_prompt %}assistant {% endif %}";

/// The `tokenizer.json` of a word-level tokenizer with tokens `t0 … t{V-1}` (whitespace
/// pre-tokenization, unknown words map to `t0`).
pub fn tokenizer_json(vocab: usize) -> String {
    let mut words = Map::with_capacity(vocab);
    for id in 0..vocab {
        words.insert(format!("t{id}"), Value::from(id));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "t0"}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokenizer_has_exactly_v_tokens_and_round_trips_words() {
        let json = tokenizer_json(1000);
        let text = genarm_text::ModelText::new("sim", &json, None, None, vec![SIM_EOS_ID], false).unwrap();
        assert_eq!(text.vocab_size(), 1000);
        assert_eq!(text.encode_prompt("t5 t999 t17").unwrap(), vec![5, 999, 17]);
        assert_eq!(
            text.fingerprint(1000),
            genarm_text::ModelText::new("x", &json, None, None, vec![], false).unwrap().fingerprint(1000)
        );
    }

    #[test]
    fn the_chat_template_renders_roles_and_contents_and_the_generation_prompt() {
        let json = tokenizer_json(100);
        let text =
            genarm_text::ModelText::new("sim", &json, Some(SIM_CHAT_TEMPLATE.into()), None, vec![0], false)
                .unwrap();
        let messages =
            [genarm_text::ChatMessage::new("system", "t3"), genarm_text::ChatMessage::new("user", "t5 t7")];
        let rendered = text.render_chat(&messages, true).unwrap();
        assert_eq!(rendered, "system t3\nuser t5 t7\nassistant ");
        assert_eq!(text.encode_prompt("t5 t7 t99").unwrap(), vec![5, 7, 99]);
        assert_eq!(text.render_chat(&messages[1..], false).unwrap(), "user t5 t7\n");
    }
}
