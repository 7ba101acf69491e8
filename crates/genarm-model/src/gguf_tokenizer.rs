//! Rebuilds a model's `tokenizers::Tokenizer` (and its chat template, BOS/EOS ids) from the
//! tokenizer metadata llama.cpp stores in a GGUF file, since a GGUF carries no `tokenizer.json`.
//!
//! Supported: byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`) with the
//! pre-tokenizers (`tokenizer.ggml.pre`) `default`/`gpt2`, `smollm`, `llama-bpe` (Llama 3) and
//! `qwen2`. Each is built to reproduce the model's original HF `tokenizer.json`, which is also
//! what llama.cpp's own pre-tokenizer regexes implement. SentencePiece vocabularies
//! (`tokenizer.ggml.model = "llama"`) are refused with a clear error.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::assets::TokenizerAssets;
use crate::error::{ModelError, Result};

/// llama.cpp's token types (`tokenizer.ggml.token_type`): a control token such as `<|im_start|>`.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// llama.cpp's token types: a user-defined added token such as `<think>`.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama 3's split regex, as in its `tokenizer.json` (llama.cpp's `LLAMA3` pre-tokenizer).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex, as in its `tokenizer.json` (llama.cpp's `QWEN2` pre-tokenizer).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values this module knows how to rebuild.
const SUPPORTED_PRE: &str = "default, gpt2, smollm, llama-bpe (llama3, llama-v3), qwen2 (deepseek-r1-qwen)";

