//! The child processes the kit runs (a bridge, a gateway, the worker under test) and their output.
//!
//! Each child's stdout and stderr are read line by line by a task of their own, forwarded to the
//! kit's stderr with a `[name]` prefix when asked, and the JSON log lines kept (the last
//! [`MAX_KEPT_LINES`]) in a `watch` value, so the kit can wait for "gateway listening" without a
//! reader ever blocking the child on a full pipe.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// JSON log lines kept per child for [`Process::wait_for_message`]; older ones are dropped.
/// The kit waits only for start-up lines, logged long before this many.
const MAX_KEPT_LINES: usize = 1000;

/// Pause between two looks at whether a process group is gone.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// What a child has printed so far.
#[derive(Debug, Default)]
struct Output {
    /// The JSON lines (tracing-subscriber's format), oldest first.
    json: VecDeque<Value>,
    /// How many of stdout and stderr are still open.
    open: u8,
}

/// A running child process. Dropping it kills the process (and signals go to its process group
/// when it has one of its own), so a kit that fails leaves nothing behind.
#[derive(Debug)]
pub(crate) struct Process {
    name: String,
    child: Child,
    output: watch::Receiver<Output>,
    /// Whether the child leads a process group of its own, which signals then reach whole.
    group: bool,
    /// The child's pid, which is also its group's id when it leads one: kept, since the group
    /// may outlive the leader (a shell that did not `exec` its command).
    pid: Option<Pid>,
}

impl Process {
    /// Starts `cmd` with stdin closed and its output read as described in the module docs;
    /// `show` forwards every line to stderr. With `group`, the child leads a new process group.
    pub(crate) fn spawn(name: &str, mut cmd: Command, show: bool, group: bool) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if group {
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (tx, output) = watch::channel(Output {
            open: 2,
            ..Output::default()
        });
        tokio::spawn(read_lines(name.to_owned(), stdout, tx.clone(), show));
        tokio::spawn(read_lines(name.to_owned(), stderr, tx, show));
        Ok(Self {
            name: name.to_owned(),
            child,
            output,
            group,
            pid,
        })
    }

    /// The process's name, as in its output's prefix.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `limit` for a JSON log line whose `fields.message` is `message`, and returns
    /// that line.
    pub(crate) async fn wait_for_message(
        &mut self,
        message: &str,
        limit: Duration,
    ) -> Result<Value> {
        let is_it = |line: &Value| line["fields"]["message"].as_str() == Some(message);
        // Ok(Some(line)), Ok(None) when the output ended first, Err when the time is up.
        let found = {
            let mut output = self.output.clone();
            let waited = tokio::time::timeout(
                limit,
                output.wait_for(|out| out.open == 0 || out.json.iter().any(is_it)),
            )
            .await;
            match waited {
                Ok(Ok(out)) => Ok(out.json.iter().find(|l| is_it(l)).cloned()),
                Ok(Err(_)) => Ok(None),
                Err(elapsed) => Err(elapsed),
            }
        };
        let found = match found {
            Ok(found) => found,
            Err(_) => bail!(
                "{} did not log {message:?} within {limit:?} (run with --verbose to see its log)",
                self.name
            ),
        };
        if let Some(line) = found {
            return Ok(line);
        }
        let status = self.exited_within(Duration::from_secs(1)).await;
        bail!("{} ended ({status}) without logging {message:?}", self.name)
    }

