//! An incremental server-sent-events parser (the parts of the WHATWG event-stream format an
//! OpenAI stream uses): bytes arrive in arbitrary pieces, complete events come out. The one SSE
//! parser outside the router: `genarm bench` and the tests (genarm-testkit's `EventStream`) use it.
//!
//! Lines end with `\n`, `\r\n` or `\r`; a blank line dispatches the event; `data:` lines are
//! joined with `\n` (one optional space after the colon is dropped); comment lines (`:`) and the
//! `event`, `id` and `retry` fields are skipped; an event without data is not dispatched.

/// Parser state: the bytes of an incomplete line and the data of the event being built.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Option<String>,
    /// The previous piece ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds the next bytes and appends the `data` of every event they complete to `events`.
    pub fn push(&mut self, bytes: &[u8], events: &mut Vec<String>) {
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(events),
                b'\r' => {
                    self.end_line(events);
                    self.after_cr = true;
                }
                _ => self.line.push(b),
            }
        }
    }

    fn end_line(&mut self, events: &mut Vec<String>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                events.push(data);
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &[][..]),
        };
        if field == b"data" {
            let value = String::from_utf8_lossy(value);
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            }
        }
    }

    /// True when bytes of an unfinished event are pending (a stream that ends here was cut).
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.data.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> (Vec<String>, bool) {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            p.push(chunk, &mut out);
        }
        (out, p.has_partial())
    }

    #[test]
    fn events_come_out_whole_however_the_bytes_are_split() {
        let stream =
            "data: {\"a\":1}\n\n: keep-alive comment\n\nevent: message\nid: 7\ndata: {\"b\":\ndata:2}\n\n\
                      data: [DONE]\n\n";
        let want = vec!["{\"a\":1}".to_string(), "{\"b\":\n2}".to_string(), "[DONE]".to_string()];
        for piece in 1..=stream.len() {
            assert_eq!(parse_in_pieces(stream.as_bytes(), piece), (want.clone(), false), "piece {piece}");
        }
        // CRLF and lone CR line ends give the same events, also when CR and LF are split apart.
        for sep in ["\r\n", "\r"] {
            let s = stream.replace('\n', sep);
            for piece in 1..=s.len() {
                assert_eq!(parse_in_pieces(s.as_bytes(), piece), (want.clone(), false), "{sep:?} {piece}");
            }
        }
    }

    #[test]
    fn unfinished_events_are_reported_and_empty_events_are_not_dispatched() {
        let (ev, partial) = parse_in_pieces(b"data: x\n\ndata: y", 3);
        assert_eq!((ev, partial), (vec!["x".to_string()], true));
        let (ev, partial) = parse_in_pieces(b"data: z\n", 100);
        assert_eq!((ev, partial), (vec![], true));
        // A field with no colon, an event field alone, a value without the optional space.
        let (ev, _) = parse_in_pieces(b"data\n\nevent: e\n\ndata:nospace\n\n", 5);
        assert_eq!(ev, vec!["".to_string(), "nospace".to_string()]);
        // Multi-byte UTF-8 split across pieces is reassembled.
        let (ev, _) = parse_in_pieces("data: héllo ✓\n\n".as_bytes(), 1);
        assert_eq!(ev, vec!["héllo ✓".to_string()]);
    }
}
