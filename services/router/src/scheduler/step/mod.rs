//! One step of the running batch, in named phases:
//! 1. [`plan`]: what each model must compute within the step's token budget — decodes first,
//!    then prefill in arrival order, cut into chunks (restart grace holds sequences whose worker
//!    is down);
//! 2. [`call`]: one concurrent `Step` per model that has work — the base and exactly the ARMs
//!    the batch's requests need;
//! 3. [`apply`]: per-sequence outcomes (replay, failover, KV exhaustion → requeue or preempt the
//!    youngest, a failed worker fails only the requests that used it);
//! 4. [`sample`]: certify from the sparse wire's certificates, or fuse (docs/architecture.md §1)
//!    and sample; detokenize, stop, emit;
//! 5. [`fetch`]: the sequences the sparse wire could not certify get refined certificates, then
//!    if need be their full rows, from every model, and are sampled again (docs/architecture.md
//!    §3.4);
//! 6. [`finish`]: finished, failed and preempted sequences leave and are released everywhere.

mod apply;
mod call;
mod fetch;
mod finish;
mod plan;
mod sample;

use std::sync::atomic::Ordering;
use std::time::Instant;

use std::collections::BTreeMap;

use super::{Scheduler, SchedulerError};
use crate::workers::{LogitsWire, StepBackend};
use fetch::Fetch;
use sample::Need;

/// What happens to a running sequence at the end of a step.
pub(super) enum Fate {
    /// Fails with this error.
    Fail(SchedulerError),
    /// Goes back to the front of the queue (released everywhere, replayed later).
    Requeue,
    /// Finished normally.
    Done,
}

impl<B: StepBackend> Scheduler<B> {
    /// Runs one step of the running batch (see the module docs).
    #[tracing::instrument(name = "router.step", skip_all, fields(batch = self.running.len()))]
    pub(crate) async fn step(&mut self) {
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

        let plan::StepPlan { targets, payloads, mut fates, on_hold, partial_chunks } = self.plan();
        if partial_chunks > 0 {
            self.stats.prefill_chunks.fetch_add(partial_chunks, Ordering::Relaxed);
            self.metrics.prefill_chunks.increment(partial_chunks);
        }
        let results = self.call_workers(payloads).await;
        if results.is_empty() && fates.is_empty() && on_hold > 0 {
            // Every running request waits for a worker to come back: don't spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            return;
        }
        let applied = self.apply_outcomes(&targets, results, &mut fates);
        if !applied.kv_exhausted.is_empty() {
            self.handle_kv_exhaustion(applied.kv_exhausted, &targets, &mut fates);
        }
        let uncertified = self.sample_ready(&mut fates);
        if !uncertified.is_empty() {
            self.fetch_and_sample(uncertified, &mut fates).await;
        }
        self.finish_step(fates, applied.replay_release).await;

        self.metrics.batch_size.set(self.running.len() as f64);
        let wall = step_started.elapsed();
        self.metrics.step_duration.record(wall.as_secs_f64());
        self.metrics.step_worker_forward.record(applied.slowest_forward.as_secs_f64());
        self.metrics.step_router_overhead.record(wall.saturating_sub(applied.slowest_forward).as_secs_f64());
    }
}

impl<B: StepBackend> Scheduler<B> {
    /// Phase 5 for the sequences the step's certificates could not prove: refined certificates
    /// for those whose bounds were only too loose (`--sparse-refine-candidates`), then full rows
    /// for the rest, each round sampled again.
    async fn fetch_and_sample(&mut self, uncertified: Vec<(usize, Need)>, fates: &mut BTreeMap<usize, Fate>) {
        let refine = match self.cfg.wire {
            LogitsWire::Sparse { refine, .. } => refine,
            LogitsWire::Full => 0,
        };
        let (refinable, mut whole): (Vec<_>, Vec<_>) =
            uncertified.into_iter().partition(|(_, need)| refine > 0 && need.refinable);
        if !refinable.is_empty() {
            let ids: Vec<usize> = refinable.iter().map(|&(si, _)| si).collect();
            self.fetch_rows(&ids, Fetch::Refined(refine), fates).await;
            let still = self.sample_fetched(&ids, fates);
            for &si in &ids {
                // Sequences lost with their replica during the fetch were neither.
                if matches!(fates.get(&si), None | Some(Fate::Done)) {
                    self.metrics.sparse_refined(!still.iter().any(|&(s, _)| s == si));
                }
            }
            whole.extend(still);
        }
        if whole.is_empty() {
            return;
        }
        for (_, need) in &whole {
            self.metrics.sparse_fallback(need.reason);
        }
        let ids: Vec<usize> = whole.iter().map(|&(si, _)| si).collect();
        self.fetch_rows(&ids, Fetch::Rows, fates).await;
        for (si, _) in self.sample_fetched(&ids, fates) {
            fates.insert(
                si,
                Fate::Fail(SchedulerError::Internal("a fetched row was still a certificate".into())),
            );
        }
    }
}
