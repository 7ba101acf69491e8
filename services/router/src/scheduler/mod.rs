//! The scheduler actor: owns the waiting queue and the running batch, fed through an mpsc channel
//! (TGI style). Requests join the running batch at the next step and leave when done
//! (continuous batching), within `--max-batch-size` and the per-step token budget
//! `--max-batch-tokens`, which each step fills with the running streams' decodes first and
//! prefill chunks after (a long prompt is prefilled over several steps). Admission is bounded: when `--max-waiting` requests wait, new ones get
//! 429 at once. KV exhaustion requeues new requests (and pauses admission) or preempts the
//! youngest running sequence; cancelled requests are released on every worker within one step.
//! The step itself (plan, call the workers, apply their outcomes, fuse and sample, finish) is in
//! [`step`]. Nothing here knows HTTP: failures are [`SchedulerError`]s, mapped to HTTP once, in
//! `crate::api`.

#[cfg(test)]
mod chunked_tests;
mod error;
mod handle;
mod queue;
mod seq;
#[cfg(test)]
mod sparse_tests;
pub mod step;
#[cfg(test)]
mod tests;
mod text;

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use genarm_fusion::WireDtype;
use tokio::sync::{mpsc, watch, Semaphore};

pub use error::SchedulerError;
pub(crate) use handle::Submitted;
pub use handle::{ArmRequest, Event, FinishReason, GenRequest, SchedulerHandle, TokenUsage};
pub use text::{Detokenizer, RequestText, TextStep};

use crate::telemetry::SchedMetrics;
use crate::workers::{LogitsWire, StepBackend};
use queue::first_seq_id;
use seq::Seq;

/// Fixed configuration of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Base vocabulary size V (logits are cut to it).
    pub vocab: usize,
    /// The base model's EOS ids.
    pub eos: Vec<u32>,
    /// Effective context (min of the models' max positions).
    pub max_context: u32,
    /// How full logit rows travel on the full wire (see [`SchedulerConfig::row_dtype`]).
    pub dtype: WireDtype,
    /// Full rows or certificates (docs/architecture.md §3.4).
    pub wire: LogitsWire,
    /// Threads that fuse, sample and detokenize (0: one per available core).
    pub sampling_threads: usize,
    /// Most sequences in a step.
    pub max_batch_size: usize,
    /// Token budget of each model's `Step` call: decodes first, prefill chunked into the rest
    /// (see `step::plan`).
    pub max_batch_tokens: usize,
    /// Most waiting requests.
    pub max_waiting: usize,
}

impl SchedulerConfig {
    /// The dtype of every full row the scheduler asks for: `dtype` on the full wire; f32 on the
    /// sparse wire, whose certificates carry exact f32 values, so that a row sent whole or fetched
    /// decides exactly as the certificates do (docs/architecture.md §3.4).
    pub fn row_dtype(&self) -> WireDtype {
        match self.wire {
            LogitsWire::Full => self.dtype,
            LogitsWire::Sparse { .. } => WireDtype::F32,
        }
    }
}

/// Replays of one sequence (UNKNOWN_SEQUENCE / POSITION_MISMATCH) before it is failed.
pub const MAX_REPLAYS: u32 = 4;

/// The actor. Create with [`Scheduler::new`], drive with [`Scheduler::run`].
pub struct Scheduler<B: StepBackend> {
    pub(crate) backend: Arc<B>,
    pub(crate) cfg: SchedulerConfig,
    rx: mpsc::UnboundedReceiver<Submitted>,
    abort: watch::Receiver<bool>,
    pub(crate) waiting: VecDeque<Seq>,
    pub(crate) running: Vec<Seq>,
    /// Set when a worker ran out of KV: no admissions until a sequence leaves the batch.
    pub(crate) admission_blocked: bool,
    /// Set when KV exhaustion emptied the batch: admit one sequence at a time until one finishes.
    pub(crate) solo_next: bool,
    next_seq_id: Arc<AtomicU64>,
    next_arrival: u64,
    /// The threads that fuse, sample and detokenize a step's sequences.
    pub(crate) sampling_pool: Arc<rayon::ThreadPool>,
    /// Counters for tests and metrics.
    pub(crate) stats: Arc<SchedulerStats>,
    /// Prometheus handles.
    pub(crate) metrics: SchedMetrics,
    /// How long a running request waits for a model slot that lost its last ready worker to
    /// get one back before it fails (zero: fails at once).
    pub(crate) restart_grace: Duration,
}

