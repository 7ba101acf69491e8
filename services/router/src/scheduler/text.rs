//! Text of a request: the [`Detokenizer`] the scheduler feeds generated ids to, and its real
//! implementation [`RequestText`] — the base model's [`StreamDecoder`] (never breaks a UTF-8
//! character) followed by a [`StopMatcher`] (holds back possible stop-string prefixes).

use genarm_text::{ModelText, StopMatcher, StreamDecoder};

/// Turns generated ids into text for one request (incremental detokenization plus stop
/// strings). The real implementation is [`RequestText`].
pub trait Detokenizer: Send + 'static {
    /// Feeds one generated (non-EOS) token; returns text that is now final and whether a stop
    /// string matched (then the text ends right before it and generation stops).
    fn push(&mut self, token: u32) -> TextStep;
    /// Text still held back (an incomplete character or a possible stop-string prefix), released
    /// when generation ends for another reason.
    fn finish(&mut self) -> String;
}

/// What [`Detokenizer::push`] released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextStep {
    /// New final text (possibly empty).
    pub text: String,
    /// A stop string matched: generation ends.
    pub stopped: bool,
}

/// Incremental text of one request.
pub struct RequestText {
    decoder: StreamDecoder,
    stop: StopMatcher,
}

impl RequestText {
    /// Text for ids generated after `prompt` (the base model's prompt ids, used as decoding
    /// context), cut at any of `stops`.
    pub fn new(text: &ModelText, prompt: &[u32], stops: &[String]) -> Self {
        RequestText {
            decoder: text.stream_decoder_after(prompt),
            stop: StopMatcher::new(stops.iter().cloned()),
        }
    }
}

impl Detokenizer for RequestText {
    fn push(&mut self, token: u32) -> TextStep {
        let piece = self.decoder.push(token);
        let out = self.stop.push(&piece);
        TextStep { text: out.emit, stopped: out.stopped }
    }

    fn finish(&mut self) -> String {
        let rest = self.decoder.finish();
        let out = self.stop.push(&rest);
        if out.stopped {
            return out.emit;
        }
        let mut text = out.emit;
        text.push_str(&self.stop.finish());
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_text() -> ModelText {
        let dir = genarm_testkit::fixture_dir("llama-mha");
        let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
        ModelText::new("llama-mha", &json, None, Some(0), vec![0], false).unwrap()
    }

    #[test]
    fn streamed_text_equals_decode_and_stops_cut_it() {
        let mt = model_text();
        let ids = mt.encode_prompt("Hello world, the quick brown fox. Jumps!").unwrap();
        let mut t = RequestText::new(&mt, &[], &[]);
        let mut s = String::new();
        for &id in &ids {
            s.push_str(&t.push(id).text);
        }
        s.push_str(&t.finish());
        assert_eq!(s, mt.decode(&ids).unwrap());

        let mut t = RequestText::new(&mt, &[], &["brown".to_string()]);
        let mut s = String::new();
        let mut stopped = false;
        for &id in &ids {
            let step = t.push(id);
            s.push_str(&step.text);
            if step.stopped {
                stopped = true;
                break;
            }
        }
        assert!(stopped);
        assert_eq!(s, "Hello world, the quick ");
    }
}
