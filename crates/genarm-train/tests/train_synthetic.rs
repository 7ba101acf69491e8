//! Training on a synthetic, separable preference set (chosen responses use one word set,
//! rejected ones another) reaches ≥ 95% preference accuracy on held-out pairs.

mod common;

#[test]
fn separable_preferences_reach_95_percent_held_out_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::write_separable(dir.path(), 100, 1);
    let out = dir.path().join("arm");
    let mut cfg = common::quick_config("llama-gqa-tied", &data, &out);
    cfg.eval_fraction = 0.2;
    cfg.epochs = 4;
    cfg.batch_size = 8;
    let s = genarm_train::train(&cfg).unwrap();
    println!(
        "{} train / {} held-out pairs, {} updates in {:.1} s ({:.0} tokens/s): held-out accuracy {:?} -> {:?}, loss {:?} -> {:?}",
        s.train_pairs,
        s.eval_pairs,
        s.steps,
        s.train_time_s,
        s.tokens_per_s,
        s.initial_eval_accuracy,
        s.final_eval_accuracy,
        s.initial_eval_loss,
        s.final_eval_loss
    );
    assert_eq!((s.train_pairs, s.eval_pairs), (80, 20));
    let before = s.initial_eval_accuracy.unwrap();
    let after = s.final_eval_accuracy.unwrap();
    assert!(
        before < 0.95,
        "the untrained model already separates the pairs ({before}): the test proves nothing"
    );
    assert!(after >= 0.95, "held-out preference accuracy {after} < 0.95");
    assert!(s.final_eval_loss.unwrap() < s.initial_eval_loss.unwrap());
    // The log has one line per update plus the evaluations.
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"loss\"")).count(), s.steps);
    assert!(out.join("adapter_model.safetensors").is_file() && out.join("train_summary.json").is_file());
}
