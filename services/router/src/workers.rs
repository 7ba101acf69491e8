//! `Workers`: the gRPC clients of the base-worker and of each reward-model worker. At startup it
//! waits (with retries, until a deadline) for every worker to report SERVING and answer `Info`,
//! builds each model's [`ModelText`], and checks the cluster: protocol version, roles, reward
//! names, V = the base tokenizer's size, every ARM's logits ≥ V and its vocabulary fingerprint
//! over [0, V) equal to the base's (DESIGN invariant 6), effective context = min of the models'
//! max positions. Afterwards a monitor task per worker tracks its health: a failed call or
//! health check marks it not ready, and it is probed again until it answers as the same model.
//! `Workers` is the real [`StepBackend`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use genarm_fusion::WireDtype;
use genarm_proto::v1::seq_result::Outcome;
use genarm_proto::v1::worker_client::WorkerClient;
use genarm_proto::v1::{
    InfoRequest, InfoResponse, LogitsDtype, ReleaseRequest, Role, SeqErrorCode, StepRequest,
    PROTOCOL_VERSION, WORKER_SERVICE_NAME,
};
use genarm_text::ModelText;
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::backend::{CallError, ModelIndex, SeqErrorKind, SeqOutcome, SeqStep, StepBackend, WorkerHealth};

/// Where to find the workers and how to talk to them.
#[derive(Debug, Clone)]
pub struct WorkersConfig {
    /// The base-worker's URL.
    pub base_url: String,
    /// `(reward name, URL)` of each reward-model worker.
    pub rms: Vec<(String, String)>,
    /// How long startup waits for every worker.
    pub connect_timeout: Duration,
    /// Timeout of one `Step` call.
    pub call_timeout: Duration,
    /// Period of health checks and re-probes.
    pub reprobe: Duration,
    /// gRPC message size limit, both directions.
    pub max_message_bytes: usize,
}

/// What the router knows about one model (from its worker's `Info`).
#[derive(Debug)]
pub struct ModelEntry {
    /// Backend index: 0 for the base, then reward models by sorted name.
    pub index: ModelIndex,
    /// The reward name (`None` for the base).
    pub reward_name: Option<String>,
    /// The model id the worker reports.
    pub model_id: String,
    /// The worker's URL.
    pub url: String,
    /// Logits per position.
    pub vocab_size: u32,
    /// Longest context of this model.
    pub max_positions: u32,
    /// Tokenizer, chat template and special ids.
    pub text: Arc<ModelText>,
}

impl ModelEntry {
    /// `base-worker (model M at URL)` or `rm-worker "NAME" (model M at URL)`.
    pub fn display_name(&self) -> String {
        match &self.reward_name {
            None => format!("base-worker (model {} at {})", self.model_id, self.url),
            Some(n) => format!("rm-worker \"{n}\" (model {} at {})", self.model_id, self.url),
        }
    }
}

/// The models of the cluster, fixed after startup.
#[derive(Debug)]
pub struct Catalog {
    /// Every model, by backend index.
    pub models: Vec<ModelEntry>,
    /// V: the base tokenizer's size.
    pub vocab: usize,
    /// Effective context: min of the models' max positions.
    pub max_context: u32,
}

impl Catalog {
    /// The base model.
    pub fn base(&self) -> &ModelEntry {
        &self.models[0]
    }

    /// The backend index of reward model `name`.
    pub fn reward_index(&self, name: &str) -> Option<ModelIndex> {
        self.models.iter().position(|m| m.reward_name.as_deref() == Some(name))
    }

    /// The reward names, sorted.
    pub fn reward_names(&self) -> Vec<&str> {
        self.models.iter().filter_map(|m| m.reward_name.as_deref()).collect()
    }

