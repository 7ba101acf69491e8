//! Serving: bind the listener, announce it on stdout, serve `genarm.v1.Worker` and
//! `grpc.health.v1` at once (NOT_SERVING while the model loads on a background thread, SERVING
//! once it is loaded and warmed), and stop gracefully on a shutdown signal.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;

use genarm_model::ModelAssets;
use genarm_proto::v1::worker_server::WorkerServer;
use genarm_proto::v1::WORKER_SERVICE_NAME;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::info::build_info;
use crate::load::{load_engine, open_assets};
use crate::service::WorkerService;
use crate::shutdown::shutdown_signal;

/// The start of the line a worker prints on stdout once bound: `GENARM_LISTENING grpc <ip:port>`.
pub const LISTENING_PREFIX: &str = "GENARM_LISTENING grpc";

/// The whole life of a worker process: opens the model (failing fast on a bad path), binds
/// `config.listen`, prints the `GENARM_LISTENING grpc <addr>` line, then [`serve`]s until
/// SIGTERM/SIGINT.
pub async fn run(config: WorkerConfig) -> Result<(), WorkerError> {
    let shutdown = shutdown_signal()
        .map_err(|e| WorkerError::Internal(format!("cannot install the SIGTERM/SIGINT handlers: {e}")))?;
    let (path, lora) = (config.model.clone(), config.lora.clone());
    let assets = tokio::task::spawn_blocking(move || open_assets(&path, lora.as_deref()))
        .await
        .map_err(|e| WorkerError::Internal(format!("the model opening task failed: {e}")))??;
    // Refuse an impossible --tp before announcing the address (loading would fail anyway).
    genarm_model::model::check_tp(&assets.config, config.engine.tp)
        .map_err(|source| WorkerError::Model { path: config.model.clone(), source })?;
    // Refuse bad --tls-* / --etcd-* flags before announcing the address too.
    tls_config(&config)?;
    if let Some(etcd) = &config.discovery.etcd {
        let endpoints =
            genarm_discovery::parse_endpoints(etcd).map_err(|e| WorkerError::Config(e.to_string()))?;
        crate::discovery::etcd_security(&config.discovery.etcd_tls, &endpoints)?;
    }
    let listener = bind(&config.listen).await?;
    let addr =
        listener.local_addr().map_err(|source| WorkerError::Bind { addr: config.listen.clone(), source })?;
    announce(addr)?;
    tracing::info!(
        %addr,
        model = %assets.model_id,
        role = %config.role.describe(),
        tp = config.engine.tp,
        device = ?config.engine.device,
        dtype = config.dtype.name(),
        "listening; loading the model"
    );
    serve(listener, assets, config, shutdown).await
}

/// Binds `listen` (`host:port`; port 0 picks a free port).
pub async fn bind(listen: &str) -> Result<TcpListener, WorkerError> {
    TcpListener::bind(listen).await.map_err(|source| WorkerError::Bind { addr: listen.to_owned(), source })
}

/// The server TLS configuration from `--tls-*` (`None` without TLS).
fn tls_config(config: &WorkerConfig) -> Result<Option<tonic::transport::ServerTlsConfig>, WorkerError> {
    config.tls.tls.server_config().map_err(|e| WorkerError::Config(e.to_string()))
}

/// Prints `GENARM_LISTENING grpc <addr>` on stdout and flushes it.
pub fn announce(addr: SocketAddr) -> Result<(), WorkerError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{LISTENING_PREFIX} {addr}").and_then(|()| out.flush()).map_err(WorkerError::Announce)
}

