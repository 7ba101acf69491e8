//! Streaming detokenization: the concatenation property and no broken characters mid-stream,
//! for the fixtures' byte-level BPE and for a SentencePiece-style (Llama 2) decoder.

mod common;

use std::str::FromStr;
use std::sync::Arc;

use common::{below, fixture_text, SplitMix64};
use genarm_text::StreamDecoder;
use tokenizers::Tokenizer;

/// Pushes `ids` one by one; returns the chunks (the last one from `finish`).
fn stream(decoder: &mut StreamDecoder, ids: &[u32]) -> Vec<String> {
    let mut chunks: Vec<String> = ids.iter().map(|&id| decoder.push(id)).collect();
    chunks.push(decoder.finish());
    chunks
}

#[test]
fn multibyte_text_streams_without_broken_characters() {
    let text = fixture_text("llama-mha", None, false);
    for s in ["café 日本 🙂", "🙂🙂x", "naïve — ok", genarm_testkit::PROMPTS[3], "日本語のテキスト"]
    {
        let ids = text.encode_prompt(s).unwrap();
        let mut decoder = text.stream_decoder();
        let chunks = stream(&mut decoder, &ids);
        assert_eq!(chunks.concat(), s);
        for chunk in &chunks {
            assert!(!chunk.contains('\u{FFFD}'), "{s:?} streamed a broken character: {chunks:?}");
        }
        assert_eq!(chunks.last().unwrap(), "", "nothing left for finish on complete text");
    }
    // The emoji is split over byte tokens, so some pushes must have held text back.
    let ids = text.encode_prompt("🙂").unwrap();
    assert!(ids.len() > 1, "the fixture tokenizer should split 🙂 over bytes: {ids:?}");
    let mut decoder = text.stream_decoder();
    let chunks = stream(&mut decoder, &ids);
    assert!(chunks[..ids.len() - 1].iter().all(String::is_empty), "{chunks:?}");
    assert_eq!(chunks[ids.len() - 1], "🙂");
}

#[test]
fn special_tokens_produce_no_text() {
    let text = fixture_text("llama-mha", None, false);
    let mut decoder = text.stream_decoder();
    assert_eq!(decoder.push(1), "");
    let hello = text.encode_prompt("Hello").unwrap();
    let mut out = String::new();
    for &id in &hello {
        out += &decoder.push(id);
    }
    assert_eq!(decoder.push(0), "");
    assert_eq!(decoder.push(2), "");
    out += &decoder.finish();
    assert_eq!(out, "Hello");
}

#[test]
fn random_ids_concatenate_to_decode() {
    let text = fixture_text("llama-mha", None, false);
    let vocab = text.vocab_size();
    // Byte tokens of multi-byte characters, to make incomplete sequences frequent.
    let bytes: Vec<u32> = text.encode_prompt("é日🙂ïа").unwrap();
    let mut rng = SplitMix64::new(7);
    for case in 0..400 {
        let len = below(&mut rng, 40);
        let ids: Vec<u32> = (0..len)
            .map(|_| {
                if below(&mut rng, 3) == 0 {
                    bytes[below(&mut rng, bytes.len())]
                } else {
                    below(&mut rng, vocab) as u32
                }
            })
            .collect();
        let expected = text.decode(&ids).unwrap();
        let mut decoder = text.stream_decoder();
        let chunks = stream(&mut decoder, &ids);
        assert_eq!(chunks.concat(), expected, "case {case}: {ids:?}");
        for chunk in &chunks[..chunks.len() - 1] {
            assert!(!chunk.ends_with('\u{FFFD}'), "case {case}: a chunk ends in U+FFFD: {chunks:?}");
        }
        // After a prompt as context, the same holds for byte-level BPE.
        let prompt = text.encode_prompt(genarm_testkit::PROMPTS[1]).unwrap();
        let mut decoder = text.stream_decoder_after(&prompt);
        assert_eq!(stream(&mut decoder, &ids).concat(), expected, "case {case} after a prompt");
        // A decoder is reusable after finish.
        assert_eq!(stream(&mut decoder, &ids).concat(), expected, "case {case} reused");
    }
}

/// A SentencePiece-style tokenizer (Llama 2's decoder: `▁` → space, byte fallback, strip the
/// leading space of a decode), where decoding a suffix differs from the suffix of the decode.
fn sentencepiece_tokenizer() -> Arc<Tokenizer> {
    let vocab = serde_json::json!({
        "<unk>": 0, "<s>": 1, "</s>": 2, "▁Hello": 3, "▁world": 4, "!": 5, "▁": 6, "▁Paris": 7,
        "<0xE6>": 8, "<0x97>": 9, "<0xA5>": 10, "<0xF0>": 11, "<0x9F>": 12, "<0x99>": 13, "<0x82>": 14,
        "ing": 15, "<0x41>": 16
    });
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    Arc::new(Tokenizer::from_str(&json.to_string()).unwrap())
}

#[test]
fn sentencepiece_spaces_survive_streaming() {
    let tok = sentencepiece_tokenizer();
    assert_eq!(tok.decode(&[3, 4], true).unwrap(), "Hello world");
    assert_eq!(tok.decode(&[4], true).unwrap(), "world", "decode strips the leading space");
    let mut decoder = StreamDecoder::new(tok.clone());
    let chunks = stream(&mut decoder, &[1, 3, 4, 8, 9, 10, 5, 2]);
    assert_eq!(chunks, ["", "Hello", " world", "", "", "", "日!", "", ""]);
    // After prompt context, the first generated word keeps its space.
    let mut decoder = StreamDecoder::with_context(tok.clone(), &[1, 3, 4]);
    assert_eq!(stream(&mut decoder, &[7, 5]).concat(), " Paris!");
    // An unfinished character comes out as U+FFFD at the end, as decode writes it.
    let mut decoder = StreamDecoder::new(tok.clone());
    let chunks = stream(&mut decoder, &[3, 11, 12]);
    assert_eq!(chunks.concat(), tok.decode(&[3, 11, 12], true).unwrap());
    assert!(chunks[2].is_empty() && chunks[3].contains('\u{FFFD}'), "{chunks:?}");
}

#[test]
fn sentencepiece_random_ids_concatenate_to_decode() {
    let tok = sentencepiece_tokenizer();
    let mut rng = SplitMix64::new(11);
    for case in 0..20_000 {
        let len = below(&mut rng, 12);
        let ids: Vec<u32> = (0..len).map(|_| below(&mut rng, 17) as u32).collect();
        let expected = tok.decode(&ids, true).unwrap();
        let mut decoder = StreamDecoder::new(tok.clone());
        let chunks = stream(&mut decoder, &ids);
        assert_eq!(chunks.concat(), expected, "case {case}: {ids:?} -> {chunks:?}");
    }
}
