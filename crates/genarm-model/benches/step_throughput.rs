//! Step throughput of the engine in tokens/s: prefill and decode, batch 1/8/32, TP 1 vs 2 (3), on a
//! ~30M-parameter fixture and (when fetched) SmolLM2-135M; plus the machine's copy bandwidth,
//! which bounds batch-1 decode from below (every weight byte is read once per step). The
//! `long-context` group compares the paged attention kernel with the gather path it replaced on one
//! engine and one cache: batch-16 decode steps at 2k and 8k context, and an 8k-token prefill's time
//! and peak heap (`cargo bench -p genarm-model --bench step_throughput -- long-context`).
#![allow(missing_docs)] // criterion_group! defines an undocumented public function

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use genarm_model::{AttentionKernel, Engine, EngineOptions, ModelAssets, StepSeq};

/// The system allocator, counting live heap bytes and their high-water mark (the peak memory of
/// a prefill is measured as the mark's rise).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`, returning its result and how far the heap rose above where it started, in bytes.
fn peak_heap<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(start))
}

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

/// Times `iters` prefill steps of `batch` fresh sequences of `PREFILL_TOKENS` tokens each.
fn time_prefill(engine: &Engine, batch: usize, iters: u64, vocab: usize) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let seqs: Vec<StepSeq> = (0..batch as u64)
            .map(|s| StepSeq { seq_id: s, start_pos: 0, tokens: tokens(PREFILL_TOKENS, s as u32, vocab) })
            .collect();
        let t = Instant::now();
        engine.step(seqs).expect("prefill");
        total += t.elapsed();
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
                    b.iter_custom(|iters| time_prefill(&engine, batch, iters, vocab))
                });
            }
            for batch in [1usize, 8, 32] {
                g.throughput(Throughput::Elements(batch as u64));
                g.bench_function(BenchmarkId::new("decode", batch), |b| {
                    b.iter_custom(|iters| time_decode(&engine, batch, iters, vocab))
                });
            }
            // The gather baseline: batch-1 decode, the case the bandwidth floor bounds, and prefill.
            engine.set_attention(AttentionKernel::Gather).expect("set attention");
            g.throughput(Throughput::Elements(1));
            g.bench_function(BenchmarkId::new("decode-gather", 1), |b| {
                b.iter_custom(|iters| time_decode(&engine, 1, iters, vocab))
            });
            g.throughput(Throughput::Elements((8 * PREFILL_TOKENS) as u64));
            g.bench_function(BenchmarkId::new("prefill-gather", 8), |b| {
                b.iter_custom(|iters| time_prefill(&engine, 8, iters, vocab))
            });
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

/// Whether criterion's command line selects benchmark `id` (no filter selects everything).
fn selected(id: &str) -> bool {
    let filters: Vec<String> =
        std::env::args().skip(1).filter(|a| !a.starts_with('-') && !a.is_empty()).collect();
    filters.is_empty() || filters.iter().any(|f| id.contains(f.as_str()))
}

/// Batch of the long-context decode steps.
const LONG_BATCH: usize = 16;
/// Decode steps a long-context engine has room for past its prefilled context; past it, the
/// sequences are released and prefilled again (untimed).
const LONG_ROOM: usize = 1024;

/// A model small enough to prefill 16 × 8k tokens on two cores in about a minute, so that
/// attention dominates its steps: 2 layers, GQA 2:1, head_dim 64.
fn long_context_assets(dir: &std::path::Path) -> ModelAssets {
    let mut spec = genarm_testkit::sized_spec("ctx-tiny", 128, 256, 2, 2, 1, 2048);
    spec.max_position_embeddings = 16384;
    genarm_testkit::write_fixture(&dir.join("ctx"), &spec).expect("write long-context fixture");
    ModelAssets::open(&dir.join("ctx")).expect("open long-context fixture")
}

/// `LONG_BATCH` sequences decoding from a long context, on one engine for both kernels.
struct LongContext {
    engine: Engine,
    context: usize,
    vocab: usize,
    /// Tokens each sequence holds (`usize::MAX` before its first prefill); empty until the first
    /// case that criterion's filter selects.
    pos: Vec<usize>,
}

