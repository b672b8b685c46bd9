//! systemd's notify protocol (`Type=notify`): `READY=1` once the program can do its job,
//! `STATUS=` lines an operator sees in `systemctl status`, `WATCHDOG=1` pings while
//! `WatchdogSec=` is set, and `STOPPING=1` when shutdown begins.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op, so the programs behave the
//! same when started by hand or by the tests.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
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

/// Tells systemd the program is ready with `ready_status`, pings the watchdog, and from then on
/// keeps `systemctl status` current: each new value of `state` becomes the line `describe`
/// makes of it, until `shutdown` or until the sender is gone. STOPPING=1 is sent by the signal
/// handler. Call inside a tokio runtime.
pub fn follow<T, F>(
    ready_status: &str,
    mut state: watch::Receiver<T>,
    shutdown: CancellationToken,
    describe: F,
) where
    T: Send + Sync + 'static,
    F: Fn(&T) -> String + Send + 'static,
{
    ready(ready_status);
    spawn_watchdog(shutdown.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = state.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let line = describe(&state.borrow_and_update());
                    status(&line);
                }
            }
        }
    });
}
