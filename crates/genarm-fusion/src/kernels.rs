//! The vector-friendly inner loops every step runs over the vocabulary: a portable `exp`, the max scan
//! that also spots NaN/+∞, and the sum of exponentials. Written with fixed lanes so the compiler
//! vectorizes them and so results are bitwise identical on every platform (only `+`, `×`, compares and
//! bit operations in IEEE f32/f64; no libm, no fused multiply-add). On x86-64 the exponential loops
//! are also compiled for AVX2 and AVX-512F and picked at run time: the same operations in the same
//! order on wider registers, so the bits do not depend on the CPU either (a test checks it).

/// Lanes of the reductions. The accumulation order is part of the result's bits, so it is fixed here
/// rather than left to the vector width of the machine.
const LANES: usize = 8;

/// Below this, `exp` returns 0 (e^-87 ≈ 1.6e-38, the bottom of the normal f32 range).
const EXP_LO: f32 = -87.0;
/// 1.5 · 2^23: adding it rounds an f32 of magnitude below 2^22 to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cody and Waite): `LN2_HI · n` is exact for |n| ≤ 127.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `e^x` for `x ≤ 0` (Cephes' `expf` polynomial, about 2 ulp), with `-∞ → 0` and results below
/// `e^-87` flushed to 0. Branch-free so loops over it vectorize.
#[inline(always)]
pub(crate) fn exp_nonpos(x: f32) -> f32 {
    let xc = if x < EXP_LO { EXP_LO } else { x };
    let t = xc * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let n_int = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()) as i32;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let y = (p * (r * r) + r) + 1.0;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    let v = y * scale;
    if x < EXP_LO {
        0.0
    } else {
        v
    }
}

/// NaN or +∞: the values no model may send (−∞ is a masked id). Branch-free for vector loops.
#[inline(always)]
fn nan_or_pos_inf(x: f32) -> bool {
    x.is_nan() | (x == f32::INFINITY)
}

/// The maximum of `xs` (−∞ for an empty slice) and whether any entry is NaN or +∞.
#[inline]
pub(crate) fn max_and_nonfinite(xs: &[f32]) -> (f32, bool) {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut bad = [false; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            let x = c[k];
            mx[k] = if x > mx[k] { x } else { mx[k] };
            bad[k] |= nan_or_pos_inf(x);
        }
    }
    for (k, &x) in rest.iter().enumerate() {
        mx[k] = if x > mx[k] { x } else { mx[k] };
        bad[k] |= nan_or_pos_inf(x);
    }
    let mut m = f32::NEG_INFINITY;
    for v in mx {
        m = if v > m { v } else { m };
    }
    (m, bad.iter().any(|&b| b))
}

/// The lowest index holding NaN or +∞ (the slow path after [`max_and_nonfinite`] found one).
pub(crate) fn first_nonfinite(xs: &[f32]) -> Option<usize> {
    xs.iter().position(|&x| nan_or_pos_inf(x))
}

/// Sums lanes in a fixed order.
#[inline(always)]
fn fold(acc: [f64; LANES]) -> f64 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Entries per tile: exponentials are computed a tile at a time by one simple map (which the
/// compiler vectorizes reliably) and then summed by [`accumulate`]. A multiple of [`LANES`], so entry
/// `j` always lands in lane `j % LANES` and tiling never changes the result.
const TILE: usize = 256;

/// Adds `e[j]` (as f64) to lane `j % LANES` of `acc`.
#[inline(always)]
fn accumulate(acc: &mut [f64; LANES], e: &[f32]) {
    let chunks = e.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            acc[k] += c[k] as f64;
        }
    }
    for (k, &v) in rest.iter().enumerate() {
        acc[k] += v as f64;
    }
}

/// `w[j] = exp(arg(xs[j]))`.
#[inline(always)]
fn exp_map(xs: &[f32], arg: impl Fn(f32) -> f32, w: &mut [f32]) {
    for (o, &x) in w.iter_mut().zip(xs) {
        *o = exp_nonpos(arg(x));
    }
}

/// `Σ exp(arg(x))` over `xs`, accumulated in f64; `arg` must map every entry to `[-∞, 0]`
/// (`x − m`, or `(x − m) / T`, with `m` the maximum).
#[inline]
pub(crate) fn sum_exp(xs: &[f32], arg: impl Fn(f32) -> f32 + Copy) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: this CPU supports AVX-512F.
            return unsafe { x86::sum_exp_avx512(xs, arg) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: this CPU supports AVX2.
            return unsafe { x86::sum_exp_avx2(xs, arg) };
        }
    }
    sum_exp_portable(xs, arg)
}

