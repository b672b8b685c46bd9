//! What the kit runs besides itself: with `--start` a bridge and a gateway of its own (on a temp
//! dir socket, port 0, a tokens file with one identity), and with `--worker-cmd` the worker under
//! test, which it can kill and start again.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// SIGTERM's number, to recognise a shell that died of it.
const SIGTERM: i32 = nix::sys::signal::Signal::SIGTERM as i32;
use tokio::process::Command;
use tokio::time::Instant;

use crate::broker::Broker;
use crate::methods;
use crate::process::Process;

/// How long the bridge and the gateway may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the worker may take to consume every `conf.*` queue.
pub(crate) const WORKER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit on SIGTERM (or to be reaped after SIGKILL).
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two looks at the worker's queues.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How [`WorkerUnderTest::exited`] describes a worker that is not running because it was
/// never started (or was killed and not yet started again).
const NOT_STARTED: &str = "not started";

/// The identity of the kit's client on a gateway it started.
pub(crate) const KIT_IDENTITY: &str = "wsmq-conformance";

/// A bridge and a gateway the kit started.
pub(crate) struct OwnSystem {
    pub(crate) url: String,
    pub(crate) token: String,
    pub(crate) instance: String,
    gateway: Process,
    bridge: Process,
    /// Holds the socket and the tokens file.
    _dir: TempDir,
}

impl OwnSystem {
    /// Starts `bridge_bin` on `amqp` with `prefix`, waits until it has its broker, then starts
    /// `gateway_bin` on it with a tokens file and learns its address.
    pub(crate) async fn start(
        bridge_bin: &Path,
        gateway_bin: &Path,
        amqp: &str,
        prefix: &str,
        verbose: bool,
    ) -> Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = tempfile::Builder::new()
            .prefix("wsmq-conformance-")
            .tempdir()
            .context("cannot create a temp dir")?;
        // In a directory the bridge creates itself, as it does /run/wsmq: private to its user.
        let socket = dir.path().join("ipc").join("bridge.sock");
        let tokens = dir.path().join("tokens");
        let token = uuid::Uuid::new_v4().simple().to_string();
        std::fs::write(&tokens, format!("{KIT_IDENTITY}:{token}\n"))
            .with_context(|| format!("cannot write {}", tokens.display()))?;
        let instance = format!("conformance-{id}");

        let mut cmd = Command::new(bridge_bin);
        cmd.arg("--ipc")
            .arg(&socket)
            .args([
                "--amqp",
                amqp,
                "--instance",
                &instance,
                "--queue-prefix",
                prefix,
            ])
            .args(["--log-format", "json"]);
        let mut bridge = Process::spawn("bridge", cmd, verbose, false)?;
        bridge
            .wait_for_message("bridge listening", START_TIMEOUT)
            .await?;
        bridge
            .wait_for_message("broker connected", START_TIMEOUT)
            .await?;

        let mut cmd = Command::new(gateway_bin);
        cmd.args(["--listen", "127.0.0.1:0", "--ipc"])
            .arg(&socket)
            .arg("--tokens")
            .arg(&tokens)
            .args(["--log-format", "json"]);
        let mut gateway = Process::spawn("gateway", cmd, verbose, false)?;
        let listening = gateway
            .wait_for_message("gateway listening", START_TIMEOUT)
            .await?;
        let addr = listening["fields"]["addr"]
            .as_str()
            .with_context(|| format!("\"gateway listening\" has no fields.addr: {listening}"))?;
        Ok(Self {
            url: format!("ws://{addr}/ws"),
            token,
            instance,
            gateway,
            bridge,
            _dir: dir,
        })
    }

    /// SIGTERM to the gateway, then the bridge; says on stderr what did not stop cleanly.
    pub(crate) async fn stop(self) {
        for process in [self.gateway, self.bridge] {
            let name = process.name().to_owned();
            match process.terminate(STOP_TIMEOUT).await {
                Ok(status) if status.success() => {}
                Ok(status) => eprintln!("wsmq-conformance: {name} exited with {status}"),
                Err(e) => eprintln!("wsmq-conformance: {e:#}"),
            }
        }
    }
}

