//! One step of the running batch, in named phases:
//! 1. [`plan`]: what each model must compute (restart grace holds sequences whose worker is down);
//! 2. [`call`]: one concurrent `Step` per model that has work — the base and exactly the ARMs
//!    the batch's requests need;
//! 3. [`apply`]: per-sequence outcomes (replay, failover, KV exhaustion → requeue or preempt the
//!    youngest, a failed worker fails only the requests that used it);
//! 4. [`sample`]: certify from the sparse wire's certificates, or fuse (docs/architecture.md §1)
//!    and sample; detokenize, stop, emit;
//! 5. [`fetch`]: the sequences the sparse wire could not certify get their full rows from every
//!    model and take the full path (docs/architecture.md §3.4);
//! 6. [`finish`]: finished, failed and preempted sequences leave and are released everywhere.

mod apply;
mod call;
mod fetch;
mod finish;
mod plan;
mod sample;

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Scheduler, SchedulerError};
use crate::workers::StepBackend;

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

        let plan::StepPlan { targets, payloads, mut fates, on_hold } = self.plan();
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
        let need_rows = self.sample_ready(&mut fates);
        if !need_rows.is_empty() {
            self.fetch_rows(&need_rows, &mut fates).await;
            self.sample_fetched(&need_rows, &mut fates);
        }
        self.finish_step(fates, applied.replay_release).await;

        self.metrics.batch_size.set(self.running.len() as f64);
        let wall = step_started.elapsed();
        self.metrics.step_duration.record(wall.as_secs_f64());
        self.metrics.step_worker_forward.record(applied.slowest_forward.as_secs_f64());
        self.metrics.step_router_overhead.record(wall.saturating_sub(applied.slowest_forward).as_secs_f64());
    }
}
