//! Command-line configuration of the gateway (every flag also readable from a `WSMQ_*` variable).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Websocket front of wsmq: JSON-RPC 2.0 calls in, results back to the client that asked.
#[derive(Debug, Clone, Parser)]
#[command(name = "wsmq-gateway", version, about)]
pub struct Config {
    /// Address to serve websockets (`/ws`) and HTTP (`/healthz`) on. Port 0 picks a free one
    /// (the log line "gateway listening" says which).
    #[arg(long, env = "WSMQ_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Unix socket of the bridge.
    #[arg(long, env = "WSMQ_IPC", default_value = "/run/wsmq/bridge.sock")]
    pub ipc: PathBuf,

    /// Largest websocket message (and frame) a client may send, in bytes; a larger one closes
    /// the connection with 1009.
    #[arg(long, env = "WSMQ_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Calls one connection may have in flight; past it, calls are answered -32003.
    #[arg(long, env = "WSMQ_MAX_INFLIGHT_PER_CLIENT", default_value_t = 256)]
    pub max_inflight_per_client: usize,

    /// Calls the whole gateway may have in flight; past it, calls are answered -32003.
    #[arg(long, env = "WSMQ_MAX_INFLIGHT", default_value_t = 65536)]
    pub max_inflight: usize,

    /// Deadline of a call that names none in `wsmq.timeout_ms` (e.g. `30s`, `500ms`, `2m`).
    /// When it passes the call is answered -32001 and the workers are told to stop.
    #[arg(long, env = "WSMQ_CALL_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub call_timeout: Duration,

    /// Longest deadline a call may ask for; longer requests are cut to it.
    #[arg(long, env = "WSMQ_MAX_CALL_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10m")]
    pub max_call_timeout: Duration,

    /// Websocket connections at once; past it, upgrades get HTTP 503.
    #[arg(long, env = "WSMQ_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Seconds to keep answering calls in flight after SIGTERM before closing sockets (1001).
    #[arg(long, env = "WSMQ_DRAIN_TIMEOUT", default_value_t = 10)]
    pub drain_timeout: u64,

    /// Log format: `plain` reads well in journald, `json` suits log pipelines.
    #[arg(long, env = "WSMQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

/// Used when `RUST_LOG` is unset. lapin logs every unroutable message at warn; those are
/// answered -32601 and need no log line of their own.
const DEFAULT_LOG_FILTER: &str = "info,lapin::returned_messages=error";

/// How log lines are written (to stderr; the filter comes from `RUST_LOG`, default `info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

impl LogFormat {
    /// Installs the global tracing subscriber.
    pub fn init(self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self {
            LogFormat::Plain => builder.with_ansi(std::io::stderr().is_terminal()).init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    #[error("--call-timeout must be at least 1ms and at most --max-call-timeout")]
    CallTimeout,
    #[error("--max-message-bytes {0} is above the IPC frame limit of {max} bytes", max = wsmq_ipc_proto::MAX_FRAME_LEN / 2)]
    MessageTooLarge(usize),
}

impl Config {
    /// Checks what clap cannot; run before anything is bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("max-message-bytes", self.max_message_bytes),
            ("max-inflight-per-client", self.max_inflight_per_client),
            ("max-inflight", self.max_inflight),
            ("max-connections", self.max_connections),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.call_timeout < Duration::from_millis(1) || self.call_timeout > self.max_call_timeout
        {
            return Err(ConfigError::CallTimeout);
        }
        // Params travel inside one IPC frame, with room to spare for the envelope.
        if self.max_message_bytes > wsmq_ipc_proto::MAX_FRAME_LEN / 2 {
            return Err(ConfigError::MessageTooLarge(self.max_message_bytes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["wsmq-gateway"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).expect("parses")
    }

    #[test]
    fn defaults_are_valid() {
        assert!(parse(&[]).validate().is_ok());
    }

    #[test]
    fn zero_limits_are_refused() {
        assert!(
            parse(&["--max-inflight-per-client", "0"])
                .validate()
                .is_err()
        );
        assert!(parse(&["--max-connections", "0"]).validate().is_err());
    }

    #[test]
    fn timeouts_read_as_human_durations() {
        let c = parse(&["--call-timeout", "1500ms", "--max-call-timeout", "2m"]);
        assert_eq!(c.call_timeout, Duration::from_millis(1500));
        assert_eq!(c.max_call_timeout, Duration::from_secs(120));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn default_timeout_above_the_maximum_is_refused() {
        let c = parse(&["--call-timeout", "5m", "--max-call-timeout", "1m"]);
        assert!(c.validate().is_err());
    }

    #[test]
    fn message_limit_must_fit_an_ipc_frame() {
        let too_big = (wsmq_ipc_proto::MAX_FRAME_LEN).to_string();
        assert!(
            parse(&["--max-message-bytes", &too_big])
                .validate()
                .is_err()
        );
    }
}