/// Serves `assets` on `listener` until `shutdown` resolves: health NOT_SERVING (service names
/// `""` and `genarm.v1.Worker`) while the weights load on a background thread, SERVING once the
/// engine is loaded and warmed, NOT_SERVING again while draining. A load failure stops the
/// server and is returned. With `--tls-*` both services are served over mutual TLS (clients
/// without a certificate signed by `--tls-ca` fail the handshake), and `--plaintext-health-listen`
/// adds a health-only plaintext listener.
pub async fn serve(
    listener: TcpListener,
    assets: ModelAssets,
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let info = build_info(&assets, &config);
    let drain_timeout = config.shutdown_timeout;
    let tls = tls_config(&config)?;
    // The address registered in etcd (checked before loading: a wildcard needs --advertise).
    let advertise = match &config.discovery.etcd {
        Some(_) => {
            let bound = listener
                .local_addr()
                .map_err(|source| WorkerError::Bind { addr: config.listen.clone(), source })?;
            Some(crate::discovery::advertised_url(&config.discovery, bound, tls.is_some())?)
        }
        None => None,
    };
    let discovery = config.discovery.clone();
    let mut registration = None;
    let service = WorkerService::new(info.clone(), config.role.clone());
    if let Some(timeout) = config.orphan_timeout {
        service.spawn_orphan_sweeper(timeout);
    }
    if let Some(listen) = &config.metrics_listen {
        crate::metrics::serve_metrics(listen, service.clone(), &config.role).await?;
    }
    let max = config.max_message_bytes;
    if let Some(needed) = assets.config.vocab_size.checked_mul(4).filter(|&n| n + 1024 > max) {
        tracing::warn!(
            max_message_bytes = max,
            needed,
            "--max-message-bytes cannot hold even one sequence's f32 logits; steps will fail"
        );
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let worker =
        WorkerServer::new(service.clone()).max_decoding_message_size(max).max_encoding_message_size(max);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| {
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason.push_str(&format!(": {s}"));
                source = s.source();
            }
            WorkerError::Config(format!(
                "--tls-cert/--tls-key/--tls-ca: the TLS configuration is refused: {reason}; check that the \
                 key belongs to the certificate"
            ))
        })?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(listen) = &config.tls.plaintext_health_listen {
        serve_plaintext_health(listen, &reporter, stop_rx.clone()).await?;
    }
    let mut stop = stop_rx;
    let server =
        builder.add_service(health).add_service(worker).serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    let mut server = std::pin::pin!(server);
    let mut shutdown = std::pin::pin!(shutdown);

    let (load_tx, mut load_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("genarm-loader".into())
        .spawn(move || {
            let _ = load_tx.send(load_engine(&assets, &config));
        })
        .map_err(|e| WorkerError::Internal(format!("cannot spawn the model loading thread: {e}")))?;

    let mut loading = true;
    let outcome = loop {
        tokio::select! {
            r = &mut server => {
                r?;
                return Err(WorkerError::Internal("the gRPC server stopped on its own".into()));
            }
            r = &mut load_rx, if loading => {
                loading = false;
                match r {
                    Ok(Ok(engine)) => {
                        if !service.set_engine(engine) {
                            break Err(WorkerError::Internal("the engine was installed twice".into()));
                        }
                        set_health(&reporter, ServingStatus::Serving).await;
                        tracing::info!("model loaded and warmed; health SERVING");
                        // Only a SERVING worker is registered in etcd.
                        if let Some(address) = &advertise {
                            match crate::discovery::register_worker(&discovery, &info, address).await {
                                Ok(r) => registration = r,
                                Err(e) => break Err(e),
                            }
                        }
                    }
                    Ok(Err(e)) => break Err(e),
                    Err(_) => break Err(WorkerError::Internal("the model loading thread panicked".into())),
                }
            }
            () = &mut shutdown => break Ok(()),
        }
    };
    // Deregister first, so that the router stops sending work before the server stops.
    if let Some(r) = registration.take() {
        r.deregister().await;
    }
    set_health(&reporter, ServingStatus::NotServing).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(drain_timeout, server).await {
        Ok(r) => r?,
        Err(_) => {
            tracing::warn!(timeout_s = drain_timeout.as_secs(), "in-flight calls did not finish; exiting")
        }
    }
    outcome
}

/// Serves `grpc.health.v1` alone, without TLS, on `listen` (for Kubernetes gRPC probes), until
/// `stop` turns true; prints `GENARM_LISTENING health <addr>`.
async fn serve_plaintext_health(
    listen: &str,
    reporter: &tonic_health::server::HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let listener = bind(listen).await?;
    let addr =
        listener.local_addr().map_err(|source| WorkerError::Bind { addr: listen.to_owned(), source })?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "GENARM_LISTENING health {addr}")
            .and_then(|()| out.flush())
            .map_err(WorkerError::Announce)?;
    }
    let health = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
    );
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let r = Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!("the plaintext health server failed: {e}");
        }
    });
    tracing::info!(%addr, "serving grpc.health.v1 without TLS (--plaintext-health-listen)");
    Ok(())
}

async fn set_health(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(WORKER_SERVICE_NAME, status).await;
}
