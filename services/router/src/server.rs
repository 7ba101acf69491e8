//! Wiring: metrics recorder, HTTP listener (bound first, announced with
//! `GENARM_LISTENING http <addr>`, `/ready` false meanwhile), worker connection and cluster
//! checks, the scheduler actor, and the drain on SIGTERM/SIGINT (new requests get 503 with
//! `Retry-After` while the listener stays open, in-flight requests get `--shutdown-timeout` to
//! finish, then the rest are cancelled and their KV released; then the server stops).

use std::future::IntoFuture as _;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use genarm_fusion::WireDtype;
use genarm_text::TemplateSandbox;
use tokio::sync::watch;

use crate::api::validate::ValidationConfig;
use crate::api::{router, AppState, Core};
use crate::args::{Args, LogitsDtypeArg, LogitsWireArg};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::workers::WorkerHealth;
use crate::workers::{LogitsWire, Workers, WorkersConfig};

/// The wire dtype for a flag value.
pub fn wire_dtype(d: LogitsDtypeArg) -> WireDtype {
    match d {
        LogitsDtypeArg::F32 => WireDtype::F32,
        LogitsDtypeArg::Bf16 => WireDtype::Bf16,
        LogitsDtypeArg::F16 => WireDtype::F16,
    }
}

/// The logits wire of `--logits-wire`, `--sparse-candidates` and `--sparse-refine-candidates`.
pub fn logits_wire(args: &Args) -> LogitsWire {
    match args.logits_wire {
        LogitsWireArg::Full => LogitsWire::Full,
        LogitsWireArg::Sparse => {
            LogitsWire::Sparse { candidates: args.sparse_candidates, refine: args.sparse_refine_candidates }
        }
    }
}

/// The sandbox chat templates render in (`--chat-template-memory-mib`; `None` for 0), checked
/// by one render. Its children re-execute this program, whose `main` calls
/// `genarm_text::run_sandbox_if_requested` first.
fn chat_template_sandbox(mib: u64) -> anyhow::Result<Option<Arc<TemplateSandbox>>> {
    if mib == 0 {
        tracing::warn!(
            "--chat-template-memory-mib 0: chat templates render in the router's own process, \
             without a memory bound"
        );
        return Ok(None);
    }
    let sandbox = TemplateSandbox::new(mib.saturating_mul(1 << 20)).context(
        "cannot find the router's own executable to render chat templates in a sandbox process \
         (--chat-template-memory-mib 0 renders them in process)",
    )?;
    sandbox.check().map_err(|e| {
        anyhow::anyhow!(
            "the chat template sandbox does not work: {e} (--chat-template-memory-mib 0 renders \
             templates in process, without a memory bound)"
        )
    })?;
    tracing::info!(memory_mib = mib, "chat templates render in sandbox processes");
    Ok(Some(Arc::new(sandbox)))
}

/// Resolves once SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
}

