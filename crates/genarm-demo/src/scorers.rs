//! Deterministic scorers of the demo objectives: `upbeat` (enthusiasm a reader sees) and
//! `concise` (few words and marks). They pull against each other: enthusiasm costs words.

/// A deterministic score of a response's text for one objective; higher is better.
pub trait Scorer: Sync {
    /// The objective's name (also the name of the ARM trained for it).
    fn name(&self) -> &'static str;
    /// One line saying what the score counts, for reports.
    fn describe(&self) -> &'static str;
    /// The score of `text`.
    fn score(&self, text: &str) -> f64;
}

/// Words that read as enthusiastic or warm, matched case-insensitively as whole words.
const POSITIVE_WORDS: &[&str] = &[
    "amazing",
    "awesome",
    "beautiful",
    "best",
    "brilliant",
    "cheerful",
    "delight",
    "delighted",
    "delightful",
    "enjoy",
    "enjoyable",
    "enthusiastic",
    "excellent",
    "excited",
    "exciting",
    "fabulous",
    "fantastic",
    "fun",
    "glad",
    "great",
    "happy",
    "joy",
    "joyful",
    "love",
    "lovely",
    "marvelous",
    "perfect",
    "positive",
    "remarkable",
    "superb",
    "terrific",
    "thrilled",
    "thrilling",
    "wonderful",
    "wow",
    "yay",
    "hooray",
    "incredible",
    "inspiring",
    "fascinating",
];

/// `upbeat`: how many enthusiastic words and exclamation marks the text has.
pub struct Upbeat;

impl Scorer for Upbeat {
    fn name(&self) -> &'static str {
        "upbeat"
    }
    fn describe(&self) -> &'static str {
        "number of enthusiastic words (great, wonderful, love, ...) plus exclamation marks"
    }
    fn score(&self, text: &str) -> f64 {
        let exclamations = text.chars().filter(|&c| c == '!').count();
        let positive = words(text).filter(|w| POSITIVE_WORDS.contains(&w.to_lowercase().as_str())).count();
        (positive + exclamations) as f64
    }
}

/// `concise`: minus the number of words and punctuation marks. Punctuation counts like a word
/// so that a string of dots or list markers is not "concise": an ARM trained on words alone
/// learned to answer with punctuation (reward hacking); this one has to learn to stop.
pub struct Concise;

impl Scorer for Concise {
    fn name(&self) -> &'static str {
        "concise"
    }
    fn describe(&self) -> &'static str {
        "minus the number of words and punctuation marks"
    }
    fn score(&self, text: &str) -> f64 {
        let marks = text.chars().filter(|c| c.is_ascii_punctuation() && *c != '\'').count();
        -((words(text).count() + marks) as f64)
    }
}

/// Maximal runs of letters, digits and apostrophes.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'')).filter(|w| !w.is_empty())
}

static ALL: [&dyn Scorer; 2] = [&Upbeat, &Concise];

/// Every demo scorer.
pub fn all() -> &'static [&'static dyn Scorer] {
    &ALL
}

/// The scorer of objective `name`, if there is one.
pub fn by_name(name: &str) -> Option<&'static dyn Scorer> {
    ALL.iter().copied().find(|s| s.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upbeat_counts_positive_words_and_exclamations() {
        assert_eq!(Upbeat.score("What a GREAT day! I love it!!"), 5.0);
        assert_eq!(Upbeat.score("The report is due on Monday."), 0.0);
        // Whole words only: "greatest" and "funnel" are not in the lexicon.
        assert_eq!(Upbeat.score("the greatest funnel"), 0.0);
    }

    #[test]
    fn concise_is_minus_the_words_and_punctuation_marks() {
        assert_eq!(Concise.score("Paris."), -2.0);
        assert_eq!(Concise.score("It's in France, near the river Seine."), -9.0);
        assert_eq!(Concise.score(""), 0.0);
        // Dots are not an answer: no better than words.
        assert!(Concise.score("...\n\n...\n\n...") < Concise.score("A dog."));
    }

    #[test]
    fn lookup_by_name() {
        assert_eq!(by_name("upbeat").map(|s| s.name()), Some("upbeat"));
        assert_eq!(by_name("concise").map(|s| s.name()), Some("concise"));
        assert!(by_name("helpful").is_none());
        assert_eq!(all().len(), 2);
    }
}
