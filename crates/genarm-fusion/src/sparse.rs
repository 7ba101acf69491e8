//! The exact sparse wire: a worker's compact certificate of one logit row (its top candidates with
//! their raw values, its normalizer and bounds on everything it left out), and the router's
//! certified sampling over the certificates of the base and the ARMs, which either returns exactly
//! the token (and log-probability) the full-vocabulary path would return with the same seeded draw,
//! or says that it cannot prove it, so the router fetches the full rows and takes the full path.
//!
//! Why it is exact (docs/architecture.md §3.4):
//! - a candidate sent by every model gets its fused value from the same f32 operations, in the same
//!   order, as [`crate::fuse()`] (the worker sends the normalizer computed by the same code);
//! - a value a model left out is at most its `outside_max`, and every f32 operation of the fusion is
//!   monotone, so substituting it gives an upper bound on that id's fused value in f32;
//! - ids no model sent are bounded together through the base's tail sum (`tail_log_sum`);
//! - the decision (argmax, top-k set, nucleus cut, or the draw's landing point in id order) is
//!   certified only if it holds for every value the bounds allow, with slack well above the f64
//!   rounding of the full path's sums; the weights and sums that decide the token are then computed
//!   exactly as the full path computes them.
//!
//! Negative weights (whose terms no upper bound limits), and log-probabilities that need the whole
//! vocabulary's normalizer (greedy, pure temperature, `top_logprobs`), always take the full path.

use crate::error::FusionError;
use crate::fuse::normalizer;
use crate::kernels::exp_nonpos;
use crate::sampling::{draw_kept, logprob, nucleus, scaled, Sampler};
use crate::select::top_k;

/// Relative slack on every bounded f64 sum: far above the f64 rounding of summing a vocabulary of
/// f32 weights in any order (about `V · 2⁻⁵³` ≈ 1.5e-11 at V = 128k), far below any real margin.
const SUM_SLACK: f64 = 1e-9;
/// Relative slack on weights computed from f32 bounds (the full path's `exp` is within 2 ulp).
const WEIGHT_SLACK: f64 = 1e-5;

/// One model's certificate for one sequence's row (borrowed form, as decoded from the wire).
#[derive(Debug, Clone, Copy)]
pub struct RowCertificate<'a> {
    /// Candidate token ids (distinct, below the vocabulary size V).
    pub ids: &'a [u32],
    /// Their raw logits, as the full row holds them (finite or −∞).
    pub logits: &'a [f32],
    /// The row's maximum over its first V logits (one of the candidates).
    pub max: f32,
    /// `ln Σ exp(x − max)` over the first V logits, exactly as [`crate::fuse()`] computes it.
    pub log_sum: f32,
    /// The largest raw logit among the ids not in `ids` (−∞ when none or all masked); it bounds
    /// `extra_logits` too.
    pub outside_max: f32,
    /// `ln Σ exp(x − max)` over the ids not in `ids`, rounded up (−∞ when none).
    pub tail_log_sum: f64,
    /// Exact values at further ids, unranked (a refined certificate: the values the router asked
    /// for at other models' candidates); empty on a step's certificate.
    pub extra_ids: &'a [u32],
    /// Their raw logits, same order (each at most `outside_max`).
    pub extra_logits: &'a [f32],
}

/// A certificate a worker owns (built by [`certify_row`], reused from step to step).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnedRowCertificate {
    /// See [`RowCertificate::ids`]; in rank order (larger logit first, then lower id).
    pub ids: Vec<u32>,
    /// See [`RowCertificate::logits`].
    pub logits: Vec<f32>,
    /// See [`RowCertificate::max`].
    pub max: f32,
    /// See [`RowCertificate::log_sum`].
    pub log_sum: f32,
    /// See [`RowCertificate::outside_max`].
    pub outside_max: f32,
    /// See [`RowCertificate::tail_log_sum`].
    pub tail_log_sum: f64,
    /// See [`RowCertificate::extra_ids`].
    pub extra_ids: Vec<u32>,
    /// See [`RowCertificate::extra_logits`].
    pub extra_logits: Vec<f32>,
}

