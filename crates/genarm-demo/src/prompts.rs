//! The demo's prompt sets: everyday requests built from topics × phrasings, split by topic so
//! the evaluation prompts are about topics the ARMs never trained on.

/// Everyday topics; the last [`EVAL_TOPICS`] of them are held out for evaluation.
const TOPICS: &[&str] = &[
    "morning routines",
    "houseplants",
    "learning to cook",
    "riding a bicycle",
    "rainy days",
    "public libraries",
    "board games",
    "baking bread",
    "moving to a new city",
    "saving money",
    "learning a language",
    "hiking",
    "keeping a journal",
    "the ocean",
    "volunteering",
    "gardening",
    "taking the train",
    "a first job",
    "making coffee",
    "studying for exams",
    "painting",
    "camping",
    "adopting a cat",
    "running a marathon",
    "photography",
    "writing letters",
    "visiting museums",
    "team sports",
    "cleaning the house",
    "birdwatching",
    "learning to swim",
    "stargazing",
    "playing the guitar",
    "farmers markets",
    "knitting",
    "old movies",
    "road trips",
    "recycling",
    "chess",
    "meditation",
    "baking cookies",
    "building a bookshelf",
    "the night sky",
    "autumn leaves",
    "winter holidays",
    "snow",
    "public speaking",
    "making friends",
    "a job interview",
    "learning to code",
    "walking the dog",
    "picnics",
    "fixing a bike tire",
    "growing tomatoes",
    "jazz music",
    "poetry",
    "science fairs",
    "the moon",
    "thunderstorms",
    "summer vacations",
    "learning to draw",
    "a birthday party",
    "cooking pasta",
    "yoga",
    "tea",
    "rivers",
    "mountains",
    "trains",
    "libraries in small towns",
    "the first day of school",
    "waking up early",
    "making soup",
    "sleeping well",
    "drinking water",
    "stretching",
    "reading before bed",
    "video calls with family",
    "sunflowers",
    "bees",
    "lighthouses",
    // Held out for evaluation.
    "a new puppy",
    "dancing",
    "the desert",
    "sourdough",
    "kites",
    "pottery",
    "ice skating",
    "waterfalls",
    "owls",
    "a city park",
    "origami",
    "fresh bread",
    "the library card",
    "spring flowers",
    "a long walk",
    "fishing",
    "the zoo",
    "a rainy weekend",
    "pancakes",
    "learning the piano",
];

/// How many topics (the last ones) are held out for evaluation.
pub const EVAL_TOPICS: usize = 20;

/// Phrasings of a request about a topic.
const PHRASINGS: &[&str] = &[
    "Tell me about {}.",
    "What do you think of {}?",
    "Give me a tip about {}.",
    "Describe {} in a few sentences.",
    "How would you explain {} to a friend?",
    "Write a short note about {}.",
    "What should I know about {}?",
    "Share your thoughts on {}.",
];

fn expand(topics: &[&str]) -> Vec<String> {
    let mut out = Vec::with_capacity(topics.len() * PHRASINGS.len());
    for topic in topics {
        for phrasing in PHRASINGS {
            out.push(phrasing.replace("{}", topic));
        }
    }
    // A fixed interleaving (a multiplicative permutation), so any prefix mixes topics and phrasings.
    let n = out.len();
    let stride = (1..n).rev().find(|s| gcd(*s, n) == 1 && *s * 3 < n * 2).unwrap_or(1);
    (0..n).map(|i| out[(i * stride) % n].clone()).collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The training prompts (640): topics not used in evaluation, every phrasing.
pub fn train_prompts() -> Vec<String> {
    expand(&TOPICS[..TOPICS.len() - EVAL_TOPICS])
}

/// The evaluation prompts (160): held-out topics, every phrasing.
pub fn eval_prompts() -> Vec<String> {
    expand(&TOPICS[TOPICS.len() - EVAL_TOPICS..])
}

/// A prompt file that cannot be used: which file, which line (0: the file as a whole), why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFileError {
    /// The file (or another name for the text's source).
    pub path: String,
    /// 1-based line number; 0 when the whole file is at fault.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl std::fmt::Display for PromptFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path, self.reason)
        } else {
            write!(f, "{} line {}: {}", self.path, self.line, self.reason)
        }
    }
}

impl std::error::Error for PromptFileError {}

/// Parses a prompt file, the format every genarm command that sends prompts reads
/// (`genarm eval`, `genarm bench`, `genarm make-pairs`): if its first non-empty line starts with
/// `{` it is JSONL, every non-empty line an object with a non-empty string `prompt`; otherwise
/// every non-empty line is a prompt. Each prompt is sent as one user message.
pub fn parse_prompt_file(text: &str, source: &str) -> Result<Vec<String>, PromptFileError> {
    let jsonl = text.lines().find(|l| !l.trim().is_empty()).is_some_and(|l| l.trim_start().starts_with('{'));
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| PromptFileError { path: source.to_string(), line: i + 1, reason };
        if jsonl {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
            let p = v
                .get("prompt")
                .and_then(|p| p.as_str())
                .ok_or_else(|| bad("expected an object with a string field \"prompt\"".into()))?;
            if p.trim().is_empty() {
                return Err(bad("the prompt is empty".into()));
            }
            prompts.push(p.to_string());
        } else {
            prompts.push(line.trim_end_matches('\r').to_string());
        }
    }
    if prompts.is_empty() {
        return Err(PromptFileError {
            path: source.to_string(),
            line: 0,
            reason:
                "the file has no prompts; write one {\"prompt\": \"...\"} per line (or one prompt per line)"
                    .into(),
        });
    }
    Ok(prompts)
}