    /// Checks the cluster (DESIGN invariant 6, 7) and computes V and the effective context.
    /// `models[0]` is the base.
    pub fn new(models: Vec<ModelEntry>) -> anyhow::Result<Self> {
        let base = models.first().ok_or_else(|| anyhow!("no base model"))?;
        let vocab = base.text.vocab_size();
        if vocab == 0 {
            bail!("{}: its tokenizer is empty", base.display_name());
        }
        if (base.vocab_size as usize) < vocab {
            bail!(
                "{} produces {} logits per position, fewer than its tokenizer's {} tokens; the model's \
                 config (vocab_size) and tokenizer do not belong together",
                base.display_name(),
                base.vocab_size,
                vocab
            );
        }
        let base_fp = base.text.fingerprint(vocab);
        for arm in &models[1..] {
            if (arm.vocab_size as usize) < vocab {
                bail!(
                    "reward model \"{}\" ({}) produces {} logits per position, fewer than the base model \
                     {}'s vocabulary of {} tokens; an ARM must cover every base token id — use an ARM \
                     trained on the base model's tokenizer",
                    arm.reward_name.as_deref().unwrap_or("?"),
                    arm.model_id,
                    arm.vocab_size,
                    base.model_id,
                    vocab
                );
            }
            if arm.text.fingerprint(vocab) != base_fp {
                let first_diff = (0..vocab as u32).find(|&id| {
                    arm.text.tokenizer().id_to_token(id) != base.text.tokenizer().id_to_token(id)
                });
                let detail = first_diff
                    .map(|id| {
                        format!(
                            " (first difference at id {id}: {:?} vs {:?})",
                            base.text.tokenizer().id_to_token(id),
                            arm.text.tokenizer().id_to_token(id)
                        )
                    })
                    .unwrap_or_default();
                bail!(
                    "reward model \"{}\" ({}) does not share the vocabulary of the base model {}: their \
                     token ids [0, {vocab}) map to different tokens{detail}; GenARM needs an ARM with the \
                     base model's tokenizer",
                    arm.reward_name.as_deref().unwrap_or("?"),
                    arm.model_id,
                    base.model_id
                );
            }
        }
        let max_context = models.iter().map(|m| m.max_positions).min().unwrap_or(0);
        if max_context < 2 {
            bail!("the effective context ({max_context} positions) is too short to generate anything");
        }
        Ok(Catalog { models, vocab, max_context })
    }
}

/// One worker's connection and health.
struct WorkerConn {
    name: String,
    reward_name: String,
    client: WorkerClient<Channel>,
    health: HealthClient<Channel>,
    ready: AtomicBool,
    wake: Notify,
    /// What the worker must keep reporting to be taken back after a failure.
    identity: Identity,
}

/// The parts of `Info` that must not change when a worker comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    model_id: String,
    role: i32,
    reward_name: String,
    vocab_size: u32,
    vocab_fingerprint: Vec<u8>,
}

impl Identity {
    fn of(info: &InfoResponse) -> Self {
        Identity {
            model_id: info.model_id.clone(),
            role: info.role,
            reward_name: info.reward_name.clone(),
            vocab_size: info.vocab_size,
            vocab_fingerprint: info.vocab_fingerprint.clone(),
        }
    }
}

/// The workers: gRPC clients, the [`Catalog`], health. The real [`StepBackend`].
pub struct Workers {
    conns: Vec<WorkerConn>,
    catalog: Arc<Catalog>,
    call_timeout: Duration,
    reprobe: Duration,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("models", &self.conns.iter().map(|c| &c.name).collect::<Vec<_>>())
            .finish()
    }
}

/// Clients for one URL (the channel connects lazily and reconnects by itself).
fn clients(url: &str, cfg: &WorkersConfig) -> anyhow::Result<(WorkerClient<Channel>, HealthClient<Channel>)> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("worker URL `{url}` is not a valid URL"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let channel = endpoint.connect_lazy();
    let client = WorkerClient::new(channel.clone())
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    Ok((client, HealthClient::new(channel)))
}

/// One health check + `Info`, with a timeout; `Err` says why the worker is not usable yet.
async fn probe(
    client: &mut WorkerClient<Channel>,
    health: &mut HealthClient<Channel>,
    timeout: Duration,
) -> Result<InfoResponse, String> {
    let check = async {
        let status = health
            .check(HealthCheckRequest { service: WORKER_SERVICE_NAME.to_string() })
            .await
            .map_err(|s| describe_status(&s))?
            .into_inner()
            .status;
        if status != ServingStatus::Serving as i32 {
            return Err("not serving yet (still loading or warming up)".to_string());
        }
        client.info(InfoRequest {}).await.map(|r| r.into_inner()).map_err(|s| describe_status(&s))
    };
    tokio::time::timeout(timeout, check).await.map_err(|_| format!("no answer within {timeout:?}"))?
}

/// A short description of a gRPC status.
fn describe_status(s: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut msg = format!("{:?}: {}", s.code(), s.message());
    let mut src = s.source();
    while let Some(e) = src {
        let text = e.to_string();
        if !msg.contains(&text) {
            msg.push_str(&format!(": {text}"));
        }
        src = e.source();
    }
    msg
}

