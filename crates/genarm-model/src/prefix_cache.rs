//! The prefix cache's index: full KV blocks keyed by a hash chain over their tokens, verified
//! token for token on every hit, and the LRU order of the cached blocks no sequence references.
//!
//! A block's key chains its parent's key, its own tokens and the model identity (`salt`), so
//! equal keys mean "probably the same prefix". A hit is only taken when the stored block also
//! has the same salt, the same tokens and the *same physical parent* (block id and the
//! generation that block had when the child was registered): by induction from position 0 the
//! whole prefix is then identical, so a hash collision can cost a miss but never a wrong hit.

use std::collections::{BTreeMap, HashMap};

/// Computes a block's key from its parent's key, its tokens and the model identity.
pub type BlockHasher = fn(parent: Option<u64>, tokens: &[u32], salt: u64) -> u64;

/// A physical block as it was when a child was registered under it: its id and generation
/// (bumped each time the block is handed out again), so a reused block id never passes for
/// the parent it replaced.
pub type BlockRef = (u32, u64);

/// The default key: SipHash with fixed keys (deterministic across processes).
pub fn default_block_hash(parent: Option<u64>, tokens: &[u32], salt: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    salt.hash(&mut h);
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// Counters and size of the prefix cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Tokens of steps that looked the cache up (prefills of new sequences and aligned chunks).
    pub lookup_tokens: u64,
    /// Of those, tokens taken from the cache instead of being computed.
    pub hit_tokens: u64,
    /// Cached blocks dropped to make room (LRU) or replaced after a key collision.
    pub evicted_blocks: u64,
    /// Blocks registered in the cache now, referenced by sequences or not.
    pub cached_blocks: u64,
}

#[derive(Debug)]
struct CachedBlock {
    key: u64,
    salt: u64,
    parent: Option<BlockRef>,
    tokens: Box<[u32]>,
    /// Where the block sits in the LRU while no sequence references it.
    lru_tick: Option<u64>,
}

/// The registered blocks and the LRU of the unreferenced ones.
#[derive(Debug)]
pub(crate) struct PrefixIndex {
    hasher: BlockHasher,
    by_key: HashMap<u64, u32>,
    blocks: HashMap<u32, CachedBlock>,
    lru: BTreeMap<u64, u32>,
    tick: u64,
    pub(crate) stats: PrefixCacheStats,
}

impl PrefixIndex {
    pub(crate) fn new(hasher: BlockHasher) -> Self {
        Self {
            hasher,
            by_key: HashMap::new(),
            blocks: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            stats: PrefixCacheStats::default(),
        }
    }

    pub(crate) fn key(&self, parent: Option<u64>, tokens: &[u32], salt: u64) -> u64 {
        (self.hasher)(parent, tokens, salt)
    }

    /// The registered block holding exactly `tokens` under `parent` for `salt`, if any.
    pub(crate) fn find(&self, key: u64, parent: Option<BlockRef>, tokens: &[u32], salt: u64) -> Option<u32> {
        let &id = self.by_key.get(&key)?;
        let b = &self.blocks[&id];
        (b.salt == salt && b.parent == parent && *b.tokens == *tokens).then_some(id)
    }

    pub(crate) fn is_cached(&self, id: u32) -> bool {
        self.blocks.contains_key(&id)
    }

    /// Unreferenced cached blocks: free for admission, evicted on demand.
    pub(crate) fn evictable(&self) -> usize {
        self.lru.len()
    }

    /// A cached block gained its first reference: it leaves the LRU.
    pub(crate) fn pin(&mut self, id: u32) {
        if let Some(tick) = self.blocks.get_mut(&id).and_then(|b| b.lru_tick.take()) {
            self.lru.remove(&tick);
        }
    }

    /// A cached block lost its last reference: it becomes the most recently used evictable one.
    pub(crate) fn unpin(&mut self, id: u32) {
        let tick = self.tick;
        self.tick += 1;
        if let Some(b) = self.blocks.get_mut(&id) {
            debug_assert!(b.lru_tick.is_none());
            b.lru_tick = Some(tick);
            self.lru.insert(tick, id);
        }
    }

    /// Drops the least recently used unreferenced block from the cache and returns it.
    pub(crate) fn evict_lru(&mut self) -> Option<u32> {
        let (_, id) = self.lru.pop_first()?;
        self.forget(id);
        self.stats.evicted_blocks += 1;
        Some(id)
    }

    fn forget(&mut self, id: u32) {
        if let Some(b) = self.blocks.remove(&id) {
            if let Some(tick) = b.lru_tick {
                self.lru.remove(&tick);
            }
            if self.by_key.get(&b.key) == Some(&id) {
                self.by_key.remove(&b.key);
            }
        }
        self.stats.cached_blocks = self.blocks.len() as u64;
    }

    /// Registers a referenced, just-filled block. Returns the block that now stands for this
    /// prefix (`id`, or the block that already held the same prefix, whose children the next
    /// blocks must chain to) and a block the cache gave up to make room (an unreferenced block
    /// under the same key that is not the same prefix), which the caller frees. When a
    /// referenced block holds the key for another prefix (a collision), `id` stays private.
    pub(crate) fn register(
        &mut self,
        id: u32,
        key: u64,
        parent: Option<BlockRef>,
        tokens: &[u32],
        salt: u64,
    ) -> (u32, Option<u32>) {
        let mut freed = None;
        if let Some(&other) = self.by_key.get(&key) {
            let o = &self.blocks[&other];
            if o.salt == salt && o.parent == parent && *o.tokens == *tokens {
                return (other, None);
            }
            if o.lru_tick.is_none() {
                return (id, None);
            }
            self.forget(other);
            self.stats.evicted_blocks += 1;
            freed = Some(other);
        }
        self.by_key.insert(key, id);
        self.blocks.insert(id, CachedBlock { key, salt, parent, tokens: tokens.into(), lru_tick: None });
        self.stats.cached_blocks = self.blocks.len() as u64;
        (id, freed)
    }
}
