//! The report: per-run figures (throughput, TTFT, inter-token latency, errors, per-step
//! accounting), `bench.json`, the Markdown tables of `bench.md`, and the PNG plots
//! `throughput.png` (output tokens/s vs concurrency) and `latency.png` (ITL p50/p95).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::accounting::StepAccounting;
use crate::client::RequestRecord;
use crate::run::{Amount, BenchConfig};
use crate::stats::Summary;
use crate::BenchError;
use genarm_demo::provenance::Provenance;

/// Distinct error messages kept per run.
const ERROR_MESSAGES: usize = 5;

/// The configuration as run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigEcho {
    /// Router URL.
    pub url: String,
    /// Prompt file.
    pub prompts: String,
    /// Prompts in it.
    pub prompt_count: usize,
    /// Concurrency levels.
    pub concurrency: Vec<usize>,
    /// `max_tokens` per request.
    pub max_tokens: u32,
    /// Guidance weights of the guided runs.
    pub guidance: BTreeMap<String, f64>,
    /// Whether unguided runs were added.
    pub compare_unguided: bool,
    /// Requests per run, when fixed.
    pub requests: Option<usize>,
    /// Seconds per run, when fixed.
    pub duration_s: Option<f64>,
    /// Warm-up requests per run (`None`: C).
    pub warmup: Option<usize>,
    /// First seed.
    pub seed: u64,
    /// Temperature.
    pub temperature: f64,
    /// `top_p`, when sent.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Request deadline, seconds.
    pub request_timeout_s: f64,
}

impl ConfigEcho {
    /// The echo of `cfg`.
    pub fn of(cfg: &BenchConfig) -> ConfigEcho {
        ConfigEcho {
            url: cfg.url.clone(),
            prompts: cfg.prompts_source.clone(),
            prompt_count: cfg.prompts.len(),
            concurrency: cfg.concurrency.clone(),
            max_tokens: cfg.max_tokens,
            guidance: cfg.guidance.clone(),
            compare_unguided: cfg.compare_unguided,
            requests: match cfg.amount {
                Amount::Requests(n) => Some(n),
                Amount::Duration(_) => None,
            },
            duration_s: match cfg.amount {
                Amount::Duration(d) => Some(d.as_secs_f64()),
                Amount::Requests(_) => None,
            },
            warmup: cfg.warmup,
            seed: cfg.seed,
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            request_timeout_s: cfg.request_timeout.as_secs_f64(),
        }
    }
}

/// An error message and how often it occurred.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorCount {
    /// The message.
    pub message: String,
    /// Occurrences.
    pub count: usize,
}

/// One (concurrency, mode) run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Requests in flight.
    pub concurrency: usize,
    /// `unguided` or `guided`.
    pub mode: String,
    /// The guidance weights sent (empty when unguided).
    pub guidance: BTreeMap<String, f64>,
    /// Warm-up requests sent (not counted below).
    pub warmup_requests: usize,
    /// Warm-up requests that failed.
    pub warmup_errors: usize,
    /// Output tokens of the warm-up requests.
    pub warmup_output_tokens: u64,
    /// Measured requests sent.
    pub requests: usize,
    /// Of which completed.
    pub ok: usize,
    /// Of which failed (warm-up failures not included).
    pub errors: usize,
    /// The first distinct error messages (measured and warm-up) with their counts.
    pub error_messages: Vec<ErrorCount>,
    /// Wall time of the measured phase, seconds.
    pub duration_s: f64,
    /// Completed requests per second.
    pub requests_per_s: f64,
    /// Output tokens of completed requests per second.
    pub output_tokens_per_s: f64,
    /// Output tokens of completed requests.
    pub output_tokens: u64,
    /// Output tokens of failed requests (generated, then lost).
    pub failed_output_tokens: u64,
    /// Mean output tokens per completed request.
    pub mean_output_tokens: Option<f64>,
    /// Whether every completed request's tokens came from the router's `usage` (else content
    /// chunks were counted).
    pub usage_reported: bool,
    /// `finish_reason` counts of completed requests.
    pub finish_reasons: BTreeMap<String, usize>,
    /// Time to first token, seconds.
    pub ttft: Summary,
    /// Inter-token latency: gaps between consecutive content chunks, seconds, all requests
    /// pooled.
    pub itl: Summary,
    /// Time per output token after the first: (e2e − TTFT) / (tokens − 1), per request.
    pub tpot: Summary,
    /// End-to-end request latency, seconds.
    pub latency: Summary,
    /// Per-step accounting from the router's metrics over the measured phase.
    pub step_accounting: StepAccounting,
    /// Every measured request.
    pub request_records: Vec<RequestRecord>,
}

