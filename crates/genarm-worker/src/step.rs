//! The `Step` call: checking a request against what the worker serves, running it through
//! [`Engine::step`], and turning each sequence's outcome into logits packed in the requested
//! dtype, the sparse wire's certificate of them, or a [`SeqError`] with its code. The
//! `FetchRows` call's request checks live here too, as they are the step's.

use genarm_fusion::packed::WireDtype;
use genarm_fusion::{certify_row, OwnedRowCertificate};
use genarm_model::{Engine, StepError, StepSeq};
use genarm_proto::v1::{
    seq_result, FetchRowsRequest, LogitsDtype, LogitsWire, SeqError, SeqErrorCode, SeqResult, SparseLogits,
    StepRequest, StepResponse,
};
use tonic::Status;

use crate::role::WorkerRole;
use crate::rows::{packed_row, KeptRows};
use crate::stats::StepCounters;

/// What a step answers each advanced sequence with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepWire {
    /// The full row, packed.
    Full,
    /// A certificate with this many candidates (1..=logits_len); the row is kept for `FetchRows`.
    Sparse {
        /// Candidates per sequence.
        candidates: usize,
    },
}

/// A checked `Step` request, ready for the engine.
#[derive(Debug)]
pub struct PreparedStep {
    /// The sequences, in request order.
    pub seqs: Vec<StepSeq>,
    /// How to pack the logits.
    pub dtype: WireDtype,
    /// How many logits to return per sequence (1..=vocab).
    pub logits_len: usize,
    /// Full rows or certificates.
    pub wire: StepWire,
}

/// Checks the request-level fields of `req` — the reward name, the logits dtype, `logits_len`,
/// the logits wire and its candidates — before anything runs, so a refused request changes no
/// sequence. Per-sequence problems (unknown sequence, bad tokens) are left to the engine and
/// answered per sequence.
pub fn prepare_step(req: StepRequest, role: &WorkerRole, vocab_size: usize) -> Result<PreparedStep, Status> {
    let (dtype, logits_len) =
        check_rows(&req.reward_name, req.logits_dtype, req.logits_len, role, vocab_size)?;
    let wire = match LogitsWire::try_from(req.logits_wire) {
        Ok(LogitsWire::Full) => StepWire::Full,
        Ok(LogitsWire::Sparse) if req.candidates == 0 => return Err(Status::invalid_argument(
            "candidates must be at least 1 with LOGITS_WIRE_SPARSE (how many logits each certificate sends)",
        )),
        // More candidates than logits would only send the whole row as candidates.
        Ok(LogitsWire::Sparse) => StepWire::Sparse { candidates: (req.candidates as usize).min(logits_len) },
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown logits_wire {}: use LOGITS_WIRE_FULL (0) or LOGITS_WIRE_SPARSE (1)",
                req.logits_wire
            )))
        }
    };
    let seqs = req
        .seqs
        .into_iter()
        .map(|s| StepSeq { seq_id: s.seq_id, start_pos: s.start_pos as usize, tokens: s.tokens })
        .collect();
    Ok(PreparedStep { seqs, dtype, logits_len, wire })
}

/// A checked `FetchRows` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedFetch {
    /// The sequences, in request order.
    pub seq_ids: Vec<u64>,
    /// How to pack the rows (and a row a certificate cannot describe).
    pub dtype: WireDtype,
    /// How many logits per row (1..=vocab).
    pub logits_len: usize,
    /// Whole rows, or refined certificates of them.
    pub what: FetchWhat,
}

/// What a `FetchRows` answers per sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchWhat {
    /// The kept row, packed.
    Rows,
    /// A certificate of the kept row with this many candidates (1..=logits_len) and the exact
    /// values at each sequence's `extra_ids` (one list per sequence, in order; empty when none).
    Certificates {
        /// Candidates per sequence.
        candidates: usize,
        /// Per sequence, the ids whose values the router wants.
        extra_ids: Vec<Vec<u32>>,
    },
}

