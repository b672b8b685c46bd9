//! How a test says what its deployment has: workers, their concurrency, the gateway's flags.

use super::*;

/// How to start a [`System`].
#[derive(Debug, Clone)]
pub struct SystemBuilder {
    worker: bool,
    /// How many demo workers to start (when `worker`).
    workers: u32,
    worker_concurrency: u32,
    gateway: bool,
    gateway_args: Vec<String>,
    /// The harness's own broker URL (preflight, queue depths, cleanup); `None`: [`amqp_url`].
    amqp_url: Option<String>,
    /// The bridge's `--amqp` list; empty: the harness's URL.
    bridge_amqp: Vec<String>,
    /// Every worker's `--amqp` list; empty: the harness's URL.
    worker_amqp: Vec<String>,
    bridge_args: Vec<String>,
    worker_args: Vec<String>,
}

impl Default for SystemBuilder {
    fn default() -> Self {
        Self {
            worker: true,
            workers: 1,
            worker_concurrency: DEFAULT_WORKER_CONCURRENCY,
            gateway: true,
            gateway_args: Vec::new(),
            amqp_url: None,
            bridge_amqp: Vec::new(),
            worker_amqp: Vec::new(),
            bridge_args: Vec::new(),
            worker_args: Vec::new(),
        }
    }
}

impl SystemBuilder {
    /// Start no demo worker.
    pub fn without_worker(mut self) -> Self {
        self.worker = false;
        self
    }

    /// Start no gateway (a test starts it later with [`System::start_gateway`]).
    pub fn without_gateway(mut self) -> Self {
        self.gateway = false;
        self
    }

    /// The demo worker's `--concurrency`.
    pub fn worker_concurrency(mut self, n: u32) -> Self {
        self.worker_concurrency = n;
        self
    }

    /// Start `n` demo workers (default 1), each with the same `--concurrency`.
    pub fn workers(mut self, n: u32) -> Self {
        self.worker = n > 0;
        self.workers = n;
        self
    }

