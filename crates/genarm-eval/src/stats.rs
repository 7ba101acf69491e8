//! The statistics of the report: a mean with its normal-approximation 95% confidence interval,
//! and the Wilson score interval of a win rate (ties counted half).

/// z for a two-sided 95% interval: Φ⁻¹(0.975).
pub const Z95: f64 = 1.959_963_984_540_054;

/// A point estimate with a two-sided interval. NaN when undefined (no data; an interval from
/// one value), which serializes as JSON `null`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Estimate {
    /// The estimate.
    pub value: f64,
    /// Lower end of the 95% interval.
    pub low: f64,
    /// Upper end of the 95% interval.
    pub high: f64,
    /// How many observations it is computed from.
    pub n: usize,
}

impl Estimate {
    /// The estimate with nothing to estimate from.
    pub fn none() -> Estimate {
        Estimate { value: f64::NAN, low: f64::NAN, high: f64::NAN, n: 0 }
    }
}

/// Mean of `xs` with the 95% interval mean ± z·s/√n (s the sample standard deviation, n − 1
/// in the denominator). One value: the interval is NaN; none: everything is NaN.
pub fn mean_ci(xs: &[f64]) -> Estimate {
    let n = xs.len();
    if n == 0 {
        return Estimate::none();
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Estimate { value: mean, low: f64::NAN, high: f64::NAN, n };
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = Z95 * (var / n as f64).sqrt();
    Estimate { value: mean, low: mean - half, high: mean + half, n }
}

/// The win rate `successes / n` with its 95% Wilson score interval. `successes` may be
/// fractional (a tie counts half a win).
pub fn wilson(successes: f64, n: usize) -> Estimate {
    if n == 0 {
        return Estimate::none();
    }
    let nf = n as f64;
    let p = successes / nf;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / nf;
    let center = (p + z2 / (2.0 * nf)) / denom;
    let half = Z95 / denom * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).max(0.0).sqrt();
    Estimate { value: p, low: (center - half).max(0.0), high: (center + half).min(1.0), n }
}

/// Win rate of `scores` over `baseline`, pair by pair (a higher score wins, equal scores count
/// half), with its Wilson interval. Pairs where either side is missing are skipped.
pub fn win_rate(pairs: impl IntoIterator<Item = (f64, f64)>) -> Estimate {
    let mut wins = 0.0;
    let mut n = 0;
    for (x, base) in pairs {
        if !(x.is_finite() && base.is_finite()) {
            continue;
        }
        n += 1;
        if x > base {
            wins += 1.0;
        } else if x == base {
            wins += 0.5;
        }
    }
    wilson(wins, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn mean_ci_matches_the_hand_computed_interval() {
        // mean 3, s = √2.5, s/√5 = 0.70711, half = 1.95996 · 0.70711 = 1.38590.
        let e = mean_ci(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(close(e.value, 3.0));
        assert!(close(e.low, 1.614_096_175_650_322), "{e:?}");
        assert!(close(e.high, 4.385_903_824_349_678), "{e:?}");
        assert_eq!(e.n, 5);
        // Constant data: a zero-width interval.
        let c = mean_ci(&[2.0, 2.0, 2.0]);
        assert_eq!((c.value, c.low, c.high), (2.0, 2.0, 2.0));
        let one = mean_ci(&[7.0]);
        assert_eq!(one.value, 7.0);
        assert!(one.low.is_nan() && one.high.is_nan());
        assert!(mean_ci(&[]).value.is_nan());
    }

    #[test]
    fn wilson_matches_the_hand_computed_intervals() {
        // 8 of 10: p = 0.8, center = (0.8 + 0.19208)/1.38415 = 0.71673, half = 0.22658.
        let e = wilson(8.0, 10);
        assert!(close(e.value, 0.8));
        assert!(close(e.low, 0.490_162_471_536_641_8), "{e:?}");
        assert!(close(e.high, 0.943_317_848_545_624_8), "{e:?}");
        // Fractional successes (a tie counts half): 2.5 of 4.
        let e = wilson(2.5, 4);
        assert!(close(e.low, 0.219_426_520_065_362_84) && close(e.high, 0.908_100_770_820_987_8), "{e:?}");
        // 0 of 5: the interval starts at 0 and is not degenerate.
        let e = wilson(0.0, 5);
        assert!(close(e.low, 0.0) && close(e.high, 0.434_482_464_783_174_76), "{e:?}");
        assert!(wilson(0.0, 0).value.is_nan());
    }

    #[test]
    fn win_rate_counts_ties_half_and_skips_missing_pairs() {
        let e = win_rate([(2.0, 1.0), (1.0, 1.0), (0.0, 1.0), (3.0, f64::NAN), (5.0, 4.0)]);
        assert_eq!(e.n, 4);
        assert!(close(e.value, 2.5 / 4.0));
        assert_eq!(e, wilson(2.5, 4));
    }
}
