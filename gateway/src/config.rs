//! The gateway's configuration: defaults, then `[gateway]` of the `--config` TOML file, then
//! `WSMQ_*` environment variables, then flags (see `wsmq_service::config`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use wsmq_service::LogFormat;

/// Websocket front of wsmq: JSON-RPC 2.0 calls in, results back to the client that asked.
///
/// Every setting can also come from `[gateway]` in the --config file or from the environment
/// variable WSMQ_<NAME> (e.g. WSMQ_LISTEN); flags win over the environment, which wins over
/// the file.
#[derive(Debug, Parser)]
#[command(name = "wsmq-gateway", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub file: wsmq_service::ConfigArgs,

    #[command(flatten)]
    pub overrides: Overrides,
}

/// Settings given as flags; each overrides the file and the environment.
#[derive(Debug, Default, clap::Args, Serialize)]
pub struct Overrides {
    /// Address for websockets (`/ws`) and HTTP (`/healthz`, `/readyz`, `/metrics`). Port 0
    /// picks a free one (logged as "gateway listening"). [default: 127.0.0.1:8080]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,

    /// Unix socket of the bridge. [default: /run/wsmq/bridge.sock]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipc: Option<PathBuf>,

    /// Uid the bridge may run as besides the gateway's own and root's: the gateway reads the
    /// bridge's credentials (SO_PEERCRED) on every connection and refuses any other, so a
    /// process that took the socket path cannot receive the jobs. [default: none]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipc_bridge_uid: Option<u32>,

    /// Largest websocket message a client may send, in bytes; a larger one closes the
    /// connection with 1009. [default: 1048576]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<usize>,

    /// Deepest nesting of JSON arrays and objects in one message (a batch's array is one
    /// level); deeper gets -32010. [default: 32]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_json_depth: Option<usize>,

    /// Most calls in one batch; a longer batch gets one -32011. [default: 1000]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_len: Option<usize>,

    /// Largest `params` of one call, in bytes of JSON; larger gets -32012. [default: 1048576]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_params_bytes: Option<usize>,

    /// Calls one connection may have in flight; past it, calls get -32003. [default: 256]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight_per_client: Option<usize>,

    /// Calls the whole gateway may have in flight; past it, calls get -32003. [default: 65536]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<usize>,

    /// Deadline of a call that names none in `wsmq.timeout_ms` (e.g. 30s, 500ms, 2m). When it
    /// passes the call gets -32001 and the workers are told to stop. [default: 30s]
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub call_timeout: Option<Duration>,

    /// Longest deadline a call may ask for; longer requests are cut to it. [default: 10m]
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub max_call_timeout: Option<Duration>,

    /// Calls held while the bridge or RabbitMQ is away (sent when it is back, or answered
    /// -32000 at their deadline); past it, new calls get -32000 at once. [default: 1024]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_held_calls: Option<usize>,

    /// Seconds a client may take to reconnect to `/ws?session=<token>` and get the results of
    /// its calls; 0 turns sessions off (a call's result is lost with its connection).
    /// [default: 30]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_resume_secs: Option<u64>,

    /// Bytes of results one session keeps while no connection serves it; past it, its further
    /// results are dropped (counted). [default: 8388608]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_session_bytes: Option<usize>,

    /// Bytes of results all sessions keep at once while no connection serves them; past it,
    /// the oldest such session is forgotten with its results (counted). [default: 268435456]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_kept_bytes: Option<usize>,

    /// Sessions one client address may leave behind without a connection (kept for a
    /// resume); past it, that address's oldest such session is forgotten with its results
    /// (counted). [default: 64]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_ip: Option<usize>,

    /// Sessions one authenticated identity may leave behind without a connection, from any
    /// address; past it, its oldest such session is forgotten with its results (counted).
    /// [default: 256]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_identity: Option<usize>,

    /// Websocket connections at once; past it, upgrades get HTTP 503. [default: 10000]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,

    /// Seconds to keep answering calls in flight after SIGTERM before closing sockets with
    /// 1001. [default: 10]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<u64>,

    /// Largest websocket frame a client may send, in bytes (a message may come in several);
    /// a larger one closes the connection with 1009. At most max_message_bytes.
    /// [default: max_message_bytes]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<usize>,

    /// Websocket connections at once from one source IP address; past it, upgrades get HTTP
    /// 429. [default: 256]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,

    /// Calls per second one connection may make on average (a token bucket); past it, calls
    /// get -32005. 0 turns the limit off. [default: 1000]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_rate: Option<u32>,

