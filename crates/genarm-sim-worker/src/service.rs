//! [`SimService`]: the `genarm.v1.Worker` protocol over a [`RowBank`]. It keeps every sequence's
//! length as a real worker keeps its KV (so replays, releases and KV exhaustion behave as the
//! protocol says), serializes steps as one GPU engine does, waits the simulated forward time, and
//! answers each sequence with its recorded row.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use genarm_fusion::WireDtype;
use genarm_proto::v1::seq_result::Outcome;
use genarm_proto::v1::worker_server::Worker;
use genarm_proto::v1::{
    FetchRowsRequest, InfoRequest, InfoResponse, LogitsDtype, LogitsWire, ReleaseRequest, ReleaseResponse,
    Role, SeqError, SeqErrorCode, SeqResult, StatsRequest, StatsResponse, StepRequest, StepResponse,
    PROTOCOL_VERSION,
};
use tonic::{Request, Response, Status};

use crate::args::{SimArgs, SimRole};
use crate::rows::RowBank;
use crate::vocab::{tokenizer_json, SIM_EOS_ID};

/// The simulated KV block size reported in `Info` and `Stats`.
const BLOCK: u64 = 16;

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
    /// Sequence id → tokens held.
    seqs: Mutex<HashMap<u64, u32>>,
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
            // The full wire only, for now: a router on the sparse wire refuses it at connect time.
            logits_wires: vec![LogitsWire::Full as i32],
            chat_template,
            bos_token_id: None,
            eos_token_ids: vec![SIM_EOS_ID],
            add_bos_token: false,
            instance_id: uuid::Uuid::new_v4().to_string(),
        };
        Ok(SimService {
            shared: Arc::new(Shared {
                info,
                bank,
                args,
                seqs: Mutex::new(HashMap::new()),
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
        if req.reward_name != sh.info.reward_name {
            return Err(Status::invalid_argument(format!(
                "this simulated worker serves reward name {:?}, the step is for {:?}",
                sh.info.reward_name, req.reward_name
            )));
        }
        let dtype = match LogitsDtype::try_from(req.logits_dtype) {
            Ok(LogitsDtype::F32) => WireDtype::F32,
            Ok(LogitsDtype::Bf16) => WireDtype::Bf16,
            Ok(LogitsDtype::F16) => WireDtype::F16,
            Err(_) => {
                return Err(Status::invalid_argument(format!("unknown logits dtype {}", req.logits_dtype)))
            }
        };
        let vocab = sh.args.vocab_size;
        let len = match req.logits_len as usize {
            0 => vocab,
            n if n <= vocab => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "logits_len {n} exceeds the vocab size {vocab}"
                )))
            }
        };
        let _engine = sh.engine.lock().await;
        let forward = sh.args.forward_time(req.seqs.len());
        tokio::time::sleep(forward).await;
        let mut results = Vec::with_capacity(req.seqs.len());
        let mut tokens = 0u64;
        {
            let mut seqs = sh.seqs.lock().unwrap_or_else(|e| e.into_inner());
            let mut held: u64 = seqs.values().map(|&n| u64::from(n)).sum();
            for s in req.seqs {
                let outcome = match admit(
                    &mut seqs,
                    &mut held,
                    &s,
                    sh.args.kv_capacity_tokens,
                    sh.args.max_positions,
                ) {
                    Ok(new_len) => {
                        tokens += s.tokens.len() as u64;
                        let index = sh.bank.index(sh.args.seed, s.seq_id, u64::from(new_len));
                        Outcome::Logits(sh.bank.packed(index, dtype, len))
                    }
                    Err((code, message)) => Outcome::Error(SeqError { code: code as i32, message }),
                };
                results.push(SeqResult { seq_id: s.seq_id, outcome: Some(outcome) });
            }
        }
        let mut c = sh.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.steps += 1;
        c.sequence_steps += results.len() as u64;
        c.tokens += tokens;
        Ok(StepResponse { results, forward_micros: forward.as_micros() as u64 })
    }

    /// Frees sequences; unknown ids are ignored.
    pub fn handle_release(&self, req: ReleaseRequest) -> ReleaseResponse {
        let mut seqs = self.shared.seqs.lock().unwrap_or_else(|e| e.into_inner());
        let released = req.seq_ids.iter().filter(|id| seqs.remove(id).is_some()).count();
        ReleaseResponse { released: released as u32 }
    }

    /// The counters and the simulated KV use.
    pub fn handle_stats(&self) -> StatsResponse {
        let seqs = self.shared.seqs.lock().unwrap_or_else(|e| e.into_inner());
        let used: u64 = seqs.values().map(|&n| u64::from(n).div_ceil(BLOCK)).sum();
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
        }
    }
}

/// Checks one sequence of a step against what is held and grows it; its new length, or the
/// protocol's error for it.
fn admit(
    seqs: &mut HashMap<u64, u32>,
    held: &mut u64,
    s: &genarm_proto::v1::SeqStep,
    capacity: u64,
    max_positions: u32,
) -> Result<u32, (SeqErrorCode, String)> {
    let id = s.seq_id;
    if s.tokens.is_empty() {
        return Err((SeqErrorCode::Invalid, format!("sequence {id}: a step needs at least one new token")));
    }
    let have = seqs.get(&id).copied();
    match (have, s.start_pos) {
        (None, 0) => {}
        (None, p) => {
            return Err((SeqErrorCode::UnknownSequence, format!("sequence {id} is unknown (start_pos {p})")));
        }
        (Some(n), p) if n != p => {
            return Err((
                SeqErrorCode::PositionMismatch,
                format!("sequence {id} holds {n} tokens, the step starts at {p}"),
            ));
        }
        (Some(_), _) => {}
    }
    let new_len = s.start_pos as u64 + s.tokens.len() as u64;
    if new_len > u64::from(max_positions) {
        return Err((
            SeqErrorCode::Invalid,
            format!("sequence {id}: {new_len} positions exceed {max_positions}"),
        ));
    }
    if *held + s.tokens.len() as u64 > capacity {
        return Err((
            SeqErrorCode::KvExhausted,
            format!("the simulated KV cache of {capacity} tokens is full"),
        ));
    }
    *held += s.tokens.len() as u64;
    seqs.insert(id, new_len as u32);
    Ok(new_len as u32)
}

#[tonic::async_trait]
impl Worker for SimService {
    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(self.shared.info.clone()))
    }

    async fn step(&self, request: Request<StepRequest>) -> Result<Response<StepResponse>, Status> {
        self.handle_step(request.into_inner()).await.map(Response::new)
    }

    async fn fetch_rows(
        &self,
        _request: Request<FetchRowsRequest>,
    ) -> Result<Response<StepResponse>, Status> {
        Err(Status::unimplemented(
            "genarm-sim-worker answers with the full logits wire only (its Info lists no sparse wire): \
             run the router with --logits-wire full",
        ))
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        Ok(Response::new(self.handle_release(request.into_inner())))
    }

    async fn stats(&self, _request: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        Ok(Response::new(self.handle_stats()))
    }
}
