//! `genarm-router`: the OpenAI-compatible HTTP router of a genarm cluster (flags: `--help`).
//! All logic lives in the `genarm_router` library; this parses flags, sets up logging to
//! stderr (`RUST_LOG`, default `info`) and runs the server.

use std::process::ExitCode;

use clap::Parser as _;
use genarm_router::args::Args;

fn main() -> ExitCode {
    // Chat templates render in children that re-execute this binary (--chat-template-memory-mib):
    // such a child serves renders here and never returns.
    genarm_text::run_sandbox_if_requested();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("genarm-router: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = {
        let _enter = runtime.enter();
        genarm_telemetry::init("genarm-router")
    };
    let result = runtime.block_on(genarm_router::server::run(args));
    runtime.block_on(telemetry.shutdown_async());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("genarm-router: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
