//! One tensor-parallel rank's slice of a Llama-family decoder and its batched, variable-length
//! forward over many sequences at different positions.

use candle_core::{DType, Device, Module, Tensor};

use crate::communicator::Communicator;
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::layers::{Linear, Parallel, RmsNorm, ShardLoader};
use crate::rope::Rope;
use crate::tensors::{ModelTensors, Projection};
use crate::weights::Split;

/// One sequence's part of a batched forward.
#[derive(Debug, Clone)]
pub struct SeqSpan {
    /// Offset of its first new token in the flattened batch.
    pub offset: usize,
    /// Number of new tokens.
    pub len: usize,
    /// Tokens already cached before this step (the position of the first new token).
    pub past: usize,
    /// KV pool slots of all `past + len` tokens, or `None` for a forward without cache.
    pub slots: Option<Vec<u32>>,
}

/// A batched forward: every sequence's new tokens, flattened.
#[derive(Debug, Clone)]
pub struct Batch {
    /// New token ids of all sequences, concatenated.
    pub tokens: Vec<u32>,
    /// Absolute position of each new token.
    pub positions: Vec<u32>,
    /// The sequences, in order.
    pub seqs: Vec<SeqSpan>,
    /// Logits at every new position (`true`) or only at each sequence's last one.
    pub all_logits: bool,
}

impl Batch {
    /// Pool slots that the new tokens are written to, in batch order (empty without cache).
    fn write_slots(&self) -> Vec<u32> {
        self.seqs.iter().filter_map(|s| s.slots.as_ref().map(|sl| &sl[s.past..])).flatten().copied().collect()
    }
}

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
struct AttentionPlan {
    /// Where the new K/V rows go in the pool, expanded to `[tokens, kv_heads, head_dim]`.
    write: Option<Tensor>,
    decode: Option<DecodeGroup>,
    rest: Vec<SeqAttention>,
}

/// This rank's K and V storage for every layer: `[slots, kv_heads_local, head_dim]` each.
pub struct KvStorage {
    layers: Vec<(Tensor, Tensor)>,
}

impl KvStorage {
    /// Preallocates `slots` token slots for every layer, so the pool really bounds memory.
    pub fn new(cfg: &LlamaConfig, world: usize, slots: usize, dtype: DType, device: &Device) -> Result<Self> {
        let kv_local = cfg.num_key_value_heads / world;
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                let k = Tensor::zeros((slots, kv_local, cfg.head_dim), dtype, device)?;
                let v = Tensor::zeros((slots, kv_local, cfg.head_dim), dtype, device)?;
                Ok((k, v))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers })
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    mlp: Mlp,
}

/// This rank's slice of the model: 1/N of the heads, of the MLP and of the LM head.
pub struct ShardModel {
    cfg: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope: Rope,
    comm: Box<dyn Communicator>,
    dtype: DType,
    device: Device,
}

/// Checks that `world` ranks divide the model's heads and MLP.
pub fn check_tp(cfg: &LlamaConfig, world: usize) -> Result<()> {
    for (what, value) in [
        ("num_attention_heads", cfg.num_attention_heads),
        ("num_key_value_heads", cfg.num_key_value_heads),
        ("intermediate_size", cfg.intermediate_size),
    ] {
        if world == 0 || value % world != 0 {
            return Err(ModelError::TpIndivisible { tp: world, what, value });
        }
    }
    Ok(())
}

/// Rows of the LM head each rank holds; the vocabulary is padded up to a multiple of the ranks.
pub fn vocab_shard_rows(vocab: usize, world: usize) -> usize {
    vocab.div_ceil(world)
}

/// Number of tensors a rank loads (for the progress bar).
pub fn tensor_count(cfg: &LlamaConfig) -> u64 {
    ModelTensors::new(cfg).iter().count() as u64
}

/// How a projection is split over ranks: q/k/v and gate/up by output features, o and down by
/// input features, so each block needs one all-reduce.
fn parallel(p: Projection) -> Parallel {
    match p {
        Projection::O | Projection::Down => Parallel::Row,
        Projection::Q | Projection::K | Projection::V | Projection::Gate | Projection::Up => Parallel::Column,
    }
}

