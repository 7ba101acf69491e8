//! [`StepCounters`]: lock-free counters of the steps a worker served and of the orphaned
//! sequences it released (for `Stats`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of served work, updated on every `Step`.
#[derive(Debug, Default)]
pub struct StepCounters {
    steps: AtomicU64,
    sequence_steps: AtomicU64,
    tokens: AtomicU64,
    orphans_released: AtomicU64,
}

/// A consistent-enough copy of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CountersSnapshot {
    /// `Step` calls received (including refused ones).
    pub steps: u64,
    /// Sequences advanced (a step of 8 sequences that all advanced counts 8).
    pub sequence_steps: u64,
    /// Tokens processed by advanced sequences (prefill and decode).
    pub tokens: u64,
    /// Sequences released because no step reached them for `--orphan-timeout-secs`.
    pub orphans_released: u64,
}

impl StepCounters {
    /// Counts one received `Step` call.
    pub fn record_call(&self) {
        self.steps.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `sequences` advanced sequences carrying `tokens` tokens in all.
    pub fn record_advanced(&self, sequences: u64, tokens: u64) {
        self.sequence_steps.fetch_add(sequences, Ordering::Relaxed);
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Counts `n` orphaned sequences released by the sweep.
    pub fn record_orphans(&self, n: u64) {
        self.orphans_released.fetch_add(n, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            steps: self.steps.load(Ordering::Relaxed),
            sequence_steps: self.sequence_steps.load(Ordering::Relaxed),
            tokens: self.tokens.load(Ordering::Relaxed),
            orphans_released: self.orphans_released.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let c = StepCounters::default();
        c.record_call();
        c.record_call();
        c.record_advanced(3, 40);
        c.record_orphans(2);
        assert_eq!(
            c.snapshot(),
            CountersSnapshot { steps: 2, sequence_steps: 3, tokens: 40, orphans_released: 2 }
        );
    }
}