impl OwnedRowCertificate {
    /// The borrowed view.
    pub fn as_ref(&self) -> RowCertificate<'_> {
        RowCertificate {
            ids: &self.ids,
            logits: &self.logits,
            max: self.max,
            log_sum: self.log_sum,
            outside_max: self.outside_max,
            tail_log_sum: self.tail_log_sum,
            extra_ids: &self.extra_ids,
            extra_logits: &self.extra_logits,
        }
    }

    /// Adds the exact values of `row` (the row this certificate was built from) at `ids` that are
    /// not candidates already, in order and once each: a refined certificate. Its bounds still
    /// hold, as they bound every id that is not a candidate. Errors on an id outside the row.
    pub fn add_extras(&mut self, row: &[f32], ids: &[u32]) -> Result<(), String> {
        self.extra_ids.clear();
        self.extra_logits.clear();
        if ids.is_empty() {
            return Ok(());
        }
        let mut taken: Vec<u32> = self.ids.clone();
        taken.sort_unstable();
        for &id in ids {
            let Some(&x) = row.get(id as usize) else {
                return Err(format!("extra id {id} is outside the row of {} logits", row.len()));
            };
            if let Err(at) = taken.binary_search(&id) {
                taken.insert(at, id);
                self.extra_ids.push(id);
                self.extra_logits.push(x);
            }
        }
        Ok(())
    }
}

/// The ids that model `model`'s certificate lacks but another model's ranks: what a refined
/// certificate of `model` adds as extras, so that every candidate's fused value is exact. Sorted,
/// distinct, into `out`.
pub fn missing_ids(certs: &[RowCertificate<'_>], model: usize, out: &mut Vec<u32>) {
    out.clear();
    let Some(own) = certs.get(model) else { return };
    for (m, c) in certs.iter().enumerate() {
        if m != model {
            out.extend_from_slice(c.ids);
        }
    }
    out.sort_unstable();
    out.dedup();
    let mut mine: Vec<u32> = own.ids.iter().chain(own.extra_ids).copied().collect();
    mine.sort_unstable();
    out.retain(|id| mine.binary_search(id).is_err());
}

/// Builds the certificate of `row` (the first V logits of a sequence's row) with its `k` best
/// candidates (at least 1). Errors as [`crate::fuse()`] would refuse the row: NaN or +∞, or every
/// id masked (model index 0; the worker sends its full row instead, so the router reports it as the
/// full path does).
pub fn certify_row(row: &[f32], k: usize, out: &mut OwnedRowCertificate) -> Result<(), FusionError> {
    if row.is_empty() {
        return Err(FusionError::EmptyLogits);
    }
    let n = normalizer(row, 0)?;
    let k = k.max(1);
    // One more than sent: the (k+1)-th best is the largest value left out.
    top_k(row, k + 1, &mut out.ids);
    let outside_max = if out.ids.len() > k {
        let id = out.ids.pop().unwrap_or(0);
        row[id as usize]
    } else {
        f32::NEG_INFINITY
    };
    out.logits.clear();
    out.logits.extend(out.ids.iter().map(|&id| row[id as usize]));
    // The same f32 terms as the whole sum, so the difference is the tail's sum up to the f64
    // rounding of the two sums, which the slack covers.
    let sent: f64 = out.logits.iter().map(|&x| exp_nonpos(x - n.max) as f64).sum();
    let tail =
        if outside_max == f32::NEG_INFINITY { 0.0 } else { (n.sum - sent).max(0.0) + n.sum * SUM_SLACK };
    out.max = n.max;
    out.log_sum = n.log_sum;
    out.outside_max = outside_max;
    out.tail_log_sum = if tail > 0.0 { tail.ln() } else { f64::NEG_INFINITY };
    out.extra_ids.clear();
    out.extra_logits.clear();
    Ok(())
}

/// Why [`Sampler::sample_certified`] could not certify a token: the router must fetch the full rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Uncertified {
    /// An ARM has a negative weight: its terms are not bounded above.
    NegativeWeight,
    /// The log-probability needs the whole vocabulary's normalizer (greedy or pure temperature).
    NeedsLogprob,
    /// The candidates do not prove the argmax (greedy, and every truncated mode needs it).
    Argmax,
    /// The candidates do not hold the top-k set.
    TopK,
    /// The nucleus cut is not proven by the candidates and the tail bounds.
    TopP,
    /// The draw's landing point in id order is not proven (pure temperature).
    Draw,
}

