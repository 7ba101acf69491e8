//! The handlers' side of the scheduler: [`SchedulerHandle`] submits a [`GenRequest`] and returns
//! the receiver of its [`Event`]s (tokens, then `Finished` or `Failed`).

use std::sync::Arc;
use std::time::Instant;

use genarm_fusion::SamplingParams;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::error::SchedulerError;
use super::text::Detokenizer;
use crate::workers::ModelIndex;

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
        usage: TokenUsage,
    },
    /// Generation failed (last event).
    Failed(SchedulerError),
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Tokens in the base model's prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// A request handed to the actor.
pub(crate) struct Submitted {
    pub(crate) req: GenRequest,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) permit: OwnedSemaphorePermit,
    pub(crate) received: Instant,
    /// The submitting handler's span (the request's trace); steps link to it.
    pub(crate) span: tracing::Span,
}

/// The handlers' side of the scheduler: submit requests, get their events.
#[derive(Clone)]
pub struct SchedulerHandle {
    pub(crate) tx: mpsc::UnboundedSender<Submitted>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) max_waiting: usize,
}

impl SchedulerHandle {
    /// Queues `req`; its events arrive on the returned receiver. Dropping the receiver cancels
    /// the request (noticed within one step). Answers [`SchedulerError::Overloaded`] at once when
    /// the waiting queue is full.
    pub fn submit(&self, req: GenRequest) -> Result<mpsc::UnboundedReceiver<Event>, SchedulerError> {
        self.submit_received(req, Instant::now())
    }

    /// [`Self::submit`] for a request that arrived at `received` (the start of its latency
    /// metrics).
    pub fn submit_received(
        &self,
        req: GenRequest,
        received: Instant,
    ) -> Result<mpsc::UnboundedReceiver<Event>, SchedulerError> {
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| SchedulerError::Overloaded { waiting: self.max_waiting })?;
        let (events, rx) = mpsc::unbounded_channel();
        self.tx
            .send(Submitted { req, events, permit, received, span: tracing::Span::current() })
            .map_err(|_| SchedulerError::ShuttingDown)?;
        Ok(rx)
    }

    /// Requests waiting for a place in the batch (queued in the channel or in the actor).
    pub fn waiting(&self) -> usize {
        self.max_waiting - self.permits.available_permits()
    }
}
