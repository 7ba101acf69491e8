//! The pool: one [`Slot`] per model of the catalog, each holding the [`Member`]s (replicas) that
//! serve it. [`Workers`] is the real [`StepBackend`]: it places a new sequence on the
//! least-loaded ready member and keeps it there (its KV lives there), and when a member fails it
//! answers that member's sequences [`SeqErrorKind::ReplicaLost`] while another one is ready, so
//! that the step replays them there (failover).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use genarm_fusion::WireDtype;
use genarm_proto::v1::worker_client::WorkerClient;
use genarm_proto::v1::{InfoResponse, ReleaseRequest};
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use super::backend::{
    LogitsWire, ModelIndex, RowFetch, SeqErrorKind, SeqOutcome, SeqStep, StepBackend, StepReply, WorkerHealth,
};
use super::catalog::Catalog;
use super::config::WorkersConfig;
use super::error::CallError;
use super::membership::{self, Membership};
use super::prefix_affinity::{affinity_allowed, PrefixMemory};
use super::probe::clients;

/// One worker process serving a model slot: a static `--base`/`--rm` URL (never expires) or a
/// worker registered in etcd (removed when its key disappears).
pub(super) struct Member {
    /// The etcd key, or `--base` / `--rm NAME` for a static member.
    pub(super) key: String,
    pub(super) url: String,
    pub(super) client: WorkerClient<Channel>,
    pub(super) health: HealthClient<Channel>,
    pub(super) ready: AtomicBool,
    /// Set when the member left the pool; its monitor then ends.
    pub(super) removed: AtomicBool,
    pub(super) wake: Notify,
    /// Sequences this member may still hold after it failed (a Step that timed out may still
    /// complete on a stalled worker): released by its monitor when it answers again, before it
    /// is marked ready (so that no replay placed on it afterwards can be released by mistake).
    pub(super) pending_release: Mutex<Vec<u64>>,
    /// The prompt blocks recently placed here, when the worker has a prefix cache.
    pub(super) prefix: Option<Mutex<PrefixMemory>>,
}

/// One model of the catalog (backend index) and the workers serving it (replicas): each
/// sequence is placed on one ready member.
pub(super) struct Slot {
    /// `base-worker` or `rm-worker "NAME"`.
    pub(super) label: String,
    pub(super) model_id: String,
    pub(super) reward_name: String,
    /// What every member must report.
    pub(super) identity: Identity,
    pub(super) members: RwLock<Vec<Arc<Member>>>,
    /// Sequence id → the member holding its KV.
    pub(super) placements: Mutex<HashMap<u64, Arc<Member>>>,
    /// Rotates the choice among equally loaded members.
    pub(super) turn: AtomicUsize,
}

impl Member {
    /// A ready member at `url` (its monitor starts separately).
    pub(super) fn new(
        key: String,
        url: String,
        client: WorkerClient<Channel>,
        health: HealthClient<Channel>,
        info: &InfoResponse,
    ) -> Self {
        let block = info.kv_block_size.max(1) as usize;
        let prefix = info.prefix_cache.then(|| {
            let blocks = (info.kv_capacity_tokens as usize).div_ceil(block);
            Mutex::new(PrefixMemory::new(block, blocks))
        });
        Member {
            key,
            url,
            client,
            health,
            ready: AtomicBool::new(true),
            removed: AtomicBool::new(false),
            wake: Notify::new(),
            pending_release: Mutex::new(Vec::new()),
            prefix,
        }
    }

    /// Queues `ids` for release when the member answers again (see `pending_release`).
    pub(super) fn defer_release(&self, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        self.pending_release.lock().unwrap_or_else(|e| e.into_inner()).extend(ids);
        self.wake.notify_one();
    }

