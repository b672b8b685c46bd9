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

/// A token cancelled at the first SIGTERM or SIGINT, after telling systemd STOPPING=1 — from
/// the signal task itself, since once the token fires the process may exit before any other
/// task would get to say it. Call inside a tokio runtime.
pub fn shutdown_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let on_signal = token.clone();
    tokio::spawn(async move {
        shutdown_requested().await;
        crate::notify::stopping();
        on_signal.cancel();
    });
    token
}
