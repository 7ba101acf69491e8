//! `StepBackend`: what the scheduler needs from the workers (one batched `Step` per model,
//! `Release`, readiness), so that the scheduling logic can be driven by the real gRPC clients
//! ([`super::Workers`]) or by an in-process fake in unit tests.

use std::future::Future;
use std::time::Duration;

use genarm_fusion::{RowCertificate, WireDtype};
pub use genarm_proto::prost::bytes::Bytes;

use super::error::CallError;

/// Index of a model in the backend: `0` is the base, `i + 1` is the i-th reward model in
/// sorted reward-name order (the order ARMs are fused in).
pub type ModelIndex = usize;

/// New tokens of one sequence for one model in one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqStep {
    /// Router-assigned sequence id (the same on every worker).
    pub seq_id: u64,
    /// Tokens the worker must already hold for this sequence (0 creates it).
    pub start_pos: u32,
    /// The new tokens.
    pub tokens: Vec<u32>,
}

/// Why a worker refused one sequence of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqErrorKind {
    /// The worker holds no such sequence: release and replay from position 0.
    UnknownSequence,
    /// The worker holds a different number of tokens: release and replay.
    PositionMismatch,
    /// The worker's KV pool is full.
    KvExhausted,
    /// Malformed input (a router bug or a model limit).
    Invalid,
    /// The replica holding the sequence failed (connection lost, removed from the cluster);
    /// another replica of the model is ready: replay the sequence from position 0 (a failover).
    ReplicaLost,
}

/// What workers send per sequence (docs/architecture.md §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogitsWire {
    /// Every sequence's whole row.
    #[default]
    Full,
    /// A certificate of each row with this many candidates; whole rows only on request.
    Sparse {
        /// Candidates per sequence and model.
        candidates: u32,
        /// Candidates of a refined certificate, asked for (with every model's value at the
        /// others' candidates) before whole rows when the step's certificates were too loose to
        /// prove a token; 0 goes straight to whole rows.
        refine: u32,
    },
}

/// What a `FetchRows` asks each sequence's worker for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowFetch {
    /// Its whole kept row, packed as this dtype.
    Rows(WireDtype),
    /// A refined certificate of its kept row (docs/architecture.md §3.4).
    Certificates {
        /// Candidates per certificate.
        candidates: u32,
        /// Per sequence, in order, the ids whose exact values the router wants.
        extra_ids: Vec<Vec<u32>>,
        /// How a row that cannot be certified comes whole.
        dtype: WireDtype,
    },
}

impl RowFetch {
    /// The part of this fetch for the sequences at `indices` (of the whole call's list).
    pub fn subset(&self, indices: &[usize]) -> RowFetch {
        match self {
            RowFetch::Rows(d) => RowFetch::Rows(*d),
            RowFetch::Certificates { candidates, extra_ids, dtype } => RowFetch::Certificates {
                candidates: *candidates,
                extra_ids: indices.iter().map(|&i| extra_ids.get(i).cloned().unwrap_or_default()).collect(),
                dtype: *dtype,
            },
        }
    }
}

/// A worker's certificate of one row (the sparse wire's `SparseLogits`, owned).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseRow {
    /// Candidate ids.
    pub ids: Vec<u32>,
    /// Their raw logits.
    pub logits: Vec<f32>,
    /// The row's maximum.
    pub max: f32,
    /// `ln Σ exp(x − max)` over the row.
    pub log_sum: f32,
    /// The largest logit not sent.
    pub outside_max: f32,
    /// `ln Σ exp(x − max)` over the ids not sent, rounded up.
    pub tail_log_sum: f64,
    /// Exact values at further ids (a refined certificate), unranked.
    pub extra_ids: Vec<u32>,
    /// Their raw logits.
    pub extra_logits: Vec<f32>,
}

impl SparseRow {
    /// The view [`genarm_fusion::Sampler::sample_certified`] takes.
    pub fn certificate(&self) -> RowCertificate<'_> {
        RowCertificate {
            ids: &self.ids,
            logits: &self.logits,
            max: self.max,
            log_sum: self.log_sum,
            outside_max: self.outside_max,
            tail_log_sum: self.tail_log_sum,
            extra_ids: &self.extra_ids,
            extra_logits: &self.extra_logits,
        }
    }
}

/// A worker's answer for one sequence of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum SeqOutcome {
    /// Packed logits at the sequence's last position (in the step's dtype, at least `V` values).
    Logits(Bytes),
    /// The sparse wire's certificate of those logits.
    Sparse(SparseRow),
    /// The sequence was refused.
    Error {
        /// The kind of refusal.
        kind: SeqErrorKind,
        /// The worker's message.
        message: String,
    },
}

/// A worker's answer to one batched step, with the accounting the router exports per step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepReply {
    /// One outcome per sequence of the step, in order.
    pub outcomes: Vec<SeqOutcome>,
    /// The forward time the worker reported (the slowest replica's, when the step was split
    /// over several replicas).
    pub forward: Duration,
    /// Bytes of the step's requests and replies as encoded on the wire (protobuf payloads).
    pub wire_bytes: u64,
    /// Tokens of the step the workers took from their prefix caches (`SeqResult.cached_tokens`).
    pub cached_tokens: u64,
}

/// Names and readiness of the workers (the object-safe part of [`StepBackend`], which the HTTP
/// handlers use).
pub trait WorkerHealth: Send + Sync + 'static {
    /// How many models there are (base + reward models).
    fn num_models(&self) -> usize;

    /// The name used in error messages for `model` (e.g. `base-worker (model m at http://…)`).
    fn display_name(&self, model: ModelIndex) -> String;

    /// Whether `model`'s worker is connected and ready.
    fn is_ready(&self, model: ModelIndex) -> bool;
}

/// The scheduler's view of the workers.
pub trait StepBackend: WorkerHealth {
    /// Marks `model`'s worker not ready after a failed call; it is probed again in the
    /// background until it answers.
    fn mark_failed(&self, model: ModelIndex, reason: &str);

    /// One batched step on `model`'s worker. The reply has one outcome per entry of `seqs`, in
    /// order; logits are cut to `logits_len` and packed as `dtype`, or certified (`wire`).
    fn step(
        &self,
        model: ModelIndex,
        seqs: Vec<SeqStep>,
        logits_len: u32,
        dtype: WireDtype,
        wire: LogitsWire,
    ) -> impl Future<Output = Result<StepReply, CallError>> + Send;

    /// The full rows (or refined certificates, per `what`) of sequences whose last step on
    /// `model` was sparse, from the replicas holding them: one outcome per id, in order
    /// ([`SeqOutcome::Logits`], [`SeqOutcome::Sparse`] when refined, or an error when the replica
    /// lost it), and the bytes on the wire.
    fn fetch_rows(
        &self,
        model: ModelIndex,
        seq_ids: Vec<u64>,
        logits_len: u32,
        what: RowFetch,
    ) -> impl Future<Output = Result<(Vec<SeqOutcome>, u64), CallError>> + Send;

    /// Frees sequences on `model`'s worker (unknown ids are ignored by workers).
    fn release(
        &self,
        model: ModelIndex,
        seq_ids: Vec<u64>,
    ) -> impl Future<Output = Result<(), CallError>> + Send;
}
