//! Controlling the local RabbitMQ node with `rabbitmqctl`: stopping and starting the broker
//! application, and reading a queue's unacknowledged count (which AMQP itself does not tell).
//!
//! RabbitMQ is shared by every test of a run, so only a test that runs alone (named
//! `serial_...`, see `scripts/test`) or the soak runner may stop it. [`BrokerOutage`] makes
//! sure it comes back even when the test fails: dropping it starts the application again.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// How long one `rabbitmqctl` command may take (`stop_app` waits for the node to close its
/// connections; `start_app` for it to boot).
pub const RABBITMQCTL_TIMEOUT: Duration = Duration::from_secs(60);

/// The `rabbitmqctl` to run: `WSMQ_RABBITMQCTL` if set, else the one on `PATH`.
fn rabbitmqctl_program() -> String {
    std::env::var("WSMQ_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned())
}

/// Runs `rabbitmqctl args...` within [`RABBITMQCTL_TIMEOUT`]; returns its stdout.
pub async fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let program = rabbitmqctl_program();
    let mut cmd = Command::new(&program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(RABBITMQCTL_TIMEOUT, cmd.output())
        .await
        .with_context(|| {
            format!(
                "`{program} {}` took over {RABBITMQCTL_TIMEOUT:?}",
                args.join(" ")
            )
        })?
        .with_context(|| format!("cannot run `{program}` (is RabbitMQ installed here?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `(ready, unacknowledged)` messages of `queue` in the default vhost.
pub async fn queue_counts(queue: &str) -> Result<(u64, u64)> {
    let out = rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ])
    .await?;
    for line in out.lines() {
        let mut cols = line.split('\t');
        if cols.next() != Some(queue) {
            continue;
        }
        let mut number = |what: &str| -> Result<u64> {
            cols.next()
                .and_then(|n| n.trim().parse().ok())
                .with_context(|| format!("no {what} count for {queue} in {line:?}"))
        };
        return Ok((number("ready")?, number("unacknowledged")?));
    }
    bail!("rabbitmqctl does not list the queue {queue}")
}

/// Closes every AMQP connection whose client gave it the name `name` (`rabbitmqctl
/// close_connection`), the way a broker or network failure ends one connection: RabbitMQ and
/// every other connection stay up, so any test may do it. Returns how many were closed.
pub async fn close_connections_named(name: &str, reason: &str) -> Result<usize> {
    let out = rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .await?;
    // client_properties is printed as an Erlang term: `{"connection_name","<name>"}`.
    let wanted = format!("{{\"connection_name\",\"{name}\"}}");
    let mut closed = 0;
    for line in out.lines() {
        let Some((pid, properties)) = line.split_once('\t') else {
            continue;
        };
        if properties.contains(&wanted) {
            eprintln!("[harness] rabbitmqctl close_connection {pid} ({name})");
            rabbitmqctl(&["close_connection", pid.trim(), reason]).await?;
            closed += 1;
        }
    }
    Ok(closed)
}

/// The broker application stopped by a test; started again by [`Self::end`] or on drop.
#[derive(Debug)]
pub struct BrokerOutage {
    ended: bool,
}

impl BrokerOutage {
    /// `rabbitmqctl stop_app`: every AMQP connection is closed and no new one is accepted until
    /// the outage ends. Durable queues and their persistent messages stay.
    pub async fn begin() -> Result<Self> {
        // Armed before the command: a stop that half happened must still be undone.
        let outage = Self { ended: false };
        eprintln!("[harness] rabbitmqctl stop_app");
        rabbitmqctl(&["stop_app"]).await?;
        Ok(outage)
    }

    /// `rabbitmqctl start_app`, then waits until the node has booted.
    pub async fn end(mut self) -> Result<()> {
        self.ended = true;
        start_app().await
    }
}

/// `rabbitmqctl start_app` and `await_startup` (a no-op when it runs).
pub async fn start_app() -> Result<()> {
    eprintln!("[harness] rabbitmqctl start_app");
    rabbitmqctl(&["start_app"]).await?;
    rabbitmqctl(&["await_startup"]).await.map(drop)
}

impl Drop for BrokerOutage {
    /// The test failed between stop and start: start RabbitMQ again before anything else runs,
    /// blocking (a `Drop` cannot await), bounded by the command's own timeout.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        eprintln!("[harness] outage not ended by the test: rabbitmqctl start_app");
        let started = std::thread::spawn(|| -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot build a runtime to restart RabbitMQ")?;
            rt.block_on(start_app())
        })
        .join();
        match started {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("[harness] cannot restart RabbitMQ: {e:#}"),
            Err(_) => eprintln!("[harness] restarting RabbitMQ panicked"),
        }
    }
}
