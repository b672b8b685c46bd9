//! The clients people use (the JavaScript client, the browser page, the `wsmq` CLI, the Python
//! example) against a real system. The JavaScript and Python tests live next to their code and
//! are run from here, so `scripts/test` runs them with everything else against a system the
//! harness started.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use wsmq_tests::binaries::{binaries, workspace_root};
use wsmq_tests::{RECV_TIMEOUT, System, http};

/// How long a whole external test run (node, python) may take.
const EXTERNAL_TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// The websocket URL of the system's gateway.
fn ws_url(system: &System) -> String {
    let addr = system.gateway_addr().expect("gateway runs");
    format!("ws://{addr}/ws")
}

/// Runs `program args` in the workspace root with `env`, echoing its output to stderr (nextest
/// shows it when the test fails), and returns what it did.
pub(super) async fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
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

pub(super) fn node() -> String {
    std::env::var("WSMQ_NODE").unwrap_or_else(|_| "node".to_owned())
}

pub(super) fn assert_node_tests_passed(out: &Output, file: &str) {
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
    // A gateway that requires a token, so a client that drops it fails the tests.
    const TOKEN: &str = "js-client-token-8d21";
    let secrets = tempfile::tempdir().expect("temp dir");
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, format!("js:{TOKEN}\n")).expect("writes the tokens file");
    let system = System::builder()
        .gateway_arg("--tokens", tokens.to_str().expect("utf-8 path"))
        .start()
        .await
        .expect("system starts");
    let url = ws_url(&system);
    let file = "clients/js/test/client.test.js";
    // Node 20 has WebSocket behind a flag; 22 and later have it on (and may drop the flag).
    let has_websocket = run(
        &node(),
        &[
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ],
        &[],
    )
    .await
    .expect("node runs (Node.js 20+ must be installed)")
    .status
    .success();
    let mut args = vec!["--test", "--test-reporter=tap", file];
    if !has_websocket {
        args.insert(0, "--experimental-websocket");
    }
    let out = run(&node(), &args, &[("WSMQ_URL", &url), ("WSMQ_TOKEN", TOKEN)])
        .await
        .expect("node runs (Node.js 20+ must be installed)");
    assert_node_tests_passed(&out, file);
    system.cleanup().await;
}

