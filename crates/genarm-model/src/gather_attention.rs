//! The gather attention path: each decode sequence's K/V copied out of the pool into a padded
//! batch, each other sequence attended alone with its score matrix materialised. Superseded by
//! [`crate::paged_attention`]; kept selectable as its oracle and the benchmarks' baseline.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::step_plan::StepPlan;

/// Decode sequences attended together: the first `count` sequences of the batch, one new
/// token each, their contexts gathered from the pool and padded to `width`.
struct DecodeGroup {
    count: usize,
    width: usize,
    /// Pool slots `[count * width]`, padding included.
    gather: Tensor,
    /// Additive mask `[count, 1, 1, width]`: 0 for real tokens, −∞ for padding.
    mask: Tensor,
}

/// One sequence attended on its own (prefill, or any sequence without a cache).
struct SeqAttention {
    offset: usize,
    len: usize,
    /// Pool slots of its whole context, or `None` without a cache.
    gather: Option<Tensor>,
    /// Causal mask `[len, past + len]`, `None` for a single token.
    mask: Option<Tensor>,
}

/// Index and mask tensors built once per forward and shared by every layer.
pub struct GatherPlan {
    decode: Option<DecodeGroup>,
    rest: Vec<SeqAttention>,
}

/// Head counts of one rank's attention.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// KV heads.
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
}

impl GatherPlan {
    /// The gather indices and masks of `plan`.
    pub fn new(plan: &StepPlan, dev: &Device) -> Result<Self> {
        let cached = plan.cached();
        // Leading single-token sequences with a cache attend together, padded to the longest
        // context; the engine puts decodes first in the batch for this.
        let n_decode = if cached { (0..plan.len()).take_while(|&i| plan.seq(i).len == 1).count() } else { 0 };
        let decode = if n_decode > 0 {
            let width = (0..n_decode).map(|i| plan.seq(i).past + 1).max().unwrap_or(1);
            let mut slots = Vec::with_capacity(n_decode * width);
            let mut mask = Vec::with_capacity(n_decode * width);
            for i in 0..n_decode {
                let own = plan.context_slots(i);
                slots.extend_from_slice(&own);
                // Padding reads slot 0 (always finite) and is masked out.
                slots.extend(std::iter::repeat_n(0, width - own.len()));
                mask.extend(std::iter::repeat_n(0f32, own.len()));
                mask.extend(std::iter::repeat_n(f32::NEG_INFINITY, width - own.len()));
            }
            Some(DecodeGroup {
                count: n_decode,
                width,
                gather: Tensor::from_vec(slots, n_decode * width, dev)?,
                mask: Tensor::from_vec(mask, (n_decode, 1, 1, width), dev)?,
            })
        } else {
            None
        };
        let rest = (n_decode..plan.len())
            .map(|i| {
                let s = plan.seq(i);
                let gather = if cached {
                    let sl = plan.context_slots(i);
                    Some(Tensor::from_slice(&sl, sl.len(), dev)?)
                } else {
                    None
                };
                let mask = if s.len == 1 {
                    None
                } else {
                    let total = s.past + s.len;
                    let m: Vec<f32> = (0..s.len)
                        .flat_map(|i| {
                            (0..total).map(move |j| if j > s.past + i { f32::NEG_INFINITY } else { 0.0 })
                        })
                        .collect();
                    Some(Tensor::from_vec(m, (s.len, total), dev)?)
                };
                Ok(SeqAttention { offset: s.offset, len: s.len, gather, mask })
            })
            .collect::<Result<_>>()?;
        Ok(Self { decode, rest })
    }

    /// Attention output `[tokens, heads * head_dim]` for `q [tokens, heads, hd]`, with the new
    /// `k`, `v` `[tokens, kv_heads, hd]` already written to the pool `kv` when there is one.
    pub fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        kv: Option<&(Tensor, Tensor)>,
        h: Heads,
        dtype: DType,
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (h.heads, h.kv_heads, h.head_dim);
        let group = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut outs = Vec::with_capacity(self.rest.len() + 1);
        if let (Some(d), Some((kc, vc))) = (&self.decode, kv) {
            // q: [b, nh, hd] -> [b, nkv, group, hd]; K/V: [b, width, nkv, hd] -> [b, nkv, width, hd].
            let qd = q.narrow(0, 0, d.count)?.reshape((d.count, nkv, group, hd))?;
            let kd = kc
                .index_select(&d.gather, 0)?
                .reshape((d.count, d.width, nkv, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            let vd = vc
                .index_select(&d.gather, 0)?
                .reshape((d.count, d.width, nkv, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            let att = (qd.matmul(&kd.t()?)? * scale)?.to_dtype(DType::F32)?.broadcast_add(&d.mask)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(dtype)?;
            outs.push(att.matmul(&vd)?.reshape((d.count, nh * hd))?);
        }
        for s in &self.rest {
            let (ks, vs) = match (kv, &s.gather) {
                (Some((kc, vc)), Some(g)) => (kc.index_select(g, 0)?, vc.index_select(g, 0)?),
                _ => (k.narrow(0, s.offset, s.len)?, v.narrow(0, s.offset, s.len)?),
            };
            let total = ks.dim(0)?;
            // [len, nh, hd] -> [nkv, group * len, hd]: the query heads sharing a KV head are
            // adjacent, so GQA needs no copy of K and V.
            let qs = q.narrow(0, s.offset, s.len)?.transpose(0, 1)?.contiguous()?.reshape((
                nkv,
                group * s.len,
                hd,
            ))?;
            let ks = ks.transpose(0, 1)?.contiguous()?; // [nkv, total, hd]
            let vs = vs.transpose(0, 1)?.contiguous()?;
            let mut att = (qs.matmul(&ks.t()?)? * scale)?.to_dtype(DType::F32)?;
            if let Some(m) = &s.mask {
                att = att.reshape((nkv, group, s.len, total))?.broadcast_add(m)?.reshape((
                    nkv,
                    group * s.len,
                    total,
                ))?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(dtype)?;
            let o = att.matmul(&vs)?; // [nkv, group * len, hd]
            outs.push(o.reshape((nh, s.len, hd))?.transpose(0, 1)?.reshape((s.len, nh * hd))?);
        }
        Ok(if outs.len() == 1 { outs.pop().expect("one output") } else { Tensor::cat(&outs, 0)? })
    }
}
