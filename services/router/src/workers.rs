//! `Workers`: one pool of worker members per model slot (the base, then each reward name in
//! sorted order). Members come from the static flags (`--base URL`, `--rm NAME=URL`: members that
//! never expire) and, with `--etcd`, from the registrations under `/genarm/<cluster>/workers/`
//! (added when their key appears, removed when it disappears — deregistered or lease expired).
//! Every newcomer is probed until SERVING and checked: protocol version, role and reward name,
//! and for an ARM its logits ≥ V and its vocabulary fingerprint over [0, V) equal to the base's
//! (DESIGN invariant 6). At startup the first worker of each slot that passes fixes the
//! [`Catalog`] (V = the base tokenizer's size, effective context = min of max positions); later
//! members must serve the same model as their slot (a refusal is logged naming both models). A
//! static worker that fails at startup is fatal (every static worker, replicas included, is
//! checked before the router is ready); a discovered one is refused and logged. The ready
//! members of a slot share its sequences (see below). A monitor task per member tracks its
//! health: a failed call or health check marks it not ready, and it is probed again until it
//! answers as the same model. A slot is ready while it has a ready member. `Workers` is the
//! real [`StepBackend`].
//!
//! Replicas: every ready member of a slot serves steps. A new sequence (start position 0) is
//! placed on the ready member holding the fewest sequences and stays there (its KV lives there).
//! When that member fails (a failed call, removed from the cluster, found down by its monitor),
//! its sequences are answered [`SeqErrorKind::ReplicaLost`] while another member is ready, and
//! the step loop replays them from position 0 on a ready one (failover); with no ready member
//! left the call fails as a whole, as with a single worker (the scheduler then holds the
//! affected requests for `--worker-restart-grace-secs` and replays them once a member is ready).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use genarm_discovery::MembershipEvent;
use genarm_fusion::WireDtype;
use genarm_proto::prost::Message as _;
use genarm_proto::v1::seq_result::Outcome;
use genarm_proto::v1::worker_client::WorkerClient;
use genarm_proto::v1::{
    InfoRequest, InfoResponse, LogitsDtype, ReleaseRequest, Role, SeqErrorCode, StepRequest,
    PROTOCOL_VERSION, WORKER_SERVICE_NAME,
};
use genarm_text::ModelText;
use tokio::sync::{mpsc, Notify};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tracing::Instrument as _;

use crate::backend::{
    CallError, ModelIndex, SeqErrorKind, SeqOutcome, SeqStep, StepBackend, StepReply, WorkerHealth,
};

/// Where to find the workers and how to talk to them.
#[derive(Debug, Clone)]
pub struct WorkersConfig {
    /// The base-worker's URL (`--base`), if given.
    pub base_url: Option<String>,
    /// `(reward name, URL)` of each reward model; the URL is `None` for a reward model whose
    /// workers are found in etcd.
    pub rms: Vec<(String, Option<String>)>,
    /// Where to discover workers, if anywhere.
    pub etcd: Option<EtcdConfig>,
    /// How long startup waits for every worker.
    pub connect_timeout: Duration,
    /// Timeout of one call other than `Step` (health checks, `Info`, `Release`).
    pub call_timeout: Duration,
    /// The per-step watchdog: timeout of one `Step` call (`--step-timeout-secs`).
    pub step_timeout: Duration,
    /// Period of health checks and re-probes.
    pub reprobe: Duration,
    /// gRPC message size limit, both directions.
    pub max_message_bytes: usize,
    /// Mutual TLS to every worker (`--tls-*`); `None`: plaintext.
    pub tls: Option<genarm_tls::ClientTls>,
}

/// etcd discovery settings.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// The endpoints.
    pub endpoints: Vec<String>,
    /// The cluster name (key prefix `/genarm/<cluster>/workers/`).
    pub cluster: String,
    /// TLS and authentication to etcd (`--etcd-ca` etc.).
    pub security: genarm_discovery::EtcdSecurity,
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
        for arm in &models[1..] {
            check_arm(base, vocab, arm)?;
        }
        let max_context = models.iter().map(|m| m.max_positions).min().unwrap_or(0);
        if max_context < 2 {
            bail!("the effective context ({max_context} positions) is too short to generate anything");
        }
        Ok(Catalog { models, vocab, max_context })
    }
}

