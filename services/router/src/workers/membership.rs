//! Membership of the pool: turns the static flags (`--base URL`, `--rm NAME=URL`: members that
//! never expire) and the etcd registrations (added when their key appears, removed when it
//! disappears) into members. Every newcomer is probed until SERVING and checked; at startup the
//! first worker of each slot that passes fixes the [`Catalog`], later ones must serve the same
//! model as their slot. A monitor task per member keeps its readiness up to date.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{anyhow, bail};
use genarm_discovery::MembershipEvent;
use genarm_proto::v1::{InfoResponse, PROTOCOL_VERSION};
use genarm_text::ModelText;
use tokio::sync::mpsc;

use super::backend::ModelIndex;
use super::catalog::{check_arm, Catalog, ModelEntry};
use super::config::WorkersConfig;
use super::pool::{Identity, Member, Workers};
use super::probe::{check_discovered, check_info, check_wire, clients, probe};

/// A worker the pool learnt about: from a flag or from etcd.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub(super) key: String,
    pub(super) url: String,
    pub(super) slot: ModelIndex,
    pub(super) is_static: bool,
}

/// What the membership task reacts to.
pub(super) enum Event {
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
pub(super) struct Probed {
    pub(super) cand: Candidate,
    pub(super) info: InfoResponse,
    pub(super) entry: ModelEntry,
}

/// The membership of the pool: turns flag entries and etcd events into members, probing and
/// checking each newcomer. Runs before the catalog exists (choosing its first members) and then
/// for the router's life.
pub(super) struct Membership {
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
    /// Starts the membership: the `--base`/`--rm` URLs as static candidates and, with etcd, a
    /// watch that turns registrations into candidates. The receiver yields the events the
    /// membership reacts to.
    pub(super) async fn start(cfg: &WorkersConfig) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<Event>)> {
        let mut names: Vec<String> = cfg.rms.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        let slot_names: Vec<Option<String>> =
            std::iter::once(None).chain(names.into_iter().map(Some)).collect();
        let (tx, rx) = mpsc::unbounded_channel();
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
        let ms = Membership {
            cfg: cfg.clone(),
            slot_names,
            tx,
            probing: HashMap::new(),
            known: HashMap::new(),
            next_seq: 0,
            deadline: tokio::time::Instant::now() + cfg.connect_timeout,
        };
        Ok((ms, rx))
    }

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
        check_wire(info, self.cfg.logits_wire, &c.url)?;
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
    pub(super) async fn until_catalog(
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
                        Err(e) if p.cand.is_static => return Err(e.into()),
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
    pub(super) async fn live(
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
pub(super) fn admit(
    w: &Arc<Workers>,
    weak: &Weak<Workers>,
    c: Candidate,
    info: &InfoResponse,
    ms: &Membership,
) {
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
    let member = Arc::new(Member::new(c.key.clone(), c.url.clone(), client, health, info));
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

/// Keeps one member's readiness up to date: periodic health checks while ready; while not
/// ready, probes until it answers as the same model. Ends when the member leaves the pool or
/// the workers are dropped.
pub(super) async fn monitor(workers: Weak<Workers>, m: ModelIndex, member: Arc<Member>) {
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
