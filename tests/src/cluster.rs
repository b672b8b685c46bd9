//! The 3-node RabbitMQ cluster of `scripts/cluster` (nodes `wsmq-c1@localhost` ... on ports
//! 5681-5683, beside the default broker), for the `serial_cluster_*` tests and the soak
//! runner's `--cluster` chaos.
//!
//! Booting three nodes takes most of a minute on two cores, so the tests share one cluster:
//! each calls [`up`] (which starts only what is not running, and so is quick after the first)
//! and leaves every node running when it ends; `scripts/test` runs `scripts/cluster down` after
//! the serial pass.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::binaries::workspace_root;

/// The cluster's nodes, numbered 1 to `NODES`.
pub const NODES: usize = 3;

/// How long `scripts/cluster up` may take: three nodes booting, then two joining.
pub const UP_TIMEOUT: Duration = Duration::from_secs(300);

/// How long any other `scripts/cluster` command may take (`start` boots one node).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(150);

/// The AMQP URL of node `n` (1-3).
pub fn url(n: usize) -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", 5680 + n)
}

/// The URLs of `nodes`, in that order: a bridge's or a worker's `--amqp` list.
pub fn urls(nodes: &[usize]) -> Vec<String> {
    nodes.iter().map(|&n| url(n)).collect()
}

/// `host:port` of node `n`, as the bridge's logs and `/readyz` name it.
pub fn address(n: usize) -> String {
    format!("127.0.0.1:{}", 5680 + n)
}

/// The Erlang name of node `n`.
pub fn node_name(n: usize) -> String {
    format!("wsmq-c{n}@localhost")
}

/// Runs `scripts/cluster args...` within `limit`; returns its stdout.
pub async fn script(args: &[&str], limit: Duration) -> Result<String> {
    let path = workspace_root().join("scripts/cluster");
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("scripts/cluster {}", args.join(" "));
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("`{what}` took over {limit:?}"))?
        .with_context(|| format!("cannot run `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts whatever of the cluster is not running (all of it, the first time).
pub async fn up() -> Result<()> {
    script(&["up"], UP_TIMEOUT).await.map(drop)
}

/// SIGKILL to node `n`; returns once it is gone.
pub async fn kill(n: usize) -> Result<()> {
    script(&["kill", &n.to_string()], COMMAND_TIMEOUT)
        .await
        .map(drop)
}

/// Starts node `n` again and waits until it has booted (it rejoins the cluster by itself).
pub async fn start(n: usize) -> Result<()> {
    script(&["start", &n.to_string()], COMMAND_TIMEOUT)
        .await
        .map(drop)
}

/// The node (1-3) leading quorum queue `queue`, asking node `via`.
pub async fn leader(queue: &str, via: usize) -> Result<usize> {
    let out = script(
        &[
            "ctl",
            &via.to_string(),
            "list_queues",
            "--no-table-headers",
            "name",
            "leader",
        ],
        COMMAND_TIMEOUT,
    )
    .await?;
    let leader = out
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .map(|(_, leader)| leader.trim().to_owned())
        .with_context(|| format!("node {via} does not list the queue {queue}"))?;
    (1..=NODES)
        .find(|&n| node_name(n) == leader)
        .with_context(|| format!("{queue} is led by {leader:?}, not a cluster node"))
}

/// Every node (1-3) but `n`.
pub fn others(n: usize) -> Vec<usize> {
    (1..=NODES).filter(|&m| m != n).collect()
}
