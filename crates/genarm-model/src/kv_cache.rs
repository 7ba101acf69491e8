//! Block KV cache bookkeeping: a fixed pool of token blocks and one block table per sequence.
//!
//! The bookkeeping is separate from the storage so that every tensor-parallel rank, each holding
//! the K/V of its own heads, follows one allocation decided by the driver.

use std::collections::HashMap;

use crate::prefix_cache::{default_block_hash, BlockHasher, BlockRef, PrefixCacheStats, PrefixIndex};
use crate::step::StepError;

/// Occupancy of the KV pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvUsage {
    /// Blocks held by sequences (cached blocks no sequence references count as free).
    pub used_blocks: usize,
    /// Blocks in the pool.
    pub total_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Sequences holding blocks.
    pub sequences: usize,
    /// The prefix cache (all zero when it is off).
    pub prefix: PrefixCacheStats,
}

/// Where a sequence's prefix chain stands: its first `hashed` blocks are full and keyed, the
/// last of them under `last_key` and represented in the cache by `canon` (its own block, or
/// the cached block that held the same prefix first, so that sequences that computed the same
/// prefix separately still chain their next blocks to one parent).
#[derive(Debug, Default, Clone, Copy)]
struct Chain {
    hashed: usize,
    last_key: Option<u64>,
    canon: Option<BlockRef>,
}

#[derive(Debug, Default, Clone)]
struct SeqBlocks {
    blocks: Vec<u32>,
    len: usize,
    salt: u64,
    chain: Chain,
    /// Tokens past the keyed blocks (the partial last block), kept to key it once full.
    pending: Vec<u32>,
}

/// Undo record for one admitted append, so a failed forward leaves the cache as it was, and
/// what [`BlockTable::commit`] needs once the forward succeeded.
#[derive(Debug)]
pub struct Admitted {
    seq_id: u64,
    prev_len: usize,
    prev_blocks: usize,
    prev_chain: Chain,
    /// Leading tokens of the step found in the prefix cache (whole blocks).
    reused: usize,
    /// Whether the step looked the cache up (counted once the forward succeeded).
    looked_up: bool,
}

impl Admitted {
    /// Leading tokens of the step taken from the prefix cache: the forward skips them.
    pub fn reused(&self) -> usize {
        self.reused
    }
}

/// The block tables of all sequences, the free list of the pool, and (when on) the prefix
/// cache: full blocks shared by reference count between sequences with the same prefix, kept
/// after their last sequence leaves until the pool needs them.
#[derive(Debug)]
pub struct BlockTable {
    block_size: usize,
    total_blocks: usize,
    /// Blocks holding nothing worth keeping.
    free: Vec<u32>,
    /// Per block: sequences referencing it.
    refs: Vec<u32>,
    /// Per block: bumped each time it is handed out (see [`BlockRef`]).
    generation: Vec<u64>,
    seqs: HashMap<u64, SeqBlocks>,
    prefix: Option<PrefixIndex>,
}

impl BlockTable {
    /// A pool of `total_blocks` blocks of `block_size` tokens each, without a prefix cache.
    pub fn new(total_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        // Pop from the end: hand out low block ids first, which keeps tests readable.
        let free = (0..total_blocks as u32).rev().collect();
        Self {
            block_size,
            total_blocks,
            free,
            refs: vec![0; total_blocks],
            generation: vec![0; total_blocks],
            seqs: HashMap::new(),
            prefix: None,
        }
    }

    /// The same pool with a prefix cache keyed by the default hash.
    pub fn with_prefix_cache(total_blocks: usize, block_size: usize) -> Self {
        Self::with_prefix_hasher(total_blocks, block_size, default_block_hash)
    }

