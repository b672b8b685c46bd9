//! One test's wsmq deployment: bridge, workers and gateway with per-test names.
//!
//! Names are unique per test (`wsmq-test.<uuid>.` queue prefix, `test-<uuid>` instance), the
//! socket lives in a fresh temp dir and the gateway listens on port 0, so tests run in parallel
//! against one RabbitMQ without seeing each other.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::binaries::{Binaries, binaries, workspace_root};
use crate::client::WsClient;
use crate::process::{LogLine, Service};
use crate::{HEALTH_POLL_INTERVAL, HEALTH_TIMEOUT, amqp_url, broker, http, metrics};

/// The methods the demo worker serves; their queues are deleted by cleanup.
pub const DEMO_METHODS: [&str; 5] = ["echo", "sleep", "fib", "fail", "progress"];

/// Demo worker concurrency unless a test asks for another: enough that a few overlapping
/// `sleep` calls do not queue behind each other.
pub const DEFAULT_WORKER_CONCURRENCY: u32 = 8;

/// A running deployment for one test. See the module docs.
///
/// End every test with [`System::cleanup`]. If a test panics first, `Drop` kills the processes
/// and still deletes the queues.
pub struct System {
    prefix: String,
    instance: String,
    amqp_url: String,
    /// Holds the bridge socket; deleted on drop.
    _dir: TempDir,
    socket: PathBuf,
    bins: &'static Binaries,
    gateway_args: Vec<String>,
    /// The bridges' `--amqp` list (pairs may be given their own).
    bridge_amqp: Vec<String>,
    /// The workers' `--amqp` list.
    worker_amqp: Vec<String>,
    bridge_args: Vec<String>,
    worker_args: Vec<String>,
    bridge: Option<Service>,
    gateway: Option<Service>,
    workers: Vec<Service>,
    addr: Option<SocketAddr>,
    /// The gateway's `--admin-listen` address, when it has one (`/healthz` is polled there).
    admin_addr: Option<SocketAddr>,
    /// Further bridge+gateway pairs on the same queue prefix ([`System::start_pair`]).
    pairs: Vec<Pair>,
    /// Every queue the test may have created, deleted by cleanup.
    queues: Vec<String>,
    /// Every exchange the test may have created, deleted by cleanup.
    exchanges: Vec<String>,
    cleaned: bool,
}

impl System {
    /// A builder with the defaults: one demo worker and a gateway with default limits.
    pub fn builder() -> SystemBuilder {
        SystemBuilder::default()
    }

    /// Starts the default system.
    pub async fn start() -> Result<System> {
        Self::builder().start().await
    }

    /// The job queue prefix (`wsmq-test.<uuid>.`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The job queue serving `method`.
    pub fn queue_for(&self, method: &str) -> String {
        format!("{}{method}", self.prefix)
    }

    /// The bridge's instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The bridge's reply queue.
    pub fn reply_queue(&self) -> String {
        wsmq_amqp_proto::reply_queue_name(&self.instance)
    }

    /// The fanout exchange on which cancellations are broadcast to the workers.
    pub fn cancel_exchange(&self) -> String {
        wsmq_amqp_proto::cancel_exchange_name(&self.prefix)
    }

    /// The dead-letter fanout exchange, and the bridge's queue bound to it (same name).
    pub fn dead_letter_name(&self) -> String {
        wsmq_amqp_proto::dead_letter_exchange_name(&self.prefix)
    }

