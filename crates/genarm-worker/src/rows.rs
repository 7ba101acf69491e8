//! [`KeptRows`]: the full row of every sequence whose last `Step` used the sparse wire, kept for
//! `FetchRows` (docs/architecture.md §3.4). The router asks for a row only when the certificates
//! could not prove its token, so the row must survive until the sequence's next step.
//!
//! Memory stays bounded at one row per held sequence: a sequence's row is replaced by its next
//! sparse step, and dropped by a full step, a failed step, its `Release` or the orphan sweep. The
//! store has its own lock, so `FetchRows` never waits for a running forward.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use genarm_fusion::packed::{pack, WireDtype};
use genarm_proto::prost::bytes::Bytes;
use genarm_proto::v1::{seq_result, SeqError, SeqErrorCode, SeqResult};

/// Sequence id → its last sparse-step row (f32, the step's `logits_len` values).
#[derive(Debug, Default)]
pub struct KeptRows {
    rows: Mutex<HashMap<u64, Vec<f32>>>,
}

impl KeptRows {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Vec<f32>>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `row` as `seq_id`'s last sparse-step row, replacing the previous one.
    pub fn keep(&self, seq_id: u64, row: Vec<f32>) {
        self.lock().insert(seq_id, row);
    }

    /// Drops the rows of `ids` (a full or failed step, a release, an orphan sweep).
    pub fn forget(&self, ids: impl IntoIterator<Item = u64>) {
        let mut rows = self.lock();
        for id in ids {
            rows.remove(&id);
        }
    }

    /// How many rows are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no row is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One `FetchRows` result for `seq_id`: `answer` applied to its kept row's first `logits_len`
    /// values (packing it, or certifying it again), or why there is none.
    pub fn fetch(
        &self,
        seq_id: u64,
        logits_len: usize,
        answer: impl FnOnce(&[f32]) -> seq_result::Outcome,
    ) -> SeqResult {
        // Copied out under the lock and answered after, so a concurrent step's store is not held
        // up by the packing of a 128k-value row.
        let row: Option<Result<Vec<f32>, usize>> = self.lock().get(&seq_id).map(|row| {
            if row.len() >= logits_len {
                Ok(row[..logits_len].to_vec())
            } else {
                Err(row.len())
            }
        });
        let outcome = match row {
            Some(Ok(row)) => answer(&row),
            Some(Err(kept)) => wrong_length(seq_id, kept, logits_len),
            None => no_kept_row(seq_id),
        };
        SeqResult { seq_id, outcome: Some(outcome), cached_tokens: 0 }
    }
}

/// A `FetchRows` answer for a sequence whose kept row has `kept` logits, asked for `asked`.
pub fn wrong_length(seq_id: u64, kept: usize, asked: usize) -> seq_result::Outcome {
    seq_result::Outcome::Error(SeqError {
        code: SeqErrorCode::Invalid as i32,
        message: format!(
            "sequence {seq_id}: its kept row has {kept} logits (its step's logits_len), \
             FetchRows asks for {asked}; fetch with the step's logits_len"
        ),
    })
}

/// A `FetchRows` answer for a sequence with no kept row.
pub fn no_kept_row(seq_id: u64) -> seq_result::Outcome {
    seq_result::Outcome::Error(SeqError {
        code: SeqErrorCode::UnknownSequence as i32,
        message: format!(
            "no kept row for sequence {seq_id}: its last step was not a sparse step, or it was released"
        ),
    })
}

/// The kept `row` packed as `dtype`: a `FetchRows` answer for whole rows.
pub fn packed_row(row: &[f32], dtype: WireDtype) -> seq_result::Outcome {
    let mut bytes = Vec::new();
    pack(row, dtype, &mut bytes);
    seq_result::Outcome::Logits(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use genarm_fusion::packed::unpack;

    fn code(r: &SeqResult) -> (SeqErrorCode, String) {
        match &r.outcome {
            Some(seq_result::Outcome::Error(e)) => (e.code(), e.message.clone()),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn keeps_replaces_and_forgets_rows_and_serves_them_packed() {
        let rows = KeptRows::default();
        rows.keep(1, vec![1.0, 2.0, 3.0]);
        rows.keep(1, vec![4.0, 5.0, 6.0]);
        rows.keep(2, vec![7.0, 8.0, 9.0]);
        assert_eq!(rows.len(), 2, "one row per sequence");
        let fetch = |id, dtype, len| rows.fetch(id, len, |r| packed_row(r, dtype));
        let r = fetch(1, WireDtype::F32, 2);
        let Some(seq_result::Outcome::Logits(b)) = &r.outcome else { panic!("{r:?}") };
        let mut out = vec![0.0; 2];
        unpack(b, WireDtype::F32, 2, &mut out).unwrap();
        assert_eq!((r.seq_id, out), (1, vec![4.0, 5.0]), "the latest row, cut to logits_len");
        let Some(seq_result::Outcome::Logits(b)) = &fetch(2, WireDtype::Bf16, 3).outcome else { panic!() };
        assert_eq!(b.len(), 6);

        let (c, m) = code(&fetch(1, WireDtype::F32, 4));
        assert_eq!(c, SeqErrorCode::Invalid);
        assert!(m.contains("3 logits") && m.contains("asks for 4"), "{m}");
        rows.forget([1, 99]);
        let (c, m) = code(&fetch(1, WireDtype::F32, 3));
        assert_eq!(c, SeqErrorCode::UnknownSequence);
        assert!(m.contains("no kept row for sequence 1"), "{m}");
        assert_eq!(rows.len(), 1);
        rows.forget([2]);
        assert!(rows.is_empty());
    }
}