/// Checks what a worker reports against what the router was told.
fn check_info(info: &InfoResponse, reward_name: Option<&str>, url: &str) -> anyhow::Result<()> {
    if info.protocol_version != PROTOCOL_VERSION {
        bail!(
            "worker at {url} speaks worker protocol version {}, this router speaks version {}; run \
             workers and router of the same genarm release",
            info.protocol_version,
            PROTOCOL_VERSION
        );
    }
    match reward_name {
        None => {
            if info.role != Role::Base as i32 {
                bail!(
                    "--base {url} points at a reward-model worker (\"{}\", model {}); give the base-worker's \
                     URL to --base and this one to --rm",
                    info.reward_name,
                    info.model_id
                );
            }
        }
        Some(name) => {
            if info.role != Role::Reward as i32 {
                bail!(
                    "--rm {name}={url} points at the base-worker (model {}); give an rm-worker's URL",
                    info.model_id
                );
            }
            if info.reward_name != name {
                bail!(
                    "--rm {name}={url} points at an rm-worker serving reward model \"{}\" (model {}); the \
                     names must match (use --rm {}={url})",
                    info.reward_name,
                    info.model_id,
                    info.reward_name
                );
            }
        }
    }
    Ok(())
}

impl Workers {
    /// Connects to every worker (retrying until `cfg.connect_timeout`), checks the cluster and
    /// starts the health monitors.
    pub async fn connect(cfg: &WorkersConfig) -> anyhow::Result<Arc<Self>> {
        let mut specs: Vec<(Option<String>, String)> = vec![(None, cfg.base_url.clone())];
        let mut rms = cfg.rms.clone();
        rms.sort_by(|a, b| a.0.cmp(&b.0));
        specs.extend(rms.into_iter().map(|(n, u)| (Some(n), u)));

        let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
        let waits = specs.iter().map(|(name, url)| async move {
            let (mut client, mut health) = clients(url, cfg)?;
            let what = match name {
                None => format!("base-worker at {url}"),
                Some(n) => format!("rm-worker \"{n}\" at {url}"),
            };
            let mut attempt = 0u32;
            let info = loop {
                match probe(&mut client, &mut health, Duration::from_secs(10)).await {
                    Ok(info) => break info,
                    Err(why) => {
                        if tokio::time::Instant::now() >= deadline {
                            bail!(
                                "{what} did not become ready within {:?} (last: {why}); check that it runs \
                                 and that the URL is right (--worker-connect-timeout-secs to wait longer)",
                                cfg.connect_timeout
                            );
                        }
                        if attempt % 10 == 0 {
                            tracing::info!(worker = %what, reason = %why, "waiting for worker");
                        }
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            check_info(&info, name.as_deref(), url)?;
            tracing::info!(worker = %what, model = %info.model_id, vocab = info.vocab_size,
                max_positions = info.max_positions, dtype = %info.dtype, tp = info.tp_size,
                kv_tokens = info.kv_capacity_tokens, "worker connected");
            Ok::<_, anyhow::Error>((client, health, info))
        });
        let results = futures::future::join_all(waits).await;

        let mut entries = Vec::new();
        let mut conns = Vec::new();
        for (index, ((reward_name, url), result)) in specs.iter().zip(results).enumerate() {
            let (client, health, info) = result?;
            let text = ModelText::new(
                &info.model_id,
                &info.tokenizer_json,
                info.chat_template.clone(),
                info.bos_token_id,
                info.eos_token_ids.clone(),
                info.add_bos_token,
            )
            .map_err(|e| anyhow!("{e}"))?;
            if let Err(e) = text.check_chat_template() {
                tracing::warn!("{e}");
            }
            let entry = ModelEntry {
                index,
                reward_name: reward_name.clone(),
                model_id: info.model_id.clone(),
                url: url.clone(),
                vocab_size: info.vocab_size,
                max_positions: info.max_positions,
                text: Arc::new(text),
            };
            conns.push(WorkerConn {
                name: entry.display_name(),
                reward_name: info.reward_name.clone(),
                client,
                health,
                ready: AtomicBool::new(true),
                wake: Notify::new(),
                identity: Identity::of(&info),
            });
            entries.push(entry);
        }
        let catalog = Arc::new(Catalog::new(entries)?);
        tracing::info!(vocab = catalog.vocab, max_context = catalog.max_context,
            reward_models = ?catalog.reward_names(), "cluster checked");
        let workers =
            Arc::new(Workers { conns, catalog, call_timeout: cfg.call_timeout, reprobe: cfg.reprobe });
        for m in 0..workers.conns.len() {
            tokio::spawn(monitor(Arc::downgrade(&workers), m));
        }
        Ok(workers)
    }

    /// The models.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }
}

/// Keeps one worker's readiness up to date: periodic health checks while ready; while not
/// ready, probes until it answers as the same model. Ends when the workers are dropped.
async fn monitor(workers: std::sync::Weak<Workers>, m: ModelIndex) {
    loop {
        let Some(w) = workers.upgrade() else { return };
        let conn = &w.conns[m];
        let ready = conn.ready.load(Ordering::SeqCst);
        let (mut client, mut health) = (conn.client.clone(), conn.health.clone());
        match (ready, probe(&mut client, &mut health, w.reprobe.max(Duration::from_secs(2))).await) {
            (true, Err(why)) => {
                tracing::error!(worker = %conn.name, reason = %why, "worker failed its health check: not ready");
                conn.ready.store(false, Ordering::SeqCst);
            }
            (false, Ok(info)) => {
                if Identity::of(&info) == conn.identity && info.protocol_version == PROTOCOL_VERSION {
                    tracing::info!(worker = %conn.name, instance = %info.instance_id, "worker is back: ready");
                    conn.ready.store(true, Ordering::SeqCst);
                } else {
                    tracing::error!(worker = %conn.name, now_serving = %info.model_id, reward_name = %info.reward_name,
                        "the worker came back serving a different model; restart the router to accept it");
                }
            }
            (false, Err(why)) => tracing::debug!(worker = %conn.name, reason = %why, "worker still down"),
            (true, Ok(_)) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(w.reprobe) => {}
            _ = conn.wake.notified() => {}
        }
    }
}

impl WorkerHealth for Workers {
    fn num_models(&self) -> usize {
        self.conns.len()
    }

    fn display_name(&self, model: ModelIndex) -> String {
        self.conns.get(model).map(|c| c.name.clone()).unwrap_or_else(|| format!("worker #{model}"))
    }

    fn is_ready(&self, model: ModelIndex) -> bool {
        self.conns.get(model).is_some_and(|c| c.ready.load(Ordering::SeqCst))
    }
}

impl StepBackend for Workers {
    fn mark_failed(&self, model: ModelIndex, reason: &str) {
        if let Some(c) = self.conns.get(model) {
            if c.ready.swap(false, Ordering::SeqCst) {
                tracing::error!(worker = %c.name, %reason, "worker call failed: marked not ready");
            }
            c.wake.notify_one();
        }
    }

    async fn step(
        &self,
        model: ModelIndex,
        seqs: Vec<SeqStep>,
        logits_len: u32,
        dtype: WireDtype,
    ) -> Result<Vec<SeqOutcome>, CallError> {
        let conn = self.conns.get(model).ok_or_else(|| CallError(format!("no worker #{model}")))?;
        let ids: Vec<u64> = seqs.iter().map(|s| s.seq_id).collect();
        let req = StepRequest {
            reward_name: conn.reward_name.clone(),
            seqs: seqs
                .into_iter()
                .map(|s| genarm_proto::v1::SeqStep {
                    seq_id: s.seq_id,
                    start_pos: s.start_pos,
                    tokens: s.tokens,
                })
                .collect(),
            logits_dtype: proto_dtype(dtype) as i32,
            logits_len,
        };
        let mut client = conn.client.clone();
        let resp = tokio::time::timeout(self.call_timeout, client.step(req))
            .await
            .map_err(|_| CallError(format!("no answer to Step within {:?}", self.call_timeout)))?
            .map_err(|s| CallError(describe_status(&s)))?
            .into_inner();
        if resp.results.len() != ids.len() {
            return Err(CallError(format!(
                "answered {} results for a step of {} sequences",
                resp.results.len(),
                ids.len()
            )));
        }
        resp.results
            .into_iter()
            .zip(ids)
            .map(|(r, id)| {
                if r.seq_id != id {
                    return Err(CallError(format!("answered sequence {} where {id} was expected", r.seq_id)));
                }
                Ok(match r.outcome {
                    Some(Outcome::Logits(bytes)) => SeqOutcome::Logits(bytes),
                    Some(Outcome::Error(e)) => {
                        SeqOutcome::Error { kind: error_kind(e.code), message: e.message }
                    }
                    None => SeqOutcome::Error { kind: SeqErrorKind::Invalid, message: "no outcome".into() },
                })
            })
            .collect()
    }

    async fn release(&self, model: ModelIndex, seq_ids: Vec<u64>) -> Result<(), CallError> {
        let conn = self.conns.get(model).ok_or_else(|| CallError(format!("no worker #{model}")))?;
        let mut client = conn.client.clone();
        let timeout = self.call_timeout.min(Duration::from_secs(10));
        tokio::time::timeout(timeout, client.release(ReleaseRequest { seq_ids }))
            .await
            .map_err(|_| CallError(format!("no answer to Release within {timeout:?}")))?
            .map_err(|s| CallError(describe_status(&s)))?;
        Ok(())
    }
}

/// The proto enum for a wire dtype.
pub fn proto_dtype(d: WireDtype) -> LogitsDtype {
    match d {
        WireDtype::F32 => LogitsDtype::F32,
        WireDtype::Bf16 => LogitsDtype::Bf16,
        WireDtype::F16 => LogitsDtype::F16,
    }
}

fn error_kind(code: i32) -> SeqErrorKind {
    match SeqErrorCode::try_from(code) {
        Ok(SeqErrorCode::UnknownSequence) => SeqErrorKind::UnknownSequence,
        Ok(SeqErrorCode::PositionMismatch) => SeqErrorKind::PositionMismatch,
        Ok(SeqErrorCode::KvExhausted) => SeqErrorKind::KvExhausted,
        _ => SeqErrorKind::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: usize, reward: Option<&str>, fixture: &str, vocab_size: u32, max_pos: u32) -> ModelEntry {
        ModelEntry { vocab_size, ..crate::testing::fixture_entry(index, reward, fixture, max_pos) }
    }

    #[test]
    fn catalog_takes_the_smallest_context_and_base_vocab() {
        let c = Catalog::new(vec![
            entry(0, None, "llama-mha", 512, 512),
            entry(1, Some("a"), "qwen2-bias", 600, 256),
        ])
        .unwrap();
        assert_eq!(c.max_context, 256);
        assert_eq!(c.vocab, c.base().text.vocab_size());
        assert_eq!(c.reward_index("a"), Some(1));
        assert_eq!(c.reward_names(), vec!["a"]);
    }

    #[test]
    fn an_arm_with_too_few_logits_is_refused_naming_both_models() {
        let e = Catalog::new(vec![
            entry(0, None, "llama-mha", 512, 512),
            entry(1, Some("a"), "qwen2-bias", 100, 512),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("qwen2-bias") && e.contains("llama-mha") && e.contains("100"), "{e}");
    }

    #[test]
    fn an_arm_with_another_vocabulary_is_refused_naming_both_models() {
        let mut arm = entry(1, Some("helpful"), "qwen2-bias", 512, 512);
        // A tokenizer with a different vocabulary: swap the ids of two tokens.
        let dir = genarm_testkit::fixture_dir("qwen2-bias");
        let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let vocab = v["model"]["vocab"].as_object_mut().unwrap();
        let key_of =
            |id: u64| vocab.iter().find(|(_, x)| x.as_u64() == Some(id)).map(|(k, _)| k.clone()).unwrap();
        let (a, b) = (key_of(300), key_of(301));
        vocab.insert(a, 301.into());
        vocab.insert(b, 300.into());
        let json = serde_json::to_string(&v).unwrap();
        arm.text = Arc::new(ModelText::new("qwen2-bias", &json, None, Some(0), vec![0], false).unwrap());
        let e = Catalog::new(vec![entry(0, None, "llama-mha", 512, 512), arm]).unwrap_err().to_string();
        assert!(e.contains("qwen2-bias") && e.contains("llama-mha") && e.contains("helpful"), "{e}");
        assert!(e.contains("id 300"), "{e}");
    }

    #[test]
    fn info_checks_name_the_flag_to_fix() {
        let info = InfoResponse {
            protocol_version: PROTOCOL_VERSION,
            role: Role::Reward as i32,
            reward_name: "harmless".into(),
            model_id: "m".into(),
            ..Default::default()
        };
        let e = check_info(&info, Some("helpful"), "http://h:1").unwrap_err().to_string();
        assert!(e.contains("harmless") && e.contains("helpful"), "{e}");
        let e = check_info(&info, None, "http://h:1").unwrap_err().to_string();
        assert!(e.contains("--base"), "{e}");
        let old = InfoResponse { protocol_version: 9, ..info };
        assert!(check_info(&old, Some("harmless"), "u").unwrap_err().to_string().contains("version 9"));
    }
}