/// [`sum_exp`] for the baseline instruction set (and, inlined, for the wider ones).
#[inline(always)]
fn sum_exp_portable(xs: &[f32], arg: impl Fn(f32) -> f32 + Copy) -> f64 {
    let mut acc = [0.0f64; LANES];
    let mut buf = [0.0f32; TILE];
    for tile in xs.chunks(TILE) {
        let e = &mut buf[..tile.len()];
        exp_map(tile, arg, e);
        accumulate(&mut acc, e);
    }
    fold(acc)
}

/// Writes `w[j] = exp(arg(xs[j]))` and returns their f64 sum (bitwise equal to [`sum_exp`]).
#[inline]
pub(crate) fn exp_into(xs: &[f32], arg: impl Fn(f32) -> f32 + Copy, w: &mut [f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: this CPU supports AVX-512F.
            return unsafe { x86::exp_into_avx512(xs, arg, w) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: this CPU supports AVX2.
            return unsafe { x86::exp_into_avx2(xs, arg, w) };
        }
    }
    exp_into_portable(xs, arg, w)
}

/// [`exp_into`] for the baseline instruction set (and, inlined, for the wider ones).
#[inline(always)]
fn exp_into_portable(xs: &[f32], arg: impl Fn(f32) -> f32 + Copy, w: &mut [f32]) -> f64 {
    debug_assert_eq!(xs.len(), w.len());
    let mut acc = [0.0f64; LANES];
    for (tile, e) in xs.chunks(TILE).zip(w.chunks_mut(TILE)) {
        exp_map(tile, arg, e);
        accumulate(&mut acc, e);
    }
    fold(acc)
}

/// Collects into `ids` (cleared first), in id order, the ids `j` with `xs[j] >= threshold`, and
/// returns the sum of their weights `w[j]`. Tests 16 values at a time with a vector compare, so it
/// costs little when few qualify.
#[inline]
pub(crate) fn gather_at_least(xs: &[f32], threshold: f32, w: &[f32], ids: &mut Vec<u32>) -> f64 {
    const CHUNK: usize = 16;
    debug_assert_eq!(xs.len(), w.len());
    ids.clear();
    let mut mass = 0.0f64;
    let mut base = 0usize;
    for chunk in xs.chunks(CHUNK) {
        let mut hit = false;
        for &v in chunk {
            hit |= v >= threshold;
        }
        if hit {
            for (k, &v) in chunk.iter().enumerate() {
                if v >= threshold {
                    ids.push((base + k) as u32);
                    mass += w[base + k] as f64;
                }
            }
        }
        base += CHUNK;
    }
    mass
}

/// [`exp_into`] per block of `block` entries: the block sums go to `block_sums` (cleared first) and
/// the total returned is their sum in order.
#[inline(always)]
pub(crate) fn exp_into_blocks(
    xs: &[f32],
    arg: impl Fn(f32) -> f32 + Copy,
    w: &mut [f32],
    block: usize,
    block_sums: &mut Vec<f64>,
) -> f64 {
    debug_assert_eq!(xs.len(), w.len());
    block_sums.clear();
    let mut total = 0.0f64;
    for (xb, wb) in xs.chunks(block).zip(w.chunks_mut(block)) {
        let s = exp_into(xb, arg, wb);
        block_sums.push(s);
        total += s;
    }
    total
}

