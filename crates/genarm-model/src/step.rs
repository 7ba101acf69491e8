//! The step API's request, reply and per-sequence error types.

use std::time::Duration;

/// New tokens for one sequence in a batched step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSeq {
    /// The router's id for the sequence.
    pub seq_id: u64,
    /// Position of the first new token: the number of tokens the engine already holds for this
    /// sequence. 0 creates the sequence.
    pub start_pos: usize,
    /// The new token ids: a whole prompt or a chunk of it in prefill, one token in decode.
    pub tokens: Vec<u32>,
}

/// What one step produced.
#[derive(Debug)]
pub struct StepOutput {
    /// One entry per input sequence, in input order: the f32 logits over the vocabulary at the
    /// sequence's last new position, or why that sequence was not advanced.
    pub results: Vec<Result<Vec<f32>, StepError>>,
    /// Per input sequence: leading tokens of the step taken from the prefix cache instead of
    /// being computed (0 for a failed sequence).
    pub cached_tokens: Vec<usize>,
    /// Time spent in the batched forward (excluding validation and allocation).
    pub forward_time: Duration,
}

/// Why one sequence of a step was not advanced. The sequence's cached state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The engine holds no tokens for a sequence that starts past 0 (e.g. after a worker restart).
    #[error("unknown sequence {seq_id} (start_pos {start_pos}): replay it from position 0")]
    UnknownSequence {
        /// The sequence.
        seq_id: u64,
        /// The position the step claimed.
        start_pos: usize,
    },
    /// The step's start position differs from the number of tokens the engine holds.
    #[error("sequence {seq_id}: step starts at position {start_pos} but {held} tokens are cached; release and replay it")]
    PositionMismatch {
        /// The sequence.
        seq_id: u64,
        /// The position the step claimed.
        start_pos: usize,
        /// The tokens the engine holds.
        held: usize,
    },
    /// Not enough free KV blocks for the new tokens.
    #[error("KV cache exhausted: sequence {seq_id} needs {needed} more blocks, {free} are free; wait for others to finish or preempt one")]
    KvExhausted {
        /// The sequence.
        seq_id: u64,
        /// Blocks the step would need.
        needed: usize,
        /// Blocks free.
        free: usize,
    },
    /// The step carried no tokens for this sequence.
    #[error("sequence {seq_id}: a step must carry at least one token")]
    EmptyTokens {
        /// The sequence.
        seq_id: u64,
    },
    /// The same sequence appears twice in one step.
    #[error("sequence {seq_id} appears more than once in the step")]
    DuplicateSequence {
        /// The sequence.
        seq_id: u64,
    },
    /// A token id is outside the model's vocabulary.
    #[error("sequence {seq_id}: token id {token} is outside the vocabulary (size {vocab_size})")]
    TokenOutOfRange {
        /// The sequence.
        seq_id: u64,
        /// The offending id.
        token: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// The sequence would grow past the model's context.
    #[error("sequence {seq_id}: {len} tokens exceed the model's context of {max} positions")]
    ContextOverflow {
        /// The sequence.
        seq_id: u64,
        /// The length it would reach.
        len: usize,
        /// The model's maximum.
        max: usize,
    },
}
