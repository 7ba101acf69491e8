//! One tensor-parallel rank's slice of a Llama-family decoder and its batched, variable-length
//! forward over many sequences at different positions.

use candle_core::{DType, Device, Module, Tensor};

use crate::attention::AttentionKernel;
use crate::communicator::Communicator;
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gather_attention::{GatherPlan, Heads};
use crate::kv_write::PagedWrite;
use crate::layers::{Linear, Parallel, RmsNorm, ShardLoader};
use crate::paged_attention::PagedAttention;
use crate::rope::Rope;
use crate::step_plan::StepPlan;
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
    /// KV pool blocks holding all `past + len` tokens, or `None` for a forward without cache.
    pub blocks: Option<Vec<u32>>,
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
    /// Tokens per KV block of the sequences' block tables.
    pub block_size: usize,
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
    kernel: AttentionKernel,
}

/// The per-layer attention of one forward, prepared once.
enum Attend<'a> {
    Paged(PagedAttention<'a>),
    Gather(GatherPlan),
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
            kernel: AttentionKernel::default().on(l.device),
        })
    }

    /// Chooses the attention implementation (the paged kernel falls back to gather where it has
    /// no implementation for this rank's device).
    pub fn set_attention(&mut self, kernel: AttentionKernel) {
        self.kernel = kernel.on(&self.device);
        if self.kernel != kernel {
            tracing::info!(requested = ?kernel, running = ?self.kernel, "no paged attention kernel for this device");
        }
    }

    /// The attention implementation in use.
    pub fn attention_kernel(&self) -> AttentionKernel {
        self.kernel
    }

    /// The communicator of this rank.
    pub fn comm(&self) -> &dyn Communicator {
        self.comm.as_ref()
    }

    /// Runs `batch` (whose attention plan is `plan`), writing the new keys and values into `kv`
    /// (when the batch has a cache). Returns f32 logits `[rows, vocab]` on every rank: one row per
    /// sequence, or one per new token when `all_logits`.
    pub fn forward(&self, batch: &Batch, plan: &StepPlan, kv: Option<&KvStorage>) -> Result<Tensor> {
        let dev = &self.device;
        let n = batch.tokens.len();
        let ids = Tensor::from_slice(&batch.tokens, n, dev)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let (cos, sin) = self.rope.cos_sin(&batch.positions, self.dtype, dev)?;
        let a0 = &self.layers[0].attn;
        let (kvh, hd) = (a0.kv_heads, a0.head_dim);
        let kv = kv.filter(|_| plan.cached());
        // The gather path scatters the new K/V rows through an index tensor built once per step;
        // the paged path writes them in place from the plan's slots.
        let write = match kv {
            Some(_) if self.kernel == AttentionKernel::Gather => {
                let idx = Tensor::from_slice(plan.write_slots(), (n, 1, 1), dev)?;
                Some(idx.broadcast_as((n, kvh, hd))?.contiguous()?)
            }
            _ => None,
        };
        let attend = match self.kernel {
            AttentionKernel::Paged => Attend::Paged(PagedAttention {
                plan,
                heads: a0.heads,
                kv_heads: kvh,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
            }),
            AttentionKernel::Gather => Attend::Gather(GatherPlan::new(plan, dev)?),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let kv_layer = kv.map(|k| &k.layers[i]);
            let h = layer.input_norm.forward(&x)?;
            let a = self.attention(&layer.attn, &h, &cos, &sin, kv_layer, write.as_ref(), &attend)?;
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

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        a: &Attention,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        kv: Option<&(Tensor, Tensor)>,
        write: Option<&Tensor>,
        attend: &Attend,
    ) -> Result<Tensor> {
        let n = h.dim(0)?;
        let (nh, nkv, hd) = (a.heads, a.kv_heads, a.head_dim);
        let q = a.q.forward(h)?.reshape((1, n, nh, hd))?;
        let k = a.k.forward(h)?.reshape((1, n, nkv, hd))?;
        let v = a.v.forward(h)?.reshape((n, nkv, hd))?;
        let q = candle_nn::rotary_emb::rope_thd(&q, cos, sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope_thd(&k, cos, sin)?.squeeze(0)?;
        if let (Some((kc, vc)), Some(idx)) = (kv, write) {
            kc.scatter_set(idx, &k, 0)?;
            vc.scatter_set(idx, &v, 0)?;
        }
        let o = match attend {
            Attend::Paged(op) => match kv {
                Some((kc, vc)) => {
                    let w = PagedWrite { slots: op.plan.write_slots() };
                    w.apply(kc, &k)?;
                    w.apply(vc, &v.contiguous()?)?;
                    op.forward(&q, kc, vc)?
                }
                None => op.forward(&q, &k, &v.contiguous()?)?,
            },
            Attend::Gather(plan) => {
                plan.attend(&q, &k, &v, kv, Heads { heads: nh, kv_heads: nkv, head_dim: hd }, self.dtype)?
            }
        };
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
