//! Phase 5 of a step: for each sequence whose logits are all in, certify its token from the
//! sparse wire's certificates (docs/architecture.md §3.4), or unpack the full rows, fuse
//! (docs/architecture.md §1) and sample with the sequence's own sampler; then detokenize, check
//! EOS, stop strings, `max_tokens` and the context, and emit the token. The sequences are spread
//! over the scheduler's sampling pool (`--sampling-threads`), never run on the async runtime's
//! threads: each sequence's work reads only its own rows and sampler, so the order in which the
//! pool runs them changes nothing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use genarm_fusion::{fuse, top_logprobs, unpack, ArmTerm, FusionError, RowCertificate, Sampled};
use rayon::prelude::*;

use super::{Fate, Scheduler};
use crate::scheduler::seq::{ModelRow, Seq, SeqModel};
use crate::scheduler::{Event, FinishReason, SchedulerConfig, SchedulerError};
use crate::telemetry::SchedMetrics;
use crate::workers::{StepBackend, WorkerHealth};

thread_local! {
    /// Per pool thread: unpacked rows per model slot, and the fused row.
    static SCRATCH: RefCell<(Vec<Vec<f32>>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// What a sequence's turn in the pool decided.
enum Turn {
    /// Its token was emitted; it goes on, or ends with this fate.
    Emitted(Option<Fate>),
    /// The sparse wire could not certify its token from what it holds.
    NeedRows(Need),
    /// It fails (or ends) without a token.
    Fate(Fate),
}

/// Why a sequence's certificates could not prove its token, and whether deeper ones could.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Need {
    /// The metrics label of the reason (`genarm_sparse_fallbacks_total`).
    pub reason: &'static str,
    /// Refined certificates could prove it (the bounds were too loose); otherwise only the
    /// full rows can.
    pub refinable: bool,
}

/// What every sequence's turn reads.
struct Ctx<'a> {
    cfg: &'a SchedulerConfig,
    health: &'a dyn WorkerHealth,
    metrics: &'a SchedMetrics,
}

impl<B: StepBackend> Scheduler<B> {
    /// Samples every sequence of the batch that has all its logits and no fate yet. Returns the
    /// sequences whose token the sparse wire could not certify, and why: refined certificates or
    /// their full rows must be fetched.
    pub(super) fn sample_ready(&mut self, fates: &mut BTreeMap<usize, Fate>) -> Vec<(usize, Need)> {
        let ready: Vec<bool> = (0..self.running.len())
            .map(|si| !fates.contains_key(&si) && self.running[si].models.iter().all(|m| m.logits.is_some()))
            .collect();
        self.sample_marked(&ready, fates)
    }

    /// Samples the sequences `need` again, from the refined certificates or full rows fetched
    /// for them; returns those still uncertified.
    pub(super) fn sample_fetched(
        &mut self,
        need: &[usize],
        fates: &mut BTreeMap<usize, Fate>,
    ) -> Vec<(usize, Need)> {
        let mut ready = vec![false; self.running.len()];
        for &si in need {
            ready[si] = !fates.contains_key(&si);
        }
        self.sample_marked(&ready, fates)
    }

    /// The turns of the sequences marked in `ready`: fates recorded, the uncertified returned.
    fn sample_marked(&mut self, ready: &[bool], fates: &mut BTreeMap<usize, Fate>) -> Vec<(usize, Need)> {
        let mut need_rows = Vec::new();
        for (si, turn) in self.take_turns(ready) {
            match turn {
                Turn::Emitted(Some(fate)) | Turn::Fate(fate) => {
                    fates.insert(si, fate);
                }
                Turn::Emitted(None) => {}
                Turn::NeedRows(need) => need_rows.push((si, need)),
            }
        }
        need_rows
    }

