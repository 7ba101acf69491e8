//! What the template sandbox costs: SmolLM2's chat template rendered in process and in a
//! sandbox child (one JSON round trip over a pipe to a pooled, memory-limited process).
//!
//! `cargo bench -p genarm-text --bench template_render`. No criterion harness macro for `main`:
//! the sandbox's children re-execute this binary, so `main` calls `run_sandbox_if_requested()`
//! first.
#![allow(missing_docs)] // criterion_group! defines an undocumented public function

use criterion::{criterion_group, Criterion};
use genarm_text::{run_sandbox_if_requested, ChatMessage, ModelText, TemplateSandbox};

const BUDGET: u64 = 256 << 20;

fn smollm2_text() -> ModelText {
    let dir = genarm_testkit::fixture_dir("llama-mha");
    let json = std::fs::read_to_string(dir.join("tokenizer.json")).expect("fixture tokenizer.json");
    let template = include_str!("../tests/data/smollm2_chat_template.jinja").to_string();
    ModelText::new("llama-mha", &json, Some(template), Some(0), vec![0], false).expect("fixture ModelText")
}

fn render(c: &mut Criterion) {
    let text = smollm2_text();
    let sandbox = TemplateSandbox::new(BUDGET).expect("the bench binary's path");
    let messages = [ChatMessage::new("system", "You are terse."), ChatMessage::new("user", "What is 2+2?")];
    let want = text.render_chat(&messages, true).expect("in-process render");
    assert_eq!(
        text.render_chat_in(Some(&sandbox), &messages, true).expect("sandboxed render"),
        want,
        "the sandbox renders what the process renders"
    );
    let mut group = c.benchmark_group("smollm2_chat_template");
    group.bench_function("in_process", |b| b.iter(|| text.render_chat(&messages, true).unwrap()));
    group.bench_function("sandboxed", |b| {
        b.iter(|| text.render_chat_in(Some(&sandbox), &messages, true).unwrap())
    });
    group.finish();
}

criterion_group!(benches, render);

fn main() {
    run_sandbox_if_requested();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
