//! Criterion benchmark: the router's per-step fusion and sampling cost for a batch of 32 requests, at
//! vocabularies of 32k and 128k, with 0, 1 and 2 ARMs, greedy and top-p sampling. Ends with a table
//! of per-step figures split into fusion and sampling.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use genarm_fusion::rng::Xoshiro256PlusPlus;
use genarm_fusion::{fuse, ArmTerm, Sampler, SamplingParams};

const BATCH: usize = 32;
const VOCABS: [usize; 2] = [32_000, 128_256];
const ARMS: [usize; 3] = [0, 1, 2];

/// LLM-like logits: standard normal × 3 with a few dozen boosted tokens.
fn logits(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut v: Vec<f32> = (0..n)
        .map(|_| {
            let u1 = 1.0 - rng.next_f64();
            let u2 = rng.next_f64();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * 3.0) as f32
        })
        .collect();
    for _ in 0..40 {
        let i = (rng.next_u64() % n as u64) as usize;
        v[i] += 8.0 + (rng.next_f64() * 6.0) as f32;
    }
    v
}

/// One batch's worth of logits: `models[m][request]`.
struct Batch {
    vocab: usize,
    models: Vec<Vec<Vec<f32>>>,
    fused: Vec<Vec<f32>>,
}

impl Batch {
    fn new(vocab: usize) -> Self {
        let models =
            (0..3u64).map(|m| (0..BATCH as u64).map(|r| logits(m * 1000 + r, vocab)).collect()).collect();
        Self { vocab, models, fused: vec![vec![0.0; vocab]; BATCH] }
    }

    fn fuse_all(&mut self, arms: usize) {
        const ALPHAS: [f32; 2] = [0.8, -0.3];
        for r in 0..BATCH {
            let terms: Vec<ArmTerm<'_>> =
                (0..arms).map(|a| ArmTerm { alpha: ALPHAS[a], logits: &self.models[a + 1][r] }).collect();
            fuse(&self.models[0][r], &terms, &mut self.fused[r]).unwrap();
        }
    }

    fn sample_all(&self, samplers: &mut [Sampler]) {
        for (s, f) in samplers.iter_mut().zip(&self.fused) {
            black_box(s.sample(f).unwrap());
        }
    }
}

fn modes() -> [(&'static str, SamplingParams); 2] {
    [
        ("greedy", SamplingParams { temperature: 0.0, ..Default::default() }),
        ("top_p0.9", SamplingParams { temperature: 1.0, top_p: Some(0.9), ..Default::default() }),
    ]
}

fn samplers(params: SamplingParams) -> Vec<Sampler> {
    (0..BATCH as u64).map(|i| Sampler::new(SamplingParams { seed: i, ..params }).unwrap()).collect()
}

fn bench(c: &mut Criterion) {
    for vocab in VOCABS {
        let mut batch = Batch::new(vocab);
        let mut group = c.benchmark_group(format!("step_b{BATCH}_v{}k", vocab / 1000));
        group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
        for arms in ARMS {
            for (name, params) in modes() {
                let mut s = samplers(params);
                group.bench_function(format!("{arms}arm_{name}"), |b| {
                    b.iter(|| {
                        batch.fuse_all(arms);
                        batch.sample_all(&mut s);
                    })
                });
            }
        }
        group.finish();
        eprintln!("(batch of {} logits sets of {} values)", batch.models.len() * BATCH, batch.vocab);
    }
}

/// A plain timing loop for the summary table: per-step milliseconds for fusion and sampling, as the
/// minimum and the median over 30 steps (the minimum is the figure least disturbed by other load).
fn table() {
    const STEPS: usize = 30;
    println!("\nper step, batch {BATCH}: min (median) of {STEPS} steps after 3 warm-up steps");
    println!(
        "{:>7} {:>4} {:>9} {:>17} {:>17} {:>17} {:>15}",
        "vocab", "ARMs", "sampling", "fuse ms", "sample ms", "total ms", "µs per request"
    );
    let stats = |mut v: Vec<f64>| -> (f64, f64) {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[0], v[v.len() / 2])
    };
    for vocab in VOCABS {
        let mut batch = Batch::new(vocab);
        for arms in ARMS {
            for (name, params) in modes() {
                let mut s = samplers(params);
                for _ in 0..3 {
                    batch.fuse_all(arms);
                    batch.sample_all(&mut s);
                }
                let (mut tf, mut ts, mut tt) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..STEPS {
                    let t0 = Instant::now();
                    batch.fuse_all(arms);
                    let t1 = Instant::now();
                    batch.sample_all(&mut s);
                    let t2 = Instant::now();
                    tf.push((t1 - t0).as_secs_f64() * 1e3);
                    ts.push((t2 - t1).as_secs_f64() * 1e3);
                    tt.push((t2 - t0).as_secs_f64() * 1e3);
                }
                let ((f0, f1), (s0, s1), (t0, t1)) = (stats(tf), stats(ts), stats(tt));
                println!(
                    "{vocab:>7} {arms:>4} {name:>9} {:>17} {:>17} {:>17} {:>15.1}",
                    format!("{f0:.3} ({f1:.3})"),
                    format!("{s0:.3} ({s1:.3})"),
                    format!("{t0:.3} ({t1:.3})"),
                    t0 * 1e3 / BATCH as f64
                );
            }
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    table();
}
