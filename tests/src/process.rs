//! A child process under test, and the task that owns its output.
//!
//! Each [`Service`] spawns its program with stdout and stderr piped. One log task per process
//! owns everything it printed: it forwards every line to the test's stderr with a `[name]`
//! prefix (nextest shows it when the test fails), keeps the lines, and answers "tell me when a
//! line matching this predicate has been printed" requests from the harness (the actor/handle
//! pattern: the harness holds only a bounded `mpsc::Sender`).

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use crate::{SHUTDOWN_TIMEOUT, STARTUP_TIMEOUT};

/// Lines in flight from a reader task to the log task. When full the reader waits, and so, once
/// its pipe fills, does the child: the log task never blocks, so this only smooths bursts.
const LINE_CHANNEL_CAPACITY: usize = 256;

/// Requests in flight to the log task. Only the harness sends them, one at a time per await,
/// so a full channel just makes the caller wait.
const COMMAND_CHANNEL_CAPACITY: usize = 16;

/// Lines kept per process for later waits; older lines are dropped first. Tests are short and
/// the binaries log at info level, so this is never reached in practice.
const MAX_KEPT_LINES: usize = 20_000;

/// One line a process printed (stdout or stderr).
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The line without its newline.
    pub text: String,
    /// The line parsed as JSON, when it is (the binaries log with `--log-format json`).
    pub json: Option<Value>,
}

impl LogLine {
    fn new(text: String) -> Self {
        let json = serde_json::from_str(&text).ok();
        Self { text, json }
    }

    /// `fields.<name>` of a tracing-subscriber JSON line.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.json.as_ref()?.get("fields")?.get(name)
    }

    /// `fields.message` of a tracing-subscriber JSON line.
    pub fn message(&self) -> Option<&str> {
        self.field("message")?.as_str()
    }

    /// The `level` of a tracing-subscriber JSON line.
    pub fn level(&self) -> Option<&str> {
        self.json.as_ref()?.get("level")?.as_str()
    }
}

type Predicate = Box<dyn Fn(&LogLine) -> bool + Send>;

/// Where processes' output goes instead of stderr, when set (see [`log_to_dir`]).
static LOG_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sends the output of every process started from now on to `<dir>/<name>.log` (appended,
/// so a restarted process continues its file) instead of this process's stderr. For long runs
/// (the soak runner), whose processes log every call. Can be set once per process.
pub fn log_to_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    LOG_DIR
        .set(dir.to_path_buf())
        .map_err(|_| anyhow!("the log directory is already set"))
}

/// Where a process's lines are forwarded.
///
/// The file is written with blocking `std::io` calls from the log task: a line appended to a
/// local file lands in the page cache in microseconds, the same cost as the `eprintln!` it
/// replaces, and it spares the crate tokio's `fs` feature.
enum Sink {
    Stderr,
    File(std::io::LineWriter<std::fs::File>),
}

impl Sink {
    fn open(name: &str, pid: Option<u32>) -> Self {
        use std::io::Write;
        let Some(dir) = LOG_DIR.get() else {
            return Self::Stderr;
        };
        let path = dir.join(format!("{name}.log"));
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        match opened {
            Ok(file) => {
                let mut file = std::io::LineWriter::new(file);
                let _ = writeln!(file, "--- [{name}] started, pid {pid:?} ---");
                Self::File(file)
            }
            Err(e) => {
                eprintln!(
                    "[harness] cannot open {}: {e}; logging to stderr",
                    path.display()
                );
                Self::Stderr
            }
        }
    }

    fn line(&mut self, name: &str, text: &str) {
        use std::io::Write;
        match self {
            Self::Stderr => eprintln!("[{name}] {text}"),
            Self::File(file) => {
                if writeln!(file, "{text}").is_err() {
                    eprintln!("[{name}] {text}");
                }
            }
        }
    }
}

enum LogCommand {
    /// Answer with the first line (kept or future) that matches, or `None` once the output
    /// has ended without one.
    WaitFor {
        pred: Predicate,
        reply: oneshot::Sender<Option<LogLine>>,
    },
    /// Answer with every kept line.
    Snapshot {
        reply: oneshot::Sender<Vec<LogLine>>,
    },
}

