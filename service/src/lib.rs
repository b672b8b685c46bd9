//! What every wsmq daemon does the same way, so the gateway, the bridge and the demo worker
//! behave alike for an operator: one TOML file with a section per program, every key
//! overridable by a `WSMQ_*` variable and by a flag; the same log formats, signals, metrics
//! and systemd notifications.

#![forbid(unsafe_code)]

pub mod config;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod signals;

pub use config::{ConfigArgs, ConfigError, EXIT_USAGE, load, mask_url_password, render, startup};
pub use logging::LogFormat;

/// An error and its sources, `: `-separated, for a log line: a bare `%e` shows only the
/// outermost message ("ipc framing failed"), never the cause under it.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