/// The worker under test, run from `--worker-cmd`.
pub(crate) struct WorkerUnderTest {
    command: String,
    env: Vec<(&'static str, String)>,
    process: Option<Process>,
    /// How many times it has been started, to name its output `[worker]`, `[worker#2]`, ...
    starts: u32,
}

impl WorkerUnderTest {
    /// A worker to be run as `sh -c command` with `env` added.
    pub(crate) fn new(command: String, env: Vec<(&'static str, String)>) -> Self {
        Self {
            command,
            env,
            process: None,
            starts: 0,
        }
    }

    /// Starts it (in a process group of its own); its output goes to stderr.
    pub(crate) fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let name = match self.starts {
            1 => "worker".to_owned(),
            n => format!("worker#{n}"),
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(&self.command);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.process = Some(Process::spawn(&name, cmd, true, true)?);
        Ok(())
    }

    /// How it exited, if it is not running.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.process.as_mut() {
            None => Some(NOT_STARTED.to_owned()),
            Some(process) => process.try_status().map(|status| status.to_string()),
        }
    }

    /// SIGKILL to its whole process group, as a crash would; waits until it is gone.
    pub(crate) async fn kill(&mut self) -> Result<()> {
        match self.process.take() {
            Some(mut process) => process.kill(STOP_TIMEOUT).await,
            None => Ok(()),
        }
    }

    /// SIGTERM to its process group and waits for it to exit; says on stderr how it did.
    pub(crate) async fn stop(&mut self) {
        if let Some(status) = self.exited() {
            // Already gone (a check said so); nothing to signal.
            self.process = None;
            if status != NOT_STARTED {
                eprintln!("wsmq-conformance: the worker had exited ({status})");
            }
            return;
        }
        if let Some(process) = self.process.take() {
            match process.terminate(STOP_TIMEOUT).await {
                Ok(status) if status.success() => {}
                // The shell running the command, when it does not `exec` it, dies of the signal;
                // the worker's own exit was waited for all the same.
                Ok(status) if status.signal() == Some(SIGTERM) => {}
                Ok(status) => {
                    eprintln!("wsmq-conformance: the worker exited with {status} on SIGTERM")
                }
                Err(e) => eprintln!("wsmq-conformance: {e:#}"),
            }
        }
    }

    /// Waits until every `conf.*` queue under `prefix` has a consumer (or, with `consumers`
    /// false, none), failing early when the worker exits.
    pub(crate) async fn wait_consumers(
        &mut self,
        broker: &Broker,
        prefix: &str,
        consumers: bool,
        limit: Duration,
    ) -> Result<()> {
        let until = Instant::now() + limit;
        loop {
            if consumers
                && self.process.is_some()
                && let Some(status) = self.exited()
            {
                bail!("the worker exited ({status}) before consuming its queues");
            }
            let last = queues_state(broker, prefix, consumers).await;
            match last {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= until => {
                    let want = if consumers {
                        "consume"
                    } else {
                        "stop consuming"
                    };
                    bail!("the worker did not {want} every conf.* queue within {limit:?}: {e:#}")
                }
                Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }
}

/// `Ok` when every `conf.*` queue has a consumer (`consumers`) or none (`!consumers`).
async fn queues_state(broker: &Broker, prefix: &str, consumers: bool) -> Result<()> {
    for method in methods::ALL {
        let queue = wsmq_amqp_proto::queue_name(prefix, method);
        let count = broker.consumer_count(&queue).await?;
        if consumers && count == 0 {
            bail!("{queue} has no consumer");
        }
        if !consumers && count > 0 {
            bail!("{queue} still has {count} consumer(s)");
        }
    }
    Ok(())
}

/// `name` beside the running executable (where cargo and the .deb put every wsmq binary).
pub(crate) fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the kit's own path")?;
    let path = exe
        .parent()
        .with_context(|| format!("{} has no directory", exe.display()))?
        .join(name);
    if !path.is_file() {
        bail!(
            "{} does not exist (give its path with --{}-bin)",
            path.display(),
            name.trim_start_matches("wsmq-")
        );
    }
    Ok(path)
}
