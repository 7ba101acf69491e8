//! `StreamDecoder`: incremental detokenization for streaming, never emitting a broken UTF-8
//! sequence (the prefix-offset/read-offset technique of TGI and vLLM).

use std::sync::Arc;

use tokenizers::Tokenizer;

/// How many prompt ids [`StreamDecoder::with_context`] decodes as context.
const CONTEXT_IDS: usize = 5;

/// Turns generated ids into text one id at a time.
///
/// It keeps a window of ids: those already emitted as text since `prefix_offset` (context) and
/// those not yet emitted since `read_offset`. Each push decodes the window with and without the
/// unemitted ids and emits the difference — so tokenizers whose decode of a suffix differs from
/// the suffix of the decode (SentencePiece's leading spaces) come out right — but only once the
/// decoded window no longer ends in U+FFFD (a multi-byte character split over byte-level tokens
/// is held back until it is complete, and so is a run of SentencePiece byte-fallback tokens
/// `<0xXX>` until it ends). Special tokens (EOS, `<|im_end|>`, ...) produce no text.
///
/// For byte-level BPE tokenizers the concatenation of every [`StreamDecoder::push`] and the
/// final [`StreamDecoder::finish`] equals `tokenizer.decode(ids, true)`.
#[derive(Clone)]
pub struct StreamDecoder {
    tokenizer: Arc<Tokenizer>,
    /// The window: context ids followed by unemitted ids.
    ids: Vec<u32>,
    /// Start of the not-yet-emitted ids in `ids`.
    read_offset: usize,
    /// `decode(ids[..read_offset])`: the context's text.
    prefix_text: String,
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("ids", &self.ids)
            .field("read_offset", &self.read_offset)
            .field("prefix_text", &self.prefix_text)
            .finish()
    }
}

impl StreamDecoder {
    /// A decoder for ids generated from nothing: its output concatenates to
    /// `decode(generated ids)`.
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        StreamDecoder { tokenizer, ids: Vec::new(), read_offset: 0, prefix_text: String::new() }
    }

    /// A decoder for ids generated after `prompt_ids`: the last few prompt ids serve as context
    /// (never emitted), so the first generated token decodes as it does after the prompt (a
    /// SentencePiece `▁Paris` keeps its space). Without usable context (an empty prompt, or one
    /// whose tail does not decode to complete characters) this is [`StreamDecoder::new`].
    pub fn with_context(tokenizer: Arc<Tokenizer>, prompt_ids: &[u32]) -> Self {
        let mut decoder = StreamDecoder::new(tokenizer);
        let context = &prompt_ids[prompt_ids.len().saturating_sub(CONTEXT_IDS)..];
        let text = decoder.decode(context);
        if !context.is_empty() && !text.is_empty() && !text.ends_with('\u{FFFD}') {
            decoder.ids = context.to_vec();
            decoder.read_offset = context.len();
            decoder.prefix_text = text;
        }
        decoder
    }

    /// Adds one generated id; returns the text it completes (often all of its text, empty while
    /// a character is incomplete or for a special token). Never ends in a partial character.
    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        match self.tokenizer.id_to_token(id) {
            // Special tokens and unknown ids add no text (they are skipped by decode, so byte
            // runs around them join up).
            None => return String::new(),
            Some(t) if self.tokenizer.get_added_vocabulary().is_special_token(&t) => return String::new(),
            // SentencePiece byte fallback decodes a run of byte tokens together (an invalid run
            // becomes one U+FFFD per byte, even for bytes that alone were valid text), so text
            // ending in a byte token may still change: wait for the run to end.
            Some(t) if is_byte_fallback(&t) => return String::new(),
            Some(_) => {}
        }
        let text = self.decode(&self.ids);
        if text.len() <= self.prefix_text.len() || text.ends_with('\u{FFFD}') {
            return String::new();
        }
        let Some(new) = new_suffix(&text, &self.prefix_text) else {
            return String::new();
        };
        let new = new.to_string();
        // The just-emitted ids become the context of the next push.
        self.ids.drain(..self.read_offset);
        self.read_offset = self.ids.len();
        self.prefix_text = self.decode(&self.ids);
        new
    }

    /// Flushes the text held back (an incomplete character comes out as U+FFFD, as `decode`
    /// writes it) and resets the decoder to empty, without context.
    pub fn finish(&mut self) -> String {
        let text = self.decode(&self.ids);
        let rest =
            if text.len() > self.prefix_text.len() { new_suffix(&text, &self.prefix_text) } else { None };
        let rest = rest.unwrap_or_default().to_string();
        self.ids.clear();
        self.read_offset = 0;
        self.prefix_text.clear();
        rest
    }

    /// Whether ids are held back waiting for more (their text not yet emitted).
    pub fn has_pending(&self) -> bool {
        self.ids.len() > self.read_offset
    }

    /// Decodes without special tokens. The tokenizers library's decoders do not fail on ids of
    /// the vocabulary; an error (or an unknown id) yields the text of the other ids.
    fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }
}

/// Whether `token` is a SentencePiece byte-fallback token (`<0xE6>`).
fn is_byte_fallback(token: &str) -> bool {
    let b = token.as_bytes();
    b.len() == 6 && b.starts_with(b"<0x") && b[5] == b'>' && b[3..5].iter().all(u8::is_ascii_hexdigit)
}

/// The part of `text` after the context's text `prefix`: `text` should start with `prefix`; if a
/// decoder rewrote the context, the text past `prefix`'s length (as vLLM does), if that is a
/// character boundary.
fn new_suffix<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    match text.strip_prefix(prefix) {
        Some(rest) => Some(rest),
        None => text.get(prefix.len()..),
    }
}