    /// A pool with a prefix cache keyed by `hasher` (tests force collisions with it).
    pub fn with_prefix_hasher(total_blocks: usize, block_size: usize, hasher: BlockHasher) -> Self {
        Self { prefix: Some(PrefixIndex::new(hasher)), ..Self::new(total_blocks, block_size) }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Tokens held for `seq_id`, if known.
    pub fn len(&self, seq_id: u64) -> Option<usize> {
        self.seqs.get(&seq_id).map(|s| s.len)
    }

    /// Reserves room for `tokens` at `start_pos`, first taking whole blocks of them from the
    /// prefix cache (never the last token: the step needs its logits); on error nothing
    /// changes. `salt` is the model identity the cached blocks must have been computed under.
    pub fn admit(
        &mut self,
        seq_id: u64,
        start_pos: usize,
        tokens: &[u32],
        salt: u64,
    ) -> Result<Admitted, StepError> {
        let held = self.seqs.get(&seq_id).map(|s| s.len);
        match held {
            None if start_pos != 0 => return Err(StepError::UnknownSequence { seq_id, start_pos }),
            Some(held) if held != start_pos => {
                return Err(StepError::PositionMismatch { seq_id, start_pos, held })
            }
            _ => {}
        }
        let bs = self.block_size;
        let seq = self.seqs.entry(seq_id).or_insert_with(|| SeqBlocks { salt, ..Default::default() });
        let prev_blocks = seq.blocks.len();
        let prev_chain = seq.chain;
        // The cache is looked up where the sequence's keyed chain ends at a block boundary.
        let mut hits = Vec::new();
        let mut hit_key = seq.chain.last_key;
        let mut looked_up = false;
        if let Some(prefix) = &self.prefix {
            if tokens.len() > 1 && seq.pending.is_empty() && seq.chain.hashed == prev_blocks {
                looked_up = true;
                let mut parent = seq.chain.canon;
                for chunk in tokens[..tokens.len() - 1].chunks_exact(bs) {
                    let k = prefix.key(hit_key, chunk, salt);
                    let Some(id) = prefix.find(k, parent, chunk, salt) else { break };
                    hits.push(id);
                    hit_key = Some(k);
                    parent = Some((id, self.generation[id as usize]));
                }
            }
        }
        let reused = hits.len() * bs;
        let need_total = (start_pos + tokens.len()).div_ceil(bs);
        let needed = need_total - prev_blocks - hits.len();
        let evictable = self.prefix.as_ref().map_or(0, |p| {
            let hit_in_lru = hits.iter().filter(|&&id| self.refs[id as usize] == 0).count();
            p.evictable() - hit_in_lru
        });
        let available = self.free.len() + evictable;
        if needed > available {
            if held.is_none() {
                self.seqs.remove(&seq_id);
            }
            return Err(StepError::KvExhausted { seq_id, needed, free: available });
        }
        let seq = self.seqs.get_mut(&seq_id).expect("inserted above");
        for &id in &hits {
            if self.refs[id as usize] == 0 {
                self.prefix.as_mut().expect("hits come from the cache").pin(id);
            }
            self.refs[id as usize] += 1;
            seq.blocks.push(id);
        }
        if let Some(&last) = hits.last() {
            seq.chain.hashed += hits.len();
            seq.chain.last_key = hit_key;
            seq.chain.canon = Some((last, self.generation[last as usize]));
        }
        for _ in 0..needed {
            let id = match self.free.pop() {
                Some(id) => id,
                None => self.prefix.as_mut().and_then(PrefixIndex::evict_lru).expect("counted above"),
            };
            self.generation[id as usize] += 1;
            self.refs[id as usize] = 1;
            seq.blocks.push(id);
        }
        seq.len = start_pos + tokens.len();
        Ok(Admitted { seq_id, prev_len: start_pos, prev_blocks, prev_chain, reused, looked_up })
    }

    /// Records a successful forward: the admitted tokens past the reused ones are in the cache
    /// now, so the blocks they fill join the prefix cache.
    pub fn commit(&mut self, a: Admitted, tokens: &[u32]) {
        let Some(prefix) = &mut self.prefix else { return };
        if a.looked_up {
            prefix.stats.lookup_tokens += tokens.len() as u64;
        }
        prefix.stats.hit_tokens += a.reused as u64;
        let Some(seq) = self.seqs.get_mut(&a.seq_id) else { return };
        let bs = self.block_size;
        seq.pending.extend_from_slice(&tokens[a.reused..]);
        let mut done = 0;
        while seq.pending.len() - done >= bs {
            let chunk = &seq.pending[done..done + bs];
            let key = prefix.key(seq.chain.last_key, chunk, seq.salt);
            let id = seq.blocks[seq.chain.hashed];
            let (canon, freed) = prefix.register(id, key, seq.chain.canon, chunk, seq.salt);
            if let Some(freed) = freed {
                self.free.push(freed);
            }
            seq.chain.hashed += 1;
            seq.chain.last_key = Some(key);
            seq.chain.canon = Some((canon, self.generation[canon as usize]));
            done += bs;
        }
        seq.pending.drain(..done);
    }

    /// Undoes an [`admit`](Self::admit) whose forward failed.
    pub fn rollback(&mut self, a: Admitted) {
        let Some(seq) = self.seqs.get_mut(&a.seq_id) else { return };
        let dropped: Vec<u32> = seq.blocks.drain(a.prev_blocks..).collect();
        seq.len = a.prev_len;
        seq.chain = a.prev_chain;
        if seq.len == 0 {
            self.seqs.remove(&a.seq_id);
        }
        for id in dropped {
            self.unref(id);
        }
    }

    fn unref(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        *r -= 1;
        if *r > 0 {
            return;
        }
        match &mut self.prefix {
            Some(prefix) if prefix.is_cached(id) => prefix.unpin(id),
            _ => self.free.push(id),
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

    /// Drops the sequence's references to its blocks (shared ones stay with their other
    /// sequences, cached ones stay in the cache); false when it was unknown.
    pub fn release(&mut self, seq_id: u64) -> bool {
        match self.seqs.remove(&seq_id) {
            Some(seq) => {
                for id in seq.blocks {
                    self.unref(id);
                }
                true
            }
            None => false,
        }
    }

    /// Current occupancy.
    pub fn usage(&self) -> KvUsage {
        let evictable = self.prefix.as_ref().map_or(0, PrefixIndex::evictable);
        KvUsage {
            used_blocks: self.total_blocks - self.free.len() - evictable,
            total_blocks: self.total_blocks,
            block_size: self.block_size,
            sequences: self.seqs.len(),
            prefix: self.prefix.as_ref().map(|p| p.stats).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: usize, base: u32) -> Vec<u32> {
        (0..n as u32).map(|i| base + i).collect()
    }

    /// Admits and commits `tokens` (the forward succeeded); returns the reused tokens.
    fn step(t: &mut BlockTable, seq: u64, start: usize, tokens: &[u32]) -> usize {
        let a = t.admit(seq, start, tokens, 7).unwrap();
        let reused = a.reused();
        t.commit(a, tokens);
        reused
    }

    #[test]
    fn admit_grow_release() {
        let mut t = BlockTable::new(4, 4);
        t.admit(1, 0, &toks(5, 0), 0).unwrap();
        assert_eq!(t.usage().used_blocks, 2);
        assert_eq!(t.slots(1, 0, 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(t.blocks(1), vec![0, 1]);
        t.admit(1, 5, &[9], 0).unwrap();
        assert_eq!(t.usage().used_blocks, 2);
        assert!(t.release(1));
        assert_eq!(t.usage().used_blocks, 0);
        assert!(!t.release(1));
    }

    #[test]
    fn exhaustion_changes_nothing() {
        let mut t = BlockTable::new(2, 4);
        t.admit(1, 0, &toks(4, 0), 0).unwrap();
        let e = t.admit(2, 0, &toks(8, 0), 0).unwrap_err();
        assert_eq!(e, StepError::KvExhausted { seq_id: 2, needed: 2, free: 1 });
        assert_eq!(t.len(2), None);
        assert_eq!(t.usage().used_blocks, 1);
    }

    #[test]
    fn position_errors() {
        let mut t = BlockTable::new(2, 4);
        assert!(matches!(t.admit(7, 3, &[1], 0), Err(StepError::UnknownSequence { .. })));
        t.admit(7, 0, &[1, 2], 0).unwrap();
        assert!(matches!(t.admit(7, 1, &[3], 0), Err(StepError::PositionMismatch { held: 2, .. })));
    }

    #[test]
    fn rollback_restores() {
        let mut t = BlockTable::new(4, 2);
        t.admit(1, 0, &[1, 2], 0).unwrap();
        let a = t.admit(1, 2, &[3, 4, 5], 0).unwrap();
        assert_eq!(t.usage().used_blocks, 3);
        t.rollback(a);
        assert_eq!((t.len(1), t.usage().used_blocks), (Some(2), 1));
        let a = t.admit(2, 0, &[1], 0).unwrap();
        t.rollback(a);
        assert_eq!(t.len(2), None);
    }

    #[test]
    fn a_shared_prefix_is_reused_by_whole_blocks_never_the_last_token() {
        let mut t = BlockTable::with_prefix_cache(16, 4);
        let prompt = toks(10, 100);
        assert_eq!(step(&mut t, 1, 0, &prompt), 0);
        // Same 10 tokens: blocks [0,4) and [4,8) are full and cached; [8,10) is computed.
        assert_eq!(step(&mut t, 2, 0, &prompt), 8);
        assert_eq!(t.blocks(2)[..2], t.blocks(1)[..2]);
        assert_ne!(t.blocks(2)[2], t.blocks(1)[2]);
        // Exactly 8 tokens: the last one must be computed, so only the first block is reused.
        assert_eq!(step(&mut t, 3, 0, &prompt[..8]), 4);
        // A prompt that diverges inside the second block reuses the first only.
        let mut other = prompt.clone();
        other[5] = 1;
        assert_eq!(step(&mut t, 4, 0, &other), 4);
        let u = t.usage();
        assert_eq!(u.prefix.hit_tokens, 16);
        assert_eq!(u.prefix.lookup_tokens, 38);
        // Blocks held: seq 1 three, seq 2 one more, seq 3 one, seq 4 two.
        assert_eq!(u.used_blocks, 7);
    }

    #[test]
    fn generated_tokens_and_chunks_extend_the_chain() {
        let mut t = BlockTable::with_prefix_cache(16, 4);
        let conv = toks(13, 1);
        // A 6-token prompt, then decodes one token at a time up to 12 tokens.
        step(&mut t, 1, 0, &conv[..6]);
        for p in 6..12 {
            step(&mut t, 1, p, &conv[p..p + 1]);
        }
        assert!(t.release(1));
        assert_eq!(t.usage().used_blocks, 0, "released blocks are cached, not held");
        assert_eq!(t.usage().prefix.cached_blocks, 3);
        // The next turn's prompt holds the whole conversation: three blocks come from the cache.
        assert_eq!(step(&mut t, 2, 0, &conv), 12);
        // A chunked prefill looks up each aligned chunk.
        assert!(t.release(2));
        assert_eq!(step(&mut t, 3, 0, &conv[..5]), 4);
        assert_eq!(step(&mut t, 3, 5, &conv[5..]), 0, "an unaligned chunk cannot be looked up");
        assert_eq!(step(&mut t, 4, 0, &conv[..4]), 0);
        assert_eq!(step(&mut t, 4, 4, &conv[4..]), 8);
    }

    #[test]
    fn eviction_takes_unreferenced_cached_blocks_lru_first_and_never_a_referenced_one() {
        let mut t = BlockTable::with_prefix_cache(4, 2);
        step(&mut t, 1, 0, &[1, 2, 3]);
        step(&mut t, 2, 0, &[5, 6, 7]);
        t.release(1);
        t.release(2);
        let u = t.usage();
        assert_eq!((u.used_blocks, u.prefix.cached_blocks), (0, 2));
        // Seq 3 holds [1,2] from the cache; seq 4 needs all three blocks not held: the cached
        // [5,6] is evicted, [1,2] (referenced) is not.
        assert_eq!(step(&mut t, 3, 0, &[1, 2, 9]), 2);
        let shared = t.blocks(3)[0];
        step(&mut t, 4, 0, &[8, 8, 8, 8]);
        assert!(!t.blocks(4).contains(&shared));
        let u = t.usage();
        assert_eq!((u.used_blocks, u.prefix.evicted_blocks), (4, 1));
        // The cache never makes a request wait: the pool is full of referenced blocks only.
        assert!(matches!(t.admit(5, 0, &[1], 7), Err(StepError::KvExhausted { free: 0, .. })));
        for s in [3, 4] {
            t.release(s);
        }
        assert_eq!(t.usage().used_blocks, 0);
        assert_eq!(t.free.len() + t.prefix.as_ref().unwrap().evictable(), 4);
    }

    #[test]
    fn cached_blocks_count_as_free_for_admission() {
        let mut t = BlockTable::with_prefix_cache(3, 2);
        step(&mut t, 1, 0, &[1, 2, 3, 4, 5, 6]);
        t.release(1);
        assert_eq!(t.usage().prefix.cached_blocks, 3);
        assert_eq!(step(&mut t, 2, 0, &[9, 9, 9, 9, 9, 9]), 0);
        assert_eq!(t.usage().prefix.evicted_blocks, 3);
    }

    #[test]
    fn another_salt_never_hits() {
        let mut t = BlockTable::with_prefix_cache(8, 2);
        step(&mut t, 1, 0, &[1, 2, 3, 4, 5]);
        let a = t.admit(2, 0, &[1, 2, 3, 4, 5], 8).unwrap();
        assert_eq!(a.reused(), 0);
    }

    #[test]
    fn forced_key_collisions_never_give_a_wrong_hit() {
        // Every block gets the same key: only token-and-parent checks stand between a lookup
        // and a wrong prefix.
        let mut t = BlockTable::with_prefix_hasher(32, 2, |_, _, _| 0);
        step(&mut t, 1, 0, &[1, 2, 3, 4, 9]);
        // Same first block, different second: one block reused, and it is seq 1's first.
        assert_eq!(step(&mut t, 2, 0, &[1, 2, 7, 7, 9]), 2);
        // The second block of seq 1 ([3,4]) must not be found under another first block.
        assert_eq!(step(&mut t, 3, 0, &[5, 6, 3, 4, 9]), 0);
        // A block whose parent was evicted and handed out again is not reachable.
        let mut t = BlockTable::with_prefix_hasher(3, 2, |_, _, _| 0);
        step(&mut t, 1, 0, &[1, 2, 3]);
        t.release(1);
        step(&mut t, 2, 0, &[5, 6, 9, 9, 9]);
        t.release(2);
        assert_eq!(step(&mut t, 3, 0, &[1, 2, 3]), 0);
    }

    #[test]
    fn rollback_returns_hits_to_the_cache() {
        let mut t = BlockTable::with_prefix_cache(8, 2);
        step(&mut t, 1, 0, &[1, 2, 3, 4, 5]);
        t.release(1);
        let a = t.admit(2, 0, &[1, 2, 3, 4, 5], 7).unwrap();
        assert_eq!((a.reused(), t.usage().used_blocks), (4, 3));
        t.rollback(a);
        let u = t.usage();
        assert_eq!((u.used_blocks, u.prefix.cached_blocks, u.prefix.hit_tokens), (0, 2, 0));
        assert_eq!(u.prefix.lookup_tokens, 5, "a rolled-back step's lookup is not counted");
        assert_eq!(step(&mut t, 3, 0, &[1, 2, 3, 4, 5]), 4);
    }
}