    /// Calls one connection may make at once above --call-rate (the bucket's size).
    /// [default: 2000]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_burst: Option<u32>,

    /// Time a new TCP connection has to finish its TLS handshake and send the HTTP request
    /// (e.g. the websocket upgrade); a slower one is closed. [default: 10s]
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub handshake_timeout: Option<Duration>,

    /// How often the gateway pings a websocket client; a client that sends nothing (not even
    /// the pong) for this long after a ping is dropped. 0s turns pings off. [default: 30s]
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub ping_interval: Option<Duration>,

    /// A connection that sends no message and has no call in flight for this long is closed
    /// with 4000. 0s turns it off. [default: 5m]
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub idle_timeout: Option<Duration>,

    /// Longest a client's socket may take nothing while responses wait to be written; then the
    /// client counts as not reading and is closed (1008, best effort). [default: 10s]
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub write_timeout: Option<Duration>,

    /// Tokens file: `identity:token` per line, optionally `:pattern,pattern` (the methods
    /// that identity may call, e.g. `report.*`); `#` starts a comment. Reloaded on SIGHUP.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<PathBuf>,

    /// File holding the HS256 secret (at least 32 bytes) that signs client JWTs.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key that verifies client JWTs: RSA (RS256) or P-256 (ES256).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_key: Option<PathBuf>,

    /// The `aud` a client JWT must carry; without it, `aud` is not checked.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,

    /// Let anyone in without a token, even on a non-loopback --listen address (logged as a
    /// warning at startup).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_no_auth: bool,

    /// An Origin browsers may connect from besides the gateway's own, e.g.
    /// https://app.example.com (repeat the flag for more); other Origins get HTTP 403.
    /// Requests without an Origin (non-browsers) pass. Without the flag only the gateway's own
    /// origin passes (the page at `/`); '*' lets every Origin in (logged as a warning).
    #[arg(long = "allowed-origin", value_name = "URL")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,

    /// PEM certificate chain: serve wss:// and https:// (with --tls-key).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// Serve /healthz, /readyz and /metrics on this address instead of --listen (which then
    /// serves /ws only).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,

    /// Log format: plain reads well in journald, json suits log pipelines. [default: plain]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// The effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub ipc: PathBuf,
    /// None: the gateway's own uid and root only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipc_bridge_uid: Option<u32>,
    pub max_message_bytes: usize,
    pub max_json_depth: usize,
    pub max_batch_len: usize,
    pub max_params_bytes: usize,
    pub max_inflight_per_client: usize,
    pub max_inflight: usize,
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_call_timeout: Duration,
    pub max_held_calls: usize,
    /// Seconds; 0: off.
    pub session_resume_secs: u64,
    pub max_session_bytes: usize,
    pub max_kept_bytes: usize,
    pub max_sessions_per_ip: usize,
    pub max_sessions_per_identity: usize,
    pub max_connections: usize,
    /// Seconds.
    pub drain_timeout: u64,
    pub log_format: LogFormat,
    /// 0: the same as `max_message_bytes`.
    pub max_frame_bytes: usize,
    pub max_connections_per_ip: usize,
    /// Calls per second; 0: off.
    pub call_rate: u32,
    pub call_burst: u32,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Zero: off.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Zero: off.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    pub tokens: Option<PathBuf>,
    pub jwt_secret_file: Option<PathBuf>,
    pub jwt_public_key: Option<PathBuf>,
    pub jwt_audience: Option<String>,
    pub insecure_no_auth: bool,
    pub allowed_origins: Vec<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub admin_listen: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ipc: PathBuf::from("/run/wsmq/bridge.sock"),
            ipc_bridge_uid: None,
            max_message_bytes: 1024 * 1024,
            max_json_depth: 32,
            max_batch_len: 1000,
            max_params_bytes: 1024 * 1024,
            max_inflight_per_client: 256,
            max_inflight: 65_536,
            call_timeout: Duration::from_secs(30),
            max_call_timeout: Duration::from_secs(600),
            max_held_calls: 1024,
            session_resume_secs: 30,
            max_session_bytes: 8 * 1024 * 1024,
            max_kept_bytes: 256 * 1024 * 1024,
            max_sessions_per_ip: 64,
            max_sessions_per_identity: 256,
            max_connections: 10_000,
            drain_timeout: 10,
            log_format: LogFormat::Plain,
            max_frame_bytes: 0,
            max_connections_per_ip: 256,
            call_rate: 1000,
            call_burst: 2000,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(10),
            tokens: None,
            jwt_secret_file: None,
            jwt_public_key: None,
            jwt_audience: None,
            insecure_no_auth: false,
            allowed_origins: Vec::new(),
            tls_cert: None,
            tls_key: None,
            admin_listen: None,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] wsmq_service::ConfigError),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("max_json_depth {0} is too small: a request with params needs 2 levels")]
    DepthTooSmall(usize),
    #[error("call_timeout must be at least 1ms and at most max_call_timeout")]
    CallTimeout,
    #[error("max_message_bytes {0} is above the IPC frame limit of {max} bytes", max = wsmq_ipc_proto::MAX_FRAME_LEN / 2)]
    MessageTooLarge(usize),
    #[error("max_frame_bytes {0} is above max_message_bytes {1}")]
    FrameTooLarge(usize, usize),
    #[error("handshake_timeout must be at least 1ms")]
    HandshakeTimeout,
    #[error("write_timeout must be at least 1ms")]
    WriteTimeout,
    #[error(
        "listen address {0} is not loopback and no authentication is configured: give --tokens, \
         --jwt-secret-file or --jwt-public-key (or --insecure-no-auth to let anyone in)"
    )]
    PublicWithoutAuth(SocketAddr),
    #[error("jwt_secret_file and jwt_public_key exclude each other")]
    TwoJwtKeys,
    #[error("tls_cert and tls_key go together")]
    HalfTls,
    #[error("allowed origin {0:?} is not scheme://host[:port]")]
    BadOrigin(String),
    /// A tokens file, JWT key or TLS file that cannot be used.
    #[error("{0}")]
    Security(String),
    #[error("TLS: {0}")]
    Tls(String),
}

