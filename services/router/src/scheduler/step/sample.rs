//! Phase 5 of a step: for each sequence whose logits are all in, unpack them, fuse
//! (docs/architecture.md §1), sample with the sequence's own sampler, detokenize, check EOS,
//! stop strings, `max_tokens` and the context, and emit the token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use genarm_fusion::{fuse, top_logprobs, unpack, ArmTerm, FusionError};

use super::{Fate, Scheduler};
use crate::scheduler::{Event, FinishReason, SchedulerError};
use crate::workers::StepBackend;

impl<B: StepBackend> Scheduler<B> {
    /// Samples every sequence of the batch that has all its logits and no fate yet.
    pub(super) fn sample_ready(&mut self, fates: &mut BTreeMap<usize, Fate>) {
        let started = Instant::now();
        for si in 0..self.running.len() {
            if fates.contains_key(&si) {
                continue;
            }
            if self.running[si].models.iter().any(|m| m.logits.is_none()) {
                continue;
            }
            if let Some(fate) = self.sample_one(si) {
                fates.insert(si, fate);
            }
        }
        self.metrics.fusion_sampling.record(started.elapsed().as_secs_f64());
    }

    /// Fuses and samples sequence `si`, emits its token; returns its fate when it ends.
    pub(super) fn sample_one(&mut self, si: usize) -> Option<Fate> {
        let vocab = self.cfg.vocab;
        let dtype = self.cfg.dtype;
        let backend = Arc::clone(&self.backend);
        let seq = &mut self.running[si];
        let n = seq.models.len();
        if self.scratch.len() < n {
            self.scratch.resize_with(n, || vec![0.0; vocab]);
        }
        for (slot, sm) in seq.models.iter_mut().enumerate() {
            let bytes = sm.logits.take().unwrap_or_default();
            if let Err(e) = unpack(&bytes, dtype, vocab, &mut self.scratch[slot]) {
                return Some(Fate::Fail(SchedulerError::WorkerFailed {
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
            return Some(Fate::Fail(fusion_error(e, model_name)));
        }
        let sampled = match seq.sampler.sample(&self.fused) {
            Ok(s) => s,
            Err(e) => return Some(Fate::Fail(SchedulerError::Internal(format!("sampling failed: {e}")))),
        };
        let top = match seq.top_logprobs {
            Some(k) if k > 0 => top_logprobs(&self.fused, k).unwrap_or_default(),
            _ => Vec::new(),
        };
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
        FusionError::AllMasked { model_index } | FusionError::ShortLogits { model_index, .. } => {
            SchedulerError::WorkerFailed { worker: model_name(*model_index), message: e.to_string() }
        }
        _ => SchedulerError::Internal(format!("fusion failed: {e}")),
    }
}