    /// Runs the turn of every sequence marked in `ready` on the sampling pool, and records the
    /// time in `genarm_fusion_sampling_seconds`.
    fn take_turns(&mut self, ready: &[bool]) -> Vec<(usize, Turn)> {
        let started = Instant::now();
        let ctx = Ctx { cfg: &self.cfg, health: &*self.backend, metrics: &self.metrics };
        let running = &mut self.running;
        let pool = &self.sampling_pool;
        let mut work = || -> Vec<(usize, Turn)> {
            pool.install(|| {
                running
                    .par_iter_mut()
                    .enumerate()
                    .filter(|(si, _)| ready[*si])
                    .map(|(si, seq)| (si, turn(seq, &ctx)))
                    .collect()
            })
        };
        // The actor's thread waits while the pool works; on a multi-threaded runtime tokio first
        // hands this thread's other tasks to the others.
        let turns = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
            _ => work(),
        };
        self.metrics.fusion_sampling.record(started.elapsed().as_secs_f64());
        turns
    }
}

/// One sequence's turn: choose its token, then emit it.
fn turn(seq: &mut Seq, ctx: &Ctx<'_>) -> Turn {
    match choose(seq, ctx) {
        Ok(Ok(choice)) => Turn::Emitted(emit(seq, choice, ctx)),
        Ok(Err(need)) => Turn::NeedRows(need),
        Err(fate) => Turn::Fate(fate),
    }
}

/// The token of `seq`: certified from the sparse wire's certificates when every model sent one,
/// else fused and sampled from the full rows; [`Need`] when more must be fetched.
fn choose(seq: &mut Seq, ctx: &Ctx<'_>) -> Result<Result<Choice, Need>, Fate> {
    let sparse = seq.models.iter().filter(|m| matches!(m.logits, Some(ModelRow::Sparse(_)))).count();
    if sparse == 0 {
        return choose_full(seq, ctx).map(Ok);
    }
    if sparse < seq.models.len() {
        // A worker sent its whole row (one its certificate cannot describe, e.g. NaN): the
        // others' rows are fetched so that the full path decides, and reports, as always.
        return Ok(Err(Need { reason: "full_row", refinable: false }));
    }
    if seq.top_logprobs.is_some_and(|k| k > 0) {
        return Ok(Err(Need { reason: "top_logprobs", refinable: false }));
    }
    let base = row(&seq.models[0]);
    let arms: Vec<_> = seq.models[1..].iter().map(|m| (m.alpha, row(m))).collect();
    let want_logprob = seq.top_logprobs.is_some();
    let outcome = seq.sampler.sample_certified(&base, &arms, ctx.cfg.vocab, want_logprob);
    match outcome {
        Ok(Ok(c)) => {
            ctx.metrics.sparse_certified.increment(1);
            for m in &mut seq.models {
                m.logits = None;
            }
            Ok(Ok(Choice { token: c.token, logprob: c.logprob.unwrap_or(f32::NAN), top: Vec::new() }))
        }
        Ok(Err(why)) => Ok(Err(Need { reason: why.label(), refinable: why.refinable() })),
        Err(e) => {
            let name = |i: usize| ctx.health.display_name(seq.models.get(i).map(|m| m.model).unwrap_or(0));
            Err(Fate::Fail(fusion_error(e, name)))
        }
    }
}