/// Reads and parses a prompt file ([`parse_prompt_file`]); a file that cannot be read is a
/// [`PromptFileError`] at line 0.
pub fn read_prompt_file(path: &std::path::Path) -> Result<Vec<String>, PromptFileError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PromptFileError {
        path: source.clone(),
        line: 0,
        reason: format!("cannot read it: {e}"),
    })?;
    parse_prompt_file(&text, &source)
}

/// Prompts as JSONL lines `{"prompt": ...}`, the format `genarm eval` and `genarm make-pairs` read.
pub fn to_jsonl(prompts: &[String]) -> String {
    prompts.iter().map(|p| serde_json::json!({ "prompt": p }).to_string() + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn prompt_files_are_plain_lines_or_jsonl_and_errors_keep_the_file_and_line() {
        assert_eq!(parse_prompt_file("say hi\n", "f").unwrap(), ["say hi"]);
        assert_eq!(parse_prompt_file("{\"prompt\": \"a\"}\n", "f").unwrap(), ["a"]);
        let e =
            parse_prompt_file("{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n", "p.jsonl").unwrap_err().to_string();
        assert!(e.contains("p.jsonl") && e.contains("line 2") && e.contains("\"prompt\""), "{e}");
        let e = parse_prompt_file("{\"prompt\": \"a\"}\n{oops\n", "p.jsonl").unwrap_err().to_string();
        assert!(e.contains("p.jsonl") && e.contains("line 2") && e.contains("JSON"), "{e}");
    }

    #[test]
    fn read_prompt_file_reads_and_names_bad_lines_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        std::fs::write(&p, "{\"prompt\": \"a\"}\n\n{\"prompt\": \"b\"}\n").unwrap();
        assert_eq!(read_prompt_file(&p).unwrap(), vec!["a".to_string(), "b".to_string()]);
        std::fs::write(&p, "{\"prompt\": \"a\"}\n{\"text\": 1}\n").unwrap();
        let err = read_prompt_file(&p).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = read_prompt_file(&dir.path().join("missing.txt")).unwrap_err();
        assert!(err.line == 0 && err.to_string().contains("missing.txt: cannot read it"), "{err}");
    }

    #[test]
    fn sets_are_disjoint_complete_and_distinct() {
        let train = train_prompts();
        let eval = eval_prompts();
        assert_eq!(train.len(), (TOPICS.len() - EVAL_TOPICS) * PHRASINGS.len());
        assert_eq!(eval.len(), EVAL_TOPICS * PHRASINGS.len());
        let t: HashSet<_> = train.iter().collect();
        let e: HashSet<_> = eval.iter().collect();
        assert_eq!(t.len(), train.len(), "training prompts repeat");
        assert_eq!(e.len(), eval.len(), "evaluation prompts repeat");
        assert!(t.is_disjoint(&e));
        for topic in &TOPICS[TOPICS.len() - EVAL_TOPICS..] {
            assert!(!train.iter().any(|p| p.contains(topic)), "held-out topic {topic} leaks into training");
        }
    }

    #[test]
    fn prompt_files_in_jsonl_and_plain_text_are_read_and_bad_lines_are_named() {
        let p = parse_prompt_file("{\"prompt\": \"a\"}\n\n{\"prompt\": \"b c\", \"id\": 3}\n", "f").unwrap();
        assert_eq!(p, ["a", "b c"]);
        assert_eq!(parse_prompt_file("say hi\n\nwrite a poem\r\n", "f").unwrap(), ["say hi", "write a poem"]);
        let e =
            parse_prompt_file("{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n", "p.jsonl").unwrap_err().to_string();
        assert!(e.contains("p.jsonl") && e.contains("line 2") && e.contains("\"prompt\""), "{e}");
        let e = parse_prompt_file("{\"prompt\": \"a\"}\n{oops\n", "p.jsonl").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("JSON"), "{e}");
        let e = parse_prompt_file("{\"prompt\": \" \"}\n", "p.jsonl").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        assert!(parse_prompt_file("\n \n", "f").is_err());
        // Every committed prompt set round-trips.
        assert_eq!(parse_prompt_file(&to_jsonl(&eval_prompts()), "eval").unwrap(), eval_prompts());
    }

    #[test]
    fn a_prefix_mixes_topics() {
        let train = train_prompts();
        let first_topics: HashSet<_> = train[..16]
            .iter()
            .map(|p| TOPICS.iter().find(|t| p.contains(*t)).expect("every prompt has a topic"))
            .collect();
        assert!(first_topics.len() >= 8, "{first_topics:?}");
    }
}
