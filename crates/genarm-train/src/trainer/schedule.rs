//! The data schedule of a run: which training pairs each micro-batch of each optimizer update
//! takes, epoch by epoch in a seeded order (the learning-rate schedule is [`crate::optim::Schedule`]).

use crate::rng::{derive_seed, SplitMix64};

use super::TrainConfig;

/// Which training pairs each micro-batch and each update takes.
pub(super) struct Plan {
    n: usize,
    batch: usize,
    accum: usize,
    per_epoch: usize,
    /// Micro-batches in the run when it is sized by epochs.
    total_micro: Option<usize>,
    /// Optimizer updates in the run.
    pub(super) total_steps: usize,
    seed: u64,
}

impl Plan {
    /// The plan of `cfg` over `n` training pairs.
    pub(super) fn new(cfg: &TrainConfig, n: usize) -> Self {
        let per_epoch = n.div_ceil(cfg.batch_size);
        let (total_micro, total_steps) = match cfg.max_steps {
            Some(s) => (None, s),
            None => {
                let m = cfg.epochs * per_epoch;
                (Some(m), m.div_ceil(cfg.grad_accum))
            }
        };
        Self {
            n,
            batch: cfg.batch_size,
            accum: cfg.grad_accum,
            per_epoch,
            total_micro,
            total_steps,
            seed: cfg.seed,
        }
    }

    /// The shuffled order of epoch `e`.
    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.n).collect();
        SplitMix64::new(derive_seed(self.seed, 1_000_000 + epoch as u64)).shuffle(&mut o);
        o
    }

    /// The micro-batches (pair indices) of update `step`.
    pub(super) fn step_batches(&self, step: usize) -> Vec<Vec<usize>> {
        let start = step * self.accum;
        let end = match self.total_micro {
            Some(t) => (start + self.accum).min(t),
            None => start + self.accum,
        };
        let mut cache: Option<(usize, Vec<usize>)> = None;
        (start..end)
            .map(|k| {
                let (e, j) = (k / self.per_epoch, k % self.per_epoch);
                if cache.as_ref().map(|c| c.0) != Some(e) {
                    cache = Some((e, self.order(e)));
                }
                let order = &cache.as_ref().expect("just set").1;
                order[j * self.batch..((j + 1) * self.batch).min(self.n)].to_vec()
            })
            .collect()
    }

    /// The (fractional) epoch reached after update `step`.
    pub(super) fn epoch_of(&self, step: usize) -> f64 {
        ((step + 1) * self.accum) as f64 / self.per_epoch as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(
        n: usize,
        batch: usize,
        accum: usize,
        epochs: usize,
        max_steps: Option<usize>,
        seed: u64,
    ) -> Plan {
        let mut cfg = TrainConfig::new("model", "data.jsonl", "out");
        (cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.max_steps, cfg.seed) =
            (batch, accum, epochs, max_steps, seed);
        Plan::new(&cfg, n)
    }

    #[test]
    fn updates_walk_each_epochs_pinned_order_in_micro_batches() {
        // The orders of seed 0's first two epochs over 10 pairs: a resumed run recomputes them,
        // so they must never change.
        let p = plan(10, 3, 2, 2, None, 0);
        assert_eq!(p.total_steps, 4);
        let steps: Vec<Vec<Vec<usize>>> = (0..p.total_steps).map(|s| p.step_batches(s)).collect();
        assert_eq!(
            steps,
            [
                vec![vec![3, 9, 7], vec![8, 5, 1]],
                vec![vec![2, 4, 6], vec![0]],
                vec![vec![5, 1, 2], vec![8, 3, 0]],
                vec![vec![9, 4, 6], vec![7]],
            ]
        );
        assert_eq!(p.epoch_of(1), 1.0);
        assert_eq!(p.epoch_of(3), 2.0);
        let seed42 = plan(10, 10, 1, 2, None, 42);
        assert_eq!(seed42.step_batches(0), [vec![3, 5, 0, 2, 6, 8, 1, 7, 9, 4]]);
        assert_eq!(seed42.step_batches(1), [vec![1, 2, 5, 8, 6, 3, 7, 9, 0, 4]]);
    }

    #[test]
    fn the_last_update_of_an_epoch_sized_run_takes_only_the_micro_batches_left() {
        let p = plan(10, 3, 3, 1, None, 0);
        assert_eq!(p.total_steps, 2);
        assert_eq!(p.step_batches(0).len(), 3);
        assert_eq!(p.step_batches(1), [vec![0]]);
    }

    #[test]
    fn max_steps_runs_past_the_epochs() {
        let p = plan(10, 10, 1, 1, Some(3), 0);
        assert_eq!(p.total_steps, 3);
        for step in 0..3 {
            let mut seen = p.step_batches(step).concat();
            seen.sort();
            assert_eq!(seen, (0..10).collect::<Vec<_>>(), "update {step} is one whole epoch");
        }
        assert_ne!(p.step_batches(0), p.step_batches(1), "each epoch has its own order");
    }
}