fn count_errors(records: &[&RequestRecord]) -> Vec<ErrorCount> {
    let mut out: Vec<ErrorCount> = Vec::new();
    for e in records.iter().filter_map(|r| r.error.as_ref()) {
        if let Some(c) = out.iter_mut().find(|c| &c.message == e) {
            c.count += 1;
        } else if out.len() < ERROR_MESSAGES {
            out.push(ErrorCount { message: e.clone(), count: 1 });
        }
    }
    out
}

impl RunReport {
    /// Summarizes a run.
    pub fn new(
        concurrency: usize,
        mode: &str,
        guidance: BTreeMap<String, f64>,
        warmup: &[RequestRecord],
        records: Vec<RequestRecord>,
        duration_s: f64,
        step_accounting: StepAccounting,
    ) -> RunReport {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
        let failed: Vec<&RequestRecord> = records.iter().filter(|r| !r.ok()).collect();
        let output_tokens: u64 = ok.iter().map(|r| r.output_tokens).sum();
        let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_s).collect();
        let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect();
        let tpot: Vec<f64> = ok
            .iter()
            .filter(|r| r.output_tokens > 1)
            .filter_map(|r| r.ttft_s.map(|t| (r.e2e_s - t) / (r.output_tokens - 1) as f64))
            .collect();
        let latency: Vec<f64> = ok.iter().map(|r| r.e2e_s).collect();
        let mut finish_reasons = BTreeMap::new();
        for r in &ok {
            *finish_reasons.entry(r.finish_reason.clone().unwrap_or_else(|| "none".into())).or_insert(0) += 1;
        }
        let all: Vec<&RequestRecord> = records.iter().chain(warmup).collect();
        let per_s = |x: f64| if duration_s > 0.0 { x / duration_s } else { 0.0 };
        RunReport {
            concurrency,
            mode: mode.to_string(),
            guidance,
            warmup_requests: warmup.len(),
            warmup_errors: warmup.iter().filter(|r| !r.ok()).count(),
            warmup_output_tokens: warmup.iter().map(|r| r.output_tokens).sum(),
            requests: records.len(),
            ok: ok.len(),
            errors: failed.len(),
            error_messages: count_errors(&all),
            duration_s,
            requests_per_s: per_s(ok.len() as f64),
            output_tokens_per_s: per_s(output_tokens as f64),
            output_tokens,
            failed_output_tokens: failed.iter().map(|r| r.output_tokens).sum(),
            mean_output_tokens: (!ok.is_empty()).then(|| output_tokens as f64 / ok.len() as f64),
            usage_reported: ok.iter().all(|r| r.usage_reported),
            finish_reasons,
            ttft: Summary::of(&ttft),
            itl: Summary::of(&itl),
            tpot: Summary::of(&tpot),
            latency: Summary::of(&latency),
            step_accounting,
            request_records: records,
        }
    }

    /// `c=4 guided` and the like.
    pub fn label(&self) -> String {
        format!("c={} {}", self.concurrency, self.mode)
    }
}

/// The whole report (`bench.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// `genarm bench`.
    pub tool: String,
    /// genarm's version.
    pub version: String,
    /// The command line, the genarm commit and the hashes of the model files named.
    pub provenance: Provenance,
    /// Start time, Unix seconds.
    pub started_unix: u64,
    /// The `model` sent.
    pub model: String,
    /// The configuration.
    pub config: ConfigEcho,
    /// Every run, in the order run (per concurrency level: unguided, then guided).
    pub runs: Vec<RunReport>,
}

impl BenchReport {
    /// Errors of measured and warm-up requests, all runs.
    pub fn total_errors(&self) -> usize {
        self.runs.iter().map(|r| r.errors + r.warmup_errors).sum()
    }
}

fn ms(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{:.1}", v * 1e3))
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// One line per run for the terminal.
pub fn one_line(r: &RunReport) -> String {
    format!(
        "{}: {:.2} req/s, {:.1} output tok/s, TTFT p50 {} ms, ITL p50 {} ms / p95 {} ms, {} errors",
        r.label(),
        r.requests_per_s,
        r.output_tokens_per_s,
        ms(r.ttft.p50),
        ms(r.itl.p50),
        ms(r.itl.p95),
        r.errors
    )
}

/// The unguided run at the same concurrency as `r`, when there is one.
fn unguided_of<'a>(report: &'a BenchReport, r: &RunReport) -> Option<&'a RunReport> {
    report.runs.iter().find(|u| u.concurrency == r.concurrency && u.mode == "unguided")
}

