//! Arbitrary generated ids (in or out of the vocabulary, byte-fallback runs, special tokens)
//! through `StreamDecoder` and `StopMatcher`: never panics, and without prompt context the streamed
//! pieces plus `finish` concatenate to `decode(generated ids)` (the decoder's documented contract).
//!
//! Input: byte 0 = number of prompt ids (low 3 bits) and whether to use them as context (bit 3);
//! byte 1 = stop-string bytes length, then the stop strings (`\n`-separated), then ids as u32 LE
//! (ids are taken modulo 2 * vocab when bit 4 of byte 0 is set, so most are in range).

use crate::{shared_text, Bytes};
use genarm_text::StopMatcher;

/// Runs one input of the `detokenize` target (panics on a finding).
pub fn detokenize(data: &[u8]) {
    let mt = shared_text();
    let mut b = Bytes(data);
    let flags = b.u8();
    let stop_len = b.u8() as usize;
    let stops_text = String::from_utf8_lossy(b.take(stop_len)).into_owned();
    let stops: Vec<String> = stops_text.split('\n').filter(|s| !s.is_empty()).map(str::to_string).collect();
    let vocab = mt.vocab_size().max(1) as u32;
    let mut ids = Vec::new();
    while !b.is_empty() {
        let id = b.u32();
        ids.push(if flags & 0x10 != 0 { id % (2 * vocab) } else { id });
    }
    let n_prompt = ((flags & 7) as usize).min(ids.len());
    let (prompt, generated) = ids.split_at(n_prompt);
    let mut decoder = if flags & 8 != 0 { mt.stream_decoder_after(prompt) } else { mt.stream_decoder() };
    let mut matcher = StopMatcher::new(stops.iter().map(String::as_str));
    let mut streamed = String::new();
    for &id in generated {
        let piece = decoder.push(id);
        streamed.push_str(&piece);
        if !matcher.is_stopped() {
            let _ = matcher.push(&piece);
        }
    }
    let tail = decoder.finish();
    streamed.push_str(&tail);
    if flags & 8 == 0 {
        if let Ok(whole) = mt.decode(generated) {
            assert_eq!(streamed, whole, "streamed text differs from decode({generated:?})");
        }
    }
    let _ = matcher.push(&tail);
    let _ = matcher.finish();
    let _ = decoder.has_pending();
}