impl PreparedFetch {
    /// The ids whose values the router wants for the `i`-th sequence (none for whole rows).
    pub fn extras(&self, i: usize) -> &[u32] {
        match &self.what {
            FetchWhat::Certificates { extra_ids, .. } => extra_ids.get(i).map(Vec::as_slice).unwrap_or(&[]),
            FetchWhat::Rows => &[],
        }
    }
}

/// Checks a `FetchRows` request as [`prepare_step`] checks a step's reward name, dtype and
/// `logits_len`.
pub fn prepare_fetch(
    req: FetchRowsRequest,
    role: &WorkerRole,
    vocab_size: usize,
) -> Result<PreparedFetch, Status> {
    let (dtype, logits_len) =
        check_rows(&req.reward_name, req.logits_dtype, req.logits_len, role, vocab_size)?;
    let what = match LogitsWire::try_from(req.logits_wire) {
        Ok(LogitsWire::Full) => FetchWhat::Rows,
        Ok(LogitsWire::Sparse) if req.candidates == 0 => return Err(Status::invalid_argument(
            "candidates must be at least 1 for a FetchRows with LOGITS_WIRE_SPARSE (how many logits each \
                 refined certificate ranks)",
        )),
        Ok(LogitsWire::Sparse) => {
            if !req.extra_ids.is_empty() && req.extra_ids.len() != req.seq_ids.len() {
                return Err(Status::invalid_argument(format!(
                    "extra_ids has {} lists for {} sequences: send one per sequence, in seq_ids order, or none",
                    req.extra_ids.len(),
                    req.seq_ids.len()
                )));
            }
            let extra_ids: Vec<Vec<u32>> = req.extra_ids.into_iter().map(|l| l.ids).collect();
            if let Some((i, &id)) = extra_ids
                .iter()
                .enumerate()
                .find_map(|(i, l)| l.iter().find(|&&id| id as usize >= logits_len).map(|id| (i, id)))
            {
                return Err(Status::invalid_argument(format!(
                    "extra id {id} of sequence {} is not below logits_len {logits_len}",
                    req.seq_ids[i]
                )));
            }
            FetchWhat::Certificates { candidates: (req.candidates as usize).min(logits_len), extra_ids }
        }
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown logits_wire {} in FetchRows: use LOGITS_WIRE_FULL (0) for whole rows or \
                 LOGITS_WIRE_SPARSE (1) for refined certificates",
                req.logits_wire
            )))
        }
    };
    Ok(PreparedFetch { seq_ids: req.seq_ids, dtype, logits_len, what })
}

/// The refined certificate of a kept `row` (its first `logits_len` values) with `candidates`
/// candidates and the values at `extras`; a row that cannot be certified goes out whole, packed as
/// `dtype`, as a step would send it.
pub fn refined_outcome(
    row: &[f32],
    candidates: usize,
    extras: &[u32],
    dtype: WireDtype,
) -> seq_result::Outcome {
    let mut cert = OwnedRowCertificate::default();
    match certify_row(row, candidates, &mut cert)
        .map_err(|e| e.to_string())
        .and_then(|()| cert.add_extras(row, extras))
    {
        Ok(()) => seq_result::Outcome::Sparse(sparse_logits(&cert)),
        Err(_) => packed_row(row, dtype),
    }
}

/// The checks `Step` and `FetchRows` share: the reward name, the dtype, `logits_len` (0 = all).
fn check_rows(
    reward_name: &str,
    logits_dtype: i32,
    logits_len: u32,
    role: &WorkerRole,
    vocab_size: usize,
) -> Result<(WireDtype, usize), Status> {
    if reward_name != role.reward_name() {
        return Err(Status::invalid_argument(format!(
            "this worker serves {} (reward_name {:?}), but the step is for reward_name {:?}; \
             send each reward model's steps to its own rm-worker",
            role.describe(),
            role.reward_name(),
            reward_name
        )));
    }
    let dtype = match LogitsDtype::try_from(logits_dtype) {
        Ok(LogitsDtype::F32) => WireDtype::F32,
        Ok(LogitsDtype::Bf16) => WireDtype::Bf16,
        Ok(LogitsDtype::F16) => WireDtype::F16,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown logits_dtype {}: use LOGITS_DTYPE_F32 (0), LOGITS_DTYPE_BF16 (1) or LOGITS_DTYPE_F16 (2)",
                logits_dtype
            )))
        }
    };
    let logits_len = match logits_len as usize {
        0 => vocab_size,
        n if n > vocab_size => {
            return Err(Status::invalid_argument(format!(
                "logits_len {n} exceeds this model's vocab_size {vocab_size}: \
                 a model with fewer logits than the base vocabulary cannot be fused with it"
            )))
        }
        n => n,
    };
    Ok((dtype, logits_len))
}