impl LongContext {
    /// Makes sure each of the first `batch` sequences has room for `steps` more tokens,
    /// prefilling (with the paged kernel, one sequence per step) those that are new or full.
    fn ready(&mut self, batch: usize, steps: usize) {
        if self.pos.is_empty() {
            self.pos = vec![usize::MAX; LONG_BATCH];
        }
        let full: Vec<usize> =
            (0..batch).filter(|&s| self.pos[s].saturating_add(steps) > self.context + LONG_ROOM).collect();
        if full.is_empty() {
            return;
        }
        let t = Instant::now();
        self.engine.set_attention(AttentionKernel::Paged).expect("set attention");
        for &s in &full {
            self.engine.release(s as u64);
            let toks = tokens(self.context, s as u32, self.vocab);
            let out = self
                .engine
                .step(vec![StepSeq { seq_id: s as u64, start_pos: 0, tokens: toks }])
                .expect("prefill");
            assert!(out.results[0].is_ok());
            self.pos[s] = self.context;
        }
        eprintln!("long-context: prefilled {} × {} tokens in {:.1?}", full.len(), self.context, t.elapsed());
    }

    /// Times `iters` decode steps of the first `batch` sequences under `kernel`.
    fn time(&mut self, kernel: AttentionKernel, batch: usize, iters: u64) -> Duration {
        self.ready(batch, iters as usize);
        self.engine.set_attention(kernel).expect("set attention");
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let step = (0..batch)
                .map(|s| StepSeq {
                    seq_id: s as u64,
                    start_pos: self.pos[s],
                    tokens: vec![(self.pos[s] as u32 + s as u32) % 100],
                })
                .collect();
            let t = Instant::now();
            let out = self.engine.step(step).expect("decode");
            total += t.elapsed();
            assert!(out.results.iter().all(Result::is_ok));
            self.pos[..batch].iter_mut().for_each(|p| *p += 1);
        }
        total
    }
}

fn bench_long_context(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let assets = long_context_assets(dir.path());
    let vocab = assets.config.vocab_size;
    let mut g = c.benchmark_group("long-context");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for context in [2048usize, 8192] {
        let options =
            EngineOptions { kv_capacity_tokens: LONG_BATCH * (context + LONG_ROOM), ..Default::default() };
        let engine = Engine::load(&assets, options).expect("load");
        let mut lc = LongContext { engine, context, vocab, pos: Vec::new() };
        for batch in [LONG_BATCH, 1] {
            // Gather first: it takes few steps, so both kernels see about the same context.
            for kernel in [AttentionKernel::Gather, AttentionKernel::Paged] {
                g.throughput(Throughput::Elements(batch as u64));
                let id = BenchmarkId::new(format!("decode-b{batch}-{kernel:?}"), context);
                let mut span = None;
                g.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        let d = lc.time(kernel, batch, iters);
                        let (from, to) = (lc.pos[0] - iters as usize, lc.pos[0]);
                        let (lo, hi) = span.unwrap_or((from, to));
                        span = Some((lo.min(from), hi.max(to)));
                        d
                    })
                });
                if let Some((lo, hi)) = span {
                    eprintln!("  (contexts {lo}..{hi})");
                }
            }
        }
    }
    g.finish();
    if !selected("long-context/prefill-8192") {
        return;
    }
    // One 8k-token prompt, once per kernel: time and the heap's rise during the step.
    let context = 8192;
    for kernel in [AttentionKernel::Gather, AttentionKernel::Paged] {
        let options = EngineOptions { kv_capacity_tokens: context, attention: kernel, ..Default::default() };
        let engine = Engine::load(&assets, options).expect("load");
        let t = Instant::now();
        let (out, peak) = peak_heap(|| {
            engine.step(vec![StepSeq { seq_id: 0, start_pos: 0, tokens: tokens(context, 0, vocab) }])
        });
        assert!(out.expect("prefill").results[0].is_ok());
        eprintln!(
            "long-context/prefill-{context}-{kernel:?}: {:.2?}, peak heap +{:.1} MiB",
            t.elapsed(),
            peak as f64 / (1 << 20) as f64
        );
    }
}

criterion_group!(benches, bench_copy_bandwidth, bench_steps, bench_long_context);
criterion_main!(benches);
