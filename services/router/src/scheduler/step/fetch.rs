//! Phase 5 of a step on the sparse wire: the sequences whose token the certificates could not
//! prove get their full rows from every model (`FetchRows`; each worker kept them from the step),
//! so that the full path decides exactly as it would have with full rows (docs/architecture.md
//! §3.4). A row that cannot be fetched (its replica failed since the step) sends the sequence
//! back to the queue, to be replayed: nothing is lost.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Fate, Scheduler};
use crate::scheduler::seq::ModelRow;
use crate::scheduler::{SchedulerError, MAX_REPLAYS};
use crate::workers::{SeqErrorKind, SeqOutcome, StepBackend};

impl<B: StepBackend> Scheduler<B> {
    /// Fetches the full rows of the running sequences `need` from every model that sent them a
    /// certificate, in one concurrent call per model.
    pub(super) async fn fetch_rows(&mut self, need: &[usize], fates: &mut BTreeMap<usize, Fate>) {
        let models = self.backend.num_models();
        // Per model: (running index, slot) of every certificate to replace.
        let mut wanted: Vec<Vec<(usize, usize)>> = vec![Vec::new(); models];
        for &si in need {
            for (slot, sm) in self.running[si].models.iter().enumerate() {
                if matches!(sm.logits, Some(ModelRow::Sparse(_))) {
                    wanted[sm.model].push((si, slot));
                }
            }
        }
        let vocab = self.cfg.vocab as u32;
        let dtype = self.cfg.row_dtype();
        let calls: Vec<_> = wanted
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.is_empty())
            .map(|(model, w)| {
                let ids: Vec<u64> = w.iter().map(|&(si, _)| self.running[si].id).collect();
                let backend = Arc::clone(&self.backend);
                async move { (model, backend.fetch_rows(model, ids, vocab, dtype).await) }
            })
            .collect();
        for (model, result) in futures::future::join_all(calls).await {
            let list = &wanted[model];
            let outcomes = match result {
                Ok((outcomes, bytes)) if outcomes.len() == list.len() => {
                    self.metrics.wire_bytes(model, bytes);
                    outcomes
                }
                Ok((outcomes, _)) => {
                    let message = format!("answered {} rows for {} sequences", outcomes.len(), list.len());
                    self.requeue_unfetched(model, list, &message, fates);
                    continue;
                }
                Err(e) => {
                    self.requeue_unfetched(model, list, &e.to_string(), fates);
                    continue;
                }
            };
            for (&(si, slot), outcome) in list.iter().zip(outcomes) {
                match outcome {
                    SeqOutcome::Logits(bytes) => {
                        self.running[si].models[slot].logits = Some(ModelRow::Packed(bytes))
                    }
                    SeqOutcome::Sparse(_) => {
                        unreachable!("the gRPC layer refuses certificates from FetchRows")
                    }
                    SeqOutcome::Error { kind, message } => {
                        // A replica lost since the step (its call failed, or it is gone): the
                        // sequence fails over to another replica by replay, as a failed step does.
                        if kind == SeqErrorKind::ReplicaLost {
                            self.metrics.failovers.increment(1);
                        }
                        self.requeue_unfetched(model, &[(si, slot)], &message, fates)
                    }
                }
            }
        }
    }

    /// Sequences whose row could not be fetched from `model` go back to the queue (replayed from
    /// their tokens), or fail after [`MAX_REPLAYS`] in a row.
    fn requeue_unfetched(
        &mut self,
        model: usize,
        list: &[(usize, usize)],
        message: &str,
        fates: &mut BTreeMap<usize, Fate>,
    ) {
        let worker = self.backend.display_name(model);
        for &(si, _) in list {
            let seq = &mut self.running[si];
            seq.replays += 1;
            self.stats.replays.fetch_add(1, Ordering::Relaxed);
            self.metrics.replays.increment(1);
            tracing::warn!(request_id = %seq.request_id, seq_id = seq.id, %worker, %message,
                "could not fetch a full row for the sparse wire: replaying the sequence");
            let fate = if seq.replays > MAX_REPLAYS {
                Fate::Fail(SchedulerError::WorkerFailed {
                    worker: worker.clone(),
                    message: format!(
                        "could not send a full row {} times in a row (last: {message})",
                        seq.replays
                    ),
                })
            } else {
                Fate::Requeue
            };
            fates.entry(si).or_insert(fate);
        }
    }
}
