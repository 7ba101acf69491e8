//! The attention plan of one step: every sequence's place in the batch, its block table and
//! where its new K/V rows go, in one flat buffer built once per step and shared by every rank
//! and every layer.

use crate::model::Batch;

/// Words per sequence record: offset, len, past, table start, table length.
const SEQ_WORDS: usize = 5;

/// One sequence as the attention kernels see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanSeq {
    /// Row of its first new token in the batch.
    pub offset: usize,
    /// New tokens.
    pub len: usize,
    /// Tokens cached before this step.
    pub past: usize,
}

/// Slots, block tables and lengths of a step. One `u32` buffer so that a device backend
/// uploads it with one copy: `[seq records | block tables | write slots]`.
#[derive(Debug, Clone)]
pub struct StepPlan {
    /// Tokens per KV block; 0 for a forward without cache (K/V are the batch's own rows).
    block_size: usize,
    n_seqs: usize,
    n_tokens: usize,
    tables_at: usize,
    writes_at: usize,
    data: Vec<u32>,
}

impl StepPlan {
    /// The plan of `batch`, whose sequences all carry block tables or none does.
    pub fn new(batch: &Batch) -> Self {
        let n_seqs = batch.seqs.len();
        let n_tokens = batch.tokens.len();
        let cached = batch.seqs.iter().all(|s| s.blocks.is_some()) && batch.block_size > 0;
        let block_size = if cached { batch.block_size } else { 0 };
        let table_words: usize = batch.seqs.iter().map(|s| s.blocks.as_ref().map_or(0, Vec::len)).sum();
        let tables_at = n_seqs * SEQ_WORDS;
        let writes_at = tables_at + if cached { table_words } else { 0 };
        let mut data = Vec::with_capacity(writes_at + if cached { n_tokens } else { 0 });
        let mut table_start = 0;
        for s in &batch.seqs {
            let table_len = if cached { s.blocks.as_ref().map_or(0, Vec::len) } else { 0 };
            data.extend([s.offset, s.len, s.past, table_start, table_len].map(|w| w as u32));
            table_start += table_len;
        }
        if cached {
            for s in &batch.seqs {
                data.extend_from_slice(s.blocks.as_deref().unwrap_or_default());
            }
            for s in &batch.seqs {
                let table = s.blocks.as_deref().unwrap_or_default();
                data.extend((s.past..s.past + s.len).map(|p| slot(table, block_size, p)));
            }
        }
        Self { block_size, n_seqs, n_tokens, tables_at, writes_at, data }
    }

    /// Whether K/V live in the block pool (else they are the batch's own rows).
    pub fn cached(&self) -> bool {
        self.block_size > 0
    }

    /// Tokens per KV block (0 without cache).
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Sequences in the step.
    pub fn len(&self) -> usize {
        self.n_seqs
    }

    /// Whether the step has no sequence.
    pub fn is_empty(&self) -> bool {
        self.n_seqs == 0
    }

    /// New tokens in the step.
    pub fn tokens(&self) -> usize {
        self.n_tokens
    }

    /// Sequence `i`.
    pub fn seq(&self, i: usize) -> PlanSeq {
        let r = &self.data[i * SEQ_WORDS..(i + 1) * SEQ_WORDS];
        PlanSeq { offset: r[0] as usize, len: r[1] as usize, past: r[2] as usize }
    }

    /// Block ids of sequence `i`'s whole context (empty without cache).
    pub fn table(&self, i: usize) -> &[u32] {
        let r = &self.data[i * SEQ_WORDS..(i + 1) * SEQ_WORDS];
        let start = self.tables_at + r[3] as usize;
        &self.data[start..start + r[4] as usize]
    }

    /// Pool slot of every new token, in batch order (empty without cache).
    pub fn write_slots(&self) -> &[u32] {
        &self.data[self.writes_at..]
    }

    /// Pool slots of sequence `i`'s tokens `[0, past + len)` (the gather path's index).
    pub fn context_slots(&self, i: usize) -> Vec<u32> {
        let s = self.seq(i);
        let table = self.table(i);
        (0..s.past + s.len).map(|p| slot(table, self.block_size, p)).collect()
    }

    /// The whole buffer, for a device upload.
    pub fn words(&self) -> &[u32] {
        &self.data
    }
}

/// Pool slot of position `p` through `table`: block * block_size + offset. A position past the
/// table maps to `u32::MAX`, which every consumer rejects as out of range.
fn slot(table: &[u32], block_size: usize, p: usize) -> u32 {
    table.get(p / block_size).map_or(u32::MAX, |b| b * block_size as u32 + (p % block_size) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SeqSpan;

    fn span(offset: usize, len: usize, past: usize, blocks: Option<Vec<u32>>) -> SeqSpan {
        SeqSpan { offset, len, past, blocks }
    }

    #[test]
    fn records_tables_and_write_slots_round_trip() {
        let batch = Batch {
            tokens: vec![0; 4],
            positions: vec![5, 0, 1, 2],
            seqs: vec![span(0, 1, 5, Some(vec![7, 2])), span(1, 3, 0, Some(vec![4]))],
            all_logits: false,
            block_size: 4,
        };
        let plan = StepPlan::new(&batch);
        assert!(plan.cached());
        assert_eq!(plan.seq(1), PlanSeq { offset: 1, len: 3, past: 0 });
        assert_eq!(plan.table(0), &[7, 2]);
        assert_eq!(plan.table(1), &[4]);
        // Seq 0's position 5 is block 2's offset 1; seq 1 fills block 4 from its start.
        assert_eq!(plan.write_slots(), &[9, 16, 17, 18]);
        assert_eq!(plan.context_slots(0), vec![28, 29, 30, 31, 8, 9]);
    }

    #[test]
    fn a_forward_without_cache_has_no_tables() {
        let batch = Batch {
            tokens: vec![0; 3],
            positions: vec![0, 1, 2],
            seqs: vec![span(0, 3, 0, None)],
            all_logits: true,
            block_size: 16,
        };
        let plan = StepPlan::new(&batch);
        assert!(!plan.cached());
        assert!(plan.table(0).is_empty() && plan.write_slots().is_empty());
        assert_eq!(plan.tokens(), 3);
    }
}
