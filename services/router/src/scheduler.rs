//! The scheduler actor: owns the waiting queue and the running batch, fed through an mpsc channel
//! (TGI style). Requests join the running batch at the next step and leave when done
//! (continuous batching), within `--max-batch-size` and the per-step prefill budget
//! `--max-batch-tokens`. Admission is bounded: when `--max-waiting` requests wait, new ones get
//! 429 at once. KV exhaustion requeues new requests (and pauses admission) or preempts the
//! youngest running sequence; cancelled requests are released on every worker within one step.
//! The step itself (fuse, sample, stop) is in [`crate::step_loop`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use genarm_fusion::{Sampler, SamplingParams, WireDtype};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::backend::{Bytes, ModelIndex, StepBackend};
use crate::error::RouterError;
use crate::openai::Usage;
use crate::telemetry::SchedMetrics;

/// Turns generated ids into text for one request (incremental detokenization plus stop
/// strings). The real implementation is [`crate::text::RequestText`].
pub trait Detokenizer: Send + 'static {
    /// Feeds one generated (non-EOS) token; returns text that is now final and whether a stop
    /// string matched (then the text ends right before it and generation stops).
    fn push(&mut self, token: u32) -> TextStep;
    /// Text still held back (an incomplete character or a possible stop-string prefix), released
    /// when generation ends for another reason.
    fn finish(&mut self) -> String;
}

/// What [`Detokenizer::push`] released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextStep {
    /// New final text (possibly empty).
    pub text: String,
    /// A stop string matched: generation ends.
    pub stopped: bool,
}

/// One reward model a request is guided by (α ≠ 0).
#[derive(Debug, Clone, PartialEq)]
pub struct ArmRequest {
    /// The reward model's backend index.
    pub model: ModelIndex,
    /// α = weight / β.
    pub alpha: f32,
    /// The prompt rendered and tokenized for this model.
    pub prompt: Vec<u32>,
}

/// A validated generation request, ready for the scheduler.
pub struct GenRequest {
    /// Request id for logs (`cmpl-…`).
    pub request_id: String,
    /// The prompt for the base model.
    pub base_prompt: Vec<u32>,
    /// The reward models with α ≠ 0, in increasing model index (sorted reward names).
    pub arms: Vec<ArmRequest>,
    /// Sampling parameters (seed included).
    pub sampling: SamplingParams,
    /// Most tokens to generate (≥ 1).
    pub max_tokens: u32,
    /// `None`: no log-probs; `Some(n)`: the sampled token's log-prob and the top `n`.
    pub top_logprobs: Option<usize>,
    /// Detokenization and stop strings.
    pub text: Box<dyn Detokenizer>,
}

/// Why generation finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` (or the context) reached.
    Length,
}

impl FinishReason {
    /// The OpenAI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the scheduler tells a request's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One generated token.
    Token {
        /// Its id.
        token: u32,
        /// Text released with it (may be empty, or hold text of earlier tokens).
        text: String,
        /// Its log-prob under the fused distribution it was sampled from, when asked for.
        logprob: Option<f32>,
        /// The most likely alternatives with log-probs, when asked for.
        top: Vec<(u32, f32)>,
    },
    /// Generation ended normally (last event).
    Finished {
        /// Why.
        reason: FinishReason,
        /// Token counts.
        usage: Usage,
    },
    /// Generation failed (last event).
    Failed(RouterError),
}

/// Fixed configuration of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Base vocabulary size V (logits are cut to it).
    pub vocab: usize,
    /// The base model's EOS ids.
    pub eos: Vec<u32>,
    /// Effective context (min of the models' max positions).
    pub max_context: u32,
    /// How logits travel.
    pub dtype: WireDtype,
    /// Most sequences in a step.
    pub max_batch_size: usize,
    /// Prefill token budget per step.
    pub max_batch_tokens: usize,
    /// Most waiting requests.
    pub max_waiting: usize,
}

/// Replays of one sequence (UNKNOWN_SEQUENCE / POSITION_MISMATCH) before it is failed.
pub const MAX_REPLAYS: u32 = 4;

/// A request handed to the actor.
pub(crate) struct Submitted {
    req: GenRequest,
    events: mpsc::UnboundedSender<Event>,
    permit: OwnedSemaphorePermit,
    received: Instant,
    /// The submitting handler's span (the request's trace); steps link to it.
    span: tracing::Span,
}

/// The handlers' side of the scheduler: submit requests, get their events.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Submitted>,
    permits: Arc<Semaphore>,
    max_waiting: usize,
}

impl SchedulerHandle {
    /// Queues `req`; its events arrive on the returned receiver. Dropping the receiver cancels
    /// the request (noticed within one step). Answers [`RouterError::Overloaded`] at once when
    /// the waiting queue is full.
    pub fn submit(&self, req: GenRequest) -> Result<mpsc::UnboundedReceiver<Event>, RouterError> {
        self.submit_received(req, Instant::now())
    }

