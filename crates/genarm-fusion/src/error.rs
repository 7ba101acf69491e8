//! `FusionError`: everything fusion, sampling and wire decoding can refuse, with messages that name the
//! offending model, token, field or length.

use crate::packed::WireDtype;

/// An error from fusion, sampling, parameter validation or decoding packed logits.
///
/// Model indices follow [`crate::fuse()`]'s convention: `0` is the base model and `i + 1` is
/// `arms[i]`, so the router can name the worker that sent the bad values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FusionError {
    /// A packed logits message has the wrong byte length for the values it must hold.
    #[error(
        "packed {dtype} logits: expected at least {expected} bytes ({n} values of {size} bytes each, \
         in whole values), got {actual} bytes",
        size = dtype.size_bytes()
    )]
    PackedLength {
        /// The stated element type.
        dtype: WireDtype,
        /// How many values the caller asked for.
        n: usize,
        /// The smallest acceptable byte length (`n * dtype.size_bytes()`).
        expected: usize,
        /// The byte length received.
        actual: usize,
    },
    /// The vocabulary is empty: there is nothing to normalize or sample.
    #[error("empty logits: the vocabulary size is 0")]
    EmptyLogits,
    /// A model sent fewer logits than the vocabulary size `V`.
    #[error("model {model_index} sent {len} logits, fewer than the vocabulary size {vocab}")]
    ShortLogits {
        /// `0` for the base model, `i + 1` for `arms[i]`.
        model_index: usize,
        /// How many logits it sent.
        len: usize,
        /// The vocabulary size `V` (the length of the output).
        vocab: usize,
    },
    /// A model sent NaN or +∞ among its first `V` logits.
    #[error("model {model_index} sent a non-finite logit (NaN or +inf) for token {token}")]
    NonFinite {
        /// `0` for the base model, `i + 1` for `arms[i]`.
        model_index: usize,
        /// The lowest token id holding NaN or +∞.
        token: u32,
    },
    /// A model masked every token (all of its first `V` logits are −∞), so it has no distribution.
    #[error("model {model_index} masked every token (all of its logits are -inf)")]
    AllMasked {
        /// `0` for the base model, `i + 1` for `arms[i]`.
        model_index: usize,
    },
    /// A guidance weight α is NaN or infinite.
    #[error("ARM term {arm_index} has a non-finite alpha ({alpha})")]
    BadAlpha {
        /// The index into `arms`.
        arm_index: usize,
        /// The offending value.
        alpha: f32,
    },
    /// The fused logits handed to the sampler hold NaN or +∞ (fusion never produces them).
    #[error("fused logits hold NaN or +inf at token {token}")]
    NonFiniteFused {
        /// The lowest token id holding NaN or +∞.
        token: u32,
    },
    /// Every token of the fused distribution is masked (−∞): nothing can be sampled.
    #[error("every token is masked (-inf) in the fused distribution: nothing to sample")]
    NothingToSample,
    /// A worker's sparse-wire certificate contradicts itself (see [`crate::sparse`]).
    #[error("model {model_index} sent an inconsistent logits certificate: {message}")]
    BadCertificate {
        /// `0` for the base model, `i + 1` for `arms[i]`.
        model_index: usize,
        /// What is inconsistent.
        message: String,
    },
    /// A sampling parameter is out of range.
    #[error("invalid `{field}`: {message}")]
    InvalidParam {
        /// The field name as the API spells it (`temperature`, `top_k`, `top_p`).
        field: &'static str,
        /// What is wrong with it, including the value received.
        message: String,
    },
}
