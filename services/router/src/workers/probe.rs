//! Probing one worker: its gRPC clients (lazy channel, optional mutual TLS), a health check
//! plus `Info` with a timeout, and the checks of what it reports (protocol version, role,
//! reward name) against the flag or the etcd registration that named it.

use std::time::Duration;

use anyhow::{bail, Context as _};
use genarm_proto::v1::worker_client::WorkerClient;
use genarm_proto::v1::{InfoRequest, InfoResponse, Role, PROTOCOL_VERSION, WORKER_SERVICE_NAME};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::backend::LogitsWire;
use super::error::CallError;

/// Clients for one URL (the channel connects lazily and reconnects by itself), over mutual TLS
/// when `tls` is given.
pub(super) fn clients(
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
pub(super) async fn probe(
    client: &mut WorkerClient<Channel>,
    health: &mut HealthClient<Channel>,
    timeout: Duration,
) -> Result<InfoResponse, String> {
    let check = async {
        let status = health
            .check(HealthCheckRequest { service: WORKER_SERVICE_NAME.to_string() })
            .await
            .map_err(|s| CallError::from_status(&s).to_string())?
            .into_inner()
            .status;
        if status != ServingStatus::Serving as i32 {
            return Err("not serving yet (still loading or warming up)".to_string());
        }
        client
            .info(InfoRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| CallError::from_status(&s).to_string())
    };
    tokio::time::timeout(timeout, check).await.map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Checks what a worker reports against what the router was told.
pub(super) fn check_info(info: &InfoResponse, reward_name: Option<&str>, url: &str) -> anyhow::Result<()> {
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

/// Checks that a worker can answer steps with the router's logits wire (every worker sends full
/// rows; the sparse wire needs a worker that lists it in `Info.logits_wires`).
pub(super) fn check_wire(info: &InfoResponse, wire: LogitsWire, url: &str) -> anyhow::Result<()> {
    let sparse = genarm_proto::v1::LogitsWire::Sparse as i32;
    if matches!(wire, LogitsWire::Sparse { .. }) && !info.logits_wires.contains(&sparse) {
        let theirs: Vec<&str> = std::iter::once("full")
            .chain(info.logits_wires.iter().filter(|&&w| w == sparse).map(|_| "sparse"))
            .collect();
        bail!(
            "this router runs --logits-wire sparse, but the worker at {url} (model {}, {}) answers only \
             with the {} wire: upgrade the worker to a genarm release with the sparse wire, or run the \
             router with --logits-wire full",
            info.model_id,
            if info.reward_name.is_empty() {
                "the base".to_string()
            } else {
                format!("reward model \"{}\"", info.reward_name)
            },
            theirs.join(", ")
        );
    }
    Ok(())
}

/// Checks what a worker registered in etcd under `slot_name` (`None`: base) reports.
pub(super) fn check_discovered(
    info: &InfoResponse,
    slot_name: Option<&str>,
    url: &str,
) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
