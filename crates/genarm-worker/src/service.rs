//! [`WorkerService`]: the `genarm.v1.Worker` gRPC service over one engine. `Info` answers from
//! the start; `Step`, `Release` and `Stats` answer UNAVAILABLE until the engine is loaded and
//! warmed ([`WorkerService::set_engine`]).

use std::sync::{Arc, OnceLock};

use genarm_model::Engine;
use genarm_proto::v1::worker_server::Worker;
use genarm_proto::v1::{
    InfoRequest, InfoResponse, ReleaseRequest, ReleaseResponse, StatsRequest, StatsResponse, StepRequest,
    StepResponse,
};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::role::WorkerRole;
use crate::stats::{CountersSnapshot, StepCounters};
use crate::step::{execute_step, prepare_step};

struct Shared {
    engine: OnceLock<Engine>,
    info: InfoResponse,
    role: WorkerRole,
    counters: StepCounters,
}

/// The worker protocol's implementation; cheap to clone (all clones share one engine).
#[derive(Clone)]
pub struct WorkerService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WorkerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerService")
            .field("model_id", &self.shared.info.model_id)
            .field("role", &self.shared.role)
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl WorkerService {
    /// A service answering `Info` with `info`, for `role`, with no engine yet.
    pub fn new(info: InfoResponse, role: WorkerRole) -> Self {
        Self {
            shared: Arc::new(Shared {
                engine: OnceLock::new(),
                info,
                role,
                counters: StepCounters::default(),
            }),
        }
    }

    /// Installs the loaded and warmed engine; from now on steps are served. False (and `engine`
    /// is dropped) if one was installed already.
    pub fn set_engine(&self, engine: Engine) -> bool {
        self.shared.engine.set(engine).is_ok()
    }

    /// Whether the engine is installed.
    pub fn is_ready(&self) -> bool {
        self.shared.engine.get().is_some()
    }

    /// The step counters.
    pub fn counters(&self) -> CountersSnapshot {
        self.shared.counters.snapshot()
    }

    /// The `Info` response.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn handle_info(&self) -> InfoResponse {
        self.shared.info.clone()
    }

    /// Serves one `Step`: checks the request, runs the batched forward on a blocking thread (the
    /// engine serialises steps), packs each sequence's logits.
    #[tracing::instrument(level = "debug", skip_all, fields(seqs = req.seqs.len(), reward_name = %req.reward_name))]
    pub async fn handle_step(&self, req: StepRequest) -> Result<StepResponse, Status> {
        self.shared.counters.record_call();
        let engine = self.engine()?;
        let vocab = engine.config().vocab_size;
        let prepared = prepare_step(req, &self.shared.role, vocab)?;
        let n_seqs = prepared.seqs.len();
        let n_tokens: usize = prepared.seqs.iter().map(|s| s.tokens.len()).sum();
        let shared = self.shared.clone();
        let resp = tokio::task::spawn_blocking(move || {
            let engine = shared.engine.get().expect("checked before spawning");
            execute_step(engine, prepared, &shared.counters)
        })
        .await
        .map_err(|e| Status::internal(format!("the step task failed: {e}")))??;
        tracing::debug!(forward_micros = resp.forward_micros, "step served");
        crate::metrics::record_step(std::time::Duration::from_micros(resp.forward_micros), n_seqs, n_tokens);
        Ok(resp)
    }

    /// Frees the given sequences; unknown ids are ignored. Returns how many were held.
    #[tracing::instrument(level = "debug", skip_all, fields(seqs = req.seq_ids.len()))]
    pub async fn handle_release(&self, req: ReleaseRequest) -> Result<ReleaseResponse, Status> {
        self.engine()?;
        let shared = self.shared.clone();
        // Waits for a running step to finish (the engine holds its table during a forward).
        let released = tokio::task::spawn_blocking(move || {
            let engine = shared.engine.get().expect("checked before spawning");
            req.seq_ids.iter().filter(|&&id| engine.release(id)).count() as u32
        })
        .await
        .map_err(|e| Status::internal(format!("the release task failed: {e}")))?;
        Ok(ReleaseResponse { released })
    }

    /// Counters and KV occupancy.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn handle_stats(&self) -> Result<StatsResponse, Status> {
        self.engine()?;
        let shared = self.shared.clone();
        let kv = tokio::task::spawn_blocking(move || {
            shared.engine.get().expect("checked before spawning").kv_usage()
        })
        .await
        .map_err(|e| Status::internal(format!("the stats task failed: {e}")))?;
        let c = self.counters();
        Ok(StatsResponse {
            steps: c.steps,
            sequence_steps: c.sequence_steps,
            tokens: c.tokens,
            kv_used_blocks: kv.used_blocks as u64,
            kv_total_blocks: kv.total_blocks as u64,
            kv_block_size: kv.block_size as u32,
            sequences: kv.sequences as u32,
        })
    }

    fn engine(&self) -> Result<&Engine, Status> {
        self.shared.engine.get().ok_or_else(|| {
            Status::unavailable(format!(
                "model {} is still loading; wait until grpc.health.v1 reports SERVING",
                self.shared.info.model_id
            ))
        })
    }
}

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let span = tracing::info_span!("worker.info");
        genarm_telemetry::set_parent_from(&span, request.metadata());
        Ok(Response::new(self.handle_info().instrument(span).await))
    }

    async fn step(&self, request: Request<StepRequest>) -> Result<Response<StepResponse>, Status> {
        let span = tracing::info_span!("worker.step", seqs = request.get_ref().seqs.len());
        genarm_telemetry::set_parent_from(&span, request.metadata());
        self.handle_step(request.into_inner()).instrument(span).await.map(Response::new)
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        let span = tracing::info_span!("worker.release", seqs = request.get_ref().seq_ids.len());
        genarm_telemetry::set_parent_from(&span, request.metadata());
        self.handle_release(request.into_inner()).instrument(span).await.map(Response::new)
    }

    async fn stats(&self, _request: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        self.handle_stats().await.map(Response::new)
    }
}
