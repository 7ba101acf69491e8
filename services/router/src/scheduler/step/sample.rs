//! Phase 5 of a step: for each sequence whose logits are all in, certify its token from the
//! sparse wire's certificates (docs/architecture.md §3.4), or unpack the full rows, fuse
//! (docs/architecture.md §1) and sample with the sequence's own sampler; then detokenize, check
//! EOS, stop strings, `max_tokens` and the context, and emit the token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use genarm_fusion::{fuse, top_logprobs, unpack, ArmTerm, FusionError, RowCertificate, Sampled};

use super::{Fate, Scheduler};
use crate::scheduler::seq::{ModelRow, SeqModel};
use crate::scheduler::{Event, FinishReason, SchedulerError};
use crate::workers::StepBackend;

impl<B: StepBackend> Scheduler<B> {
    /// Samples every sequence of the batch that has all its logits and no fate yet. Returns the
    /// sequences whose token the sparse wire could not certify: their full rows must be fetched.
    pub(super) fn sample_ready(&mut self, fates: &mut BTreeMap<usize, Fate>) -> Vec<usize> {
        let started = Instant::now();
        let mut need_rows = Vec::new();
        for si in 0..self.running.len() {
            if fates.contains_key(&si) {
                continue;
            }
            if self.running[si].models.iter().any(|m| m.logits.is_none()) {
                continue;
            }
            match self.choose(si) {
                Ok(Some(choice)) => {
                    if let Some(fate) = self.emit(si, choice) {
                        fates.insert(si, fate);
                    }
                }
                Ok(None) => need_rows.push(si),
                Err(fate) => {
                    fates.insert(si, fate);
                }
            }
        }
        self.metrics.fusion_sampling.record(started.elapsed().as_secs_f64());
        need_rows
    }

    /// Fuses and samples sequence `si` from full rows (after a fetch) and emits its token; returns
    /// its fate when it ends.
    pub(super) fn sample_full(&mut self, si: usize) -> Option<Fate> {
        match self.choose(si) {
            Ok(Some(choice)) => self.emit(si, choice),
            Ok(None) => {
                Some(Fate::Fail(SchedulerError::Internal("a fetched row was still a certificate".into())))
            }
            Err(fate) => Some(fate),
        }
    }

    /// The token of sequence `si`: certified from the sparse wire's certificates when every model
    /// sent one, else fused and sampled from the full rows; `None` when the rows must be fetched.
    fn choose(&mut self, si: usize) -> Result<Option<Choice>, Fate> {
        let seq = &self.running[si];
        let sparse = seq.models.iter().filter(|m| matches!(m.logits, Some(ModelRow::Sparse(_)))).count();
        if sparse == 0 {
            return self.choose_full(si).map(Some);
        }
        if sparse < seq.models.len() {
            // A worker sent its whole row (one its certificate cannot describe, e.g. NaN): the
            // others' rows are fetched so that the full path decides, and reports, as always.
            self.metrics.sparse_fallback("full_row");
            return Ok(None);
        }
        if seq.top_logprobs.is_some_and(|k| k > 0) {
            self.metrics.sparse_fallback("top_logprobs");
            return Ok(None);
        }
        let backend = Arc::clone(&self.backend);
        let seq = &mut self.running[si];
        let base = row(&seq.models[0]);
        let arms: Vec<_> = seq.models[1..].iter().map(|m| (m.alpha, row(m))).collect();
        let want_logprob = seq.top_logprobs.is_some();
        match seq.sampler.sample_certified(&base, &arms, self.cfg.vocab, want_logprob) {
            Ok(Ok(c)) => {
                self.metrics.sparse_certified.increment(1);
                for m in &mut seq.models {
                    m.logits = None;
                }
                Ok(Some(Choice { token: c.token, logprob: c.logprob.unwrap_or(f32::NAN), top: Vec::new() }))
            }
            Ok(Err(why)) => {
                self.metrics.sparse_fallback(why.label());
                Ok(None)
            }
            Err(e) => {
                let name = |i: usize| backend.display_name(seq.models.get(i).map(|m| m.model).unwrap_or(0));
                Err(Fate::Fail(fusion_error(e, name)))
            }
        }
    }

