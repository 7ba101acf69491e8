//! The training forward of a Llama-family decoder, built only from differentiable candle ops
//! (RMSNorm, RoPE and the causal softmax written out by hand), with frozen base weights and
//! trainable LoRA matrices (or every weight trainable for full fine-tuning).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use genarm_model::config::LlamaConfig;
use genarm_model::rope::Rope;
use genarm_model::tensors::{ModelTensors, TensorSpec};
use genarm_model::weights::{load_checked, Split, TensorSource};

use crate::error::{Result, TrainError};
use crate::frozen::frozen_matmul;
use crate::rng::{derive_seed, SplitMix64};

/// A linear layer of a decoder layer that LoRA can adapt: genarm-model's [`Projection`], whose
/// names, shapes and biases the serving engine loads by.
///
/// [`Projection`]: genarm_model::tensors::Projection
pub use genarm_model::tensors::Projection as Target;

/// Parses a comma-separated target list (`q,k,v,o,gate,up,down` or `q_proj,...`).
pub fn parse_targets(list: &str) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    for item in list.split(',').filter(|s| !s.trim().is_empty()) {
        let t = Target::parse(item).ok_or_else(|| {
            TrainError::Config(format!(
                "unknown LoRA target {item:?}: choose from q, k, v, o, gate, up, down (or q_proj, ...)"
            ))
        })?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err(TrainError::Config(
            "--lora-targets is empty: name at least one of q,k,v,o,gate,up,down".into(),
        ));
    }
    out.sort();
    Ok(out)
}

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// Rank r.
    pub rank: usize,
    /// α; the update is scaled by α/r (α/√r with rsLoRA).
    pub alpha: f64,
    /// Adapted layers.
    pub targets: Vec<Target>,
    /// rsLoRA scaling.
    pub use_rslora: bool,
}

