//! The bridge's configuration: defaults, then `[bridge]` of the `--config` TOML file, then
//! `WSMQ_*` environment variables, then flags (see `wsmq_service::config`).

use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};
use wsmq_service::LogFormat;

/// RabbitMQ side of wsmq: publishes the gateway's jobs and hands it the workers' replies.
///
/// Every setting can also come from `[bridge]` in the --config file or from the environment
/// variable WSMQ_<NAME> (e.g. WSMQ_AMQP); flags win over the environment, which wins over the
/// file.
#[derive(Debug, Parser)]
#[command(name = "wsmq-bridge", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub file: wsmq_service::ConfigArgs,

    #[command(flatten)]
    pub overrides: Overrides,
}

/// Settings given as flags; each overrides the file and the environment.
#[derive(Debug, Default, clap::Args, Serialize)]
pub struct Overrides {
    /// Unix socket the gateway connects to. [default: /run/wsmq/bridge.sock]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipc: Option<PathBuf>,

    /// Group (name or number) allowed to use the socket besides the bridge's own user: the
    /// socket becomes 0660 owned by it, and peers with that effective gid are let in. Use it
    /// when the gateway runs as another user; set that user's primary group (systemd `Group=`)
    /// to it, since the kernel reports only the primary gid. [default: none]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipc_group: Option<String>,

    /// RabbitMQ URL; repeat it (or separate URLs with commas) for the nodes of a cluster. The
    /// bridge connects to the first that answers, in this order, and on losing it goes to the
    /// next. [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub amqp: Vec<String>,

    /// Type of the reply queue `wsmq.reply.<instance>` and of the dead-letter queue
    /// `<prefix>wsmq.dead`. quorum: replicated over a RabbitMQ cluster's nodes, so losing one
    /// loses no reply. A queue keeps its type: changing it means deleting the queue once.
    /// [default: classic]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_queue_type: Option<ReplyQueueType>,

    /// Stable name of this bridge; its durable reply queue is `wsmq.reply.<instance>`. Two
    /// bridges on one broker must not share it. [default: the host name]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,

    /// Prefix put before the method name to form the routing key (and so the queue name),
    /// and before `wsmq.cancel` for the cancellation exchange. [default: none]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_prefix: Option<String>,

    /// Replies RabbitMQ may hand the bridge before it has acknowledged them. [default: 256]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u16>,

    /// Confirm-mode channels to publish on, in turn. Each carries many jobs awaiting their
    /// confirms (`--max-unconfirmed` bounds them all). [default: 2]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_channels: Option<usize>,

    /// Jobs taken from the gateway and not yet confirmed by RabbitMQ (waiting for a channel or
    /// for their confirm), at most; past it the bridge stops reading from the gateway, which
    /// then answers new calls -32000. [default: 1024]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unconfirmed: Option<usize>,

    /// Address to serve `/metrics` (Prometheus) and `/healthz` on, e.g. 127.0.0.1:9464; empty
    /// turns it off. [default: off]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,

    /// Seconds to wait for publishes in flight on shutdown. [default: 10]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<u64>,

    /// Log format: plain reads well in journald, json suits log pipelines. [default: plain]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// The effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub ipc: PathBuf,
    /// Empty: only the bridge's user (and root).
    pub ipc_group: String,
    /// The nodes to connect to, in order (at least one).
    #[serde(deserialize_with = "wsmq_service::url_list::deserialize")]
    pub amqp: Vec<String>,
    pub reply_queue_type: ReplyQueueType,
    /// Empty: the host name.
    pub instance: String,
    pub queue_prefix: String,
    pub prefetch: u16,
    pub publish_channels: usize,
    pub max_unconfirmed: usize,
    /// `host:port` for `/metrics`; empty for none.
    pub metrics_listen: String,
    /// Seconds.
    pub drain_timeout: u64,
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ipc: PathBuf::from("/run/wsmq/bridge.sock"),
            ipc_group: String::new(),
            amqp: vec!["amqp://guest:guest@127.0.0.1:5672/%2f".into()],
            reply_queue_type: ReplyQueueType::Classic,
            instance: String::new(),
            queue_prefix: String::new(),
            prefetch: 256,
            publish_channels: 2,
            max_unconfirmed: 1024,
            metrics_listen: String::new(),
            drain_timeout: 10,
            log_format: LogFormat::Plain,
        }
    }
}

