//! `x Wᵀ` with a frozen `W` as a custom op whose backward computes only the input's gradient.
//!
//! candle's matmul backward always computes both operands' gradients; for a frozen weight that
//! is a wasted `[out, in]` product per layer per step (a third of the step's work in LoRA
//! training). This op runs the same matmul forward on the CPU and returns `grad · W` backward.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor};

/// The custom op holding the frozen weight `[out, in]` (detached).
struct FrozenLinear {
    weight: Tensor,
}

/// A contiguous copy of `storage` under `layout` as a fresh tensor on the CPU.
fn tensor_of(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg("frozen linear: input must be contiguous (call .contiguous())".into())
    })?;
    match storage {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu),
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu),
        other => Err(candle_core::Error::Msg(format!(
            "frozen linear: dtype {:?} is not supported for training (use f32 or f64)",
            other.dtype()
        ))),
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = tensor_of(storage, layout)?;
        let y = x.matmul(&self.weight.t()?)?.contiguous()?;
        let (s, l) = y.storage_and_layout();
        match &*s {
            Storage::Cpu(c) if l.start_offset() == 0 => Ok((c.clone(), l.shape().clone())),
            _ => Err(candle_core::Error::Msg("frozen linear: unexpected output storage".into())),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.weight)?))
    }
}

/// `x Wᵀ` for `x: [m, in]` and a frozen `w: [out, in]`; gradients flow to `x` only. On devices
/// other than the CPU this is a plain matmul (correct, without the saving).
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let supported = matches!(x.device(), Device::Cpu) && matches!(x.dtype(), DType::F32 | DType::F64);
    if !supported || !x.track_op() {
        return x.matmul(&w.t()?);
    }
    x.contiguous()?.apply_op1(FrozenLinear { weight: w.detach() })
}
