//! One step of the running batch: send each model's new tokens to its worker (the base and,
//! concurrently, exactly the ARMs the batch's requests need), handle per-sequence worker errors
//! (replay, KV exhaustion → requeue or preempt the youngest, worker failure → fail only the
//! requests that used it, or with a restart grace period hold them without steps until a worker
//! of that model is ready again and replay them there, failing them past the period), then for each sequence whose logits are all in: unpack, fuse
//! (DESIGN §1), sample with its own sampler, detokenize, check EOS / stop strings / max_tokens,
//! and emit events. Finished, failed and preempted sequences are released on every worker.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use genarm_fusion::{fuse, top_logprobs, unpack, ArmTerm, FusionError};

use crate::backend::{SeqErrorKind, SeqOutcome, SeqStep, StepBackend};
use crate::error::RouterError;
use crate::scheduler::{release_per_model, Event, FinishReason, Scheduler, MAX_REPLAYS};

/// What happens to a running sequence at the end of a step.
enum Fate {
    /// Fails with this error.
    Fail(RouterError),
    /// Goes back to the front of the queue (released everywhere, replayed later).
    Requeue,
    /// Finished normally.
    Done,
}

impl<B: StepBackend> Scheduler<B> {
    /// Runs one step of the running batch (see the module docs).
    #[tracing::instrument(name = "router.step", skip_all, fields(batch = self.running.len()))]
    pub(crate) async fn step(&mut self) {
        let n_models = self.backend.num_models();
        let batch = self.running.len() as u64;
        let step_started = Instant::now();
        // A step serves many requests: its span (its own trace) links to each request's span.
        for seq in &self.running {
            tracing::Span::current().follows_from(&seq.span);
        }
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats.max_batch.fetch_max(batch, Ordering::Relaxed);
        self.metrics.steps.increment(1);
        self.metrics.step_sequences.increment(batch);

        // 1. What each model must compute: (running index, model slot) and the payload.
        let mut targets: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n_models];
        let mut payloads: Vec<Vec<SeqStep>> = vec![Vec::new(); n_models];
        let mut stuck: BTreeMap<usize, Fate> = BTreeMap::new();
        let grace = self.restart_grace;
        let mut on_hold = 0usize;
        for (si, seq) in self.running.iter_mut().enumerate() {
            if !grace.is_zero() {
                // Restart grace: a sequence whose model slot has no ready worker gets no step
                // until one is ready again (then it is replayed), or fails past the grace period.
                if let Some(m) = seq.models.iter().map(|m| m.model).find(|&m| !self.backend.is_ready(m)) {
                    let since = *seq.outage_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > grace {
                        stuck.insert(
                            si,
                            Fate::Fail(RouterError::WorkerFailed {
                                worker: self.backend.display_name(m),
                                message: format!(
                                    "no ready worker came back within the restart grace period of {} s \
                                     (--worker-restart-grace-secs)",
                                    grace.as_secs_f64()
                                ),
                            }),
                        );
                    } else {
                        on_hold += 1;
                    }
                    continue;
                }
                if seq.outage_since.take().is_some() {
                    tracing::info!(request_id = %seq.request_id, seq_id = seq.id,
                        "worker ready again: resuming the request by replay");
                }
            }
            // The first step of a request ends its queue wait.
            seq.queue_wait = None;
            for (slot, sm) in seq.models.iter().enumerate() {
                let target = seq.target_len(slot);
                if sm.logits.is_some() {
                    continue;
                }
                if sm.pos as usize >= target {
                    // Nothing to send yet no logits: it could never progress (validation
                    // prevents this; fail rather than spin).
                    stuck.insert(
                        si,
                        Fate::Fail(RouterError::Internal(format!(
                            "sequence {} has no new token for {}",
                            seq.id,
                            self.backend.display_name(sm.model)
                        ))),
                    );
                    continue;
                }
                targets[sm.model].push((si, slot));
                payloads[sm.model].push(SeqStep {
                    seq_id: seq.id,
                    start_pos: sm.pos,
                    tokens: seq.tokens_from(slot, sm.pos as usize),
                });
            }
        }

