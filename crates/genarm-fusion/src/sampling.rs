//! Sampling from the fused distribution: temperature, then top-k, then top-p, then one seeded draw per
//! token; greedy decoding at T = 0; and the top log-probabilities the OpenAI `logprobs` fields report.

use crate::error::FusionError;
use crate::kernels::{
    exp_into, exp_into_blocks, exp_nonpos, first_nonfinite, gather_at_least, max_and_nonfinite, sum_exp,
};
use crate::rng::Xoshiro256PlusPlus;
use crate::select::{rank, top_k};

/// Entries per block of the running sums that locate a full-vocabulary draw without a sequential
/// scan over the whole vocabulary.
const BLOCK: usize = 1024;
/// The first weight threshold tried when gathering top-p candidates: e^-9.2 of the most likely token.
const TOP_P_FIRST_THRESHOLD: f32 = 1.0e-4;
/// The smallest number of candidates the top-p search selects and sorts before widening.
const TOP_P_FIRST_PREFIX: usize = 64;

/// A request's sampling parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax, lowest id on ties). Finite, ≥ 0.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (≥ 1; a `k` at or above the vocabulary size keeps all).
    pub top_k: Option<usize>,
    /// Keep the smallest most-likely prefix whose mass reaches `p`, in `(0, 1]` (`1` keeps all).
    pub top_p: Option<f32>,
    /// Seeds the request's random number generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Temperature 1, no top-k or top-p, seed 0.
    fn default() -> Self {
        Self { temperature: 1.0, top_k: None, top_p: None, seed: 0 }
    }
}

impl SamplingParams {
    /// Checks the ranges: `temperature` finite and ≥ 0, `top_k` ≥ 1, `top_p` in `(0, 1]`. The error
    /// names the field ([`FusionError::InvalidParam`]).
    pub fn validate(&self) -> Result<(), FusionError> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(FusionError::InvalidParam {
                field: "temperature",
                message: format!("must be a finite number >= 0, got {t}"),
            });
        }
        if self.top_k == Some(0) {
            return Err(FusionError::InvalidParam {
                field: "top_k",
                message: "must be at least 1, got 0".into(),
            });
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(FusionError::InvalidParam {
                    field: "top_p",
                    message: format!("must be in (0, 1], got {p}"),
                });
            }
        }
        Ok(())
    }
}

/// One sampled token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub token: u32,
    /// Its natural-log probability under the distribution it was drawn from (after temperature,
    /// top-k, top-p and renormalization); for T = 0, under `softmax(fused)`.
    pub logprob: f32,
}

/// What [`Sampler::prepare`] left in the scratch buffers.
enum Plan {
    /// T = 0.
    Greedy(Sampled),
    /// No truncation: `full_w[id]` holds every weight, `blocks` their per-block sums.
    Full { max: f32, total: f64 },
    /// Truncated: `kept[i]` (in rank order) has weight `kept_w[i]`.
    Kept { max: f32, total: f64 },
}

/// A request's sampler: its parameters, its random number generator (seeded from `params.seed`) and
/// scratch buffers reused from step to step, so that nothing is allocated per token after the first.
///
/// Each call to [`Sampler::sample`] that succeeds takes exactly one draw from the generator, whatever
/// the parameters, so a request's tokens depend only on its seed and its own fused logits — never on
/// which other requests share its batch. Given the same fused logits, the tokens are the same on
/// every platform and CPU: the generator and the `exp` behind the weights are implemented here with
/// plain IEEE arithmetic (reported log-probabilities go through the platform's `ln` and could differ
/// in the last bit).
#[derive(Debug, Clone)]
pub struct Sampler {
    pub(crate) params: SamplingParams,
    pub(crate) rng: Xoshiro256PlusPlus,
    full_w: Vec<f32>,
    blocks: Vec<f64>,
    pub(crate) kept: Vec<u32>,
    pub(crate) kept_w: Vec<f32>,
    pub(crate) sparse: crate::sparse::SparseScratch,
}