impl LoraSpec {
    /// The update's scale.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// What is trained.
#[derive(Debug, Clone, PartialEq)]
pub enum Trainable {
    /// LoRA matrices on the targets; the base is frozen.
    Lora(LoraSpec),
    /// Every weight of the model.
    Full,
}

/// A trainable tensor and its name: PEFT-style without the `base_model.model.` prefix for LoRA
/// (`model.layers.0.self_attn.q_proj.lora_A.weight`), the HF name for full fine-tuning.
#[derive(Debug, Clone)]
pub struct Param {
    /// The name.
    pub name: String,
    /// The variable.
    pub var: Var,
}

/// A weight that is either frozen or trained.
enum W {
    Frozen(Tensor),
    Train(Var),
}

impl W {
    fn get(&self, grad: bool) -> Tensor {
        match self {
            W::Frozen(t) => t.clone(),
            W::Train(v) if grad => v.as_tensor().clone(),
            W::Train(v) => v.as_tensor().detach(),
        }
    }
}

struct Lin {
    weight: W,
    bias: Option<W>,
    lora: Option<(Var, Var)>,
}

struct Layer {
    input_norm: W,
    post_norm: W,
    lins: Vec<(Target, Lin)>,
}

impl Layer {
    fn lin(&self, t: Target) -> &Lin {
        &self.lins.iter().find(|(x, _)| *x == t).expect("every target is built").1
    }
}

/// The model as it is trained.
pub struct TrainModel {
    cfg: LlamaConfig,
    embed: W,
    layers: Vec<Layer>,
    norm: W,
    /// `None`: tied to the embedding.
    lm_head: Option<W>,
    rope: Rope,
    lora_scale: f64,
    trainable: Trainable,
    params: Vec<Param>,
    dtype: DType,
    device: Device,
}

/// Sequences of a batch, right-padded, with the positions whose next token is scored.
#[derive(Debug, Clone)]
pub struct SeqBatch {
    /// Number of sequences.
    pub n: usize,
    /// Padded length.
    pub len: usize,
    /// Ids `[n * len]` (padding is id 0; causal attention keeps it from real tokens).
    pub ids: Vec<u32>,
    /// Rows of the flattened `[n * len]` hidden states that predict a response token.
    pub rows: Vec<u32>,
    /// The response token each row predicts.
    pub targets: Vec<u32>,
    /// The sequence each row belongs to.
    pub seq_of_row: Vec<u32>,
    /// Non-padding tokens.
    pub real_tokens: usize,
}

impl SeqBatch {
    /// A batch of `(prompt, response)` sequences; each sequence's score is the sum of
    /// `log π(response_t | prompt, response_<t)`.
    pub fn new(seqs: &[(&[u32], &[u32])]) -> Self {
        let n = seqs.len();
        let len = seqs.iter().map(|(p, r)| p.len() + r.len()).max().unwrap_or(0);
        let mut b = SeqBatch {
            n,
            len,
            ids: vec![0; n * len],
            rows: Vec::new(),
            targets: Vec::new(),
            seq_of_row: Vec::new(),
            real_tokens: 0,
        };
        for (s, (p, r)) in seqs.iter().enumerate() {
            let base = s * len;
            b.ids[base..base + p.len()].copy_from_slice(p);
            b.ids[base + p.len()..base + p.len() + r.len()].copy_from_slice(r);
            b.real_tokens += p.len() + r.len();
            for (j, &t) in r.iter().enumerate() {
                let pos = p.len() + j;
                // The hidden state at pos - 1 predicts the token at pos; a response at position 0
                // (empty prompt) has nothing to predict it and is not scored.
                if pos > 0 {
                    b.rows.push((base + pos - 1) as u32);
                    b.targets.push(t);
                    b.seq_of_row.push(s as u32);
                }
            }
        }
        b
    }
}

/// Kaiming-uniform (a = √5) as PEFT initializes `lora_A`: U(−1/√in, 1/√in).
fn kaiming_a(rank: usize, inp: usize, seed: u64, dtype: DType, dev: &Device) -> Result<Tensor> {
    let bound = 1.0 / (inp as f64).sqrt();
    let mut rng = SplitMix64::new(seed);
    let v: Vec<f64> = (0..rank * inp).map(|_| (2.0 * rng.next_f64() - 1.0) * bound).collect();
    Ok(Tensor::from_vec(v, (rank, inp), dev)?.to_dtype(dtype)?)
}

impl TrainModel {
    /// Loads the base weights from `src` (HF names) and creates the trainable parameters:
    /// LoRA `A` seeded kaiming-uniform and `B` zero (so training starts at the base model), or
    /// every weight as a variable for full fine-tuning.
    pub fn new(
        cfg: &LlamaConfig,
        src: &dyn TensorSource,
        trainable: Trainable,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let full = matches!(trainable, Trainable::Full);
        let mut params = Vec::new();
        let mut weight = |spec: &TensorSpec| -> Result<W> {
            let t = load_checked(src, &spec.name, &spec.shape, Split::Replicated, 0, 1, dtype, device)?;
            if full {
                let var = Var::from_tensor(&t)?;
                params.push(Param { name: spec.name.clone(), var: var.clone() });
                Ok(W::Train(var))
            } else {
                Ok(W::Frozen(t))
            }
        };
        // `params` comes out in ModelTensors::iter order, the order a full fine-tune's optimizer
        // state has always been kept in.
        let tensors = ModelTensors::new(cfg);
        let embed = weight(&tensors.embed)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for layer in &tensors.layers {
            let input_norm = weight(&layer.input_norm)?;
            let mut lins = Vec::with_capacity(layer.linears.len());
            for lin in &layer.linears {
                let w = weight(&lin.weight)?;
                let b = match &lin.bias {
                    Some(b) => Some(weight(b)?),
                    None => None,
                };
                lins.push((lin.projection, Lin { weight: w, bias: b, lora: None }));
            }
            let post_norm = weight(&layer.post_norm)?;
            layers.push(Layer { input_norm, post_norm, lins });
        }
        let norm = weight(&tensors.norm)?;
        let lm_head = match &tensors.lm_head {
            Some(head) => Some(weight(head)?),
            None => None,
        };
        let mut lora_scale = 0.0;
        if let Trainable::Lora(spec) = &trainable {
            if spec.rank == 0 {
                return Err(TrainError::Config("--lora-rank must be at least 1".into()));
            }
            lora_scale = spec.scale();
            for (i, layer) in layers.iter_mut().enumerate() {
                for (t, lin) in layer.lins.iter_mut() {
                    if !spec.targets.contains(t) {
                        continue;
                    }
                    let (out, inp) = t.dims(cfg);
                    let stream = (i * Target::ALL.len() + *t as usize) as u64;
                    let a = Var::from_tensor(&kaiming_a(
                        spec.rank,
                        inp,
                        derive_seed(seed, stream),
                        dtype,
                        device,
                    )?)?;
                    let b = Var::from_tensor(&Tensor::zeros((out, spec.rank), dtype, device)?)?;
                    let prefix = t.hf_prefix(i);
                    params.push(Param { name: format!("{prefix}.lora_A.weight"), var: a.clone() });
                    params.push(Param { name: format!("{prefix}.lora_B.weight"), var: b.clone() });
                    lin.lora = Some((a, b));
                }
            }
        }
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            rope: Rope::new(cfg),
            lora_scale,
            trainable,
            params,
            dtype,
            device: device.clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// What is trained.
    pub fn trainable(&self) -> &Trainable {
        &self.trainable
    }

    /// The trainable parameters, in a fixed order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Current values of the trainable parameters by name (detached copies' handles).
    pub fn param_values(&self) -> HashMap<String, Tensor> {
        self.params.iter().map(|p| (p.name.clone(), p.var.as_tensor().detach())).collect()
    }

    /// Sets parameters from `values` (every parameter must be present with its shape).
    pub fn set_params(&self, values: &HashMap<String, Tensor>) -> Result<()> {
        for p in &self.params {
            let v = values.get(&p.name).ok_or_else(|| {
                TrainError::Config(format!("no value for parameter {} (saved by a different run?)", p.name))
            })?;
            if v.dims() != p.var.dims() {
                return Err(TrainError::Config(format!(
                    "parameter {} has shape {:?}, the saved value {:?}",
                    p.name,
                    p.var.dims(),
                    v.dims()
                )));
            }
            p.var.set(&v.to_dtype(self.dtype)?.to_device(&self.device)?.copy()?)?;
        }
        Ok(())
    }

    fn rms_norm(&self, x: &Tensor, w: &W, grad: bool) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let denom = (ms + eps)?.sqrt()?;
        Ok(x.broadcast_div(&denom)?.broadcast_mul(&w.get(grad))?)
    }

