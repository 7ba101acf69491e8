//! The JSON files of a fixture directory: `config.json`, `tokenizer_config.json`,
//! `generation_config.json`, as transformers 5 writes them for Llama/Qwen2.

use serde_json::{json, Map, Value};

use crate::spec::{FixtureRope, FixtureSpec};
use crate::tokenizer::{ENDOFTEXT, IM_END, IM_START};

/// ChatML, as SmolLM2-Instruct and Qwen2 use it (without a default system prompt).
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Token ids the JSON files refer to.
pub(crate) struct SpecialIds {
    pub(crate) endoftext: u32,
    pub(crate) im_start: u32,
    pub(crate) im_end: u32,
}

/// `config.json` for `LlamaForCausalLM` / `Qwen2ForCausalLM`.
pub(crate) fn config(spec: &FixtureSpec, vocab: usize, ids: &SpecialIds) -> Value {
    let mut c = json!({
        "architectures": [spec.architecture()],
        "attention_dropout": 0.0,
        "bos_token_id": ids.endoftext,
        "dtype": "float32",
        "eos_token_id": ids.endoftext,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "model_type": spec.model_type,
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "pad_token_id": ids.endoftext,
        "rms_norm_eps": spec.rms_norm_eps,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": "float32",
        "transformers_version": "5.0.0",
        "use_cache": true,
        "vocab_size": vocab,
    });
    let obj = c.as_object_mut().expect("an object");
    match &spec.rope {
        FixtureRope::Legacy { theta } => {
            obj.insert("rope_theta".into(), json!(theta));
        }
        FixtureRope::Default { theta } => {
            obj.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": theta}));
        }
        FixtureRope::Llama3 { theta, factor, low, high, original_max } => {
            obj.insert(
                "rope_parameters".into(),
                json!({
                    "factor": factor,
                    "high_freq_factor": high,
                    "low_freq_factor": low,
                    "original_max_position_embeddings": original_max,
                    "rope_theta": theta,
                    "rope_type": "llama3",
                }),
            );
        }
    }
    if spec.qkv_bias() {
        let layers = vec!["full_attention"; spec.num_hidden_layers];
        obj.insert("layer_types".into(), json!(layers));
        obj.insert("max_window_layers".into(), json!(spec.num_hidden_layers));
        obj.insert("sliding_window".into(), Value::Null);
        obj.insert("use_sliding_window".into(), json!(false));
    } else {
        obj.insert("attention_bias".into(), json!(false));
        obj.insert("head_dim".into(), json!(spec.head_dim()));
        obj.insert("mlp_bias".into(), json!(false));
        obj.insert("pretraining_tp".into(), json!(1));
    }
    c
}

/// `tokenizer_config.json`: fast tokenizer, ChatML template, no BOS added.
pub(crate) fn tokenizer_config(spec: &FixtureSpec, ids: &SpecialIds) -> Value {
    let added = |content: &str| {
        json!({
            "content": content, "lstrip": false, "normalized": false,
            "rstrip": false, "single_word": false, "special": true,
        })
    };
    json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": {
            ids.endoftext.to_string(): added(ENDOFTEXT),
            ids.im_start.to_string(): added(IM_START),
            ids.im_end.to_string(): added(IM_END),
        },
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": ENDOFTEXT,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": ENDOFTEXT,
        "model_max_length": spec.max_position_embeddings,
        "pad_token": ENDOFTEXT,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": ENDOFTEXT,
    })
}

/// `generation_config.json`.
pub(crate) fn generation_config(ids: &SpecialIds) -> Value {
    json!({
        "_from_model_config": true,
        "bos_token_id": ids.endoftext,
        "eos_token_id": ids.endoftext,
        "pad_token_id": ids.endoftext,
        "transformers_version": "5.0.0",
    })
}

/// Pretty JSON text with object keys sorted, whatever serde_json's `preserve_order` feature
/// (another crate in the build may turn it on), so the bytes never depend on the build.
pub(crate) fn to_text(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<_> = m.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect::<Map<_, _>>())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let mut text = serde_json::to_string_pretty(&sorted(v)).expect("JSON values always serialize");
    text.push('\n');
    text
}