/// A running child process of the system under test.
///
/// Dropping it kills the process (`kill_on_drop`), so a failing test leaves nothing behind.
pub struct Service {
    name: String,
    child: Child,
    logs: mpsc::Sender<LogCommand>,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Service {
    /// Starts `program args...` with `envs` added to the environment, less any inherited
    /// `RUST_LOG` (the test runner's filter is not the binaries'); its output lines are
    /// forwarded with a `[name]` prefix.
    pub fn spawn<I, S, K, V>(
        name: &str,
        program: impl AsRef<OsStr>,
        args: I,
        envs: &[(K, V)],
    ) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let program = program.as_ref();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_remove("RUST_LOG")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.to_string_lossy()))?;
        let stdout = child
            .stdout
            .take()
            .with_context(|| format!("{name} has no stdout pipe"))?;
        let stderr = child
            .stderr
            .take()
            .with_context(|| format!("{name} has no stderr pipe"))?;

        let (line_tx, line_rx) = mpsc::channel(LINE_CHANNEL_CAPACITY);
        tokio::spawn(read_lines(stdout, line_tx.clone()));
        tokio::spawn(read_lines(stderr, line_tx));
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        tokio::spawn(run_log_task(name.to_owned(), child.id(), line_rx, cmd_rx));

        Ok(Self {
            name: name.to_owned(),
            child,
            logs: cmd_tx,
        })
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The name used to prefix its lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits (up to [`STARTUP_TIMEOUT`]) until the process has printed a line matching `pred`,
    /// counting lines printed before the call. `what` describes the line for the error message.
    pub async fn wait_for_log(
        &mut self,
        what: &str,
        pred: impl Fn(&LogLine) -> bool + Send + 'static,
    ) -> Result<LogLine> {
        let (reply, answer) = oneshot::channel();
        let cmd = LogCommand::WaitFor {
            pred: Box::new(pred),
            reply,
        };
        self.logs
            .send(cmd)
            .await
            .map_err(|_| anyhow!("[{}] log task is gone", self.name))?;
        match tokio::time::timeout(STARTUP_TIMEOUT, answer).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = self.exit_status_text().await;
                bail!("[{}] exited ({status}) before logging {what}", self.name)
            }
            Err(_) => {
                let status = self.exit_status_text().await;
                bail!(
                    "[{}] did not log {what} within {STARTUP_TIMEOUT:?} ({status})",
                    self.name
                )
            }
        }
    }

    /// Waits for a JSON log line whose `fields.message` is exactly `message`.
    pub async fn wait_for_message(&mut self, message: &str) -> Result<LogLine> {
        let wanted = message.to_owned();
        self.wait_for_log(&format!("message {message:?}"), move |l| {
            l.message() == Some(wanted.as_str())
        })
        .await
    }

    /// Every line printed so far (up to the last [`MAX_KEPT_LINES`]).
    pub async fn lines(&self) -> Result<Vec<LogLine>> {
        let (reply, answer) = oneshot::channel();
        self.logs
            .send(LogCommand::Snapshot { reply })
            .await
            .map_err(|_| anyhow!("[{}] log task is gone", self.name))?;
        answer
            .await
            .map_err(|_| anyhow!("[{}] log task is gone", self.name))
    }

    /// Sends `signal` to the process without waiting for anything.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(self.pid()?, signal)
            .with_context(|| format!("cannot send {signal} to [{}]", self.name))
    }

    /// Waits (up to [`SHUTDOWN_TIMEOUT`]) for the process to exit by itself.
    pub async fn wait_exit(mut self) -> Result<ExitStatus> {
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.with_context(|| format!("cannot wait for [{}]", self.name)),
            Err(_) => bail!("[{}] did not exit within {SHUTDOWN_TIMEOUT:?}", self.name),
        }
    }

    /// Waits for the process to exit, with no limit of its own (bound it with a timeout), and
    /// keeps the [`Service`]: for a test that watches processes it expects to die.
    pub async fn exited(&mut self) -> Result<ExitStatus> {
        self.child
            .wait()
            .await
            .with_context(|| format!("cannot wait for [{}]", self.name))
    }

    /// Sends SIGTERM and waits (up to [`SHUTDOWN_TIMEOUT`]) for the process to exit. If it does
    /// not, it is killed and this is an error: every binary must shut down on SIGTERM.
    pub async fn terminate(mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait().context("cannot poll child")? {
            return Ok(status);
        }
        self.signal(Signal::SIGTERM)?;
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.with_context(|| format!("cannot wait for [{}]", self.name)),
            Err(_) => {
                // Leave no process behind even though this is a failure.
                let _ = self.child.start_kill();
                let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.child.wait()).await;
                bail!(
                    "[{}] did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM; killed it",
                    self.name
                )
            }
        }
    }

    /// Sends SIGKILL (`kill -9`) and waits for the process to be gone.
    pub async fn kill(mut self) -> Result<()> {
        self.child
            .start_kill()
            .with_context(|| format!("cannot kill [{}]", self.name))?;
        tokio::time::timeout(SHUTDOWN_TIMEOUT, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "[{}] still running {SHUTDOWN_TIMEOUT:?} after SIGKILL",
                    self.name
                )
            })?
            .with_context(|| format!("cannot wait for [{}]", self.name))?;
        Ok(())
    }

    /// The process id, while the process has not been reaped.
    pub fn os_pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGKILL without waiting (for `Drop` paths).
    pub fn start_kill(&mut self) {
        let _ = self.child.start_kill();
    }

    fn pid(&self) -> Result<Pid> {
        let id = self
            .child
            .id()
            .with_context(|| format!("[{}] has already been reaped", self.name))?;
        let raw = i32::try_from(id).with_context(|| format!("pid {id} out of range"))?;
        Ok(Pid::from_raw(raw))
    }

    async fn exit_status_text(&mut self) -> String {
        // Output ends a moment before the process is reaped; give it that moment.
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(500), self.child.wait()).await;
        match waited {
            Ok(Ok(status)) => format!("{status}"),
            Ok(Err(e)) => format!("exit status unknown: {e}"),
            Err(_) => "still running".to_owned(),
        }
    }
}

