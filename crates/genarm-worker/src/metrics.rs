//! The worker's Prometheus metrics (`--metrics-listen`): a small HTTP server serving
//! `GET /metrics`, the step histograms recorded by [`record_step`], and gauges and counters read
//! at scrape time from the engine's KV pool and the step counters (nothing extra on the step
//! path). Every metric is listed in docs/metrics.md.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::error::WorkerError;
use crate::role::WorkerRole;
use crate::service::WorkerService;

/// The start of the line printed on stdout once the metrics port is bound:
/// `GENARM_LISTENING metrics <ip:port>`.
pub const METRICS_LISTENING_PREFIX: &str = "GENARM_LISTENING metrics";

/// `genarm_worker_step_forward_seconds` buckets: 1 ms … 30 s (a tiny CPU model to a 70B
/// prefill).
pub const FORWARD_SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// `genarm_worker_step_sequences` buckets (sequences per step).
pub const SEQUENCES_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// `genarm_worker_step_tokens` buckets (tokens per step, prefill and decode).
pub const TOKENS_BUCKETS: &[f64] =
    &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0];

/// How often histogram samples are folded into their buckets when nobody scrapes (the exporter
/// buffers samples until then).
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Handles of the per-step histograms, set once the recorder is installed.
struct StepHandles {
    forward: Histogram,
    sequences: Histogram,
    tokens: Histogram,
}

static STEP_HANDLES: OnceLock<StepHandles> = OnceLock::new();

/// Records one served `Step`: its forward time, sequences and tokens. A no-op unless the
/// metrics server runs.
pub fn record_step(forward: Duration, sequences: usize, tokens: usize) {
    if let Some(h) = STEP_HANDLES.get() {
        h.forward.record(forward.as_secs_f64());
        h.sequences.record(sequences as f64);
        h.tokens.record(tokens as f64);
    }
}

/// Describes every worker metric (the `# HELP` lines).
pub fn describe() {
    describe_counter!("genarm_worker_steps_total", "Step calls received (including refused ones)");
    describe_counter!(
        "genarm_worker_sequence_steps_total",
        "Sequences advanced by steps (a step of 8 sequences that all advanced counts 8)"
    );
    describe_counter!(
        "genarm_worker_tokens_total",
        "Tokens processed by advanced sequences (prefill and decode)"
    );
    describe_counter!(
        "genarm_worker_orphans_released_total",
        "Sequences released because no step reached them for --orphan-timeout-secs"
    );
    describe_histogram!(
        "genarm_worker_step_forward_seconds",
        "Time of the batched forward of one Step, in seconds"
    );
    describe_histogram!("genarm_worker_step_sequences", "Sequences in one Step call");
    describe_histogram!("genarm_worker_step_tokens", "New tokens in one Step call (prefill and decode)");
    describe_gauge!("genarm_worker_kv_blocks_used", "KV cache blocks held by sequences");
    describe_gauge!("genarm_worker_kv_blocks_capacity", "KV cache blocks in the pool");
    describe_gauge!("genarm_worker_kv_block_size_tokens", "Tokens per KV cache block");
    describe_gauge!("genarm_worker_sequences", "Sequences holding KV cache");
    describe_counter!(
        "genarm_worker_prefix_lookup_tokens_total",
        "Prefill tokens of new sequences and aligned chunks looked up in the prefix cache"
    );
    describe_counter!(
        "genarm_worker_prefix_hit_tokens_total",
        "Prefill tokens taken from the prefix cache instead of being computed"
    );
    describe_counter!(
        "genarm_worker_prefix_evicted_blocks_total",
        "Cached KV blocks the prefix cache gave up to make room"
    );
    describe_gauge!(
        "genarm_worker_prefix_cached_blocks",
        "KV blocks registered in the prefix cache (held by sequences or free to evict)"
    );
    describe_gauge!("genarm_worker_ready", "1 once the model is loaded and warmed (health SERVING), else 0");
}

/// A Prometheus recorder with the worker's histogram buckets and a `worker` label (`base` or the
/// reward name) on every series.
pub fn recorder(role: &WorkerRole) -> PrometheusRecorder {
    let worker = match role {
        WorkerRole::Base => "base".to_string(),
        WorkerRole::Reward { name } => name.clone(),
    };
    let buckets = [
        ("genarm_worker_step_forward_seconds", FORWARD_SECONDS_BUCKETS),
        ("genarm_worker_step_sequences", SEQUENCES_BUCKETS),
        ("genarm_worker_step_tokens", TOKENS_BUCKETS),
    ];
    let mut builder = PrometheusBuilder::new().add_global_label("worker", worker);
    for (name, values) in buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), values)
            .expect("bucket lists are not empty");
    }
    builder.build_recorder()
}

/// State of the metrics endpoint.
#[derive(Clone)]
struct MetricsState {
    handle: PrometheusHandle,
    service: WorkerService,
    gauges: ScrapeHandles,
}

/// Series refreshed at each scrape.
#[derive(Clone)]
struct ScrapeHandles {
    steps: Counter,
    sequence_steps: Counter,
    tokens: Counter,
    orphans_released: Counter,
    kv_used: Gauge,
    kv_total: Gauge,
    kv_block_size: Gauge,
    sequences: Gauge,
    prefix_lookup_tokens: Counter,
    prefix_hit_tokens: Counter,
    prefix_evicted_blocks: Counter,
    prefix_cached_blocks: Gauge,
    ready: Gauge,
}

