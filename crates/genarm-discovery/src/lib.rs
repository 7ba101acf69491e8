//! genarm-discovery: etcd service discovery for a genarm cluster. Workers [`register`] a
//! [`WorkerRecord`] under `/genarm/<cluster>/workers/<role>/<name>/<id>` on a lease kept alive
//! by a background task (re-registered if the lease is lost, revoked on deregistration); the
//! router [`watch`]es `/genarm/<cluster>/workers/` and receives [`MembershipEvent`]s (an initial
//! get, then a watch from the next revision; after a lost connection it gets and watches again,
//! reporting only what changed). [`register_with`] and [`watch_with`] take [`EtcdSecurity`]:
//! TLS and user/password authentication.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Timeout of one etcd call (get, put, lease grant/revoke).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between reconnection attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Errors of registration and watching.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// etcd did not answer.
    #[error(
        "cannot reach etcd at {urls} (--etcd): {reason}; check that etcd runs and that the URLs are right \
         (and --etcd-ca/--etcd-cert/--etcd-key/--etcd-user if etcd requires TLS or authentication)"
    )]
    Unreachable {
        /// The endpoints, comma-separated.
        urls: String,
        /// What failed.
        reason: String,
    },
    /// A cluster or worker name that cannot be part of a key.
    #[error("{what} `{value}` cannot be used in an etcd key: it must be non-empty and contain no `/`")]
    BadName {
        /// Which name (`cluster name`, `reward name`, `instance id`).
        what: &'static str,
        /// The name.
        value: String,
    },
    /// No endpoints were given.
    #[error("no etcd endpoints given (--etcd takes comma-separated URLs such as http://127.0.0.1:2379)")]
    NoEndpoints,
}

/// The role of a registered worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerRole {
    /// The base-worker (key segment `base`, name `base`).
    Base,
    /// A reward-model worker (key segment `reward`, name = its reward name).
    Reward,
}

impl WorkerRole {
    /// The key segment: `base` or `reward`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerRole::Base => "base",
            WorkerRole::Reward => "reward",
        }
    }
}

/// What a worker registers (the JSON value of its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// gRPC URL, `http://host:port` (never a wildcard address).
    pub address: String,
    /// The model id the worker serves.
    pub model_id: String,
    /// Base or reward.
    pub role: WorkerRole,
    /// The reward name (empty for the base).
    #[serde(default)]
    pub reward_name: String,
    /// Hex SHA-256 vocabulary fingerprint over the worker's whole tokenizer.
    pub vocab_fingerprint: String,
    /// Logits per position.
    pub vocab_size: u32,
    /// KV capacity in tokens.
    pub kv_capacity_tokens: u64,
    /// The worker process's instance id (the key's last segment).
    pub instance_id: String,
    /// Worker protocol version.
    pub protocol_version: u32,
}

impl WorkerRecord {
    /// The `<name>` key segment: the reward name, or `base`.
    pub fn name(&self) -> &str {
        match self.role {
            WorkerRole::Base => "base",
            WorkerRole::Reward => &self.reward_name,
        }
    }

    /// This record's key in `cluster`.
    pub fn key(&self, cluster: &str) -> Result<String, DiscoveryError> {
        worker_key(cluster, self.role, self.name(), &self.instance_id)
    }
}

fn check_name(what: &'static str, value: &str) -> Result<(), DiscoveryError> {
    if value.is_empty() || value.contains('/') {
        return Err(DiscoveryError::BadName { what, value: value.to_string() });
    }
    Ok(())
}

/// `/genarm/<cluster>/workers/`: the prefix the router watches.
pub fn workers_prefix(cluster: &str) -> Result<String, DiscoveryError> {
    check_name("cluster name", cluster)?;
    Ok(format!("/genarm/{cluster}/workers/"))
}

/// `/genarm/<cluster>/workers/<role>/<name>/<id>`.
pub fn worker_key(cluster: &str, role: WorkerRole, name: &str, id: &str) -> Result<String, DiscoveryError> {
    check_name("reward name", name)?;
    check_name("instance id", id)?;
    Ok(format!("{}{}/{name}/{id}", workers_prefix(cluster)?, role.as_str()))
}

/// Splits `--etcd` (comma-separated URLs; blanks ignored).
pub fn parse_endpoints(urls: &str) -> Result<Vec<String>, DiscoveryError> {
    let eps: Vec<String> =
        urls.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
    if eps.is_empty() {
        return Err(DiscoveryError::NoEndpoints);
    }
    Ok(eps)
}

fn unreachable(endpoints: &[String], reason: impl std::fmt::Display) -> DiscoveryError {
    DiscoveryError::Unreachable { urls: endpoints.join(","), reason: reason.to_string() }
}

