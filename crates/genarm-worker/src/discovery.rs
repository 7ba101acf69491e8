//! etcd registration of a worker: the `--etcd`, `--cluster`, `--advertise`,
//! `--lease-ttl-secs` and `--etcd-ca/-cert/-key/-user/-password` flags ([`DiscoveryArgs`]), the advertised URL (never a wildcard address),
//! and [`register_worker`], which puts the worker's record under its lease once it is SERVING.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use genarm_discovery::{Registration, WorkerRecord, WorkerRole};
use genarm_proto::v1::{InfoResponse, Role};

use crate::error::WorkerError;

/// etcd discovery flags (shared by both worker binaries).
#[derive(Debug, Clone, Args, Default)]
pub struct DiscoveryArgs {
    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379). When set, the worker
    /// registers under /genarm/<cluster>/workers/<role>/<name>/<instance id> once it is loaded
    /// and warmed (health SERVING), keeps the key alive on a lease, and deregisters first on
    /// SIGTERM/SIGINT. Without it the worker is only reachable through the router's static flags.
    #[arg(long, env = "GENARM_ETCD", value_name = "URLS")]
    pub etcd: Option<String>,

    /// Cluster name: the etcd key prefix /genarm/<cluster>/ the router watches.
    #[arg(long, env = "GENARM_CLUSTER", default_value = "default", value_name = "NAME")]
    pub cluster: String,

    /// Address registered in etcd for the router to dial, as host:port (or http://host:port;
    /// https:// when the worker serves TLS). Default: the bound listen address, unless that is a wildcard (0.0.0.0, [::]) — then this
    /// flag is required (e.g. the pod IP or a DNS name).
    #[arg(long, env = "GENARM_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// Lease TTL of the etcd registration, in seconds: a worker that dies without deregistering
    /// disappears from the cluster after at most this long.
    #[arg(long, env = "GENARM_LEASE_TTL_SECS", default_value_t = 10, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_ttl_secs: u64,

    /// etcd TLS and authentication (`--etcd-ca`, `--etcd-cert`, `--etcd-key`, `--etcd-user`,
    /// `--etcd-password`).
    #[command(flatten)]
    pub etcd_tls: genarm_tls::EtcdTlsArgs,
}

/// The URL to register: `--advertise` (with `http://`, or `https://` when `tls`, added when it
/// has no scheme), else the bound address when it is not a wildcard; an error naming the flag
/// otherwise (also for a scheme that contradicts `tls`).
pub fn advertised_url(args: &DiscoveryArgs, bound: SocketAddr, tls: bool) -> Result<String, WorkerError> {
    let scheme = if tls { "https" } else { "http" };
    if let Some(a) = args.advertise.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
        let url = if a.contains("://") { a.to_string() } else { format!("{scheme}://{a}") };
        if !url.starts_with(&format!("{scheme}://")) {
            return Err(WorkerError::Config(format!(
                "--advertise {a}: this worker serves {} so the router must dial {scheme}://; give \
                 --advertise without a scheme or with {scheme}://",
                if tls { "TLS (--tls-cert)" } else { "plaintext gRPC (no --tls-cert)" }
            )));
        }
        let host_port = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
        if let Ok(addr) = host_port.trim_end_matches('/').parse::<SocketAddr>() {
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(WorkerError::Config(format!(
                    "--advertise {a}: advertise an address the router can dial, not a wildcard or port 0"
                )));
            }
        }
        return Ok(url);
    }
    if bound.ip().is_unspecified() {
        return Err(WorkerError::Config(format!(
            "the worker listens on the wildcard address {bound}, which the router cannot dial: set \
             --advertise HOST:PORT (or GENARM_ADVERTISE) to the address it should use, e.g. the pod IP \
             and port {}",
            bound.port()
        )));
    }
    Ok(format!("{scheme}://{bound}"))
}

