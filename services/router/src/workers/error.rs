//! The workers layer's errors: [`CallError`] (a failed worker call, by kind) and
//! [`CatalogError`] (a cluster whose models do not belong together).

use std::time::Duration;

use super::backend::ModelIndex;

/// A failed worker call. The kind survives up to the step loop and the logs: a transport
/// failure or a timeout says "the worker is gone or stalled", a gRPC status says "the worker
/// refused the call", a protocol error says "the worker answered something impossible".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// No connection to the worker (refused, reset, TLS): the channel's own error.
    #[error("{0}")]
    Transport(String),
    /// No answer within the limit.
    #[error("no answer to {call} within {} s{hint}", .limit.as_secs_f64())]
    Timeout {
        /// The RPC (`Step`, `Release`, ...).
        call: &'static str,
        /// How long the router waited.
        limit: Duration,
        /// What the limit is and what a timeout means (may be empty).
        hint: &'static str,
    },
    /// The worker answered the whole call with an error status.
    #[error("{code:?}: {message}")]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// The worker's message.
        message: String,
    },
    /// The worker's reply breaks the protocol (wrong number of results, wrong sequence ids).
    #[error("{0}")]
    Protocol(String),
    /// The model slot has no ready worker to send the call to.
    #[error("{0} has no ready worker")]
    NoReadyWorker(String),
    /// No such model slot (a router bug).
    #[error("no worker #{0}")]
    UnknownModel(ModelIndex),
}

impl CallError {
    /// Classifies a gRPC status the client returned: a status with a source error was made by
    /// the channel (a transport failure); one without came from the worker.
    pub fn from_status(s: &tonic::Status) -> Self {
        use std::error::Error as _;
        let mut message = s.message().to_string();
        let mut src = s.source();
        while let Some(e) = src {
            let text = e.to_string();
            if !message.contains(&text) {
                message.push_str(&format!(": {text}"));
            }
            src = e.source();
        }
        if s.source().is_some() {
            CallError::Transport(format!("{:?}: {message}", s.code()))
        } else {
            CallError::Status { code: s.code(), message }
        }
    }

    /// Whether the worker may be alive and merely slow or unreachable for now (its KV may
    /// still hold the call's sequences).
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Transport(_) | CallError::Timeout { .. })
    }
}

/// Why the models of a cluster cannot serve together (invariants 6 and 7 of
/// docs/architecture.md §1). Every message names the models involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The catalog was built without a base model (a router bug).
    #[error("no base model")]
    NoBase,
    /// The base model's tokenizer has no tokens.
    #[error("{model}: its tokenizer is empty")]
    EmptyTokenizer {
        /// The base's display name.
        model: String,
    },
    /// The base produces fewer logits than its tokenizer has tokens.
    #[error(
        "{model} produces {logits} logits per position, fewer than its tokenizer's {vocab} tokens; the \
         model's config (vocab_size) and tokenizer do not belong together"
    )]
    BaseShortLogits {
        /// The base's display name.
        model: String,
        /// Logits per position.
        logits: u32,
        /// Tokens in the tokenizer.
        vocab: usize,
    },
    /// An ARM produces fewer logits than the base vocabulary.
    #[error(
        "reward model \"{reward_name}\" ({arm_model}) produces {logits} logits per position, fewer than \
         the base model {base_model}'s vocabulary of {vocab} tokens; an ARM must cover every base token \
         id — use an ARM trained on the base model's tokenizer"
    )]
    ArmShortLogits {
        /// The ARM's reward name.
        reward_name: String,
        /// The ARM's model id.
        arm_model: String,
        /// The ARM's logits per position.
        logits: u32,
        /// The base's model id.
        base_model: String,
        /// V.
        vocab: usize,
    },
    /// An ARM maps some id in [0, V) to another token than the base.
    #[error(
        "reward model \"{reward_name}\" ({arm_model}) does not share the vocabulary of the base model \
         {base_model}: their token ids [0, {vocab}) map to different tokens{detail}; GenARM needs an ARM \
         with the base model's tokenizer"
    )]
    VocabMismatch {
        /// The ARM's reward name.
        reward_name: String,
        /// The ARM's model id.
        arm_model: String,
        /// The base's model id.
        base_model: String,
        /// V.
        vocab: usize,
        /// ` (first difference at id N: "a" vs "b")`, or empty.
        detail: String,
    },
    /// The effective context leaves no room to generate.
    #[error("the effective context ({0} positions) is too short to generate anything")]
    ContextTooShort(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_from_the_worker_keeps_its_code_and_a_channel_failure_is_transport() {
        let e = CallError::from_status(&tonic::Status::invalid_argument("bad tokens"));
        assert_eq!(e, CallError::Status { code: tonic::Code::InvalidArgument, message: "bad tokens".into() });
        assert_eq!(e.to_string(), "InvalidArgument: bad tokens");
        assert!(!e.is_transient());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let mut s = tonic::Status::unavailable("error trying to connect");
        s.set_source(std::sync::Arc::new(io));
        let e = CallError::from_status(&s);
        assert!(matches!(&e, CallError::Transport(m) if m.contains("connection refused")), "{e:?}");
        assert!(e.is_transient());
    }

    #[test]
    fn a_timeout_names_the_call_and_the_limit() {
        let e = CallError::Timeout {
            call: "Step",
            limit: Duration::from_secs(3),
            hint: " (--step-timeout-secs): the worker is stalled or overloaded",
        };
        assert_eq!(
            e.to_string(),
            "no answer to Step within 3 s (--step-timeout-secs): the worker is stalled or overloaded"
        );
    }
}