impl ScrapeHandles {
    fn new() -> Self {
        ScrapeHandles {
            steps: metrics::counter!("genarm_worker_steps_total"),
            sequence_steps: metrics::counter!("genarm_worker_sequence_steps_total"),
            tokens: metrics::counter!("genarm_worker_tokens_total"),
            orphans_released: metrics::counter!("genarm_worker_orphans_released_total"),
            kv_used: metrics::gauge!("genarm_worker_kv_blocks_used"),
            kv_total: metrics::gauge!("genarm_worker_kv_blocks_capacity"),
            kv_block_size: metrics::gauge!("genarm_worker_kv_block_size_tokens"),
            sequences: metrics::gauge!("genarm_worker_sequences"),
            prefix_lookup_tokens: metrics::counter!("genarm_worker_prefix_lookup_tokens_total"),
            prefix_hit_tokens: metrics::counter!("genarm_worker_prefix_hit_tokens_total"),
            prefix_evicted_blocks: metrics::counter!("genarm_worker_prefix_evicted_blocks_total"),
            prefix_cached_blocks: metrics::gauge!("genarm_worker_prefix_cached_blocks"),
            ready: metrics::gauge!("genarm_worker_ready"),
        }
    }
}

/// Installs the metrics recorder (globally, so that [`record_step`] reaches it), binds
/// `listen`, prints `GENARM_LISTENING metrics <addr>` and serves `GET /metrics` in the
/// background until the runtime stops. Returns the bound address.
pub async fn serve_metrics(
    listen: &str,
    service: WorkerService,
    role: &WorkerRole,
) -> Result<SocketAddr, WorkerError> {
    let recorder = recorder(role);
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        // Only when embedded in a process that installed one already (tests): the series are
        // recorded there, and this endpoint would serve an empty registry. Say so.
        tracing::warn!("a metrics recorder was installed already: /metrics will be empty");
    }
    describe();
    let gauges = ScrapeHandles::new();
    let _ = STEP_HANDLES.set(StepHandles {
        forward: metrics::histogram!("genarm_worker_step_forward_seconds"),
        sequences: metrics::histogram!("genarm_worker_step_sequences"),
        tokens: metrics::histogram!("genarm_worker_step_tokens"),
    });

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| WorkerError::Bind { addr: listen.to_owned(), source })?;
    let addr =
        listener.local_addr().map_err(|source| WorkerError::Bind { addr: listen.to_owned(), source })?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{METRICS_LISTENING_PREFIX} {addr}")
            .and_then(|()| out.flush())
            .map_err(WorkerError::Announce)?;
    }
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");

    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_PERIOD);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app =
        Router::new().route("/metrics", get(scrape)).with_state(MetricsState { handle, service, gauges });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server failed");
        }
    });
    Ok(addr)
}

/// `GET /metrics`: refreshes the scrape-time series, renders the Prometheus text format.
async fn scrape(State(st): State<MetricsState>) -> Response {
    let g = &st.gauges;
    let c = st.service.counters();
    g.steps.absolute(c.steps);
    g.sequence_steps.absolute(c.sequence_steps);
    g.tokens.absolute(c.tokens);
    g.orphans_released.absolute(c.orphans_released);
    match st.service.handle_stats().await {
        Ok(s) => {
            g.kv_used.set(s.kv_used_blocks as f64);
            g.kv_total.set(s.kv_total_blocks as f64);
            g.kv_block_size.set(f64::from(s.kv_block_size));
            g.sequences.set(f64::from(s.sequences));
            g.prefix_lookup_tokens.absolute(s.prefix_lookup_tokens);
            g.prefix_hit_tokens.absolute(s.prefix_hit_tokens);
            g.prefix_evicted_blocks.absolute(s.prefix_evicted_blocks);
            g.prefix_cached_blocks.set(s.prefix_cached_blocks as f64);
            g.ready.set(1.0);
        }
        Err(_) => g.ready.set(0.0),
    }
    let body = st.handle.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_as_buckets_with_the_worker_label() {
        let rec = recorder(&WorkerRole::Reward { name: "helpful".into() });
        let handle = rec.handle();
        metrics::with_local_recorder(&rec, || {
            describe();
            metrics::histogram!("genarm_worker_step_forward_seconds").record(0.003);
            metrics::histogram!("genarm_worker_step_sequences").record(3.0);
            metrics::histogram!("genarm_worker_step_tokens").record(40.0);
        });
        let text = handle.render();
        assert!(text.contains("# TYPE genarm_worker_step_forward_seconds histogram"), "{text}");
        assert!(
            text.contains("genarm_worker_step_forward_seconds_bucket{worker=\"helpful\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("genarm_worker_step_tokens_bucket{worker=\"helpful\",le=\"64\"} 1"), "{text}");
        assert!(text.contains("genarm_worker_step_sequences_count{worker=\"helpful\"} 1"), "{text}");
        assert!(!text.contains("quantile"), "{text}");
    }
}
