//! [`SimService`]: the `genarm.v1.Worker` protocol over a [`RowBank`]. It keeps every sequence's
//! length as a real worker keeps its KV (so replays, releases and KV exhaustion behave as the
//! protocol says), serializes steps as one GPU engine does, waits the simulated forward time, and
//! answers each sequence with its recorded row — in full, or on the sparse wire as its
//! certificate, the row then served by `FetchRows` until the sequence's next step — with the
//! request checks of `genarm-worker` itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use genarm_proto::v1::seq_result::Outcome;
use genarm_proto::v1::worker_server::Worker;
use genarm_proto::v1::{
    FetchRowsRequest, InfoRequest, InfoResponse, LogitsWire, ReleaseRequest, ReleaseResponse, Role, SeqError,
    SeqErrorCode, SeqResult, StatsRequest, StatsResponse, StepRequest, StepResponse, PROTOCOL_VERSION,
};
use genarm_worker::role::WorkerRole;
use genarm_worker::rows::{no_kept_row, wrong_length};
use genarm_worker::step::{prepare_fetch, prepare_step, FetchWhat, StepWire};
use tonic::{Request, Response, Status};

use crate::args::{SimArgs, SimRole};
use crate::rows::RowBank;
use crate::vocab::{tokenizer_json, SIM_EOS_ID};

/// The simulated KV block size reported in `Info` and `Stats`.
const BLOCK: u64 = 16;

/// What a simulated sequence holds in place of its KV: its length and a hash of its tokens, which
/// picks its rows — so a sequence's rows follow from its content, as a real model's do: two
/// routers (or a replay) that send the same tokens get the same rows, whatever the sequence ids.
#[derive(Debug, Clone, Copy)]
struct Held {
    len: u32,
    history: u64,
}

#[derive(Default)]
struct Counters {
    steps: u64,
    sequence_steps: u64,
    tokens: u64,
}

struct Shared {
    info: InfoResponse,
    bank: RowBank,
    args: SimArgs,
    /// What `Step` and `FetchRows` check the reward name against.
    role: WorkerRole,
    /// Sequence id → what it holds.
    seqs: Mutex<HashMap<u64, Held>>,
    /// Sequence id → (row index, logits_len) of its last step, when that step was sparse: what
    /// `FetchRows` answers.
    kept: Mutex<HashMap<u64, (usize, usize)>>,
    counters: Mutex<Counters>,
    /// One step at a time, as on one engine.
    engine: tokio::sync::Mutex<()>,
}

/// The simulation worker's gRPC service; cheap to clone.
#[derive(Clone)]
pub struct SimService {
    shared: Arc<Shared>,
}

