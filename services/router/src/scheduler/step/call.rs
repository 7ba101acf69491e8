//! Phase 2 of a step: one concurrent `Step` call per model that has work (the base and exactly
//! the ARMs the batch's requests need, invariant 8 of docs/architecture.md §1).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Scheduler;
use crate::workers::{CallError, ModelIndex, SeqStep, StepBackend, StepReply};

/// One model's answer to its `Step` call, with the call's wall time.
pub(super) struct ModelReply {
    /// The model.
    pub model: ModelIndex,
    /// The worker's reply, or why the call failed.
    pub result: Result<StepReply, CallError>,
    /// How long the call took.
    pub elapsed: Duration,
}

impl<B: StepBackend> Scheduler<B> {
    /// Sends each non-empty payload to its model's worker, all at once. The returned future
    /// borrows nothing from the scheduler (whose sequences are not `Sync`), so that the actor's
    /// future stays `Send`.
    pub(super) fn call_workers(
        &self,
        payloads: Vec<Vec<SeqStep>>,
    ) -> impl Future<Output = Vec<ModelReply>> + Send + 'static {
        let vocab = self.cfg.vocab as u32;
        let dtype = self.cfg.row_dtype();
        let wire = self.cfg.wire;
        let backend = Arc::clone(&self.backend);
        let calls: Vec<_> = payloads
            .into_iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(model, seqs)| {
                let backend = Arc::clone(&backend);
                async move {
                    let started = Instant::now();
                    let result = backend.step(model, seqs, vocab, dtype, wire).await;
                    ModelReply { model, result, elapsed: started.elapsed() }
                }
            })
            .collect();
        futures::future::join_all(calls)
    }
}