/// Checks an ARM against the base (DESIGN invariant 6): at least `vocab` logits, and the same
/// tokens on ids [0, vocab). Errors name both models.
pub fn check_arm(base: &ModelEntry, vocab: usize, arm: &ModelEntry) -> anyhow::Result<()> {
    let base_fp = base.text.fingerprint(vocab);
    {
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
            let first_diff = (0..vocab as u32)
                .find(|&id| arm.text.tokenizer().id_to_token(id) != base.text.tokenizer().id_to_token(id));
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
    Ok(())
}

/// One worker process serving a model slot: a static `--base`/`--rm` URL (never expires) or a
/// worker registered in etcd (removed when its key disappears).
struct Member {
    /// The etcd key, or `--base` / `--rm NAME` for a static member.
    key: String,
    url: String,
    client: WorkerClient<Channel>,
    health: HealthClient<Channel>,
    ready: AtomicBool,
    /// Set when the member left the pool; its monitor then ends.
    removed: AtomicBool,
    wake: Notify,
    /// Sequences this member may still hold after it failed (a Step that timed out may still
    /// complete on a stalled worker): released by its monitor when it answers again, before it
    /// is marked ready (so that no replay placed on it afterwards can be released by mistake).
    pending_release: Mutex<Vec<u64>>,
}

/// One model of the catalog (backend index) and the workers serving it (replicas): each
/// sequence is placed on one ready member.
struct Slot {
    /// `base-worker` or `rm-worker "NAME"`.
    label: String,
    model_id: String,
    reward_name: String,
    /// What every member must report.
    identity: Identity,
    members: RwLock<Vec<Arc<Member>>>,
    /// Sequence id → the member holding its KV.
    placements: Mutex<HashMap<u64, Arc<Member>>>,
    /// Rotates the choice among equally loaded members.
    turn: AtomicUsize,
}

impl Member {
    /// Queues `ids` for release when the member answers again (see `pending_release`).
    fn defer_release(&self, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        self.pending_release.lock().unwrap_or_else(|e| e.into_inner()).extend(ids);
        self.wake.notify_one();
    }

    /// Releases the deferred sequences; false (they stay queued) if the worker does not answer.
    async fn flush_releases(&self, timeout: Duration) -> bool {
        let ids = std::mem::take(&mut *self.pending_release.lock().unwrap_or_else(|e| e.into_inner()));
        if ids.is_empty() {
            return true;
        }
        let mut client = self.client.clone();
        let n = ids.len();
        match tokio::time::timeout(timeout, client.release(ReleaseRequest { seq_ids: ids.clone() })).await {
            Ok(Ok(r)) => {
                tracing::info!(url = %self.url, sequences = n, held = r.into_inner().released,
                    "released the sequences a failed call left on the worker");
                true
            }
            Ok(Err(_)) | Err(_) => {
                self.pending_release.lock().unwrap_or_else(|e| e.into_inner()).extend(ids);
                false
            }
        }
    }

    /// Ready and still in the pool.
    fn usable(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.removed.load(Ordering::SeqCst)
    }
}

impl Slot {
    fn members(&self) -> Vec<Arc<Member>> {
        self.members.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn placements(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Member>>> {
        self.placements.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ready member holding the fewest sequences; ties taken in turn (round robin).
    fn least_loaded(&self, placements: &HashMap<u64, Arc<Member>>) -> Option<Arc<Member>> {
        let mut ready: Vec<Arc<Member>> = self.members().into_iter().filter(|m| m.usable()).collect();
        if ready.is_empty() {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % ready.len();
        ready.rotate_left(turn);
        ready.into_iter().min_by_key(|m| placements.values().filter(|p| Arc::ptr_eq(p, m)).count())
    }

    fn any_usable(&self) -> bool {
        self.members().iter().any(|m| m.usable())
    }

    /// The member steps go to: the first ready one.
    fn active(&self) -> Option<Arc<Member>> {
        self.members().into_iter().find(|m| m.ready.load(Ordering::SeqCst))
    }
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

/// The workers: one pool of members per model slot (static URLs and etcd registrations alike),
/// the [`Catalog`], health. The real [`StepBackend`].
pub struct Workers {
    slots: Vec<Slot>,
    catalog: Arc<Catalog>,
    call_timeout: Duration,
    step_timeout: Duration,
    reprobe: Duration,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("models", &self.slots.iter().map(|c| &c.label).collect::<Vec<_>>())
            .finish()
    }
}

/// Clients for one URL (the channel connects lazily and reconnects by itself), over mutual TLS
/// when `tls` is given.
fn clients(
    url: &str,
    max_message_bytes: usize,
    tls: Option<&genarm_tls::ClientTls>,
) -> anyhow::Result<(WorkerClient<Channel>, HealthClient<Channel>)> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("worker URL `{url}` is not a valid URL"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.config())
            .with_context(|| format!("cannot set up TLS to the worker at {url} (--tls-*)"))?;
    }
    let channel = endpoint.connect_lazy();
    let client = WorkerClient::new(channel.clone())
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
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

/// Checks what a worker registered in etcd under `slot_name` (`None`: base) reports.
fn check_discovered(info: &InfoResponse, slot_name: Option<&str>, url: &str) -> anyhow::Result<()> {
    if info.protocol_version != PROTOCOL_VERSION {
        bail!(
            "worker at {url} speaks worker protocol version {}, this router speaks version {}; run \
             workers and router of the same genarm release",
            info.protocol_version,
            PROTOCOL_VERSION
        );
    }
    let (role, name) = match slot_name {
        None => (Role::Base as i32, ""),
        Some(n) => (Role::Reward as i32, n),
    };
    if info.role != role || info.reward_name != name {
        bail!(
            "worker at {url} is registered as {} but reports role {} with reward name \"{}\" (model {})",
            slot_name.map(|n| format!("reward model \"{n}\"")).unwrap_or_else(|| "the base".into()),
            info.role,
            info.reward_name,
            info.model_id
        );
    }
    Ok(())
}

/// A worker the pool learnt about: from a flag or from etcd.
#[derive(Debug, Clone)]
struct Candidate {
    key: String,
    url: String,
    slot: ModelIndex,
    is_static: bool,
}

/// What the membership task reacts to.
enum Event {
    Added(Candidate),
    Removed(String),
    Probed { key: String, seq: u64, result: Result<Box<InfoResponse>, String> },
}

/// Probes `c` until it is SERVING and answers `Info` (until `deadline` for static members; for
/// discovered ones until the probe is cancelled because the key went away).
/// How a probe's error starts when the TLS handshake failed for a reason retrying cannot fix.
const TLS_REFUSED: &str = "TLS handshake failed: ";

/// A certificate failure (wrong name, unknown CA, refused client certificate) is not transient:
/// a static member fails at once with the reason and a hint naming the flag to fix.
async fn probe_task(
    c: Candidate,
    seq: u64,
    max_message_bytes: usize,
    tls: Option<genarm_tls::ClientTls>,
    deadline: Option<tokio::time::Instant>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let result = async {
        let (mut client, mut health) =
            clients(&c.url, max_message_bytes, tls.as_ref()).map_err(|e| format!("{e:#}"))?;
        let mut attempt = 0u32;
        loop {
            match probe(&mut client, &mut health, Duration::from_secs(10)).await {
                Ok(info) => return Ok(Box::new(info)),
                Err(mut why) => {
                    let hint =
                        tls.as_ref().and_then(|t| genarm_tls::hint_for(&why, Some(&t.expected_name(&c.url))));
                    if let Some(hint) = hint {
                        why = format!("{why}; {hint}");
                        if c.is_static {
                            return Err(format!("{TLS_REFUSED}{why}"));
                        }
                    }
                    if let Some(deadline) = deadline {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(why);
                        }
                    }
                    if attempt % 10 == 0 {
                        tracing::info!(worker = %c.url, key = %c.key, reason = %why, "waiting for worker");
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    .await;
    let _ = tx.send(Event::Probed { key: c.key.clone(), seq, result });
}

/// A worker that answered `Info` and passed the role checks, before the catalog exists.
struct Probed {
    cand: Candidate,
    info: InfoResponse,
    entry: ModelEntry,
}

/// The membership of the pool: turns flag entries and etcd events into members, probing and
/// checking each newcomer. Runs before the catalog exists (choosing its first members) and then
/// for the router's life.
struct Membership {
    cfg: WorkersConfig,
    /// `None` for the base, then the reward names sorted (the slot order).
    slot_names: Vec<Option<String>>,
    tx: mpsc::UnboundedSender<Event>,
    /// Keys whose probe runs, with the probe's sequence number.
    probing: HashMap<String, (u64, tokio::task::AbortHandle)>,
    known: HashMap<String, Candidate>,
    next_seq: u64,
    deadline: tokio::time::Instant,
}

impl Membership {
    fn what(&self, c: &Candidate) -> String {
        match &self.slot_names[c.slot] {
            None => format!("base-worker at {}", c.url),
            Some(n) => format!("rm-worker \"{n}\" at {}", c.url),
        }
    }

    fn added(&mut self, c: Candidate) {
        if self.known.get(&c.key).is_some_and(|k| k.url == c.url && k.slot == c.slot) {
            return;
        }
        self.removed(&c.key);
        if let Err(e) = genarm_tls::check_worker_url(&c.url, self.cfg.tls.as_ref(), "the registered address")
        {
            tracing::error!(worker = %self.what(&c), key = %c.key, "refused worker: {e}");
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = c.is_static.then_some(self.deadline);
        let tls = self.cfg.tls.clone();
        let handle = tokio::spawn(probe_task(
            c.clone(),
            seq,
            self.cfg.max_message_bytes,
            tls,
            deadline,
            self.tx.clone(),
        ));
        self.probing.insert(c.key.clone(), (seq, handle.abort_handle()));
        self.known.insert(c.key.clone(), c);
    }

    fn removed(&mut self, key: &str) {
        if let Some((_, h)) = self.probing.remove(key) {
            h.abort();
        }
        self.known.remove(key);
    }

    /// The probe result for `key`, if it is still wanted.
    fn probed(&mut self, key: &str, seq: u64) -> Option<Candidate> {
        match self.probing.get(key) {
            Some((s, _)) if *s == seq => {
                self.probing.remove(key);
                self.known.get(key).cloned()
            }
            _ => None,
        }
    }

    /// Role checks and the model's text handling for a probed worker.
    fn entry(&self, c: &Candidate, info: &InfoResponse) -> anyhow::Result<ModelEntry> {
        let slot_name = self.slot_names[c.slot].as_deref();
        if c.is_static {
            check_info(info, slot_name, &c.url)?;
        } else {
            check_discovered(info, slot_name, &c.url)?;
        }
        let text = ModelText::new(
            &info.model_id,
            &info.tokenizer_json,
            info.chat_template.clone(),
            info.bos_token_id,
            info.eos_token_ids.clone(),
            info.add_bos_token,
        )
        .map_err(|e| anyhow!("{e}"))?;
        Ok(ModelEntry {
            index: c.slot,
            reward_name: slot_name.map(str::to_string),
            model_id: info.model_id.clone(),
            url: c.url.clone(),
            vocab_size: info.vocab_size,
            max_positions: info.max_positions,
            text: Arc::new(text),
        })
    }

    /// Phase 1: waits until the base and every reward name have a worker that passes the
    /// checks, and builds the catalog. A static worker that fails is fatal (the message names
    /// the flag or the models); a discovered one is refused with a logged reason.
    async fn until_catalog(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> anyhow::Result<(Catalog, Vec<Probed>, Vec<Probed>)> {
        let mut probed: Vec<Probed> = Vec::new();
        loop {
            let Some(ev) = rx.recv().await else { bail!("the worker membership source ended") };
            match ev {
                Event::Added(c) => self.added(c),
                Event::Removed(key) => {
                    self.removed(&key);
                    probed.retain(|p| p.cand.key != key);
                }
                Event::Probed { key, seq, result } => {
                    let Some(c) = self.probed(&key, seq) else { continue };
                    let what = self.what(&c);
                    let info = match result {
                        Ok(info) => *info,
                        Err(why) if why.starts_with(TLS_REFUSED) => bail!("{what} refused: {why}"),
                        Err(why) => bail!(
                            "{what} did not become ready within {:?} (last: {why}); check that it runs \
                             and that the URL is right (--worker-connect-timeout-secs to wait longer)",
                            self.cfg.connect_timeout
                        ),
                    };
                    match self.entry(&c, &info) {
                        Ok(entry) => {
                            log_connected(&what, &info);
                            if let Err(e) = entry.text.check_chat_template() {
                                tracing::warn!("{e}");
                            }
                            probed.push(Probed { cand: c, info, entry });
                        }
                        Err(e) if c.is_static => return Err(e),
                        Err(e) => {
                            tracing::error!(worker = %what, key = %c.key, "refused worker: {e:#}");
                        }
                    }
                }
            }
            // Every static worker (replicas included) is checked before the router is ready.
            if self.probing.keys().any(|k| self.known.get(k).is_some_and(|c| c.is_static)) {
                continue;
            }
            // Choose: the first base, then per reward name the first that matches the base.
            let Some(bi) = probed.iter().position(|p| p.cand.slot == 0) else { continue };
            let vocab = probed[bi].entry.text.vocab_size();
            let mut chosen = vec![bi];
            let mut refused = Vec::new();
            for slot in 1..self.slot_names.len() {
                let mut found = None;
                for (i, p) in probed.iter().enumerate().filter(|(_, p)| p.cand.slot == slot) {
                    match check_arm(&probed[bi].entry, vocab, &p.entry) {
                        Ok(()) => {
                            found = Some(i);
                            break;
                        }
                        Err(e) if p.cand.is_static => return Err(e),
                        Err(e) => {
                            tracing::error!(worker = %self.what(&p.cand), key = %p.cand.key, "refused worker: {e:#}");
                            refused.push(i);
                        }
                    }
                }
                chosen.extend(found);
            }
            for &i in refused.iter().rev() {
                probed.remove(i);
                chosen.iter_mut().for_each(|c| *c -= usize::from(*c > i));
            }
            if chosen.len() < self.slot_names.len() {
                continue;
            }
            let mut firsts = Vec::new();
            let mut rest = Vec::new();
            let mut slots: Vec<Option<Probed>> = (0..self.slot_names.len()).map(|_| None).collect();
            for (i, p) in probed.into_iter().enumerate() {
                if chosen.contains(&i) {
                    let s = p.cand.slot;
                    slots[s] = Some(p);
                } else {
                    rest.push(p);
                }
            }
            firsts.extend(slots.into_iter().flatten());
            let catalog = Catalog::new(
                firsts
                    .iter()
                    .map(|p| ModelEntry {
                        index: p.entry.index,
                        reward_name: p.entry.reward_name.clone(),
                        model_id: p.entry.model_id.clone(),
                        url: p.entry.url.clone(),
                        vocab_size: p.entry.vocab_size,
                        max_positions: p.entry.max_positions,
                        text: Arc::clone(&p.entry.text),
                    })
                    .collect(),
            )?;
            return Ok((catalog, firsts, rest));
        }
    }

    /// Phase 2: adds and removes members of the live pool until the workers are dropped.
    async fn live(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        workers: Weak<Workers>,
        pending: Vec<Probed>,
    ) {
        for p in pending {
            let Some(w) = workers.upgrade() else { return };
            admit(&w, &workers, p.cand, &p.info, &self);
        }
        while let Some(ev) = rx.recv().await {
            let Some(w) = workers.upgrade() else { return };
            match ev {
                Event::Added(c) => self.added(c),
                Event::Removed(key) => {
                    self.removed(&key);
                    for slot in &w.slots {
                        let mut members = slot.members.write().unwrap_or_else(|e| e.into_inner());
                        if let Some(i) = members.iter().position(|m| m.key == key) {
                            let m = members.remove(i);
                            m.removed.store(true, Ordering::SeqCst);
                            m.wake.notify_one();
                            let left = members.iter().filter(|m| m.ready.load(Ordering::SeqCst)).count();
                            tracing::warn!(worker = %slot.label, url = %m.url, %key, ready_left = left,
                                "worker left the cluster (deregistered or its lease expired)");
                        }
                    }
                }
                Event::Probed { key, seq, result } => {
                    let Some(c) = self.probed(&key, seq) else { continue };
                    match result {
                        Ok(info) => admit(&w, &workers, c, &info, &self),
                        Err(why) => tracing::error!(worker = %self.what(&c), reason = %why,
                            "worker did not become ready; not added"),
                    }
                }
            }
        }
    }
}

fn log_connected(what: &str, info: &InfoResponse) {
    tracing::info!(worker = %what, model = %info.model_id, vocab = info.vocab_size,
        max_positions = info.max_positions, dtype = %info.dtype, tp = info.tp_size,
        kv_tokens = info.kv_capacity_tokens, instance = %info.instance_id, "worker connected");
}

/// Adds a probed worker to the live pool if it serves its slot's model (same identity; for a
/// different model the reason — vocabulary or model — is logged, naming both models).
fn admit(w: &Arc<Workers>, weak: &Weak<Workers>, c: Candidate, info: &InfoResponse, ms: &Membership) {
    let what = ms.what(&c);
    let slot = &w.slots[c.slot];
    let entry = match ms.entry(&c, info) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(worker = %what, key = %c.key, "refused worker: {e:#}");
            return;
        }
    };
    if Identity::of(info) != slot.identity {
        let catalog = &w.catalog;
        let reason = if c.slot == 0 {
            None
        } else {
            check_arm(catalog.base(), catalog.vocab, &entry).err().map(|e| format!("{e:#}"))
        };
        let reason = reason.unwrap_or_else(|| {
            format!(
                "it serves model {} (vocab size {}), but this router serves {} with model {}; restart \
                 the router to switch models",
                info.model_id, info.vocab_size, slot.label, slot.model_id
            )
        });
        tracing::error!(worker = %what, key = %c.key, "refused worker: {reason}");
        return;
    }
    let (client, health) = match clients(&c.url, ms.cfg.max_message_bytes, ms.cfg.tls.as_ref()) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(worker = %what, "refused worker: {e:#}");
            return;
        }
    };
    let member = Arc::new(Member {
        key: c.key.clone(),
        url: c.url.clone(),
        client,
        health,
        ready: AtomicBool::new(true),
        removed: AtomicBool::new(false),
        wake: Notify::new(),
        pending_release: Mutex::new(Vec::new()),
    });
    let mut members = slot.members.write().unwrap_or_else(|e| e.into_inner());
    members.retain(|m| m.key != c.key);
    members.push(Arc::clone(&member));
    let replicas = members.len();
    drop(members);
    log_connected(&what, info);
    if replicas > 1 {
        tracing::info!(worker = %what, replicas, "replica added to {}", slot.label);
    }
    tokio::spawn(monitor(weak.clone(), c.slot, member));
}

impl Workers {
    /// Builds the pool: the `--base`/`--rm` URLs and, with etcd, the registered workers; waits
    /// (static URLs until `cfg.connect_timeout`; etcd registrations for as long as it takes)
    /// until the base and every reward name have a worker that passes the checks, then keeps
    /// the membership up to date in the background.
    pub async fn connect(cfg: &WorkersConfig) -> anyhow::Result<Arc<Self>> {
        let mut names: Vec<String> = cfg.rms.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        let slot_names: Vec<Option<String>> =
            std::iter::once(None).chain(names.into_iter().map(Some)).collect();
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Some(url) = &cfg.base_url {
            let _ = tx.send(Event::Added(Candidate {
                key: "--base".into(),
                url: url.clone(),
                slot: 0,
                is_static: true,
            }));
        }
        for (name, url) in &cfg.rms {
            if let Some(url) = url {
                let slot = slot_names.iter().position(|n| n.as_deref() == Some(name)).unwrap_or(0);
                let key = format!("--rm {name}={url}");
                let _ = tx.send(Event::Added(Candidate { key, url: url.clone(), slot, is_static: true }));
            }
        }
        if let Some(etcd) = &cfg.etcd {
            let prefix = genarm_discovery::workers_prefix(&etcd.cluster)?;
            let mut watch = genarm_discovery::watch_with(&etcd.endpoints, &etcd.security, &prefix).await?;
            tracing::info!(etcd = %etcd.endpoints.join(","), %prefix, "watching etcd for workers");
            let tx = tx.clone();
            let slot_names = slot_names.clone();
            tokio::spawn(async move {
                while let Some(ev) = watch.next().await {
                    let ev = match ev {
                        MembershipEvent::Added { key, value } => {
                            let slot = match value.role {
                                genarm_discovery::WorkerRole::Base => Some(0),
                                genarm_discovery::WorkerRole::Reward => slot_names
                                    .iter()
                                    .position(|n| n.as_deref() == Some(value.reward_name.as_str())),
                            };
                            let Some(slot) = slot else {
                                tracing::warn!(%key, reward_name = %value.reward_name, address = %value.address,
                                    "ignoring a worker of a reward model this router does not serve (add --rm {})",
                                    value.reward_name);
                                continue;
                            };
                            Event::Added(Candidate { key, url: value.address, slot, is_static: false })
                        }
                        MembershipEvent::Removed { key } => Event::Removed(key),
                    };
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            });
        }
        let mut ms = Membership {
            cfg: cfg.clone(),
            slot_names,
            tx,
            probing: HashMap::new(),
            known: HashMap::new(),
            next_seq: 0,
            deadline: tokio::time::Instant::now() + cfg.connect_timeout,
        };
        let (catalog, firsts, rest) = ms.until_catalog(&mut rx).await?;
        let catalog = Arc::new(catalog);
        tracing::info!(vocab = catalog.vocab, max_context = catalog.max_context,
            reward_models = ?catalog.reward_names(), "cluster checked");
        let mut slots = Vec::new();
        let mut members = Vec::new();
        for p in firsts {
            let (client, health) = clients(&p.cand.url, cfg.max_message_bytes, cfg.tls.as_ref())?;
            let member = Arc::new(Member {
                key: p.cand.key.clone(),
                url: p.cand.url.clone(),
                client,
                health,
                ready: AtomicBool::new(true),
                removed: AtomicBool::new(false),
                wake: Notify::new(),
                pending_release: Mutex::new(Vec::new()),
            });
            members.push(Arc::clone(&member));
            slots.push(Slot {
                label: match &p.entry.reward_name {
                    None => "base-worker".into(),
                    Some(n) => format!("rm-worker \"{n}\""),
                },
                model_id: p.info.model_id.clone(),
                reward_name: p.info.reward_name.clone(),
                identity: Identity::of(&p.info),
                members: RwLock::new(vec![member]),
                placements: Mutex::new(HashMap::new()),
                turn: AtomicUsize::new(0),
            });
        }
        let workers = Arc::new(Workers {
            slots,
            catalog,
            call_timeout: cfg.call_timeout,
            step_timeout: cfg.step_timeout,
            reprobe: cfg.reprobe,
        });
        for (m, member) in members.into_iter().enumerate() {
            tokio::spawn(monitor(Arc::downgrade(&workers), m, member));
        }
        // The other workers already checked (replicas) join before the router is ready.
        for p in rest {
            admit(&workers, &Arc::downgrade(&workers), p.cand, &p.info, &ms);
        }
        tokio::spawn(ms.live(rx, Arc::downgrade(&workers), Vec::new()));
        Ok(workers)
    }

    /// The models.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }
}

/// Keeps one member's readiness up to date: periodic health checks while ready; while not
/// ready, probes until it answers as the same model. Ends when the member leaves the pool or
/// the workers are dropped.
async fn monitor(workers: Weak<Workers>, m: ModelIndex, member: Arc<Member>) {
    loop {
        if member.removed.load(Ordering::SeqCst) {
            return;
        }
        let Some(w) = workers.upgrade() else { return };
        let slot = &w.slots[m];
        let name = format!("{} (model {} at {})", slot.label, slot.model_id, member.url);
        let ready = member.ready.load(Ordering::SeqCst);
        let (mut client, mut health) = (member.client.clone(), member.health.clone());
        let reprobe = w.reprobe;
        let probed = probe(&mut client, &mut health, reprobe.max(Duration::from_secs(2))).await;
        if member.removed.load(Ordering::SeqCst) {
            return;
        }
        // Sequences a failed call left behind are freed before the member serves again.
        let probed = match probed {
            Ok(info) if !member.flush_releases(w.call_timeout.min(Duration::from_secs(10))).await => {
                Err(format!("answers health checks but not Release (model {})", info.model_id))
            }
            other => other,
        };
        match (ready, probed) {
            (true, Err(why)) => {
                tracing::error!(worker = %name, reason = %why, "worker failed its health check: not ready");
                member.ready.store(false, Ordering::SeqCst);
            }
            (false, Ok(info)) => {
                if Identity::of(&info) == slot.identity && info.protocol_version == PROTOCOL_VERSION {
                    tracing::info!(worker = %name, instance = %info.instance_id, "worker is back: ready");
                    member.ready.store(true, Ordering::SeqCst);
                } else {
                    tracing::error!(worker = %name, now_serving = %info.model_id, reward_name = %info.reward_name,
                        "the worker came back serving a different model; restart the router to accept it");
                }
            }
            (false, Err(why)) => tracing::debug!(worker = %name, reason = %why, "worker still down"),
            (true, Ok(_)) => {}
        }
        drop(w);
        tokio::select! {
            _ = tokio::time::sleep(reprobe) => {}
            _ = member.wake.notified() => {}
        }
    }
}

impl WorkerHealth for Workers {
    fn num_models(&self) -> usize {
        self.slots.len()
    }

    fn display_name(&self, model: ModelIndex) -> String {
        let Some(slot) = self.slots.get(model) else { return format!("worker #{model}") };
        match slot.active().or_else(|| slot.members().into_iter().next()) {
            Some(m) => format!("{} (model {} at {})", slot.label, slot.model_id, m.url),
            None => format!("{} (model {}, no worker registered)", slot.label, slot.model_id),
        }
    }

    fn is_ready(&self, model: ModelIndex) -> bool {
        self.slots.get(model).is_some_and(|s| s.active().is_some())
    }
}

impl StepBackend for Workers {
    fn mark_failed(&self, model: ModelIndex, reason: &str) {
        if let Some(m) = self.slots.get(model).and_then(Slot::active) {
            if m.ready.swap(false, Ordering::SeqCst) {
                tracing::error!(worker = %self.display_name(model), url = %m.url, %reason,
                    "worker call failed: marked not ready");
            }
            m.wake.notify_one();
        }
    }

    async fn step(
        &self,
        model: ModelIndex,
        seqs: Vec<SeqStep>,
        logits_len: u32,
        dtype: WireDtype,
    ) -> Result<StepReply, CallError> {
        let slot = self.slots.get(model).ok_or_else(|| CallError(format!("no worker #{model}")))?;
        let n = seqs.len();
        let mut outcomes: Vec<Option<SeqOutcome>> = vec![None; n];
        // Place each sequence: sticky on the member holding it; new ones on the least loaded.
        let mut groups: Vec<PlacedGroup> = Vec::new();
        // Sequences left on a member that is down but still in the pool: released there in the
        // background, in case it only missed a health check.
        let mut orphans: Vec<(Arc<Member>, u64)> = Vec::new();
        {
            let mut placements = slot.placements();
            for (i, s) in seqs.into_iter().enumerate() {
                let member = match placements.get(&s.seq_id) {
                    Some(m) if m.usable() => Arc::clone(m),
                    placed => {
                        let lost = placed.map(|m| m.url.clone());
                        if let Some(m) = placements.remove(&s.seq_id) {
                            if !m.removed.load(Ordering::SeqCst) {
                                orphans.push((m, s.seq_id));
                            }
                        }
                        if s.start_pos != 0 {
                            let at = lost.map(|u| format!(" at {u}")).unwrap_or_default();
                            outcomes[i] = Some(SeqOutcome::Error {
                                kind: SeqErrorKind::ReplicaLost,
                                message: format!("the {} replica{at} holding it is gone", slot.label),
                            });
                            continue;
                        }
                        let m = slot
                            .least_loaded(&placements)
                            .ok_or_else(|| CallError(format!("{} has no ready worker", slot.label)))?;
                        placements.insert(s.seq_id, Arc::clone(&m));
                        m
                    }
                };
                match groups.iter_mut().find(|(m, _)| Arc::ptr_eq(m, &member)) {
                    Some((_, g)) => g.push((i, s)),
                    None => groups.push((member, vec![(i, s)])),
                }
            }
        }
        for (m, id) in orphans {
            m.defer_release(vec![id]);
        }
        if groups.is_empty() && !slot.any_usable() {
            return Err(CallError(format!("{} has no ready worker", slot.label)));
        }
        let calls = groups.into_iter().map(|(member, group)| async move {
            let (idx, steps): (Vec<usize>, Vec<SeqStep>) = group.into_iter().unzip();
            let r = self.step_on(slot, &member, steps, logits_len, dtype).await;
            (member, idx, r)
        });
        let mut last_error = None;
        let mut forward = Duration::ZERO;
        let mut wire_bytes = 0u64;
        for (member, idx, r) in futures::future::join_all(calls).await {
            match r {
                Ok((outs, member_forward, member_bytes)) => {
                    forward = forward.max(member_forward);
                    wire_bytes += member_bytes;
                    for (i, o) in idx.into_iter().zip(outs) {
                        outcomes[i] = Some(o);
                    }
                }
                Err(e) => {
                    if member.ready.swap(false, Ordering::SeqCst) {
                        tracing::error!(worker = %slot.label, model = %slot.model_id, url = %member.url,
                            error = %e.0, "worker call failed: marked not ready");
                    }
                    member.wake.notify_one();
                    let mut dropped = Vec::new();
                    slot.placements().retain(|&id, m| {
                        let keep = !Arc::ptr_eq(m, &member);
                        if !keep {
                            dropped.push(id);
                        }
                        keep
                    });
                    if !member.removed.load(Ordering::SeqCst) {
                        // In case the worker is alive (a timeout): its monitor frees their KV when
                        // it answers again, before it serves steps again.
                        member.defer_release(dropped);
                    }
                    for i in idx {
                        outcomes[i] = Some(SeqOutcome::Error {
                            kind: SeqErrorKind::ReplicaLost,
                            message: format!("the {} replica at {} failed: {}", slot.label, member.url, e.0),
                        });
                    }
                    last_error = Some(e);
                }
            }
        }
        if let Some(e) = last_error {
            if !slot.any_usable() {
                // No replica left to fail over to: the call fails as a whole.
                return Err(e);
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(SeqOutcome::Error { kind: SeqErrorKind::Invalid, message: "no outcome".into() })
            })
            .collect();
        Ok(StepReply { outcomes, forward, wire_bytes })
    }

    async fn release(&self, model: ModelIndex, seq_ids: Vec<u64>) -> Result<(), CallError> {
        let slot = self.slots.get(model).ok_or_else(|| CallError(format!("no worker #{model}")))?;
        let timeout = self.call_timeout.min(Duration::from_secs(10));
        // Each sequence on the member holding it; unplaced ones live nowhere.
        let mut groups: Vec<(Arc<Member>, Vec<u64>)> = Vec::new();
        {
            let mut placements = slot.placements();
            for id in seq_ids {
                let Some(m) = placements.remove(&id) else { continue };
                if !m.usable() {
                    continue;
                }
                match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, &m)) {
                    Some((_, ids)) => ids.push(id),
                    None => groups.push((m, vec![id])),
                }
            }
        }
        let mut first = Ok(());
        for (m, ids) in groups {
            let mut client = m.client.clone();
            let span = tracing::info_span!("router.worker_release", worker = %slot.label, url = %m.url);
            let request = span.in_scope(|| genarm_telemetry::traced_request(ReleaseRequest { seq_ids: ids }));
            let r = tokio::time::timeout(timeout, client.release(request))
                .instrument(span)
                .await
                .map_err(|_| CallError(format!("no answer to Release within {timeout:?}")))
                .and_then(|r| r.map_err(|s| CallError(describe_status(&s))));
            if first.is_ok() {
                first = r.map(|_| ());
            }
        }
        first
    }
}

impl Workers {
    /// One `Step` call on one member: per-sequence outcomes in order, the forward time the worker
    /// reported, and the bytes of the request and the reply.
    #[tracing::instrument(name = "router.worker_step", skip_all,
        fields(worker = %slot.label, url = %member.url, seqs = seqs.len()))]
    async fn step_on(
        &self,
        slot: &Slot,
        member: &Member,
        seqs: Vec<SeqStep>,
        logits_len: u32,
        dtype: WireDtype,
    ) -> Result<(Vec<SeqOutcome>, Duration, u64), CallError> {
        let ids: Vec<u64> = seqs.iter().map(|s| s.seq_id).collect();
        let req = StepRequest {
            reward_name: slot.reward_name.clone(),
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
        let request_bytes = req.encoded_len() as u64;
        let mut client = member.client.clone();
        let resp =
            tokio::time::timeout(self.step_timeout, client.step(genarm_telemetry::traced_request(req)))
                .await
                .map_err(|_| {
                    CallError(format!(
                        "no answer to Step within {} s (--step-timeout-secs): the worker is stalled or \
                         overloaded",
                        self.step_timeout.as_secs_f64()
                    ))
                })?
                .map_err(|s| CallError(describe_status(&s)))?
                .into_inner();
        if resp.results.len() != ids.len() {
            return Err(CallError(format!(
                "answered {} results for a step of {} sequences",
                resp.results.len(),
                ids.len()
            )));
        }
        let wire_bytes = request_bytes + resp.encoded_len() as u64;
        let forward = Duration::from_micros(resp.forward_micros);
        let outcomes = resp
            .results
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
            .collect::<Result<Vec<_>, CallError>>()?;
        Ok((outcomes, forward, wire_bytes))
    }
}

/// The sequences of one step placed on one member: (index in the step, the sequence).
type PlacedGroup = (Arc<Member>, Vec<(usize, SeqStep)>);

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