impl SimService {
    /// A service for `args` answering with `bank`.
    pub fn new(args: SimArgs, bank: RowBank) -> Result<Self, String> {
        let reward_name = args.reward_name()?.to_string();
        let tokenizer = tokenizer_json(args.vocab_size);
        let chat_template = args.chat_template();
        let text = genarm_text::ModelText::new(
            &args.model_id(),
            &tokenizer,
            chat_template.clone(),
            None,
            vec![SIM_EOS_ID],
            false,
        )
        .map_err(|e| e.to_string())?;
        if chat_template.is_some() {
            text.check_chat_template().map_err(|e| format!("--chat-template: {e}"))?;
        }
        let vocab = u32::try_from(args.vocab_size).map_err(|_| "--vocab-size is too large".to_string())?;
        let info = InfoResponse {
            protocol_version: PROTOCOL_VERSION,
            model_id: args.model_id(),
            role: match args.role {
                SimRole::Base => Role::Base,
                SimRole::Reward => Role::Reward,
            } as i32,
            reward_name,
            vocab_size: vocab,
            vocab_fingerprint: text.fingerprint(args.vocab_size).to_vec(),
            max_positions: args.max_positions,
            dtype: "sim".into(),
            tp_size: 1,
            kv_capacity_tokens: args.kv_capacity_tokens,
            kv_block_size: BLOCK as u32,
            tokenizer_json: tokenizer,
            logits_wires: vec![LogitsWire::Full as i32, LogitsWire::Sparse as i32],
            chat_template,
            bos_token_id: None,
            eos_token_ids: vec![SIM_EOS_ID],
            add_bos_token: false,
            instance_id: uuid::Uuid::new_v4().to_string(),
            // The simulator models forward time, not compute: it has nothing to reuse.
            prefix_cache: false,
        };
        let role = match args.role {
            SimRole::Base => WorkerRole::Base,
            SimRole::Reward => WorkerRole::Reward { name: info.reward_name.clone() },
        };
        Ok(SimService {
            shared: Arc::new(Shared {
                info,
                bank,
                args,
                role,
                seqs: Mutex::new(HashMap::new()),
                kept: Mutex::new(HashMap::new()),
                counters: Mutex::new(Counters::default()),
                engine: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The `Info` answer.
    pub fn info(&self) -> &InfoResponse {
        &self.shared.info
    }

    /// One step (see the module docs).
    pub async fn handle_step(&self, req: StepRequest) -> Result<StepResponse, Status> {
        let sh = &self.shared;
        let step = prepare_step(req, &sh.role, sh.args.vocab_size)?;
        let (dtype, len) = (step.dtype, step.logits_len);
        let _engine = sh.engine.lock().await;
        let forward = sh.args.forward_time(step.seqs.len());
        tokio::time::sleep(forward).await;
        let mut results = Vec::with_capacity(step.seqs.len());
        let mut tokens = 0u64;
        {
            let mut seqs = sh.seqs.lock().unwrap_or_else(|e| e.into_inner());
            let mut kept = sh.kept.lock().unwrap_or_else(|e| e.into_inner());
            let mut held: u64 = seqs.values().map(|h| u64::from(h.len)).sum();
            for s in step.seqs {
                let admitted = admit(
                    &mut seqs,
                    &mut held,
                    (s.seq_id, s.start_pos, &s.tokens),
                    sh.args.kv_capacity_tokens,
                    sh.args.max_positions,
                );
                // Only a sparse step that advanced the sequence leaves a row to fetch.
                kept.remove(&s.seq_id);
                let outcome = match admitted {
                    Ok(history) => {
                        tokens += s.tokens.len() as u64;
                        let index = sh.bank.index(sh.args.seed, history);
                        match step.wire {
                            StepWire::Full => Outcome::Logits(sh.bank.packed(index, dtype, len)),
                            StepWire::Sparse { candidates } => {
                                kept.insert(s.seq_id, (index, len));
                                sh.bank.sparse(index, candidates, len, dtype)
                            }
                        }
                    }
                    Err((code, message)) => Outcome::Error(SeqError { code: code as i32, message }),
                };
                results.push(SeqResult { seq_id: s.seq_id, outcome: Some(outcome), cached_tokens: 0 });
            }
        }
        let mut c = sh.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.steps += 1;
        c.sequence_steps += results.len() as u64;
        c.tokens += tokens;
        Ok(StepResponse { results, forward_micros: forward.as_micros() as u64 })
    }

    /// One `FetchRows`: per sequence, the full row of its last step when that step was sparse, or
    /// a refined certificate of it.
    pub fn handle_fetch(&self, req: FetchRowsRequest) -> Result<StepResponse, Status> {
        let sh = &self.shared;
        let fetch = prepare_fetch(req, &sh.role, sh.args.vocab_size)?;
        let kept = sh.kept.lock().unwrap_or_else(|e| e.into_inner());
        let results = fetch
            .seq_ids
            .iter()
            .enumerate()
            .map(|(i, &seq_id)| {
                let outcome = match kept.get(&seq_id) {
                    Some(&(index, len)) if len == fetch.logits_len => match &fetch.what {
                        FetchWhat::Rows => Outcome::Logits(sh.bank.packed(index, fetch.dtype, len)),
                        FetchWhat::Certificates { candidates, .. } => {
                            sh.bank.refined(index, *candidates, len, fetch.extras(i), fetch.dtype)
                        }
                    },
                    Some(&(_, len)) => wrong_length(seq_id, len, fetch.logits_len),
                    None => no_kept_row(seq_id),
                };
                SeqResult { seq_id, outcome: Some(outcome), cached_tokens: 0 }
            })
            .collect();
        Ok(StepResponse { results, forward_micros: 0 })
    }

    /// Frees sequences; unknown ids are ignored.
    pub fn handle_release(&self, req: ReleaseRequest) -> ReleaseResponse {
        let mut seqs = self.shared.seqs.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = self.shared.kept.lock().unwrap_or_else(|e| e.into_inner());
        let released = req
            .seq_ids
            .iter()
            .filter(|&id| {
                kept.remove(id);
                seqs.remove(id).is_some()
            })
            .count();
        ReleaseResponse { released: released as u32 }
    }

    /// The counters and the simulated KV use.
    pub fn handle_stats(&self) -> StatsResponse {
        let seqs = self.shared.seqs.lock().unwrap_or_else(|e| e.into_inner());
        let used: u64 = seqs.values().map(|h| u64::from(h.len).div_ceil(BLOCK)).sum();
        let c = self.shared.counters.lock().unwrap_or_else(|e| e.into_inner());
        StatsResponse {
            steps: c.steps,
            sequence_steps: c.sequence_steps,
            tokens: c.tokens,
            kv_used_blocks: used,
            kv_total_blocks: self.shared.args.kv_capacity_tokens / BLOCK,
            kv_block_size: BLOCK as u32,
            sequences: seqs.len() as u32,
            orphans_released: 0,
            ..Default::default()
        }
    }
}

/// Checks one sequence of a step against what is held and grows it; the hash of its tokens so
/// far, or the protocol's error for it.
fn admit(
    seqs: &mut HashMap<u64, Held>,
    held: &mut u64,
    (id, start_pos, new_tokens): (u64, usize, &[u32]),
    capacity: u64,
    max_positions: u32,
) -> Result<u64, (SeqErrorCode, String)> {
    if new_tokens.is_empty() {
        return Err((SeqErrorCode::Invalid, format!("sequence {id}: a step needs at least one new token")));
    }
    let have = seqs.get(&id).copied();
    let history = match (have, start_pos) {
        (None, 0) => 0,
        (None, p) => {
            return Err((SeqErrorCode::UnknownSequence, format!("sequence {id} is unknown (start_pos {p})")));
        }
        (Some(h), p) if h.len as usize != p => {
            return Err((
                SeqErrorCode::PositionMismatch,
                format!("sequence {id} holds {} tokens, the step starts at {p}", h.len),
            ));
        }
        (Some(h), _) => h.history,
    };
    let new_len = (start_pos + new_tokens.len()) as u64;
    if new_len > u64::from(max_positions) {
        return Err((
            SeqErrorCode::Invalid,
            format!("sequence {id}: {new_len} positions exceed {max_positions}"),
        ));
    }
    if *held + new_tokens.len() as u64 > capacity {
        return Err((
            SeqErrorCode::KvExhausted,
            format!("the simulated KV cache of {capacity} tokens is full"),
        ));
    }
    *held += new_tokens.len() as u64;
    let history = new_tokens.iter().fold(history, |h, &t| fold_token(h, t));
    seqs.insert(id, Held { len: new_len as u32, history });
    Ok(history)
}

/// One more token folded into a sequence's history hash.
fn fold_token(history: u64, token: u32) -> u64 {
    genarm_fusion::rng::SplitMix64::new(history ^ u64::from(token).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .next_u64()
}

#[tonic::async_trait]
impl Worker for SimService {
    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(self.shared.info.clone()))
    }

    async fn step(&self, request: Request<StepRequest>) -> Result<Response<StepResponse>, Status> {
        self.handle_step(request.into_inner()).await.map(Response::new)
    }

    async fn fetch_rows(&self, request: Request<FetchRowsRequest>) -> Result<Response<StepResponse>, Status> {
        self.handle_fetch(request.into_inner()).map(Response::new)
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        Ok(Response::new(self.handle_release(request.into_inner())))
    }

    async fn stats(&self, _request: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        Ok(Response::new(self.handle_stats()))
    }
}
