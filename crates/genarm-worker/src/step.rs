//! The `Step` call: checking a request against what the worker serves, running it through
//! [`Engine::step`], and turning each sequence's outcome into logits packed in the requested
//! dtype or a [`SeqError`] with its code.

use genarm_fusion::packed::{pack, WireDtype};
use genarm_model::{Engine, StepError, StepSeq};
use genarm_proto::prost::bytes::Bytes;
use genarm_proto::v1::{
    seq_result, LogitsDtype, SeqError, SeqErrorCode, SeqResult, StepRequest, StepResponse,
};
use tonic::Status;

use crate::role::WorkerRole;
use crate::stats::StepCounters;

/// A checked `Step` request, ready for the engine.
#[derive(Debug)]
pub struct PreparedStep {
    /// The sequences, in request order.
    pub seqs: Vec<StepSeq>,
    /// How to pack the logits.
    pub dtype: WireDtype,
    /// How many logits to return per sequence (1..=vocab).
    pub logits_len: usize,
}

/// Checks the request-level fields of `req` — the reward name, the logits dtype, `logits_len` —
/// before anything runs, so a refused request changes no sequence. Per-sequence problems
/// (unknown sequence, bad tokens) are left to the engine and answered per sequence.
pub fn prepare_step(req: StepRequest, role: &WorkerRole, vocab_size: usize) -> Result<PreparedStep, Status> {
    if req.reward_name != role.reward_name() {
        return Err(Status::invalid_argument(format!(
            "this worker serves {} (reward_name {:?}), but the step is for reward_name {:?}; \
             send each reward model's steps to its own rm-worker",
            role.describe(),
            role.reward_name(),
            req.reward_name
        )));
    }
    let dtype = match LogitsDtype::try_from(req.logits_dtype) {
        Ok(LogitsDtype::F32) => WireDtype::F32,
        Ok(LogitsDtype::Bf16) => WireDtype::Bf16,
        Ok(LogitsDtype::F16) => WireDtype::F16,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown logits_dtype {}: use LOGITS_DTYPE_F32 (0), LOGITS_DTYPE_BF16 (1) or LOGITS_DTYPE_F16 (2)",
                req.logits_dtype
            )))
        }
    };
    let logits_len = match req.logits_len as usize {
        0 => vocab_size,
        n if n > vocab_size => {
            return Err(Status::invalid_argument(format!(
                "logits_len {n} exceeds this model's vocab_size {vocab_size}: \
                 a model with fewer logits than the base vocabulary cannot be fused with it"
            )))
        }
        n => n,
    };
    let seqs = req
        .seqs
        .into_iter()
        .map(|s| StepSeq { seq_id: s.seq_id, start_pos: s.start_pos as usize, tokens: s.tokens })
        .collect();
    Ok(PreparedStep { seqs, dtype, logits_len })
}

/// Runs a prepared step on `engine` (blocking: call it off the async runtime) and builds the
/// response: per sequence, its logits cut to `logits_len` and packed, or its error.
/// A failed forward (no sequence advanced) is `Status::internal`.
pub fn execute_step(
    engine: &Engine,
    step: PreparedStep,
    counters: &StepCounters,
) -> Result<StepResponse, Status> {
    let PreparedStep { seqs, dtype, logits_len } = step;
    let meta: Vec<(u64, usize)> = seqs.iter().map(|s| (s.seq_id, s.tokens.len())).collect();
    let out = engine.step(seqs).map_err(|e| {
        tracing::error!(error = %e, "forward failed");
        Status::internal(format!("forward failed, no sequence advanced: {e}"))
    })?;
    let mut advanced = 0u64;
    let mut tokens = 0u64;
    let results = meta
        .into_iter()
        .zip(out.results)
        .map(|((seq_id, n_tokens), result)| {
            let outcome = match result {
                Ok(logits) => {
                    advanced += 1;
                    tokens += n_tokens as u64;
                    let mut bytes = Vec::new();
                    pack(&logits[..logits_len.min(logits.len())], dtype, &mut bytes);
                    seq_result::Outcome::Logits(Bytes::from(bytes))
                }
                Err(e) => seq_result::Outcome::Error(seq_error(&e)),
            };
            SeqResult { seq_id, outcome: Some(outcome) }
        })
        .collect();
    counters.record_advanced(advanced, tokens);
    Ok(StepResponse { results, forward_micros: out.forward_time.as_micros() as u64 })
}

