//! The router's per-token cost on the sparse wire against the full wire, in one process: at a
//! 128k vocabulary with 0, 1 and 2 ARMs, greedy, T = 0.7 with top-p 0.9, and T = 1, the full path
//! (fuse the rows, sample) against certified sampling from the workers' certificates (64
//! candidates each), with the share certified and the bytes per token on each wire. Rows are
//! LM-shaped (a long Gaussian tail under a few strong candidates); ARMs are the base plus noise,
//! as a LoRA of it would be. Prints a table; `cargo bench -p genarm-fusion --bench sparse_wire`.

use std::hint::black_box;
use std::time::Instant;

use genarm_fusion::rng::Xoshiro256PlusPlus;
use genarm_fusion::{certify_row, fuse, ArmTerm, OwnedRowCertificate, Sampler, SamplingParams};

const VOCAB: usize = 128_256;
const REQUESTS: usize = 64;
const CANDIDATES: usize = 64;

fn normal(rng: &mut Xoshiro256PlusPlus) -> f32 {
    let u1 = 1.0 - rng.next_f64();
    let u2 = rng.next_f64();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Base and two ARM rows for one request.
fn rows(seed: u64) -> [Vec<f32>; 3] {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut base: Vec<f32> = (0..VOCAB).map(|_| normal(&mut rng) * 2.0).collect();
    for _ in 0..8 {
        let i = (rng.next_u64() % VOCAB as u64) as usize;
        base[i] += 8.0 + 10.0 * rng.next_f64() as f32;
    }
    let arm =
        |rng: &mut Xoshiro256PlusPlus| base.iter().map(|&x| x + 0.5 * normal(rng)).collect::<Vec<f32>>();
    let a1 = arm(&mut rng);
    let a2 = arm(&mut rng);
    [base, a1, a2]
}

fn main() {
    let data: Vec<[Vec<f32>; 3]> = (0..REQUESTS as u64).map(rows).collect();
    let certs: Vec<Vec<OwnedRowCertificate>> = data
        .iter()
        .map(|r| {
            r.iter()
                .map(|row| {
                    let mut c = OwnedRowCertificate::default();
                    certify_row(row, CANDIDATES, &mut c).unwrap();
                    c
                })
                .collect()
        })
        .collect();
    let modes = [
        ("greedy", SamplingParams { temperature: 0.0, ..Default::default() }),
        ("T0.7 top-p0.9", SamplingParams { temperature: 0.7, top_p: Some(0.9), ..Default::default() }),
        ("T1.0", SamplingParams { temperature: 1.0, ..Default::default() }),
    ];
    let alphas = [1.0f32, 0.5];
    println!(
        "\nper token, vocab {VOCAB}, {CANDIDATES} candidates, {REQUESTS} requests × 5 rounds (min of rounds)"
    );
    println!(
        "{:>4} {:>14} {:>13} {:>15} {:>8} {:>10} {:>14} {:>15}",
        "ARMs",
        "sampling",
        "full µs/token",
        "sparse µs/token",
        "ratio",
        "certified",
        "full B/token",
        "sparse B/token"
    );
    let mut fused = vec![0.0f32; VOCAB];
    for arms in 0..3usize {
        for (name, params) in modes {
            let mut full_best = f64::MAX;
            let mut sparse_best = f64::MAX;
            let mut certified = 0;
            for round in 0..5u64 {
                let mut samplers: Vec<Sampler> = (0..REQUESTS as u64)
                    .map(|i| Sampler::new(SamplingParams { seed: i + round, ..params }).unwrap())
                    .collect();
                let t0 = Instant::now();
                for (r, s) in data.iter().zip(&mut samplers) {
                    let terms: Vec<ArmTerm<'_>> =
                        (0..arms).map(|a| ArmTerm { alpha: alphas[a], logits: &r[a + 1] }).collect();
                    fuse(&r[0], &terms, &mut fused).unwrap();
                    black_box(s.sample(&fused).unwrap());
                }
                full_best = full_best.min(t0.elapsed().as_secs_f64());
                let mut samplers: Vec<Sampler> = (0..REQUESTS as u64)
                    .map(|i| Sampler::new(SamplingParams { seed: i + round, ..params }).unwrap())
                    .collect();
                let mut n = 0;
                let t0 = Instant::now();
                for (c, s) in certs.iter().zip(&mut samplers) {
                    let arm_certs: Vec<_> = (0..arms).map(|a| (alphas[a], c[a + 1].as_ref())).collect();
                    if let Ok(Ok(t)) = s.sample_certified(&c[0].as_ref(), &arm_certs, VOCAB, false) {
                        black_box(t);
                        n += 1;
                    }
                }
                sparse_best = sparse_best.min(t0.elapsed().as_secs_f64());
                certified = n;
            }
            let per = |t: f64| t * 1e6 / REQUESTS as f64;
            let models = (arms + 1) as f64;
            let full_bytes = models * VOCAB as f64 * 4.0;
            // 8 bytes per candidate (id and value) plus 24 for the normalizer and bounds; the
            // uncertified share also fetches the full rows.
            let share = certified as f64 / REQUESTS as f64;
            let sparse_bytes = models * (8.0 * CANDIDATES as f64 + 24.0) + (1.0 - share) * full_bytes;
            println!(
                "{arms:>4} {name:>14} {:>13.1} {:>15.1} {:>8.3} {:>9.0}% {:>14.0} {:>15.0}",
                per(full_best),
                per(sparse_best),
                sparse_best / full_best,
                share * 100.0,
                full_bytes,
                sparse_bytes
            );
        }
    }
}
