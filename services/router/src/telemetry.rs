//! The router's Prometheus metrics: the recorder with explicit histogram buckets (the exporter
//! renders summaries otherwise), the `# HELP` text of every metric, the handles the scheduler
//! records with ([`SchedMetrics`], registered once so that the step path does no registry
//! look-ups or label allocations), and the poller copying each worker's KV occupancy (its
//! `Stats` RPC) into gauges. Every metric is listed in docs/metrics.md.

use std::sync::Arc;
use std::time::Duration;

use genarm_proto::v1::worker_client::WorkerClient;
use genarm_proto::v1::StatsRequest;
use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Label};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tonic::transport::Endpoint;

use crate::workers::Catalog;
use crate::workers::{ModelIndex, WorkerHealth};

/// Latency buckets in seconds for request-level histograms (TTFT, end-to-end): 5 ms … 5 min.
pub const REQUEST_SECONDS_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Latency buckets in seconds for per-token and per-step histograms: 0.5 ms … 30 s.
pub const STEP_SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Buckets in seconds for the fusion + sampling time of one step: 10 µs … 1 s.
pub const FUSION_SECONDS_BUCKETS: &[f64] =
    &[0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0];

/// Every histogram and its buckets.
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    ("genarm_time_to_first_token_seconds", REQUEST_SECONDS_BUCKETS),
    ("genarm_request_duration_seconds", REQUEST_SECONDS_BUCKETS),
    ("genarm_inter_token_latency_seconds", STEP_SECONDS_BUCKETS),
    ("genarm_step_duration_seconds", STEP_SECONDS_BUCKETS),
    ("genarm_backend_step_duration_seconds", STEP_SECONDS_BUCKETS),
    ("genarm_fusion_sampling_seconds", FUSION_SECONDS_BUCKETS),
    ("genarm_step_worker_forward_seconds", STEP_SECONDS_BUCKETS),
    ("genarm_step_router_overhead_seconds", STEP_SECONDS_BUCKETS),
];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// How often the workers' KV occupancy is polled.
pub const KV_POLL_PERIOD: Duration = Duration::from_secs(2);

/// A builder with the router's buckets.
pub fn builder() -> PrometheusBuilder {
    HISTOGRAM_BUCKETS.iter().fold(PrometheusBuilder::new(), |b, (name, buckets)| {
        b.set_buckets_for_metric(Matcher::Full((*name).into()), buckets).expect("bucket lists are not empty")
    })
}

/// Installs the global recorder, describes every metric, registers the counters that must show
/// from the start (at 0), and runs the exporter's upkeep in the background (call from within
/// the runtime).
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = builder().install_recorder()?;
    describe();
    register_zeroes();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_PERIOD);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Counters shown at 0 before anything happened (so that `rate()` and alerts see them).
