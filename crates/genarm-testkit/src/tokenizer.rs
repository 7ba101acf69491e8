//! The fixtures' tokenizer: a small byte-level BPE trained on an embedded English corpus.

use anyhow::{anyhow, ensure, Result};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// Beginning- and end-of-text token (SmolLM2's id 0).
pub const ENDOFTEXT: &str = "<|endoftext|>";
/// ChatML turn opener (id 1).
pub const IM_START: &str = "<|im_start|>";
/// ChatML turn closer (id 2).
pub const IM_END: &str = "<|im_end|>";
/// Size of the trained vocabulary: 3 special tokens, the 256 byte symbols and 253 merges.
pub const TOKENIZER_VOCAB_SIZE: usize = 512;

/// Qwen2's pre-tokenization regex (words, single digits, punctuation runs, whitespace).
const SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The training text (a few KB of English with digits, code, punctuation and non-ASCII words).
const CORPUS: &str = include_str!("corpus.txt");

/// Trains the fixtures' tokenizer. Deterministic: the same JSON on every run and platform.
///
/// Byte-level BPE set up exactly like Qwen2's `tokenizer.json` (NFC, Qwen2's split regex with
/// single digits, then ByteLevel without prefix space; ByteLevel decoder and post-processor), so
/// transformers 5, which rebuilds that pipeline for `model_type: qwen2` whatever the file says,
/// tokenizes every fixture as the file does. No BOS is added, and `decode(encode(text)) == text`
/// for NFC text. The special tokens take ids 0, 1, 2 and always encode as single tokens.
pub fn train_tokenizer() -> Result<Tokenizer> {
    let byte_level = ByteLevel::new(false, false, false);
    let split = Split::new(SplitPattern::Regex(SPLIT_REGEX.into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| anyhow!("compiling the split regex: {e}"))?;
    let specials: Vec<AddedToken> =
        [ENDOFTEXT, IM_START, IM_END].into_iter().map(|t| AddedToken::from(t, true)).collect();
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(TOKENIZER_VOCAB_SIZE)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer
        .with_normalizer(Some(NFC))
        .map_err(|e| anyhow!("setting the normalizer: {e}"))?
        .with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])))
        .with_post_processor(Some(byte_level))
        .with_decoder(Some(byte_level));
    tokenizer
        .train(&mut trainer, CORPUS.lines())
        .map_err(|e| anyhow!("training the fixture tokenizer: {e}"))?;
    let size = tokenizer.get_vocab_size(true);
    ensure!(
        size == TOKENIZER_VOCAB_SIZE,
        "the corpus yields {size} tokens, not {TOKENIZER_VOCAB_SIZE}; lengthen src/corpus.txt"
    );
    Ok(tokenizer)
}

/// The trained tokenizer as `tokenizer.json` text (pretty-printed, newline-terminated).
pub(crate) fn tokenizer_json(tokenizer: &Tokenizer) -> Result<String> {
    let mut json =
        tokenizer.to_string(true).map_err(|e| anyhow!("serializing the fixture tokenizer: {e}"))?;
    json.push('\n');
    Ok(json)
}

/// Id of a token that the trained tokenizer is known to hold.
pub(crate) fn id_of(tokenizer: &Tokenizer, token: &str) -> Result<u32> {
    tokenizer.token_to_id(token).ok_or_else(|| anyhow!("the fixture tokenizer lacks {token}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_is_deterministic() {
        let a = tokenizer_json(&train_tokenizer().unwrap()).unwrap();
        let b = tokenizer_json(&train_tokenizer().unwrap()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn special_tokens_are_single_ids() {
        let tok = train_tokenizer().unwrap();
        for (i, t) in [ENDOFTEXT, IM_START, IM_END].into_iter().enumerate() {
            assert_eq!(tok.token_to_id(t), Some(i as u32));
        }
        let enc = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
        assert_eq!(enc.get_ids()[0], 1);
        assert_eq!(*enc.get_ids().last().unwrap(), 2);
        assert_eq!(enc.get_ids().iter().filter(|&&id| id < 3).count(), 2);
    }

    #[test]
    fn round_trips_text_including_non_ascii() {
        let tok = train_tokenizer().unwrap();
        for text in [
            "Hello, world!",
            "A naïve café in 日本 costs 3.49 €; Zürich 🙂.",
            " leading and  double  spaces\nand\ttabs ",
            "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n",
        ] {
            let ids = tok.encode(text, true).unwrap().get_ids().to_vec();
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
    }

    #[test]
    fn adds_no_bos() {
        let tok = train_tokenizer().unwrap();
        let ids = tok.encode("Hello", true).unwrap().get_ids().to_vec();
        assert!(!ids.contains(&0), "{ids:?}");
    }
}