    /// Releases the deferred sequences; false (they stay queued) if the worker does not answer.
    pub(super) async fn flush_releases(&self, timeout: Duration) -> bool {
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
    pub(super) fn usable(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.removed.load(Ordering::SeqCst)
    }
}

impl Slot {
    pub(super) fn members(&self) -> Vec<Arc<Member>> {
        self.members.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn placements(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Member>>> {
        self.placements.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ready member holding the fewest sequences; ties taken in turn (round robin).
    pub(super) fn least_loaded(&self, placements: &HashMap<u64, Arc<Member>>) -> Option<Arc<Member>> {
        let mut ready: Vec<Arc<Member>> = self.members().into_iter().filter(|m| m.usable()).collect();
        if ready.is_empty() {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % ready.len();
        ready.rotate_left(turn);
        ready.into_iter().min_by_key(|m| placements.values().filter(|p| Arc::ptr_eq(p, m)).count())
    }

    /// Where a new sequence starting with `tokens` goes: the ready member that was sent the
    /// longest prefix of them lately (its prefix cache likely holds it), unless it is much busier
    /// than the least-loaded member ([`affinity_allowed`]); otherwise the least-loaded one. The
    /// choice is remembered for the next sequences.
    pub(super) fn place(
        &self,
        placements: &HashMap<u64, Arc<Member>>,
        tokens: &[u32],
    ) -> Option<Arc<Member>> {
        let least = self.least_loaded(placements)?;
        let load = |m: &Arc<Member>| placements.values().filter(|p| Arc::ptr_eq(p, m)).count();
        let by_prefix = self
            .members()
            .into_iter()
            .filter(|m| m.usable())
            .filter_map(|m| {
                let matched =
                    m.prefix.as_ref()?.lock().unwrap_or_else(|e| e.into_inner()).matched_blocks(tokens);
                (matched > 0).then_some((matched, m))
            })
            // Longest match; among equal matches the least loaded.
            .max_by(|(a, ma), (b, mb)| a.cmp(b).then_with(|| load(mb).cmp(&load(ma))));
        let chosen = match by_prefix {
            Some((_, m)) if Arc::ptr_eq(&m, &least) || affinity_allowed(load(&m), load(&least)) => m,
            _ => least,
        };
        if let Some(memory) = &chosen.prefix {
            memory.lock().unwrap_or_else(|e| e.into_inner()).record(tokens);
        }
        Some(chosen)
    }

    pub(super) fn any_usable(&self) -> bool {
        self.members().iter().any(|m| m.usable())
    }

    /// The member steps go to: the first ready one.
    pub(super) fn active(&self) -> Option<Arc<Member>> {
        self.members().into_iter().find(|m| m.ready.load(Ordering::SeqCst))
    }
}

/// The parts of `Info` that must not change when a worker comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) model_id: String,
    pub(super) role: i32,
    pub(super) reward_name: String,
    pub(super) vocab_size: u32,
    pub(super) vocab_fingerprint: Vec<u8>,
}

impl Identity {
    pub(super) fn of(info: &InfoResponse) -> Self {
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
    pub(super) slots: Vec<Slot>,
    pub(super) catalog: Arc<Catalog>,
    pub(super) call_timeout: Duration,
    pub(super) step_timeout: Duration,
    pub(super) reprobe: Duration,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("models", &self.slots.iter().map(|c| &c.label).collect::<Vec<_>>())
            .finish()
    }
}

impl Workers {
    /// Builds the pool: the `--base`/`--rm` URLs and, with etcd, the registered workers; waits
    /// (static URLs until `cfg.connect_timeout`; etcd registrations for as long as it takes)
    /// until the base and every reward name have a worker that passes the checks, then keeps
    /// the membership up to date in the background.
    pub async fn connect(cfg: &WorkersConfig) -> anyhow::Result<Arc<Self>> {
        let (mut ms, mut rx) = Membership::start(cfg).await?;
        let (catalog, firsts, rest) = ms.until_catalog(&mut rx).await?;
        let catalog = Arc::new(catalog);
        tracing::info!(vocab = catalog.vocab, max_context = catalog.max_context,
            reward_models = ?catalog.reward_names(), "cluster checked");
        let mut slots = Vec::new();
        let mut members = Vec::new();
        for p in firsts {
            let (client, health) = clients(&p.cand.url, cfg.max_message_bytes, cfg.tls.as_ref())?;
            let member =
                Arc::new(Member::new(p.cand.key.clone(), p.cand.url.clone(), client, health, &p.info));
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
            tokio::spawn(membership::monitor(Arc::downgrade(&workers), m, member));
        }
        // The other workers already checked (replicas) join before the router is ready.
        for p in rest {
            membership::admit(&workers, &Arc::downgrade(&workers), p.cand, &p.info, &ms);
        }
        tokio::spawn(ms.live(rx, Arc::downgrade(&workers), Vec::new()));
        Ok(workers)
    }

    /// The models.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
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
        wire: LogitsWire,
    ) -> Result<StepReply, CallError> {
        let slot = self.slots.get(model).ok_or(CallError::UnknownModel(model))?;
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
                            .place(&placements, &s.tokens)
                            .ok_or_else(|| CallError::NoReadyWorker(slot.label.clone()))?;
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
            return Err(CallError::NoReadyWorker(slot.label.clone()));
        }
        let calls = groups.into_iter().map(|(member, group)| async move {
            let (idx, steps): (Vec<usize>, Vec<SeqStep>) = group.into_iter().unzip();
            let r = self.step_on(slot, &member, steps, logits_len, dtype, wire).await;
            (member, idx, r)
        });
        let mut last_error = None;
        let mut forward = Duration::ZERO;
        let mut wire_bytes = 0u64;
        let mut cached_tokens = 0u64;
        for (member, idx, r) in futures::future::join_all(calls).await {
            match r {
                Ok((outs, member_forward, member_bytes, member_cached)) => {
                    forward = forward.max(member_forward);
                    wire_bytes += member_bytes;
                    cached_tokens += member_cached;
                    for (i, o) in idx.into_iter().zip(outs) {
                        outcomes[i] = Some(o);
                    }
                }
                Err(e) => {
                    if member.ready.swap(false, Ordering::SeqCst) {
                        tracing::error!(worker = %slot.label, model = %slot.model_id, url = %member.url,
                            error = %e, "worker call failed: marked not ready");
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
                            message: format!("the {} replica at {} failed: {}", slot.label, member.url, e),
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
        Ok(StepReply { outcomes, forward, wire_bytes, cached_tokens })
    }

    async fn fetch_rows(
        &self,
        model: ModelIndex,
        seq_ids: Vec<u64>,
        logits_len: u32,
        what: RowFetch,
    ) -> Result<(Vec<SeqOutcome>, u64), CallError> {
        let slot = self.slots.get(model).ok_or(CallError::UnknownModel(model))?;
        let mut outcomes: Vec<Option<SeqOutcome>> = vec![None; seq_ids.len()];
        // From the member that served the step: a sequence whose member is gone is lost there.
        let mut groups: Vec<FetchGroup> = Vec::new();
        {
            let placements = slot.placements();
            for (i, &id) in seq_ids.iter().enumerate() {
                match placements.get(&id) {
                    Some(m) if m.usable() => match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, m)) {
                        Some((_, g)) => g.push((i, id)),
                        None => groups.push((Arc::clone(m), vec![(i, id)])),
                    },
                    _ => {
                        outcomes[i] = Some(SeqOutcome::Error {
                            kind: SeqErrorKind::ReplicaLost,
                            message: format!("the {} replica holding its row is gone", slot.label),
                        })
                    }
                }
            }
        }
        let calls = groups.into_iter().map(|(member, group)| {
            let (idx, ids): (Vec<usize>, Vec<u64>) = group.into_iter().unzip();
            let what = what.subset(&idx);
            async move {
                let r = self.fetch_rows_on(slot, &member, ids, logits_len, what).await;
                (member, idx, r)
            }
        });
        let mut wire_bytes = 0;
        for (member, idx, r) in futures::future::join_all(calls).await {
            match r {
                Ok((outs, bytes)) => {
                    wire_bytes += bytes;
                    for (i, o) in idx.into_iter().zip(outs) {
                        outcomes[i] = Some(o);
                    }
                }
                Err(e) => {
                    for i in idx {
                        outcomes[i] = Some(SeqOutcome::Error {
                            kind: SeqErrorKind::ReplicaLost,
                            message: format!(
                                "the {} replica at {} failed FetchRows: {e}",
                                slot.label, member.url
                            ),
                        });
                    }
                }
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(SeqOutcome::Error { kind: SeqErrorKind::Invalid, message: "no outcome".into() })
            })
            .collect();
        Ok((outcomes, wire_bytes))
    }

    async fn release(&self, model: ModelIndex, seq_ids: Vec<u64>) -> Result<(), CallError> {
        let slot = self.slots.get(model).ok_or(CallError::UnknownModel(model))?;
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
            let r = Workers::release_on(slot, &m, ids, timeout).await;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// The sequences of one row fetch held by one member: (index in the fetch, the sequence id).
type FetchGroup = (Arc<Member>, Vec<(usize, u64)>);

/// The sequences of one step placed on one member: (index in the step, the sequence).
type PlacedGroup = (Arc<Member>, Vec<(usize, SeqStep)>);
