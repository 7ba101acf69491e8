//! Which attention implementation the engine runs: the paged kernel, or the gather path it
//! replaced (kept as the test oracle and the benchmarks' baseline).

use candle_core::Device;

/// How a layer attends over the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// One op per layer for the whole step: K/V read in place through the block tables, online
    /// softmax, GQA without copies ([`crate::paged_attention`]).
    #[default]
    Paged,
    /// Each sequence's K/V gathered into a padded copy, scores materialised per sequence
    /// ([`crate::gather_attention`]).
    Gather,
}

impl AttentionKernel {
    /// The kernel that runs on `device`: the paged op has only a CPU implementation so far, so
    /// other devices take the gather path.
    pub fn on(self, device: &Device) -> Self {
        match (self, device) {
            (Self::Paged, Device::Cpu) => Self::Paged,
            _ => Self::Gather,
        }
    }
}
