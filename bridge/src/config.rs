//! Command-line configuration of the bridge (every flag also readable from a `WSMQ_*` variable).

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// RabbitMQ side of wsmq: publishes the gateway's jobs and hands it the workers' replies.
#[derive(Debug, Clone, Parser)]
#[command(name = "wsmq-bridge", version, about)]
pub struct Config {
    /// Unix socket the gateway connects to.
    #[arg(long, env = "WSMQ_IPC", default_value = "/run/wsmq/bridge.sock")]
    pub ipc: PathBuf,

    /// RabbitMQ URL. (Its environment value is hidden from --help: it holds the password.)
    #[arg(
        long,
        env = "WSMQ_AMQP",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp: String,

    /// Stable name of this bridge; its durable reply queue is `wsmq.reply.<instance>`.
    /// Defaults to the host name. Two bridges on one broker must not share it.
    #[arg(long, env = "WSMQ_INSTANCE")]
    pub instance: Option<String>,

    /// Prefix put before the method name to form the routing key (and so the queue name).
    #[arg(long, env = "WSMQ_QUEUE_PREFIX", default_value = "")]
    pub queue_prefix: String,

    /// Replies RabbitMQ may hand the bridge before it has acknowledged them.
    #[arg(long, env = "WSMQ_PREFETCH", default_value_t = 256)]
    pub prefetch: u16,

    /// Channels to publish on. Each carries one job awaiting its confirm at a time, so this
    /// caps the publishes in flight to RabbitMQ.
    #[arg(long, env = "WSMQ_PUBLISH_CHANNELS", default_value_t = 32)]
    pub publish_channels: usize,

    /// Jobs taken from the gateway and not yet confirmed by RabbitMQ (waiting for a channel or
    /// for their confirm), at most; past it the bridge stops reading from the gateway, which
    /// then answers new calls -32000.
    #[arg(long, env = "WSMQ_MAX_UNCONFIRMED", default_value_t = 1024)]
    pub max_unconfirmed: usize,

    /// Seconds to wait for publishes in flight on shutdown.
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
    #[error("--instance {0:?}: use letters, digits, '.', '-' or '_' (at most 200)")]
    BadInstance(String),
    #[error("--queue-prefix is {0} bytes; at most 200")]
    PrefixTooLong(usize),
    #[error("--prefetch must be at least 1")]
    ZeroPrefetch,
    #[error("--publish-channels must be between 1 and 1000")]
    PublishChannels,
    #[error("--max-unconfirmed must be at least 1")]
    ZeroUnconfirmed,
    #[error("cannot read the host name for the default --instance")]
    Hostname(#[source] nix::Error),
}

impl Config {
    /// Checks what clap cannot; run before anything is bound or connected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let instance = self.instance()?;
        let ok = !instance.is_empty()
            && instance.len() <= 200
            && instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(ConfigError::BadInstance(instance));
        }
        if self.queue_prefix.len() > 200 {
            return Err(ConfigError::PrefixTooLong(self.queue_prefix.len()));
        }
        if self.prefetch == 0 {
            return Err(ConfigError::ZeroPrefetch);
        }
        if !(1..=1000).contains(&self.publish_channels) {
            return Err(ConfigError::PublishChannels);
        }
        if self.max_unconfirmed == 0 {
            return Err(ConfigError::ZeroUnconfirmed);
        }
        Ok(())
    }

    /// The instance name: `--instance`, else the host name.
    pub fn instance(&self) -> Result<String, ConfigError> {
        match &self.instance {
            Some(name) => Ok(name.clone()),
            None => nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .map_err(ConfigError::Hostname),
        }
    }

    /// The durable queue the workers' replies arrive on.
    pub fn reply_queue(&self) -> Result<String, ConfigError> {
        Ok(format!("wsmq.reply.{}", self.instance()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["wsmq-bridge"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).expect("parses")
    }

    #[test]
    fn reply_queue_is_named_after_the_instance() {
        let c = parse(&["--instance", "web-1"]);
        assert_eq!(c.reply_queue().expect("named"), "wsmq.reply.web-1");
    }

    #[test]
    fn instance_names_that_would_make_odd_queue_names_are_refused() {
        for bad in ["", "a b", "x/y", "é"] {
            let c = parse(&["--instance", bad]);
            assert!(c.validate().is_err(), "{bad:?} accepted");
        }
        assert!(parse(&["--instance", "ok.name_1-2"]).validate().is_ok());
    }

    #[test]
    fn zero_prefetch_is_refused() {
        assert!(
            parse(&["--instance", "a", "--prefetch", "0"])
                .validate()
                .is_err()
        );
    }
}
