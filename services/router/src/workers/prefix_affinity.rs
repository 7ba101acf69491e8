//! Cache-aware placement: per replica, the prompt blocks the router has sent it lately, so a new
//! sequence goes to the replica most likely to hold its prefix in its prefix cache.
//!
//! The router never sees a worker's cache: this is a guess that only steers placement. A wrong
//! guess costs that model's prefill and nothing else, since the worker checks every hit itself.

use std::collections::{BTreeMap, HashMap};

/// Blocks of prompts recently placed on one replica, keyed by a hash chain over their tokens
/// (the router's own keys, unrelated to the worker's), bounded LRU.
#[derive(Debug)]
pub(crate) struct PrefixMemory {
    block: usize,
    capacity: usize,
    ticks: HashMap<u64, u64>,
    order: BTreeMap<u64, u64>,
    tick: u64,
}

impl PrefixMemory {
    /// A memory of at most `capacity` blocks of `block` tokens (the worker's KV block size and
    /// pool, which bound what its cache can hold).
    pub(crate) fn new(block: usize, capacity: usize) -> Self {
        Self {
            block: block.max(1),
            capacity: capacity.max(1),
            ticks: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }

    /// The chain keys of the blocks a worker could reuse for `tokens` (whole blocks, never the
    /// last token, as the worker's lookup).
    fn keys<'a>(&self, tokens: &'a [u32]) -> impl Iterator<Item = u64> + 'a {
        let usable = tokens.len().saturating_sub(1);
        let mut parent = 0u64;
        let block = self.block;
        tokens[..usable].chunks_exact(block).map(move |chunk| {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            parent.hash(&mut h);
            chunk.hash(&mut h);
            parent = h.finish();
            parent
        })
    }

    /// How many leading blocks of `tokens` this replica was sent lately.
    pub(crate) fn matched_blocks(&self, tokens: &[u32]) -> usize {
        self.keys(tokens).take_while(|k| self.ticks.contains_key(k)).count()
    }

    /// Notes that `tokens` were sent to this replica as a new sequence's first step.
    pub(crate) fn record(&mut self, tokens: &[u32]) {
        let keys: Vec<u64> = self.keys(tokens).collect();
        for k in keys {
            let tick = self.tick;
            self.tick += 1;
            if let Some(old) = self.ticks.insert(k, tick) {
                self.order.remove(&old);
            }
            self.order.insert(tick, k);
        }
        while self.ticks.len() > self.capacity {
            let Some((_, k)) = self.order.pop_first() else { break };
            self.ticks.remove(&k);
        }
    }
}

/// Whether a replica holding `matched_load` sequences may take a sequence by prefix when the
/// least-loaded one holds `least_load`: affinity must not pile a popular system prompt onto one
/// replica while others idle.
pub(crate) fn affinity_allowed(matched_load: usize, least_load: usize) -> bool {
    matched_load <= 2 * least_load + 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_whole_recorded_blocks_from_the_start_only() {
        let mut m = PrefixMemory::new(4, 100);
        let prompt: Vec<u32> = (0..11).collect();
        assert_eq!(m.matched_blocks(&prompt), 0);
        m.record(&prompt);
        assert_eq!(m.matched_blocks(&prompt), 2);
        let longer: Vec<u32> = (0..30).collect();
        assert_eq!(m.matched_blocks(&longer), 2);
        let mut other = prompt.clone();
        other[0] = 99;
        assert_eq!(m.matched_blocks(&other), 0, "a different first block shares nothing");
        other = prompt.clone();
        other[5] = 99;
        assert_eq!(m.matched_blocks(&other), 1);
    }

    #[test]
    fn forgets_least_recent_blocks_past_capacity() {
        let mut m = PrefixMemory::new(2, 3);
        m.record(&[1, 2, 3, 4, 5]);
        m.record(&[7, 8, 9]);
        assert_eq!(m.matched_blocks(&[7, 8, 0]), 1);
        assert_eq!(m.matched_blocks(&[1, 2, 3, 4, 0]), 2);
        m.record(&[5, 5, 6, 6, 0]);
        assert_eq!(m.matched_blocks(&[1, 2, 0]), 0);
    }

    #[test]
    fn affinity_yields_to_a_much_less_loaded_replica() {
        assert!(affinity_allowed(4, 0));
        assert!(!affinity_allowed(5, 0));
        assert!(affinity_allowed(24, 10));
        assert!(!affinity_allowed(25, 10));
    }
}
