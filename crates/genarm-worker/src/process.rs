//! The shared `main` of the worker binaries: logging to stderr, the async runtime, and an exit
//! status with the error printed on failure.

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::args::WorkerArgs;
use crate::config::WorkerConfig;
use crate::role::WorkerRole;
use crate::serve::run;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Safe to call more than once.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Runs a worker process for `role` with the parsed `args` until SIGTERM/SIGINT; `binary` names
/// the program in error messages. Returns the process exit status (1 with the error on stderr
/// when it could not start or failed).
pub fn run_process(binary: &str, args: WorkerArgs, role: WorkerRole) -> ExitCode {
    init_tracing();
    let result = WorkerConfig::new(args, role).and_then(|config| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("genarm-worker-rt")
            .build()
            .map_err(|e| crate::WorkerError::Internal(format!("cannot start the async runtime: {e}")))?;
        let result = runtime.block_on(run(config));
        // Don't wait on a blocking task that is still running (the draining deadline has passed).
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