/// Waits until `rx` holds `true`.
async fn until_true(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits until no request is in flight; false if `timeout` passes first.
async fn drained(in_flight: &std::sync::atomic::AtomicUsize, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while in_flight.load(Ordering::SeqCst) > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Runs the router until SIGTERM/SIGINT. Errors: bad flags, a port that cannot be bound, or
/// workers that fail the startup checks (the message names the flag or the models).
pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Err(e) = args.validate() {
        bail!("{e}");
    }
    let metrics = crate::telemetry::install().context("cannot install the metrics recorder")?;
    let chat_template_sandbox = chat_template_sandbox(args.chat_template_memory_mib)?;

    crate::api::auth::describe_metrics();
    let auth = crate::api::auth::Auth::new(
        &args.api_keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>(),
        args.api_key_file.clone(),
        args.protect_metrics,
        crate::api::limits::KeyLimits::new(args.key_max_concurrent, args.key_tokens_per_minute),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let auth = Arc::new(auth);
    if auth.enabled() {
        tracing::info!(keys = auth.keys().len(), file = ?args.api_key_file, protect_metrics = args.protect_metrics,
            "API keys required (Authorization: Bearer)");
    } else {
        tracing::warn!(
            "no API key configured (--api-key, --api-key-file): the API is open to anyone who can reach it"
        );
    }
    crate::api::auth::spawn_sighup_reloader(Arc::clone(&auth));
    let mut state = AppState::new(Some(metrics), args.max_body_bytes);
    state.auth = auth;
    state.request_timeout =
        (args.request_timeout_secs > 0).then(|| Duration::from_secs(args.request_timeout_secs));
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let addr = listener.local_addr().context("no local address")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "GENARM_LISTENING http {addr}").context("cannot write to stdout")?;
        stdout.flush().context("cannot flush stdout")?;
    }
    tracing::info!(%addr, "listening (not ready until the workers are connected)");

    let (signal_tx, signal_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = signal_tx.send(true);
    });
    // The server keeps accepting during the drain (answering 503 + Retry-After); it stops
    // when `stop_tx` says so, once the drain is over.
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = router(Arc::clone(&state));
    // TCP_NODELAY: streamed tokens are small writes; without it, Nagle's algorithm holds one
    // back until the client's delayed ACK (~40 ms) on a reused keep-alive connection.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an HTTP connection");
        }
    });
    let mut serve =
        tokio::spawn(axum::serve(listener, app).with_graceful_shutdown(until_true(stop_rx)).into_future());

    let tls = args.tls.client().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(url) = &args.base {
        genarm_tls::check_worker_url(url, tls.as_ref(), "--base")?;
    }
    for r in &args.rms {
        if let Some(url) = &r.url {
            genarm_tls::check_worker_url(url, tls.as_ref(), &format!("--rm {}", r.name))?;
        }
    }
    let etcd_security = match &args.etcd {
        None => genarm_discovery::EtcdSecurity::default(),
        Some(urls) => {
            let e = &args.tls.etcd;
            e.check_endpoints(&genarm_discovery::parse_endpoints(urls)?)?;
            genarm_discovery::EtcdSecurity {
                tls: e.tls()?,
                user: e.user()?.map(|(u, p)| (u, p.expose().to_string())),
            }
        }
    };
    let wcfg = WorkersConfig {
        base_url: args.base.clone(),
        rms: args.rms.iter().map(|r| (r.name.clone(), r.url.clone())).collect(),
        etcd: match &args.etcd {
            None => None,
            Some(urls) => Some(crate::workers::EtcdConfig {
                endpoints: genarm_discovery::parse_endpoints(urls)?,
                cluster: args.cluster.clone(),
                security: etcd_security,
            }),
        },
        connect_timeout: Duration::from_secs(args.worker_connect_timeout_secs),
        call_timeout: Duration::from_secs(args.worker_timeout_secs.max(1)),
        step_timeout: Duration::from_secs(args.step_timeout_secs.max(1)),
        reprobe: Duration::from_millis(args.worker_reprobe_ms.max(50)),
        max_message_bytes: args.max_message_bytes,
        tls,
        logits_wire: logits_wire(&args),
    };
    let workers = tokio::select! {
        w = Workers::connect(&wcfg) => w?,
        _ = until_true(signal_rx.clone()) => {
            tracing::info!("stopped before the workers were connected");
            return Ok(());
        }
    };
    let catalog = Arc::clone(workers.catalog());
    let served_model = args.served_model_name.clone().unwrap_or_else(|| catalog.base().model_id.clone());
    let default_guidance = match &args.default_guidance {
        None => Vec::new(),
        Some(g) => {
            let mut v: Vec<(usize, f32)> = g
                .weights
                .iter()
                .filter(|(_, w)| *w != 0.0)
                .filter_map(|(n, w)| catalog.reward_index(n).map(|i| (i, *w / args.default_beta)))
                .collect();
            v.sort_by_key(|&(i, _)| i);
            v
        }
    };
    let (abort_tx, abort_rx) = watch::channel(false);
    let (scheduler, handle) = Scheduler::new(
        Arc::clone(&workers),
        SchedulerConfig {
            vocab: catalog.vocab,
            eos: catalog.base().text.eos_token_ids().to_vec(),
            max_context: catalog.max_context,
            dtype: wire_dtype(args.logits_dtype),
            wire: logits_wire(&args),
            sampling_threads: args.sampling_threads,
            max_batch_size: args.max_batch_size as usize,
            max_batch_tokens: args.max_batch_tokens as usize,
            max_waiting: args.max_waiting,
        },
        abort_rx,
    );
    let scheduler = scheduler
        .with_worker_labels(&crate::telemetry::worker_labels(&catalog))
        .with_restart_grace(Duration::from_secs(args.worker_restart_grace_secs));
    crate::telemetry::spawn_kv_poller(&catalog, workers.clone());
    let sched_task = tokio::spawn(scheduler.run());
    let health: Arc<dyn WorkerHealth> = workers.clone();
    let core = Core {
        catalog: Arc::clone(&catalog),
        health,
        scheduler: handle,
        validation: ValidationConfig {
            served_model: served_model.clone(),
            default_guidance,
            max_stop_sequences: args.max_stop_sequences,
            max_stop_length: args.max_stop_length,
            max_prompt_tokens: args.max_prompt_tokens,
            max_tokens_limit: args.max_tokens_limit,
            chat_template_sandbox,
        },
    };
    if state.core.set(core).is_err() {
        bail!("the router was initialised twice");
    }
    tracing::info!(model = %served_model, reward_models = ?catalog.reward_names(), vocab = catalog.vocab,
        context = catalog.max_context, "ready");

    // Serve until a signal; then drain.
    tokio::select! {
        biased;
        _ = until_true(signal_rx) => {}
        r = &mut serve => {
            // Only a failure ends the server without a signal.
            r.context("the HTTP server task failed")?.context("the HTTP server failed")?;
        }
    }
    state.shutting_down.store(true, Ordering::SeqCst);
    let timeout = args.shutdown_timeout();
    let in_flight = Arc::clone(&state.in_flight);
    tracing::info!(?timeout, in_flight = in_flight.load(Ordering::SeqCst), "draining: refusing new requests");
    if !drained(&in_flight, timeout).await {
        tracing::warn!(
            ?timeout,
            in_flight = in_flight.load(Ordering::SeqCst),
            "requests still running after --shutdown-timeout: cancelling them"
        );
        let _ = abort_tx.send(true);
        drained(&in_flight, Duration::from_secs(2)).await;
    }
    tracing::info!("drained: stopping the HTTP server");
    let _ = stop_tx.send(true);
    if !serve.is_finished() && tokio::time::timeout(Duration::from_secs(5), &mut serve).await.is_err() {
        tracing::warn!("connections still open: exiting anyway");
    }
    // Let the scheduler release what it holds, briefly.
    let _ = abort_tx.send(true);
    drop(state);
    let _ = tokio::time::timeout(Duration::from_secs(2), sched_task).await;
    tracing::info!("stopped");
    Ok(())
}