    /// The exit status if the process has exited, without waiting.
    pub(crate) fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// How the process ended, as text, waiting up to `limit` for it to.
    async fn exited_within(&mut self, limit: Duration) -> String {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("exit status unknown: {e}"),
            Err(_) => "still running".to_owned(),
        }
    }

    /// Sends `signal` to the process, or to its whole group when it leads one.
    fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.pid.context("the process has no pid")?;
        if self.group {
            killpg(pid, signal)
        } else {
            kill(pid, signal)
        }
        .with_context(|| format!("cannot send {signal} to {}", self.name))
    }

    /// Whether any process of the group is left (always false without a group). With `reap`,
    /// first collects the group's exited orphans, which are the kit's children since it is their
    /// subreaper ([`become_subreaper`]): a zombie still counts as a process.
    fn group_alive(&self, reap: bool) -> bool {
        let (true, Some(pid)) = (self.group, self.pid) else {
            return false;
        };
        if reap {
            let group = Pid::from_raw(-pid.as_raw());
            while let Ok(status) = waitpid(group, Some(WaitPidFlag::WNOHANG)) {
                if status == WaitStatus::StillAlive {
                    break;
                }
            }
        }
        killpg(pid, None).is_ok()
    }

    /// Waits until the group is empty, polling; `false` if it still is not at `until`.
    async fn group_gone(&self, until: tokio::time::Instant) -> bool {
        while self.group_alive(true) {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(GROUP_POLL).await;
        }
        true
    }

    /// SIGKILL (to the group, if any), then waits up to `limit` for the process to be reaped.
    pub(crate) async fn kill(&mut self, limit: Duration) -> Result<()> {
        let until = tokio::time::Instant::now() + limit;
        if self.try_status().is_none() || self.group_alive(true) {
            self.signal(Signal::SIGKILL)?;
        }
        tokio::time::timeout_at(until, self.child.wait())
            .await
            .with_context(|| format!("{} still runs {limit:?} after SIGKILL", self.name))?
            .with_context(|| format!("cannot wait for {}", self.name))?;
        if !self.group_gone(until).await {
            bail!(
                "{}'s process group still runs {limit:?} after SIGKILL",
                self.name
            );
        }
        Ok(())
    }

    /// SIGTERM (to the group, if any) and waits up to `limit` for the process to exit; killed
    /// if it does not, which is an error.
    pub(crate) async fn terminate(mut self, limit: Duration) -> Result<ExitStatus> {
        let until = tokio::time::Instant::now() + limit;
        let status = match self.try_status() {
            Some(status) if !self.group_alive(true) => return Ok(status),
            _ => {
                self.signal(Signal::SIGTERM)?;
                tokio::time::timeout_at(until, self.child.wait()).await
            }
        };
        match status {
            // The leader is gone; what else it started must be too.
            Ok(status) if self.group_gone(until).await => {
                status.with_context(|| format!("cannot wait for {}", self.name))
            }
            _ => {
                let _ = self.kill(limit).await;
                bail!(
                    "{} did not exit within {limit:?} of SIGTERM; killed it",
                    self.name
                )
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // `kill_on_drop` reaches the child only; a worker's group may hold more processes.
        // Not reaping here: tokio may not have reaped the leader yet, and must be the one to.
        if self.try_status().is_none() || self.group_alive(false) {
            let _ = self.signal(Signal::SIGKILL);
        }
    }
}

/// Reads `src` line by line (lossily: a child cannot stall the kit with invalid UTF-8) until
/// EOF, keeping JSON lines and forwarding all of them when `show`.
async fn read_lines(
    name: String,
    src: impl AsyncRead + Unpin,
    output: watch::Sender<Output>,
    show: bool,
) {
    let mut src = BufReader::new(src);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match src.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end_matches(['\n', '\r']);
                if show {
                    eprintln!("[{name}] {text}");
                }
                if let Ok(line) = serde_json::from_str::<Value>(text) {
                    output.send_modify(|out| {
                        if out.json.len() == MAX_KEPT_LINES {
                            out.json.pop_front();
                        }
                        out.json.push_back(line);
                    });
                }
            }
        }
    }
    output.send_modify(|out| out.open = out.open.saturating_sub(1));
}

/// Makes the kit the reaper of its descendants' orphans (Linux `PR_SET_CHILD_SUBREAPER`): a
/// worker started by a shell that does not `exec` it outlives the shell on SIGTERM while it
/// drains, and the kit must see it exit, not leave its zombie to a PID 1 that may never reap it.
pub(crate) fn become_subreaper() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("cannot become a child subreaper")
}