/// Counters the scheduler keeps (also exported as metrics).
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Steps run.
    pub steps: AtomicU64,
    /// Largest batch (running sequences) seen in a step.
    pub max_batch: AtomicU64,
    /// Sequences preempted or requeued after KV exhaustion.
    pub preemptions: AtomicU64,
    /// Sequence replays after UNKNOWN_SEQUENCE / POSITION_MISMATCH.
    pub replays: AtomicU64,
    /// Prefill chunks sent that ended before their sequence's current length.
    pub prefill_chunks: AtomicU64,
}

impl<B: StepBackend> Scheduler<B> {
    /// A scheduler over `backend` and the handle to submit requests to it. `abort` turning true
    /// fails every request (shutdown after the grace period) and releases them on the workers.
    pub fn new(
        backend: Arc<B>,
        cfg: SchedulerConfig,
        abort: watch::Receiver<bool>,
    ) -> (Self, SchedulerHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = SchedulerHandle {
            tx,
            permits: Arc::new(Semaphore::new(cfg.max_waiting)),
            max_waiting: cfg.max_waiting,
        };
        let metrics = SchedMetrics::new();
        let threads = match cfg.sampling_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let sampling_pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("genarm-sampling-{i}"))
                .build()
                .expect("spawning the sampling threads"),
        );
        let sched = Scheduler {
            backend,
            cfg,
            rx,
            abort,
            waiting: VecDeque::new(),
            running: Vec::new(),
            admission_blocked: false,
            solo_next: false,
            next_seq_id: Arc::new(AtomicU64::new(first_seq_id())),
            next_arrival: 0,
            sampling_pool,
            stats: Arc::new(SchedulerStats::default()),
            metrics,
            restart_grace: Duration::ZERO,
        };
        (sched, handle)
    }

    /// Labels the per-worker metrics: `labels[m]` = (`worker`, `address`) of model `m` (see
    /// [`crate::telemetry::worker_labels`]).
    pub fn with_worker_labels(mut self, labels: &[(String, String)]) -> Self {
        self.metrics.set_worker_labels(labels);
        self
    }

    /// Sets the worker restart grace period: a running request whose model slot lost its last
    /// ready worker waits up to `grace` for one to be ready again, then is replayed from
    /// position 0 on it (zero, the default: it fails at once).
    pub fn with_restart_grace(mut self, grace: Duration) -> Self {
        self.restart_grace = grace;
        self
    }

    /// The scheduler's counters.
    pub fn stats(&self) -> Arc<SchedulerStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until every [`SchedulerHandle`] is dropped and no request is left.
    pub async fn run(mut self) {
        loop {
            if *self.abort.borrow() {
                self.abort_all().await;
            }
            if self.running.is_empty() && self.waiting.is_empty() {
                tokio::select! {
                    msg = self.rx.recv() => match msg {
                        Some(s) => self.enqueue(s),
                        None => break,
                    },
                    changed = self.abort.changed() => {
                        if changed.is_err() {
                            // The abort sender is gone: nobody can ask for an abort any more.
                            self.abort = watch::channel(false).1;
                        }
                        continue;
                    }
                }
            }
            while let Ok(s) = self.rx.try_recv() {
                self.enqueue(s);
            }
            self.drop_cancelled().await;
            self.admit();
            self.metrics.batch_size.set(self.running.len() as f64);
            self.metrics.queue_depth.set(self.waiting.len() as f64);
            if self.running.is_empty() {
                continue;
            }
            self.step().await;
        }
        tracing::debug!("scheduler stopped");
    }
}
