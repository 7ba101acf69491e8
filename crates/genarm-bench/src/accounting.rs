//! Per-step accounting from the router's `/metrics`: scraped before and after a run, the
//! deltas of its step histograms and counters give the mean step wall time, the slowest
//! worker's forward, the router's overhead (wall − slowest forward), fusion and sampling, the
//! bytes on the wire and the batch size over exactly that run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::Target;
use crate::prom::{self, Scrape};

/// The metric names read, in the order they are reported.
pub const METRICS: [&str; 14] = [
    STEPS,
    SEQUENCES,
    GENERATED,
    WIRE_BYTES,
    "genarm_step_duration_seconds_sum",
    "genarm_step_duration_seconds_count",
    "genarm_step_worker_forward_seconds_sum",
    "genarm_step_worker_forward_seconds_count",
    "genarm_step_router_overhead_seconds_sum",
    "genarm_step_router_overhead_seconds_count",
    "genarm_fusion_sampling_seconds_sum",
    "genarm_fusion_sampling_seconds_count",
    "genarm_replays_total",
    "genarm_preemptions_total",
];

const STEPS: &str = "genarm_steps_total";
const SEQUENCES: &str = "genarm_step_sequences_total";
const GENERATED: &str = "genarm_generated_tokens_total";
const WIRE_BYTES: &str = "genarm_step_wire_bytes_total";

/// Scrapes `URL/metrics`; an error names what failed.
pub async fn scrape(client: &reqwest::Client, target: &Target) -> Result<Scrape, String> {
    let resp = target
        .request(client, reqwest::Method::GET, "/metrics")
        .send()
        .await
        .map_err(|e| format!("GET /metrics failed: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("reading /metrics: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "GET /metrics answered {status}{}",
            if status.as_u16() == 401 { " (protected: pass --api-key)" } else { "" }
        ));
    }
    prom::parse(&text).map_err(|e| e.to_string())
}

/// The per-step summary of one run. Every figure is `None` ("n/a") when the router does not
/// export what it needs (or /metrics could not be read: see `note`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepAccounting {
    /// Why figures are missing, when they are.
    pub note: Option<String>,
    /// Delta of every metric of [`METRICS`] the router exports.
    pub deltas: BTreeMap<String, f64>,
    /// Scheduler steps in the run.
    pub steps: Option<f64>,
    /// Tokens the router generated in the run (all clients; includes failed requests).
    pub router_generated_tokens: Option<f64>,
    /// Sequences per step.
    pub mean_batch_size: Option<f64>,
    /// Mean step wall time, seconds.
    pub mean_step_wall_s: Option<f64>,
    /// Mean forward time of each step's slowest worker (as the workers report it), seconds.
    pub mean_slowest_forward_s: Option<f64>,
    /// Mean router overhead per step (wall − slowest worker forward), seconds.
    pub mean_router_overhead_s: Option<f64>,
    /// Router overhead as a percentage of step wall time (sum over sum).
    pub router_overhead_pct: Option<f64>,
    /// Mean fusion + sampling time per step, seconds.
    pub fusion_sampling_per_step_s: Option<f64>,
    /// Bytes of step requests and replies on the wire per step.
    pub wire_bytes_per_step: Option<f64>,
    /// Bytes on the wire per generated token.
    pub wire_bytes_per_token: Option<f64>,
}

fn ratio(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    match (num, den) {
        (Some(n), Some(d)) if d > 0.0 && n.is_finite() => Some(n / d),
        _ => None,
    }
}

