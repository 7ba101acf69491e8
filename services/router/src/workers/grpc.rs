//! The gRPC calls to one member: `Step` (request built from the scheduler's sequences, reply
//! checked against them and turned into outcomes), `FetchRows` (the sparse wire's full rows) and
//! `Release`, with their deadlines.

use std::time::Duration;

use genarm_fusion::WireDtype;
use genarm_proto::prost::Message as _;
use genarm_proto::v1::seq_result::Outcome;
use genarm_proto::v1::{
    FetchRowsRequest, LogitsDtype, ReleaseRequest, SeqErrorCode, SeqResult, SparseLogits, StepRequest,
    StepResponse, TokenIds,
};
use tracing::Instrument as _;

use super::backend::{LogitsWire, RowFetch, SeqErrorKind, SeqOutcome, SeqStep, SparseRow};
use super::error::CallError;
use super::pool::{Member, Slot, Workers};

impl Workers {
    /// One `Step` call on one member: per-sequence outcomes in order, the forward time the worker
    /// reported, the bytes of the request and the reply, and the tokens the worker took from its
    /// prefix cache.
    #[tracing::instrument(name = "router.worker_step", skip_all,
        fields(worker = %slot.label, url = %member.url, seqs = seqs.len()))]
    pub(super) async fn step_on(
        &self,
        slot: &Slot,
        member: &Member,
        seqs: Vec<SeqStep>,
        logits_len: u32,
        dtype: WireDtype,
        wire: LogitsWire,
    ) -> Result<(Vec<SeqOutcome>, Duration, u64, u64), CallError> {
        let ids: Vec<u64> = seqs.iter().map(|s| s.seq_id).collect();
        let req = StepRequest {
            reward_name: slot.reward_name.clone(),
            seqs: seqs
                .into_iter()
                .map(|s| genarm_proto::v1::SeqStep {
                    seq_id: s.seq_id,
                    start_pos: s.start_pos,
                    tokens: s.tokens,
                })
                .collect(),
            logits_dtype: proto_dtype(dtype) as i32,
            logits_len,
            logits_wire: match wire {
                LogitsWire::Full => genarm_proto::v1::LogitsWire::Full as i32,
                LogitsWire::Sparse { .. } => genarm_proto::v1::LogitsWire::Sparse as i32,
            },
            candidates: match wire {
                LogitsWire::Full => 0,
                LogitsWire::Sparse { candidates, .. } => candidates,
            },
        };
        let request_bytes = req.encoded_len() as u64;
        let mut client = member.client.clone();
        let resp =
            tokio::time::timeout(self.step_timeout, client.step(genarm_telemetry::traced_request(req)))
                .await
                .map_err(|_| CallError::Timeout {
                    call: "Step",
                    limit: self.step_timeout,
                    hint: " (--step-timeout-secs): the worker is stalled or overloaded",
                })?
                .map_err(|s| CallError::from_status(&s))?
                .into_inner();
        let wire_bytes = request_bytes + resp.encoded_len() as u64;
        let forward = Duration::from_micros(resp.forward_micros);
        let cached: u64 = resp.results.iter().map(|r| u64::from(r.cached_tokens)).sum();
        let outcomes = outcomes_of(resp, &ids)?;
        Ok((outcomes, forward, wire_bytes, cached))
    }

    /// One `FetchRows` call on one member: the full rows it kept from the sparse step (or refined
    /// certificates of them), one outcome per id in order, and the bytes of the request and the
    /// reply.
    #[tracing::instrument(name = "router.worker_fetch_rows", skip_all,
        fields(worker = %slot.label, url = %member.url, seqs = seq_ids.len()))]
    pub(super) async fn fetch_rows_on(
        &self,
        slot: &Slot,
        member: &Member,
        seq_ids: Vec<u64>,
        logits_len: u32,
        what: RowFetch,
    ) -> Result<(Vec<SeqOutcome>, u64), CallError> {
        let rows_only = matches!(what, RowFetch::Rows(_));
        let req = match what {
            RowFetch::Rows(dtype) => FetchRowsRequest {
                reward_name: slot.reward_name.clone(),
                seq_ids: seq_ids.clone(),
                logits_dtype: proto_dtype(dtype) as i32,
                logits_len,
                ..Default::default()
            },
            RowFetch::Certificates { candidates, extra_ids, dtype } => FetchRowsRequest {
                reward_name: slot.reward_name.clone(),
                seq_ids: seq_ids.clone(),
                logits_dtype: proto_dtype(dtype) as i32,
                logits_len,
                logits_wire: genarm_proto::v1::LogitsWire::Sparse as i32,
                candidates,
                extra_ids: extra_ids.into_iter().map(|ids| TokenIds { ids }).collect(),
            },
        };
        let request_bytes = req.encoded_len() as u64;
        let mut client = member.client.clone();
        let resp =
            tokio::time::timeout(self.step_timeout, client.fetch_rows(genarm_telemetry::traced_request(req)))
                .await
                .map_err(|_| CallError::Timeout {
                    call: "FetchRows",
                    limit: self.step_timeout,
                    hint: " (--step-timeout-secs): the worker is stalled or overloaded",
                })?
                .map_err(|s| CallError::from_status(&s))?
                .into_inner();
        let wire_bytes = request_bytes + resp.encoded_len() as u64;
        let outcomes = outcomes_of(resp, &seq_ids)?;
        // A refined fetch takes certificates or whole rows (from a worker that predates refining,
        // or for a row a certificate cannot describe); a fetch of rows takes rows only.
        if let Some(i) = outcomes.iter().position(|o| rows_only && matches!(o, SeqOutcome::Sparse(_))) {
            return Err(CallError::Protocol(format!(
                "answered FetchRows with a certificate for sequence {} instead of its row",
                seq_ids[i]
            )));
        }
        Ok((outcomes, wire_bytes))
    }

    /// One `Release` call on one member, within `timeout`.
    pub(super) async fn release_on(
        slot: &Slot,
        member: &Member,
        seq_ids: Vec<u64>,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let mut client = member.client.clone();
        let span = tracing::info_span!("router.worker_release", worker = %slot.label, url = %member.url);
        let request = span.in_scope(|| genarm_telemetry::traced_request(ReleaseRequest { seq_ids }));
        tokio::time::timeout(timeout, client.release(request))
            .instrument(span)
            .await
            .map_err(|_| CallError::Timeout { call: "Release", limit: timeout, hint: "" })?
            .map(|_| ())
            .map_err(|s| CallError::from_status(&s))
    }
}

