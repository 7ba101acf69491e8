//! Prompt encoding (special tokens, the BOS rule), decoding and the vocabulary accessors.

mod common;

use common::{fixture_text, tokenizer_json};
use genarm_text::{vocab_fingerprint, ModelText};

#[test]
fn special_tokens_in_text_are_single_ids_and_no_bos_is_added() {
    let text = fixture_text("llama-mha", None, false);
    assert_eq!(text.encode_prompt("<|im_start|>").unwrap(), vec![1]);
    assert_eq!(text.encode_prompt("<|im_start|>user<|im_end|>").unwrap()[0], 1);
    let ids = text.encode_prompt(genarm_testkit::PROMPTS[2]).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 2);
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 1);
    for prompt in genarm_testkit::PROMPTS {
        let ids = text.encode_prompt(prompt).unwrap();
        assert_eq!(ids, text.tokenizer().encode(*prompt, false).unwrap().get_ids(), "{prompt}");
        assert_ne!(ids[0], 0, "no BOS for the fixtures");
        assert_eq!(text.tokenizer().decode(&ids, false).unwrap(), *prompt);
    }
    assert_eq!(text.encode_prompt("").unwrap(), Vec::<u32>::new());
}

#[test]
fn add_bos_token_prepends_exactly_one_bos() {
    let text = fixture_text("llama-mha", None, true);
    let plain = fixture_text("llama-mha", None, false);
    let ids = text.encode_prompt("Hello").unwrap();
    assert_eq!(ids[0], 0);
    assert_eq!(&ids[1..], plain.encode_prompt("Hello").unwrap());
    // A prompt (or template) that writes BOS itself does not get a second one.
    let ids = text.encode_prompt("<|endoftext|>Hello").unwrap();
    assert_eq!(ids, [vec![0], plain.encode_prompt("Hello").unwrap()].concat());
    assert_eq!(text.encode_prompt("").unwrap(), vec![0]);
    // Without a BOS id there is nothing to prepend.
    let no_bos = ModelText::new("m", &tokenizer_json("llama-mha"), None, None, vec![0], true).unwrap();
    assert_eq!(no_bos.encode_prompt("Hello").unwrap(), plain.encode_prompt("Hello").unwrap());
}

#[test]
fn truncation_and_padding_in_tokenizer_json_are_ignored() {
    let mut json: serde_json::Value = serde_json::from_str(&tokenizer_json("llama-mha")).unwrap();
    json["truncation"] =
        serde_json::json!({"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0});
    json["padding"] = serde_json::json!({"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null,
        "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"});
    let text = ModelText::new("m", &json.to_string(), None, Some(0), vec![0], false).unwrap();
    let prompt = genarm_testkit::PROMPTS[3];
    let ids = text.encode_prompt(prompt).unwrap();
    assert_eq!(text.decode(&ids).unwrap(), prompt);
}

#[test]
fn bad_tokenizer_json_names_the_model() {
    let err = ModelText::new("broken-model", "{not json", None, None, vec![], false).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("broken-model") && msg.contains("tokenizer.json"), "{msg}");
    assert!(!err.is_client_error());
}

#[test]
fn vocabulary_accessors() {
    let text = fixture_text("qwen2-bias", None, false);
    assert_eq!(text.model(), "qwen2-bias");
    assert_eq!(text.vocab_size(), genarm_testkit::TOKENIZER_VOCAB_SIZE);
    assert_eq!(text.fingerprint(512), vocab_fingerprint(text.tokenizer(), 512));
    assert_eq!(text.fingerprint(512), fixture_text("llama-mha", None, false).fingerprint(512));
    assert_ne!(text.fingerprint(512), text.fingerprint(511));
    assert!(text.is_eos(0) && !text.is_eos(1) && !text.is_eos(2));
    assert_eq!(text.eos_token_ids(), &[0]);
    assert_eq!(text.bos_token_id(), Some(0));
    assert!(!text.add_bos_token());
    assert_eq!(text.token_text(1).unwrap(), "<|im_start|>");
    let ids = text.encode_prompt(genarm_testkit::PROMPTS[2]).unwrap();
    assert_eq!(text.decode(&ids).unwrap(), "user\nWhat is 12 + 30?\nassistant\n");
}
