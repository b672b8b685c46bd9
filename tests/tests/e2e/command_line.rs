//! The command line of the daemons: a bad one exits 64 (`EX_USAGE`), which the systemd units
//! do not restart (`RestartPreventExitStatus=64`); `--help` and `--version` succeed.

use std::path::Path;
use std::process::{Output, Stdio};

use tokio::process::Command;
use wsmq_tests::STARTUP_TIMEOUT;
use wsmq_tests::binaries::binaries;

/// Runs `program args` and returns what it did.
async fn run(program: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(STARTUP_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program:?} {args:?} ran over {STARTUP_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}"))
}

#[tokio::test]
async fn daemons_exit_64_on_a_bad_command_line_and_0_for_help() {
    let bins = binaries().await.expect("binaries");
    for program in [&bins.gateway, &bins.bridge, &bins.worker] {
        let out = run(program, &["--bogus"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{program:?} --bogus: {stderr}");
        assert!(
            stderr.contains("--bogus"),
            "{program:?} names the flag: {stderr}"
        );

        let out = run(program, &["--help"]).await;
        assert_eq!(out.status.code(), Some(0), "{program:?} --help");
        assert!(
            !out.stdout.is_empty(),
            "{program:?} --help prints on stdout"
        );
    }
}