    /// The bridge's Unix socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The broker URL.
    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }

    /// Makes cleanup delete `queue` too (for queues a test declares itself).
    pub fn track_queue(&mut self, queue: impl Into<String>) {
        let queue = queue.into();
        if !self.queues.contains(&queue) {
            self.queues.push(queue);
        }
    }

    /// The gateway's bound address.
    pub fn gateway_addr(&self) -> Result<SocketAddr> {
        self.addr.context("the gateway is not running")
    }

    /// The gateway's process id.
    pub fn gateway_pid(&self) -> Result<u32> {
        self.gateway
            .as_ref()
            .and_then(Service::id)
            .context("the gateway is not running")
    }

    /// The gateway process, for log assertions.
    pub fn gateway(&mut self) -> Result<&mut Service> {
        self.gateway.as_mut().context("the gateway is not running")
    }

    /// The bridge process, for log assertions.
    pub fn bridge(&mut self) -> Result<&mut Service> {
        self.bridge.as_mut().context("the bridge is not running")
    }

    /// The bridge of pair `number` (0 is the first pair's), for log assertions.
    pub fn pair_bridge(&mut self, number: usize) -> Result<&mut Service> {
        if number == 0 {
            return self.bridge();
        }
        self.pairs
            .get_mut(number - 1)
            .and_then(|p| p.bridge.as_mut())
            .with_context(|| format!("pair {number} has no running bridge"))
    }

    /// The brokers, in order, of the bridges and workers started from now on.
    pub fn set_amqp(&mut self, bridge: Vec<String>, workers: Vec<String>) {
        self.bridge_amqp = bridge;
        self.worker_amqp = workers;
    }

    /// Takes the gateway process out of the system (to signal it and await its exit).
    pub fn take_gateway(&mut self) -> Result<Service> {
        self.addr = None;
        self.admin_addr = None;
        self.gateway.take().context("the gateway is not running")
    }

    /// Polls the broker until `queue` holds at least `n` ready messages, within
    /// [`HEALTH_TIMEOUT`]; returns the count seen.
    pub async fn wait_queue_depth(&self, queue: &str, n: u32) -> Result<u32> {
        let deadline = tokio::time::Instant::now() + HEALTH_TIMEOUT;
        let conn = broker::connect(&self.amqp_url).await?;
        let result = loop {
            let last = match broker::queue_depth(&conn, queue).await {
                Ok(depth) if depth >= n => break Ok(depth),
                Ok(depth) => format!("{depth} messages"),
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                break Err(anyhow::anyhow!(
                    "{queue} did not reach {n} messages within {HEALTH_TIMEOUT:?}; last: {last}"
                ));
            }
            tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
        };
        let _ = conn.close(200, "done".into()).await;
        result
    }

    /// A new websocket client connected to the gateway.
    pub async fn client(&self) -> Result<WsClient> {
        WsClient::connect(self.gateway_addr()?).await
    }

    /// The gateway's `--admin-listen` address, if it was started with one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Where `/healthz` is served: the admin address if any, else the gateway's.
    fn health_addr(&self) -> Result<SocketAddr> {
        match self.admin_addr {
            Some(addr) => Ok(addr),
            None => self.gateway_addr(),
        }
    }

    /// Starts a gateway on this system's bridge socket with `--log-format json` and `args`
    /// only (no `--listen`, no builder flags), without waiting for anything: for tests of
    /// how it starts, or refuses to.
    pub fn spawn_bare_gateway(&self, args: &[&str]) -> Result<Service> {
        let mut all = vec!["--ipc", path_arg(&self.socket)?, "--log-format", "json"];
        all.extend_from_slice(args);
        Service::spawn("gateway", &self.bins.gateway, all, &log_env())
    }

    /// The value of a series on the gateway's `/metrics` (see [`metrics::read`]).
    pub async fn metric(&self, series: &str) -> Result<f64> {
        metrics::read(self.health_addr()?, series).await
    }

    /// Polls a series on the gateway's `/metrics` until `pred(value)` holds, within
    /// [`HEALTH_TIMEOUT`] (see [`metrics::wait_for`]).
    pub async fn wait_metric(
        &self,
        series: &str,
        what: &str,
        pred: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        metrics::wait_for(self.health_addr()?, series, HEALTH_TIMEOUT, what, pred).await
    }

    /// `GET /readyz`: status code and JSON body.
    pub async fn readyz(&self) -> Result<(u16, Value)> {
        let response = http::get(self.health_addr()?, "/readyz").await?;
        let body = response.json()?;
        Ok((response.status, body))
    }

    /// Polls `/readyz` until `pred(status, body)` holds, within [`HEALTH_TIMEOUT`].
    pub async fn wait_readyz(
        &self,
        what: &str,
        pred: impl Fn(u16, &Value) -> bool,
    ) -> Result<(u16, Value)> {
        wait_json_at(self.health_addr()?, "/readyz", HEALTH_TIMEOUT, what, pred).await
    }

    /// `GET /healthz`: status code and JSON body.
    pub async fn healthz(&self) -> Result<(u16, Value)> {
        let response = http::get(self.health_addr()?, "/healthz").await?;
        let body = response.json()?;
        Ok((response.status, body))
    }

    /// Polls `/healthz` until `pred(status, body)` holds, within [`HEALTH_TIMEOUT`]. `what`
    /// names the awaited state for the error, which also shows the last answer seen.
    pub async fn wait_health(
        &self,
        what: &str,
        pred: impl Fn(u16, &Value) -> bool,
    ) -> Result<(u16, Value)> {
        self.wait_health_within(HEALTH_TIMEOUT, what, pred).await
    }

    /// Polls `/healthz` until it answers 200.
    pub async fn wait_healthy(&self) -> Result<(u16, Value)> {
        self.wait_health("200", |status, _| status == 200).await
    }

    /// Starts the gateway, learns its port from its "gateway listening" log line and waits
    /// until `/healthz` answers 200.
    pub async fn start_gateway(&mut self) -> Result<()> {
        if self.gateway.is_some() {
            bail!("the gateway is already running");
        }
        let mut gateway = self.spawn_gateway("gateway", &self.socket)?;
        let listening = gateway.wait_for_message("gateway listening").await;
        self.gateway = Some(gateway);
        let addr = listening_addr(&listening?)?;
        self.addr = Some(addr);
        if self.gateway_args.iter().any(|a| a == "--admin-listen") {
            let gateway = self
                .gateway
                .as_mut()
                .context("the gateway is not running")?;
            let admin = gateway.wait_for_message("admin listening").await?;
            self.admin_addr = Some(listening_addr(&admin)?);
        }
        self.wait_healthy().await?;
        Ok(())
    }

    /// Polls `/healthz` like [`Self::wait_health`], for up to `limit` (a broker restart takes
    /// longer than [`HEALTH_TIMEOUT`]).
    pub async fn wait_health_within(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(u16, &Value) -> bool,
    ) -> Result<(u16, Value)> {
        wait_healthz_at(self.health_addr()?, limit, what, pred).await
    }

    /// Starts another bridge (instance `<instance>-<n>`, its own socket and reply queue, the
    /// SAME queue prefix, so it publishes to the same job queues the workers consume) and a
    /// gateway of its own on it; waits until that gateway's `/healthz` says 200. Returns the
    /// pair's number (1, 2, ...; the first pair, [`Self::gateway_addr`], is 0).
    pub async fn start_pair(&mut self) -> Result<usize> {
        let urls = self.bridge_amqp.clone();
        self.start_pair_on(&urls).await
    }

    /// [`Self::start_pair`] with the pair's bridge on the brokers `urls`, in that order.
    pub async fn start_pair_on(&mut self, urls: &[String]) -> Result<usize> {
        let number = self.pairs.len() + 1;
        let instance = format!("{}-{number}", self.instance);
        let socket = self.socket.with_file_name(format!("bridge-{number}.sock"));
        self.track_queue(wsmq_amqp_proto::reply_queue_name(&instance));
        let mut bridge =
            self.spawn_bridge_as(&format!("bridge-{number}"), &socket, &instance, urls)?;
        let ready = Self::await_bridge_ready(&mut bridge).await;
        let mut pair = Pair {
            bridge: Some(bridge),
            gateway: None,
            addr: None,
        };
        if let Err(e) = ready {
            self.pairs.push(pair);
            return Err(e);
        }
        let mut gateway = self.spawn_gateway(&format!("gateway-{number}"), &socket)?;
        let listening = gateway.wait_for_message("gateway listening").await;
        pair.gateway = Some(gateway);
        let addr = listening.and_then(|l| listening_addr(&l));
        pair.addr = addr.as_ref().ok().copied();
        self.pairs.push(pair);
        wait_healthz_at(addr?, HEALTH_TIMEOUT, "200", |status, _| status == 200)
            .await
            .with_context(|| format!("gateway-{number} is not healthy"))?;
        Ok(number)
    }

    /// The gateway address of pair `number` (0 is the first pair).
    pub fn pair_addr(&self, number: usize) -> Result<SocketAddr> {
        if number == 0 {
            return self.gateway_addr();
        }
        self.pairs
            .get(number - 1)
            .and_then(|p| p.addr)
            .with_context(|| format!("pair {number} has no running gateway"))
    }

    /// The process id of worker `index` (in start order).
    pub fn worker_pid(&self, index: usize) -> Result<u32> {
        self.workers
            .get(index)
            .and_then(Service::id)
            .with_context(|| format!("no running worker {index}"))
    }

    /// Worker `index` (in start order), for log assertions.
    pub fn worker_mut(&mut self, index: usize) -> Result<&mut Service> {
        let count = self.workers.len();
        self.workers
            .get_mut(index)
            .with_context(|| format!("no worker {index}: {count} running"))
    }

    /// How many demo (or pika, or Python SDK) workers run.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Worker `index` (in start order), for log assertions.
    pub fn worker(&mut self, index: usize) -> Result<&mut Service> {
        let running = self.workers.len();
        self.workers
            .get_mut(index)
            .with_context(|| format!("no worker {index}: {running} running"))
    }

    /// The AMQP connection name of demo worker `index` (it names its connection after its pid).
    pub fn worker_connection_name(&self, index: usize) -> Result<String> {
        let pid = self
            .workers
            .get(index)
            .and_then(Service::id)
            .with_context(|| format!("worker {index} is not running"))?;
        Ok(format!("wsmq-worker demo pid {pid}"))
    }

    /// SIGKILL to worker `index` (in start order; a killed worker leaves the list, so the
    /// next one moves up); waits for it to be gone.
    pub async fn kill_worker(&mut self, index: usize) -> Result<()> {
        if index >= self.workers.len() {
            bail!("no worker {index}: {} running", self.workers.len());
        }
        self.workers.remove(index).kill().await
    }

    /// Starts the bridge (same socket, instance and prefix as before) and waits until it
    /// listens and has its broker.
    pub async fn start_bridge(&mut self) -> Result<()> {
        if self.bridge.is_some() {
            bail!("the bridge is already running");
        }
        let mut bridge = self.spawn_bridge()?;
        let ready = Self::await_bridge_ready(&mut bridge).await;
        self.bridge = Some(bridge);
        ready
    }

    /// Starts the bridge (same socket, instance and prefix) against the broker at `amqp_url`
    /// instead of the test's, and waits only until it listens: for tests of a broker the
    /// bridge cannot reach (a URL where nothing listens), without stopping the shared one.
    pub async fn start_bridge_with_amqp(&mut self, amqp_url: &str) -> Result<()> {
        if self.bridge.is_some() {
            bail!("the bridge is already running");
        }
        let urls = [amqp_url.to_owned()];
        let mut bridge = self.spawn_bridge_as("bridge", &self.socket, &self.instance, &urls)?;
        let listening = bridge.wait_for_message("bridge listening").await;
        self.bridge = Some(bridge);
        listening.map(drop)
    }

    /// SIGTERM to the bridge; waits for it to exit.
    pub async fn stop_bridge(&mut self) -> Result<ExitStatus> {
        self.bridge
            .take()
            .context("the bridge is not running")?
            .terminate()
            .await
    }

    /// SIGKILL to the bridge (a crash); waits for it to be gone.
    pub async fn kill_bridge(&mut self) -> Result<()> {
        self.bridge
            .take()
            .context("the bridge is not running")?
            .kill()
            .await
    }

    /// SIGTERM to the gateway; waits for it to exit.
    pub async fn stop_gateway(&mut self) -> Result<ExitStatus> {
        self.addr = None;
        self.admin_addr = None;
        self.gateway
            .take()
            .context("the gateway is not running")?
            .terminate()
            .await
    }

    /// SIGTERM to every worker started so far; waits for each to exit.
    pub async fn stop_workers(&mut self) -> Result<Vec<ExitStatus>> {
        let mut statuses = Vec::new();
        for worker in std::mem::take(&mut self.workers) {
            statuses.push(worker.terminate().await?);
        }
        Ok(statuses)
    }

    /// Starts another demo worker and waits until it consumes.
    pub async fn start_worker(&mut self, concurrency: u32) -> Result<()> {
        self.start_worker_with(concurrency, &[]).await
    }

    /// [`Self::start_worker`] with more flags (e.g. `--queue-type quorum`).
    pub async fn start_worker_with(&mut self, concurrency: u32, extra: &[&str]) -> Result<()> {
        let mut worker = self.spawn_worker(concurrency, extra)?;
        let ready = Self::await_worker_ready(&mut worker).await;
        self.workers.push(worker);
        ready
    }

    /// Starts the Python (pika) worker on the queue for `method` and waits until it consumes.
    pub async fn start_pika_worker(&mut self, method: &str) -> Result<()> {
        let queue = self.queue_for(method);
        self.track_queue(queue.clone());
        let script = workspace_root().join("tests/workers/pika_worker.py");
        let python = std::env::var("WSMQ_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let args = [
            path_arg(&script)?,
            "--amqp",
            &self.amqp_url,
            "--queue",
            &queue,
        ];
        // Unbuffered, so "ready" reaches the pipe when it is printed.
        let mut worker = Service::spawn("pika", &python, args, &[("PYTHONUNBUFFERED", "1")])?;
        let ready = worker
            .wait_for_log("\"pika worker ready\"", |l| {
                l.text.contains("pika worker ready")
            })
            .await;
        self.workers.push(worker);
        ready.map(drop)
    }

    /// Stops every process (SIGTERM, killed if it hangs) and deletes the test's queues and
    /// exchanges.
    ///
    /// Panics if a queue cannot be deleted or a process did not stop on SIGTERM, failing the
    /// test: both would leak into later tests. A non-zero exit status is only reported, since
    /// `every_binary_exits_cleanly_on_sigterm` pins that on its own.
    pub async fn cleanup(self) {
        if let Err(e) = self.try_cleanup().await {
            panic!("cleanup failed: {e:#}");
        }
    }

    /// [`Self::cleanup`], returning the failure instead of panicking.
    pub async fn try_cleanup(mut self) -> Result<()> {
        let mut problems = Vec::new();
        // Clients first, then what they depend on: gateways, workers, bridges.
        let (pair_gateways, pair_bridges): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pairs)
            .into_iter()
            .map(|p| (p.gateway, p.bridge))
            .unzip();
        let services = self
            .gateway
            .take()
            .into_iter()
            .chain(pair_gateways.into_iter().flatten())
            .chain(std::mem::take(&mut self.workers))
            .chain(self.bridge.take())
            .chain(pair_bridges.into_iter().flatten());
        for service in services {
            let name = service.name().to_owned();
            match service.terminate().await {
                Ok(status) if status.success() => {}
                Ok(status) => {
                    eprintln!("[harness] warning: [{name}] exited with {status} on SIGTERM")
                }
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        if let Err(e) = broker::delete_topology(&self.amqp_url, &self.queues, &self.exchanges).await
        {
            problems.push(format!("{e:#}"));
        }
        self.cleaned = true;
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("; "))
        }
    }

    fn spawn_gateway(&self, name: &str, socket: &Path) -> Result<Service> {
        let mut args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--ipc",
            path_arg(socket)?,
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(self.gateway_args.iter().cloned());
        Service::spawn(name, &self.bins.gateway, &args, &log_env())
    }

    fn spawn_bridge(&self) -> Result<Service> {
        self.spawn_bridge_as("bridge", &self.socket, &self.instance, &self.bridge_amqp)
    }

    fn spawn_bridge_as(
        &self,
        name: &str,
        socket: &Path,
        instance: &str,
        urls: &[String],
    ) -> Result<Service> {
        let mut args: Vec<&str> = vec![
            "--ipc",
            path_arg(socket)?,
            "--instance",
            instance,
            "--queue-prefix",
            &self.prefix,
            "--log-format",
            "json",
        ];
        for url in urls {
            args.extend(["--amqp", url.as_str()]);
        }
        args.extend(self.bridge_args.iter().map(String::as_str));
        Service::spawn(name, &self.bins.bridge, args, &log_env())
    }

    async fn await_bridge_ready(bridge: &mut Service) -> Result<()> {
        bridge.wait_for_message("bridge listening").await?;
        bridge.wait_for_message("broker connected").await?;
        Ok(())
    }

    fn spawn_worker(&self, concurrency: u32, extra: &[&str]) -> Result<Service> {
        let concurrency = concurrency.to_string();
        let mut args: Vec<&str> = vec![
            "--queue-prefix",
            &self.prefix,
            "--concurrency",
            &concurrency,
            "--log-format",
            "json",
        ];
        for url in &self.worker_amqp {
            args.extend(["--amqp", url.as_str()]);
        }
        args.extend(self.worker_args.iter().map(String::as_str));
        args.extend_from_slice(extra);
        Service::spawn("worker", &self.bins.worker, args, &log_env())
    }

    async fn await_worker_ready(worker: &mut Service) -> Result<()> {
        worker
            .wait_for_log("a message containing \"worker ready\"", |l: &LogLine| {
                l.message().is_some_and(|m| m.contains("worker ready"))
            })
            .await
            .map(drop)
    }
}