impl Cli {
    /// Assembles and checks the configuration, before anything is bound.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let config: Config =
            wsmq_service::load("gateway", self.file.config.as_deref(), &self.overrides)?;
        config.validate()?;
        // Read every key, certificate and tokens file now, so a bad one exits 64 before
        // anything is bound (they are read again when the gateway starts).
        crate::auth::Authenticator::load(&config.auth())
            .map_err(|e| ConfigError::Security(wsmq_service::error_chain(&e)))?;
        crate::tls::acceptor(&config).map_err(|e| ConfigError::Tls(format!("{e:#}")))?;
        Ok(config)
    }
}

impl Config {
    /// Checks what types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("max_message_bytes", self.max_message_bytes),
            ("max_json_depth", self.max_json_depth),
            ("max_batch_len", self.max_batch_len),
            ("max_params_bytes", self.max_params_bytes),
            ("max_inflight_per_client", self.max_inflight_per_client),
            ("max_inflight", self.max_inflight),
            ("max_connections", self.max_connections),
            ("max_session_bytes", self.max_session_bytes),
            ("max_kept_bytes", self.max_kept_bytes),
            ("max_sessions_per_ip", self.max_sessions_per_ip),
            ("max_sessions_per_identity", self.max_sessions_per_identity),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.max_frame_bytes > self.max_message_bytes {
            return Err(ConfigError::FrameTooLarge(
                self.max_frame_bytes,
                self.max_message_bytes,
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::HandshakeTimeout);
        }
        if self.write_timeout.is_zero() {
            return Err(ConfigError::WriteTimeout);
        }
        if self.jwt_secret_file.is_some() && self.jwt_public_key.is_some() {
            return Err(ConfigError::TwoJwtKeys);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::HalfTls);
        }
        if !self.listen.ip().is_loopback() && !self.auth().enabled() && !self.insecure_no_auth {
            return Err(ConfigError::PublicWithoutAuth(self.listen));
        }
        for origin in &self.allowed_origins {
            if origin.trim() != crate::http::ANY_ORIGIN
                && crate::http::normalize_origin(origin).is_none()
            {
                return Err(ConfigError::BadOrigin(origin.clone()));
            }
        }
        // A request object is one level; its params need at least one more.
        if self.max_json_depth < 2 {
            return Err(ConfigError::DepthTooSmall(self.max_json_depth));
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

    /// The authentication settings.
    pub(crate) fn auth(&self) -> crate::auth::AuthConfig {
        crate::auth::AuthConfig {
            tokens: self.tokens.clone(),
            jwt_secret_file: self.jwt_secret_file.clone(),
            jwt_public_key: self.jwt_public_key.clone(),
            jwt_audience: self.jwt_audience.clone(),
        }
    }

    /// The largest frame a client may send.
    pub(crate) fn frame_limit(&self) -> usize {
        if self.max_frame_bytes == 0 {
            self.max_message_bytes
        } else {
            self.max_frame_bytes
        }
    }

    /// The configuration as a `[gateway]` TOML section (secrets live in files it only names).
    pub fn render(&self) -> Result<String, wsmq_service::ConfigError> {
        wsmq_service::render("gateway", self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["wsmq-gateway"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("parses").config()
    }

    #[test]
    fn defaults_are_valid() {
        let c = config(&[]).expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.call_timeout, Duration::from_secs(30));
    }

    #[test]
    fn zero_limits_are_refused() {
        assert!(config(&["--max-inflight-per-client", "0"]).is_err());
        assert!(config(&["--max-connections", "0"]).is_err());
    }

    #[test]
    fn timeouts_read_as_human_durations() {
        let c = config(&["--call-timeout", "1500ms", "--max-call-timeout", "2m"]).expect("valid");
        assert_eq!(c.call_timeout, Duration::from_millis(1500));
        assert_eq!(c.max_call_timeout, Duration::from_secs(120));
    }

    #[test]
    fn default_timeout_above_the_maximum_is_refused() {
        assert!(config(&["--call-timeout", "5m", "--max-call-timeout", "1m"]).is_err());
    }

    #[test]
    fn parser_limits_have_defaults_and_flags() {
        let c = config(&[]).expect("valid");
        assert_eq!(
            (c.max_json_depth, c.max_batch_len, c.max_params_bytes),
            (32, 1000, 1024 * 1024)
        );
        let c = config(&[
            "--max-json-depth",
            "8",
            "--max-batch-len",
            "10",
            "--max-params-bytes",
            "4096",
        ])
        .expect("valid");
        assert_eq!(
            (c.max_json_depth, c.max_batch_len, c.max_params_bytes),
            (8, 10, 4096)
        );
        assert!(config(&["--max-batch-len", "0"]).is_err());
        assert!(config(&["--max-json-depth", "1"]).is_err());
    }

    #[test]
    fn message_limit_must_fit_an_ipc_frame() {
        let too_big = wsmq_ipc_proto::MAX_FRAME_LEN.to_string();
        assert!(config(&["--max-message-bytes", &too_big]).is_err());
    }

    #[test]
    fn printed_config_is_a_gateway_section_that_loads_back() {
        let c = config(&[
            "--listen",
            "0.0.0.0:9000",
            "--insecure-no-auth",
            "--call-timeout",
            "3s",
        ])
        .expect("valid");
        let text = c.render().expect("renders");
        assert!(text.starts_with("[gateway]"), "{text}");
        assert!(text.contains("call_timeout = \"3s\""), "{text}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wsmq.toml");
        std::fs::write(&path, &text).expect("write");
        let back = config(&["--config", path.to_str().expect("utf-8 path")]).expect("valid");
        assert_eq!(back.listen, c.listen);
        assert_eq!(back.call_timeout, c.call_timeout);
    }

    #[test]
    fn public_listen_without_auth_is_refused_unless_insecure() {
        let err = config(&["--listen", "0.0.0.0:8080"]).expect_err("refused");
        assert!(matches!(err, ConfigError::PublicWithoutAuth(_)), "{err}");
        config(&["--listen", "0.0.0.0:8080", "--insecure-no-auth"]).expect("allowed");
        config(&["--listen", "[::1]:8080"]).expect("loopback needs no auth");
    }

    #[test]
    fn frame_limit_defaults_to_the_message_limit_and_may_not_exceed_it() {
        let c = config(&["--max-message-bytes", "4096"]).expect("valid");
        assert_eq!(c.frame_limit(), 4096);
        assert!(config(&["--max-message-bytes", "4096", "--max-frame-bytes", "8192"]).is_err());
    }

    #[test]
    fn half_a_tls_setup_is_refused() {
        assert!(matches!(
            config(&["--tls-cert", "/nonexistent/cert.pem"]),
            Err(ConfigError::HalfTls)
        ));
    }

    #[test]
    fn origins_must_be_scheme_and_host() {
        config(&["--allowed-origin", "https://app.example.com"]).expect("valid");
        assert!(config(&["--allowed-origin", "app.example.com"]).is_err());
    }

    #[test]
    fn unknown_key_in_the_file_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wsmq.toml");
        std::fs::write(&path, "[gateway]\nmax_inflite = 3\n").expect("write");
        let err = config(&["--config", path.to_str().expect("utf-8 path")]).expect_err("refused");
        assert!(err.to_string().contains("max_inflite"), "{err}");
    }
}