pub fn register_zeroes() {
    for name in [
        "genarm_generated_tokens_total",
        "genarm_steps_total",
        "genarm_step_sequences_total",
        "genarm_replays_total",
        "genarm_failovers_total",
        "genarm_preemptions_total",
        "genarm_prefill_chunks_total",
        "genarm_step_wire_bytes_total",
        "genarm_sparse_certified_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}

/// The `# HELP` text of every router metric.
pub fn describe() {
    describe_counter!(
        "genarm_requests_total",
        "Finished HTTP generation requests by endpoint (completions, chat_completions) and status code"
    );
    describe_gauge!("genarm_queue_depth", "Requests waiting for a place in the running batch");
    describe_gauge!("genarm_batch_size", "Sequences in the running batch");
    describe_histogram!(
        "genarm_time_to_first_token_seconds",
        "Time from a request's arrival (body parsed) to its first generated token, in seconds"
    );
    describe_histogram!(
        "genarm_inter_token_latency_seconds",
        "Time between consecutive generated tokens of one request, in seconds"
    );
    describe_histogram!(
        "genarm_request_duration_seconds",
        "Time from a request's arrival to its last token, for requests that finished normally, in seconds"
    );
    describe_counter!("genarm_generated_tokens_total", "Tokens generated (sampled) for all requests");
    describe_counter!("genarm_steps_total", "Scheduler steps run");
    describe_counter!("genarm_step_sequences_total", "Sequences in steps (a step of 8 sequences counts 8)");
    describe_histogram!(
        "genarm_step_duration_seconds",
        "Time of one scheduler step: the worker calls, fusion, sampling and releases, in seconds"
    );
    describe_histogram!(
        "genarm_backend_step_duration_seconds",
        "Time of one Step call to one worker as the router sees it (network and forward), in seconds"
    );
    describe_histogram!(
        "genarm_fusion_sampling_seconds",
        "Time of one step's logit unpacking, fusion and sampling over the whole batch, in seconds"
    );
    describe_histogram!(
        "genarm_step_worker_forward_seconds",
        "The slowest worker's self-reported forward time in one step (the step's critical path on the \
         workers), in seconds"
    );
    describe_histogram!(
        "genarm_step_router_overhead_seconds",
        "Step wall time minus the slowest worker's forward time: the wire, (de)serialization, fusion, \
         sampling and scheduling that the router adds to a step, in seconds"
    );
    describe_counter!(
        "genarm_step_wire_bytes_total",
        "Bytes of Step requests and replies on the wire (encoded protobuf payloads), all workers"
    );
    describe_counter!(
        "genarm_prefix_cached_tokens_total",
        "Prompt tokens the workers took from their prefix caches instead of computing, by model (worker label)"
    );
    describe_counter!(
        "genarm_model_wire_bytes_total",
        "Bytes of Step and FetchRows requests and replies on the wire by model (worker label)"
    );
    describe_counter!(
        "genarm_sparse_certified_total",
        "Tokens the sparse logits wire certified from the workers' certificates alone (the step's or refined ones)"
    );
    describe_counter!(
        "genarm_sparse_refined_total",
        "Tokens whose step certificates were too loose, for which the router fetched refined certificates, by \
         outcome (certified, or fallback to full rows)"
    );
    describe_counter!(
        "genarm_sparse_fallbacks_total",
        "Tokens the sparse logits wire could not certify, by reason (negative_weight, logprob, argmax, \
         top_k, top_p, draw, top_logprobs, full_row): their full rows were fetched"
    );
    describe_counter!(
        "genarm_replays_total",
        "Sequences re-created on a worker from their tokens after it lost them (UNKNOWN_SEQUENCE, POSITION_MISMATCH)"
    );
    describe_counter!("genarm_failovers_total", "Sequences moved to another replica after a worker failed");
    describe_counter!(
        "genarm_preemptions_total",
        "Sequences preempted or requeued after a worker ran out of KV cache"
    );
    describe_counter!(
        "genarm_prefill_chunks_total",
        "Prefill chunks sent that ended before the sequence's current length: prompts (or replays) longer \
         than what a step's token budget (--max-batch-tokens) left after the decodes, split over steps"
    );
    describe_gauge!("genarm_kv_blocks_used", "KV cache blocks in use on each worker (polled from its Stats)");
    describe_gauge!(
        "genarm_kv_blocks_capacity",
        "KV cache blocks of each worker's pool (polled from its Stats)"
    );
    describe_gauge!("genarm_backend_ready", "1 while the router considers the worker ready, else 0");
}

/// The `worker` and `address` label values of a model: `base` or its reward name, and the URL.
pub fn worker_labels(catalog: &Catalog) -> Vec<(String, String)> {
    catalog
        .models
        .iter()
        .map(|m| (m.reward_name.clone().unwrap_or_else(|| "base".into()), m.url.clone()))
        .collect()
}

/// The handles the scheduler records with.
pub struct SchedMetrics {
    /// `genarm_time_to_first_token_seconds`.
    pub ttft: Histogram,
    /// `genarm_inter_token_latency_seconds`.
    pub inter_token: Histogram,
    /// `genarm_request_duration_seconds`.
    pub request_duration: Histogram,
    /// `genarm_generated_tokens_total`.
    pub tokens: Counter,
    /// `genarm_steps_total`.
    pub steps: Counter,
    /// `genarm_step_sequences_total`.
    pub step_sequences: Counter,
    /// `genarm_step_duration_seconds`.
    pub step_duration: Histogram,
    /// `genarm_fusion_sampling_seconds`.
    pub fusion_sampling: Histogram,
    /// `genarm_step_worker_forward_seconds`.
    pub step_worker_forward: Histogram,
    /// `genarm_step_router_overhead_seconds`.
    pub step_router_overhead: Histogram,
    /// `genarm_step_wire_bytes_total`.
    pub step_wire_bytes: Counter,
    /// `genarm_replays_total`.
    pub replays: Counter,
    /// `genarm_failovers_total`.
    pub failovers: Counter,
    /// `genarm_preemptions_total`.
    pub preemptions: Counter,
    /// `genarm_prefill_chunks_total`.
    pub prefill_chunks: Counter,
    /// `genarm_queue_depth`.
    pub queue_depth: Gauge,
    /// `genarm_batch_size`.
    pub batch_size: Gauge,
    /// `genarm_sparse_certified_total`.
    pub sparse_certified: Counter,
    /// `genarm_backend_step_duration_seconds` per model index.
    worker_step: Vec<Histogram>,
    /// `genarm_model_wire_bytes_total` per model index.
    model_wire_bytes: Vec<Counter>,
    /// `genarm_prefix_cached_tokens_total` per model index.
    model_cached_tokens: Vec<Counter>,
}

impl SchedMetrics {
    /// Handles from the global recorder (no-ops when none is installed); no per-worker series
    /// until [`Self::set_worker_labels`].
    pub fn new() -> Self {
        SchedMetrics {
            ttft: metrics::histogram!("genarm_time_to_first_token_seconds"),
            inter_token: metrics::histogram!("genarm_inter_token_latency_seconds"),
            request_duration: metrics::histogram!("genarm_request_duration_seconds"),
            tokens: metrics::counter!("genarm_generated_tokens_total"),
            steps: metrics::counter!("genarm_steps_total"),
            step_sequences: metrics::counter!("genarm_step_sequences_total"),
            step_duration: metrics::histogram!("genarm_step_duration_seconds"),
            fusion_sampling: metrics::histogram!("genarm_fusion_sampling_seconds"),
            step_worker_forward: metrics::histogram!("genarm_step_worker_forward_seconds"),
            step_router_overhead: metrics::histogram!("genarm_step_router_overhead_seconds"),
            step_wire_bytes: metrics::counter!("genarm_step_wire_bytes_total"),
            replays: metrics::counter!("genarm_replays_total"),
            failovers: metrics::counter!("genarm_failovers_total"),
            preemptions: metrics::counter!("genarm_preemptions_total"),
            prefill_chunks: metrics::counter!("genarm_prefill_chunks_total"),
            queue_depth: metrics::gauge!("genarm_queue_depth"),
            batch_size: metrics::gauge!("genarm_batch_size"),
            sparse_certified: metrics::counter!("genarm_sparse_certified_total"),
            worker_step: Vec::new(),
            model_wire_bytes: Vec::new(),
            model_cached_tokens: Vec::new(),
        }
    }

    /// Labels the per-worker series: `labels[m]` = (`worker`, `address`) of model `m`.
    pub fn set_worker_labels(&mut self, labels: &[(String, String)]) {
        self.worker_step = labels
            .iter()
            .map(|(worker, address)| {
                metrics::histogram!("genarm_backend_step_duration_seconds",
                    "worker" => worker.clone(), "address" => address.clone())
            })
            .collect();
        self.model_wire_bytes = labels
            .iter()
            .map(|(worker, _)| metrics::counter!("genarm_model_wire_bytes_total", "worker" => worker.clone()))
            .collect();
        self.model_cached_tokens = labels
            .iter()
            .map(|(worker, _)| metrics::counter!("genarm_prefix_cached_tokens_total", "worker" => worker.clone()))
            .collect();
        for c in self.model_wire_bytes.iter().chain(&self.model_cached_tokens) {
            c.increment(0);
        }
    }

    /// Records `tokens` that model `m`'s workers took from their prefix caches.
    pub fn cached_tokens(&self, m: ModelIndex, tokens: u64) {
        if let Some(c) = self.model_cached_tokens.get(m) {
            c.increment(tokens);
        }
    }

    /// Records `bytes` on the wire to and from model `m`'s workers.
    pub fn wire_bytes(&self, m: ModelIndex, bytes: u64) {
        self.step_wire_bytes.increment(bytes);
        if let Some(c) = self.model_wire_bytes.get(m) {
            c.increment(bytes);
        }
    }

    /// Records a token for which refined certificates were fetched, and whether they proved it.
    pub fn sparse_refined(&self, certified: bool) {
        let outcome = if certified { "certified" } else { "fallback" };
        metrics::counter!("genarm_sparse_refined_total", "outcome" => outcome).increment(1);
    }

    /// Records a token the sparse wire could not certify.
    pub fn sparse_fallback(&self, reason: &'static str) {
        metrics::counter!("genarm_sparse_fallbacks_total", "reason" => reason).increment(1);
    }

    /// Records one Step call to model `m`'s worker.
    pub fn worker_step(&self, m: ModelIndex, elapsed: Duration) {
        if let Some(h) = self.worker_step.get(m) {
            h.record(elapsed.as_secs_f64());
        }
    }
}

impl Default for SchedMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Polls every worker's `Stats` every [`KV_POLL_PERIOD`] (own lazy connections, 2 s timeout)
/// into `genarm_kv_blocks_used` / `genarm_kv_blocks_capacity`, and its readiness into
/// `genarm_backend_ready`, labelled by `worker` and `address`. Runs until the runtime stops.
pub fn spawn_kv_poller(catalog: &Catalog, health: Arc<dyn WorkerHealth>) {
    for (m, (worker, address)) in worker_labels(catalog).into_iter().enumerate() {
        let Ok(endpoint) = Endpoint::from_shared(address.clone()) else { continue };
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let mut client =
                WorkerClient::new(endpoint.connect_timeout(Duration::from_secs(2)).connect_lazy());
            let labels = vec![Label::new("worker", worker.clone()), Label::new("address", address.clone())];
            let used = metrics::gauge!("genarm_kv_blocks_used", labels.clone());
            let total = metrics::gauge!("genarm_kv_blocks_capacity", labels.clone());
            let ready = metrics::gauge!("genarm_backend_ready", labels);
            let mut tick = tokio::time::interval(KV_POLL_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let is_ready = health.is_ready(m);
                ready.set(if is_ready { 1.0 } else { 0.0 });
                if !is_ready {
                    continue;
                }
                match tokio::time::timeout(Duration::from_secs(2), client.stats(StatsRequest {})).await {
                    Ok(Ok(r)) => {
                        let s = r.into_inner();
                        used.set(s.kv_used_blocks as f64);
                        total.set(s.kv_total_blocks as f64);
                    }
                    Ok(Err(e)) => tracing::debug!(%worker, %address, error = %e, "Stats failed"),
                    Err(_) => tracing::debug!(%worker, %address, "no answer to Stats within 2 s"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_histogram_renders_buckets_and_every_metric_has_help() {
        let rec = builder().build_recorder();
        let handle = rec.handle();
        metrics::with_local_recorder(&rec, || {
            describe();
            register_zeroes();
            let mut m = SchedMetrics::new();
            m.set_worker_labels(&[
                ("base".into(), "http://a:1".into()),
                ("helpful".into(), "http://b:2".into()),
            ]);
            m.ttft.record(0.02);
            m.inter_token.record(0.002);
            m.request_duration.record(0.3);
            m.step_duration.record(0.004);
            m.fusion_sampling.record(0.00003);
            m.worker_step(1, Duration::from_millis(3));
            m.worker_step(7, Duration::from_millis(3)); // unknown index: ignored
            m.queue_depth.set(2.0);
            m.batch_size.set(1.0);
            metrics::counter!("genarm_requests_total", "endpoint" => "completions", "status" => "200")
                .increment(1);
        });
        let text = handle.render();
        for (name, _) in HISTOGRAM_BUCKETS {
            assert!(text.contains(&format!("# TYPE {name} histogram")), "{name}\n{text}");
            assert!(text.contains(&format!("{name}_bucket{{")), "{name}\n{text}");
        }
        assert!(!text.contains("quantile"), "{text}");
        assert!(
            text.contains(
                "genarm_backend_step_duration_seconds_bucket{worker=\"helpful\",address=\"http://b:2\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP\n{text}");
        }
        assert!(text.contains("genarm_failovers_total 0"), "{text}");
    }
}
