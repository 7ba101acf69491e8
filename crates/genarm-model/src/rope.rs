//! Rotary position embeddings (half-split, as HF Llama), with Llama 3 frequency scaling.

use candle_core::{DType, Device, Tensor};

use crate::config::{Llama3RopeScaling, LlamaConfig};
use crate::error::Result;

/// Inverse frequencies of one head's rotary pairs.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// The frequencies for `cfg`, computed in f32 as transformers does.
    pub fn new(cfg: &LlamaConfig) -> Self {
        let dim = cfg.head_dim;
        let mut inv_freq: Vec<f32> =
            (0..dim).step_by(2).map(|i| 1.0 / cfg.rope_theta.powf(i as f32 / dim as f32)).collect();
        if let Some(s) = cfg.rope_scaling {
            llama3_scale(&mut inv_freq, s);
        }
        Self { inv_freq }
    }

    /// `(cos, sin)` of shape `[positions.len(), head_dim / 2]` for the given absolute positions.
    pub fn cos_sin(&self, positions: &[u32], dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = (positions.len(), half);
        let cos = Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

fn llama3_scale(inv_freq: &mut [f32], s: Llama3RopeScaling) {
    let old = s.original_max_position_embeddings as f32;
    let low_wavelen = old / s.low_freq_factor;
    let high_wavelen = old / s.high_freq_factor;
    for f in inv_freq.iter_mut() {
        let wavelen = 2.0 * std::f32::consts::PI / *f;
        if wavelen > low_wavelen {
            *f /= s.factor;
        } else if wavelen >= high_wavelen {
            let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
            *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let mut f = vec![1.0, 1e-6];
        llama3_scale(
            &mut f,
            Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
        );
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 1e-6 / 8.0).abs() < 1e-12);
    }
}