/// Polls `GET /healthz` on `addr` until `pred(status, body)` holds, for up to `limit`. `what`
/// names the awaited state for the error, which also shows the last answer seen.
async fn wait_healthz_at(
    addr: SocketAddr,
    limit: Duration,
    what: &str,
    pred: impl Fn(u16, &Value) -> bool,
) -> Result<(u16, Value)> {
    wait_json_at(addr, "/healthz", limit, what, pred).await
}

/// Polls `GET path` on `addr` (a JSON endpoint) until `pred(status, body)` holds, for up to
/// `limit`. `what` names the awaited state for the error, which also shows the last answer.
pub async fn wait_json_at(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(u16, &Value) -> bool,
) -> Result<(u16, Value)> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let answer = match http::get(addr, path).await {
            Ok(response) => response.json().map(|body| (response.status, body)),
            Err(e) => Err(e),
        };
        let last = match answer {
            Ok((status, body)) if pred(status, &body) => return Ok((status, body)),
            Ok((status, body)) => format!("HTTP {status} {body}"),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("{path} did not report {what} within {limit:?}; last: {last}");
        }
        tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
    }
}

/// A further bridge and its gateway, on the same queue prefix as the first.
struct Pair {
    bridge: Option<Service>,
    gateway: Option<Service>,
    addr: Option<SocketAddr>,
}

/// `fields.addr` of the gateway's "gateway listening" line.
fn listening_addr(line: &LogLine) -> Result<SocketAddr> {
    let addr = line
        .field("addr")
        .and_then(Value::as_str)
        .with_context(|| {
            format!(
                "\"gateway listening\" has no string fields.addr: {}",
                line.text
            )
        })?;
    addr.parse()
        .with_context(|| format!("\"gateway listening\" fields.addr {addr:?} is not host:port"))
}

/// A duration as a flag value the gateway reads (humantime): whole milliseconds.
fn millis_arg(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

fn path_arg(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// `RUST_LOG` for the binaries: `WSMQ_TEST_RUST_LOG` if set, else none, so they run with their
/// own default filter (info, which has every line the harness waits for).
fn log_env() -> Vec<(&'static str, String)> {
    std::env::var("WSMQ_TEST_RUST_LOG")
        .map(|filter| vec![("RUST_LOG", filter)])
        .unwrap_or_default()
}

mod builder;
pub use builder::SystemBuilder;
mod python;
pub use python::{PYTHON_SDK_EXAMPLE, PYTHON_SDK_METHODS, python, python_sdk_env};
mod teardown;