/// Runs one etcd call with [`CALL_TIMEOUT`], mapping failures to [`DiscoveryError::Unreachable`].
async fn call<T>(
    endpoints: &[String],
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, DiscoveryError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unreachable(endpoints, format!("{what}: {e}"))),
        Err(_) => Err(unreachable(endpoints, format!("{what}: no answer within {CALL_TIMEOUT:?}"))),
    }
}

/// How to authenticate to etcd: TLS (CA, optional client identity) and a user/password. The
/// default is plaintext without authentication. `Debug` never shows the password.
#[derive(Clone, Default)]
pub struct EtcdSecurity {
    /// TLS options (needs https:// endpoints).
    pub tls: Option<etcd_client::TlsOptions>,
    /// `(user, password)` for etcd's role-based authentication.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSecurity")
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

async fn connect(endpoints: &[String], security: &EtcdSecurity) -> Result<Client, DiscoveryError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some(tls) = &security.tls {
        opts = opts.with_tls(tls.clone());
    }
    if let Some((user, password)) = &security.user {
        opts = opts.with_user(user.clone(), password.clone());
    }
    call(endpoints, "connect", Client::connect(endpoints, Some(opts))).await
}

/// A live registration: the key stays in etcd while this exists. [`Registration::deregister`]
/// revokes the lease (the key disappears at once); dropping it revokes in the background.
#[derive(Debug)]
pub struct Registration {
    key: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Registration {
    /// The registered key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Revokes the lease and waits (at most a few seconds) until etcd confirmed it.
    pub async fn deregister(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(1), task).await.is_err() {
                tracing::warn!(key = %self.key, "etcd did not confirm the deregistration in time");
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Grants a lease of `ttl` seconds and puts `key = value` under it.
async fn grant_and_put(
    client: &mut Client,
    endpoints: &[String],
    key: &str,
    value: &str,
    ttl: i64,
) -> Result<i64, DiscoveryError> {
    let lease = call(endpoints, "lease grant", client.lease_grant(ttl, None)).await?.id();
    call(endpoints, "put", client.put(key, value, Some(PutOptions::new().with_lease(lease)))).await?;
    Ok(lease)
}

/// Registers `record` in `cluster` under a lease of `ttl` (seconds, ≥ 1) and keeps it alive in
/// a background task (keep-alive every third of the TTL; if the lease is lost — etcd
/// unreachable longer than the TTL, or restarted — it registers again once etcd answers).
/// Errors if etcd cannot be reached now, naming the URLs.
pub async fn register(
    endpoints: &[String],
    cluster: &str,
    record: &WorkerRecord,
    ttl: Duration,
) -> Result<Registration, DiscoveryError> {
    register_with(endpoints, &EtcdSecurity::default(), cluster, record, ttl).await
}

/// [`register`] with TLS and/or authentication.
pub async fn register_with(
    endpoints: &[String],
    security: &EtcdSecurity,
    cluster: &str,
    record: &WorkerRecord,
    ttl: Duration,
) -> Result<Registration, DiscoveryError> {
    if endpoints.is_empty() {
        return Err(DiscoveryError::NoEndpoints);
    }
    let key = record.key(cluster)?;
    let value = serde_json::to_string(record).expect("a worker record serializes");
    let ttl = ttl.as_secs().max(1) as i64;
    let mut client = connect(endpoints, security).await?;
    let lease = grant_and_put(&mut client, endpoints, &key, &value, ttl).await?;
    tracing::info!(%key, lease, ttl, "registered in etcd");
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(keep_registered(
        endpoints.to_vec(),
        security.clone(),
        client,
        key.clone(),
        value,
        ttl,
        lease,
        stop_rx,
    ));
    Ok(Registration { key, stop: Some(stop_tx), task: Some(task) })
}

/// The registration task: keep-alives until `stop`, then revoke.
#[allow(clippy::too_many_arguments)]
async fn keep_registered(
    endpoints: Vec<String>,
    security: EtcdSecurity,
    mut client: Client,
    key: String,
    value: String,
    ttl: i64,
    mut lease: i64,
    mut stop: oneshot::Receiver<()>,
) {
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(200));
    let mut alive = true;
    loop {
        // One keep-alive session: a stream of keep-alives until it fails or the lease is gone.
        let session = async {
            let (mut keeper, mut stream) =
                call(&endpoints, "lease keep-alive", client.lease_keep_alive(lease)).await?;
            loop {
                call(&endpoints, "lease keep-alive", keeper.keep_alive()).await?;
                match call(&endpoints, "lease keep-alive", stream.message()).await? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => return Err(unreachable(&endpoints, "the lease expired")),
                }
                tokio::time::sleep(period).await;
            }
        };
        let outcome: Result<(), DiscoveryError> = tokio::select! {
            _ = &mut stop => break,
            r = session => r,
        };
        if let Err(e) = outcome {
            if alive {
                tracing::warn!(%key, "etcd registration interrupted: {e}; registering again when etcd answers");
                alive = false;
            }
        }
        // Register again (a new lease: the old one may have expired).
        let again = async {
            tokio::time::sleep(RETRY_PAUSE).await;
            if let Ok(c) = connect(&endpoints, &security).await {
                client = c;
            }
            grant_and_put(&mut client, &endpoints, &key, &value, ttl).await
        };
        tokio::select! {
            _ = &mut stop => break,
            r = again => match r {
                Ok(l) => {
                    let old = std::mem::replace(&mut lease, l);
                    let _ = call(&endpoints, "lease revoke", client.lease_revoke(old)).await;
                    tracing::info!(%key, lease, "registered in etcd again");
                    alive = true;
                }
                Err(e) => tracing::debug!(%key, "registering again failed: {e}"),
            },
        }
    }
    match call(&endpoints, "lease revoke", client.lease_revoke(lease)).await {
        Ok(_) => tracing::info!(%key, "deregistered from etcd"),
        Err(e) => tracing::warn!(%key, "deregistration failed (the key expires with its lease): {e}"),
    }
}

/// A change of cluster membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A worker registered (or changed its record).
    Added {
        /// Its key.
        key: String,
        /// Its record.
        value: WorkerRecord,
    },
    /// A worker's key disappeared (deregistered, or its lease expired).
    Removed {
        /// Its key.
        key: String,
    },
}