/// Reads `src` line by line (lossily: a binary must not be able to stall the harness with
/// invalid UTF-8) until EOF.
async fn read_lines(src: impl AsyncRead + Unpin, lines: mpsc::Sender<String>) {
    let mut src = BufReader::new(src);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match src.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                if lines.send(text).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Owns one process's output: forwards it, keeps it, answers waits.
async fn run_log_task(
    name: String,
    pid: Option<u32>,
    mut lines: mpsc::Receiver<String>,
    mut commands: mpsc::Receiver<LogCommand>,
) {
    let mut sink = Sink::open(&name, pid);
    let mut kept: std::collections::VecDeque<LogLine> = std::collections::VecDeque::new();
    let mut waiters: Vec<(Predicate, oneshot::Sender<Option<LogLine>>)> = Vec::new();
    let mut output_open = true;
    let mut handle_open = true;
    while output_open || handle_open {
        tokio::select! {
            line = lines.recv(), if output_open => match line {
                Some(text) => {
                    sink.line(&name, &text);
                    let line = LogLine::new(text);
                    let mut still_waiting = Vec::with_capacity(waiters.len());
                    for (pred, reply) in waiters.drain(..) {
                        if reply.is_closed() {
                            continue;
                        }
                        if pred(&line) {
                            let _ = reply.send(Some(line.clone()));
                        } else {
                            still_waiting.push((pred, reply));
                        }
                    }
                    waiters = still_waiting;
                    if kept.len() == MAX_KEPT_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
                None => {
                    output_open = false;
                    for (_, reply) in waiters.drain(..) {
                        let _ = reply.send(None);
                    }
                }
            },
            cmd = commands.recv(), if handle_open => match cmd {
                Some(LogCommand::WaitFor { pred, reply }) => {
                    if let Some(line) = kept.iter().find(|l| pred(l)) {
                        let _ = reply.send(Some(line.clone()));
                    } else if output_open {
                        waiters.push((pred, reply));
                    } else {
                        let _ = reply.send(None);
                    }
                }
                Some(LogCommand::Snapshot { reply }) => {
                    let _ = reply.send(kept.iter().cloned().collect());
                }
                // The Service is gone; keep forwarding until the (killed) process's output ends.
                None => handle_open = false,
            },
        }
    }
}