        // 2. One concurrent Step per model that has work.
        let vocab = self.cfg.vocab as u32;
        let dtype = self.cfg.dtype;
        let calls = payloads.into_iter().enumerate().filter(|(_, p)| !p.is_empty()).map(|(m, seqs)| {
            let backend = Arc::clone(&self.backend);
            async move {
                let started = Instant::now();
                let result = backend.step(m, seqs, vocab, dtype).await;
                (m, result, started.elapsed())
            }
        });
        let results = futures::future::join_all(calls).await;
        if results.is_empty() && stuck.is_empty() && on_hold > 0 {
            // Every running request waits for a worker to come back: don't spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            return;
        }

        // 3. Per-sequence outcomes.
        let mut fates: BTreeMap<usize, Fate> = stuck;
        let mut kv_exhausted: Vec<usize> = Vec::new();
        let mut replay_release: Vec<Vec<u64>> = vec![Vec::new(); n_models];
        let mut slowest_forward = std::time::Duration::ZERO;
        for (m, result, elapsed) in results {
            self.metrics.worker_step(m, elapsed);
            let list = &targets[m];
            let outcomes = match result {
                Ok(reply) if reply.outcomes.len() == list.len() => {
                    slowest_forward = slowest_forward.max(reply.forward);
                    self.metrics.step_wire_bytes.increment(reply.wire_bytes);
                    reply.outcomes
                }
                Ok(reply) => {
                    let o = reply.outcomes;
                    let msg = format!("answered {} results for a step of {} sequences", o.len(), list.len());
                    self.worker_failed(m, &msg, list, &mut fates);
                    continue;
                }
                Err(e) => {
                    self.worker_failed(m, &e.0, list, &mut fates);
                    continue;
                }
            };
            for (&(si, slot), outcome) in list.iter().zip(outcomes) {
                let target = self.running[si].target_len(slot);
                let seq = &mut self.running[si];
                match outcome {
                    SeqOutcome::Logits(bytes) => {
                        let sm = &mut seq.models[slot];
                        sm.pos = target as u32;
                        sm.logits = Some(bytes);
                    }
                    SeqOutcome::Error { kind: SeqErrorKind::KvExhausted, .. } => {
                        if !kv_exhausted.contains(&si) {
                            kv_exhausted.push(si);
                        }
                    }
                    SeqOutcome::Error {
                        kind:
                            kind @ (SeqErrorKind::UnknownSequence
                            | SeqErrorKind::PositionMismatch
                            | SeqErrorKind::ReplicaLost),
                        message,
                    } => {
                        seq.replays += 1;
                        self.stats.replays.fetch_add(1, Ordering::Relaxed);
                        self.metrics.replays.increment(1);
                        if kind == SeqErrorKind::ReplicaLost {
                            // Replayed on another ready replica: prompt + generated tokens; the
                            // sampler does not advance until every model's logits are in.
                            self.metrics.failovers.increment(1);
                            tracing::warn!(request_id = %seq.request_id, seq_id = seq.id,
                                worker = %self.backend.display_name(m), generated = seq.generated.len(),
                                attempt = seq.replays, %message, "replica failed: failing the sequence over by replay");
                        } else {
                            tracing::info!(request_id = %seq.request_id, seq_id = seq.id,
                                worker = %self.backend.display_name(m), ?kind, %message,
                                "worker lost the sequence: replaying it");
                        }
                        let sm = &mut seq.models[slot];
                        sm.pos = 0;
                        sm.logits = None;
                        replay_release[m].push(seq.id);
                        if seq.replays > MAX_REPLAYS {
                            fates.entry(si).or_insert(Fate::Fail(RouterError::WorkerFailed {
                                worker: self.backend.display_name(m),
                                message: format!(
                                    "lost the sequence {} times in a row (last: {message})",
                                    seq.replays
                                ),
                            }));
                        }
                    }
                    SeqOutcome::Error { kind: SeqErrorKind::Invalid, message } => {
                        fates.entry(si).or_insert(Fate::Fail(RouterError::Internal(format!(
                            "{} refused the sequence: {message}",
                            self.backend.display_name(m)
                        ))));
                    }
                }
            }
        }

