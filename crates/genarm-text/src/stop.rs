//! `StopMatcher`: OpenAI `stop` strings over streamed text, across arbitrary chunk boundaries.

/// What a [`StopMatcher::push`] lets through.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopOutcome {
    /// Text that can be sent to the client (it can no longer become part of a stop string).
    pub emit: String,
    /// A stop string has been found: generation ends, `emit` is the text before it, and the
    /// stop string and everything after it are dropped.
    pub stopped: bool,
}

/// Finds stop strings in generated text that arrives in chunks.
///
/// Generation stops as soon as the text contains any stop string; the text is cut where that
/// occurrence starts (if several complete at the same point, the one starting earliest wins).
/// The result does not depend on how the text is split into chunks: the matcher emits what can
/// no longer be part of a stop string and holds back the longest suffix that is the start of
/// one. Empty stop strings are ignored.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    matched: Option<usize>,
}

impl StopMatcher {
    /// A matcher for `stops` (OpenAI's `stop`; the caller limits how many it accepts).
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops = stops.into_iter().map(Into::into).filter(|s: &String| !s.is_empty()).collect();
        StopMatcher { stops, held: String::new(), matched: None }
    }

    /// Adds generated text. After a stop every push returns nothing, with `stopped` set.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.matched.is_some() {
            return StopOutcome { emit: String::new(), stopped: true };
        }
        if self.stops.is_empty() {
            return StopOutcome { emit: text.to_string(), stopped: false };
        }
        self.held.push_str(text);
        // The occurrence that completes first (smallest end), then the longest of those.
        let mut best: Option<(usize, usize, usize)> = None; // (end, start, stop index)
        for (i, stop) in self.stops.iter().enumerate() {
            if let Some(start) = self.held.find(stop.as_str()) {
                let cand = (start + stop.len(), start, i);
                if best.is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
                    best = Some(cand);
                }
            }
        }
        if let Some((_, start, i)) = best {
            self.matched = Some(i);
            self.held.truncate(start);
            return StopOutcome { emit: std::mem::take(&mut self.held), stopped: true };
        }
        let keep = self.longest_partial_suffix();
        let emit = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        StopOutcome { emit, stopped: false }
    }

    /// Ends the text (EOS, `max_tokens`): returns what is held back (nothing after a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Whether a stop string was found.
    pub fn is_stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop string that was found, if any.
    pub fn matched_stop(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop string.
    fn longest_partial_suffix(&self) -> usize {
        let longest_stop = self.stops.iter().map(String::len).max().unwrap_or(0);
        let max = self.held.len().min(longest_stop.saturating_sub(1));
        (1..=max)
            .rev()
            .filter(|&k| self.held.is_char_boundary(self.held.len() - k))
            .find(|&k| {
                let suffix = &self.held[self.held.len() - k..];
                self.stops.iter().any(|s| s.starts_with(suffix))
            })
            .unwrap_or(0)
    }
}
