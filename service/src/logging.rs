//! Log output shared by the wsmq programs: stderr, filtered by `RUST_LOG`, plain lines that
//! read well in journald or one JSON object per line.

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};

/// Used when `RUST_LOG` is unset. lapin logs every unroutable message at warn; those are
/// answered -32601 and need no log line of their own.
pub const DEFAULT_FILTER: &str = "info,lapin::returned_messages=error";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Installs the global tracing subscriber.
    pub fn init(self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self {
            LogFormat::Plain => builder.with_ansi(std::io::stderr().is_terminal()).init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}