/// The Markdown of `bench.md`.
pub fn markdown(report: &BenchReport) -> String {
    let mut s = String::new();
    let c = &report.config;
    let _ = writeln!(s, "# genarm bench\n");
    let _ = writeln!(s, "```sh\n{}\n```\n", shell_line(&report.provenance.command));
    let _ = writeln!(s, "Provenance: {}\n", report.provenance.summary());
    let amount = match (c.requests, c.duration_s) {
        (Some(n), _) => format!("{n} requests per run"),
        (_, Some(d)) => format!("{d} s per run"),
        _ => String::new(),
    };
    let guidance = if c.guidance.is_empty() {
        "none".to_string()
    } else {
        c.guidance.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    };
    let _ = writeln!(
        s,
        "Model `{}` at {}; {} prompts from `{}`; max_tokens {}, temperature {}{}, seed {}; {amount}; \
         warm-up {} requests per run; guidance {guidance}.\n",
        report.model,
        c.url,
        c.prompt_count,
        c.prompts,
        c.max_tokens,
        c.temperature,
        c.top_p.map_or(String::new(), |p| format!(", top_p {p}")),
        c.seed,
        c.warmup.map_or("C".to_string(), |w| w.to_string()),
    );
    let _ = writeln!(
        s,
        "| concurrency | mode | requests | errors | req/s | output tok/s | vs unguided | mean out tokens | \
         TTFT p50 / p95 / p99 (ms) | ITL p50 / p95 / p99 (ms) | TPOT p50 (ms) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &report.runs {
        let vs = match unguided_of(report, r) {
            Some(u) if u.output_tokens_per_s > 0.0 && r.mode != "unguided" => {
                format!("{:.2}", r.output_tokens_per_s / u.output_tokens_per_s)
            }
            _ => "—".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {:.1} | {vs} | {} | {} / {} / {} | {} / {} / {} | {} |",
            r.concurrency,
            r.mode,
            r.requests,
            r.errors + r.warmup_errors,
            r.requests_per_s,
            r.output_tokens_per_s,
            num(r.mean_output_tokens, 1),
            ms(r.ttft.p50),
            ms(r.ttft.p95),
            ms(r.ttft.p99),
            ms(r.itl.p50),
            ms(r.itl.p95),
            ms(r.itl.p99),
            ms(r.tpot.p50),
        );
    }
    // Scaling: each mode's throughput at every level vs its lowest level.
    let mut scaling = Vec::new();
    for mode in ["unguided", "guided"] {
        let runs: Vec<&RunReport> = report.runs.iter().filter(|r| r.mode == mode).collect();
        if let (Some(first), true) = (runs.first(), runs.len() > 1) {
            for r in &runs[1..] {
                if first.output_tokens_per_s > 0.0 {
                    scaling.push(format!(
                        "{mode} c={} / c={}: {:.2}×",
                        r.concurrency,
                        first.concurrency,
                        r.output_tokens_per_s / first.output_tokens_per_s
                    ));
                }
            }
        }
    }
    if !scaling.is_empty() {
        let _ = writeln!(s, "\nThroughput scaling: {}.", scaling.join("; "));
    }
    let _ = writeln!(s, "\n## Per-step accounting (router /metrics, deltas over each measured phase)\n");
    let _ = writeln!(
        s,
        "| concurrency | mode | steps | mean batch | step wall (ms) | slowest forward (ms) | router overhead (ms) | \
         overhead % of wall | fusion+sampling / step (ms) | wire bytes / step | wire bytes / token |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    for r in &report.runs {
        let a = &r.step_accounting;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.concurrency,
            r.mode,
            num(a.steps, 0),
            num(a.mean_batch_size, 2),
            ms(a.mean_step_wall_s),
            ms(a.mean_slowest_forward_s),
            ms(a.mean_router_overhead_s),
            num(a.router_overhead_pct, 1),
            a.fusion_sampling_per_step_s.map_or("n/a".into(), |v| format!("{:.3}", v * 1e3)),
            num(a.wire_bytes_per_step, 0),
            num(a.wire_bytes_per_token, 0),
        );
        if let Some(n) = &a.note {
            notes.push(format!("{}: {n}", r.label()));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "\nNotes: {}.", notes.join("; "));
    }
    if report.runs.iter().all(|r| r.ok == 0) {
        let _ = writeln!(s, "\nNo request completed: throughput.png and latency.png were not drawn.");
    }
    let errors: Vec<&RunReport> = report.runs.iter().filter(|r| !r.error_messages.is_empty()).collect();
    if !errors.is_empty() {
        let _ = writeln!(s, "\n## Errors\n");
        for r in errors {
            for e in &r.error_messages {
                let _ = writeln!(s, "- {} ({}×): {}", r.label(), e.count, e.message);
            }
        }
    }
    s
}

