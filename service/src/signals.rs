//! SIGTERM (systemd's stop) and SIGINT (Ctrl-C) both mean "shut down gracefully".

use tracing::{error, info};

/// Completes at the first SIGTERM or SIGINT. If the handlers cannot be installed it logs why
/// and never completes (the process can still be killed).
pub async fn shutdown_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}