/// A reply's per-sequence outcomes, checked against the ids asked for (same count, same order).
fn outcomes_of(resp: StepResponse, ids: &[u64]) -> Result<Vec<SeqOutcome>, CallError> {
    if resp.results.len() != ids.len() {
        return Err(CallError::Protocol(format!(
            "answered {} results for a call of {} sequences",
            resp.results.len(),
            ids.len()
        )));
    }
    resp.results.into_iter().zip(ids).map(|(r, &id)| outcome_of(r, id)).collect::<Result<Vec<_>, CallError>>()
}

/// One sequence's outcome.
fn outcome_of(r: SeqResult, id: u64) -> Result<SeqOutcome, CallError> {
    if r.seq_id != id {
        return Err(CallError::Protocol(format!("answered sequence {} where {id} was expected", r.seq_id)));
    }
    Ok(match r.outcome {
        Some(Outcome::Logits(bytes)) => SeqOutcome::Logits(bytes),
        Some(Outcome::Sparse(SparseLogits {
            ids,
            logits,
            max,
            log_sum,
            outside_max,
            tail_log_sum,
            extra_ids,
            extra_logits,
        })) => SeqOutcome::Sparse(SparseRow {
            ids,
            logits,
            max,
            log_sum,
            outside_max,
            tail_log_sum,
            extra_ids,
            extra_logits,
        }),
        Some(Outcome::Error(e)) => SeqOutcome::Error { kind: error_kind(e.code), message: e.message },
        None => SeqOutcome::Error { kind: SeqErrorKind::Invalid, message: "no outcome".into() },
    })
}

/// The proto enum for a wire dtype.
fn proto_dtype(d: WireDtype) -> LogitsDtype {
    match d {
        WireDtype::F32 => LogitsDtype::F32,
        WireDtype::Bf16 => LogitsDtype::Bf16,
        WireDtype::F16 => LogitsDtype::F16,
    }
}

/// The step loop's kind of a worker's per-sequence error code.
fn error_kind(code: i32) -> SeqErrorKind {
    match SeqErrorCode::try_from(code) {
        Ok(SeqErrorCode::UnknownSequence) => SeqErrorKind::UnknownSequence,
        Ok(SeqErrorCode::PositionMismatch) => SeqErrorKind::PositionMismatch,
        Ok(SeqErrorCode::KvExhausted) => SeqErrorKind::KvExhausted,
        _ => SeqErrorKind::Invalid,
    }
}