    fn linear(&self, lin: &Lin, x: &Tensor, grad: bool) -> Result<Tensor> {
        let mut y = match &lin.weight {
            W::Frozen(w) => frozen_matmul(x, w)?,
            W::Train(_) => x.matmul(&lin.weight.get(grad).t()?)?,
        };
        if let Some((a, b)) = &lin.lora {
            let (a, b) = if grad {
                (a.as_tensor().clone(), b.as_tensor().clone())
            } else {
                (a.as_tensor().detach(), b.as_tensor().detach())
            };
            let delta = x.matmul(&a.t()?)?.matmul(&b.t()?)?;
            y = (y + (delta * self.lora_scale)?)?;
        }
        if let Some(bias) = &lin.bias {
            y = y.broadcast_add(&bias.get(grad))?;
        }
        Ok(y)
    }

    /// `x` rotated by RoPE in HF's half-split (`rotate_half`) convention; `x: [n, heads, len, hd]`,
    /// `cos`/`sin`: `[len, hd]`.
    fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let hd = x.dim(D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
    }

    /// Hidden states `[n * len, hidden]` after the last decoder layer (before the final norm).
    fn trunk(&self, ids: &[u32], n: usize, len: usize, grad: bool) -> Result<Tensor> {
        let cfg = &self.cfg;
        let dev = &self.device;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let group = nh / nkv;
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(TrainError::Config(format!(
                "token id {t} is outside the model's vocabulary of {}",
                cfg.vocab_size
            )));
        }
        let positions: Vec<u32> = (0..len as u32).collect();
        let (cos, sin) = self.rope.cos_sin(&positions, self.dtype, dev)?;
        let cos = Tensor::cat(&[&cos, &cos], 1)?;
        let sin = Tensor::cat(&[&sin, &sin], 1)?;
        let mask: Vec<f32> = (0..len)
            .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (len, len), dev)?.to_dtype(self.dtype)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let ids_t = Tensor::from_slice(ids, n * len, dev)?;
        let mut x = self.embed.get(grad).index_select(&ids_t, 0)?;
        for layer in &self.layers {
            let h = self.rms_norm(&x, &layer.input_norm, grad)?;
            let heads = |t: Target, count: usize| -> Result<Tensor> {
                let y = self.linear(layer.lin(t), &h, grad)?;
                Ok(y.reshape((n, len, count, hd))?.transpose(1, 2)?.contiguous()?)
            };
            let q = Self::rope(&heads(Target::Q, nh)?, &cos, &sin)?;
            let k = Self::rope(&heads(Target::K, nkv)?, &cos, &sin)?;
            let v = heads(Target::V, nkv)?;
            // Query heads sharing a KV head are adjacent: [n, nh, len, hd] -> [n, nkv, group*len, hd].
            let q = q.reshape((n, nkv, group * len, hd))?;
            let att = (q.matmul(&k.t()?)? * scale)?;
            let att = att.reshape((n, nkv, group, len, len))?.broadcast_add(&mask)?;
            let max = att.max_keepdim(D::Minus1)?.detach();
            let e = att.broadcast_sub(&max)?.exp()?;
            let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.reshape((n, nkv, group * len, len))?;
            let o = p.matmul(&v)?; // [n, nkv, group*len, hd]
            let o = o.reshape((n, nh, len, hd))?.transpose(1, 2)?.reshape((n * len, nh * hd))?;
            x = (x + self.linear(layer.lin(Target::O), &o, grad)?)?;
            let h = self.rms_norm(&x, &layer.post_norm, grad)?;
            let g = self.linear(layer.lin(Target::Gate), &h, grad)?;
            let u = self.linear(layer.lin(Target::Up), &h, grad)?;
            let m = (g.silu()? * u)?;
            x = (x + self.linear(layer.lin(Target::Down), &m, grad)?)?;
        }
        Ok(x)
    }

    fn head(&self, x: &Tensor, grad: bool) -> Result<Tensor> {
        let x = self.rms_norm(x, &self.norm, grad)?;
        let w = self.lm_head.as_ref().unwrap_or(&self.embed);
        Ok(match w {
            W::Frozen(w) => frozen_matmul(&x, w)?,
            W::Train(_) => x.matmul(&w.get(grad).t()?)?,
        })
    }

    /// Logits `[len, vocab]` at every position of one sequence (no gradient tracking): what the
    /// serving engine's `forward_full` computes.
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor> {
        let x = self.trunk(tokens, 1, tokens.len(), false)?;
        Ok(self.head(&x, false)?.to_dtype(DType::F32)?)
    }

    /// Per sequence, the summed log-probability of its response tokens `[n]`. With `grad`, the
    /// result is connected to the trainable parameters.
    pub fn response_logprobs(&self, batch: &SeqBatch, grad: bool) -> Result<Tensor> {
        let dev = &self.device;
        if batch.rows.is_empty() {
            return Ok(Tensor::zeros(batch.n, self.dtype, dev)?);
        }
        let x = self.trunk(&batch.ids, batch.n, batch.len, grad)?;
        let m = batch.rows.len();
        let rows = Tensor::from_slice(&batch.rows, m, dev)?;
        let logits = self.head(&x.index_select(&rows, 0)?, grad)?; // [m, vocab]
        let max = logits.max_keepdim(1)?.detach();
        let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + max)?;
        let targets = Tensor::from_slice(&batch.targets, (m, 1), dev)?;
        let lp = (logits.gather(&targets, 1)? - lse)?.squeeze(1)?; // [m]
        let seq = Tensor::from_slice(&batch.seq_of_row, m, dev)?;
        Ok(Tensor::zeros(batch.n, self.dtype, dev)?.index_add(&seq, &lp, 0)?)
    }
}
