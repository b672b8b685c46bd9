//! Harness for the end-to-end tests: runs the real wsmq binaries against the real RabbitMQ.
//!
//! A test builds a [`System`] (bridge, demo worker, gateway, each a child process with per-test
//! queue and instance names and a temp-dir socket), talks to it through [`WsClient`] and
//! [`System::healthz`], and ends with [`System::cleanup`], which stops the processes and deletes
//! every queue and exchange the test created. Fault tests count every call with a [`Ledger`]
//! (driven under load by [`drive`]) and stop RabbitMQ through [`rabbitmq`].
//!
//! Every wait is bounded by one of the constants below, so a broken binary fails a test with a
//! message naming what never happened instead of hanging the suite.

#![forbid(unsafe_code)]

use std::time::Duration;

pub mod binaries;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod conformance;
pub mod fake_worker;
pub mod http;
pub mod ledger;
pub mod load;
pub mod metrics;
pub mod process;
pub mod rabbitmq;
pub mod rpc;
pub mod serial;
pub mod system;

pub use client::{Incoming, Refusal, SessionGreeting, WsClient};
pub use fake_worker::{CancelListener, Cancellation, FakeJob, FakeWorker};
pub use ledger::{Ledger, Tally};
pub use load::{LoadSpec, drive};
pub use process::{LogLine, Service};
pub use system::{System, SystemBuilder};

/// The broker the tests use unless `WSMQ_AMQP_URL` names another.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long a process may take to log a line the harness waits for ("broker connected",
/// "gateway listening", "worker ready", ...). Generous: two cores shared by two tests at a time.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `/healthz` may take to reach the state a test waits for.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(15);

/// Pause between two `/healthz` polls while waiting for a state.
pub const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long one HTTP request to the gateway may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a websocket client waits for the next frame it expects.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a process may take to exit after SIGTERM (or SIGKILL) before the harness gives up.
/// Above the gateway's default drain (10 s for calls still in flight, then 2 s to close), so a
/// test that leaves a call unanswered fails on that, not on a slow shutdown.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// How long deleting the test's queues may take. Wide: with the whole suite (and more) on two
/// cores, RabbitMQ was seen to take over 10 s for a handful of deletions (load average 27).
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long building the binaries may take (the first test of a run compiles them).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The broker URL for this run.
pub fn amqp_url() -> String {
    std::env::var("WSMQ_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}
