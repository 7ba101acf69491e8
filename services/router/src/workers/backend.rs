//! `StepBackend`: what the scheduler needs from the workers (one batched `Step` per model,
//! `Release`, readiness), so that the scheduling logic can be driven by the real gRPC clients
//! ([`super::Workers`]) or by an in-process fake in unit tests.

use std::future::Future;
use std::time::Duration;

use genarm_fusion::WireDtype;
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

/// A worker's answer for one sequence of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum SeqOutcome {
    /// Packed logits at the sequence's last position (in the step's dtype, at least `V` values).
    Logits(Bytes),
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
    /// order; logits are cut to `logits_len` and packed as `dtype`.
    fn step(
        &self,
        model: ModelIndex,
        seqs: Vec<SeqStep>,
        logits_len: u32,
        dtype: WireDtype,
    ) -> impl Future<Output = Result<StepReply, CallError>> + Send;

    /// Frees sequences on `model`'s worker (unknown ids are ignored by workers).
    fn release(
        &self,
        model: ModelIndex,
        seq_ids: Vec<u64>,
    ) -> impl Future<Output = Result<(), CallError>> + Send;
}