        // 4. KV exhaustion: requeue new sequences, preempt the youngest for growing ones.
        if !kv_exhausted.is_empty() {
            self.handle_kv_exhaustion(kv_exhausted, &targets, &mut fates);
        }

        // 5. Sample every sequence whose logits are all in.
        let sampling_started = Instant::now();
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
        self.metrics.fusion_sampling.record(sampling_started.elapsed().as_secs_f64());

        // 6. Remove finished / failed / requeued sequences; release them everywhere.
        self.finish_step(fates, replay_release).await;
        self.metrics.batch_size.set(self.running.len() as f64);
        let wall = step_started.elapsed();
        self.metrics.step_duration.record(wall.as_secs_f64());
        self.metrics.step_worker_forward.record(slowest_forward.as_secs_f64());
        self.metrics.step_router_overhead.record(wall.saturating_sub(slowest_forward).as_secs_f64());
    }

    /// A worker call failed as a whole: every sequence of this step that used it fails; the
    /// worker is marked not ready.
    fn worker_failed(
        &mut self,
        m: usize,
        msg: &str,
        list: &[(usize, usize)],
        fates: &mut BTreeMap<usize, Fate>,
    ) {
        let name = self.backend.display_name(m);
        tracing::error!(worker = %name, error = %msg, sequences = list.len(), "worker step failed");
        self.backend.mark_failed(m, msg);
        if !self.restart_grace.is_zero() {
            // Restart grace: the sequences wait for a ready worker, then replay from position 0
            // (a worker that keeps failing fails them after MAX_REPLAYS).
            for &(si, slot) in list {
                let seq = &mut self.running[si];
                seq.replays += 1;
                if seq.replays > MAX_REPLAYS {
                    fates.entry(si).or_insert(Fate::Fail(RouterError::WorkerFailed {
                        worker: name.clone(),
                        message: format!(
                            "failed {} times while serving this request (last: {msg})",
                            seq.replays
                        ),
                    }));
                    continue;
                }
                seq.outage_since.get_or_insert_with(Instant::now);
                self.stats.replays.fetch_add(1, Ordering::Relaxed);
                self.metrics.replays.increment(1);
                let sm = &mut seq.models[slot];
                sm.pos = 0;
                sm.logits = None;
            }
            return;
        }
        for &(si, _) in list {
            fates.entry(si).or_insert(Fate::Fail(RouterError::WorkerFailed {
                worker: name.clone(),
                message: msg.to_string(),
            }));
        }
    }

    /// Decides requeues and preemptions after KV_EXHAUSTED answers: a new (prefilling) sequence
    /// goes back to the queue front; a growing one preempts the youngest sequence still running
    /// (possibly itself). A sequence that was alone in the batch can never fit: it fails.
    fn handle_kv_exhaustion(
        &mut self,
        mut exhausted: Vec<usize>,
        targets: &[Vec<(usize, usize)>],
        fates: &mut BTreeMap<usize, Fate>,
    ) {
        self.admission_blocked = true;
        exhausted.retain(|si| !fates.contains_key(si));
        // Prefilling ones first (they just give way), then growing ones oldest first.
        exhausted.sort_by_key(|&si| (!self.running[si].prefilling, self.running[si].arrival));
        let alone = self.running.len() == 1;
        for si in exhausted {
            if fates.contains_key(&si) {
                continue; // already preempted for an older one
            }
            let seq = &self.running[si];
            if alone {
                let worker = targets
                    .iter()
                    .position(|l| l.iter().any(|&(s, _)| s == si))
                    .map(|m| self.backend.display_name(m))
                    .unwrap_or_else(|| "a worker".into());
                let usage = seq.usage();
                fates.insert(
                    si,
                    Fate::Fail(RouterError::WorkerFailed {
                        worker,
                        message: format!(
                            "out of KV cache for this request even with no other request running \
                             (prompt {} + generated {} tokens); send a shorter request or give the \
                             worker a larger --kv-capacity-tokens",
                            usage.prompt_tokens, usage.completion_tokens
                        ),
                    }),
                );
                continue;
            }
            self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
            self.metrics.preemptions.increment(1);
            if seq.prefilling {
                tracing::info!(request_id = %seq.request_id, seq_id = seq.id, "KV exhausted: requeueing new request");
                fates.insert(si, Fate::Requeue);
                continue;
            }
            let victim = (0..self.running.len())
                .filter(|s| !fates.contains_key(s))
                .max_by_key(|&s| self.running[s].arrival)
                .unwrap_or(si);
            let v = &self.running[victim];
            tracing::info!(request_id = %v.request_id, seq_id = v.id, generated = v.generated.len(),
                for_seq = seq.id, "KV exhausted: preempting the youngest sequence");
            fates.insert(victim, Fate::Requeue);
        }
        if (0..self.running.len()).all(|s| fates.contains_key(&s)) {
            // Nothing keeps running: retry one sequence at a time to tell "too big" from "crowded".
            self.solo_next = true;
        }
    }

    /// Fuses and samples sequence `si`, emits its token; returns its fate when it ends.
    fn sample_one(&mut self, si: usize) -> Option<Fate> {
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
                return Some(Fate::Fail(RouterError::WorkerFailed {
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
            Err(e) => return Some(Fate::Fail(RouterError::Internal(format!("sampling failed: {e}")))),
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

    /// Applies the step's fates: emits failures, requeues, removes, releases.
    async fn finish_step(&mut self, fates: BTreeMap<usize, Fate>, mut releases: Vec<Vec<u64>>) {
        if fates.is_empty() {
            release_per_model(&self.backend, releases).await;
            return;
        }
        let mut requeued = Vec::new();
        let mut freed_kv = false;
        // Remove from the back so indices stay valid.
        for (si, fate) in fates.into_iter().rev() {
            let mut seq = self.running.remove(si);
            for sm in &seq.models {
                releases[sm.model].push(seq.id);
            }
            match fate {
                Fate::Done => {
                    freed_kv = true;
                    tracing::debug!(request_id = %seq.request_id, tokens = seq.generated.len(), "finished");
                }
                Fate::Fail(err) => {
                    freed_kv = true;
                    tracing::warn!(request_id = %seq.request_id, error = %err, "request failed");
                    let _ = seq.events.send(Event::Failed(err));
                }
                Fate::Requeue => {
                    seq.reset_positions();
                    requeued.push(seq);
                }
            }
        }
        if freed_kv {
            self.admission_blocked = false;
            self.solo_next = false;
        }
        requeued.sort_by_key(|s| std::cmp::Reverse(s.arrival));
        for seq in requeued {
            self.waiting.push_front(seq);
        }
        // Replays: a lost sequence is released on that worker too, harmlessly.
        release_per_model(&self.backend, releases).await;
    }
}

/// Maps a fusion error to the client error, naming the model at fault.
fn fusion_error(e: FusionError, model_name: impl Fn(usize) -> String) -> RouterError {
    match &e {
        FusionError::NonFinite { model_index, token } => RouterError::WorkerFailed {
            worker: model_name(*model_index),
            message: format!(
                "sent a non-finite logit (NaN or +inf) for token {token}; the request was stopped before \
                 sampling (a worker must send finite logits, or -inf for masked tokens): check that worker's \
                 model and device"
            ),
        },
        FusionError::AllMasked { model_index } | FusionError::ShortLogits { model_index, .. } => {
            RouterError::WorkerFailed { worker: model_name(*model_index), message: e.to_string() }
        }
        _ => RouterError::Internal(format!("fusion failed: {e}")),
    }
}
