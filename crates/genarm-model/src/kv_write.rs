//! Writing a step's new K or V rows into the block pool in place, at the slots the step plan
//! holds: no index tensor to build or upload.

use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor, WithDType};

/// Copies row `i` of `[tokens, kv_heads, head_dim]` to pool row `slots[i]` of
/// `[slots, kv_heads, head_dim]`.
pub struct PagedWrite<'a> {
    /// Pool slot of every new token, in batch order.
    pub slots: &'a [u32],
}

impl PagedWrite<'_> {
    /// Writes `rows` into `pool`.
    pub fn apply(&self, pool: &Tensor, rows: &Tensor) -> candle_core::Result<()> {
        pool.inplace_op2(rows, self)
    }
}

fn write<T: WithDType>(
    slots: &[u32],
    dst: &mut [T],
    ld: &Layout,
    src: &[T],
    ls: &Layout,
) -> candle_core::Result<()> {
    let (Some((d0, d1)), Some((s0, s1))) = (ld.contiguous_offsets(), ls.contiguous_offsets()) else {
        candle_core::bail!("paged write: pool and rows must be contiguous");
    };
    let (dd, sd) = (ld.shape().dims(), ls.shape().dims());
    if dd.len() != 3 || sd.len() != 3 || dd[1..] != sd[1..] || sd[0] != slots.len() {
        candle_core::bail!("paged write: rows {sd:?} do not fit pool {dd:?} at {} slots", slots.len());
    }
    let row = sd[1] * sd[2];
    let (dst, src) = (&mut dst[d0..d1], &src[s0..s1]);
    for (i, &slot) in slots.iter().enumerate() {
        let at = slot as usize * row;
        let Some(to) = dst.get_mut(at..at + row) else {
            candle_core::bail!("paged write: slot {slot} is outside the pool of {} slots", dd[0]);
        };
        to.copy_from_slice(&src[i * row..(i + 1) * row]);
    }
    Ok(())
}

impl InplaceOp2 for PagedWrite<'_> {
    fn name(&self) -> &'static str {
        "paged-write"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        match (s1, s2) {
            (CpuStorage::F32(d), CpuStorage::F32(s)) => write(self.slots, d, l1, s, l2),
            (CpuStorage::BF16(d), CpuStorage::BF16(s)) => write(self.slots, d, l1, s, l2),
            (CpuStorage::F16(d), CpuStorage::F16(s)) => write(self.slots, d, l1, s, l2),
            _ => candle_core::bail!("paged write: pool and rows must share one float dtype"),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    #[test]
    fn rows_land_at_their_slots_and_nothing_else_moves() {
        let dev = Device::Cpu;
        let pool = Tensor::zeros((6, 1, 2), DType::F32, &dev).unwrap();
        let rows = Tensor::new(&[[[1f32, 2.]], [[3., 4.]]], &dev).unwrap();
        PagedWrite { slots: &[4, 1] }.apply(&pool, &rows).unwrap();
        let got: Vec<f32> = pool.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, vec![0., 0., 3., 4., 0., 0., 0., 0., 1., 2., 0., 0.]);
    }

    #[test]
    fn a_slot_outside_the_pool_is_an_error() {
        let dev = Device::Cpu;
        let pool = Tensor::zeros((2, 1, 2), DType::F32, &dev).unwrap();
        let rows = Tensor::zeros((1, 1, 2), DType::F32, &dev).unwrap();
        assert!(PagedWrite { slots: &[u32::MAX] }.apply(&pool, &rows).is_err());
        assert!(PagedWrite { slots: &[0, 1] }.apply(&pool, &rows).is_err());
    }
}