impl ShardModel {
    /// Loads this rank's slice.
    pub fn load(cfg: &LlamaConfig, l: &ShardLoader, comm: Box<dyn Communicator>) -> Result<Self> {
        let world = l.world;
        check_tp(cfg, world)?;
        let eps = cfg.rms_norm_eps;
        let tensors = ModelTensors::new(cfg);
        let embed = l.load(&tensors.embed.name, &tensors.embed.shape, Split::Replicated)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for t in &tensors.layers {
            let lin = |p: Projection| Linear::load(l, t.linear(p), parallel(p));
            let attn = Attention {
                q: lin(Projection::Q)?,
                k: lin(Projection::K)?,
                v: lin(Projection::V)?,
                o: lin(Projection::O)?,
                heads: cfg.num_attention_heads / world,
                kv_heads: cfg.num_key_value_heads / world,
                head_dim: cfg.head_dim,
            };
            let mlp =
                Mlp { gate: lin(Projection::Gate)?, up: lin(Projection::Up)?, down: lin(Projection::Down)? };
            layers.push(Layer {
                input_norm: RmsNorm::load(l, &t.input_norm, eps)?,
                attn,
                post_norm: RmsNorm::load(l, &t.post_norm, eps)?,
                mlp,
            });
        }
        let norm = RmsNorm::load(l, &tensors.norm, eps)?;
        let full_head = match &tensors.lm_head {
            Some(head) => l.load(&head.name, &head.shape, Split::Replicated)?,
            None => embed.clone(),
        };
        let lm_head = vocab_shard(&full_head, cfg.vocab_size, l.rank, world)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            rope: Rope::new(cfg),
            comm,
            dtype: l.dtype,
            device: l.device.clone(),
        })
    }

    /// The communicator of this rank.
    pub fn comm(&self) -> &dyn Communicator {
        self.comm.as_ref()
    }

    /// Runs `batch`, writing the new keys and values into `kv` (when the batch has slots).
    /// Returns f32 logits `[rows, vocab]` on every rank: one row per sequence, or one per new
    /// token when `all_logits`.
    pub fn forward(&self, batch: &Batch, kv: Option<&KvStorage>) -> Result<Tensor> {
        let dev = &self.device;
        let n = batch.tokens.len();
        let ids = Tensor::from_slice(&batch.tokens, n, dev)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let (cos, sin) = self.rope.cos_sin(&batch.positions, self.dtype, dev)?;
        let plan = self.attention_plan(batch, kv.is_some())?;
        for (i, layer) in self.layers.iter().enumerate() {
            let kv_layer = kv.map(|k| &k.layers[i]);
            let h = layer.input_norm.forward(&x)?;
            let a = self.attention(&layer.attn, &h, &cos, &sin, kv_layer, &plan)?;
            x = (x + a)?;
            let h = layer.post_norm.forward(&x)?;
            x = (x + self.mlp(&layer.mlp, &h)?)?;
        }
        let x = if batch.all_logits {
            x
        } else {
            let last: Vec<u32> = batch.seqs.iter().map(|s| (s.offset + s.len - 1) as u32).collect();
            x.index_select(&Tensor::from_vec(last, batch.seqs.len(), dev)?, 0)?
        };
        let x = self.norm.forward(&x)?;
        let local = crate::layers::matmul_weight_t(&x, &self.lm_head)?;
        let logits = self.comm.all_gather(&local, 1)?;
        let logits = logits.narrow(1, 0, self.cfg.vocab_size)?.to_dtype(DType::F32)?;
        Ok(logits)
    }

    /// The index and mask tensors of one forward, shared by every layer.
    fn attention_plan(&self, batch: &Batch, cached: bool) -> Result<AttentionPlan> {
        let dev = &self.device;
        let (kvh, hd) = (self.layers[0].attn.kv_heads, self.layers[0].attn.head_dim);
        let write = if cached {
            let n = batch.tokens.len();
            let idx = Tensor::from_vec(batch.write_slots(), (n, 1, 1), dev)?;
            Some(idx.broadcast_as((n, kvh, hd))?.contiguous()?)
        } else {
            None
        };
        // Leading single-token sequences with a cache attend together, padded to the longest
        // context; the engine puts decodes first in the batch for this.
        let n_decode = if cached { batch.seqs.iter().take_while(|s| s.len == 1).count() } else { 0 };
        let decode = if n_decode > 0 {
            let seqs = &batch.seqs[..n_decode];
            let width = seqs.iter().map(|s| s.past + 1).max().unwrap_or(1);
            let mut slots = Vec::with_capacity(n_decode * width);
            let mut mask = Vec::with_capacity(n_decode * width);
            for s in seqs {
                let own = s.slots.as_ref().expect("cached sequences have slots");
                slots.extend_from_slice(own);
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
        let rest = batch.seqs[n_decode..]
            .iter()
            .map(|s| {
                let gather = match &s.slots {
                    Some(sl) => Some(Tensor::from_slice(sl, sl.len(), dev)?),
                    None => None,
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
        Ok(AttentionPlan { write, decode, rest })
    }

    fn attention(
        &self,
        a: &Attention,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        kv: Option<&(Tensor, Tensor)>,
        plan: &AttentionPlan,
    ) -> Result<Tensor> {
        let n = h.dim(0)?;
        let (nh, nkv, hd) = (a.heads, a.kv_heads, a.head_dim);
        let q = a.q.forward(h)?.reshape((1, n, nh, hd))?;
        let k = a.k.forward(h)?.reshape((1, n, nkv, hd))?;
        let v = a.v.forward(h)?.reshape((n, nkv, hd))?;
        let q = candle_nn::rotary_emb::rope_thd(&q, cos, sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope_thd(&k, cos, sin)?.squeeze(0)?;
        if let (Some((kc, vc)), Some(idx)) = (kv, plan.write.as_ref()) {
            kc.scatter_set(idx, &k, 0)?;
            vc.scatter_set(idx, &v, 0)?;
        }
        let group = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut outs = Vec::with_capacity(plan.rest.len() + 1);
        if let (Some(d), Some((kc, vc))) = (&plan.decode, kv) {
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
            let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(self.dtype)?;
            outs.push(att.matmul(&vd)?.reshape((d.count, nh * hd))?);
        }
        for s in &plan.rest {
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
            let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(self.dtype)?;
            let o = att.matmul(&vs)?; // [nkv, group * len, hd]
            outs.push(o.reshape((nh, s.len, hd))?.transpose(0, 1)?.reshape((s.len, nh * hd))?);
        }
        let o = if outs.len() == 1 { outs.pop().expect("one output") } else { Tensor::cat(&outs, 0)? };
        let o = self.comm.all_reduce_sum(&a.o.matmul(&o)?)?;
        a.o.add_bias(o)
    }

    fn mlp(&self, m: &Mlp, h: &Tensor) -> Result<Tensor> {
        let g = candle_nn::ops::silu(&m.gate.forward(h)?)?;
        let u = m.up.forward(h)?;
        let d = self.comm.all_reduce_sum(&m.down.matmul(&(g * u)?)?)?;
        m.down.add_bias(d)
    }
}

/// This rank's rows of the LM head, zero-padded so every rank holds the same number of rows.
fn vocab_shard(full: &Tensor, vocab: usize, rank: usize, world: usize) -> Result<Tensor> {
    let rows = vocab_shard_rows(vocab, world);
    let start = (rank * rows).min(vocab);
    let take = rows.min(vocab - start);
    let part = full.narrow(0, start, take)?;
    if take == rows {
        return Ok(part.contiguous()?);
    }
    let pad = Tensor::zeros((rows - take, full.dim(1)?), full.dtype(), full.device())?;
    Ok(Tensor::cat(&[&part, &pad], 0)?)
}
