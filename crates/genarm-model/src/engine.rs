//! The engine: a model split over tensor-parallel rank threads, a block KV cache, and the
//! batched step API that workers serve.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::assets::ModelAssets;
use crate::attention::AttentionKernel;
use crate::communicator::{Communicator, LocalCommunicator, SingleRank};
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::kv_cache::{Admitted, BlockTable, KvUsage};
use crate::layers::ShardLoader;
use crate::model::{check_tp, tensor_count, Batch, KvStorage, SeqSpan, ShardModel};
use crate::progress::LoadProgress;
use crate::step::{StepError, StepOutput, StepSeq};
use crate::step_plan::StepPlan;

/// Where the ranks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// Every rank on the CPU.
    Cpu,
    /// Rank r on CUDA device `first + r` (needs the `cuda` feature).
    Cuda(usize),
}

/// How to load and run a model.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Device of the ranks.
    pub device: DeviceSpec,
    /// Compute and storage dtype of weights and KV (logits are always returned in f32).
    pub dtype: DType,
    /// Tensor-parallel degree: number of ranks.
    pub tp: usize,
    /// KV pool capacity in tokens (rounded up to whole blocks), shared by all sequences.
    pub kv_capacity_tokens: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Attention implementation (the gather path is the paged kernel's oracle and baseline).
    pub attention: AttentionKernel,
    /// Keep full KV blocks in a prefix cache and reuse them for sequences that start with the
    /// same tokens (see [`BlockTable`]).
    pub prefix_cache: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            device: DeviceSpec::Cpu,
            dtype: DType::F32,
            tp: 1,
            kv_capacity_tokens: 4096,
            block_size: 16,
            attention: AttentionKernel::default(),
            prefix_cache: true,
        }
    }
}

enum Command {
    Forward { batch: Arc<Batch>, plan: Arc<StepPlan>, cached: bool, reply: mpsc::Sender<Result<Tensor>> },
    SetAttention { kernel: AttentionKernel, reply: mpsc::Sender<AttentionKernel> },
}

