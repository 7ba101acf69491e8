//! Building blocks of the decoder on one tensor-parallel rank: linear layers and RMSNorm.

use candle_core::{DType, Device, Module, Tensor};

use crate::error::Result;
use crate::tensors::{LinearTensors, TensorSpec};
use crate::weights::{load_checked, Split, TensorSource};

/// Where a rank's slice of the model comes from, and in what dtype and device it lives.
pub struct ShardLoader<'a> {
    /// The full model's tensors.
    pub src: &'a dyn TensorSource,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Compute dtype.
    pub dtype: DType,
    /// This rank's device.
    pub device: &'a Device,
    /// Called after every tensor is loaded (progress bar).
    pub on_tensor: &'a dyn Fn(),
}

impl ShardLoader<'_> {
    /// Loads `name` with the full shape `expected`, keeping this rank's part.
    pub fn load(&self, name: &str, expected: &[usize], split: Split) -> Result<Tensor> {
        let t =
            load_checked(self.src, name, expected, split, self.rank, self.world, self.dtype, self.device)?;
        (self.on_tensor)();
        Ok(t)
    }
}

/// How a linear layer is split over ranks (Megatron style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallel {
    /// Output features split: each rank computes a slice of the outputs.
    Column,
    /// Input features split: each rank computes a partial sum, reduced by the caller.
    Row,
}

/// `y = x Wᵀ + b` on `[tokens, in]` inputs. A row-parallel layer's bias is added by the caller
/// after the all-reduce, so it is kept separately.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads this rank's part of the weight (and bias, when `tensors` has one).
    pub fn load(l: &ShardLoader, tensors: &LinearTensors, par: Parallel) -> Result<Self> {
        let wsplit = match par {
            Parallel::Column => Split::Along(0),
            Parallel::Row => Split::Along(1),
        };
        let weight = l.load(&tensors.weight.name, &tensors.weight.shape, wsplit)?;
        let bias = match &tensors.bias {
            Some(b) => {
                let bsplit = match par {
                    Parallel::Column => Split::Along(0),
                    Parallel::Row => Split::Replicated,
                };
                Some(l.load(&b.name, &b.shape, bsplit)?)
            }
            None => None,
        };
        Ok(Self { weight, bias })
    }

    /// `x Wᵀ`, without the bias.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        matmul_weight_t(x, &self.weight)
    }

    /// Adds the bias, if any.
    pub fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `x Wᵀ + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.add_bias(self.matmul(x)?)
    }
}

/// Rows of `x` up to which `(W xᵀ)ᵀ` beats `x Wᵀ` on the CPU gemm: with few rows the weight
/// read dominates, and streaming `W` row-major avoids packing it (2.3× on a 49k-row LM head at
/// 8 rows, equal at 1 row, slightly better up to 32; see docs/benchmarks.md).
const FEW_ROWS: usize = 32;

/// `x Wᵀ` for `x: [m, in]`, `w: [out, in]`, choosing the faster operand order for `m`.
pub fn matmul_weight_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.dim(0)? <= FEW_ROWS {
        Ok(w.matmul(&x.t()?)?.t()?.contiguous()?)
    } else {
        Ok(x.matmul(&w.t()?)?)
    }
}

/// Root-mean-square layer norm.
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Loads the weight `tensor` (`[dim]`), replicated on every rank.
    pub fn load(l: &ShardLoader, tensor: &TensorSpec, eps: f64) -> Result<Self> {
        Ok(Self { weight: l.load(&tensor.name, &tensor.shape, Split::Replicated)?, eps: eps as f32 })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}
