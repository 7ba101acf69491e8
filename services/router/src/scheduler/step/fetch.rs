//! Phase 5 of a step on the sparse wire: the sequences whose token the certificates could not
//! prove get, from every model (`FetchRows`; each worker kept their rows from the step), first
//! refined certificates — deeper, and with each model's exact values at the others' candidates —
//! when only the bounds were too loose, then, if still unproven, their full rows, so that the full
//! path decides exactly as it would have with full rows (docs/architecture.md §3.4). A row that
//! cannot be fetched (its replica failed since the step) sends the sequence back to the queue, to
//! be replayed: nothing is lost.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use genarm_fusion::{missing_ids, RowCertificate};

use super::{Fate, Scheduler};
use crate::scheduler::seq::ModelRow;
use crate::scheduler::{SchedulerError, MAX_REPLAYS};
use crate::workers::{RowFetch, SeqErrorKind, SeqOutcome, StepBackend};

/// What [`Scheduler::fetch_rows`] replaces each certificate with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fetch {
    /// A refined certificate with this many candidates.
    Refined(u32),
    /// The full row.
    Rows,
}

impl<B: StepBackend> Scheduler<B> {
    /// Replaces the certificates of the running sequences `need`, from every model that sent
    /// them one, with refined certificates or full rows (`what`), in one concurrent call per
    /// model.
    pub(super) async fn fetch_rows(
        &mut self,
        need: &[usize],
        what: Fetch,
        fates: &mut BTreeMap<usize, Fate>,
    ) {
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
        let mut scratch = Vec::new();
        let calls: Vec<_> = wanted
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.is_empty())
            .map(|(model, w)| {
                let ids: Vec<u64> = w.iter().map(|&(si, _)| self.running[si].id).collect();
                let request = match what {
                    Fetch::Rows => RowFetch::Rows(dtype),
                    Fetch::Refined(candidates) => RowFetch::Certificates {
                        candidates,
                        extra_ids: w.iter().map(|&(si, slot)| self.missing(si, slot, &mut scratch)).collect(),
                        dtype,
                    },
                };
                let backend = Arc::clone(&self.backend);
                async move { (model, backend.fetch_rows(model, ids, vocab, request).await) }
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
                    SeqOutcome::Sparse(row) => {
                        // Only a refined fetch lets certificates through (the gRPC layer refuses
                        // them in a fetch of rows).
                        self.running[si].models[slot].logits = Some(ModelRow::Sparse(row))
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

    /// The ids that model slot `slot` of running sequence `si` lacks among the other models'
    /// candidates: what its refined certificate must add.
    fn missing(&self, si: usize, slot: usize, scratch: &mut Vec<u32>) -> Vec<u32> {
        let certs: Vec<RowCertificate<'_>> = self.running[si]
            .models
            .iter()
            .filter_map(|m| match &m.logits {
                Some(ModelRow::Sparse(r)) => Some(r.certificate()),
                _ => None,
            })
            .collect();
        if certs.len() != self.running[si].models.len() {
            return Vec::new();
        }
        missing_ids(&certs, slot, scratch);
        scratch.clone()
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