impl Uncertified {
    /// Whether a deeper certificate could prove the token (more candidates, and every model's
    /// value at the others' candidates): the bounds were too loose. Negative weights and whole-row
    /// log-probabilities need the full rows whatever the certificates hold.
    pub fn refinable(self) -> bool {
        matches!(self, Uncertified::Argmax | Uncertified::TopK | Uncertified::TopP | Uncertified::Draw)
    }

    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Uncertified::NegativeWeight => "negative_weight",
            Uncertified::NeedsLogprob => "logprob",
            Uncertified::Argmax => "argmax",
            Uncertified::TopK => "top_k",
            Uncertified::TopP => "top_p",
            Uncertified::Draw => "draw",
        }
    }
}

/// A token proven to be the full path's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Certified {
    /// The token id.
    pub token: u32,
    /// Its log-probability, bit-identical to the full path's, when it was asked for.
    pub logprob: Option<f32>,
}

/// One candidate of the union: its id, its fused value (exact, or an upper bound) and whether it is
/// exact.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    fused: f32,
    exact: bool,
}

/// Scratch buffers of the certified path, kept in the [`Sampler`] so that no step allocates.
#[derive(Debug, Clone, Default)]
pub(crate) struct SparseScratch {
    /// Each model's `(id, logit)` pairs sorted by id.
    by_id: Vec<Vec<(u32, f32)>>,
    /// Each model's position in `by_id` during the merge.
    cursor: Vec<usize>,
    cands: Vec<Candidate>,
    exact: Vec<Candidate>,
}

/// A model's normalized value `(x − max) − log_sum`, as [`crate::fuse()`] computes it.
#[inline(always)]
fn normalized(c: &RowCertificate<'_>, x: f32) -> f32 {
    (x - c.max) - c.log_sum
}

/// Checks that a certificate is consistent; the error names the model.
fn validate(c: &RowCertificate<'_>, vocab: usize, model_index: usize) -> Result<(), FusionError> {
    let bad = |message: String| Err(FusionError::BadCertificate { model_index, message });
    if c.ids.len() != c.logits.len() {
        return bad(format!("{} candidate ids but {} values", c.ids.len(), c.logits.len()));
    }
    if c.ids.is_empty() {
        return bad("no candidates".into());
    }
    if !c.max.is_finite() || !c.log_sum.is_finite() || c.log_sum < 0.0 {
        return bad(format!(
            "normalizer max {} log_sum {} (both must be finite, log_sum >= 0)",
            c.max, c.log_sum
        ));
    }
    if c.outside_max.is_nan() || c.outside_max > c.max {
        return bad(format!("outside_max {} is NaN or above the row's max {}", c.outside_max, c.max));
    }
    if c.tail_log_sum.is_nan() || c.tail_log_sum > (c.log_sum as f64) + 1e-3 {
        return bad(format!(
            "tail_log_sum {} is NaN or above the row's log_sum {}",
            c.tail_log_sum, c.log_sum
        ));
    }
    let mut has_max = false;
    for (&id, &x) in c.ids.iter().zip(c.logits) {
        if id as usize >= vocab {
            return bad(format!("candidate id {id} is outside the vocabulary of {vocab}"));
        }
        if x.is_nan() || x > c.max {
            return bad(format!("candidate {id} has value {x}, NaN or above the row's max {}", c.max));
        }
        if x < c.outside_max {
            return bad(format!(
                "candidate {id} has value {x}, below outside_max {} (the bound on every value not sent)",
                c.outside_max
            ));
        }
        has_max |= x == c.max;
    }
    if !has_max {
        return bad(format!("no candidate holds the row's max {}", c.max));
    }
    if c.extra_ids.len() != c.extra_logits.len() {
        return bad(format!("{} extra ids but {} values", c.extra_ids.len(), c.extra_logits.len()));
    }
    for (&id, &x) in c.extra_ids.iter().zip(c.extra_logits) {
        if id as usize >= vocab {
            return bad(format!("extra id {id} is outside the vocabulary of {vocab}"));
        }
        if x.is_nan() || x > c.outside_max {
            return bad(format!(
                "extra id {id} has value {x}, NaN or above outside_max {} (the bound on every id not ranked)",
                c.outside_max
            ));
        }
    }
    Ok(())
}

