//! What every wsmq daemon does the same way, so the gateway, the bridge and the demo worker
//! behave alike for an operator: one TOML file with a section per program, every key
//! overridable by a `WSMQ_*` variable and by a flag; the same log formats, signals, metrics
//! and systemd notifications.
//!
//! Without features it is only what a library may share (the worker SDK uses it so): the error
//! chain, the reconnect backoff and the order several broker URLs are tried in. Feature `cli`
//! adds the command-line helper (clap), feature `daemon` the rest (configuration, logging,
//! metrics, signals, systemd).

#![forbid(unsafe_code)]

pub mod backoff;
pub mod brokers;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "daemon")]
pub mod config;
pub mod error;
#[cfg(feature = "daemon")]
pub mod logging;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod notify;
#[cfg(feature = "daemon")]
pub mod signals;

pub use backoff::Backoff;
pub use brokers::{AfterFailure, Failover, node_name, split_urls};
#[cfg(feature = "cli")]
pub use cli::{EXIT_USAGE, parse_args};
#[cfg(feature = "daemon")]
pub use config::{
    ConfigArgs, ConfigError, load, mask_url_password, mask_url_passwords, render, startup, url_list,
};
pub use error::{ErrorChain, error_chain};
#[cfg(feature = "daemon")]
pub use logging::LogFormat;
