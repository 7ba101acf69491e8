//! AdamW with decoupled weight decay, a linear-warmup + cosine learning-rate schedule, and
//! gradient clipping by global norm. The state is plain tensors so checkpoints can hold it.

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use crate::error::{Result, TrainError};
use crate::model::Param;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay (multiplies the learning rate).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW (Loshchilov & Hutter), as `torch.optim.AdamW` computes it.
pub struct AdamW {
    cfg: AdamWConfig,
    /// Updates taken so far.
    step: usize,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(params: &[Param], cfg: AdamWConfig) -> Result<Self> {
        let zeros = || -> Result<Vec<Tensor>> {
            params.iter().map(|p| Ok(p.var.as_tensor().zeros_like()?)).collect()
        };
        Ok(Self { cfg, step: 0, m: zeros()?, v: zeros()? })
    }

    /// Updates taken so far.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// One update of every parameter with its gradient (same order as `params`) at rate `lr`.
    pub fn step(&mut self, params: &[Param], grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((&v / bc2)?.sqrt()? + c.eps)?;
            let update = ((&m / bc1)? / denom)?;
            let w = p.var.as_tensor().detach();
            let w = if c.weight_decay != 0.0 { (&w * (1.0 - lr * c.weight_decay))? } else { w };
            p.var.set(&(w - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments by name (`{param}.exp_avg`, `{param}.exp_avg_sq`), for a checkpoint.
    pub fn state(&self, params: &[Param]) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, p) in params.iter().enumerate() {
            out.insert(format!("{}.exp_avg", p.name), self.m[i].clone());
            out.insert(format!("{}.exp_avg_sq", p.name), self.v[i].clone());
        }
        out
    }

    /// Restores the moments saved by [`AdamW::state`] and the update count.
    pub fn load_state(
        &mut self,
        params: &[Param],
        state: &HashMap<String, Tensor>,
        steps: usize,
    ) -> Result<()> {
        for (i, p) in params.iter().enumerate() {
            for (suffix, slot) in [("exp_avg", &mut self.m[i]), ("exp_avg_sq", &mut self.v[i])] {
                let name = format!("{}.{suffix}", p.name);
                let t = state.get(&name).ok_or_else(|| {
                    TrainError::Config(format!(
                        "optimizer state lacks {name}: the checkpoint is from another run"
                    ))
                })?;
                if t.dims() != p.var.dims() {
                    return Err(TrainError::Config(format!(
                        "optimizer state {name} has shape {:?}, the parameter {:?}",
                        t.dims(),
                        p.var.dims()
                    )));
                }
                *slot = t.to_dtype(p.var.dtype())?.to_device(p.var.device())?;
            }
        }
        self.step = steps;
        Ok(())
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm` (no-op when `max_norm <= 0`);
/// returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.iter() {
        sq += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

/// Linear warmup to the peak rate over `warmup` updates, then cosine decay to zero at `total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup updates.
    pub warmup: usize,
    /// Total updates.
    pub total: usize,
}

impl Schedule {
    /// The rate of update `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = Schedule { lr: 1.0, warmup: 4, total: 14 };
        assert_eq!(s.lr_at(0), 0.25);
        assert_eq!(s.lr_at(3), 1.0);
        assert_eq!(s.lr_at(4), 1.0);
        assert!((s.lr_at(9) - 0.5).abs() < 1e-12);
        assert!(s.lr_at(13) < 0.03);
    }

    #[test]
    fn adamw_matches_hand_computation() {
        use candle_core::{Device, Var};
        let var = Var::from_slice(&[1.0f64, -2.0], 2, &Device::Cpu).unwrap();
        let params = vec![Param { name: "w".into(), var: var.clone() }];
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(&params, cfg).unwrap();
        let g = Tensor::from_slice(&[0.5f64, 0.25], 2, &Device::Cpu).unwrap();
        opt.step(&params, std::slice::from_ref(&g), 0.01).unwrap();
        opt.step(&params, &[g], 0.01).unwrap();
        // By hand: constant gradient, so m̂ = g and v̂ = g² after bias correction.
        let expect = |w0: f64, g: f64| {
            let mut w = w0;
            for _ in 0..2 {
                w *= 1.0 - 0.01 * 0.1;
                w -= 0.01 * g / (g.abs() + 1e-8);
            }
            w
        };
        let got = var.as_tensor().to_vec1::<f64>().unwrap();
        assert!((got[0] - expect(1.0, 0.5)).abs() < 1e-12, "{got:?}");
        assert!((got[1] - expect(-2.0, 0.25)).abs() < 1e-12, "{got:?}");
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        use candle_core::Device;
        let mut g = vec![Tensor::from_slice(&[3.0f32, 4.0], 2, &Device::Cpu).unwrap()];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let v = g[0].to_vec1::<f32>().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    }
}
