//! The committed demo data is what the code generates: the prompt sets under `demo/data/`, and
//! preference pairs that agree with the scorers.

use std::path::PathBuf;

use genarm_demo::{pairs, prompts, scorers};

fn demo_data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../demo/data").join(name)
}

#[test]
fn committed_prompt_sets_equal_a_regeneration() {
    let train = std::fs::read_to_string(demo_data("train.jsonl")).unwrap();
    let eval = std::fs::read_to_string(demo_data("eval.jsonl")).unwrap();
    assert_eq!(
        train,
        prompts::to_jsonl(&prompts::train_prompts()),
        "run `genarm demo-prompts --out demo/data`"
    );
    assert_eq!(
        eval,
        prompts::to_jsonl(&prompts::eval_prompts()),
        "run `genarm demo-prompts --out demo/data`"
    );
}

#[test]
fn committed_pairs_are_the_best_and_worst_samples_under_each_scorer() {
    let samples: Vec<pairs::Sample> = std::fs::read_to_string(demo_data("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for scorer in scorers::all() {
        let committed: Vec<pairs::Pair> =
            std::fs::read_to_string(demo_data(&format!("pairs-{}.jsonl", scorer.name())))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        // As scripts/train-demo-arms.sh makes them: `--require-finished concise`.
        let remade = pairs::pairs_with(&samples, *scorer, scorer.name() == "concise");
        assert_eq!(committed.len(), remade.len(), "{}", scorer.name());
        for (c, r) in committed.iter().zip(&remade) {
            assert_eq!((&c.chosen, &c.rejected, c.scores), (&r.chosen, &r.rejected, r.scores));
            assert!(scorer.score(&c.chosen) > scorer.score(&c.rejected));
        }
    }
}
