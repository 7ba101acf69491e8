//! `genarm eval`: the alignment evaluation over a running router (see the `genarm-eval` crate):
//! every weight combination of a grid, seeded samples, the demo's scorers, 95% intervals, win
//! rates vs unguided, a control, a fluency guard, `eval.json`, `eval.md` and PNG plots.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use genarm_demo::provenance::parse_model_file;
use genarm_eval::grid::Axis;
use genarm_eval::{evaluate, EvalConfig};

/// `genarm eval` arguments.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The router's URL (as printed by `genarm launch` or `genarm demo`).
    #[arg(long, env = "GENARM_EVAL_URL")]
    pub url: String,
    /// Prompt file: JSONL with one {"prompt": "..."} per line, or plain text with one prompt per
    /// line. Each prompt is sent as one user message to /v1/chat/completions.
    #[arg(long, env = "GENARM_EVAL_PROMPTS")]
    pub prompts: PathBuf,
    /// A reward model and its weights, NAME=W1,W2,... (e.g. upbeat=0,0.5,1,2). One --grid: every
    /// weight of that ARM; two: their full cross product (the Pareto grid). Weight 0 everywhere
    /// is the unguided row, always run. α = weight (β = 1).
    #[arg(long = "grid", required = true, env = "GENARM_EVAL_GRID", value_delimiter = ';')]
    pub grid: Vec<String>,
    /// The control reward model: the untuned backbone served as an ARM. For a one-ARM grid, every
    /// non-zero weight is also run as {CONTROL: weight} (π_base·π_base^α only sharpens), so the
    /// table separates alignment from a lower temperature.
    #[arg(long, env = "GENARM_EVAL_CONTROL")]
    pub control: Option<String>,
    /// Samples per prompt and weight combination; sample i uses seed SEED+i.
    #[arg(long, default_value_t = 1, env = "GENARM_EVAL_SAMPLES")]
    pub samples: usize,
    /// The first seed (request field `seed`); the same seeds are used for every combination,
    /// so win rates compare outputs on the same prompt and seed.
    #[arg(long, default_value_t = 1, env = "GENARM_EVAL_SEED")]
    pub seed: u64,
    /// max_tokens of every request.
    #[arg(long, default_value_t = 64, env = "GENARM_EVAL_MAX_TOKENS")]
    pub max_tokens: usize,
    /// Sampling temperature of every request (0 = greedy: then samples > 1 repeat each other).
    #[arg(long, default_value_t = 1.0, env = "GENARM_EVAL_TEMPERATURE")]
    pub temperature: f64,
    /// top_p of every request; unset: the router's default (no nucleus cut).
    #[arg(long, env = "GENARM_EVAL_TOP_P")]
    pub top_p: Option<f64>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8, env = "GENARM_EVAL_CONCURRENCY")]
    pub concurrency: usize,
    /// Deadline of one request in seconds (a failed or timed-out request is retried once, then
    /// counted as failed in the report).
    #[arg(long, default_value_t = 600, env = "GENARM_EVAL_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: u64,
    /// The `model` field of the requests; default: the base model listed by GET /v1/models.
    #[arg(long, env = "GENARM_EVAL_MODEL")]
    pub model: Option<String>,
    /// The base model (HF directory or .gguf) for the fluency guard: each output's mean
    /// log-prob per token under it, computed in this process on the CPU. Omitted: lengths only.
    #[arg(long, env = "GENARM_EVAL_BASE_MODEL")]
    pub base_model: Option<PathBuf>,
    /// A model file or adapter the router serves, NAME=PATH (or PATH): hashed (SHA-256; every
    /// file of a directory) into the report's provenance next to the genarm commit and the
    /// command line. Repeat for each model; the router does not say which files it loaded.
    #[arg(
        long = "model-file",
        value_name = "NAME=PATH",
        env = "GENARM_EVAL_MODEL_FILES",
        value_delimiter = ';'
    )]
    pub model_files: Vec<String>,
    /// Output directory: eval.json (every output and the table), eval.md, and
    /// score_vs_weight_<OBJECTIVE>.png (one-ARM grid) or pareto.png (two-ARM grid).
    #[arg(long, env = "GENARM_EVAL_OUT")]
    pub out: PathBuf,
}

/// Runs `genarm eval`. Fails (after writing the report) when any request failed twice.
pub async fn run(args: EvalArgs) -> anyhow::Result<()> {
    let grid = args.grid.iter().map(|g| g.parse::<Axis>()).collect::<Result<Vec<_>, _>>()?;
    let model_files =
        args.model_files.iter().map(|m| parse_model_file(m)).collect::<anyhow::Result<Vec<_>>>()?;
    let cfg = EvalConfig {
        url: args.url,
        prompts: args.prompts,
        grid,
        control: args.control,
        samples: args.samples,
        seed: args.seed,
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        concurrency: args.concurrency,
        request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        model: args.model,
        base_model: args.base_model,
        out: args.out.clone(),
        command: std::env::args().collect(),
        model_files,
    };
    let (report, files) = evaluate(&cfg).await.context("genarm eval")?;
    println!("{}", genarm_eval::report::markdown_table(&report));
    println!("wrote {} in {}", evaluate::describe_files(&files, &args.out), args.out.display());
    if report.failures > 0 {
        bail!(
            "{} of {} requests failed after a retry (listed in {}/eval.md; excluded from the means)",
            report.failures,
            report.outputs.len(),
            args.out.display()
        );
    }
    Ok(())
}
