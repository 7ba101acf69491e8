//! The shutdown signal: SIGTERM or SIGINT (Ctrl-C), with handlers installed up front so that a
//! signal arriving at any point after startup begins a graceful stop.

use std::future::Future;

/// Installs SIGTERM and SIGINT handlers now (on non-Unix platforms, Ctrl-C) and returns a future
/// that resolves when one arrives. Install it before announcing the listen address: from then
/// on a signal is never lost to the default action.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "shutting down");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for Ctrl-C");
                return std::future::pending().await;
            }
            tracing::info!("Ctrl-C: shutting down");
        })
    }
}