impl StepAccounting {
    /// The accounting between two scrapes (`Err` = a scrape failed, with its reason).
    pub fn between(before: &Result<Scrape, String>, after: &Result<Scrape, String>) -> StepAccounting {
        let (before, after) = match (before, after) {
            (Ok(b), Ok(a)) => (b, a),
            (Err(e), _) | (_, Err(e)) => {
                return StepAccounting { note: Some(format!("n/a: {e}")), ..Default::default() }
            }
        };
        let mut deltas = BTreeMap::new();
        // A series that appears only after the run started from 0 (exporters may render a
        // metric only once it has been recorded).
        for name in METRICS {
            if let Some(a) = after.total(name) {
                deltas.insert(name.to_string(), a - before.total(name).unwrap_or(0.0));
            }
        }
        let d = |name: &str| deltas.get(name).copied();
        let steps = d(STEPS);
        let wall_sum = d("genarm_step_duration_seconds_sum");
        let fwd_sum = d("genarm_step_worker_forward_seconds_sum");
        let overhead_sum = d("genarm_step_router_overhead_seconds_sum");
        let mut acc = StepAccounting {
            note: None,
            steps,
            router_generated_tokens: d(GENERATED),
            mean_batch_size: ratio(d(SEQUENCES), steps),
            mean_step_wall_s: ratio(wall_sum, d("genarm_step_duration_seconds_count")),
            mean_slowest_forward_s: ratio(fwd_sum, d("genarm_step_worker_forward_seconds_count")),
            mean_router_overhead_s: ratio(overhead_sum, d("genarm_step_router_overhead_seconds_count")),
            router_overhead_pct: ratio(overhead_sum, wall_sum).map(|r| r * 100.0),
            fusion_sampling_per_step_s: ratio(
                d("genarm_fusion_sampling_seconds_sum"),
                d("genarm_fusion_sampling_seconds_count"),
            ),
            wire_bytes_per_step: ratio(d(WIRE_BYTES), steps),
            wire_bytes_per_token: ratio(d(WIRE_BYTES), d(GENERATED)),
            deltas,
        };
        let missing: Vec<&str> =
            ["genarm_step_worker_forward_seconds", "genarm_step_router_overhead_seconds", WIRE_BYTES]
                .into_iter()
                .filter(|m| after.total(m).is_none() && after.total(&format!("{m}_sum")).is_none())
                .collect();
        if !missing.is_empty() {
            acc.note = Some(format!("the router does not export {} (n/a)", missing.join(", ")));
        }
        if acc.steps == Some(0.0) {
            acc.note = Some("no steps ran between the scrapes".into());
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(text: &str) -> Result<Scrape, String> {
        prom::parse(text).map_err(|e| e.to_string())
    }

    #[test]
    fn deltas_give_the_per_step_figures() {
        let before = scrape(
            "genarm_steps_total 10\ngenarm_step_sequences_total 20\ngenarm_generated_tokens_total 100\n\
             genarm_step_wire_bytes_total{dir=\"out\"} 1000\ngenarm_step_wire_bytes_total{dir=\"in\"} 500\n\
             genarm_step_duration_seconds_sum 1.0\ngenarm_step_duration_seconds_count 10\n\
             genarm_step_worker_forward_seconds_sum 0.8\ngenarm_step_worker_forward_seconds_count 10\n\
             genarm_step_router_overhead_seconds_sum 0.2\ngenarm_step_router_overhead_seconds_count 10\n\
             genarm_fusion_sampling_seconds_sum 0.05\ngenarm_fusion_sampling_seconds_count 10\n",
        );
        let after = scrape(
            "genarm_steps_total 30\ngenarm_step_sequences_total 100\ngenarm_generated_tokens_total 180\n\
             genarm_step_wire_bytes_total{dir=\"out\"} 5000\ngenarm_step_wire_bytes_total{dir=\"in\"} 2500\n\
             genarm_step_duration_seconds_sum 3.0\ngenarm_step_duration_seconds_count 30\n\
             genarm_step_worker_forward_seconds_sum 2.3\ngenarm_step_worker_forward_seconds_count 30\n\
             genarm_step_router_overhead_seconds_sum 0.7\ngenarm_step_router_overhead_seconds_count 30\n\
             genarm_fusion_sampling_seconds_sum 0.25\ngenarm_fusion_sampling_seconds_count 30\n",
        );
        let a = StepAccounting::between(&before, &after);
        let close = |x: Option<f64>, y: f64| (x.unwrap() - y).abs() < 1e-9;
        assert_eq!(a.note, None);
        assert_eq!(a.steps, Some(20.0));
        assert!(close(a.mean_batch_size, 80.0 / 20.0));
        assert!(close(a.mean_step_wall_s, 2.0 / 20.0));
        assert!(close(a.mean_slowest_forward_s, 1.5 / 20.0));
        assert!(close(a.mean_router_overhead_s, 0.5 / 20.0));
        assert!(close(a.router_overhead_pct, 0.5 / 2.0 * 100.0));
        assert!(close(a.fusion_sampling_per_step_s, 0.2 / 20.0));
        assert!(close(a.wire_bytes_per_step, 6000.0 / 20.0));
        assert!(close(a.wire_bytes_per_token, 6000.0 / 80.0));
        assert_eq!(a.router_generated_tokens, Some(80.0));
    }

    #[test]
    fn missing_metrics_and_failed_scrapes_are_na() {
        let before = scrape("genarm_steps_total 1\ngenarm_step_sequences_total 1\n");
        let after = scrape("genarm_steps_total 5\ngenarm_step_sequences_total 9\n");
        let a = StepAccounting::between(&before, &after);
        assert_eq!(a.mean_batch_size, Some(2.0));
        assert_eq!((a.mean_step_wall_s, a.mean_router_overhead_s, a.wire_bytes_per_step), (None, None, None));
        assert!(a.note.unwrap().contains("genarm_step_worker_forward_seconds"));
        // A counter rendered only once recorded counts from 0.
        let later =
            scrape("genarm_steps_total 5\ngenarm_step_sequences_total 9\ngenarm_step_wire_bytes_total 700\n");
        let a = StepAccounting::between(&before, &later);
        assert_eq!(a.wire_bytes_per_step, Some(700.0 / 4.0));
        let a = StepAccounting::between(&Err("GET /metrics answered 401".into()), &after);
        assert_eq!(a.steps, None);
        assert!(a.note.unwrap().contains("401"));
    }
}
