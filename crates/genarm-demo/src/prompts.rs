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

/// Prompts as JSONL lines `{"prompt": ...}`, the format `genarm eval` and `genarm make-pairs` read.
pub fn to_jsonl(prompts: &[String]) -> String {
    prompts.iter().map(|p| serde_json::json!({ "prompt": p }).to_string() + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

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
    fn a_prefix_mixes_topics() {
        let train = train_prompts();
        let first_topics: HashSet<_> = train[..16]
            .iter()
            .map(|p| TOPICS.iter().find(|t| p.contains(*t)).expect("every prompt has a topic"))
            .collect();
        assert!(first_topics.len() >= 8, "{first_topics:?}");
    }
}
