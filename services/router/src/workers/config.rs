//! `WorkersConfig` and `EtcdConfig`: where the router finds its workers and how it talks to them.

use std::time::Duration;

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
    /// The logits wire steps use (`--logits-wire`): a worker that cannot answer with it is
    /// refused at connect time.
    pub logits_wire: super::LogitsWire,
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
