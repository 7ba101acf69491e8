//! The queue side of the actor: submissions become waiting sequences, cancelled ones leave,
//! waiting ones are admitted into the batch within its size and prefill backlog, and sequences
//! that leave are released on every worker that holds them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use genarm_fusion::Sampler;

use super::error::SchedulerError;
use super::handle::{Event, Submitted};
use super::seq::{Seq, SeqModel};
use super::Scheduler;
use crate::workers::StepBackend;

impl<B: StepBackend> Scheduler<B> {
    /// Turns a submission into a waiting sequence (or fails it at once if its sampler is
    /// invalid, which validation prevents).
    pub(super) fn enqueue(&mut self, s: Submitted) {
        let Submitted { req, events, permit, received, span } = s;
        let sampler = match Sampler::new(req.sampling) {
            Ok(s) => s,
            Err(e) => {
                let _ = events.send(Event::Failed(SchedulerError::InvalidSampling(e.to_string())));
                return;
            }
        };
        let mut models = Vec::with_capacity(1 + req.arms.len());
        models.push(SeqModel { model: 0, alpha: 0.0, prompt: req.base_prompt, pos: 0, logits: None });
        for arm in req.arms {
            models.push(SeqModel {
                model: arm.model,
                alpha: arm.alpha,
                prompt: arm.prompt,
                pos: 0,
                logits: None,
            });
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let queue_wait = Some(tracing::info_span!(parent: &span, "router.queue_wait"));
        self.waiting.push_back(Seq {
            id: self.next_seq_id.fetch_add(1, Ordering::Relaxed),
            arrival,
            request_id: req.request_id,
            models,
            generated: Vec::new(),
            sampler,
            max_tokens: req.max_tokens,
            top_logprobs: req.top_logprobs,
            text: req.text,
            events,
            permit: Some(permit),
            replays: 0,
            prefilling: true,
            received,
            last_token: None,
            span,
            queue_wait,
            outage_since: None,
        });
    }

    /// Removes requests whose client went away; releases running ones on every worker.
    pub(super) async fn drop_cancelled(&mut self) {
        self.waiting.retain(|s| {
            if s.cancelled() {
                tracing::info!(request_id = %s.request_id, "client went away while queued");
            }
            !s.cancelled()
        });
        if !self.running.iter().any(Seq::cancelled) {
            return;
        }
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].cancelled() {
                let s = self.running.remove(i);
                tracing::info!(request_id = %s.request_id, seq_id = s.id, tokens = s.generated.len(),
                    "client went away: cancelling");
                gone.push(s);
            } else {
                i += 1;
            }
        }
        self.admission_blocked = false;
        self.solo_next = false;
        self.release_all_owned(gone).await;
    }

    /// Moves waiting sequences into the batch while there is room and the prefill backlog (the
    /// prompt tokens the running sequences have yet to send) is under one step's budget.
    ///
    /// A prompt longer than the budget is admitted like any other and prefilled in chunks
    /// across steps (`step::plan`), so it never holds up the running streams. Admitting only
    /// while the backlog is under the budget keeps the rest waiting in the queue (and in
    /// `router.queue_wait`) rather than idle in the batch: the step could not start them anyway,
    /// since prefill is served in arrival order. The first sequence is admitted whatever its
    /// size, so a long prompt never waits for anything but a place in the batch.
    pub(super) fn admit(&mut self) {
        if self.running.is_empty() {
            self.admission_blocked = false;
        }
        if self.admission_blocked {
            return;
        }
        let limit = if self.solo_next { 1 } else { self.cfg.max_batch_size };
        let mut backlog: usize = self.running.iter().map(Seq::prefill_backlog).sum();
        while self.running.len() < limit && backlog < self.cfg.max_batch_tokens {
            let Some(mut seq) = self.waiting.pop_front() else { break };
            if let Some(m) = seq.models.iter().map(|m| m.model).find(|&m| !self.backend.is_ready(m)) {
                let err = SchedulerError::WorkerNotReady { worker: self.backend.display_name(m) };
                let _ = seq.events.send(Event::Failed(err));
                continue;
            }
            backlog += seq.prefill_backlog();
            seq.permit = None;
            seq.prefilling = true;
            self.running.push(seq);
        }
    }

    /// Fails every request (shutdown) and releases them.
    pub(super) async fn abort_all(&mut self) {
        let err = SchedulerError::ShuttingDown;
        for s in self.waiting.drain(..) {
            let _ = s.events.send(Event::Failed(err.clone()));
        }
        let running = std::mem::take(&mut self.running);
        for s in &running {
            let _ = s.events.send(Event::Failed(err.clone()));
        }
        self.release_all_owned(running).await;
    }

    /// Releases `seqs` on every worker that holds them (see [`release_per_model`]).
    pub(crate) async fn release_all_owned(&mut self, seqs: Vec<Seq>) {
        let mut per_model: Vec<Vec<u64>> = vec![Vec::new(); self.backend.num_models()];
        for s in seqs {
            for m in &s.models {
                if let Some(ids) = per_model.get_mut(m.model) {
                    ids.push(s.id);
                }
            }
        }
        release_per_model(&self.backend, per_model).await;
    }
}

/// Sends the releases of `per_model[m]` to each model's worker.
pub(crate) async fn release_per_model<B: StepBackend>(backend: &Arc<B>, per_model: Vec<Vec<u64>>) {
    let mut awaited = Vec::new();
    for (m, ids) in per_model.into_iter().enumerate() {
        if ids.is_empty() {
            continue;
        }
        let b = Arc::clone(backend);
        if backend.is_ready(m) {
            awaited.push(async move {
                if let Err(e) = b.release(m, ids).await {
                    tracing::warn!(worker = %b.display_name(m), error = %e, "release failed");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = b.release(m, ids).await {
                    tracing::debug!(worker = %b.display_name(m), error = %e, "release to a failed worker failed");
                }
            });
        }
    }
    futures::future::join_all(awaited).await;
}

/// Where this router's sequence ids start: a random point of `[1, 2^62)`, so that routers that
/// share workers never use the same id. Two routers run side by side during a rolling update
/// (the old one drains while the new one serves), and a restarted router meets its
/// predecessor's orphaned sequences on the workers: with ids counted from 1 in every router,
/// one router's step could continue the other's KV (same id, same position) and silently
/// sample from another request's context. Two ranges of a billion ids each overlap with
/// probability below 2^-31.
pub(crate) fn first_seq_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness once per process (no extra dependency).
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    (h.finish() >> 2).max(1)
}
