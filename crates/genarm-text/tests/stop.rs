//! Stop strings against a brute-force reference, over every way of splitting the text into chunks.

use genarm_text::StopMatcher;

/// The reference: scan end positions in order; the first end at which some stop string ends
/// stops the text at that occurrence's start (the earliest start among those ending there).
fn reference(text: &str, stops: &[&str]) -> (String, bool) {
    let ends: Vec<usize> = text.char_indices().map(|(i, c)| i + c.len_utf8()).collect();
    for end in ends {
        for start in (0..end).filter(|&s| text.is_char_boundary(s)) {
            if stops.iter().any(|s| !s.is_empty() && &text[start..end] == *s) {
                return (text[..start].to_string(), true);
            }
        }
    }
    (text.to_string(), false)
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop string.
fn partial_suffix(text: &str, stops: &[&str]) -> usize {
    (1..=text.len())
        .rev()
        .filter(|&k| text.is_char_boundary(text.len() - k))
        .find(|&k| stops.iter().any(|s| s.len() > k && s.starts_with(&text[text.len() - k..])))
        .unwrap_or(0)
}

/// Every string of up to `max_len` characters over `alphabet`.
fn strings(alphabet: &[char], max_len: usize) -> Vec<String> {
    let mut all = vec![String::new()];
    let mut frontier = vec![String::new()];
    for _ in 0..max_len {
        frontier = frontier.iter().flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}"))).collect();
        all.extend(frontier.iter().cloned());
    }
    all
}

#[test]
fn matches_reference_over_all_chunkings() {
    let alphabet = ['a', 'b', 'é', '🙂'];
    let stop_sets: &[&[&str]] = &[
        &["ab"],
        &["aba", "b🙂"],
        &["abab", "ba"],
        &["é🙂", "aé"],
        &["a"],
        &["aaa", "", "bb"],
        &["abb", "b", "🙂a🙂"],
        &[],
    ];
    let mut runs = 0;
    for stops in stop_sets {
        for text in strings(&alphabet, 6) {
            let (want, want_stopped) = reference(&text, stops);
            let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
            for mask in 0u32..(1 << cuts.len()) {
                let mut bounds = vec![0];
                bounds.extend(cuts.iter().enumerate().filter(|(j, _)| mask & (1 << j) != 0).map(|(_, &c)| c));
                bounds.push(text.len());
                let mut matcher = StopMatcher::new(stops.iter().copied());
                let mut out = String::new();
                let mut stopped = false;
                for w in bounds.windows(2) {
                    let outcome = matcher.push(&text[w[0]..w[1]]);
                    assert!(!stopped || outcome.emit.is_empty(), "text emitted after a stop");
                    out += &outcome.emit;
                    stopped |= outcome.stopped;
                    if !stopped {
                        // Nothing is held back that could not start a stop string.
                        let so_far = &text[..w[1]];
                        assert_eq!(
                            out,
                            so_far[..so_far.len() - partial_suffix(so_far, stops)],
                            "{stops:?} {bounds:?}"
                        );
                    }
                }
                if !stopped {
                    out += &matcher.finish();
                }
                assert_eq!(
                    (out.as_str(), stopped),
                    (want.as_str(), want_stopped),
                    "{text:?} {stops:?} {bounds:?}"
                );
                assert_eq!(matcher.is_stopped(), want_stopped);
                runs += 1;
            }
        }
    }
    assert!(runs > 100_000, "{runs}");
}

#[test]
fn reports_the_matched_stop_and_stays_stopped() {
    let mut m = StopMatcher::new(["END", "\n\n"]);
    assert_eq!(m.push("Hello E").emit, "Hello ");
    assert_eq!(m.push("N").emit, "");
    let o = m.push("D and more");
    assert_eq!((o.emit.as_str(), o.stopped), ("", true));
    assert_eq!(m.matched_stop(), Some("END"));
    let o = m.push("more");
    assert!(o.stopped && o.emit.is_empty());
    assert_eq!(m.finish(), "");

    let mut m = StopMatcher::new(Vec::<String>::new());
    let o = m.push("anything");
    assert_eq!((o.emit.as_str(), o.stopped), ("anything", false));
    assert_eq!(m.matched_stop(), None);

    // Held text is flushed by finish when generation ends another way.
    let mut m = StopMatcher::new(["</answer>"]);
    assert_eq!(m.push("42</ans").emit, "42");
    assert_eq!(m.finish(), "</ans");
}