/// The protocol error for a sequence the engine did not advance.
pub fn seq_error(e: &StepError) -> SeqError {
    let code = match e {
        StepError::UnknownSequence { .. } => SeqErrorCode::UnknownSequence,
        StepError::PositionMismatch { .. } => SeqErrorCode::PositionMismatch,
        StepError::KvExhausted { .. } => SeqErrorCode::KvExhausted,
        StepError::EmptyTokens { .. }
        | StepError::DuplicateSequence { .. }
        | StepError::TokenOutOfRange { .. }
        | StepError::ContextOverflow { .. } => SeqErrorCode::Invalid,
    };
    SeqError { code: code as i32, message: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genarm_proto::v1::SeqStep;

    fn req(reward_name: &str, logits_dtype: i32, logits_len: u32) -> StepRequest {
        StepRequest {
            reward_name: reward_name.into(),
            seqs: vec![SeqStep { seq_id: 7, start_pos: 3, tokens: vec![1, 2] }],
            logits_dtype,
            logits_len,
        }
    }

    #[test]
    fn prepares_valid_requests() {
        let rm = WorkerRole::Reward { name: "helpful".into() };
        let p = prepare_step(req("helpful", LogitsDtype::Bf16 as i32, 0), &rm, 100).unwrap();
        assert_eq!(p.dtype, WireDtype::Bf16);
        assert_eq!(p.logits_len, 100);
        assert_eq!(p.seqs, vec![StepSeq { seq_id: 7, start_pos: 3, tokens: vec![1, 2] }]);
        let p = prepare_step(req("", LogitsDtype::F16 as i32, 60), &WorkerRole::Base, 100).unwrap();
        assert_eq!((p.dtype, p.logits_len), (WireDtype::F16, 60));
    }

    #[test]
    fn refuses_bad_requests_naming_the_problem() {
        let rm = WorkerRole::Reward { name: "helpful".into() };
        let e = prepare_step(req("harmless", 0, 0), &rm, 100).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("\"helpful\"") && e.message().contains("\"harmless\""),
            "{}",
            e.message()
        );
        let e = prepare_step(req("helpful", 0, 0), &WorkerRole::Base, 100).unwrap_err();
        assert!(e.message().contains("base"), "{}", e.message());
        let e = prepare_step(req("", 9, 0), &WorkerRole::Base, 100).unwrap_err();
        assert!(e.message().contains("logits_dtype 9"), "{}", e.message());
        let e = prepare_step(req("", 0, 101), &WorkerRole::Base, 100).unwrap_err();
        assert!(e.message().contains("101") && e.message().contains("100"), "{}", e.message());
    }

    #[test]
    fn maps_step_errors_to_codes() {
        let cases = [
            (StepError::UnknownSequence { seq_id: 1, start_pos: 4 }, SeqErrorCode::UnknownSequence),
            (
                StepError::PositionMismatch { seq_id: 1, start_pos: 4, held: 2 },
                SeqErrorCode::PositionMismatch,
            ),
            (StepError::KvExhausted { seq_id: 1, needed: 2, free: 0 }, SeqErrorCode::KvExhausted),
            (StepError::EmptyTokens { seq_id: 1 }, SeqErrorCode::Invalid),
            (StepError::DuplicateSequence { seq_id: 1 }, SeqErrorCode::Invalid),
            (StepError::TokenOutOfRange { seq_id: 1, token: 9, vocab_size: 5 }, SeqErrorCode::Invalid),
            (StepError::ContextOverflow { seq_id: 1, len: 9, max: 5 }, SeqErrorCode::Invalid),
        ];
        for (e, code) in cases {
            let se = seq_error(&e);
            assert_eq!(se.code, code as i32, "{e}");
            assert_eq!(se.message, e.to_string());
        }
    }
}