struct RankHandle {
    tx: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

/// A loaded model ready to serve batched steps.
pub struct Engine {
    config: LlamaConfig,
    options: EngineOptions,
    ranks: Vec<RankHandle>,
    table: Mutex<BlockTable>,
    /// Keys the prefix cache: blocks computed under other weights never match.
    identity: u64,
}

impl Engine {
    /// Loads `assets` over `options.tp` rank threads and preallocates the KV pool.
    pub fn load(assets: &ModelAssets, options: EngineOptions) -> Result<Self> {
        let cfg = assets.config.clone();
        let world = options.tp;
        check_tp(&cfg, world)?;
        let total_blocks = options.kv_capacity_tokens.div_ceil(options.block_size.max(1));
        let comms: Vec<Box<dyn Communicator>> = match (options.device, world) {
            (_, 1) => vec![Box::new(SingleRank)],
            (DeviceSpec::Cpu, _) => LocalCommunicator::group(world)
                .into_iter()
                .map(|c| Box::new(c) as Box<dyn Communicator>)
                .collect(),
            (DeviceSpec::Cuda(first), _) => nccl_group(first, world)?,
        };
        let progress =
            Arc::new(LoadProgress::new(tensor_count(&cfg), &format!("loading {}", assets.model_id)));
        let mut ranks = Vec::with_capacity(world);
        let mut ready = Vec::with_capacity(world);
        for (rank, comm) in comms.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Command>();
            let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
            let src = assets.tensors.clone();
            let cfg = cfg.clone();
            let progress = progress.clone();
            let opts = options.clone();
            let thread = std::thread::Builder::new()
                .name(format!("genarm-rank-{rank}"))
                .spawn(move || {
                    let loaded = (|| {
                        let device = rank_device(opts.device, rank)?;
                        let on_tensor = || {
                            if rank == 0 {
                                progress.inc()
                            }
                        };
                        let loader = ShardLoader {
                            src: src.as_ref(),
                            rank,
                            world,
                            dtype: opts.dtype,
                            device: &device,
                            on_tensor: &on_tensor,
                        };
                        let mut model = ShardModel::load(&cfg, &loader, comm)?;
                        model.set_attention(opts.attention);
                        let kv =
                            KvStorage::new(&cfg, world, total_blocks * opts.block_size, opts.dtype, &device)?;
                        Ok((model, kv))
                    })();
                    match loaded {
                        Ok((model, kv)) => {
                            let _ = ready_tx.send(Ok(()));
                            rank_loop(rank, model, kv, rx);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
                .map_err(|e| ModelError::Rank { rank, reason: format!("cannot spawn thread: {e}") })?;
            ranks.push(RankHandle { tx: Some(tx), thread: Some(thread) });
            ready.push(ready_rx);
        }
        let table = if options.prefix_cache {
            BlockTable::with_prefix_cache(total_blocks, options.block_size)
        } else {
            BlockTable::new(total_blocks, options.block_size)
        };
        let engine = Self {
            config: cfg,
            table: Mutex::new(table),
            identity: model_identity(assets, &options),
            options,
            ranks,
        };
        for (rank, rx) in ready.into_iter().enumerate() {
            rx.recv()
                .map_err(|_| ModelError::Rank { rank, reason: "rank thread died while loading".into() })??;
        }
        progress.finish();
        tracing::info!(model = %assets.model_id, tp = world, blocks = total_blocks, "model loaded");
        Ok(engine)
    }

    /// The model's architecture.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The options it was loaded with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Runs one batched step. Each sequence either advances (its logits at the last new
    /// position) or gets a [`StepError`] and is left exactly as it was; the others are unaffected.
    /// An `Err` means the forward itself failed, and no sequence advanced.
    pub fn step(&self, seqs: Vec<StepSeq>) -> Result<StepOutput> {
        let mut table = self.table.lock().expect("kv table lock poisoned");
        let mut results: Vec<Option<std::result::Result<Vec<f32>, StepError>>> = vec![None; seqs.len()];
        let mut admitted: Vec<(usize, Admitted)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, s) in seqs.iter().enumerate() {
            match self
                .validate(s, &mut seen)
                .and_then(|()| table.admit(s.seq_id, s.start_pos, &s.tokens, self.identity))
            {
                Ok(a) => admitted.push((i, a)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if admitted.is_empty() {
            let results: Vec<_> = results.into_iter().map(|r| r.expect("every sequence failed")).collect();
            let cached_tokens = vec![0; results.len()];
            return Ok(StepOutput { results, cached_tokens, forward_time: Default::default() });
        }
        // Decodes first: the model attends to all of them in one padded batch.
        admitted.sort_by_key(|(i, _)| seqs[*i].tokens.len() != 1);
        let mut batch = Batch {
            tokens: Vec::new(),
            positions: Vec::new(),
            seqs: Vec::new(),
            all_logits: false,
            block_size: table.block_size(),
        };
        for (i, a) in &admitted {
            let s = &seqs[*i];
            // Tokens found in the prefix cache are attended to, not computed.
            let (past, tokens) = (s.start_pos + a.reused(), &s.tokens[a.reused()..]);
            batch.seqs.push(SeqSpan {
                offset: batch.tokens.len(),
                len: tokens.len(),
                past,
                blocks: Some(table.blocks(s.seq_id)),
            });
            batch.tokens.extend_from_slice(tokens);
            batch.positions.extend((past..past + tokens.len()).map(|p| p as u32));
        }
        let started = Instant::now();
        let logits = match self.run(batch, true) {
            Ok(l) => l,
            Err(e) => {
                for (_, a) in admitted {
                    table.rollback(a);
                }
                return Err(e);
            }
        };
        let forward_time = started.elapsed();
        let rows: Vec<Vec<f32>> = match logits.to_vec2() {
            Ok(rows) => rows,
            Err(e) => {
                for (_, a) in admitted {
                    table.rollback(a);
                }
                return Err(e.into());
            }
        };
        let mut cached_tokens = vec![0; seqs.len()];
        for ((i, a), row) in admitted.into_iter().zip(rows) {
            cached_tokens[i] = a.reused();
            table.commit(a, &seqs[i].tokens);
            results[i] = Some(Ok(row));
        }
        let results = results.into_iter().map(|r| r.expect("every sequence has a result")).collect();
        Ok(StepOutput { results, cached_tokens, forward_time })
    }

    fn validate(
        &self,
        s: &StepSeq,
        seen: &mut std::collections::HashSet<u64>,
    ) -> std::result::Result<(), StepError> {
        let seq_id = s.seq_id;
        if !seen.insert(seq_id) {
            return Err(StepError::DuplicateSequence { seq_id });
        }
        if s.tokens.is_empty() {
            return Err(StepError::EmptyTokens { seq_id });
        }
        let vocab_size = self.config.vocab_size;
        if let Some(&token) = s.tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(StepError::TokenOutOfRange { seq_id, token, vocab_size });
        }
        let len = s.start_pos + s.tokens.len();
        let max = self.config.max_position_embeddings;
        if len > max {
            return Err(StepError::ContextOverflow { seq_id, len, max });
        }
        Ok(())
    }

    /// Logits `[tokens.len(), vocab]` (f32) at every position of a fresh sequence, computed
    /// without the KV cache: the independent reference for cached decoding.
    pub fn forward_full(&self, tokens: &[u32]) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(StepError::EmptyTokens { seq_id: 0 }.into());
        }
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(
                StepError::TokenOutOfRange { seq_id: 0, token, vocab_size: self.config.vocab_size }.into()
            );
        }
        let batch = Batch {
            tokens: tokens.to_vec(),
            positions: (0..tokens.len() as u32).collect(),
            seqs: vec![SeqSpan { offset: 0, len: tokens.len(), past: 0, blocks: None }],
            all_logits: true,
            block_size: self.options.block_size,
        };
        self.run(batch, false)
    }

    /// Switches the attention implementation of every rank between steps, keeping the cache (so
    /// both kernels can be compared on one state); returns the kernel rank 0 now runs, which is
    /// the gather path where the paged kernel has no implementation for the device.
    /// [`options`](Self::options) keeps reporting the kernel the engine was loaded with.
    pub fn set_attention(&self, kernel: AttentionKernel) -> Result<AttentionKernel> {
        // Holding the table lock keeps the switch between steps, never inside one.
        let _steps = self.table.lock().expect("kv table lock poisoned");
        let mut replies = Vec::with_capacity(self.ranks.len());
        for (rank, r) in self.ranks.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            r.tx.as_ref()
                .expect("rank channel open until drop")
                .send(Command::SetAttention { kernel, reply: tx })
                .map_err(|_| ModelError::Rank { rank, reason: "rank thread has exited".into() })?;
            replies.push(rx);
        }
        let mut first = kernel;
        for (rank, rx) in replies.into_iter().enumerate() {
            let got = rx.recv().map_err(|_| ModelError::Rank { rank, reason: "rank thread died".into() })?;
            if rank == 0 {
                first = got;
            }
        }
        Ok(first)
    }

