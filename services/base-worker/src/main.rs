//! genarm-base-worker: serves the base model over genarm's worker gRPC protocol
//! (tensor-parallel over `--tp` ranks). All serving logic lives in `genarm-worker`.

use std::process::ExitCode;

use clap::Parser;
use genarm_worker::{run_process, WorkerArgs, WorkerRole};

/// Serves a base model to the genarm router over gRPC (`genarm.v1.Worker` and `grpc.health.v1`).
///
/// Once bound it prints `GENARM_LISTENING grpc <ip:port>` on stdout; health reports SERVING when
/// the model is loaded and warmed. Logs go to stderr (RUST_LOG, default info). SIGTERM or SIGINT
/// stops it cleanly. Every flag can also be set through the GENARM_* variable shown.
#[derive(Debug, Parser)]
#[command(name = "genarm-base-worker", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_process("genarm-base-worker", cli.worker, WorkerRole::Base)
}
