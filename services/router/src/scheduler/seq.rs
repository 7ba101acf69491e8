//! A request inside the scheduler: [`Seq`], with one [`SeqModel`] per model it needs (the base,
//! then its ARMs in fusion order) holding that model's prompt and what its worker holds.

use std::time::Instant;

use genarm_fusion::Sampler;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::handle::{Event, TokenUsage};
use super::text::Detokenizer;
use crate::workers::{Bytes, ModelIndex, SparseRow};

/// One model's logits for a sequence's current position, as its worker sent them.
#[derive(Debug, Clone)]
pub(crate) enum ModelRow {
    /// The whole row, packed in the step's dtype.
    Packed(Bytes),
    /// The sparse wire's certificate of the row (the worker keeps the row for `FetchRows`).
    Sparse(SparseRow),
}

/// One model's view of a running sequence.
pub(crate) struct SeqModel {
    /// Backend index.
    pub model: ModelIndex,
    /// α (unused for the base).
    pub alpha: f32,
    /// This model's prompt.
    pub prompt: Vec<u32>,
    /// Tokens the worker holds for the sequence (below the target length between the chunks of a
    /// chunked prefill).
    pub pos: u32,
    /// Logits at the sequence's current length, once the worker sent them this round (never
    /// those of an intermediate prefill chunk).
    pub logits: Option<ModelRow>,
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

    /// Tokens model slot `slot` still has to send before it can answer logits at the current
    /// length (0 once its logits are in).
    pub fn missing_tokens(&self, slot: usize) -> usize {
        let sm = &self.models[slot];
        match sm.logits {
            Some(_) => 0,
            None => self.target_len(slot).saturating_sub(sm.pos as usize),
        }
    }

    /// Prefill tokens this sequence still has to send, on the model that lacks the most: what it
    /// weighs against the per-step budget at admission. A slot missing one token is a decode (it
    /// is never chunked or delayed, see `step::plan`) and counts nothing.
    pub fn prefill_backlog(&self) -> usize {
        (0..self.models.len()).map(|s| self.missing_tokens(s)).filter(|&n| n > 1).max().unwrap_or(0)
    }

    /// Token counts so far.
    pub fn usage(&self) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self.models[0].prompt.len() as u32,
            completion_tokens: self.generated.len() as u32,
        }
    }

    /// Whether the client went away.
    pub fn cancelled(&self) -> bool {
        self.events.is_closed()
    }
}