/// Runs a prepared step on `engine` (blocking: call it off the async runtime) and builds the
/// response: per sequence, its logits cut to `logits_len` and packed (or, on the sparse wire,
/// their certificate), or its error. A sparse step keeps each advanced sequence's row in `kept`
/// (replacing its previous one); any other outcome drops the sequence's kept row, since its last
/// step is then no sparse step. A failed forward (no sequence advanced) is `Status::internal`.
pub fn execute_step(
    engine: &Engine,
    step: PreparedStep,
    counters: &StepCounters,
    kept: &KeptRows,
) -> Result<StepResponse, Status> {
    let PreparedStep { seqs, dtype, logits_len, wire } = step;
    let meta: Vec<(u64, usize)> = seqs.iter().map(|s| (s.seq_id, s.tokens.len())).collect();
    let out = engine.step(seqs).map_err(|e| {
        // The sequences did not advance, but the router may retry them on the full wire: their
        // old rows are stale either way.
        kept.forget(meta.iter().map(|m| m.0));
        tracing::error!(error = %e, "forward failed");
        Status::internal(format!("forward failed, no sequence advanced: {e}"))
    })?;
    let mut advanced = 0u64;
    let mut tokens = 0u64;
    let mut cert = OwnedRowCertificate::default();
    let mut keep = Vec::new();
    let mut forget = Vec::new();
    let results = meta
        .into_iter()
        .zip(out.results)
        .zip(out.cached_tokens)
        .map(|(((seq_id, n_tokens), result), cached)| {
            let outcome = match result {
                Ok(mut logits) => {
                    advanced += 1;
                    tokens += n_tokens as u64;
                    logits.truncate(logits_len);
                    let outcome = row_outcome(&logits, wire, dtype, &mut cert);
                    match wire {
                        StepWire::Sparse { .. } => keep.push((seq_id, logits)),
                        StepWire::Full => forget.push(seq_id),
                    }
                    outcome
                }
                Err(e) => {
                    forget.push(seq_id);
                    seq_result::Outcome::Error(seq_error(&e))
                }
            };
            SeqResult { seq_id, outcome: Some(outcome), cached_tokens: cached as u32 }
        })
        .collect();
    kept.forget(forget);
    for (seq_id, row) in keep {
        kept.keep(seq_id, row);
    }
    counters.record_advanced(advanced, tokens);
    Ok(StepResponse { results, forward_micros: out.forward_time.as_micros() as u64 })
}

/// What a step answers for one advanced sequence's `row` (already cut to `logits_len`).
fn row_outcome(
    row: &[f32],
    wire: StepWire,
    dtype: WireDtype,
    cert: &mut OwnedRowCertificate,
) -> seq_result::Outcome {
    match wire {
        StepWire::Sparse { candidates } => match certify_row(row, candidates, cert) {
            Ok(()) => seq_result::Outcome::Sparse(sparse_logits(cert)),
            // NaN, +inf or all masked: the full row, so that the router reports it exactly as on
            // the full wire.
            Err(_) => packed_row(row, dtype),
        },
        StepWire::Full => packed_row(row, dtype),
    }
}

