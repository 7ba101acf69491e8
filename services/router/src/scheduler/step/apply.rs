//! Phases 3 and 4 of a step: apply each worker's per-sequence outcomes. Logits are kept until
//! every model of the sequence has answered at its full length (an intermediate prefill chunk
//! only advances the position: its logits are dropped); a lost sequence is replayed from position 0 (on
//! another replica after a failover); a failed call fails (or, with a restart grace period,
//! holds) only the sequences that used that worker; KV exhaustion requeues new sequences or
//! preempts the youngest running one.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::call::ModelReply;
use super::plan::Sent;
use super::{Fate, Scheduler};
use crate::scheduler::seq::ModelRow;
use crate::scheduler::{SchedulerError, MAX_REPLAYS};
use crate::workers::{SeqErrorKind, SeqOutcome, StepBackend};

/// What applying the outcomes left for the later phases.
pub(super) struct Applied {
    /// Running indices of sequences a worker had no KV for.
    pub kv_exhausted: Vec<usize>,
    /// Per model: sequences to release there before they are replayed.
    pub replay_release: Vec<Vec<u64>>,
    /// The slowest forward a worker reported.
    pub slowest_forward: Duration,
}

impl<B: StepBackend> Scheduler<B> {
    /// Applies the replies of the step's calls (see the module docs).
    pub(super) fn apply_outcomes(
        &mut self,
        targets: &[Vec<Sent>],
        results: Vec<ModelReply>,
        fates: &mut BTreeMap<usize, Fate>,
    ) -> Applied {
        let mut applied = Applied {
            kv_exhausted: Vec::new(),
            replay_release: vec![Vec::new(); self.backend.num_models()],
            slowest_forward: Duration::ZERO,
        };
        for ModelReply { model: m, result, elapsed } in results {
            self.metrics.worker_step(m, elapsed);
            let list = &targets[m];
            let outcomes = match result {
                Ok(reply) if reply.outcomes.len() == list.len() => {
                    applied.slowest_forward = applied.slowest_forward.max(reply.forward);
                    self.metrics.wire_bytes(m, reply.wire_bytes);
                    self.metrics.cached_tokens(m, reply.cached_tokens);
                    reply.outcomes
                }
                Ok(reply) => {
                    let o = reply.outcomes;
                    let msg = format!("answered {} results for a step of {} sequences", o.len(), list.len());
                    self.worker_failed(m, &msg, list, fates);
                    continue;
                }
                Err(e) => {
                    self.worker_failed(m, &e.to_string(), list, fates);
                    continue;
                }
            };
            for (&Sent { seq: si, slot, upto }, outcome) in list.iter().zip(outcomes) {
                // Logits at the full length are the ones sampled from; those of an intermediate
                // chunk describe a prefix position and are dropped.
                let full = upto as usize == self.running[si].target_len(slot);
                let seq = &mut self.running[si];
                match outcome {
                    SeqOutcome::Logits(bytes) => {
                        let sm = &mut seq.models[slot];
                        sm.pos = upto;
                        sm.logits = full.then_some(ModelRow::Packed(bytes));
                    }
                    SeqOutcome::Sparse(row) => {
                        let sm = &mut seq.models[slot];
                        sm.pos = upto;
                        sm.logits = full.then_some(ModelRow::Sparse(row));
                    }
                    SeqOutcome::Error { kind: SeqErrorKind::KvExhausted, .. } => {
                        if !applied.kv_exhausted.contains(&si) {
                            applied.kv_exhausted.push(si);
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
                        applied.replay_release[m].push(seq.id);
                        if seq.replays > MAX_REPLAYS {
                            fates.entry(si).or_insert(Fate::Fail(SchedulerError::WorkerFailed {
                                worker: self.backend.display_name(m),
                                message: format!(
                                    "lost the sequence {} times in a row (last: {message})",
                                    seq.replays
                                ),
                            }));
                        }
                    }
                    SeqOutcome::Error { kind: SeqErrorKind::Invalid, message } => {
                        fates.entry(si).or_insert(Fate::Fail(SchedulerError::Internal(format!(
                            "{} refused the sequence: {message}",
                            self.backend.display_name(m)
                        ))));
                    }
                }
            }
        }

        applied
    }

    /// A worker call failed as a whole: every sequence of this step that used it fails; the
    /// worker is marked not ready.
    pub(super) fn worker_failed(
        &mut self,
        m: usize,
        msg: &str,
        list: &[Sent],
        fates: &mut BTreeMap<usize, Fate>,
    ) {
        let name = self.backend.display_name(m);
        tracing::error!(worker = %name, error = %msg, sequences = list.len(), "worker step failed");
        self.backend.mark_failed(m, msg);
        if !self.restart_grace.is_zero() {
            // Restart grace: the sequences wait for a ready worker, then replay from position 0
            // (a worker that keeps failing fails them after MAX_REPLAYS).
            for &Sent { seq: si, slot, .. } in list {
                let seq = &mut self.running[si];
                seq.replays += 1;
                if seq.replays > MAX_REPLAYS {
                    fates.entry(si).or_insert(Fate::Fail(SchedulerError::WorkerFailed {
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
        for &Sent { seq: si, .. } in list {
            fates.entry(si).or_insert(Fate::Fail(SchedulerError::WorkerFailed {
                worker: name.clone(),
                message: msg.to_string(),
            }));
        }
    }

    /// Decides requeues and preemptions after KV_EXHAUSTED answers: a new (prefilling) sequence
    /// goes back to the queue front; a growing one preempts the youngest sequence still running
    /// (possibly itself). A sequence that was alone in the batch can never fit: it fails.
    pub(super) fn handle_kv_exhaustion(
        &mut self,
        mut exhausted: Vec<usize>,
        targets: &[Vec<Sent>],
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
                    .position(|l| l.iter().any(|sent| sent.seq == si))
                    .map(|m| self.backend.display_name(m))
                    .unwrap_or_else(|| "a worker".into());
                let usage = seq.usage();
                fates.insert(
                    si,
                    Fate::Fail(SchedulerError::WorkerFailed {
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
}
