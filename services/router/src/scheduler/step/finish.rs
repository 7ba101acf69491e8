//! Phase 6 of a step: apply the fates. Finished and failed sequences leave the batch and are
//! released on every worker; requeued ones go back to the front of the queue, oldest first.

use std::collections::BTreeMap;

use super::{Fate, Scheduler};
use crate::scheduler::queue::release_per_model;
use crate::scheduler::Event;
use crate::workers::StepBackend;

impl<B: StepBackend> Scheduler<B> {
    /// Applies the step's fates: emits failures, requeues, removes, releases.
    pub(super) async fn finish_step(&mut self, fates: BTreeMap<usize, Fate>, mut releases: Vec<Vec<u64>>) {
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
