//! Phase 1 of a step: what each model must compute. Every running sequence contributes, per
//! model it needs, the tokens that model's worker does not hold yet; with a restart grace
//! period, a sequence whose model has no ready worker is held (or failed past the period).

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Fate, Scheduler};
use crate::scheduler::SchedulerError;
use crate::workers::{SeqStep, StepBackend};

/// The work of one step.
pub(super) struct StepPlan {
    /// Per model: (running index, model slot) of each sequence sent to it, in payload order.
    pub targets: Vec<Vec<(usize, usize)>>,
    /// Per model: the sequences of its `Step` call (empty: no call).
    pub payloads: Vec<Vec<SeqStep>>,
    /// Sequences whose fate is already decided (stuck, or past the restart grace period).
    pub fates: BTreeMap<usize, Fate>,
    /// Sequences held without a step while their worker is down (restart grace).
    pub on_hold: usize,
}

impl<B: StepBackend> Scheduler<B> {
    /// Plans the step (see the module docs).
    pub(super) fn plan(&mut self) -> StepPlan {
        let n_models = self.backend.num_models();
        let mut targets: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n_models];
        let mut payloads: Vec<Vec<SeqStep>> = vec![Vec::new(); n_models];
        let mut fates: BTreeMap<usize, Fate> = BTreeMap::new();
        let grace = self.restart_grace;
        let mut on_hold = 0usize;
        for (si, seq) in self.running.iter_mut().enumerate() {
            if !grace.is_zero() {
                // Restart grace: a sequence whose model slot has no ready worker gets no step
                // until one is ready again (then it is replayed), or fails past the grace period.
                if let Some(m) = seq.models.iter().map(|m| m.model).find(|&m| !self.backend.is_ready(m)) {
                    let since = *seq.outage_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > grace {
                        fates.insert(
                            si,
                            Fate::Fail(SchedulerError::WorkerFailed {
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
                    fates.insert(
                        si,
                        Fate::Fail(SchedulerError::Internal(format!(
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

        StepPlan { targets, payloads, fates, on_hold }
    }
}
