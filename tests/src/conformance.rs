//! Running the conformance kit (`wsmq-conformance`) against a worker, for the e2e tests that show
//! each worker (the Rust demo worker, the pika example, the SDKs' examples) follows the contract.
//!
//! [`assert_conforms`] is the whole test for a worker: it runs the kit with `--start` (its own
//! bridge and gateway on a per-test queue prefix, the worker started from the given command line
//! in the repository root) and fails unless every check the kit has passed. [`run_kit`] returns
//! the [`KitReport`] instead, for a test that expects some checks to fail.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::Command;

use crate::binaries::{binaries, workspace_root};
use crate::{amqp_url, broker};

/// How long one run of the kit may take: it bounds each of its checks itself (a dozen, at most
/// 25 s each) and a conforming worker passes in about 15 s, so this only stops a hung kit.
pub const KIT_TIMEOUT: Duration = Duration::from_secs(300);

/// What one run of the kit printed, and how it exited.
#[derive(Debug)]
pub struct KitReport {
    /// The exit status: 0 only when every check passed.
    pub status: ExitStatus,
    /// Its stdout: one `PASS|FAIL|SKIP <check>: <detail>` line per check, then the summary.
    pub lines: Vec<String>,
}

impl KitReport {
    /// The verdict (`PASS`, `FAIL` or `SKIP`) of check `name`, if it ran.
    pub fn verdict(&self, name: &str) -> Option<&str> {
        self.lines.iter().find_map(|line| {
            let (verdict, rest) = line.split_once(' ')?;
            let (check, _) = rest.split_once(':')?;
            (check == name).then_some(verdict)
        })
    }

    /// The names of the checks with verdict `verdict`, in the order they ran.
    pub fn with_verdict(&self, verdict: &str) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|line| {
                let rest = line.strip_prefix(verdict)?.strip_prefix(' ')?;
                Some(rest.split_once(':')?.0.to_owned())
            })
            .collect()
    }
}

/// The Python interpreter the tests run workers with: `WSMQ_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("WSMQ_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Every check the kit has (`wsmq-conformance --list`), in its running order.
pub async fn all_checks() -> Result<Vec<String>> {
    let bins = binaries().await?;
    let out = Command::new(&bins.conformance)
        .arg("--list")
        .output()
        .await
        .context("cannot run wsmq-conformance --list")?;
    let text = String::from_utf8(out.stdout).context("--list is not UTF-8")?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// Runs the kit with `--start` against the worker `worker_cmd` (run by `sh -c` in the
/// repository root, with `WSMQ_AMQP`, `WSMQ_QUEUE_PREFIX` and `WSMQ_CONCURRENCY` set) on a fresh
/// queue prefix, then deletes that prefix's queues, the demo methods' too, which the SDKs'
/// examples serve beside the conformance methods (the kit does so too; this covers a kit that
/// died). The kit's stderr (the worker's log among it) is copied to the test's stderr.
pub async fn run_kit(worker_cmd: &str) -> Result<KitReport> {
    let bins = binaries().await?;
    let prefix = format!("wsmq-test.{}.", uuid::Uuid::new_v4().simple());
    let args = [
        "--start".to_owned(),
        "--bridge-bin".to_owned(),
        bins.bridge.display().to_string(),
        "--gateway-bin".to_owned(),
        bins.gateway.display().to_string(),
        "--amqp".to_owned(),
        amqp_url(),
        "--queue-prefix".to_owned(),
        prefix.clone(),
        "--worker-cmd".to_owned(),
        worker_cmd.to_owned(),
    ];
    let report = run_kit_with(&args).await;
    let queues: Vec<String> = METHODS
        .iter()
        .chain(&crate::system::DEMO_METHODS)
        .map(|m| wsmq_amqp_proto::queue_name(&prefix, m))
        .chain([wsmq_amqp_proto::dead_letter_exchange_name(&prefix)])
        .collect();
    let exchanges = [
        wsmq_amqp_proto::cancel_exchange_name(&prefix),
        wsmq_amqp_proto::dead_letter_exchange_name(&prefix),
    ];
    broker::delete_topology(&amqp_url(), &queues, &exchanges).await?;
    report
}

/// Runs the kit with exactly `args` (in the repository root), within [`KIT_TIMEOUT`].
pub async fn run_kit_with(args: &[String]) -> Result<KitReport> {
    let bins = binaries().await?;
    eprintln!("[harness] wsmq-conformance {}", args.join(" "));
    let run = Command::new(&bins.conformance)
        .args(args)
        .current_dir(workspace_root())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(KIT_TIMEOUT, run)
        .await
        .with_context(|| format!("wsmq-conformance did not finish within {KIT_TIMEOUT:?}"))?
        .context("cannot run wsmq-conformance")?;
    // Its stderr (the worker's log among it) first, then its verdicts: nextest shows both when
    // the test fails. (tokio's `output` pipes both streams, whatever was asked before.)
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines() {
        eprintln!("[conformance] {line}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("[harness] wsmq-conformance ({}):\n{stdout}", out.status);
    Ok(KitReport {
        status: out.status,
        lines: stdout.lines().map(str::to_owned).collect(),
    })
}

/// Runs the kit against `worker_cmd` ([`run_kit`]) and panics, showing every line that is not a
/// PASS, unless it exited 0 with a PASS for every check the kit has.
pub async fn assert_conforms(worker_cmd: &str) {
    let all = all_checks().await.expect("the kit lists its checks");
    let report = run_kit(worker_cmd).await.expect("the kit runs");
    assert_eq!(
        report.with_verdict("PASS"),
        all,
        "every check passes; the others: {:#?}",
        report
            .lines
            .iter()
            .filter(|l| !l.starts_with("PASS "))
            .collect::<Vec<_>>()
    );
    assert!(
        report.status.success(),
        "the kit exits 0: {}",
        report.status
    );
}

/// The methods a worker under the kit serves (docs/conformance.md), whose queues are deleted
/// after each run.
pub const METHODS: [&str; 7] = [
    "conf.echo",
    "conf.progress",
    "conf.sleep",
    "conf.runs",
    "conf.fail",
    "conf.caller",
    "conf.raise",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn report_lines_are_read_by_verdict_and_check() {
        let report = KitReport {
            status: ExitStatus::from_raw(1 << 8),
            lines: [
                "PASS echo: 3 values came back unchanged [0.1 s]",
                "FAIL deadline-skip: the job whose deadline had passed was run [0.2 s]",
                "SKIP redelivery: needs --worker-cmd: the kit must kill it [0.0 s]",
                "conformance: 1 passed, 1 failed, 1 skipped of 3 in 2.0 s",
            ]
            .map(str::to_owned)
            .to_vec(),
        };
        assert_eq!(report.verdict("echo"), Some("PASS"));
        assert_eq!(report.verdict("redelivery"), Some("SKIP"));
        assert_eq!(report.verdict("caller"), None);
        assert_eq!(report.with_verdict("FAIL"), ["deadline-skip"]);
        assert_eq!(report.with_verdict("PASS"), ["echo"]);
        assert_eq!(report.status.code(), Some(1));
    }
}