/// `--reply-queue-type`: what the bridge declares its own queues as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReplyQueueType {
    /// A durable classic queue: on one node, which a cluster must not lose.
    Classic,
    /// A durable quorum queue, replicated over the cluster.
    Quorum,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] wsmq_service::ConfigError),
    #[error("instance {0:?}: use letters, digits, '.', '-' or '_' (at most 200)")]
    BadInstance(String),
    #[error("queue_prefix is {0} bytes; at most 200")]
    PrefixTooLong(usize),
    #[error(
        "queue_prefix {0:?} starts with a reserved name (wsmq. or amq.): every job would be refused"
    )]
    ReservedPrefix(String),
    #[error("amqp: no broker URL given")]
    NoBroker,
    #[error("prefetch must be at least 1")]
    ZeroPrefetch,
    #[error("publish_channels must be between 1 and 1000")]
    PublishChannels,
    #[error("max_unconfirmed must be at least 1")]
    ZeroUnconfirmed,
    #[error("metrics_listen {0:?} is not an address like 127.0.0.1:9464")]
    MetricsListen(String),
    #[error("ipc_group {0:?} is not a group on this host")]
    UnknownGroup(String),
    #[error("cannot read the host name for the default instance")]
    Hostname(#[source] nix::Error),
}

impl Cli {
    /// Assembles and checks the configuration, before anything is bound or connected. An
    /// empty instance becomes the host name.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut config: Config =
            wsmq_service::load("bridge", self.file.config.as_deref(), &self.overrides)?;
        if config.instance.is_empty() {
            config.instance = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .map_err(ConfigError::Hostname)?;
        }
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Checks what types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let instance = &self.instance;
        let ok = !instance.is_empty()
            && instance.len() <= 200
            && instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(ConfigError::BadInstance(instance.clone()));
        }
        if self.queue_prefix.len() > 200 {
            return Err(ConfigError::PrefixTooLong(self.queue_prefix.len()));
        }
        if wsmq_ipc_proto::is_reserved_method(&self.queue_prefix) {
            return Err(ConfigError::ReservedPrefix(self.queue_prefix.clone()));
        }
        if self.amqp.is_empty() {
            return Err(ConfigError::NoBroker);
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
        self.metrics_addr()?;
        self.ipc_gid()?;
        Ok(())
    }

    /// The gid `ipc_group` names (a number is taken as is), or `None` when it is empty.
    pub fn ipc_gid(&self) -> Result<Option<u32>, ConfigError> {
        let name = self.ipc_group.trim();
        if name.is_empty() {
            return Ok(None);
        }
        if let Ok(gid) = name.parse::<u32>() {
            return Ok(Some(gid));
        }
        match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Ok(Some(group.gid.as_raw())),
            _ => Err(ConfigError::UnknownGroup(name.to_owned())),
        }
    }

    /// Where to serve metrics, if anywhere.
    pub fn metrics_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        if self.metrics_listen.is_empty() {
            return Ok(None);
        }
        self.metrics_listen
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::MetricsListen(self.metrics_listen.clone()))
    }

    /// The durable queue the workers' replies arrive on.
    pub fn reply_queue(&self) -> String {
        wsmq_amqp_proto::reply_queue_name(&self.instance)
    }

    /// The configuration as a `[bridge]` TOML section, with the broker password masked.
    pub fn render(&self) -> Result<String, wsmq_service::ConfigError> {
        let masked = Config {
            amqp: wsmq_service::mask_url_passwords(&self.amqp),
            ..self.clone()
        };
        wsmq_service::render("bridge", &masked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipc_group_is_a_name_or_a_number_and_unknown_names_are_refused() {
        let mut c = Config {
            instance: "t".into(),
            ..Config::default()
        };
        assert_eq!(c.ipc_gid().expect("empty is fine"), None);
        c.ipc_group = "4242".into();
        assert_eq!(c.ipc_gid().expect("numeric"), Some(4242));
        c.ipc_group = "root".into();
        assert_eq!(c.ipc_gid().expect("root exists"), Some(0));
        c.ipc_group = "no-such-group-wsmq".into();
        assert!(c.validate().is_err());
    }

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["wsmq-bridge"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("parses").config()
    }

    #[test]
    fn reply_queue_is_named_after_the_instance() {
        let c = config(&["--instance", "web-1"]).expect("valid");
        assert_eq!(c.reply_queue(), "wsmq.reply.web-1");
    }

    #[test]
    fn instance_defaults_to_the_host_name() {
        let c = config(&[]).expect("valid");
        assert!(!c.instance.is_empty());
    }

    #[test]
    fn instance_names_that_would_make_odd_queue_names_are_refused() {
        for bad in ["a b", "x/y", "é"] {
            assert!(config(&["--instance", bad]).is_err(), "{bad:?} accepted");
        }
        assert!(config(&["--instance", "ok.name_1-2"]).is_ok());
    }

    #[test]
    fn metrics_listener_is_off_by_default_and_checked_when_set() {
        assert_eq!(
            config(&["--instance", "a"])
                .expect("valid")
                .metrics_addr()
                .ok(),
            Some(None)
        );
        let c = config(&["--instance", "a", "--metrics-listen", "127.0.0.1:9464"]).expect("valid");
        assert!(matches!(c.metrics_addr(), Ok(Some(_))));
        assert!(config(&["--instance", "a", "--metrics-listen", "nope"]).is_err());
    }

    #[test]
    fn amqp_repeats_and_splits_on_commas_into_the_broker_list() {
        let c = config(&[
            "--instance",
            "a",
            "--amqp",
            "amqp://h1:5681/%2f,amqp://h2:5682/%2f",
            "--amqp",
            "amqp://h3:5683/%2f",
        ])
        .expect("valid");
        assert_eq!(
            c.amqp,
            [
                "amqp://h1:5681/%2f",
                "amqp://h2:5682/%2f",
                "amqp://h3:5683/%2f"
            ]
        );
        let one = config(&["--instance", "a"]).expect("valid");
        assert_eq!(one.amqp, ["amqp://guest:guest@127.0.0.1:5672/%2f"]);
        assert!(matches!(
            config(&["--instance", "a", "--amqp", " , "]),
            Err(ConfigError::NoBroker)
        ));
    }

    #[test]
    fn reply_queue_type_is_classic_unless_asked() {
        let c = config(&["--instance", "a"]).expect("valid");
        assert_eq!(c.reply_queue_type, ReplyQueueType::Classic);
        let c = config(&["--instance", "a", "--reply-queue-type", "quorum"]).expect("valid");
        assert_eq!(c.reply_queue_type, ReplyQueueType::Quorum);
        assert!(Cli::try_parse_from(["wsmq-bridge", "--reply-queue-type", "stream"]).is_err());
    }

    #[test]
    fn zero_prefetch_is_refused() {
        assert!(config(&["--instance", "a", "--prefetch", "0"]).is_err());
    }

    #[test]
    fn printed_config_masks_the_broker_password() {
        let c =
            config(&["--instance", "a", "--amqp", "amqp://u:hunter2@mq:5672/%2f"]).expect("valid");
        let text = c.render().expect("renders");
        assert!(text.starts_with("[bridge]"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("amqp://u:***@mq:5672/%2f"), "{text}");
        let two = config(&[
            "--instance",
            "a",
            "--amqp",
            "amqp://u:hunter2@mq1/%2f,amqp://u:hunter3@mq2/%2f",
        ])
        .expect("valid");
        let text = two.render().expect("renders");
        assert!(!text.contains("hunter"), "{text}");
        assert!(
            text.contains(r#"amqp = ["amqp://u:***@mq1/%2f", "amqp://u:***@mq2/%2f"]"#),
            "{text}"
        );
    }
}
