//! `genarm-router`: the OpenAI-compatible HTTP router of a genarm cluster (flags: `--help`).
//! All logic lives in the `genarm_router` library; this parses flags, sets up logging to
//! stderr (`RUST_LOG`, default `info`) and runs the server.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use genarm_router::args::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("genarm-router: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(genarm_router::server::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("genarm-router: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
