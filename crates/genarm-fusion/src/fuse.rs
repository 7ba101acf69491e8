//! GenARM fusion: `fused = ℓ_base + Σ α_i ℓ_i` with `ℓ_m = log_softmax(logits_m[..V])` in f32, from the
//! raw logits each worker sends (each model's normalizer is computed once per step, here).

use crate::error::FusionError;
use crate::kernels::{first_nonfinite, max_and_nonfinite, sum_exp};

/// One autoregressive reward model's contribution to a step: its guidance weight `α = w / β` and its
/// raw logits (at least `V` of them; only the first `V` are read).
#[derive(Debug, Clone, Copy)]
pub struct ArmTerm<'a> {
    /// The guidance weight α. A term with `α == 0` is skipped entirely: its logits are not read
    /// (they may be empty, as the router does not call an ARM whose weight is 0).
    pub alpha: f32,
    /// The ARM's raw logits for this step.
    pub logits: &'a [f32],
}

/// A model's log-normalizer parts: the max of its first `V` logits and `ln Σ exp(x − max)`.
pub(crate) struct Normalizer {
    pub(crate) max: f32,
    pub(crate) log_sum: f32,
    /// `Σ exp(x − max)`, whose log `log_sum` is.
    pub(crate) sum: f64,
}

impl Normalizer {
    /// `ℓ(x) = (x − max) − log_sum`: 0 at the max, −∞ for −∞, never NaN.
    #[inline(always)]
    pub(crate) fn apply(&self, x: f32) -> f32 {
        (x - self.max) - self.log_sum
    }
}

/// Validates `logits` (no NaN or +∞, not all −∞) and computes its normalizer.
pub(crate) fn normalizer(logits: &[f32], model_index: usize) -> Result<Normalizer, FusionError> {
    let (max, nonfinite) = max_and_nonfinite(logits);
    if nonfinite {
        let token = first_nonfinite(logits).unwrap_or(0) as u32;
        return Err(FusionError::NonFinite { model_index, token });
    }
    if max == f32::NEG_INFINITY {
        return Err(FusionError::AllMasked { model_index });
    }
    // The max contributes exp(0) = 1, so the sum is ≥ 1 and its log ≥ 0: ℓ ≤ 0 everywhere.
    let sum = sum_exp(logits, |x| x - max);
    Ok(Normalizer { max, log_sum: sum.ln() as f32, sum })
}

/// Writes `log_softmax(logits[..V])` into `out`, where `V = out.len()`, in f32 with a max-subtracted,
/// f64-accumulated normalizer. Masked ids (−∞) stay −∞.
///
/// Errors (model index 0): `logits` shorter than `V`, NaN or +∞ among the first `V`, all of them −∞,
/// or `V == 0`.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) -> Result<(), FusionError> {
    fuse(logits, &[], out)
}

