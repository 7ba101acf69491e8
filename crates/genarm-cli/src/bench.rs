//! `genarm bench`: the streaming load generator over a running router (see the `genarm-bench`
//! crate): TTFT, inter-token latency and throughput per concurrency level, unguided and guided,
//! with the router's per-step accounting, written as bench.json, bench.md and PNG plots.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use genarm_bench::{parse_guidance, report, run_bench, Amount, BenchConfig};
use genarm_demo::provenance::parse_model_file;

/// `genarm bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The router's URL (as printed by `genarm launch` or `genarm demo`).
    #[arg(long, env = "GENARM_BENCH_URL")]
    pub url: String,
    /// Prompt file: JSONL with one {"prompt": "..."} per line, or plain text with one prompt per
    /// line. Request i sends prompt i modulo their count as one user message of a streamed
    /// /v1/chat/completions request.
    #[arg(long, env = "GENARM_BENCH_PROMPTS")]
    pub prompts: PathBuf,
    /// Concurrency levels: requests kept in flight at once, one run per level (and mode), in
    /// this order.
    #[arg(long, env = "GENARM_BENCH_CONCURRENCY", value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// max_tokens of every request. The router has no ignore_eos: a request that samples EOS
    /// earlier stops there, and the report counts the tokens actually generated.
    #[arg(long, env = "GENARM_BENCH_MAX_TOKENS", default_value_t = 64)]
    pub max_tokens: u32,
    /// Guidance of the guided runs: reward weights NAME=W,... (α = W, β = 1). Without it every
    /// run is unguided.
    #[arg(long, env = "GENARM_BENCH_GUIDANCE")]
    pub guidance: Option<String>,
    /// With --guidance, also run every concurrency level unguided (interleaved: per level,
    /// unguided then guided), so the report gives guided / unguided ratios.
    #[arg(long, env = "GENARM_BENCH_COMPARE_UNGUIDED")]
    pub compare_unguided: bool,
    /// Measured requests per run. Default (without --duration): 4 × the concurrency, at least 8.
    #[arg(long, env = "GENARM_BENCH_REQUESTS", conflicts_with = "duration")]
    pub requests: Option<usize>,
    /// Instead of a request count: seconds per run during which new requests are started; those
    /// started are awaited and counted, and the run's time lasts until the last one ends.
    #[arg(long, env = "GENARM_BENCH_DURATION")]
    pub duration: Option<f64>,
    /// Warm-up requests before each run, sent C at a time and not counted (their errors are
    /// reported). Default: the run's concurrency C.
    #[arg(long, env = "GENARM_BENCH_WARMUP")]
    pub warmup: Option<usize>,
    /// Seed of request i is SEED + i, the same in every run, so unguided and guided runs send the
    /// same prompts with the same seeds.
    #[arg(long, env = "GENARM_BENCH_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Sampling temperature of every request (0 = greedy).
    #[arg(long, env = "GENARM_BENCH_TEMPERATURE", default_value_t = 1.0)]
    pub temperature: f64,
    /// Nucleus sampling: top_p of every request, in (0, 1]. Default: not sent (the router's 1).
    #[arg(long, env = "GENARM_BENCH_TOP_P")]
    pub top_p: Option<f64>,
    /// The `model` field of the requests; default: the base model listed by GET /v1/models.
    #[arg(long, env = "GENARM_BENCH_MODEL")]
    pub model: Option<String>,
    /// API key for a router started with --api-key (sent as Authorization: Bearer; also used
    /// for /metrics).
    #[arg(long, env = "GENARM_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Deadline of one request in seconds; a request past it counts as an error.
    #[arg(long, env = "GENARM_BENCH_REQUEST_TIMEOUT_SECS", default_value_t = 600)]
    pub request_timeout_secs: u64,
    /// A model file or adapter the router serves, NAME=PATH (or PATH): hashed (SHA-256; every
    /// file of a directory) into the report's provenance next to the genarm commit and the
    /// command line. Repeat for each model; the router does not say which files it loaded.
    #[arg(
        long = "model-file",
        value_name = "NAME=PATH",
        env = "GENARM_BENCH_MODEL_FILES",
        value_delimiter = ';'
    )]
    pub model_files: Vec<String>,
    /// Output directory: bench.json (config, command line, every run and request), bench.md
    /// (tables), throughput.png (output tokens/s vs concurrency) and latency.png (ITL p50/p95).
    #[arg(long, env = "GENARM_BENCH_OUT")]
    pub out: PathBuf,
}

/// Runs `genarm bench`. Fails (after writing the report) when any request failed.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let prompts = genarm_demo::prompts::read_prompt_file(&args.prompts)?;
    let model_files =
        args.model_files.iter().map(|m| parse_model_file(m)).collect::<anyhow::Result<Vec<_>>>()?;
    let guidance = match &args.guidance {
        Some(g) => parse_guidance(g)?,
        None => Default::default(),
    };
    let amount = match (args.requests, args.duration) {
        (Some(n), _) => Amount::Requests(n),
        (None, Some(secs)) => {
            if !(secs.is_finite() && secs > 0.0) {
                bail!("--duration {secs}: give a positive number of seconds");
            }
            Amount::Duration(Duration::from_secs_f64(secs))
        }
        (None, None) => {
            Amount::Requests(args.concurrency.iter().copied().max().unwrap_or(1).saturating_mul(4).max(8))
        }
    };
    let cfg = BenchConfig {
        url: args.url,
        prompts,
        prompts_source: args.prompts.display().to_string(),
        concurrency: args.concurrency,
        max_tokens: args.max_tokens,
        guidance,
        compare_unguided: args.compare_unguided,
        amount,
        warmup: args.warmup,
        seed: args.seed,
        temperature: args.temperature,
        top_p: args.top_p,
        model: args.model,
        api_key: args.api_key,
        request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        command: std::env::args().collect(),
        model_files,
        progress: std::io::stderr().is_terminal(),
        out: args.out.clone(),
    };
    let report = run_bench(&cfg).await.context("genarm bench")?;
    let files = report::write_outputs(&report, &args.out)?;
    println!("{}", report::markdown(&report));
    let names: Vec<String> =
        files.iter().filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    println!("wrote {} in {}", names.join(", "), args.out.display());
    let errors = report.total_errors();
    if errors > 0 {
        bail!(
            "{errors} requests failed (the messages are in {}/bench.md; failed requests are excluded from the \
             figures)",
            args.out.display()
        );
    }
    Ok(())
}