/// The record registered for a worker answering `info` at `address`.
pub fn record(info: &InfoResponse, address: String) -> WorkerRecord {
    WorkerRecord {
        address,
        model_id: info.model_id.clone(),
        role: if info.role == Role::Base as i32 { WorkerRole::Base } else { WorkerRole::Reward },
        reward_name: info.reward_name.clone(),
        vocab_fingerprint: info.vocab_fingerprint.iter().map(|b| format!("{b:02x}")).collect(),
        vocab_size: info.vocab_size,
        kv_capacity_tokens: info.kv_capacity_tokens,
        instance_id: info.instance_id.clone(),
        protocol_version: info.protocol_version,
    }
}

/// Registers the worker (when `--etcd` is set); `Ok(None)` without etcd. Errors name the etcd
/// URLs when etcd cannot be reached.
pub async fn register_worker(
    args: &DiscoveryArgs,
    info: &InfoResponse,
    address: &str,
) -> Result<Option<Registration>, WorkerError> {
    let Some(etcd) = &args.etcd else { return Ok(None) };
    let endpoints =
        genarm_discovery::parse_endpoints(etcd).map_err(|e| WorkerError::Config(e.to_string()))?;
    let rec = record(info, address.to_string());
    let security = etcd_security(&args.etcd_tls, &endpoints)?;
    let ttl = Duration::from_secs(args.lease_ttl_secs);
    let reg = genarm_discovery::register_with(&endpoints, &security, &args.cluster, &rec, ttl)
        .await
        .map_err(|e| WorkerError::Config(format!("cannot register in etcd: {e}")))?;
    tracing::info!(key = reg.key(), address, "registered in etcd");
    Ok(Some(reg))
}

/// The etcd connection security from the `--etcd-*` flags, checked against the endpoints.
pub fn etcd_security(
    args: &genarm_tls::EtcdTlsArgs,
    endpoints: &[String],
) -> Result<genarm_discovery::EtcdSecurity, WorkerError> {
    let config = |e: genarm_tls::TlsError| WorkerError::Config(e.to_string());
    args.check_endpoints(endpoints).map_err(config)?;
    Ok(genarm_discovery::EtcdSecurity {
        tls: args.tls().map_err(config)?,
        user: args.user().map_err(config)?.map(|(u, p)| (u, p.expose().to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_need_advertise() {
        let none = DiscoveryArgs::default();
        let local = "127.0.0.1:5".parse().unwrap();
        assert_eq!(advertised_url(&none, local, false).unwrap(), "http://127.0.0.1:5");
        assert_eq!(advertised_url(&none, local, true).unwrap(), "https://127.0.0.1:5");
        let e = advertised_url(&none, "0.0.0.0:5".parse().unwrap(), false).unwrap_err().to_string();
        assert!(e.contains("--advertise"), "{e}");
        let a = DiscoveryArgs { advertise: Some("w1.svc:7000".into()), ..Default::default() };
        assert_eq!(advertised_url(&a, "0.0.0.0:5".parse().unwrap(), false).unwrap(), "http://w1.svc:7000");
        assert_eq!(advertised_url(&a, "0.0.0.0:5".parse().unwrap(), true).unwrap(), "https://w1.svc:7000");
        let bad = DiscoveryArgs { advertise: Some("0.0.0.0:7000".into()), ..Default::default() };
        assert!(advertised_url(&bad, "0.0.0.0:5".parse().unwrap(), false).is_err());
        let plain = DiscoveryArgs { advertise: Some("http://w1.svc:7000".into()), ..Default::default() };
        let e = advertised_url(&plain, local, true).unwrap_err().to_string();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn records_carry_the_info() {
        let info = InfoResponse {
            protocol_version: 1,
            model_id: "m".into(),
            role: Role::Reward as i32,
            reward_name: "helpful".into(),
            vocab_fingerprint: vec![0xab, 0x01],
            vocab_size: 9,
            kv_capacity_tokens: 64,
            instance_id: "id".into(),
            ..Default::default()
        };
        let r = record(&info, "http://h:1".into());
        assert_eq!(r.vocab_fingerprint, "ab01");
        assert_eq!(r.role, WorkerRole::Reward);
        assert_eq!(r.key("c").unwrap(), "/genarm/c/workers/reward/helpful/id");
    }
}