    /// Any gateway flag with its value, for flags the builder has no method for.
    pub fn gateway_arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.gateway_args
            .extend([flag.to_owned(), value.to_string()]);
        self
    }

    /// The broker the harness itself uses (preflight, cleanup) instead of `WSMQ_AMQP_URL`.
    pub fn amqp_url(mut self, url: impl Into<String>) -> Self {
        self.amqp_url = Some(url.into());
        self
    }

    /// The bridge's brokers, in order (one `--amqp` each).
    pub fn bridge_amqp(mut self, urls: Vec<String>) -> Self {
        self.bridge_amqp = urls;
        self
    }

    /// Every worker's brokers, in order (one `--amqp` each).
    pub fn worker_amqp(mut self, urls: Vec<String>) -> Self {
        self.worker_amqp = urls;
        self
    }

    /// Any bridge flag with its value (for every bridge of the system).
    pub fn bridge_arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.bridge_args
            .extend([flag.to_owned(), value.to_string()]);
        self
    }

    /// Any demo worker flag with its value (for every worker of the system).
    pub fn worker_arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.worker_args
            .extend([flag.to_owned(), value.to_string()]);
        self
    }

    /// Replicated queues end to end, as on a cluster: the bridge's `--reply-queue-type
    /// quorum` and the workers' `--queue-type quorum`.
    pub fn quorum_queues(self) -> Self {
        self.bridge_arg("--reply-queue-type", "quorum")
            .worker_arg("--queue-type", "quorum")
    }

    /// The gateway's `--session-resume-secs`: how long a session waits for a connection to
    /// resume it (0 turns sessions off; the gateway's default is 30).
    pub fn session_resume_secs(self, secs: u64) -> Self {
        self.gateway_arg("--session-resume-secs", secs)
    }

    /// The gateway's `--drain-timeout` (whole seconds).
    pub fn drain_timeout_secs(self, secs: u64) -> Self {
        self.gateway_arg("--drain-timeout", secs)
    }

    /// The gateway's `--max-message-bytes`.
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.gateway_args
            .extend(["--max-message-bytes".to_owned(), n.to_string()]);
        self
    }

    /// The gateway's `--max-inflight-per-client`.
    pub fn max_inflight_per_client(mut self, n: usize) -> Self {
        self.gateway_args
            .extend(["--max-inflight-per-client".to_owned(), n.to_string()]);
        self
    }

    /// The gateway's `--max-inflight` (calls in flight over all connections).
    pub fn max_inflight(mut self, n: usize) -> Self {
        self.gateway_args
            .extend(["--max-inflight".to_owned(), n.to_string()]);
        self
    }

    /// The gateway's `--call-timeout`: the deadline of a call that names none.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.gateway_args
            .extend(["--call-timeout".to_owned(), millis_arg(timeout)]);
        self
    }

    /// The gateway's `--max-call-timeout`: the longest deadline a call may ask for.
    pub fn max_call_timeout(mut self, timeout: Duration) -> Self {
        self.gateway_args
            .extend(["--max-call-timeout".to_owned(), millis_arg(timeout)]);
        self
    }

    /// Starts the bridge and the worker, waits until the bridge has its broker and the worker
    /// consumes, then starts the gateway and waits until `/healthz` says 200.
    pub async fn start(self) -> Result<System> {
        let bins = binaries().await?;
        let amqp_url = self.amqp_url.clone().unwrap_or_else(amqp_url);
        // Fail with the real cause rather than as a bridge that never logs "broker connected".
        broker::connect(&amqp_url)
            .await
            .context("RabbitMQ must run for the e2e tests (start it: `rabbitmq-server -detached`)")?
            .close(200, "preflight done".into())
            .await
            .context("cannot close the preflight connection")?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = tempfile::Builder::new()
            .prefix("wsmq-test-")
            .tempdir()
            .context("cannot create a temp dir for the bridge socket")?;
        // In a directory the bridge creates itself, as it does /run/wsmq: private to its user.
        let socket = dir.path().join("ipc").join("bridge.sock");
        let prefix = format!("wsmq-test.{id}.");
        let instance = format!("test-{id}");
        let mut queues: Vec<String> = DEMO_METHODS
            .iter()
            .map(|m| format!("{prefix}{m}"))
            .collect();
        queues.push(wsmq_amqp_proto::reply_queue_name(&instance));
        // Every bridge declares `<prefix>wsmq.dead`, a fanout exchange (quorum-queue workers
        // declare it too) and a queue bound to it, to answer the callers of dead jobs.
        queues.push(wsmq_amqp_proto::dead_letter_exchange_name(&prefix));
        // The bridge and the workers declare it (durable) to broadcast cancellations.
        let exchanges = vec![
            wsmq_amqp_proto::cancel_exchange_name(&prefix),
            wsmq_amqp_proto::dead_letter_exchange_name(&prefix),
        ];
        let bridge_amqp = if self.bridge_amqp.is_empty() {
            vec![amqp_url.clone()]
        } else {
            self.bridge_amqp
        };
        let worker_amqp = if self.worker_amqp.is_empty() {
            vec![amqp_url.clone()]
        } else {
            self.worker_amqp
        };
        let mut system = System {
            prefix,
            instance,
            amqp_url,
            _dir: dir,
            socket,
            bins,
            gateway_args: self.gateway_args,
            bridge_amqp,
            worker_amqp,
            bridge_args: self.bridge_args,
            worker_args: self.worker_args,
            bridge: None,
            gateway: None,
            workers: Vec::new(),
            addr: None,
            admin_addr: None,
            pairs: Vec::new(),
            queues,
            exchanges,
            cleaned: false,
        };
        eprintln!(
            "[harness] test system {id}: prefix {}, instance {}, socket {}",
            system.prefix,
            system.instance,
            system.socket.display()
        );

        // Bridge and worker start in parallel; both must be ready before the gateway runs,
        // or the first calls could find no queue (-32601) or no bridge (-32000).
        let mut bridge = system.spawn_bridge()?;
        let worker_count = if self.worker { self.workers } else { 0 };
        let mut workers = Vec::new();
        for _ in 0..worker_count {
            workers.push(system.spawn_worker(self.worker_concurrency, &[])?);
        }
        let bridge_ready = System::await_bridge_ready(&mut bridge).await;
        system.bridge = Some(bridge);
        bridge_ready?;
        for mut worker in workers {
            let ready = System::await_worker_ready(&mut worker).await;
            system.workers.push(worker);
            ready?;
        }
        if self.gateway {
            system.start_gateway().await?;
        }
        Ok(system)
    }
}
