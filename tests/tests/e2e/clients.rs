//! The clients people use (the JavaScript client, the browser page, the `wsmq` CLI, the Python
//! example) against a real system. The JavaScript and Python tests live next to their code and
//! are run from here, so `scripts/test` runs them with everything else against a system the
//! harness started.

use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::Command;
use wsmq_tests::System;
use wsmq_tests::binaries::workspace_root;

/// How long a whole external test run (node, python) may take.
const EXTERNAL_TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// The websocket URL of the system's gateway.
fn ws_url(system: &System) -> String {
    let addr = system.gateway_addr().expect("gateway runs");
    format!("ws://{addr}/ws")
}

/// Runs `program args` in the workspace root with `env`, echoing its output to stderr (nextest
/// shows it when the test fails), and returns what it did.
async fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(workspace_root())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(EXTERNAL_TEST_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("{program} {args:?} ran over {EXTERNAL_TEST_TIMEOUT:?}"))?
        .with_context(|| format!("cannot run {program}"))?;
    eprintln!(
        "[{program}] {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn node() -> String {
    std::env::var("WSMQ_NODE").unwrap_or_else(|_| "node".to_owned())
}

fn assert_node_tests_passed(out: &Output, file: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{file} failed: {}", out.status);
    // The runner prints `# pass N` / `# fail N`; a run of no test must not pass for a green one.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("# pass ") && l != "# pass 0"),
        "{file} ran no test"
    );
    assert!(stdout.contains("# fail 0"), "{file} had failures");
}

#[tokio::test]
async fn js_client_passes_its_node_tests_against_a_real_system() {
    let system = System::start().await.expect("system starts");
    let url = ws_url(&system);
    let file = "clients/js/test/client.test.js";
    let out = run(
        &node(),
        &[
            "--experimental-websocket",
            "--test",
            "--test-reporter=tap",
            file,
        ],
        &[("WSMQ_URL", &url)],
    )
    .await
    .expect("node runs (Node.js 20+ must be installed)");
    assert_node_tests_passed(&out, file);
    system.cleanup().await;
}