/// The exponential loops compiled for wider x86-64 vector extensions.
#[cfg(target_arch = "x86_64")]
mod x86 {
    /// [`super::sum_exp`] with AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum_exp_avx2(xs: &[f32], arg: impl Fn(f32) -> f32 + Copy) -> f64 {
        super::sum_exp_portable(xs, arg)
    }

    /// [`super::sum_exp`] with AVX-512F.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum_exp_avx512(xs: &[f32], arg: impl Fn(f32) -> f32 + Copy) -> f64 {
        super::sum_exp_portable(xs, arg)
    }

    /// [`super::exp_into`] with AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn exp_into_avx2(xs: &[f32], arg: impl Fn(f32) -> f32 + Copy, w: &mut [f32]) -> f64 {
        super::exp_into_portable(xs, arg, w)
    }

    /// [`super::exp_into`] with AVX-512F.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_into_avx512(xs: &[f32], arg: impl Fn(f32) -> f32 + Copy, w: &mut [f32]) -> f64 {
        super::exp_into_portable(xs, arg, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_on_its_domain() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -87.0 {
            let got = exp_nonpos(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x -= 0.000_731;
        }
        assert!(worst < 3.0e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos(-1000.0), 0.0);
        assert_eq!(exp_nonpos(-0.0), 1.0);
    }

    /// The wider instruction sets give the same bits as the baseline.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn every_instruction_set_gives_the_same_bits() {
        let xs: Vec<f32> =
            (0..10_007u32).map(|i| -((i.wrapping_mul(2654435761) >> 12) as f32) / 9000.0).collect();
        let t = 0.7f32;
        let arg = |x: f32| (x - 0.25) * (1.0 / t);
        let want = sum_exp_portable(&xs, arg);
        let mut w_want = vec![0.0; xs.len()];
        assert_eq!(exp_into_portable(&xs, arg, &mut w_want).to_bits(), want.to_bits());
        let mut w = vec![0.0; xs.len()];
        let mut checked = 0;
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: checked just above.
            unsafe {
                assert_eq!(x86::sum_exp_avx2(&xs, arg).to_bits(), want.to_bits());
                assert_eq!(x86::exp_into_avx2(&xs, arg, &mut w).to_bits(), want.to_bits());
            }
            assert!(w.iter().zip(&w_want).all(|(a, b)| a.to_bits() == b.to_bits()));
            checked += 1;
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: checked just above.
            unsafe {
                assert_eq!(x86::sum_exp_avx512(&xs, arg).to_bits(), want.to_bits());
                assert_eq!(x86::exp_into_avx512(&xs, arg, &mut w).to_bits(), want.to_bits());
            }
            assert!(w.iter().zip(&w_want).all(|(a, b)| a.to_bits() == b.to_bits()));
            checked += 1;
        }
        eprintln!("compared {checked} wider instruction set(s) with the baseline");
    }

    #[test]
    fn max_scan_spots_nan_and_positive_infinity() {
        let mut xs: Vec<f32> = (0..37).map(|i| -(i as f32)).collect();
        assert_eq!(max_and_nonfinite(&xs), (0.0, false));
        xs[20] = f32::NEG_INFINITY;
        assert_eq!(max_and_nonfinite(&xs), (0.0, false));
        xs[33] = f32::NAN;
        assert!(max_and_nonfinite(&xs).1);
        assert_eq!(first_nonfinite(&xs), Some(33));
        xs[33] = 0.0;
        xs[5] = f32::INFINITY;
        assert!(max_and_nonfinite(&xs).1);
        assert_eq!(first_nonfinite(&xs), Some(5));
        assert_eq!(max_and_nonfinite(&[]), (f32::NEG_INFINITY, false));
    }

    #[test]
    fn gathering_finds_exactly_the_values_above_the_threshold() {
        let xs: Vec<f32> = (0..1003).map(|i| if i % 37 == 5 || i == 1002 { -1.0 } else { -9.0 }).collect();
        let w: Vec<f32> = xs.iter().map(|&x| if x > -2.0 { 0.5 } else { 1e-6 }).collect();
        let mut ids = Vec::new();
        let mass = gather_at_least(&xs, -1.0, &w, &mut ids);
        let want: Vec<u32> = (0..1003).filter(|&i| i % 37 == 5 || i == 1002).collect();
        assert_eq!(ids, want);
        assert_eq!(mass, 0.5 * want.len() as f64);
    }

    #[test]
    fn block_sums_add_up_to_the_plain_sum() {
        let xs: Vec<f32> = (0..1000).map(|i| -((i * 7919 % 1000) as f32) / 50.0).collect();
        let mut w = vec![0.0; xs.len()];
        let mut blocks = Vec::new();
        let total = exp_into_blocks(&xs, |x| x, &mut w, 64, &mut blocks);
        assert_eq!(blocks.len(), 16);
        let plain = sum_exp(&xs, |x| x);
        let mut w2 = vec![0.0; xs.len()];
        assert_eq!(exp_into(&xs, |x| x, &mut w2).to_bits(), plain.to_bits());
        assert!((total - plain).abs() < 1e-9 * plain);
        let exact: f64 = xs.iter().map(|&x| (x as f64).exp()).sum();
        assert!((total - exact).abs() < 1e-6 * exact);
        for (wi, &x) in w.iter().zip(&xs) {
            assert_eq!(*wi, exp_nonpos(x));
        }
    }
}
