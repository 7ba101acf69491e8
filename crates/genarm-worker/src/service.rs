//! [`WorkerService`]: the `genarm.v1.Worker` gRPC service over one engine. `Info` answers from
//! the start; `Step`, `Release`, `Stats` and `FetchRows` answer UNAVAILABLE until the engine is
//! loaded and warmed ([`WorkerService::set_engine`]). A sequence no step has reached for the
//! orphan timeout (a router that stopped or restarted left it behind) is released by a
//! background sweep ([`WorkerService::spawn_orphan_sweeper`]). Sparse-wire steps keep each
//! sequence's row for `FetchRows` ([`KeptRows`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use genarm_model::Engine;
use genarm_proto::v1::worker_server::Worker;
use genarm_proto::v1::{
    FetchRowsRequest, InfoRequest, InfoResponse, ReleaseRequest, ReleaseResponse, StatsRequest,
    StatsResponse, StepRequest, StepResponse,
};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::role::WorkerRole;
use crate::rows::packed_row;
use crate::rows::KeptRows;
use crate::stats::{CountersSnapshot, StepCounters};
use crate::step::{execute_step, prepare_fetch, prepare_step, refined_outcome, FetchWhat};

struct Shared {
    engine: OnceLock<Engine>,
    info: InfoResponse,
    role: WorkerRole,
    counters: StepCounters,
    /// Sequence id → when a step last named it; removed on release (see [`WorkerService::sweep_orphans`]).
    last_step: Mutex<HashMap<u64, Instant>>,
    /// The rows of the sequences whose last step was sparse, for `FetchRows`.
    kept: KeptRows,
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
                last_step: Mutex::new(HashMap::new()),
                kept: KeptRows::default(),
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
        self.touch(prepared.seqs.iter().map(|s| s.seq_id));
        let n_seqs = prepared.seqs.len();
        let n_tokens: usize = prepared.seqs.iter().map(|s| s.tokens.len()).sum();
        let ids: Vec<u64> = prepared.seqs.iter().map(|s| s.seq_id).collect();
        let shared = self.shared.clone();
        let resp = tokio::task::spawn_blocking(move || {
            let engine = shared.engine.get().expect("checked before spawning");
            execute_step(engine, prepared, &shared.counters, &shared.kept)
        })
        .await
        .map_err(|e| Status::internal(format!("the step task failed: {e}")))??;
        // Again after the forward, which may have taken long.
        self.touch(ids);
        tracing::debug!(forward_micros = resp.forward_micros, "step served");
        crate::metrics::record_step(Duration::from_micros(resp.forward_micros), n_seqs, n_tokens);
        Ok(resp)
    }

    /// Frees the given sequences; unknown ids are ignored. Returns how many were held.
    #[tracing::instrument(level = "debug", skip_all, fields(seqs = req.seq_ids.len()))]
    pub async fn handle_release(&self, req: ReleaseRequest) -> Result<ReleaseResponse, Status> {
        self.engine()?;
        {
            let mut last = self.last_step();
            for id in &req.seq_ids {
                last.remove(id);
            }
        }
        self.shared.kept.forget(req.seq_ids.iter().copied());
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

    /// Serves one `FetchRows`: per sequence, in order, the row its last (sparse) step kept, packed
    /// and cut as asked (or certified again, deeper, with the values at the ids the router names),
    /// or UNKNOWN_SEQUENCE. It never waits for a running forward: the rows have
    /// their own lock, and the router fetches while no step of these sequences runs.
    #[tracing::instrument(level = "debug", skip_all, fields(seqs = req.seq_ids.len(), reward_name = %req.reward_name))]
    pub async fn handle_fetch_rows(&self, req: FetchRowsRequest) -> Result<StepResponse, Status> {
        let vocab = self.engine()?.config().vocab_size;
        let fetch = prepare_fetch(req, &self.shared.role, vocab)?;
        let shared = self.shared.clone();
        // Off the runtime: packing a batch of 128k-value rows takes milliseconds.
        let results = tokio::task::spawn_blocking(move || {
            let (dtype, len) = (fetch.dtype, fetch.logits_len);
            fetch
                .seq_ids
                .iter()
                .enumerate()
                .map(|(i, &id)| match &fetch.what {
                    FetchWhat::Rows => shared.kept.fetch(id, len, |row| packed_row(row, dtype)),
                    FetchWhat::Certificates { candidates, .. } => shared
                        .kept
                        .fetch(id, len, |row| refined_outcome(row, *candidates, fetch.extras(i), dtype)),
                })
                .collect()
        })
        .await
        .map_err(|e| Status::internal(format!("the fetch task failed: {e}")))?;
        Ok(StepResponse { results, forward_micros: 0 })
    }

    /// How many sparse-step rows the worker keeps (one per sequence at most).
    pub fn kept_rows(&self) -> usize {
        self.shared.kept.len()
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
            orphans_released: c.orphans_released,
            prefix_lookup_tokens: kv.prefix.lookup_tokens,
            prefix_hit_tokens: kv.prefix.hit_tokens,
            prefix_evicted_blocks: kv.prefix.evicted_blocks,
            prefix_cached_blocks: kv.prefix.cached_blocks,
        })
    }

    fn last_step(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.shared.last_step.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that a step reached these sequences now.
    fn touch(&self, ids: impl IntoIterator<Item = u64>) {
        let now = Instant::now();
        let mut last = self.last_step();
        for id in ids {
            last.insert(id, now);
        }
    }

    /// Releases every sequence no step has reached for `timeout` (the router that stepped it
    /// stopped, restarted, or lost track of it); returns how many held KV. They are counted in
    /// `Stats.orphans_released` and logged. A sequence stepped again while the sweep runs is
    /// kept; one released here and stepped later answers UNKNOWN_SEQUENCE, and the router
    /// replays it.
    pub async fn sweep_orphans(&self, timeout: Duration) -> usize {
        self.sweep_orphans_at(Instant::now(), timeout).await
    }

    /// [`Self::sweep_orphans`] as if it ran at `now` (the tests' clock).
    async fn sweep_orphans_at(&self, now: Instant, timeout: Duration) -> usize {
        if !self.is_ready() {
            return 0;
        }
        let stale: Vec<u64> = {
            let mut last = self.last_step();
            let stale: Vec<u64> =
                last.iter().filter(|(_, &t)| now.duration_since(t) >= timeout).map(|(&id, _)| id).collect();
            for id in &stale {
                last.remove(id);
            }
            stale
        };
        if stale.is_empty() {
            return 0;
        }
        let shared = self.shared.clone();
        let released = tokio::task::spawn_blocking(move || {
            let engine = shared.engine.get().expect("checked before spawning");
            let mut released = Vec::new();
            for id in stale {
                // Stepped again since it was found stale: no longer an orphan.
                if shared.last_step.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&id) {
                    continue;
                }
                shared.kept.forget([id]);
                if engine.release(id) {
                    released.push(id);
                }
            }
            released
        })
        .await
        .unwrap_or_default();
        if !released.is_empty() {
            self.shared.counters.record_orphans(released.len() as u64);
            let kv = self.shared.engine.get().map(|e| e.kv_usage());
            tracing::warn!(
                sequences = released.len(),
                seq_ids = ?released,
                idle_secs = timeout.as_secs_f64(),
                kv_used_blocks = kv.map(|k| k.used_blocks),
                "released orphaned sequences: no step reached them for --orphan-timeout-secs \
                 (their router stopped or restarted)"
            );
        }
        released.len()
    }

    /// Runs [`Self::sweep_orphans`] in the background every quarter of `timeout` (between
    /// 100 ms and 30 s) for as long as the runtime lives.
    pub fn spawn_orphan_sweeper(&self, timeout: Duration) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        let period = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                service.sweep_orphans(timeout).await;
            }
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

    async fn fetch_rows(&self, request: Request<FetchRowsRequest>) -> Result<Response<StepResponse>, Status> {
        let span = tracing::info_span!("worker.fetch_rows", seqs = request.get_ref().seq_ids.len());
        genarm_telemetry::set_parent_from(&span, request.metadata());
        self.handle_fetch_rows(request.into_inner()).instrument(span).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genarm_model::{EngineOptions, ModelAssets};
    use genarm_proto::v1::SeqStep;

    fn step(seq_id: u64, start_pos: u32, tokens: Vec<u32>) -> StepRequest {
        StepRequest {
            reward_name: String::new(),
            seqs: vec![SeqStep { seq_id, start_pos, tokens }],
            logits_dtype: 0,
            logits_len: 0,
            ..Default::default()
        }
    }

    async fn sequences(s: &WorkerService) -> (u32, u64, u64) {
        let st = s.handle_stats().await.unwrap();
        (st.sequences, st.kv_used_blocks, st.orphans_released)
    }

    #[tokio::test]
    async fn the_sweep_releases_only_sequences_no_step_reached_for_the_timeout() {
        let assets = ModelAssets::open(&genarm_testkit::fixture_dir("llama-mha")).expect("the fixture");
        let engine = Engine::load(&assets, EngineOptions::default()).expect("loading");
        let service = WorkerService::new(InfoResponse::default(), WorkerRole::Base);
        assert_eq!(service.sweep_orphans(Duration::ZERO).await, 0, "no engine: nothing to sweep");
        assert!(service.set_engine(engine));
        // The sweeps run at chosen instants relative to the recorded step times, never after a
        // sleep: a loaded machine's stalls cannot move a sequence across the timeout.
        let timeout = Duration::from_secs(60);
        let stepped_at = |id: u64| *service.last_step().get(&id).expect("a step reached it");

        // Sequences 1, 2, 3 prefill; 3 is released by its router; 2 keeps being stepped.
        for id in [1, 2, 3] {
            service.handle_step(step(id, 0, vec![5, 6, 7])).await.unwrap();
        }
        service.handle_release(ReleaseRequest { seq_ids: vec![3] }).await.unwrap();
        assert!(!service.last_step().contains_key(&3), "a released sequence is not tracked");
        let (held, used, orphans) = sequences(&service).await;
        assert_eq!((held, orphans), (2, 0));
        assert!(used > 0);
        let first = stepped_at(1);
        assert_eq!(service.sweep_orphans_at(first + timeout / 2, timeout).await, 0, "nothing is idle yet");
        assert_eq!(service.sweep_orphans(timeout).await, 0, "nothing is idle yet (real clock)");

        service.handle_step(step(2, 3, vec![8])).await.unwrap();
        let second = stepped_at(2);
        assert!(second > first, "a step after sequence 1's prefill is recorded later");
        // At `first + timeout`: 1 was idle for the timeout, 2 for less.
        assert_eq!(service.sweep_orphans_at(first + timeout, timeout).await, 1);
        assert_eq!(sequences(&service).await.0, 1, "sequence 2 was stepped within the timeout");
        assert_eq!(sequences(&service).await.2, 1);
        let r = service.handle_step(step(1, 3, vec![8])).await.unwrap();
        assert!(
            matches!(&r.results[0].outcome, Some(genarm_proto::v1::seq_result::Outcome::Error(e))
                if e.code == genarm_proto::v1::SeqErrorCode::UnknownSequence as i32),
            "a released orphan is unknown to later steps (the router replays it): {r:?}"
        );

        // Idle past the timeout: 2 goes too; the failed step of 1 left nothing to release.
        let later = Instant::now() + timeout;
        assert_eq!(service.sweep_orphans_at(later, timeout).await, 1);
        assert_eq!(sequences(&service).await, (0, 0, 2), "(sequences, KV blocks used, orphans released)");
        assert_eq!(service.sweep_orphans_at(later + timeout, Duration::ZERO).await, 0);
    }

    #[tokio::test]
    async fn the_background_sweeper_runs_on_its_own() {
        let assets = ModelAssets::open(&genarm_testkit::fixture_dir("llama-mha")).expect("the fixture");
        let engine = Engine::load(&assets, EngineOptions::default()).expect("loading");
        let service = WorkerService::new(InfoResponse::default(), WorkerRole::Base);
        assert!(service.set_engine(engine));
        service.handle_step(step(9, 0, vec![5, 6])).await.unwrap();
        let sweeper = service.spawn_orphan_sweeper(Duration::from_millis(200));
        let deadline = Instant::now() + Duration::from_secs(5);
        while sequences(&service).await.0 > 0 {
            assert!(Instant::now() < deadline, "the sweeper did not release the orphan within 5 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sweeper.abort();
        assert_eq!(sequences(&service).await, (0, 0, 1));
    }
}
