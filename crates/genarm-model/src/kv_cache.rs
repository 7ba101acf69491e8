//! Block KV cache bookkeeping: a fixed pool of token blocks and one block table per sequence.
//!
//! The bookkeeping is separate from the storage so that every tensor-parallel rank, each holding
//! the K/V of its own heads, follows one allocation decided by the driver.

use std::collections::HashMap;

use crate::step::StepError;

/// Occupancy of the KV pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvUsage {
    /// Blocks held by sequences.
    pub used_blocks: usize,
    /// Blocks in the pool.
    pub total_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Sequences holding blocks.
    pub sequences: usize,
}

#[derive(Debug, Default, Clone)]
struct SeqBlocks {
    blocks: Vec<u32>,
    len: usize,
}

/// Undo record for one admitted append, so a failed forward leaves the cache as it was.
#[derive(Debug)]
pub struct Admitted {
    seq_id: u64,
    prev_len: usize,
    prev_blocks: usize,
}

/// The block tables of all sequences and the free list of the pool.
#[derive(Debug)]
pub struct BlockTable {
    block_size: usize,
    total_blocks: usize,
    free: Vec<u32>,
    seqs: HashMap<u64, SeqBlocks>,
}

impl BlockTable {
    /// A pool of `total_blocks` blocks of `block_size` tokens each.
    pub fn new(total_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        // Pop from the end: hand out low block ids first, which keeps tests readable.
        let free = (0..total_blocks as u32).rev().collect();
        Self { block_size, total_blocks, free, seqs: HashMap::new() }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Tokens held for `seq_id`, if known.
    pub fn len(&self, seq_id: u64) -> Option<usize> {
        self.seqs.get(&seq_id).map(|s| s.len)
    }

    /// Reserves room for `n_new` tokens at `start_pos`; on error nothing changes.
    pub fn admit(&mut self, seq_id: u64, start_pos: usize, n_new: usize) -> Result<Admitted, StepError> {
        let held = self.seqs.get(&seq_id).map(|s| s.len);
        match held {
            None if start_pos != 0 => return Err(StepError::UnknownSequence { seq_id, start_pos }),
            Some(held) if held != start_pos => {
                return Err(StepError::PositionMismatch { seq_id, start_pos, held })
            }
            _ => {}
        }
        let have = self.seqs.get(&seq_id).map_or(0, |s| s.blocks.len());
        let need_total = (start_pos + n_new).div_ceil(self.block_size);
        let needed = need_total.saturating_sub(have);
        if needed > self.free.len() {
            return Err(StepError::KvExhausted { seq_id, needed, free: self.free.len() });
        }
        let seq = self.seqs.entry(seq_id).or_default();
        for _ in 0..needed {
            seq.blocks.push(self.free.pop().expect("checked above"));
        }
        seq.len = start_pos + n_new;
        Ok(Admitted { seq_id, prev_len: start_pos, prev_blocks: have })
    }

    /// Undoes an [`admit`](Self::admit) whose forward failed.
    pub fn rollback(&mut self, a: Admitted) {
        let Some(seq) = self.seqs.get_mut(&a.seq_id) else { return };
        while seq.blocks.len() > a.prev_blocks {
            self.free.push(seq.blocks.pop().expect("len checked"));
        }
        seq.len = a.prev_len;
        if seq.len == 0 {
            self.seqs.remove(&a.seq_id);
        }
    }

    /// Pool slot ids of the sequence's tokens `[from, to)`; slot = block * block_size + offset.
    pub fn slots(&self, seq_id: u64, from: usize, to: usize) -> Vec<u32> {
        let seq = &self.seqs[&seq_id];
        debug_assert!(to <= seq.len);
        let bs = self.block_size;
        (from..to).map(|p| seq.blocks[p / bs] * bs as u32 + (p % bs) as u32).collect()
    }

    /// The sequence's block table: the pool blocks holding its tokens, in position order.
    pub fn blocks(&self, seq_id: u64) -> Vec<u32> {
        self.seqs.get(&seq_id).map(|s| s.blocks.clone()).unwrap_or_default()
    }

    /// Frees the sequence's blocks; false when it was unknown.
    pub fn release(&mut self, seq_id: u64) -> bool {
        match self.seqs.remove(&seq_id) {
            Some(seq) => {
                self.free.extend(seq.blocks);
                true
            }
            None => false,
        }
    }

    /// Current occupancy.
    pub fn usage(&self) -> KvUsage {
        KvUsage {
            used_blocks: self.total_blocks - self.free.len(),
            total_blocks: self.total_blocks,
            block_size: self.block_size,
            sequences: self.seqs.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_grow_release() {
        let mut t = BlockTable::new(4, 4);
        t.admit(1, 0, 5).unwrap();
        assert_eq!(t.usage().used_blocks, 2);
        assert_eq!(t.slots(1, 0, 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(t.blocks(1), vec![0, 1]);
        t.admit(1, 5, 1).unwrap();
        assert_eq!(t.usage().used_blocks, 2);
        assert!(t.release(1));
        assert_eq!(t.usage().used_blocks, 0);
        assert!(!t.release(1));
    }

    #[test]
    fn exhaustion_changes_nothing() {
        let mut t = BlockTable::new(2, 4);
        t.admit(1, 0, 4).unwrap();
        let e = t.admit(2, 0, 8).unwrap_err();
        assert_eq!(e, StepError::KvExhausted { seq_id: 2, needed: 2, free: 1 });
        assert_eq!(t.len(2), None);
        assert_eq!(t.usage().used_blocks, 1);
    }

    #[test]
    fn position_errors() {
        let mut t = BlockTable::new(2, 4);
        assert!(matches!(t.admit(7, 3, 1), Err(StepError::UnknownSequence { .. })));
        t.admit(7, 0, 2).unwrap();
        assert!(matches!(t.admit(7, 1, 1), Err(StepError::PositionMismatch { held: 2, .. })));
    }

    #[test]
    fn rollback_restores() {
        let mut t = BlockTable::new(4, 2);
        t.admit(1, 0, 2).unwrap();
        let a = t.admit(1, 2, 3).unwrap();
        assert_eq!(t.usage().used_blocks, 3);
        t.rollback(a);
        assert_eq!((t.len(1), t.usage().used_blocks), (Some(2), 1));
        let a = t.admit(2, 0, 1).unwrap();
        t.rollback(a);
        assert_eq!(t.len(2), None);
    }
}
