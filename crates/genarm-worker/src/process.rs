//! The shared `main` of the worker binaries: logging to stderr, the async runtime, and an exit
//! status with the error printed on failure.

use std::process::ExitCode;

use crate::args::WorkerArgs;
use crate::config::WorkerConfig;
use crate::role::WorkerRole;
use crate::serve::run;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), and exports spans by OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (call inside a tokio runtime for that; see
/// [`genarm_telemetry::init`]). Keep the guard until exit. Safe to call more than once.
pub fn init_tracing(service_name: &str) -> genarm_telemetry::TelemetryGuard {
    genarm_telemetry::init(service_name)
}

/// Runs a worker process for `role` with the parsed `args` until SIGTERM/SIGINT; `binary` names
/// the program in error messages and is its tracing `service.name`. Returns the process exit
/// status (1 with the error on stderr when it could not start or failed).
pub fn run_process(binary: &str, args: WorkerArgs, role: WorkerRole) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("genarm-worker-rt")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{binary}: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = {
        let _enter = runtime.enter();
        init_tracing(binary)
    };
    let result = WorkerConfig::new(args, role).and_then(|config| runtime.block_on(run(config)));
    runtime.block_on(telemetry.shutdown_async());
    // Don't wait on a blocking task that is still running (the draining deadline has passed).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