/// The command line, shell-quoted where needed.
fn shell_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+%".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn mode_series(
    report: &BenchReport,
    value: impl Fn(&RunReport) -> Option<f64>,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out = Vec::new();
    for mode in ["unguided", "guided"] {
        let points: Vec<(f64, f64)> = report
            .runs
            .iter()
            .filter(|r| r.mode == mode)
            .filter_map(|r| value(r).map(|v| (r.concurrency as f64, v)))
            .collect();
        if !points.is_empty() {
            let name = if mode == "guided" {
                let g = report.config.guidance.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>();
                format!("guided ({})", g.join(", "))
            } else {
                mode.to_string()
            };
            out.push((name, points));
        }
    }
    out
}

/// Writes `bench.json`, `bench.md`, `throughput.png` and `latency.png` into `dir` (created if
/// needed) and returns their paths. A plot with nothing to draw (no completed request) is not
/// written.
pub fn write_outputs(report: &BenchReport, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let io = |what: String| move |source| BenchError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io(format!("creating the output directory {}", dir.display())))?;
    let json_path = dir.join("bench.json");
    let json =
        serde_json::to_string_pretty(report).map_err(|e| BenchError::Usage(format!("serializing: {e}")))?;
    std::fs::write(&json_path, json + "\n").map_err(io(format!("writing {}", json_path.display())))?;
    let md_path = dir.join("bench.md");
    std::fs::write(&md_path, markdown(report)).map_err(io(format!("writing {}", md_path.display())))?;
    let mut files = vec![json_path, md_path];

    let throughput = genarm_plot::LineChart {
        title: format!(
            "Output tokens/s vs concurrency ({}, max_tokens {})",
            report.model, report.config.max_tokens
        ),
        x_label: "requests in flight".into(),
        y_label: "output tokens/s".into(),
        series: mode_series(report, |r| (r.ok > 0).then_some(r.output_tokens_per_s))
            .into_iter()
            .map(|(name, points)| genarm_plot::Series { name, points, error_bars: None })
            .collect(),
    };
    let mut latency_series = Vec::new();
    for (q, pick) in
        [("p50", (|r: &RunReport| r.itl.p50) as fn(&RunReport) -> Option<f64>), ("p95", |r| r.itl.p95)]
    {
        for (name, points) in mode_series(report, |r| pick(r).map(|v| v * 1e3)) {
            latency_series.push(genarm_plot::Series {
                name: format!("{name} ITL {q}"),
                points,
                error_bars: None,
            });
        }
    }
    let latency = genarm_plot::LineChart {
        title: "Inter-token latency vs concurrency".into(),
        x_label: "requests in flight".into(),
        y_label: "inter-token latency (ms)".into(),
        series: latency_series,
    };
    for (chart, file) in [(throughput, "throughput.png"), (latency, "latency.png")] {
        let path = dir.join(file);
        if chart.series.iter().all(|s| s.points.is_empty()) {
            // No completed request (or no inter-token gap): nothing to draw; bench.md says why.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        chart
            .render_png(&path, 900, 560)
            .map_err(|source| BenchError::Plot { file: path.display().to_string(), source })?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        index: usize,
        tokens: u64,
        ttft: f64,
        e2e: f64,
        itl: &[f64],
        error: Option<&str>,
    ) -> RequestRecord {
        RequestRecord {
            index,
            error: error.map(str::to_string),
            ttft_s: Some(ttft),
            e2e_s: e2e,
            output_tokens: tokens,
            usage_reported: true,
            content_chunks: tokens as usize,
            finish_reason: Some("length".into()),
            itl_s: itl.to_vec(),
        }
    }

    #[test]
    fn a_run_counts_tokens_errors_and_latencies_of_completed_requests_only() {
        let records = vec![
            rec(0, 5, 0.1, 0.5, &[0.1, 0.1, 0.1, 0.1], None),
            rec(1, 3, 0.2, 0.4, &[0.1, 0.1], None),
            rec(2, 2, 0.3, 9.0, &[5.0], Some("HTTP 503: worker down")),
        ];
        let warm = vec![rec(0, 4, 0.1, 0.2, &[], Some("HTTP 503: worker down"))];
        let r = RunReport::new(2, "guided", BTreeMap::new(), &warm, records, 2.0, StepAccounting::default());
        assert_eq!((r.requests, r.ok, r.errors, r.warmup_errors), (3, 2, 1, 1));
        assert_eq!(r.output_tokens, 8);
        assert_eq!(r.failed_output_tokens, 2);
        assert_eq!(r.warmup_output_tokens, 4);
        assert_eq!(r.output_tokens_per_s, 4.0);
        assert_eq!(r.requests_per_s, 1.0);
        assert_eq!(r.mean_output_tokens, Some(4.0));
        assert_eq!(r.itl.count, 6);
        assert_eq!(r.ttft.count, 2);
        assert_eq!(r.error_messages, vec![ErrorCount { message: "HTTP 503: worker down".into(), count: 2 }]);
        // TPOT of request 0: (0.5 − 0.1) / 4; of request 1: (0.4 − 0.2) / 2.
        assert!((r.tpot.mean.unwrap() - (0.1 + 0.1) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn outputs_are_written_with_tables_and_plots() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = Vec::new();
        for c in [1, 4] {
            for (mode, tps) in [("unguided", 10.0 * c as f64), ("guided", 7.0 * c as f64)] {
                let recs = vec![rec(0, tps as u64, 0.1, 1.0, &[0.01, 0.02], None)];
                runs.push(RunReport::new(
                    c,
                    mode,
                    BTreeMap::new(),
                    &[],
                    recs,
                    1.0,
                    StepAccounting::default(),
                ));
            }
        }
        let report = BenchReport {
            tool: "genarm bench".into(),
            version: "0".into(),
            provenance: Provenance {
                command: vec!["genarm".into(), "bench".into(), "--prompts".into(), "my file.txt".into()],
                git: genarm_demo::provenance::GitState {
                    dir: "/src".into(),
                    commit: None,
                    dirty: None,
                    note: Some("not in a git checkout".into()),
                },
                files: vec![genarm_demo::provenance::FileHash {
                    role: "base".into(),
                    path: "/m/base.gguf".into(),
                    bytes: 3,
                    sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
                }],
            },
            started_unix: 0,
            model: "m".into(),
            config: ConfigEcho {
                url: "http://x".into(),
                prompts: "p".into(),
                prompt_count: 1,
                concurrency: vec![1, 4],
                max_tokens: 8,
                guidance: BTreeMap::from([("a".into(), 1.0)]),
                compare_unguided: true,
                requests: Some(1),
                duration_s: None,
                warmup: None,
                seed: 0,
                temperature: 1.0,
                top_p: Some(0.9),
                request_timeout_s: 60.0,
            },
            runs,
        };
        let files = write_outputs(&report, dir.path()).unwrap();
        assert_eq!(files.len(), 4);
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() > 0, "{}", f.display());
        }
        let md = std::fs::read_to_string(dir.path().join("bench.md")).unwrap();
        assert!(md.contains("'my file.txt'"), "{md}");
        assert!(md.contains("temperature 1, top_p 0.9, seed 0"), "{md}");
        assert!(
            md.contains("commit unknown (not in a git checkout)") && md.contains("sha256 `ba7816bf8f01`"),
            "{md}"
        );
        assert!(md.contains("| 4 | guided |") && md.contains("| 0.70 |"), "{md}");
        assert!(md.contains("guided c=4 / c=1: 4.00×"), "{md}");
        let back: BenchReport =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("bench.json")).unwrap()).unwrap();
        assert_eq!(back.runs.len(), 4);

        // Every request failed: the report and tables are written, the empty plots are not.
        let mut failed = report.clone();
        for r in &mut failed.runs {
            let recs = vec![rec(0, 0, 0.1, 1.0, &[], Some("HTTP 400: bad"))];
            *r = RunReport::new(
                r.concurrency,
                &r.mode,
                BTreeMap::new(),
                &[],
                recs,
                1.0,
                StepAccounting::default(),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let files = write_outputs(&failed, dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        assert!(!dir.path().join("throughput.png").exists());
        let md = std::fs::read_to_string(dir.path().join("bench.md")).unwrap();
        assert!(md.contains("No request completed") && md.contains("(1×): HTTP 400: bad"), "{md}");
        assert_eq!(failed.total_errors(), 4);
    }
}
