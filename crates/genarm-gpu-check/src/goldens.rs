//! The committed transformers goldens (crates/genarm-model/tests/goldens/, copied into the bundle's
//! data/goldens/) and the comparison of an engine's logits against them.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};
use genarm_model::{Engine, EngineOptions, ModelAssets, StepSeq};

use crate::report::{LogitsCheck, Status};

pub use genarm_model::golden::Golden;

/// Reads `dir/<name>.json` and the logits file it names ([`genarm_model::golden::load`]).
pub fn load(dir: &Path, name: &str) -> Result<Golden> {
    Ok(genarm_model::golden::load(dir, name)?)
}

/// Running error statistics of ours against a golden.
#[derive(Debug, Default, Clone, Copy)]
pub struct Deltas {
    sum_d2: f64,
    sum_g2: f64,
    max_abs: f64,
    max_golden: f64,
    /// Logits compared.
    pub values: usize,
}

impl Deltas {
    /// Adds `ours` against `golden` (same length); an error on NaN or a length mismatch.
    pub fn add(&mut self, ours: &[f32], golden: &[f32]) -> Result<()> {
        ensure!(ours.len() == golden.len(), "{} logits, expected {}", ours.len(), golden.len());
        for (i, (&x, &g)) in ours.iter().zip(golden).enumerate() {
            if !x.is_finite() {
                bail!("logit {i} is {x} (golden {g})");
            }
            let d = (x as f64 - g as f64).abs();
            self.sum_d2 += d * d;
            self.sum_g2 += (g as f64) * (g as f64);
            self.max_abs = self.max_abs.max(d);
            self.max_golden = self.max_golden.max((g as f64).abs());
        }
        self.values += ours.len();
        Ok(())
    }

    /// ‖Δ‖₂ / ‖golden‖₂.
    pub fn rel_l2(&self) -> f64 {
        if self.sum_g2 == 0.0 {
            self.sum_d2.sqrt()
        } else {
            (self.sum_d2 / self.sum_g2).sqrt()
        }
    }

    /// max |Δ| / max |golden|.
    pub fn rel_max(&self) -> f64 {
        if self.max_golden == 0.0 {
            self.max_abs
        } else {
            self.max_abs / self.max_golden
        }
    }

    /// max |Δ|.
    pub fn max_abs(&self) -> f64 {
        self.max_abs
    }
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// Loads `assets` with `options` and compares its logits with `golden`: the full forward at every
/// position of every prompt, and the cached path (the prompt in two chunks through the KV cache)
/// at each chunk's last position. Passes when the relative L2 error is at most `tolerance`.
pub fn check(
    label: &str,
    golden: &Golden,
    assets: &ModelAssets,
    options: EngineOptions,
    tolerance: f64,
) -> LogitsCheck {
    let started = Instant::now();
    let dtype = options.dtype.as_str().to_string();
    let mut out = LogitsCheck {
        model: label.to_string(),
        dtype,
        status: Status::Fail,
        tolerance: Some(tolerance),
        rel_l2: None,
        rel_max: None,
        max_abs: None,
        argmax_agree: None,
        prompts: golden.prompts.len(),
        values: 0,
        seconds: 0.0,
        note: None,
    };
    match compare(golden, assets, options) {
        Ok((d, agree)) => {
            out.rel_l2 = Some(d.rel_l2());
            out.rel_max = Some(d.rel_max());
            out.max_abs = Some(d.max_abs());
            out.argmax_agree = Some(agree);
            out.values = d.values;
            if d.rel_l2() <= tolerance {
                out.status = Status::Pass;
            } else {
                out.note = Some(format!("relative L2 error {:.2e} > {tolerance:.0e}", d.rel_l2()));
            }
        }
        Err(e) => out.note = Some(format!("{e:#}")),
    }
    out.seconds = started.elapsed().as_secs_f64();
    out
}

fn compare(golden: &Golden, assets: &ModelAssets, options: EngineOptions) -> Result<(Deltas, usize)> {
    let name = &golden.name;
    ensure!(
        assets.config.vocab_size == golden.vocab_size,
        "{name}: model vocab {} but golden vocab {}",
        assets.config.vocab_size,
        golden.vocab_size
    );
    let engine = Engine::load(assets, options).map_err(|e| anyhow!("Engine::load: {e}"))?;
    let vocab = golden.vocab_size;
    let mut deltas = Deltas::default();
    let mut agree = 0;
    for (i, (prompt, want)) in golden.prompts.iter().zip(&golden.logits).enumerate() {
        let ids = &prompt.ids;
        let len = ids.len();
        let got = engine.forward_full(ids).map_err(|e| anyhow!("prompt {i}: forward_full: {e}"))?;
        ensure!(
            got.dims() == [len, vocab],
            "prompt {i}: forward_full gave {:?}, expected [{len}, {vocab}]",
            got.dims()
        );
        let got: Vec<f32> = got.flatten_all()?.to_vec1()?;
        deltas.add(&got, want).with_context(|| format!("prompt {i}: full forward"))?;
        let last = (len - 1) * vocab..len * vocab;
        if argmax(&got[last.clone()]) == argmax(&want[last]) {
            agree += 1;
        }

        let seq_id = 1000 + i as u64;
        let split = len.div_ceil(2);
        let mut chunks = vec![(0, split)];
        if split < len {
            chunks.push((split, len));
        }
        for (start, end) in chunks {
            let out = engine
                .step(vec![StepSeq { seq_id, start_pos: start, tokens: ids[start..end].to_vec() }])
                .map_err(|e| anyhow!("prompt {i}: step: {e}"))?;
            let row = out
                .results
                .into_iter()
                .next()
                .context("step returned no result")?
                .map_err(|e| anyhow!("prompt {i}: step [{start}..{end}): {e}"))?;
            deltas
                .add(&row, &want[(end - 1) * vocab..end * vocab])
                .with_context(|| format!("prompt {i}: cached step [{start}..{end})"))?;
        }
        ensure!(engine.release(seq_id), "release({seq_id}) found no sequence");
    }
    Ok((deltas, agree))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_measure_relative_errors_and_reject_nan() {
        let mut d = Deltas::default();
        d.add(&[1.0, 2.0, 2.0], &[1.0, 2.0, 4.0]).unwrap();
        assert_eq!(d.values, 3);
        assert!((d.max_abs() - 2.0).abs() < 1e-12);
        assert!((d.rel_max() - 0.5).abs() < 1e-12);
        assert!((d.rel_l2() - (4.0f64 / 21.0).sqrt()).abs() < 1e-12);
        assert!(d.add(&[f32::NAN], &[0.0]).is_err());
        assert!(d.add(&[1.0], &[1.0, 2.0]).is_err());
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
    }
}
