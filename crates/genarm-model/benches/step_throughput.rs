//! Step throughput of the engine in tokens/s: prefill and decode, batch 1/8/32, TP 1 vs 2 (3), on a
//! ~30M-parameter fixture and (when fetched) SmolLM2-135M; plus the machine's copy bandwidth,
//! which bounds batch-1 decode from below (every weight byte is read once per step).
#![allow(missing_docs)] // criterion_group! defines an undocumented public function

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use genarm_model::{Engine, EngineOptions, ModelAssets, StepSeq};

const PREFILL_TOKENS: usize = 128;
const DECODE_CONTEXT: usize = 64;

struct Subject {
    name: &'static str,
    assets: ModelAssets,
    _dir: Option<tempfile::TempDir>,
}

fn subjects() -> Vec<Subject> {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = genarm_testkit::sized_spec("bench-30m", 512, 1536, 8, 8, 4, 8192);
    genarm_testkit::write_fixture(&dir.path().join("m"), &spec).expect("write bench fixture");
    let assets = ModelAssets::open(&dir.path().join("m")).expect("open bench fixture");
    eprintln!("bench-30m: {:.1}M parameters", assets.config.num_parameters() as f64 / 1e6);
    let mut out = vec![Subject { name: "fixture-30m", assets, _dir: Some(dir) }];
    match genarm_testkit::smollm2::gguf_path() {
        Ok(p) => match ModelAssets::open(&p) {
            Ok(assets) => out.push(Subject { name: "smollm2-135m", assets, _dir: None }),
            Err(e) => eprintln!("skipping SmolLM2: {e}"),
        },
        Err(e) => eprintln!("skipping SmolLM2: {e}"),
    }
    out
}

fn tokens(n: usize, seed: u32, vocab: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) % vocab as u32).collect()
}

/// Times `iters` decode steps of `batch` sequences, each already holding `DECODE_CONTEXT` tokens;
/// sequences are re-created (untimed) before they would outgrow the pool.
fn time_decode(engine: &Engine, batch: usize, iters: u64, vocab: usize) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let prefill: Vec<StepSeq> = (0..batch as u64)
            .map(|s| StepSeq { seq_id: s, start_pos: 0, tokens: tokens(DECODE_CONTEXT, s as u32, vocab) })
            .collect();
        engine.step(prefill).expect("prefill");
        let rounds = (iters - done).min(64);
        for r in 0..rounds as usize {
            let step: Vec<StepSeq> = (0..batch as u64)
                .map(|s| StepSeq {
                    seq_id: s,
                    start_pos: DECODE_CONTEXT + r,
                    tokens: vec![(r as u32 * 31 + s as u32) % 100],
                })
                .collect();
            let t = Instant::now();
            let out = engine.step(step).expect("decode");
            total += t.elapsed();
            assert!(out.results.iter().all(Result::is_ok));
        }
        done += rounds;
        for s in 0..batch as u64 {
            engine.release(s);
        }
    }
    total
}

fn bench_steps(c: &mut Criterion) {
    for subject in subjects() {
        let vocab = subject.assets.config.vocab_size;
        let weight_bytes = subject.assets.config.num_parameters() * 4;
        // TP 2, or the smallest degree the model's heads allow (SmolLM2 has 9 heads: TP 3).
        let cfg = &subject.assets.config;
        let tp2 = (2..=cfg.num_key_value_heads)
            .find(|n| genarm_model::model::check_tp(cfg, *n).is_ok())
            .unwrap_or(1);
        for tp in [1usize, tp2] {
            let engine = Engine::load(
                &subject.assets,
                EngineOptions { tp, kv_capacity_tokens: 32 * (DECODE_CONTEXT + 80), ..Default::default() },
            )
            .expect("load");
            let mut g = c.benchmark_group(format!("{}/tp{tp}", subject.name));
            g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
            for batch in [1usize, 8] {
                g.throughput(Throughput::Elements((batch * PREFILL_TOKENS) as u64));
                g.bench_function(BenchmarkId::new("prefill", batch), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let seqs: Vec<StepSeq> = (0..batch as u64)
                                .map(|s| StepSeq {
                                    seq_id: s,
                                    start_pos: 0,
                                    tokens: tokens(PREFILL_TOKENS, s as u32, vocab),
                                })
                                .collect();
                            let t = Instant::now();
                            engine.step(seqs).expect("prefill");
                            total += t.elapsed();
                            for s in 0..batch as u64 {
                                engine.release(s);
                            }
                        }
                        total
                    })
                });
            }
            for batch in [1usize, 8, 32] {
                g.throughput(Throughput::Elements(batch as u64));
                g.bench_function(BenchmarkId::new("decode", batch), |b| {
                    b.iter_custom(|iters| time_decode(&engine, batch, iters, vocab))
                });
            }
            g.finish();
        }
        eprintln!("{}: f32 weights = {:.1} MB read per decode step", subject.name, weight_bytes as f64 / 1e6);
    }
}

/// Bandwidth of a large memory copy: the floor for batch-1 decode is weight bytes / this.
fn bench_copy_bandwidth(c: &mut Criterion) {
    let n = 64 << 20; // 256 MiB of f32
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let mut g = c.benchmark_group("memory");
    g.sample_size(10).throughput(Throughput::Bytes((n * 4 * 2) as u64));
    g.bench_function("copy-256MiB", |b| {
        b.iter(|| {
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_copy_bandwidth, bench_steps);
criterion_main!(benches);
