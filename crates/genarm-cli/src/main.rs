//! `genarm`: the user-facing command. `genarm launch` runs a whole GenARM cluster (base-worker,
//! rm-workers, router) as local processes.

use clap::{Parser, Subcommand};
use genarm_cli::demo;
use genarm_cli::launch::{self, LaunchArgs};

/// genarm: decode-time alignment of a base LLM with autoregressive reward models (GenARM).
#[derive(Debug, Parser)]
#[command(name = "genarm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a base-worker, one rm-worker per --rm and the router as local processes on
    /// loopback, wait until the API is ready, print its URL and a sample request, and stop them
    /// all on Ctrl-C or SIGTERM. Exits non-zero, with the failing service's last log lines, if
    /// a service fails.
    Launch(LaunchArgs),

    /// The demo, in one command: fetch SmolLM2-135M-Instruct (once, checksummed, cached),
    /// launch it guided by the two bundled demo ARMs (`upbeat` and `concise`), and show the same
    /// prompt answered unguided and guided, side by side, with ready-to-paste curl lines.
    Demo(demo::DemoArgs),

    /// Write the demo prompt sets (training prompts and held-out evaluation prompts) as JSONL.
    DemoPrompts(demo::DemoPromptsArgs),

    /// Sample several responses per prompt from a running cluster, score them with the demo
    /// scorers and write (best, worst) preference pairs per objective for `genarm train-arm`.
    MakePairs(demo::MakePairsArgs),

    /// Evaluate alignment over a running router: generate for every weight combination of a
    /// grid (seeded, n samples per prompt), score with the demo scorers, and write eval.json,
    /// eval.md (means with 95% CIs, win rates vs unguided, a control, length and base log-prob)
    /// and PNG plots (score vs weight for one ARM, the Pareto front for two).
    Eval(genarm_cli::eval::EvalArgs),

    /// Write a model as a full Hugging Face directory (config.json, f32 model.safetensors,
    /// tokenizer files): a backbone with a LoRA adapter merged in (--model BACKBONE --lora
    /// ADAPTER, or --model ADAPTER_DIR), or a .gguf file converted.
    Merge(genarm_cli::merge::MergeArgs),

    /// Train an autoregressive reward model (ARM) from JSONL preference pairs: a LoRA adapter in
    /// the PEFT format (or, with --full, a fully fine-tuned model) that genarm-rm-worker serves.
    /// Loss −log σ(β_r·[Σ log π(y_w|x) − Σ log π(y_l|x)] − γ) over response tokens; AdamW with
    /// warmup + cosine, a held-out split, checkpoints and --resume.
    TrainArm(genarm_cli::train::TrainArmArgs),

    /// Load-test a running router: streamed chat completions with exactly C requests in flight
    /// per concurrency level (unguided and/or guided), TTFT, inter-token latency, throughput,
    /// errors, and the router's per-step accounting from /metrics; writes bench.json, bench.md,
    /// throughput.png and latency.png.
    Bench(genarm_cli::bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One thread: the services are spawned from the main thread, so their death signal
    // (PR_SET_PDEATHSIG) fires only when the launcher itself exits.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("genarm: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Launch(args) => runtime.block_on(launch::run(args)),
        Command::Demo(args) => runtime.block_on(demo::run(args)),
        Command::DemoPrompts(args) => demo::write_prompts(args),
        Command::MakePairs(args) => runtime.block_on(demo::make_pairs(args)),
        Command::Eval(args) => runtime.block_on(genarm_cli::eval::run(args)),
        Command::Merge(args) => genarm_cli::merge::run(args),
        Command::TrainArm(args) => genarm_cli::train::run(args),
        Command::Bench(args) => runtime.block_on(genarm_cli::bench::run(args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("genarm: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
