//! systemd's notify protocol (`Type=notify`): `READY=1` once the program can do its job,
//! `STATUS=` lines an operator sees in `systemctl status`, `WATCHDOG=1` pings while
//! `WatchdogSec=` is set, and `STOPPING=1` when shutdown begins.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op, so the programs behave the
//! same when started by hand or by the tests.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// The program is up and serving.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A line for `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Graceful shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// If systemd asked for a watchdog, pings it at half the interval from a task on the runtime
/// (a wedged runtime stops the pings, and systemd restarts the service) until `shutdown`.
pub fn spawn_watchdog(shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(10));
    info!(?interval, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    });
}
