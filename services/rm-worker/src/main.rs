//! genarm-rm-worker: serves one autoregressive reward model (ARM) under a reward name over
//! genarm's worker gRPC protocol. All serving logic lives in `genarm-worker`.

use std::process::ExitCode;

use clap::Parser;
use genarm_worker::{run_process, WorkerArgs, WorkerRole};

/// Serves an autoregressive reward model to the genarm router over gRPC (`genarm.v1.Worker` and
/// `grpc.health.v1`), under the reward name requests use in `guidance.rewards`.
///
/// Once bound it prints `GENARM_LISTENING grpc <ip:port>` on stdout; health reports SERVING when
/// the model is loaded and warmed. Logs go to stderr (RUST_LOG, default info). SIGTERM or SIGINT
/// stops it cleanly. Every flag can also be set through the GENARM_* variable shown.
#[derive(Debug, Parser)]
#[command(name = "genarm-rm-worker", version, about, long_about)]
struct Cli {
    /// The reward name this model is served under (as in the router's `--rm NAME=URL` and in a
    /// request's `guidance.rewards`); steps for any other name are refused. ASCII letters,
    /// digits, '_', '-' and '.'.
    #[arg(long, env = "GENARM_NAME", value_name = "NAME")]
    name: String,

    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_process("genarm-rm-worker", cli.worker, WorkerRole::Reward { name: cli.name })
}
