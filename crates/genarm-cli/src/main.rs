//! `genarm`: the user-facing command. `genarm launch` runs a whole GenARM cluster (base-worker,
//! rm-workers, router) as local processes.

use clap::{Parser, Subcommand};
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
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("genarm: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