    /// The full path: unpack every row, fuse, sample.
    fn choose_full(&mut self, si: usize) -> Result<Choice, Fate> {
        let vocab = self.cfg.vocab;
        let dtype = self.cfg.dtype;
        let backend = Arc::clone(&self.backend);
        let seq = &mut self.running[si];
        let n = seq.models.len();
        if self.scratch.len() < n {
            self.scratch.resize_with(n, || vec![0.0; vocab]);
        }
        for (slot, sm) in seq.models.iter_mut().enumerate() {
            let bytes = match sm.logits.take() {
                Some(ModelRow::Packed(b)) => b,
                _ => Default::default(),
            };
            if let Err(e) = unpack(&bytes, dtype, vocab, &mut self.scratch[slot]) {
                return Err(Fate::Fail(SchedulerError::WorkerFailed {
                    worker: backend.display_name(sm.model),
                    message: format!("sent malformed logits: {e}"),
                }));
            }
        }
        let arms: Vec<ArmTerm<'_>> = seq.models[1..]
            .iter()
            .zip(&self.scratch[1..n])
            .map(|(sm, l)| ArmTerm { alpha: sm.alpha, logits: l })
            .collect();
        let model_name = |i: usize| backend.display_name(seq.models.get(i).map(|m| m.model).unwrap_or(0));
        if let Err(e) = fuse(&self.scratch[0], &arms, &mut self.fused) {
            return Err(Fate::Fail(fusion_error(e, model_name)));
        }
        let sampled = match seq.sampler.sample(&self.fused) {
            Ok(s) => s,
            Err(e) => return Err(Fate::Fail(SchedulerError::Internal(format!("sampling failed: {e}")))),
        };
        let top = match seq.top_logprobs {
            Some(k) if k > 0 => top_logprobs(&self.fused, k).unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(Choice { token: sampled.token, logprob: sampled.logprob, top })
    }

    /// Appends sequence `si`'s token, detokenizes, checks the stops and emits it; returns its fate
    /// when it ends.
    fn emit(&mut self, si: usize, choice: Choice) -> Option<Fate> {
        let Choice { token, logprob, top } = choice;
        let sampled = Sampled { token, logprob };
        let seq = &mut self.running[si];
        seq.prefilling = false;
        seq.generated.push(sampled.token);
        let now = Instant::now();
        match seq.last_token {
            None => self.metrics.ttft.record(now.duration_since(seq.received).as_secs_f64()),
            Some(last) => self.metrics.inter_token.record(now.duration_since(last).as_secs_f64()),
        }
        seq.last_token = Some(now);
        self.metrics.tokens.increment(1);

        let mut finish = None;
        let mut text = String::new();
        if self.cfg.eos.contains(&sampled.token) {
            finish = Some(FinishReason::Stop);
        } else {
            let step = seq.text.push(sampled.token);
            text = step.text;
            if step.stopped {
                finish = Some(FinishReason::Stop);
            }
        }
        if finish.is_none() {
            let at_context =
                (0..seq.models.len()).any(|s| seq.target_len(s) >= self.cfg.max_context as usize);
            if seq.generated.len() >= seq.max_tokens as usize || at_context {
                finish = Some(FinishReason::Length);
            }
        }
        if finish.is_some_and(|r| r == FinishReason::Length || self.cfg.eos.contains(&sampled.token)) {
            text.push_str(&seq.text.finish());
        }
        let logprob = seq.top_logprobs.map(|_| sampled.logprob);
        let sent = seq.events.send(Event::Token { token: sampled.token, text, logprob, top }).is_ok();
        match finish {
            Some(reason) => {
                self.metrics.request_duration.record(now.duration_since(seq.received).as_secs_f64());
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