#[tokio::test]
async fn gateway_serves_the_page_and_the_js_client_it_embeds() {
    let system = System::start().await.expect("system starts");
    let addr = system.gateway_addr().expect("gateway runs");

    let page = http::get(addr, "/").await.expect("GET / answers");
    assert_eq!(page.status, 200);
    assert_eq!(
        header(&page, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(header(&page, "content-security-policy").is_some());
    assert!(String::from_utf8_lossy(&page.body).contains("/app.js"));

    for path in ["/app.js", "/wsmq.js"] {
        let script = http::get(addr, path).await.expect("the script answers");
        assert_eq!(script.status, 200, "{path}");
        assert_eq!(
            header(&script, "content-type"),
            Some("text/javascript; charset=utf-8"),
            "{path}"
        );
    }
    let served = http::get(addr, "/wsmq.js").await.expect("GET /wsmq.js");
    let source = std::fs::read(workspace_root().join("clients/js/wsmq.js")).expect("source");
    assert!(
        served.body == source,
        "/wsmq.js is clients/js/wsmq.js byte for byte"
    );
    system.cleanup().await;
}

fn header<'a>(response: &'a http::Response, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn browser_page_sends_calls_and_shows_their_progress_and_results() {
    assert!(
        workspace_root()
            .join("clients/js/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is missing: run `npm ci` in clients/js (scripts/test does)"
    );
    let system = System::start().await.expect("system starts");
    let addr = system.gateway_addr().expect("gateway runs");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&shots).expect("the screenshot dir is made");
    let shots = shots.to_str().expect("UTF-8 path").to_owned();
    let file = "clients/js/test/browser.test.js";
    let base = format!("http://{addr}");
    let out = run(
        &node(),
        &["--test", "--test-reporter=tap", file],
        &[("WSMQ_HTTP_URL", &base), ("WSMQ_SCREENSHOT_DIR", &shots)],
    )
    .await
    .expect("node runs");
    assert_node_tests_passed(&out, file);
    for name in ["page.png", "page-done.png", "page-phone.png"] {
        let png = std::fs::read(Path::new(&shots).join(name)).expect("the screenshot was saved");
        assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
    }
    eprintln!("screenshots in {shots}");
    system.cleanup().await;
}

/// Runs `wsmq ARGS --url URL` with piped output.
async fn wsmq(url: &str, args: &[&str]) -> Output {
    let cli = binaries().await.expect("binaries are there").cli.clone();
    let cli = cli.to_str().expect("the binary path is UTF-8").to_owned();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--url", url]);
    run(&cli, &all, &[]).await.expect("wsmq runs")
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn cli_prints_the_result_as_json_on_stdout() {
    let system = System::start().await.expect("system starts");
    let url = ws_url(&system);

    let out = wsmq(&url, &["call", "fib", r#"{"n": 10}"#]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout_of(&out).trim(), "55");

    let out = wsmq(
        &url,
        &["call", "echo", r#"{"a": [1, "x"]}"#, "--priority", "9"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let result: Value = serde_json::from_str(&stdout_of(&out)).expect("stdout is JSON");
    assert_eq!(result, json!({"a": [1, "x"]}));
    system.cleanup().await;
}

#[tokio::test]
async fn cli_exit_status_names_the_class_of_failure() {
    let system = System::start().await.expect("system starts");
    let url = ws_url(&system);

    let out = wsmq(&url, &["call", "fail", r#"{"why": "test"}"#]).await;
    assert_eq!(out.status.code(), Some(1), "worker error");
    assert!(stderr_of(&out).contains("4000"), "{}", stderr_of(&out));
    assert!(stdout_of(&out).is_empty());

    let out = wsmq(&url, &["call", "no-such-method", "{}"]).await;
    assert_eq!(out.status.code(), Some(2), "method not found");
    assert!(stderr_of(&out).contains("-32601"), "{}", stderr_of(&out));

    let out = wsmq(&url, &["call", "fib", r#"{"n": 1000}"#]).await;
    assert_eq!(out.status.code(), Some(2), "invalid params (-32602)");

    let out = wsmq(
        &url,
        &["call", "sleep", r#"{"ms": 5000}"#, "--timeout", "200ms"],
    )
    .await;
    assert_eq!(out.status.code(), Some(4), "timeout");
    assert!(stderr_of(&out).contains("-32001"), "{}", stderr_of(&out));

    let out = wsmq(&url, &["call", "echo", "not json"]).await;
    assert_eq!(
        out.status.code(),
        Some(64),
        "bad params on the command line"
    );

    let out = wsmq(&url, &["call", "echo", "{}", "--priority", "10"]).await;
    assert_eq!(out.status.code(), Some(64), "priority out of range");

    system.cleanup().await;

    // Nothing listens there any more.
    let out = wsmq(&url, &["call", "echo", "{}"]).await;
    assert_eq!(out.status.code(), Some(8), "cannot connect");
}

#[tokio::test]
async fn cli_prints_progress_as_plain_lines_when_piped() {
    let system = System::start().await.expect("system starts");
    let url = ws_url(&system);

    let out = wsmq(&url, &["call", "progress", r#"{"steps": 3, "ms": 20}"#]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout_of(&out)).expect("stdout is JSON"),
        json!({"done": 3})
    );
    let progress: Vec<Value> = stderr_of(&out)
        .lines()
        .filter_map(|l| l.strip_prefix("progress "))
        .map(|v| serde_json::from_str(v).expect("a progress line holds JSON"))
        .collect();
    assert_eq!(
        progress,
        (1..=3)
            .map(|step| json!({"step": step, "of": 3}))
            .collect::<Vec<_>>()
    );
    // No escape codes when not on a terminal.
    assert!(!stderr_of(&out).contains('\u{1b}'), "{:?}", stderr_of(&out));
    system.cleanup().await;
}

#[tokio::test]
async fn cli_many_makes_every_call_and_prints_one_line_for_each() {
    let system = System::start().await.expect("system starts");
    let url = ws_url(&system);

    let out = wsmq(
        &url,
        &[
            "call",
            "echo",
            r#"{"k": 1}"#,
            "--many",
            "25",
            "--concurrency",
            "8",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let mut calls: Vec<u64> = stdout_of(&out)
        .lines()
        .map(|l| {
            let line: Value = serde_json::from_str(l).expect("each line is JSON");
            assert_eq!(line["result"], json!({"k": 1}), "{line}");
            line["call"].as_u64().expect("call number")
        })
        .collect();
    calls.sort_unstable();
    assert_eq!(calls, (1..=25).collect::<Vec<_>>());

    // One failure among them sets the exit status.
    let out = wsmq(&url, &["call", "fail", "{}", "--many", "3"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_of(&out).lines().count(), 3);
    assert!(
        stderr_of(&out).contains("0 ok, 3 failed"),
        "{}",
        stderr_of(&out)
    );
    system.cleanup().await;
}

#[tokio::test]
async fn cli_interrupted_cancels_its_call_and_exits_130() {
    let system = System::start().await.expect("system starts");
    let url = ws_url(&system);
    let cli = binaries().await.expect("binaries").cli.clone();
    let mut child = Command::new(cli)
        .args([
            "call",
            "progress",
            r#"{"steps": 1000, "ms": 50}"#,
            "--url",
            &url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("wsmq starts");
    // Wait for the first progress line: the call is running on a worker.
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let first = tokio::time::timeout(RECV_TIMEOUT, lines.next_line())
        .await
        .expect("progress comes in time")
        .expect("stderr reads");
    assert!(
        first.as_deref().is_some_and(|l| l.starts_with("progress ")),
        "{first:?}"
    );
    let pid = Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid fits"));
    kill(pid, Signal::SIGINT).expect("SIGINT is sent");
    let status = tokio::time::timeout(RECV_TIMEOUT, child.wait())
        .await
        .expect("wsmq exits in time after Ctrl-C")
        .expect("wait works");
    assert_eq!(status.code(), Some(130));
    // The gateway heard `$/cancel` and ended the call as cancelled.
    let addr = system.gateway_addr().expect("gateway runs");
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let metrics = http::get(addr, "/metrics").await.expect("metrics answer");
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        if text.lines().any(|l| {
            l.starts_with("wsmq_calls_total{")
                && l.contains(r#"method="progress""#)
                && l.contains(r#"outcome="cancelled""#)
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no cancelled call in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    system.cleanup().await;
}

#[tokio::test]
async fn python_example_shows_every_kind_of_answer() {
    let system = System::start().await.expect("system starts");
    let url = ws_url(&system);
    let python = std::env::var("WSMQ_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let out = run(
        &python,
        &["clients/python/example.py", "--url", &url],
        &[("PYTHONUNBUFFERED", "1")],
    )
    .await
    .expect("python3 runs (needs `pip install websockets`)");
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let expected = [
        // fib answers before the sleep that was sent first.
        "finished: 832040",
        r#"finished: {"slept_ms": 1000}"#,
        r#"progress: {"of": 3, "step": 1}"#,
        r#"progress: {"of": 3, "step": 2}"#,
        r#"progress: {"of": 3, "step": 3}"#,
        r#"progress result: {"done": 3}"#,
        "worker error: 4000 requested failure",
        "timeout: -32001",
        // The gateway's answer to the cancelled call, not the local asyncio cancel.
        "cancelled: -32002 cancelled",
    ];
    assert_eq!(stdout_of(&out).lines().collect::<Vec<_>>(), expected);
    system.cleanup().await;
}
