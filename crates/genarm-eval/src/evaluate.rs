//! The whole evaluation: read prompts, expand the grid, check the names against the router,
//! generate, score, measure base log-probs, aggregate and write the report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fluency::BaseLogprob;
use crate::generate::{generate, models, score, GenOptions};
use crate::grid::{expand, Axis};
use crate::report::{aggregate, write, Objective, Report, RunInfo};
use crate::EvalError;
use genarm_demo::prompts::read_prompt_file;
use genarm_demo::provenance::{source_dir, Provenance};

/// What `genarm eval` was asked to do.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// The router's base URL.
    pub url: String,
    /// The prompt file.
    pub prompts: PathBuf,
    /// The grid axes (one or two).
    pub grid: Vec<Axis>,
    /// The control reward model (one-ARM grids).
    pub control: Option<String>,
    /// Samples per prompt and combination.
    pub samples: usize,
    /// First seed.
    pub seed: u64,
    /// `max_tokens`.
    pub max_tokens: usize,
    /// `temperature`.
    pub temperature: f64,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// Requests in flight.
    pub concurrency: usize,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// The served model name; `None`: the base listed by `GET /v1/models`.
    pub model: Option<String>,
    /// The base model for the log-prob fluency guard.
    pub base_model: Option<PathBuf>,
    /// Output directory.
    pub out: PathBuf,
    /// The command line, recorded in the report's provenance.
    pub command: Vec<String>,
    /// Model files and adapters the router serves, `(name, path)`, hashed into the report's
    /// provenance (with `base_model`, which is added as `base-model`).
    pub model_files: Vec<(String, PathBuf)>,
}

/// Runs the evaluation and writes the report; returns it with the files written. Failed
/// requests are in the report (`failures`, and each output's `error`): the caller decides
/// whether they fail the run.
pub async fn evaluate(cfg: &EvalConfig) -> Result<(Report, Vec<PathBuf>), EvalError> {
    if cfg.samples == 0 {
        return Err(EvalError::Usage("--samples must be at least 1".into()));
    }
    if !(cfg.temperature.is_finite() && cfg.temperature >= 0.0) {
        return Err(EvalError::Usage(format!(
            "--temperature {} must be a finite number ≥ 0",
            cfg.temperature
        )));
    }
    let prompts = read_prompt_file(&cfg.prompts)?;
    let combos = expand(&cfg.grid, cfg.control.as_deref())?;
    let url = cfg.url.trim_end_matches('/').to_string();
    let client = crate::generate::client(Duration::from_secs(30))?;
    let (served, rewards) = models(&client, &url).await?;
    for c in &combos {
        for name in c.rewards.keys() {
            if !rewards.contains(name) {
                return Err(EvalError::Router {
                    url: url.clone(),
                    reason: format!(
                        "it serves no reward model `{name}` (it serves: {}); start it with --rm {name}=PATH",
                        if rewards.is_empty() { "none".to_string() } else { rewards.join(", ") }
                    ),
                });
            }
        }
    }
    // Load the base and hash the model files first: a bad path fails before an hour of generation.
    let base = match &cfg.base_model {
        Some(p) => Some(BaseLogprob::open(p)?),
        None => None,
    };
    let mut hashed = cfg.model_files.clone();
    hashed.extend(cfg.base_model.iter().map(|p| ("base-model".to_string(), p.clone())));
    let provenance = Provenance::collect(cfg.command.clone(), &source_dir(), &hashed)
        .map_err(|e| EvalError::Provenance(format!("{e:#}")))?;
    let opts = GenOptions {
        url: url.clone(),
        model: cfg.model.clone().unwrap_or(served),
        samples: cfg.samples,
        seed: cfg.seed,
        max_tokens: cfg.max_tokens,
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        concurrency: cfg.concurrency,
        request_timeout: cfg.request_timeout,
    };
    eprintln!(
        "genarm eval: {} combinations × {} prompts × {} samples = {} requests to {url} (model {})",
        combos.len(),
        prompts.len(),
        cfg.samples,
        combos.len() * prompts.len() * cfg.samples,
        opts.model
    );
    let t0 = Instant::now();
    let mut samples = generate(&opts, &combos, &prompts).await?;
    let generation_seconds = t0.elapsed().as_secs_f64();
    score(&mut samples);
    if let Some(base) = &base {
        base_logprobs(base, &prompts, &mut samples)?;
    }
    let objectives: Vec<Objective> = genarm_demo::scorers::all()
        .iter()
        .map(|s| Objective { name: s.name().to_string(), describe: s.describe().to_string() })
        .collect();
    let rows = aggregate(&combos, &objectives, &samples);
    let failures = samples.iter().filter(|s| s.error.is_some()).count();
    let report = Report {
        provenance,
        run: RunInfo {
            url,
            model: opts.model.clone(),
            grid: cfg.grid.clone(),
            control: cfg.control.clone(),
            samples: cfg.samples,
            seed: cfg.seed,
            max_tokens: cfg.max_tokens,
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            base_model: cfg.base_model.as_ref().map(|p| p.display().to_string()),
            generation_seconds,
        },
        objectives,
        prompts,
        rows,
        failures,
        outputs: samples,
    };
    let files = write(&report, &cfg.out)?;
    Ok((report, files))
}

/// Fills `base_logprob_per_token` of every output (identical outputs of a prompt computed once).
fn base_logprobs(
    base: &BaseLogprob,
    prompts: &[String],
    samples: &mut [crate::generate::Sample],
) -> Result<(), EvalError> {
    let todo = samples.iter().filter(|s| s.text.is_some()).count();
    let bar = indicatif::ProgressBar::new(todo as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} base log-probs {bar:40} {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut cache: HashMap<(usize, String), Option<f64>> = HashMap::new();
    for s in samples.iter_mut() {
        let Some(text) = &s.text else { continue };
        let key = (s.prompt, text.clone());
        let lp = match cache.get(&key) {
            Some(v) => *v,
            None => {
                let v = base.mean_logprob(&prompts[s.prompt], text)?.map(|(lp, _)| lp);
                cache.insert(key, v);
                v
            }
        };
        s.base_logprob_per_token = lp;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Where `out` is, for messages.
pub fn describe_files(files: &[PathBuf], out: &Path) -> String {
    files
        .iter()
        .map(|f| f.strip_prefix(out).unwrap_or(f).display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