/// Fuses a step's raw logits into `out`: `out = ℓ_base + Σ α_i ℓ_i` with `ℓ_m =
/// log_softmax(logits_m[..V])` in f32 and `V = out.len()`.
///
/// - Model indices in errors: `0` is `base`, `i + 1` is `arms[i]`.
/// - Each model's logits must hold at least `V` values ([`FusionError::ShortLogits`]); values beyond
///   `V` are ignored (not even checked). Among the first `V`, NaN or +∞ is refused with
///   [`FusionError::NonFinite`] naming the lowest such token, and a model whose logits are all −∞ with
///   [`FusionError::AllMasked`]. α must be finite ([`FusionError::BadAlpha`]).
/// - Terms with `α == 0` are skipped, never multiplied and never read, so with no ARMs, or all α = 0,
///   `out` is bit-identical to [`log_softmax`]`(base)` and unguided sampling is exactly base sampling.
///   Two ARMs at `(α, 0)` give bit-identical results to the first alone at `α`.
/// - Terms are added in the order given. f32 addition is not associative, so reordering ARMs could
///   change the last bit of `out`: the router passes ARMs sorted by reward name, which fixes the order
///   (and so the results) for every request, whatever order the ARMs were configured or answered in.
/// - Masked ids: a −∞ logit of any model (at any α, including a negative one) leaves that id at −∞
///   in `out`, never NaN. With a negative α, `α · ℓ` is capped at `f32::MAX` so an absurd weight
///   cannot overflow to +∞.
///
/// On error, `out`'s contents are unspecified.
pub fn fuse(base: &[f32], arms: &[ArmTerm<'_>], out: &mut [f32]) -> Result<(), FusionError> {
    let vocab = out.len();
    if vocab == 0 {
        return Err(FusionError::EmptyLogits);
    }
    // Cheap checks first, so that nothing is computed for a step that is refused anyway.
    if base.len() < vocab {
        return Err(FusionError::ShortLogits { model_index: 0, len: base.len(), vocab });
    }
    for (i, arm) in arms.iter().enumerate() {
        if !arm.alpha.is_finite() {
            return Err(FusionError::BadAlpha { arm_index: i, alpha: arm.alpha });
        }
        if arm.alpha != 0.0 && arm.logits.len() < vocab {
            return Err(FusionError::ShortLogits { model_index: i + 1, len: arm.logits.len(), vocab });
        }
    }

    let base = &base[..vocab];
    let nb = normalizer(base, 0)?;
    for (o, &x) in out.iter_mut().zip(base) {
        *o = nb.apply(x);
    }

    for (i, arm) in arms.iter().enumerate() {
        let alpha = arm.alpha;
        if alpha == 0.0 {
            continue;
        }
        let logits = &arm.logits[..vocab];
        let n = normalizer(logits, i + 1)?;
        if alpha > 0.0 {
            // α·ℓ ∈ [−∞, 0]: −∞ stays −∞ and nothing can become NaN.
            for (o, &x) in out.iter_mut().zip(logits) {
                *o += alpha * n.apply(x);
            }
        } else {
            // α·ℓ ∈ [0, +∞]: a masked id (ℓ = −∞) must stay −∞, and a finite ℓ times a huge |α| is
            // capped so that it cannot overflow to +∞ (or meet an earlier −∞ as NaN).
            for (o, &x) in out.iter_mut().zip(logits) {
                let l = n.apply(x);
                let term = (alpha * l).min(f32::MAX);
                let sum = (*o + term).min(f32::MAX);
                *o = if l == f32::NEG_INFINITY { f32::NEG_INFINITY } else { sum };
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_log_softmax(xs: &[f32]) -> Vec<f64> {
        let m = xs.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let s: f64 = xs.iter().map(|&x| (x as f64 - m).exp()).sum();
        xs.iter().map(|&x| x as f64 - m - s.ln()).collect()
    }

    #[test]
    fn log_softmax_matches_the_naive_formula() {
        let xs: Vec<f32> = (0..300).map(|i| ((i * 37 % 101) as f32) * 0.21 - 7.0).collect();
        let mut out = vec![0.0; 300];
        log_softmax(&xs, &mut out).unwrap();
        for (o, r) in out.iter().zip(naive_log_softmax(&xs)) {
            assert!((*o as f64 - r).abs() < 1e-5, "{o} vs {r}");
        }
    }

    #[test]
    fn only_the_first_v_values_are_read() {
        let base = [1.0, 2.0, 3.0, f32::NAN];
        let arm = [0.5, 0.1, -1.0, f32::INFINITY, 7.0];
        let mut out = [0.0; 3];
        fuse(&base, &[ArmTerm { alpha: 1.0, logits: &arm }], &mut out).unwrap();
        assert!(out.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn zero_alpha_terms_are_not_read() {
        let base = [1.0, 2.0, 3.0];
        let mut a = [0.0; 3];
        let mut b = [0.0; 3];
        log_softmax(&base, &mut a).unwrap();
        fuse(&base, &[ArmTerm { alpha: 0.0, logits: &[] }], &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn empty_vocab_is_refused() {
        assert_eq!(fuse(&[1.0], &[], &mut []), Err(FusionError::EmptyLogits));
    }
}
