//! Percentiles and means of latency samples.

use serde::{Deserialize, Serialize};

/// The `p`-th percentile (0 ≤ p ≤ 100) of `sorted` (ascending) by linear interpolation between
/// the closest ranks (numpy's default `linear` method): rank `p/100·(n−1)`. `None` when empty.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Summary of a set of latency samples, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Summary {
    /// Samples.
    pub count: usize,
    /// Arithmetic mean (`None` without samples).
    pub mean: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest sample.
    pub max: Option<f64>,
}

impl Summary {
    /// Summarizes `samples` (non-finite samples are ignored).
    pub fn of(samples: &[f64]) -> Summary {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let mean = (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        Summary {
            count: v.len(),
            mean,
            p50: percentile_sorted(&v, 50.0),
            p95: percentile_sorted(&v, 95.0),
            p99: percentile_sorted(&v, 99.0),
            max: v.last().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The percentile by its definition, computed differently: the value at fractional position
    /// `q·(n−1)` of the sorted list, interpolated from the two neighbours found by counting.
    fn by_counting(samples: &[f64], p: f64) -> f64 {
        let n = samples.len();
        let pos = p / 100.0 * (n - 1) as f64;
        // The k-th smallest (0-based) for k = floor(pos) and k+1, found without sorting.
        let kth = |k: usize| -> f64 {
            *samples
                .iter()
                .find(|&&x| {
                    let below = samples.iter().filter(|&&y| y < x).count();
                    let equal = samples.iter().filter(|&&y| y == x).count();
                    below <= k && k < below + equal
                })
                .unwrap()
        };
        let k = pos.floor() as usize;
        let a = kth(k);
        let b = kth((k + 1).min(n - 1));
        a + (b - a) * (pos - k as f64)
    }

    #[test]
    fn percentiles_match_known_values_and_an_independent_computation() {
        // 1..=100: numpy.percentile gives 50.5, 95.05 and 99.01.
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v);
        assert!((s.p50.unwrap() - 50.5).abs() < 1e-12);
        assert!((s.p95.unwrap() - 95.05).abs() < 1e-9);
        assert!((s.p99.unwrap() - 99.01).abs() < 1e-9);
        assert_eq!(s.mean, Some(50.5));
        assert_eq!(s.max, Some(100.0));
        // One sample: every percentile is that sample; none: all None.
        let s = Summary::of(&[0.25]);
        assert_eq!((s.p50, s.p95, s.p99), (Some(0.25), Some(0.25), Some(0.25)));
        let s = Summary::of(&[]);
        assert_eq!((s.count, s.mean, s.p50), (0, None, None));
        // Pseudo-random data with ties, unsorted input, NaN ignored.
        let mut x = 12345u64;
        let mut data: Vec<f64> = (0..257)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 33) % 50) as f64 / 7.0
            })
            .collect();
        let s = Summary::of(&data);
        for (p, got) in [(50.0, s.p50), (95.0, s.p95), (99.0, s.p99)] {
            let want = by_counting(&data, p);
            assert!((got.unwrap() - want).abs() < 1e-12, "p{p}: {got:?} vs {want}");
        }
        assert!(s.p50 <= s.p95 && s.p95 <= s.p99 && s.p99 <= s.max);
        data.push(f64::NAN);
        assert_eq!(Summary::of(&data).count, 257);
        assert_eq!(percentile_sorted(&[1.0], 101.0), None);
    }
}