impl Sampler {
    /// Samples from the certificates of the base and of the ARMs (`(α, certificate)`, α ≠ 0, in the
    /// order [`crate::fuse()`] would add them) over a vocabulary of `vocab` ids, if the certificates
    /// prove the token the full path — [`crate::fuse()`] then [`Sampler::sample`] on the full rows —
    /// would return. Certified, it takes the one random draw the full path would take; uncertified
    /// it takes none, so the full path can follow on the same sampler. `want_logprob` asks for the
    /// token's log-probability (bit-identical to the full path's, or uncertified).
    ///
    /// Errors: a certificate that is inconsistent (ids out of range, values above its max or below
    /// its outside bound, NaN, no candidate at the max), naming the model (`0` is the base, `i + 1`
    /// is `arms[i]`), or a non-finite α.
    pub fn sample_certified(
        &mut self,
        base: &RowCertificate<'_>,
        arms: &[(f32, RowCertificate<'_>)],
        vocab: usize,
        want_logprob: bool,
    ) -> Result<Result<Certified, Uncertified>, FusionError> {
        if vocab == 0 {
            return Err(FusionError::EmptyLogits);
        }
        validate(base, vocab, 0)?;
        for (i, (alpha, c)) in arms.iter().enumerate() {
            if !alpha.is_finite() {
                return Err(FusionError::BadAlpha { arm_index: i, alpha: *alpha });
            }
            validate(c, vocab, i + 1)?;
        }
        if arms.iter().any(|(a, _)| *a < 0.0) {
            return Ok(Err(Uncertified::NegativeWeight));
        }
        let models: Vec<&RowCertificate<'_>> =
            std::iter::once(base).chain(arms.iter().filter(|(a, _)| *a != 0.0).map(|(_, c)| c)).collect();
        let alphas: Vec<f32> = arms.iter().filter(|(a, _)| *a != 0.0).map(|(a, _)| *a).collect();
        let t = self.params.temperature;
        if want_logprob && t == 0.0 {
            return Ok(Err(Uncertified::NeedsLogprob));
        }

        // The union of candidates, each with its fused value: exact where every model sent it, else
        // the f32 upper bound with `outside_max` in place of each missing value.
        let s = &mut self.sparse;
        s.by_id.resize_with(models.len(), Vec::new);
        for (m, c) in models.iter().enumerate() {
            let v = &mut s.by_id[m];
            v.clear();
            v.extend(c.ids.iter().copied().zip(c.logits.iter().copied()));
            v.extend(c.extra_ids.iter().copied().zip(c.extra_logits.iter().copied()));
            v.sort_unstable_by_key(|p| p.0);
            if v.windows(2).any(|w| w[0].0 == w[1].0) {
                let model_index = if m == 0 { 0 } else { arm_index_of(arms, m - 1) + 1 };
                return Err(FusionError::BadCertificate {
                    model_index,
                    message: "duplicate candidate ids".into(),
                });
            }
        }
        // One merge over the models' id-sorted lists: the union in id order, each id's values
        // read off the lists' heads (no search per id and model).
        s.cands.clear();
        s.cursor.clear();
        s.cursor.resize(models.len(), 0);
        let (by_id, cursor) = (&s.by_id, &mut s.cursor);
        loop {
            let next = by_id.iter().zip(cursor.iter()).filter_map(|(v, &c)| v.get(c).map(|p| p.0)).min();
            let Some(id) = next else { break };
            let mut exact = true;
            let mut value = |m: usize| match by_id[m].get(cursor[m]) {
                Some(&(i, x)) if i == id => {
                    cursor[m] += 1;
                    x
                }
                _ => {
                    exact = false;
                    models[m].outside_max
                }
            };
            let fused = fuse_values(&models, &alphas, &mut value);
            s.cands.push(Candidate { id, fused, exact });
        }
        let rest = vocab - s.cands.len().min(vocab);
        let rest_bound = if rest > 0 {
            fuse_values(&models, &alphas, &mut |m| models[m].outside_max)
        } else {
            f32::NEG_INFINITY
        };
        // The best any id not known exactly can reach.
        let unknown_max = s.cands.iter().filter(|c| !c.exact).map(|c| c.fused).fold(rest_bound, f32::max);
        // The best exact candidate, the lowest id among equals (the union is in id order).
        let mut top: Option<Candidate> = None;
        for c in s.cands.iter().filter(|c| c.exact && c.fused > f32::NEG_INFINITY) {
            if top.is_none_or(|t| c.fused > t.fused) {
                top = Some(*c);
            }
        }
        let Some(top) = top else { return Ok(Err(Uncertified::Argmax)) };
        if top.fused <= unknown_max {
            return Ok(Err(Uncertified::Argmax));
        }
        let fmax = top.fused;

        if t == 0.0 {
            self.rng.next_f64();
            return Ok(Ok(Certified { token: top.id, logprob: None }));
        }
        // The truncated modes walk the exact candidates in rank order.
        s.exact.clear();
        s.exact.extend(s.cands.iter().filter(|c| c.exact && c.fused > f32::NEG_INFINITY).copied());
        s.exact.sort_unstable_by(|a, b| {
            b.fused.partial_cmp(&a.fused).unwrap_or(std::cmp::Ordering::Equal).then(a.id.cmp(&b.id))
        });
        let top_k_param = self.params.top_k.filter(|&k| k < vocab);
        let top_p = self.params.top_p.filter(|&p| p < 1.0).map(f64::from);

        if let Some(k) = top_k_param {
            // The top k are exactly the first k exact candidates if the k-th beats every unknown id
            // (or, with fewer than k finite exact ones, if no unknown id can be finite).
            let proven = if s.exact.len() >= k {
                s.exact[k - 1].fused > unknown_max
            } else {
                unknown_max == f32::NEG_INFINITY
            };
            if !proven {
                return Ok(Err(Uncertified::TopK));
            }
            let kept = s.exact.len().min(k);
            self.kept.clear();
            self.kept.extend(s.exact[..kept].iter().map(|c| c.id));
            self.kept_w.clear();
            self.kept_w.extend(s.exact[..kept].iter().map(|c| exp_nonpos(scaled(c.fused, fmax, t))));
            let mut total: f64 = self.kept_w.iter().map(|&w| w as f64).sum();
            if let Some(p) = top_p {
                total = nucleus(&mut self.kept, &mut self.kept_w, p * total).unwrap_or(total);
            }
            return Ok(Ok(self.draw_kept_certified(total, fmax, t, want_logprob)));
        }

        // Both remaining modes need bounds on the whole vocabulary's weight.
        let inv_t = 1.0 / t as f64;
        let unknown_mass = {
            let partial: f64 =
                s.cands.iter().filter(|c| !c.exact).map(|c| weight_bound(c.fused, fmax, inv_t)).sum();
            partial + rest_mass_bound(&models, &alphas, fmax, inv_t, vocab)
        };
        let exact_mass: f64 = s.exact.iter().map(|c| exp_nonpos(scaled(c.fused, fmax, t)) as f64).sum();
        let total_lo = exact_mass * (1.0 - SUM_SLACK);
        let total_hi = (exact_mass + unknown_mass) * (1.0 + SUM_SLACK);

        if let Some(p) = top_p {
            // The full path cuts the rank order at the first running sum >= p · total. Proven if some
            // exact prefix's sum reaches the highest possible need while the shorter one stays below
            // the lowest, and that prefix's last id beats every unknown one.
            let need_lo = p * total_lo;
            let need_hi = p * total_hi;
            let mut cum = 0.0f64;
            let mut proven = false;
            self.kept.clear();
            self.kept_w.clear();
            for c in &s.exact {
                if c.fused <= unknown_max {
                    break;
                }
                let w = exp_nonpos(scaled(c.fused, fmax, t));
                let before = cum;
                cum += w as f64;
                self.kept.push(c.id);
                self.kept_w.push(w);
                if cum >= need_lo {
                    proven = cum >= need_hi && before < need_lo;
                    break;
                }
            }
            if proven {
                return Ok(Ok(self.draw_kept_certified(cum, fmax, t, want_logprob)));
            }
            return Ok(Err(Uncertified::TopP));
        }

        // Pure temperature: the full path walks ids in order until the running weight exceeds
        // u · total. Unknown ids may sit anywhere below a candidate, so each candidate's running sum
        // before it is only known up to the unknown mass.
        if want_logprob {
            return Ok(Err(Uncertified::NeedsLogprob));
        }
        let mut probe = self.rng.clone();
        let u = probe.next_f64();
        let target_lo = u * total_lo * (1.0 - SUM_SLACK);
        let target_hi = u * total_hi * (1.0 + SUM_SLACK);
        let slack = total_hi * SUM_SLACK;
        s.exact.sort_unstable_by_key(|c| c.id);
        let mut before = 0.0f64;
        for c in &s.exact {
            let w = exp_nonpos(scaled(c.fused, fmax, t)) as f64;
            if before + unknown_mass + slack <= target_lo && before + w - slack > target_hi {
                self.rng = probe;
                return Ok(Ok(Certified { token: c.id, logprob: None }));
            }
            before += w;
            if before - slack > target_hi {
                break;
            }
        }
        Ok(Err(Uncertified::Draw))
    }

    /// Draws among `kept`/`kept_w` (already the full path's kept set) with the one random draw.
    fn draw_kept_certified(&mut self, total: f64, fmax: f32, t: f32, want_logprob: bool) -> Certified {
        let u = self.rng.next_f64();
        let i = draw_kept(&self.kept_w, u * total);
        let token = self.kept[i];
        let fused = self.sparse.exact.iter().find(|c| c.id == token).map(|c| c.fused).unwrap_or(fmax);
        Certified { token, logprob: want_logprob.then(|| logprob(fused, fmax, t, total)) }
    }
}

/// The index in `arms` of the `n`-th arm with a non-zero weight.
fn arm_index_of(arms: &[(f32, RowCertificate<'_>)], n: usize) -> usize {
    arms.iter().enumerate().filter(|(_, (a, _))| *a != 0.0).nth(n).map(|(i, _)| i).unwrap_or(n)
}

/// The fused value of one id as [`crate::fuse()`] computes it (non-negative weights), from each
/// model's raw value `value(m)`.
#[inline]
fn fuse_values(models: &[&RowCertificate<'_>], alphas: &[f32], value: &mut impl FnMut(usize) -> f32) -> f32 {
    let mut o = normalized(models[0], value(0));
    for (m, &alpha) in alphas.iter().enumerate() {
        o += alpha * normalized(models[m + 1], value(m + 1));
    }
    o
}

/// An upper bound on the full path's weight `exp((f − fmax) / T)` of an id whose fused value is at
/// most `bound`.
fn weight_bound(bound: f32, fmax: f32, inv_t: f64) -> f64 {
    if bound == f32::NEG_INFINITY {
        return 0.0;
    }
    // The full path rounds (f − fmax) · (1/T) in f32: allow a few ulp of the argument's magnitude.
    let arg = (bound as f64 - fmax as f64) * inv_t;
    let arg = arg + arg.abs() * 1e-6 + 1e-6;
    arg.min(0.0).exp() * (1.0 + WEIGHT_SLACK)
}

/// An upper bound on the total weight of the ids no model sent: each has base logit x ≤ the base's
/// `outside_max` and ARM values at most their `outside_max`, and together their base mass
/// `Σ exp(x − max_b)` is at most `exp(tail_log_sum)`.
fn rest_mass_bound(
    models: &[&RowCertificate<'_>],
    alphas: &[f32],
    fmax: f32,
    inv_t: f64,
    vocab: usize,
) -> f64 {
    let base = models[0];
    if base.tail_log_sum == f64::NEG_INFINITY || base.outside_max == f32::NEG_INFINITY {
        return 0.0;
    }
    // The ARMs' contribution, in f64: A = Σ α_i ℓ_i(outside_max_i) (every ℓ_i ≤ 0, α_i > 0).
    let mut arm_part = 0.0f64;
    let mut magnitude = 1.0 + fmax.abs() as f64 + base.max.abs() as f64 + base.log_sum as f64;
    for (m, &alpha) in alphas.iter().enumerate() {
        let c = models[m + 1];
        if c.outside_max == f32::NEG_INFINITY {
            return 0.0;
        }
        arm_part += alpha as f64 * ((c.outside_max as f64 - c.max as f64) - c.log_sum as f64);
        magnitude += alpha as f64 * (c.max.abs() as f64 + c.log_sum as f64 + c.outside_max.abs() as f64);
    }
    // Σ over the tail of exp((x − max_b) / T): with u = outside_max − max_b ≤ 0 and T ≤ 1, each term is
    // at most exp(x − max_b) · exp(u · (1/T − 1)); with T > 1, the power mean bounds it by
    // n^(1 − 1/T) · tail^(1/T), and each term by exp(u / T).
    let ln_tail = base.tail_log_sum;
    let u = base.outside_max as f64 - base.max as f64;
    let n = vocab as f64;
    let ln_sum = if inv_t >= 1.0 {
        ln_tail + u * (inv_t - 1.0)
    } else {
        ((1.0 - inv_t) * n.ln() + inv_t * ln_tail).min(n.ln() + u * inv_t)
    };
    // fused(id) ≈ (x − max_b) − log_sum_b + A; the weight is exp((fused − fmax) / T). The f32 rounding
    // of the full path's fused values is covered by a margin proportional to the magnitudes involved.
    let shift = (-(base.log_sum as f64) + arm_part - fmax as f64) * inv_t;
    let margin = 1e-5 * magnitude * inv_t;
    (ln_sum + shift + margin).exp() * (1.0 + WEIGHT_SLACK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SamplingParams;

    #[test]
    fn a_row_certificate_holds_the_best_candidates_and_bounds_the_rest() {
        let row = [0.5, 3.0, f32::NEG_INFINITY, 2.0, -1.0, 2.0];
        let mut c = OwnedRowCertificate::default();
        certify_row(&row, 2, &mut c).unwrap();
        assert_eq!(c.ids, vec![1, 3]);
        assert_eq!(c.logits, vec![3.0, 2.0]);
        assert_eq!(c.max, 3.0);
        assert_eq!(c.outside_max, 2.0);
        let tail: f64 = [0.5f64, -1.0, 2.0].iter().map(|x| (x - 3.0).exp()).sum();
        assert!(c.tail_log_sum >= tail.ln() && c.tail_log_sum < tail.ln() + 1e-4, "{}", c.tail_log_sum);
        certify_row(&row, 10, &mut c).unwrap();
        assert_eq!(c.ids.len(), 5);
        assert_eq!(c.outside_max, f32::NEG_INFINITY);
        assert_eq!(c.tail_log_sum, f64::NEG_INFINITY);
        assert!(matches!(certify_row(&[1.0, f32::NAN], 1, &mut c), Err(FusionError::NonFinite { .. })));
    }

    #[test]
    fn extras_add_exact_values_once_each_and_keep_the_bounds() {
        let row = [0.5, 3.0, f32::NEG_INFINITY, 2.0, -1.0, 2.5];
        let mut c = OwnedRowCertificate::default();
        certify_row(&row, 2, &mut c).unwrap();
        let before = c.clone();
        c.add_extras(&row, &[4, 1, 2, 4, 0]).unwrap();
        assert_eq!(c.extra_ids, vec![4, 2, 0], "ranked ids and repeats are skipped, order kept");
        assert_eq!(c.extra_logits, vec![-1.0, f32::NEG_INFINITY, 0.5]);
        assert_eq!((c.outside_max, c.tail_log_sum), (before.outside_max, before.tail_log_sum));
        let err = c.add_extras(&row, &[6]).unwrap_err();
        assert!(err.contains("extra id 6 is outside the row of 6"), "{err}");
        certify_row(&row, 3, &mut c).unwrap();
        assert!(c.extra_ids.is_empty() && c.extra_logits.is_empty(), "a new certificate has no extras");
    }

    #[test]
    fn missing_ids_are_the_other_models_candidates_this_one_lacks() {
        let a = OwnedRowCertificate { ids: vec![5, 1, 7], ..Default::default() };
        let b = OwnedRowCertificate { ids: vec![1, 9], extra_ids: vec![5], ..Default::default() };
        let c = OwnedRowCertificate { ids: vec![3, 9], ..Default::default() };
        let views = [a.as_ref(), b.as_ref(), c.as_ref()];
        let mut out = Vec::new();
        missing_ids(&views, 0, &mut out);
        assert_eq!(out, vec![3, 9]);
        missing_ids(&views, 1, &mut out);
        assert_eq!(out, vec![3, 7], "its own extras count as held");
        missing_ids(&views, 2, &mut out);
        assert_eq!(out, vec![1, 5, 7]);
    }

    #[test]
    fn inconsistent_certificates_are_refused_naming_the_model() {
        let ok = OwnedRowCertificate {
            ids: vec![0, 1],
            logits: vec![2.0, 1.0],
            max: 2.0,
            log_sum: 0.5,
            outside_max: 0.0,
            tail_log_sum: -1.0,
            ..Default::default()
        };
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        let cases: Vec<(OwnedRowCertificate, &str)> = vec![
            (OwnedRowCertificate { outside_max: 1.5, ..ok.clone() }, "below outside_max"),
            (OwnedRowCertificate { logits: vec![2.0, f32::NAN], ..ok.clone() }, "NaN"),
            (OwnedRowCertificate { ids: vec![0, 9], ..ok.clone() }, "outside the vocabulary"),
            (OwnedRowCertificate { max: 3.0, ..ok.clone() }, "no candidate holds"),
            (OwnedRowCertificate { ids: vec![1, 1], ..ok.clone() }, "duplicate"),
            (OwnedRowCertificate { log_sum: f32::NAN, ..ok.clone() }, "normalizer"),
            (OwnedRowCertificate { tail_log_sum: f64::NAN, ..ok.clone() }, "tail_log_sum"),
            (
                OwnedRowCertificate { extra_ids: vec![2], extra_logits: vec![0.5], ..ok.clone() },
                "above outside_max",
            ),
            (OwnedRowCertificate { extra_ids: vec![2], extra_logits: vec![f32::NAN], ..ok.clone() }, "NaN"),
            (
                OwnedRowCertificate { extra_ids: vec![9], extra_logits: vec![-1.0], ..ok.clone() },
                "outside the vocabulary",
            ),
            (OwnedRowCertificate { extra_ids: vec![1], extra_logits: vec![-1.0], ..ok.clone() }, "duplicate"),
            (
                OwnedRowCertificate { extra_ids: vec![2, 3], extra_logits: vec![-1.0], ..ok.clone() },
                "2 extra ids",
            ),
        ];
        for (bad, needle) in cases {
            let err = s.sample_certified(&ok.as_ref(), &[(1.0, bad.as_ref())], 4, false).unwrap_err();
            match &err {
                FusionError::BadCertificate { model_index: 1, message } => {
                    assert!(message.contains(needle), "{message} lacks {needle}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