/// The full path: unpack every row, fuse, sample (in this pool thread's scratch).
fn choose_full(seq: &mut Seq, ctx: &Ctx<'_>) -> Result<Choice, Fate> {
    let vocab = ctx.cfg.vocab;
    SCRATCH.with_borrow_mut(|(rows, fused)| {
        let n = seq.models.len();
        if rows.len() < n {
            rows.resize_with(n, Vec::new);
        }
        fused.resize(vocab, 0.0);
        for (slot, sm) in seq.models.iter_mut().enumerate() {
            let bytes = match sm.logits.take() {
                Some(ModelRow::Packed(b)) => b,
                _ => Default::default(),
            };
            rows[slot].resize(vocab, 0.0);
            if let Err(e) = unpack(&bytes, ctx.cfg.row_dtype(), vocab, &mut rows[slot]) {
                return Err(Fate::Fail(SchedulerError::WorkerFailed {
                    worker: ctx.health.display_name(sm.model),
                    message: format!("sent malformed logits: {e}"),
                }));
            }
        }
        let arms: Vec<ArmTerm<'_>> = seq.models[1..]
            .iter()
            .zip(&rows[1..n])
            .map(|(sm, l)| ArmTerm { alpha: sm.alpha, logits: l })
            .collect();
        let model_name = |i: usize| ctx.health.display_name(seq.models.get(i).map(|m| m.model).unwrap_or(0));
        if let Err(e) = fuse(&rows[0], &arms, fused) {
            return Err(Fate::Fail(fusion_error(e, model_name)));
        }
        let sampled = match seq.sampler.sample(fused) {
            Ok(s) => s,
            Err(e) => return Err(Fate::Fail(SchedulerError::Internal(format!("sampling failed: {e}")))),
        };
        let top = match seq.top_logprobs {
            Some(k) if k > 0 => top_logprobs(fused, k).unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(Choice { token: sampled.token, logprob: sampled.logprob, top })
    })
}

/// Appends `seq`'s token, detokenizes, checks the stops and emits it; returns its fate when it
/// ends.
fn emit(seq: &mut Seq, choice: Choice, ctx: &Ctx<'_>) -> Option<Fate> {
    let Choice { token, logprob, top } = choice;
    let sampled = Sampled { token, logprob };
    let metrics = ctx.metrics;
    let cfg = ctx.cfg;
    seq.prefilling = false;
    seq.generated.push(sampled.token);
    let now = Instant::now();
    match seq.last_token {
        None => metrics.ttft.record(now.duration_since(seq.received).as_secs_f64()),
        Some(last) => metrics.inter_token.record(now.duration_since(last).as_secs_f64()),
    }
    seq.last_token = Some(now);
    metrics.tokens.increment(1);

    let mut finish = None;
    let mut text = String::new();
    if cfg.eos.contains(&sampled.token) {
        finish = Some(FinishReason::Stop);
    } else {
        let step = seq.text.push(sampled.token);
        text = step.text;
        if step.stopped {
            finish = Some(FinishReason::Stop);
        }
    }
    if finish.is_none() {
        let at_context = (0..seq.models.len()).any(|s| seq.target_len(s) >= cfg.max_context as usize);
        if seq.generated.len() >= seq.max_tokens as usize || at_context {
            finish = Some(FinishReason::Length);
        }
    }
    if finish.is_some_and(|r| r == FinishReason::Length || cfg.eos.contains(&sampled.token)) {
        text.push_str(&seq.text.finish());
    }
    let logprob = seq.top_logprobs.map(|_| sampled.logprob);
    let sent = seq.events.send(Event::Token { token: sampled.token, text, logprob, top }).is_ok();
    match finish {
        Some(reason) => {
            metrics.request_duration.record(now.duration_since(seq.received).as_secs_f64());
            let _ = seq.events.send(Event::Finished { reason, usage: seq.usage() });
            Some(Fate::Done)
        }
        None => {
            if !sent {
                tracing::debug!(request_id = %seq.request_id, "client went away; dropped next step");
            }
            None
        }
    }
}

/// A model's certificate (every row is one when this is called).
fn row(m: &SeqModel) -> RowCertificate<'_> {
    match &m.logits {
        Some(ModelRow::Sparse(r)) => r.certificate(),
        _ => unreachable!("every row is a certificate here"),
    }
}

/// A sequence's token for this step.
struct Choice {
    token: u32,
    /// Its log-probability (NaN when the request did not ask for it and the sparse wire did not
    /// compute it).
    logprob: f32,
    top: Vec<(u32, f32)>,
}

/// Maps a fusion error to the client error, naming the model at fault.
fn fusion_error(e: FusionError, model_name: impl Fn(usize) -> String) -> SchedulerError {
    match &e {
        FusionError::NonFinite { model_index, token } => SchedulerError::WorkerFailed {
            worker: model_name(*model_index),
            message: format!(
                "sent a non-finite logit (NaN or +inf) for token {token}; the request was stopped before \
                 sampling (a worker must send finite logits, or -inf for masked tokens): check that worker's \
                 model and device"
            ),
        },
        FusionError::BadCertificate { model_index, .. } => SchedulerError::WorkerFailed {
            worker: model_name(*model_index),
            message: format!("{e}; the request was stopped before sampling: check that worker's release"),
        },
        FusionError::AllMasked { model_index } | FusionError::ShortLogits { model_index, .. } => {
            SchedulerError::WorkerFailed { worker: model_name(*model_index), message: e.to_string() }
        }
        _ => SchedulerError::Internal(format!("fusion failed: {e}")),
    }
}