/// The membership of a cluster as a stream of [`MembershipEvent`]s. Ends only when dropped.
#[derive(Debug)]
pub struct Membership {
    rx: mpsc::Receiver<MembershipEvent>,
    task: JoinHandle<()>,
}

impl Membership {
    /// The next event (`None` only if the watch task died, which it does not by itself).
    pub async fn next(&mut self) -> Option<MembershipEvent> {
        self.rx.recv().await
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The members known to the watcher; turns snapshots and watch events into deduplicated
/// [`MembershipEvent`]s.
#[derive(Debug, Default)]
struct Known(BTreeMap<String, WorkerRecord>);

impl Known {
    fn put(&mut self, key: &str, value: &[u8], out: &mut Vec<MembershipEvent>) {
        match serde_json::from_slice::<WorkerRecord>(value) {
            Ok(rec) => {
                if self.0.get(key) != Some(&rec) {
                    self.0.insert(key.to_string(), rec.clone());
                    out.push(MembershipEvent::Added { key: key.to_string(), value: rec });
                }
            }
            Err(e) => {
                tracing::warn!(%key, "ignoring an etcd key whose value is not a worker record: {e}");
                self.delete(key, out);
            }
        }
    }

    fn delete(&mut self, key: &str, out: &mut Vec<MembershipEvent>) {
        if self.0.remove(key).is_some() {
            out.push(MembershipEvent::Removed { key: key.to_string() });
        }
    }

    /// Reconciles with a full snapshot.
    fn snapshot(&mut self, kvs: Vec<(String, Vec<u8>)>, out: &mut Vec<MembershipEvent>) {
        let present: std::collections::BTreeSet<&String> = kvs.iter().map(|(k, _)| k).collect();
        let gone: Vec<String> = self.0.keys().filter(|k| !present.contains(k)).cloned().collect();
        for k in gone {
            self.delete(&k, out);
        }
        for (k, v) in &kvs {
            self.put(k, v, out);
        }
    }
}

/// Gets everything under `prefix`: `(key, value)` pairs and the revision.
async fn get_prefix(
    client: &mut Client,
    endpoints: &[String],
    prefix: &str,
) -> Result<(Vec<(String, Vec<u8>)>, i64), DiscoveryError> {
    let resp = call(endpoints, "get", client.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let kvs = resp
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec()))
        .collect();
    Ok((kvs, rev))
}

/// Watches `prefix` (e.g. [`workers_prefix`]): the current members first (as `Added`), then
/// every change. Errors if etcd cannot be reached now, naming the URLs; later connection losses
/// are logged and healed (get again, report the difference, watch again).
pub async fn watch(endpoints: &[String], prefix: &str) -> Result<Membership, DiscoveryError> {
    watch_with(endpoints, &EtcdSecurity::default(), prefix).await
}

/// [`watch`] with TLS and/or authentication.
pub async fn watch_with(
    endpoints: &[String],
    security: &EtcdSecurity,
    prefix: &str,
) -> Result<Membership, DiscoveryError> {
    if endpoints.is_empty() {
        return Err(DiscoveryError::NoEndpoints);
    }
    let mut client = connect(endpoints, security).await?;
    let (kvs, rev) = get_prefix(&mut client, endpoints, prefix).await?;
    let (tx, rx) = mpsc::channel(256);
    let mut known = Known::default();
    let mut first = Vec::new();
    known.snapshot(kvs, &mut first);
    let task = tokio::spawn(watch_task(
        endpoints.to_vec(),
        security.clone(),
        prefix.to_string(),
        client,
        known,
        first,
        rev,
        tx,
    ));
    Ok(Membership { rx, task })
}

#[allow(clippy::too_many_arguments)]
async fn watch_task(
    endpoints: Vec<String>,
    security: EtcdSecurity,
    prefix: String,
    mut client: Client,
    mut known: Known,
    first: Vec<MembershipEvent>,
    mut rev: i64,
    tx: mpsc::Sender<MembershipEvent>,
) {
    for ev in first {
        if tx.send(ev).await.is_err() {
            return;
        }
    }
    loop {
        // Watch from the revision after the last snapshot.
        let session = async {
            let opts = WatchOptions::new().with_prefix().with_start_revision(rev + 1);
            let mut stream = call(&endpoints, "watch", client.watch(prefix.as_str(), Some(opts))).await?;
            loop {
                let Some(resp) =
                    stream.message().await.map_err(|e| unreachable(&endpoints, format!("watch: {e}")))?
                else {
                    return Err(unreachable(&endpoints, "the watch stream ended"));
                };
                if resp.canceled() {
                    return Err(unreachable(
                        &endpoints,
                        format!("etcd cancelled the watch ({})", resp.cancel_reason()),
                    ));
                }
                let mut out = Vec::new();
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    match ev.event_type() {
                        EventType::Put => known.put(&key, kv.value(), &mut out),
                        EventType::Delete => known.delete(&key, &mut out),
                    }
                }
                for ev in out {
                    if tx.send(ev).await.is_err() {
                        return Ok(());
                    }
                }
            }
        };
        if let Err(e) = session.await {
            tracing::warn!("etcd watch of {prefix} interrupted: {e}; watching again when etcd answers");
        } else {
            return; // the receiver is gone
        }
        // Heal: reconnect, take a snapshot, report the difference, watch again.
        loop {
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
            let snap = async {
                let mut c = connect(&endpoints, &security).await?;
                let r = get_prefix(&mut c, &endpoints, &prefix).await?;
                Ok::<_, DiscoveryError>((c, r))
            };
            match snap.await {
                Ok((c, (kvs, r))) => {
                    client = c;
                    rev = r;
                    let mut out = Vec::new();
                    known.snapshot(kvs, &mut out);
                    for ev in out {
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                    tracing::info!(%prefix, "etcd watch restored");
                    break;
                }
                Err(e) => tracing::debug!("etcd still unreachable: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> WorkerRecord {
        WorkerRecord {
            address: "http://127.0.0.1:1".into(),
            model_id: "m".into(),
            role: WorkerRole::Reward,
            reward_name: "helpful".into(),
            vocab_fingerprint: "00".into(),
            vocab_size: 10,
            kv_capacity_tokens: 100,
            instance_id: id.into(),
            protocol_version: 1,
        }
    }

    #[test]
    fn keys_follow_the_schema_and_refuse_slashes() {
        assert_eq!(rec("i1").key("prod").unwrap(), "/genarm/prod/workers/reward/helpful/i1");
        assert_eq!(workers_prefix("prod").unwrap(), "/genarm/prod/workers/");
        let base = WorkerRecord { role: WorkerRole::Base, reward_name: String::new(), ..rec("b") };
        assert_eq!(base.key("c").unwrap(), "/genarm/c/workers/base/base/b");
        assert!(matches!(workers_prefix("a/b"), Err(DiscoveryError::BadName { .. })));
        assert!(rec("").key("c").is_err());
    }

    #[test]
    fn record_json_has_the_documented_fields() {
        let v: serde_json::Value = serde_json::to_value(rec("i")).unwrap();
        for f in [
            "address",
            "model_id",
            "role",
            "reward_name",
            "vocab_fingerprint",
            "vocab_size",
            "kv_capacity_tokens",
            "instance_id",
            "protocol_version",
        ] {
            assert!(v.get(f).is_some(), "{f} missing in {v}");
        }
        assert_eq!(v["role"], "reward");
    }

    #[test]
    fn snapshots_report_only_differences() {
        let mut k = Known::default();
        let a = serde_json::to_vec(&rec("a")).unwrap();
        let b = serde_json::to_vec(&rec("b")).unwrap();
        let mut out = Vec::new();
        k.snapshot(vec![("ka".into(), a.clone()), ("kb".into(), b.clone())], &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        k.snapshot(vec![("kb".into(), b)], &mut out);
        assert_eq!(out, vec![MembershipEvent::Removed { key: "ka".into() }]);
        out.clear();
        k.put("kc", b"not json", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn endpoints_are_split_on_commas() {
        assert_eq!(parse_endpoints(" http://a:1, http://b:2,").unwrap(), vec!["http://a:1", "http://b:2"]);
        assert!(parse_endpoints(" , ").is_err());
    }
}
