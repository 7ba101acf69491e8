//! Named-tensor sources (HF safetensors, GGUF) behind one trait, with checked and sharded loading.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// A store of named tensors in HF naming and layout (`model.layers.0.self_attn.q_proj.weight`,
/// weights `[out, in]`), whatever the file format underneath.
pub trait TensorSource: Send + Sync {
    /// The file or directory the tensors come from, for error messages.
    fn location(&self) -> &Path;
    /// The shape of tensor `name`, or `None` when it is absent.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Loads tensor `name`, converted to `dtype`, on `device`.
    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor>;
}

/// How one rank takes its part of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The whole tensor on every rank.
    Replicated,
    /// Rank r of n takes the r-th of n equal slices along this dimension.
    Along(usize),
}

/// Loads `name`, checking it exists and has `expected` shape, then takes this rank's slice.
#[allow(clippy::too_many_arguments)]
pub fn load_checked(
    src: &dyn TensorSource,
    name: &str,
    expected: &[usize],
    split: Split,
    rank: usize,
    world: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let actual = src
        .shape(name)
        .ok_or_else(|| ModelError::MissingTensor { name: name.into(), path: src.location().into() })?;
    if actual != expected {
        return Err(ModelError::TensorShape {
            name: name.into(),
            path: src.location().into(),
            expected: expected.to_vec(),
            actual,
        });
    }
    let full = src.load(name, dtype, device)?;
    match split {
        Split::Replicated => Ok(full),
        Split::Along(dim) => {
            let size = expected[dim];
            debug_assert_eq!(size % world, 0, "divisibility is checked when the shard plan is made");
            let part = size / world;
            Ok(full.narrow(dim, rank * part, part)?.contiguous()?)
        }
    }
}