/// The wire form of a certificate.
pub fn sparse_logits(c: &OwnedRowCertificate) -> SparseLogits {
    SparseLogits {
        ids: c.ids.clone(),
        logits: c.logits.clone(),
        max: c.max,
        log_sum: c.log_sum,
        outside_max: c.outside_max,
        tail_log_sum: c.tail_log_sum,
        extra_ids: c.extra_ids.clone(),
        extra_logits: c.extra_logits.clone(),
    }
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
    use genarm_proto::v1::{SeqStep, TokenIds};

    fn req(reward_name: &str, logits_dtype: i32, logits_len: u32) -> StepRequest {
        StepRequest {
            reward_name: reward_name.into(),
            seqs: vec![SeqStep { seq_id: 7, start_pos: 3, tokens: vec![1, 2] }],
            logits_dtype,
            logits_len,
            ..Default::default()
        }
    }

    fn sparse(mut r: StepRequest, candidates: u32) -> StepRequest {
        r.logits_wire = LogitsWire::Sparse as i32;
        r.candidates = candidates;
        r
    }

    #[test]
    fn prepares_valid_requests() {
        let rm = WorkerRole::Reward { name: "helpful".into() };
        let p = prepare_step(req("helpful", LogitsDtype::Bf16 as i32, 0), &rm, 100).unwrap();
        assert_eq!(p.dtype, WireDtype::Bf16);
        assert_eq!(p.logits_len, 100);
        assert_eq!(p.seqs, vec![StepSeq { seq_id: 7, start_pos: 3, tokens: vec![1, 2] }]);
        let p = prepare_step(req("", LogitsDtype::F16 as i32, 60), &WorkerRole::Base, 100).unwrap();
        assert_eq!((p.dtype, p.logits_len, p.wire), (WireDtype::F16, 60, StepWire::Full));
        let p = prepare_step(sparse(req("", 0, 60), 8), &WorkerRole::Base, 100).unwrap();
        assert_eq!(p.wire, StepWire::Sparse { candidates: 8 });
        let p = prepare_step(sparse(req("", 0, 60), 500), &WorkerRole::Base, 100).unwrap();
        assert_eq!(p.wire, StepWire::Sparse { candidates: 60 }, "capped at logits_len");
        let mut full = req("", 0, 0);
        full.candidates = 0;
        assert_eq!(prepare_step(full, &WorkerRole::Base, 100).unwrap().wire, StepWire::Full);
        let f = FetchRowsRequest {
            reward_name: "helpful".into(),
            seq_ids: vec![3, 1, 3],
            logits_dtype: LogitsDtype::Bf16 as i32,
            logits_len: 0,
            ..Default::default()
        };
        assert_eq!(
            prepare_fetch(f.clone(), &rm, 100).unwrap(),
            PreparedFetch {
                seq_ids: vec![3, 1, 3],
                dtype: WireDtype::Bf16,
                logits_len: 100,
                what: FetchWhat::Rows
            }
        );
        let ids = |v: &[u32]| TokenIds { ids: v.to_vec() };
        let refine = FetchRowsRequest {
            logits_wire: LogitsWire::Sparse as i32,
            candidates: 500,
            extra_ids: vec![ids(&[4, 99]), ids(&[]), ids(&[0])],
            ..f
        };
        let p = prepare_fetch(refine.clone(), &rm, 100).unwrap();
        assert_eq!(
            p.what,
            FetchWhat::Certificates { candidates: 100, extra_ids: vec![vec![4, 99], vec![], vec![0]] },
            "candidates capped at logits_len"
        );
        assert_eq!((p.extras(0), p.extras(1), p.extras(7)), (&[4u32, 99][..], &[][..], &[][..]));
        let p = prepare_fetch(FetchRowsRequest { extra_ids: vec![], ..refine.clone() }, &rm, 100).unwrap();
        assert_eq!(p.extras(0), &[] as &[u32], "no lists at all is fine");

        let e = prepare_fetch(FetchRowsRequest { candidates: 0, ..refine.clone() }, &rm, 100).unwrap_err();
        assert!(e.message().contains("candidates must be at least 1"), "{}", e.message());
        let e = prepare_fetch(FetchRowsRequest { extra_ids: vec![ids(&[1])], ..refine.clone() }, &rm, 100)
            .unwrap_err();
        assert!(e.message().contains("1 lists for 3 sequences"), "{}", e.message());
        let e = prepare_fetch(FetchRowsRequest { logits_len: 50, ..refine.clone() }, &rm, 100).unwrap_err();
        assert!(
            e.message().contains("extra id 99 of sequence 3 is not below logits_len 50"),
            "{}",
            e.message()
        );
        let e = prepare_fetch(FetchRowsRequest { logits_wire: 7, ..refine }, &rm, 100).unwrap_err();
        assert!(e.message().contains("unknown logits_wire 7 in FetchRows"), "{}", e.message());
    }

    #[test]
    fn refuses_bad_wires_and_fetches_naming_the_problem() {
        let e = prepare_step(sparse(req("", 0, 0), 0), &WorkerRole::Base, 100).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("candidates must be at least 1"), "{}", e.message());
        let mut r = req("", 0, 0);
        r.logits_wire = 5;
        let e = prepare_step(r, &WorkerRole::Base, 100).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("logits_wire 5")
                && e.message().contains("LOGITS_WIRE_FULL")
                && e.message().contains("LOGITS_WIRE_SPARSE"),
            "{}",
            e.message()
        );
        let fetch = |reward_name: &str, logits_dtype: i32, logits_len: u32| FetchRowsRequest {
            reward_name: reward_name.into(),
            seq_ids: vec![1],
            logits_dtype,
            logits_len,
            ..Default::default()
        };
        let e = prepare_fetch(fetch("helpful", 0, 0), &WorkerRole::Base, 100).unwrap_err();
        assert!(e.message().contains("base") && e.message().contains("\"helpful\""), "{}", e.message());
        let e = prepare_fetch(fetch("", 9, 0), &WorkerRole::Base, 100).unwrap_err();
        assert!(e.message().contains("logits_dtype 9"), "{}", e.message());
        let e = prepare_fetch(fetch("", 0, 101), &WorkerRole::Base, 100).unwrap_err();
        assert!(e.message().contains("logits_len 101"), "{}", e.message());
    }

    /// The fixture engine and a step of `seqs` (seq id, start, tokens) on `wire`.
    fn run(
        engine: &Engine,
        kept: &KeptRows,
        wire: StepWire,
        seqs: &[(u64, usize, Vec<u32>)],
        logits_len: usize,
    ) -> StepResponse {
        let step = PreparedStep {
            seqs: seqs
                .iter()
                .map(|(seq_id, start_pos, tokens)| StepSeq {
                    seq_id: *seq_id,
                    start_pos: *start_pos,
                    tokens: tokens.clone(),
                })
                .collect(),
            dtype: WireDtype::F32,
            logits_len,
            wire,
        };
        execute_step(engine, step, &StepCounters::default(), kept).unwrap()
    }

    fn row(r: &SeqResult, n: usize) -> Vec<f32> {
        let Some(seq_result::Outcome::Logits(b)) = &r.outcome else { panic!("expected logits: {r:?}") };
        let mut out = vec![0.0; n];
        genarm_fusion::packed::unpack(b, WireDtype::F32, n, &mut out).unwrap();
        out
    }

    #[test]
    fn a_sparse_step_certifies_each_row_and_keeps_it_until_the_next_step() {
        let assets = genarm_model::ModelAssets::open(&genarm_testkit::fixture_dir("llama-mha")).unwrap();
        let engine = Engine::load(&assets, genarm_model::EngineOptions::default()).unwrap();
        let kept = KeptRows::default();
        let len = 200;
        let prompt = vec![5, 6, 7, 8];
        // Sequences 1 (full) and 2 (sparse) share their tokens, hence their rows.
        let full = run(&engine, &kept, StepWire::Full, &[(1, 0, prompt.clone())], len);
        let reference = row(&full.results[0], len);
        assert!(kept.is_empty(), "a full step keeps nothing");
        let wire = StepWire::Sparse { candidates: 5 };
        let r = run(&engine, &kept, wire, &[(2, 0, prompt.clone()), (3, 9, vec![1])], len);
        let Some(seq_result::Outcome::Sparse(s)) = &r.results[0].outcome else { panic!("{r:?}") };
        let mut want = OwnedRowCertificate::default();
        certify_row(&reference, 5, &mut want).unwrap();
        assert_eq!(s, &sparse_logits(&want), "the certificate of the full step's row");
        assert_eq!(s.ids.len(), 5);
        assert!(matches!(&r.results[1].outcome, Some(seq_result::Outcome::Error(_))));
        assert_eq!(kept.len(), 1, "only the advanced sequence's row is kept");
        let fetched = kept.fetch(2, len, |r| packed_row(r, WireDtype::F32));
        let same = row(&fetched, len).iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "the kept row is the full step's, bit for bit");
        // Refined: a deeper certificate of the same row, with the values at the ids asked for.
        let refined = kept.fetch(2, len, |r| refined_outcome(r, 20, &[want.ids[0], 150, 7], WireDtype::F32));
        let Some(seq_result::Outcome::Sparse(d)) = &refined.outcome else { panic!("{refined:?}") };
        let mut deeper = OwnedRowCertificate::default();
        certify_row(&reference, 20, &mut deeper).unwrap();
        deeper.add_extras(&reference, &[want.ids[0], 150, 7]).unwrap();
        assert_eq!(d, &sparse_logits(&deeper));
        assert_eq!(d.ids.len(), 20);
        for (id, x) in d.extra_ids.iter().zip(&d.extra_logits) {
            assert_eq!(x.to_bits(), reference[*id as usize].to_bits(), "extra {id}");
        }

        // The next sparse step replaces the row; a full step, or a failed one, drops it.
        let r = run(&engine, &kept, wire, &[(2, 4, vec![9])], len);
        assert!(matches!(&r.results[0].outcome, Some(seq_result::Outcome::Sparse(_))));
        assert_ne!(row(&kept.fetch(2, len, |r| packed_row(r, WireDtype::F32)), len), reference, "replaced");
        run(&engine, &kept, wire, &[(2, 3, vec![9])], len);
        assert!(kept.is_empty(), "a position mismatch drops the row");
        run(&engine, &kept, wire, &[(2, 5, vec![9])], len);
        assert_eq!(kept.len(), 1);
        run(&engine, &kept, StepWire::Full, &[(2, 6, vec![9])], len);
        assert!(kept.is_empty(), "a full step drops the row");
    }

    #[test]
    fn a_sparse_step_sends_a_row_it_cannot_certify_in_full() {
        // certify_row refuses what fuse() refuses; such a row goes out whole, as on the full
        // wire, so the router reports it the same way.
        let mut cert = OwnedRowCertificate::default();
        let wire = StepWire::Sparse { candidates: 2 };
        for bad in [vec![0.0, f32::NAN, 1.0], vec![0.0, f32::INFINITY, 1.0], vec![f32::NEG_INFINITY; 3]] {
            let got = row_outcome(&bad, wire, WireDtype::Bf16, &mut cert);
            assert_eq!(got, packed_row(&bad, WireDtype::Bf16), "{bad:?}");
            assert_eq!(refined_outcome(&bad, 2, &[0], WireDtype::Bf16), packed_row(&bad, WireDtype::Bf16));
        }
        let good = [0.5, 3.0, -1.0];
        let Some(seq_result::Outcome::Sparse(s)) = Some(row_outcome(&good, wire, WireDtype::F32, &mut cert))
        else {
            panic!("a finite row is certified")
        };
        assert_eq!((s.ids, s.logits, s.max, s.outside_max), (vec![1, 0], vec![3.0, 0.5], 3.0, -1.0));
        assert_eq!(
            row_outcome(&good, StepWire::Full, WireDtype::F32, &mut cert),
            packed_row(&good, WireDtype::F32)
        );
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
