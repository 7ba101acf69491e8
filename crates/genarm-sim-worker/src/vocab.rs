//! The simulated tokenizer: a word-level vocabulary of exactly V tokens (`t0`, `t1`, …), the
//! same for every simulated model, so that the router's vocabulary check (invariant 6) passes
//! and its detokenizer has real text to stream.

use serde_json::{json, Map, Value};

/// The id that ends generation for the simulated models. No recorded row favours it, so
/// benchmarks generate their full `max_tokens`.
pub const SIM_EOS_ID: u32 = 0;

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
}