    /// Frees a sequence's KV blocks; false when it was unknown.
    pub fn release(&self, seq_id: u64) -> bool {
        self.table.lock().expect("kv table lock poisoned").release(seq_id)
    }

    /// Tokens cached for a sequence, if known.
    pub fn sequence_len(&self, seq_id: u64) -> Option<usize> {
        self.table.lock().expect("kv table lock poisoned").len(seq_id)
    }

    /// KV pool occupancy.
    pub fn kv_usage(&self) -> KvUsage {
        self.table.lock().expect("kv table lock poisoned").usage()
    }

    /// Hands the batch to every rank (rank 0 drives, the others follow) and returns rank 0's logits.
    fn run(&self, batch: Batch, cached: bool) -> Result<Tensor> {
        // The step's plan is built once here and shared by every rank and layer.
        let plan = Arc::new(StepPlan::new(&batch));
        let batch = Arc::new(batch);
        let mut replies = Vec::with_capacity(self.ranks.len());
        for (rank, r) in self.ranks.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let cmd = Command::Forward { batch: batch.clone(), plan: plan.clone(), cached, reply: tx };
            r.tx.as_ref()
                .expect("rank channel open until drop")
                .send(cmd)
                .map_err(|_| ModelError::Rank { rank, reason: "rank thread has exited".into() })?;
            replies.push(rx);
        }
        let mut first = None;
        for (rank, rx) in replies.into_iter().enumerate() {
            let out = rx.recv().map_err(|_| ModelError::Rank { rank, reason: "rank thread died".into() })?;
            match (rank, out) {
                (0, Ok(t)) => first = Some(t),
                (_, Ok(_)) => {}
                (_, Err(e)) => return Err(e),
            }
        }
        Ok(first.expect("rank 0 replied"))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for r in &mut self.ranks {
            r.tx.take();
        }
        for r in &mut self.ranks {
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn rank_loop(rank: usize, mut model: ShardModel, kv: KvStorage, rx: mpsc::Receiver<Command>) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::Forward { batch, plan, cached, reply } => {
                let out = model.forward(&batch, &plan, cached.then_some(&kv));
                if let Err(e) = &out {
                    tracing::error!(rank, error = %e, "forward failed");
                    model.comm().abort();
                }
                let _ = reply.send(out);
            }
            Command::SetAttention { kernel, reply } => {
                model.set_attention(kernel);
                let _ = reply.send(model.attention_kernel());
            }
        }
    }
}

