//! Running out of KV blocks fails only the sequence that did not fit, leaves every other
//! sequence's cache intact, and releasing returns every block.

mod common;

use common::*;
use genarm_model::{EngineOptions, StepError, StepSeq};

#[test]
fn exhaustion_is_typed_and_leaves_others_intact() {
    let assets = assets("llama-mha");
    // 4 blocks of 8 tokens.
    let engine = genarm_model::Engine::load(
        &assets,
        EngineOptions { kv_capacity_tokens: 32, block_size: 8, ..Default::default() },
    )
    .unwrap();
    let prompts = prompt_ids(&assets);
    let short = prompts.iter().find(|p| p.len() <= 8).expect("a prompt of ≤ 8 tokens").clone();
    let long: Vec<u32> = prompts.iter().flatten().copied().cycle().take(30).collect();

    let out = engine
        .step(vec![
            StepSeq { seq_id: 1, start_pos: 0, tokens: short.clone() },
            StepSeq { seq_id: 2, start_pos: 0, tokens: long.clone() },
        ])
        .unwrap();
    let first = out.results[0].clone().expect("the short sequence fits");
    match &out.results[1] {
        Err(StepError::KvExhausted { seq_id: 2, needed: 4, free: 3 }) => {}
        other => panic!("expected KvExhausted for seq 2, got {other:?}"),
    }
    assert_eq!(engine.sequence_len(2), None, "the refused sequence must not exist");
    assert_eq!(engine.kv_usage().used_blocks, 1);

    // Seq 1 keeps decoding correctly: its cache was not disturbed.
    let mut toks = short.clone();
    let mut logits = first;
    for _ in 0..6 {
        let next = argmax(&logits);
        let out =
            engine.step(vec![StepSeq { seq_id: 1, start_pos: toks.len(), tokens: vec![next] }]).unwrap();
        toks.push(next);
        logits = out.results[0].clone().unwrap();
    }
    let full = rows(&engine.forward_full(&toks).unwrap());
    let d = max_abs_diff(&log_softmax(&logits), &log_softmax(full.last().unwrap()));
    assert!(d <= 1e-4, "cache of seq 1 disturbed: {d}");

    // A sequence that fits after seq 1's blocks are returned.
    assert!(engine.release(1));
    assert_eq!(engine.kv_usage().used_blocks, 0);
    let out = engine.step(vec![StepSeq { seq_id: 2, start_pos: 0, tokens: long }]).unwrap();
    assert!(out.results[0].is_ok());
    assert_eq!(engine.kv_usage().used_blocks, 4);
    assert!(engine.release(2));
    let usage = engine.kv_usage();
    assert_eq!((usage.used_blocks, usage.sequences, usage.total_blocks), (0, 0, 4));
}

#[test]
fn position_and_input_errors_are_typed() {
    let assets = assets("llama-mha");
    let engine = genarm_model::Engine::load(&assets, EngineOptions::default()).unwrap();
    let vocab = engine.config().vocab_size as u32;
    let out = engine
        .step(vec![
            StepSeq { seq_id: 5, start_pos: 3, tokens: vec![1] },
            StepSeq { seq_id: 6, start_pos: 0, tokens: vec![] },
            StepSeq { seq_id: 7, start_pos: 0, tokens: vec![vocab] },
            StepSeq { seq_id: 8, start_pos: 0, tokens: vec![1, 2] },
            StepSeq { seq_id: 8, start_pos: 0, tokens: vec![1] },
        ])
        .unwrap();
    assert!(matches!(out.results[0], Err(StepError::UnknownSequence { seq_id: 5, start_pos: 3 })));
    assert!(matches!(out.results[1], Err(StepError::EmptyTokens { seq_id: 6 })));
    assert!(matches!(out.results[2], Err(StepError::TokenOutOfRange { seq_id: 7, .. })));
    assert!(out.results[3].is_ok());
    assert!(matches!(out.results[4], Err(StepError::DuplicateSequence { seq_id: 8 })));
    let out = engine.step(vec![StepSeq { seq_id: 8, start_pos: 1, tokens: vec![3] }]).unwrap();
    assert!(matches!(out.results[0], Err(StepError::PositionMismatch { seq_id: 8, start_pos: 1, held: 2 })));
    let max = engine.config().max_position_embeddings;
    let out = engine.step(vec![StepSeq { seq_id: 9, start_pos: 0, tokens: vec![1; max + 1] }]).unwrap();
    assert!(matches!(out.results[0], Err(StepError::ContextOverflow { seq_id: 9, .. })));
    assert_eq!(engine.sequence_len(8), Some(2));
}
