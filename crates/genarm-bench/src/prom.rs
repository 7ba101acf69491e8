//! A small parser of the Prometheus text exposition format (version 0.0.4), enough to read
//! counters and the `_sum` / `_count` series of histograms: every sample line becomes a name,
//! its labels and a value; `# HELP` / `# TYPE` comments and blank lines are skipped.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    /// Metric name (for histograms including the `_sum` / `_count` / `_bucket` suffix).
    pub name: String,
    /// Label pairs in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` are accepted).
    pub value: f64,
}

/// A malformed exposition line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("metrics line {line}: {reason}: {text:?}")]
pub struct PromParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
    /// The line (cut to 200 characters).
    pub text: String,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// Every sample, in order.
    pub samples: Vec<PromSample>,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Parses one non-comment, non-blank line.
fn parse_line(line: &str) -> Result<PromSample, String> {
    let mut chars = line.char_indices().peekable();
    match chars.peek() {
        Some(&(_, c)) if is_name_start(c) => {}
        _ => return Err("expected a metric name".into()),
    }
    let mut end = line.len();
    while let Some(&(i, c)) = chars.peek() {
        if !is_name_char(c) {
            end = i;
            break;
        }
        chars.next();
    }
    let name = line[..end].to_string();
    let mut labels = Vec::new();
    let mut rest = &line[end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut s = after;
        loop {
            s = s.trim_start();
            if let Some(r) = s.strip_prefix('}') {
                rest = r;
                break;
            }
            let key_len = s.find(|c: char| !is_name_char(c)).unwrap_or(s.len());
            if key_len == 0 {
                return Err("expected a label name or `}`".into());
            }
            let key = s[..key_len].to_string();
            s = s[key_len..].trim_start();
            s = s.strip_prefix('=').ok_or("expected `=` after a label name")?.trim_start();
            s = s.strip_prefix('"').ok_or("expected a quoted label value")?;
            let mut value = String::new();
            let mut it = s.char_indices();
            let close = loop {
                match it.next() {
                    None => return Err("unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match it.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        Some((_, c)) => {
                            value.push('\\');
                            value.push(c);
                        }
                        None => return Err("unterminated label value".into()),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.push((key, value));
            s = s[close + 1..].trim_start();
            if let Some(r) = s.strip_prefix(',') {
                s = r;
            } else if !s.starts_with('}') {
                return Err("expected `,` or `}` after a label value".into());
            }
        }
    }
    if rest.trim().is_empty() {
        return Err("no value".into());
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("expected whitespace before the value".into());
    }
    let mut fields = rest.split_whitespace();
    let raw = fields.next().unwrap_or_default();
    let value = match raw {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("unexpected text after the value and timestamp".into());
    }
    Ok(PromSample { name, labels, value })
}

/// Parses a whole exposition.
pub fn parse(text: &str) -> Result<Scrape, PromParseError> {
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|reason| PromParseError {
            line: i + 1,
            reason,
            text: line.chars().take(200).collect(),
        })?;
        samples.push(sample);
    }
    Ok(Scrape { samples })
}

impl Scrape {
    /// The sum of the values of every series named exactly `name` (all label sets), or `None`
    /// when the scrape has no such series.
    pub fn total(&self, name: &str) -> Option<f64> {
        let mut found = false;
        let mut sum = 0.0;
        for s in self.samples.iter().filter(|s| s.name == name) {
            found = true;
            sum += s.value;
        }
        found.then_some(sum)
    }

    /// The values of the series named `name`, keyed by their labels rendered `k=v,...`.
    pub fn by_labels(&self, name: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| {
                let key = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                (key, s.value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP genarm_steps_total Scheduler steps run
# TYPE genarm_steps_total counter
genarm_steps_total 42

# TYPE genarm_step_duration_seconds histogram
genarm_step_duration_seconds_bucket{le="0.005"} 3
genarm_step_duration_seconds_bucket{le="+Inf"} 42
genarm_step_duration_seconds_sum 1.5e-1
genarm_step_duration_seconds_count 42
genarm_requests_total{endpoint="chat_completions",status="200"} 7
genarm_requests_total{endpoint="completions",status="429"} 2 1712345678901
genarm_backend_step_duration_seconds_sum{worker="a \"quoted\", name}",address="http://x:1"} 0.25
genarm_backend_step_duration_seconds_sum{worker="b\\c\nd" , address="y",} 0.75
odd:name_with_colons NaN
genarm_gauge -Inf
"#;

    #[test]
    fn counters_sums_counts_and_labels_are_read() {
        let s = parse(TEXT).unwrap();
        assert_eq!(s.samples.len(), 11);
        assert_eq!(s.total("genarm_steps_total"), Some(42.0));
        assert_eq!(s.total("genarm_step_duration_seconds_sum"), Some(0.15));
        assert_eq!(s.total("genarm_step_duration_seconds_count"), Some(42.0));
        // Labelled series are summed over their label sets.
        assert_eq!(s.total("genarm_requests_total"), Some(9.0));
        assert_eq!(s.total("genarm_backend_step_duration_seconds_sum"), Some(1.0));
        assert_eq!(s.total("genarm_missing_total"), None);
        // A name that is a prefix of another is not confused with it.
        assert_eq!(s.total("genarm_step_duration_seconds"), None);
        let by = s.by_labels("genarm_backend_step_duration_seconds_sum");
        assert_eq!(by.get("worker=a \"quoted\", name},address=http://x:1"), Some(&0.25));
        assert_eq!(by.get("worker=b\\c\nd,address=y"), Some(&0.75));
        assert!(s.total("odd:name_with_colons").unwrap().is_nan());
        assert_eq!(s.total("genarm_gauge"), Some(f64::NEG_INFINITY));
    }

    #[test]
    fn malformed_lines_are_refused_with_their_line_number() {
        for (bad, what) in [
            ("x{le=\"1\" 3", "`,` or `}`"),
            ("x{le=1} 3", "quoted"),
            ("x{le=\"1} 3", "unterminated"),
            ("x 3 notatime", "timestamp"),
            ("x abc", "bad value"),
            ("x", "no value"),
            ("x 1 2 3", "unexpected"),
            ("1x 3", "metric name"),
            ("x{=\"a\"} 1", "label name"),
        ] {
            let e = parse(&format!("# c\nok 1\n{bad}\n")).unwrap_err();
            assert_eq!(e.line, 3, "{bad}");
            assert!(e.reason.contains(what), "{bad}: {e}");
        }
    }
}