/// Builds the tokenizer, chat template and special-token ids described by a GGUF file's
/// metadata. `path` names the file in error messages.
///
/// * Vocabulary and merges come from `tokenizer.ggml.tokens` and `tokenizer.ggml.merges`.
/// * Tokens typed control (3) become special added tokens, user-defined ones (4) plain added
///   tokens, so both always encode as single ids.
/// * No BOS is added when encoding unless `tokenizer.ggml.add_bos_token` is true (then a
///   `TemplateProcessing` prepends it); likewise EOS with `tokenizer.ggml.add_eos_token`.
/// * EOS ids are `tokenizer.ggml.eos_token_id` followed by `eot_token_id` and `eom_token_id`
///   when present: llama.cpp ends generation on any of them.
pub fn from_metadata(metadata: &HashMap<String, Value>, path: &Path) -> Result<TokenizerAssets> {
    let err = |msg: String| ModelError::Tokenizer(format!("{}: {msg}", path.display()));
    let model = match metadata.get("tokenizer.ggml.model") {
        Some(v) => string_of(v).ok_or_else(|| err("tokenizer.ggml.model is not a string".into()))?,
        None => return Err(err("the GGUF file has no tokenizer (tokenizer.ggml.model is missing)".into())),
    };
    match model {
        "gpt2" => {}
        "llama" => return Err(err(
            "SentencePiece tokenizers (tokenizer.ggml.model = \"llama\") in GGUF files are not supported; \
                 serve this model from its HF directory instead"
                .into(),
        )),
        other => {
            return Err(err(format!(
                "tokenizer.ggml.model {other:?} is not supported (supported: \"gpt2\", byte-level BPE)"
            )))
        }
    }

    let tokens = string_array(metadata, "tokenizer.ggml.tokens").map_err(&err)?;
    let merges = string_array(metadata, "tokenizer.ggml.merges")
        .map_err(&err)?
        .into_iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_owned(), b.to_owned())),
            None => Err(err(format!("tokenizer.ggml.merges holds {m:?}, which is not a pair \"a b\""))),
        })
        .collect::<Result<Vec<_>>>()?;
    let token_types: Vec<i64> = match metadata.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a
            .iter()
            .map(int_of)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| err("tokenizer.ggml.token_type holds non-integers".into()))?,
        Some(_) => return Err(err("tokenizer.ggml.token_type is not an array".into())),
        None => Vec::new(),
    };
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        return Err(err(format!(
            "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
            token_types.len(),
            tokens.len()
        )));
    }

    let pre = match metadata.get("tokenizer.ggml.pre") {
        Some(v) => string_of(v).ok_or_else(|| err("tokenizer.ggml.pre is not a string".into()))?,
        None => {
            tracing::warn!(
                "{}: no tokenizer.ggml.pre; assuming GPT-2's pre-tokenizer (\"default\")",
                path.display()
            );
            "default"
        }
    };
    let pipeline = Pipeline::for_pre(pre).map_err(&err)?;

    // In a byte-level vocabulary every token is spelled in GPT-2's byte alphabet; llama.cpp's
    // converter writes some added tokens in plain text, so respell those.
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Vocab::default();
    for (id, token) in tokens.iter().enumerate() {
        let key = if in_alphabet(token) { token.clone() } else { byte_level_spelling(token) };
        vocab.insert(key, id as u32);
    }
    if vocab.len() != tokens.len() {
        tracing::warn!(
            "{}: tokenizer.ggml.tokens holds {} duplicate spellings; the later ids win",
            path.display(),
            tokens.len() - vocab.len()
        );
    }

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pipeline.ignore_merges)
        .build()
        .map_err(|e| err(format!("building the BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    if pipeline.nfc {
        tokenizer.with_normalizer(Some(NFC)).map_err(|e| err(format!("setting the normalizer: {e}")))?;
    }
    tokenizer.with_pre_tokenizer(Some(pipeline.pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens become special added tokens; user-defined ones plain added tokens. As in
    // transformers, a "control" token spelled outside the byte alphabet is a llama.cpp mislabel
    // of an ordinary vocabulary entry, and is left alone.
    let mut specials = Vec::new();
    let mut user_defined = Vec::new();
    for (token, &ty) in tokens.iter().zip(&token_types) {
        if ty == TOKEN_TYPE_CONTROL && in_alphabet(token) {
            specials.push(AddedToken::from(token.clone(), true));
        } else if ty == TOKEN_TYPE_USER_DEFINED && in_alphabet(token) {
            user_defined.push(AddedToken::from(token.clone(), false).normalized(false));
        }
    }
    tokenizer.add_special_tokens(specials).map_err(|e| err(format!("adding control tokens: {e}")))?;
    tokenizer.add_tokens(user_defined).map_err(|e| err(format!("adding user-defined tokens: {e}")))?;

    let token_id = |key: &str| -> Result<Option<u32>> {
        match metadata.get(key) {
            None => Ok(None),
            Some(v) => {
                let id = int_of(v)
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| err(format!("{key} is not a token id: {v:?}")))?;
                if id as usize >= tokens.len() {
                    return Err(err(format!(
                        "{key} = {id} is outside the vocabulary of {} tokens",
                        tokens.len()
                    )));
                }
                Ok(Some(id))
            }
        }
    };
    let bos_token_id = token_id("tokenizer.ggml.bos_token_id")?;
    let eos_token_id = token_id("tokenizer.ggml.eos_token_id")?;
    let mut eos_token_ids: Vec<u32> = Vec::new();
    for id in
        [eos_token_id, token_id("tokenizer.ggml.eot_token_id")?, token_id("tokenizer.ggml.eom_token_id")?]
            .into_iter()
            .flatten()
    {
        if !eos_token_ids.contains(&id) {
            eos_token_ids.push(id);
        }
    }

    let flag = |key: &str| -> Result<bool> {
        match metadata.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(err(format!("{key} is not a bool: {v:?}"))),
        }
    };
    let add_bos_token = flag("tokenizer.ggml.add_bos_token")?;
    let add_eos_token = flag("tokenizer.ggml.add_eos_token")?;
    let named = |id: Option<u32>, what: &str| -> Result<(String, u32)> {
        let id = id.ok_or_else(|| {
            err(format!("tokenizer.ggml.add_{what}_token is set but there is no {what} token id"))
        })?;
        Ok((tokens[id as usize].clone(), id))
    };
    let bos = if add_bos_token { Some(named(bos_token_id, "bos")?) } else { None };
    let eos = if add_eos_token { Some(named(eos_token_id, "eos")?) } else { None };
    if bos.is_some() || eos.is_some() {
        tokenizer.with_post_processor(Some(template(bos, eos).map_err(&err)?));
    }

    let chat_template = match metadata.get("tokenizer.chat_template") {
        None => None,
        Some(v) => Some(
            string_of(v).ok_or_else(|| err("tokenizer.chat_template is not a string".into()))?.to_owned(),
        ),
    };
    let json = tokenizer.to_string(false).map_err(|e| err(format!("serializing the tokenizer: {e}")))?;
    Ok(TokenizerAssets { tokenizer, json, chat_template, bos_token_id, eos_token_ids, add_bos_token })
}

/// The normalizer, pre-tokenizer and BPE options that reproduce one `tokenizer.ggml.pre`.
struct Pipeline {
    nfc: bool,
    pre_tokenizer: PreTokenizerWrapper,
    ignore_merges: bool,
}

impl Pipeline {
    fn for_pre(pre: &str) -> std::result::Result<Self, String> {
        let split = |regex: &str| -> std::result::Result<PreTokenizerWrapper, String> {
            let split =
                Split::new(SplitPattern::Regex(regex.into()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(|e| format!("compiling the {pre} split regex: {e}"))?;
            // The regex did the splitting; ByteLevel only maps bytes to the alphabet.
            Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
        };
        Ok(match pre {
            // GPT-2: the byte-level pre-tokenizer with its built-in regex, no prefix space.
            "default" | "gpt2" => Self {
                nfc: false,
                pre_tokenizer: ByteLevel::new(false, true, true).into(),
                ignore_merges: false,
            },
            // SmolLM/SmolLM2 (StarCoder lineage): each digit on its own, then GPT-2's regex.
            // llama.cpp's SMOLLM does the same (`\p{N}`, then the GPT-2 regex).
            "smollm" => Self {
                nfc: false,
                pre_tokenizer: Sequence::new(vec![
                    Digits::new(true).into(),
                    ByteLevel::new(false, true, true).into(),
                ])
                .into(),
                ignore_merges: false,
            },
            // Llama 3: its split regex, byte mapping without regex, and whole-word vocabulary hits
            // before merges (`ignore_merges`, as in its tokenizer.json and in llama.cpp).
            "llama-bpe" | "llama3" | "llama-v3" => {
                Self { nfc: false, pre_tokenizer: split(LLAMA3_SPLIT)?, ignore_merges: true }
            }
            // Qwen2: NFC, then its split regex (single digits), as in its tokenizer.json.
            "qwen2" | "deepseek-r1-qwen" => {
                Self { nfc: true, pre_tokenizer: split(QWEN2_SPLIT)?, ignore_merges: false }
            }
            other => {
                return Err(format!(
                    "tokenizer.ggml.pre {other:?} is not supported (supported: {SUPPORTED_PRE})"
                ))
            }
        })
    }
}

/// A post-processor that puts `bos` before and `eos` after each sequence.
fn template(
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
) -> std::result::Result<TemplateProcessing, String> {
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Vec::new();
    for (seq, type_id) in [("$A", 0), ("$B", 1)] {
        if let Some((t, _)) = &bos {
            pair.push(format!("{t}:{type_id}"));
        }
        pair.push(format!("{seq}:{type_id}"));
        if let Some((t, _)) = &eos {
            pair.push(format!("{t}:{type_id}"));
        }
    }
    if let Some((t, id)) = &bos {
        single.push(t.clone());
        specials.push((t.clone(), *id));
    }
    single.push("$A".to_owned());
    if let Some((t, id)) = &eos {
        single.push(t.clone());
        if !specials.iter().any(|(s, _)| s == t) {
            specials.push((t.clone(), *id));
        }
    }
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| format!("building the BOS/EOS template: {e}"))?
        .special_tokens(specials)
        .build()
        .map_err(|e| format!("building the BOS/EOS template: {e}"))
}

/// `token`'s UTF-8 bytes spelled in GPT-2's byte alphabet (`" a"` → `"Ġa"`).
fn byte_level_spelling(token: &str) -> String {
    let mut pretok = tokenizers::PreTokenizedString::from(token);
    let bl = ByteLevel::new(false, false, false);
    if tokenizers::PreTokenizer::pre_tokenize(&bl, &mut pretok).is_err() {
        return token.to_owned();
    }
    pretok
        .get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Byte)
        .into_iter()
        .map(|(s, _, _)| s)
        .collect()
}

/// The string in `v`, if it is one.
fn string_of(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// The integer in `v`, whatever its width.
pub(crate) fn int_of(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

/// The array of strings under `key`.
fn string_array(metadata: &HashMap<String, Value>, key: &str) -> std::result::Result<Vec<String>, String> {
    match metadata.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| string_of(v).map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("{key} holds non-strings")),
        Some(_) => Err(format!("{key} is not an array")),
        None => Err(format!("{key} is missing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The SmolLM2 GGUF written by `scripts/fetch-smollm2.sh`; a missing file fails the test.
    fn smollm2_path() -> PathBuf {
        genarm_testkit::smollm2::gguf_path().unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn smollm2() -> TokenizerAssets {
        let path = smollm2_path();
        let content = crate::gguf::read_header(&path).unwrap();
        from_metadata(&content.metadata, &path).unwrap()
    }

    fn ids(t: &TokenizerAssets, text: &str) -> Vec<u32> {
        t.tokenizer.encode(text, true).unwrap().get_ids().to_vec()
    }

    #[test]
    fn smollm2_special_tokens_are_single() {
        let t = smollm2();
        assert_eq!(ids(&t, "<|im_start|>"), vec![1]);
        let chat = ids(&t, "<|im_start|>user\nHi<|im_end|>\n");
        assert_eq!(chat.first(), Some(&1));
        assert_eq!(chat.iter().filter(|&&i| i == 1 || i == 2).count(), 2, "{chat:?}");
        assert_eq!(t.bos_token_id, Some(1));
        assert_eq!(t.eos_token_ids, vec![2]);
        assert!(!t.add_bos_token);
        let template = t.chat_template.as_deref().unwrap();
        assert!(template.contains("<|im_start|>"), "{template}");
    }

    #[test]
    fn smollm2_digits_are_split() {
        let t = smollm2();
        let five = ids(&t, "12345");
        assert_eq!(five.len(), 5, "{five:?}");
        let digits: Vec<u32> =
            "12345".chars().map(|c| t.tokenizer.token_to_id(&c.to_string()).unwrap()).collect();
        assert_eq!(five, digits);
        // Digits split first, so a run of spaces before a digit stays one pre-token ("ĠĠ"),
        // as in SmolLM2's tokenizer.json and llama.cpp; GPT-2's regex alone would give Ġ, Ġ.
        let spaces = ids(&t, "a  1");
        assert_eq!(spaces.len(), 3, "{spaces:?}");
    }

    #[test]
    fn smollm2_adds_no_bos() {
        let t = smollm2();
        let hello = ids(&t, "Hello");
        assert!(!hello.contains(&0) && !hello.contains(&1), "{hello:?}");
        assert_eq!(hello.len(), 1, "{hello:?}");
    }

    #[test]
    fn smollm2_round_trips() {
        let t = smollm2();
        for text in [
            "Hello, world! The year is 2024.",
            "  leading spaces,\ttabs\nand newlines\n\n",
            "Ünïcödé: naïve café, 日本語, Zürich 🙂, Ελληνικά.",
            "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n",
        ] {
            let ids = ids(&t, text);
            assert_eq!(t.tokenizer.decode(&ids, false).unwrap(), text);
        }
    }

    #[test]
    fn smollm2_json_reloads_identically() {
        let t = smollm2();
        let reloaded: Tokenizer = t.json.parse().unwrap();
        let text = "<|im_start|>system\nYou are 1 2 3 helpful.<|im_end|> ünï";
        assert_eq!(
            reloaded.encode(text, true).unwrap().get_ids(),
            t.tokenizer.encode(text, true).unwrap().get_ids()
        );
    }

    #[test]
    fn smollm2_config() {
        let path = smollm2_path();
        let assets = crate::gguf::open(&path).unwrap();
        let c = &assets.config;
        assert_eq!(c.model_type, "llama");
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads),
            (576, 30, 9, 3)
        );
        assert_eq!((c.vocab_size, c.intermediate_size, c.head_dim), (49152, 1536, 64));
        assert!(c.tie_word_embeddings && !c.qkv_bias);
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.max_position_embeddings, 8192);
        assert_eq!(assets.model_id, "smollm2-135m-instruct");
    }

    fn metadata(pre: &str, model: &str) -> HashMap<String, Value> {
        let s = |x: &str| Value::String(x.into());
        let tokens = ["<s>", "a", "b", "ab", "Ġ", "1"];
        HashMap::from([
            ("tokenizer.ggml.model".into(), s(model)),
            ("tokenizer.ggml.pre".into(), s(pre)),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().map(|t| s(t)).collect())),
            ("tokenizer.ggml.merges".into(), Value::Array(vec![s("a b")])),
            ("tokenizer.ggml.token_type".into(), Value::Array([3, 1, 1, 1, 1, 1].map(Value::I32).to_vec())),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ])
    }

    #[test]
    fn unknown_pre_and_model_are_named() {
        let e = from_metadata(&metadata("mystery", "gpt2"), Path::new("m.gguf")).unwrap_err().to_string();
        assert!(e.contains("mystery") && e.contains("m.gguf") && e.contains("smollm"), "{e}");
        let e = from_metadata(&metadata("default", "llama"), Path::new("m.gguf")).unwrap_err().to_string();
        assert!(e.contains("SentencePiece"), "{e}");
    }

    #[test]
    fn add_bos_token_adds_bos() {
        let mut md = metadata("default", "gpt2");
        let t = from_metadata(&md, Path::new("m.gguf")).unwrap();
        assert_eq!(ids(&t, "ab"), vec![3]);
        md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        let t = from_metadata(&md, Path::new("m.gguf")).unwrap();
        assert!(t.add_bos_token);
        assert_eq!(ids(&t, "ab"), vec![0, 3]);
        assert_eq!(t.tokenizer.encode("ab", false).unwrap().get_ids(), &[3]);
    }

    #[test]
    fn every_supported_pre_builds() {
        for pre in ["default", "gpt2", "smollm", "llama-bpe", "qwen2"] {
            let t = from_metadata(&metadata(pre, "gpt2"), Path::new("m.gguf")).unwrap();
            assert_eq!(ids(&t, "ab a1"), vec![3, 4, 1, 5], "{pre}");
        }
    }
}