impl Sampler {
    /// A sampler for `params` (validated first).
    pub fn new(params: SamplingParams) -> Result<Self, FusionError> {
        params.validate()?;
        Ok(Self {
            params,
            rng: Xoshiro256PlusPlus::seed_from_u64(params.seed),
            full_w: Vec::new(),
            blocks: Vec::new(),
            kept: Vec::new(),
            kept_w: Vec::new(),
            sparse: Default::default(),
        })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Samples one token from `fused` (the output of [`crate::fuse()`]; its length is the vocabulary).
    ///
    /// The distribution is `softmax(fused / T)`, cut to the `top_k` most likely tokens and
    /// renormalized, then cut to the smallest prefix (most likely first, ties by lower id) whose mass
    /// reaches `top_p` and renormalized again. T = 0 is argmax (lowest id on ties). Masked ids (−∞)
    /// are never sampled.
    ///
    /// Errors: empty `fused`, NaN or +∞ in it, or every id masked. No random draw is taken then.
    pub fn sample(&mut self, fused: &[f32]) -> Result<Sampled, FusionError> {
        let plan = self.prepare(fused)?;
        let u = self.rng.next_f64();
        Ok(match plan {
            Plan::Greedy(s) => s,
            Plan::Full { max, total } => {
                let token = self.draw_full(u * total);
                Sampled {
                    token,
                    logprob: logprob(fused[token as usize], max, self.params.temperature, total),
                }
            }
            Plan::Kept { max, total } => {
                let i = draw_kept(&self.kept_w, u * total);
                let token = self.kept[i];
                Sampled {
                    token,
                    logprob: logprob(fused[token as usize], max, self.params.temperature, total),
                }
            }
        })
    }

    /// The distribution [`Sampler::sample`] would draw from for `fused`: `(token, probability)` for
    /// every token it can return, in the order draws walk them (by id without truncation, else most
    /// likely first, ties by lower id). Takes no random draw. For tests and inspection; allocates.
    pub fn distribution(&mut self, fused: &[f32]) -> Result<Vec<(u32, f32)>, FusionError> {
        Ok(match self.prepare(fused)? {
            Plan::Greedy(s) => vec![(s.token, 1.0)],
            Plan::Full { total, .. } => (0u32..)
                .zip(&self.full_w)
                .filter(|(_, &w)| w > 0.0)
                .map(|(id, &w)| (id, (w as f64 / total) as f32))
                .collect(),
            Plan::Kept { total, .. } => {
                self.kept.iter().zip(&self.kept_w).map(|(&id, &w)| (id, (w as f64 / total) as f32)).collect()
            }
        })
    }

    /// Validates `fused` and builds the distribution to draw from in the scratch buffers.
    fn prepare(&mut self, fused: &[f32]) -> Result<Plan, FusionError> {
        let max = checked_max(fused)?;
        let t = self.params.temperature;
        if t == 0.0 {
            let token = fused.iter().position(|&x| x == max).unwrap_or(0);
            let sum = sum_exp(fused, |x| x - max);
            return Ok(Plan::Greedy(Sampled { token: token as u32, logprob: (-sum.ln()) as f32 }));
        }
        let vocab = fused.len();
        let top_k_param = self.params.top_k.filter(|&k| k < vocab);
        let top_p = self.params.top_p.filter(|&p| p < 1.0).map(f64::from);
        match (top_k_param, top_p) {
            (None, None) => {
                self.full_w.resize(vocab, 0.0);
                let total = if t == 1.0 {
                    exp_into_blocks(fused, |x| x - max, &mut self.full_w, BLOCK, &mut self.blocks)
                } else {
                    let inv_t = inverse(t);
                    exp_into_blocks(fused, |x| (x - max) * inv_t, &mut self.full_w, BLOCK, &mut self.blocks)
                };
                Ok(Plan::Full { max, total })
            }
            (Some(k), top_p) => {
                top_k(fused, k, &mut self.kept);
                self.kept_w.clear();
                self.kept_w
                    .extend(self.kept.iter().map(|&id| exp_nonpos(scaled(fused[id as usize], max, t))));
                let mut total: f64 = self.kept_w.iter().map(|&w| w as f64).sum();
                if let Some(p) = top_p {
                    total = nucleus(&mut self.kept, &mut self.kept_w, p * total).unwrap_or(total);
                }
                Ok(Plan::Kept { max, total })
            }
            (None, Some(p)) => {
                self.full_w.resize(vocab, 0.0);
                let total = if t == 1.0 {
                    exp_into(fused, |x| x - max, &mut self.full_w)
                } else {
                    let inv_t = inverse(t);
                    exp_into(fused, |x| (x - max) * inv_t, &mut self.full_w)
                };
                let need = p * total;
                // Candidates are all ids whose fused value is at least a threshold, so they form a
                // prefix of the rank order (exactly, whatever the rounding of the weights), and the
                // prefix holds the nucleus once its mass reaches `need`. Excluding only weights below
                // (1 − p)·total / V leaves out less than (1 − p)·total (total ≥ 1: the max has
                // weight 1), so that weight always suffices; a higher first guess usually does too,
                // with fewer candidates to sort; the last, every unmasked id, guards against rounding.
                let sure = ((1.0 - p) / vocab as f64) as f32;
                let weights = [TOP_P_FIRST_THRESHOLD.max(sure), sure];
                let mut found = false;
                for c in weights {
                    // weight ≥ c ⇔ (x − max) / T ≥ ln c ⇔ x ≥ max + T · ln c
                    let threshold = (max + t * c.ln()).max(f32::MIN);
                    if gather_at_least(fused, threshold, &self.full_w, &mut self.kept) >= need {
                        found = true;
                        break;
                    }
                }
                if !found {
                    gather_at_least(fused, f32::MIN, &self.full_w, &mut self.kept);
                }
                let total = self.nucleus_of_candidates(fused, need);
                Ok(Plan::Kept { max, total })
            }
        }
    }

    /// Top-p over candidates in `kept` that form a prefix of the rank order holding the nucleus:
    /// selects and sorts a growing head of them until its running mass reaches `need`. Leaves the nucleus in
    /// `kept`/`kept_w` and returns its mass.
    fn nucleus_of_candidates(&mut self, fused: &[f32], need: f64) -> f64 {
        let mut n = TOP_P_FIRST_PREFIX;
        loop {
            let len = self.kept.len();
            let head = if n >= len {
                len
            } else {
                self.kept.select_nth_unstable_by(n - 1, |&a, &b| rank(fused, a, b));
                n
            };
            self.kept[..head].sort_unstable_by(|&a, &b| rank(fused, a, b));
            self.kept_w.clear();
            self.kept_w.extend(self.kept[..head].iter().map(|&id| self.full_w[id as usize]));
            if let Some((cut, mass)) = nucleus_len(&self.kept_w, need) {
                self.kept.truncate(cut);
                self.kept_w.truncate(cut);
                return mass;
            }
            if head == len {
                return self.kept_w.iter().map(|&w| w as f64).sum();
            }
            n *= 4;
        }
    }

    /// The id a full-vocabulary draw lands on: the first whose running weight exceeds `target`,
    /// found through the block sums.
    fn draw_full(&self, target: f64) -> u32 {
        let mut cum = 0.0f64;
        for (b, &bs) in self.blocks.iter().enumerate() {
            if cum + bs > target {
                let start = b * BLOCK;
                let end = (start + BLOCK).min(self.full_w.len());
                let mut c = cum;
                let mut last = start;
                for (j, &w) in self.full_w[start..end].iter().enumerate() {
                    if w > 0.0 {
                        c += w as f64;
                        last = start + j;
                        if c > target {
                            return last as u32;
                        }
                    }
                }
                return last as u32;
            }
            cum += bs;
        }
        // Rounding put the target at the very top: the last token with any weight.
        self.full_w.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
    }
}

/// `1 / t`, capped at `f32::MAX` so that a tiny temperature never multiplies 0 by +∞.
#[inline(always)]
pub(crate) fn inverse(t: f32) -> f32 {
    (1.0 / t).min(f32::MAX)
}

/// `x` scaled for the softmax at temperature `t > 0`: `(x − max) · (1 / t)`, exactly `x − max` at
/// T = 1. Every weight and log-probability goes through this one expression.
#[inline(always)]
pub(crate) fn scaled(x: f32, max: f32, t: f32) -> f32 {
    if t == 1.0 {
        x - max
    } else {
        (x - max) * inverse(t)
    }
}

/// `ln(exp(scaled(x)) / total)`.
pub(crate) fn logprob(x: f32, max: f32, t: f32, total: f64) -> f32 {
    let t = if t == 0.0 { 1.0 } else { t };
    (scaled(x, max, t) as f64 - total.ln()) as f32
}

/// The maximum of `fused`, refusing empty input, NaN or +∞, and all −∞.
fn checked_max(fused: &[f32]) -> Result<f32, FusionError> {
    if fused.is_empty() {
        return Err(FusionError::EmptyLogits);
    }
    let (max, nonfinite) = max_and_nonfinite(fused);
    if nonfinite {
        return Err(FusionError::NonFiniteFused { token: first_nonfinite(fused).unwrap_or(0) as u32 });
    }
    if max == f32::NEG_INFINITY {
        return Err(FusionError::NothingToSample);
    }
    Ok(max)
}

/// The length and mass of the shortest prefix of `w` whose running sum reaches `need`, if any.
fn nucleus_len(w: &[f32], need: f64) -> Option<(usize, f64)> {
    let mut cum = 0.0f64;
    for (i, &x) in w.iter().enumerate() {
        cum += x as f64;
        if cum >= need {
            return Some((i + 1, cum));
        }
    }
    None
}

/// Cuts `kept`/`kept_w` (in rank order) to the shortest prefix reaching `need` and returns its mass;
/// `None` (nothing cut) if rounding kept the full sum below `need`.
pub(crate) fn nucleus(kept: &mut Vec<u32>, kept_w: &mut Vec<f32>, need: f64) -> Option<f64> {
    let (cut, mass) = nucleus_len(kept_w, need)?;
    kept.truncate(cut);
    kept_w.truncate(cut);
    Some(mass)
}

/// The index a draw lands on among kept weights: the first whose running sum exceeds `target`, or
/// the last with any weight if rounding put `target` at the very top.
pub(crate) fn draw_kept(w: &[f32], target: f64) -> usize {
    let mut cum = 0.0f64;
    let mut last = 0;
    for (i, &x) in w.iter().enumerate() {
        if x > 0.0 {
            cum += x as f64;
            last = i;
            if cum > target {
                return i;
            }
        }
    }
    last
}

/// The `n` most likely tokens of `softmax(fused)` with their log-probabilities, most likely first
/// (ties by lower id), for the OpenAI `top_logprobs` field. Masked ids (−∞) are never listed, so
/// fewer than `n` come back when fewer are unmasked.
///
/// Errors as [`Sampler::sample`]: empty `fused`, NaN or +∞, or every id masked.
pub fn top_logprobs(fused: &[f32], n: usize) -> Result<Vec<(u32, f32)>, FusionError> {
    let max = checked_max(fused)?;
    let log_sum = sum_exp(fused, |x| x - max).ln() as f32;
    let mut ids = Vec::with_capacity(n.min(fused.len()));
    top_k(fused, n, &mut ids);
    Ok(ids.into_iter().map(|id| (id, (fused[id as usize] - max) - log_sum)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, seed: 1 }
    }

    #[test]
    fn validation_names_the_field() {
        let bad = [
            (params(-0.5, None, None), "temperature"),
            (params(f32::NAN, None, None), "temperature"),
            (params(f32::INFINITY, None, None), "temperature"),
            (params(1.0, Some(0), None), "top_k"),
            (params(1.0, None, Some(0.0)), "top_p"),
            (params(1.0, None, Some(1.5)), "top_p"),
            (params(1.0, None, Some(f32::NAN)), "top_p"),
        ];
        for (p, field) in bad {
            match p.validate() {
                Err(FusionError::InvalidParam { field: f, message }) => {
                    assert_eq!(f, field);
                    assert!(FusionError::InvalidParam { field: f, message }.to_string().contains(field));
                }
                other => panic!("{p:?}: {other:?}"),
            }
            assert!(Sampler::new(p).is_err());
        }
        for ok in [
            params(0.0, Some(1), Some(1.0)),
            params(2.0, Some(100_000), Some(1e-6)),
            SamplingParams::default(),
        ] {
            ok.validate().unwrap();
        }
    }

    #[test]
    fn greedy_takes_the_lowest_id_among_ties() {
        let fused = [-3.0, -0.5, -2.0, -0.5, f32::NEG_INFINITY];
        let mut s = Sampler::new(params(0.0, None, None)).unwrap();
        let out = s.sample(&fused).unwrap();
        assert_eq!(out.token, 1);
        let z: f64 = fused.iter().map(|&x| (x as f64).exp()).sum();
        assert!((out.logprob as f64 - (-0.5 - z.ln())).abs() < 1e-6);
    }

    #[test]
    fn bad_fused_inputs_are_refused() {
        let mut s = Sampler::new(params(1.0, None, None)).unwrap();
        assert_eq!(s.sample(&[]), Err(FusionError::EmptyLogits));
        assert_eq!(s.sample(&[0.0, f32::NAN]), Err(FusionError::NonFiniteFused { token: 1 }));
        assert_eq!(s.sample(&[f32::INFINITY, 0.0]), Err(FusionError::NonFiniteFused { token: 0 }));
        assert_eq!(s.sample(&[f32::NEG_INFINITY; 3]), Err(FusionError::NothingToSample));
        assert_eq!(top_logprobs(&[f32::NEG_INFINITY; 3], 2), Err(FusionError::NothingToSample));
    }

    #[test]
    fn masked_ids_are_never_drawn() {
        let fused = [f32::NEG_INFINITY, -1.0, f32::NEG_INFINITY, -1.2, f32::NEG_INFINITY];
        for p in [params(1.0, None, None), params(3.0, Some(4), None), params(1.0, None, Some(0.999))] {
            let mut s = Sampler::new(p).unwrap();
            for _ in 0..200 {
                let t = s.sample(&fused).unwrap().token;
                assert!(t == 1 || t == 3, "{p:?} drew {t}");
            }
        }
    }

    #[test]
    fn top_logprobs_skips_masked_ids() {
        let fused = [-1.0, f32::NEG_INFINITY, -1.0, -3.0];
        let top = top_logprobs(&fused, 10).unwrap();
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 2, 3]);
        assert!(top_logprobs(&fused, 0).unwrap().is_empty());
    }
}