    /// [`Self::submit`] for a request that arrived at `received` (the start of its latency
    /// metrics).
    pub fn submit_received(
        &self,
        req: GenRequest,
        received: Instant,
    ) -> Result<mpsc::UnboundedReceiver<Event>, RouterError> {
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| RouterError::Overloaded { waiting: self.max_waiting })?;
        let (events, rx) = mpsc::unbounded_channel();
        self.tx
            .send(Submitted { req, events, permit, received, span: tracing::Span::current() })
            .map_err(|_| RouterError::Unavailable { message: "the router is shutting down".into() })?;
        Ok(rx)
    }

    /// Requests waiting for a place in the batch (queued in the channel or in the actor).
    pub fn waiting(&self) -> usize {
        self.max_waiting - self.permits.available_permits()
    }
}

/// One model's view of a running sequence.
pub(crate) struct SeqModel {
    /// Backend index.
    pub model: ModelIndex,
    /// α (unused for the base).
    pub alpha: f32,
    /// This model's prompt.
    pub prompt: Vec<u32>,
    /// Tokens the worker holds for the sequence.
    pub pos: u32,
    /// Packed logits at the sequence's current length, once the worker sent them this round.
    pub logits: Option<Bytes>,
}

/// A request inside the actor.
pub(crate) struct Seq {
    /// Sequence id on every worker.
    pub id: u64,
    /// Arrival order (smaller = older); preemption takes the youngest.
    pub arrival: u64,
    pub request_id: String,
    /// `[0]` is the base, then the ARMs with α ≠ 0 in fusion order.
    pub models: Vec<SeqModel>,
    pub generated: Vec<u32>,
    pub sampler: Sampler,
    pub max_tokens: u32,
    pub top_logprobs: Option<usize>,
    pub text: Box<dyn Detokenizer>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Held while waiting the first time; dropped when admitted.
    pub permit: Option<OwnedSemaphorePermit>,
    pub replays: u32,
    /// No token sampled since (re)admission: KV exhaustion requeues it instead of preempting.
    pub prefilling: bool,
    /// When the request arrived (latency metrics).
    pub received: Instant,
    /// When its last token was sampled (inter-token latency).
    pub last_token: Option<Instant>,
    /// The request's span (from its HTTP handler); each step's span links to it.
    pub span: tracing::Span,
    /// `router.queue_wait`, a child of `span`, open from admission to the first step.
    pub queue_wait: Option<tracing::Span>,
    /// Since when a model slot it needs has had no ready worker (restart grace period).
    pub outage_since: Option<Instant>,
}

impl Seq {
    /// Tokens model slot `slot` should hold once this round's step is done.
    pub fn target_len(&self, slot: usize) -> usize {
        self.models[slot].prompt.len() + self.generated.len()
    }

    /// The tokens of slot `slot` from position `from` to the current length.
    pub fn tokens_from(&self, slot: usize, from: usize) -> Vec<u32> {
        let prompt = &self.models[slot].prompt;
        let mut out = Vec::with_capacity(self.target_len(slot).saturating_sub(from));
        if from < prompt.len() {
            out.extend_from_slice(&prompt[from..]);
            out.extend_from_slice(&self.generated);
        } else {
            out.extend_from_slice(&self.generated[from - prompt.len()..]);
        }
        out
    }

    /// Forgets what the workers hold (after a release): the next step replays from position 0.
    pub fn reset_positions(&mut self) {
        for m in &mut self.models {
            m.pos = 0;
            m.logits = None;
        }
    }

    /// Prefill tokens this sequence adds to a step when (re)admitted.
    pub fn prefill_tokens(&self) -> usize {
        (0..self.models.len()).map(|s| self.target_len(s)).max().unwrap_or(0)
    }

    /// Token counts so far.
    pub fn usage(&self) -> Usage {
        let prompt = self.models[0].prompt.len() as u32;
        let completion = self.generated.len() as u32;
        Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
    }