/// What the prefix cache keys blocks by, besides their tokens: the weights (model and merged
/// adapter, named by where they were loaded from) and everything that changes their K/V values.
fn model_identity(assets: &ModelAssets, options: &EngineOptions) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    assets.model_id.hash(&mut h);
    assets.path.hash(&mut h);
    format!("{:?}", options.dtype).hash(&mut h);
    options.tp.hash(&mut h);
    h.finish()
}

fn rank_device(spec: DeviceSpec, rank: usize) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(first) => Device::new_cuda(first + rank).map_err(|e| ModelError::Rank {
            rank,
            reason: format!(
                "cannot open CUDA device {}: {e} ({})",
                first + rank,
                if cfg!(feature = "cuda") {
                    "is that GPU visible to this process and the NVIDIA driver loaded?"
                } else {
                    "this build has no CUDA: build with --features cuda"
                }
            ),
        }),
    }
}

#[cfg(feature = "cuda")]
fn nccl_group(first: usize, world: usize) -> Result<Vec<Box<dyn Communicator>>> {
    use crate::communicator::NcclCommunicator;
    // ncclCommInitRank blocks until every rank joins, so each joins from its own thread.
    let id = NcclCommunicator::new_id()?;
    let joins: Vec<_> = (0..world)
        .map(|rank| {
            // `Id` is `Copy`: each thread moves in its own copy.
            std::thread::spawn(move || -> Result<NcclCommunicator> {
                let device = rank_device(DeviceSpec::Cuda(first), rank)?;
                NcclCommunicator::join(&device, rank, world, id)
            })
        })
        .collect();
    joins
        .into_iter()
        .enumerate()
        .map(|(rank, j)| {
            let c = j
                .join()
                .map_err(|_| ModelError::Rank { rank, reason: "NCCL init thread panicked".into() })??;
            Ok(Box::new(c) as Box<dyn Communicator>)
        })
        .collect()
}

#[cfg(not(feature = "cuda"))]
fn nccl_group(_first: usize, _world: usize) -> Result<Vec<Box<dyn Communicator>>> {
    Err(ModelError::Rank {
        rank: 0,
        reason: "tensor parallelism on CUDA needs NCCL: rebuild with --features cuda".into(),
    })
}