    /// Whether the client went away.
    pub fn cancelled(&self) -> bool {
        self.events.is_closed()
    }
}

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
    /// Scratch: unpacked logits per fused model slot, and the fused output.
    pub(crate) scratch: Vec<Vec<f32>>,
    pub(crate) fused: Vec<f32>,
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
        let fused = vec![0.0; cfg.vocab];
        let metrics = SchedMetrics::new();
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
            scratch: Vec::new(),
            fused,
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

    /// Turns a submission into a waiting sequence (or fails it at once if its sampler is
    /// invalid, which validation prevents).
    fn enqueue(&mut self, s: Submitted) {
        let Submitted { req, events, permit, received, span } = s;
        let sampler = match Sampler::new(req.sampling) {
            Ok(s) => s,
            Err(e) => {
                let _ = events.send(Event::Failed(RouterError::invalid_body(e.to_string())));
                return;
            }
        };
        let mut models = Vec::with_capacity(1 + req.arms.len());
        models.push(SeqModel { model: 0, alpha: 0.0, prompt: req.base_prompt, pos: 0, logits: None });
        for arm in req.arms {
            models.push(SeqModel {
                model: arm.model,
                alpha: arm.alpha,
                prompt: arm.prompt,
                pos: 0,
                logits: None,
            });
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let queue_wait = Some(tracing::info_span!(parent: &span, "router.queue_wait"));
        self.waiting.push_back(Seq {
            id: self.next_seq_id.fetch_add(1, Ordering::Relaxed),
            arrival,
            request_id: req.request_id,
            models,
            generated: Vec::new(),
            sampler,
            max_tokens: req.max_tokens,
            top_logprobs: req.top_logprobs,
            text: req.text,
            events,
            permit: Some(permit),
            replays: 0,
            prefilling: true,
            received,
            last_token: None,
            span,
            queue_wait,
            outage_since: None,
        });
    }

    /// Removes requests whose client went away; releases running ones on every worker.
    async fn drop_cancelled(&mut self) {
        self.waiting.retain(|s| {
            if s.cancelled() {
                tracing::info!(request_id = %s.request_id, "client went away while queued");
            }
            !s.cancelled()
        });
        if !self.running.iter().any(Seq::cancelled) {
            return;
        }
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].cancelled() {
                let s = self.running.remove(i);
                tracing::info!(request_id = %s.request_id, seq_id = s.id, tokens = s.generated.len(),
                    "client went away: cancelling");
                gone.push(s);
            } else {
                i += 1;
            }
        }
        self.admission_blocked = false;
        self.solo_next = false;
        self.release_all_owned(gone).await;
    }

    /// Moves waiting sequences into the batch while there is room and prefill budget.
    fn admit(&mut self) {
        if self.running.is_empty() {
            self.admission_blocked = false;
        }
        if self.admission_blocked {
            return;
        }
        let limit = if self.solo_next { 1 } else { self.cfg.max_batch_size };
        let mut budget_used = 0usize;
        while self.running.len() < limit {
            let Some(front) = self.waiting.front() else { break };
            let need = front.prefill_tokens();
            if budget_used > 0 && budget_used + need > self.cfg.max_batch_tokens {
                break;
            }
            let Some(mut seq) = self.waiting.pop_front() else { break };
            if let Some(m) = seq.models.iter().map(|m| m.model).find(|&m| !self.backend.is_ready(m)) {
                let err = RouterError::Unavailable {
                    message: format!(
                        "{} is not ready (disconnected or still loading); retry later",
                        self.backend.display_name(m)
                    ),
                };
                let _ = seq.events.send(Event::Failed(err));
                continue;
            }
            budget_used += need;
            seq.permit = None;
            seq.prefilling = true;
            self.running.push(seq);
        }
    }

    /// Fails every request (shutdown) and releases them.
    async fn abort_all(&mut self) {
        let err = RouterError::Unavailable { message: "the router is shutting down".into() };
        for s in self.waiting.drain(..) {
            let _ = s.events.send(Event::Failed(err.clone()));
        }
        let running = std::mem::take(&mut self.running);
        for s in &running {
            let _ = s.events.send(Event::Failed(err.clone()));
        }
        self.release_all_owned(running).await;
    }

    /// Releases `seqs` on every worker that holds them (see [`release_per_model`]).
    pub(crate) async fn release_all_owned(&mut self, seqs: Vec<Seq>) {
        let mut per_model: Vec<Vec<u64>> = vec![Vec::new(); self.backend.num_models()];
        for s in seqs {
            for m in &s.models {
                if let Some(ids) = per_model.get_mut(m.model) {
                    ids.push(s.id);
                }
            }
        }
        release_per_model(&self.backend, per_model).await;
    }
}

/// Sends the releases of `per_model[m]` to each model's worker.
pub(crate) async fn release_per_model<B: StepBackend>(backend: &Arc<B>, per_model: Vec<Vec<u64>>) {
    let mut awaited = Vec::new();
    for (m, ids) in per_model.into_iter().enumerate() {
        if ids.is_empty() {
            continue;
        }
        let b = Arc::clone(backend);
        if backend.is_ready(m) {
            awaited.push(async move {
                if let Err(e) = b.release(m, ids).await {
                    tracing::warn!(worker = %b.display_name(m), error = %e, "release failed");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = b.release(m, ids).await {
                    tracing::debug!(worker = %b.display_name(m), error = %e, "release to a failed worker failed");
                }
            });
        }
    }
    futures::future::join_all(awaited).await;
}

/// Where this router's sequence ids start: a random point of `[1, 2^62)`, so that routers that
/// share workers never use the same id. Two routers run side by side during a rolling update
/// (the old one drains while the new one serves), and a restarted router meets its
/// predecessor's orphaned sequences on the workers: with ids counted from 1 in every router,
/// one router's step could continue the other's KV (same id, same position) and silently
/// sample from another request's context. Two ranges of a billion ids each overlap with
/// probability below 2^-31.
pub(crate) fn first_seq_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness once per process (no extra dependency).
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    (h.finish() >> 2).max(1)
}
