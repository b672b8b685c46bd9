//! The Python worker SDK (`clients/python/wsmq_worker`) through the real system: its example
//! worker, started with `python3 -m wsmq_worker`, behind a real gateway and bridge. Its unit
//! tests (the pure logic) live beside it and run from here, so `scripts/test` runs them too.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use wsmq_tests::binaries::workspace_root;
use wsmq_tests::rabbitmq::rabbitmqctl;
use wsmq_tests::rpc::{self, CANCELLED, INTERNAL_ERROR, error_code};
use wsmq_tests::system::{python, python_sdk_env};
use wsmq_tests::{System, WsClient};

/// How long the SDK's unit tests may take (they take well under a second).
const UNIT_TESTS_TIMEOUT: Duration = Duration::from_secs(120);

/// A system with the Python SDK's example worker as its only worker.
async fn python_system(concurrency: u32) -> (System, WsClient) {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    system
        .start_python_sdk_worker(concurrency)
        .await
        .expect("the Python SDK worker starts");
    let client = system.client().await.expect("client connects");
    (system, client)
}

/// Reads frames until the `$/progress` of call `id`; returns its value.
async fn next_progress_of(client: &mut WsClient, id: &str) -> Value {
    loop {
        let frame = client.recv_json().await.expect("a frame comes");
        if let Some((of, value)) = rpc::progress(&frame)
            && of == id
        {
            return value.clone();
        }
        assert!(
            frame.get("id") != Some(&Value::from(id)),
            "{id} ended first: {frame}"
        );
    }
}

#[tokio::test]
async fn python_sdk_passes_its_unit_tests() {
    let out = tokio::time::timeout(
        UNIT_TESTS_TIMEOUT,
        Command::new(python())
            .args([
                "-m",
                "unittest",
                "discover",
                "-v",
                "-s",
                "clients/python/tests",
            ])
            .current_dir(workspace_root())
            .envs(python_sdk_env().expect("the env is built"))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the unit tests end in time")
    .expect("python3 runs");
    // unittest reports on stderr: one line per test, then "Ran N tests" and "OK".
    let report = String::from_utf8_lossy(&out.stderr);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "the unit tests failed: {}",
        out.status
    );
    let ran: usize = report
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .expect("unittest says how many tests ran");
    assert!(ran > 0, "no test ran");
    assert_eq!(report.lines().last(), Some("OK"), "{report}");
}

#[tokio::test]
async fn python_sdk_worker_answers_a_call_and_sends_its_progress_in_order() {
    let (system, mut client) = python_system(2).await;

    let params = json!({"text": "héllo→", "n": [1, 2.5, null, {"deep": true}]});
    let result = client
        .call_result("echo", params.clone())
        .await
        .expect("echo");
    assert_eq!(result, params);

    client
        .send_json(&rpc::request("p", "conf.progress", json!({"steps": 5})))
        .await
        .expect("sends conf.progress");
    let (before, response) = client
        .recv_until_response(&json!("p"))
        .await
        .expect("conf.progress is answered");
    let reports: Vec<Value> = before
        .iter()
        .map(|f| {
            let (id, value) = rpc::progress(f).unwrap_or_else(|| panic!("not a progress: {f}"));
            assert_eq!(id, "p", "{f}");
            value.clone()
        })
        .collect();
    let expected: Vec<Value> = (1..=5).map(|step| json!({"step": step})).collect();
    assert_eq!(
        reports, expected,
        "every report, in order, before the result"
    );
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"steps": 5})),
        "{response}"
    );

    system.cleanup().await;
}

#[tokio::test]
async fn python_sdk_job_error_passes_through_with_code_message_and_data() {
    let (system, mut client) = python_system(2).await;

    let data = json!({"why": "corrupt header", "at": [3, 4]});
    let response = client
        .call(
            "conf.fail",
            json!({"code": 4001, "message": "bad image", "data": data}),
        )
        .await
        .expect("conf.fail is answered");
    assert_eq!(
        response["error"],
        json!({"code": 4001, "message": "bad image", "data": data}),
        "{response}"
    );
    let response = client
        .call("conf.fail", json!({"code": -32050, "message": "no data"}))
        .await
        .expect("conf.fail is answered");
    assert_eq!(
        response["error"],
        json!({"code": -32050, "message": "no data"}),
        "no data member when the JobError has none: {response}"
    );

    system.cleanup().await;
}

#[tokio::test]
async fn python_sdk_exception_is_answered_internal_error_and_the_worker_keeps_serving() {
    let (system, mut client) = python_system(1).await;

    let response = client
        .call("conf.raise", json!({}))
        .await
        .expect("conf.raise is answered");
    assert_eq!(
        response["error"],
        json!({"code": INTERNAL_ERROR, "message": "internal error: method conf.raise failed"}),
        "the documented error, and nothing of the exception: {response}"
    );
    // The one worker thread survived it.
    let result = client
        .call_result("conf.echo", json!({"after": "raise"}))
        .await
        .expect("the worker still serves");
    assert_eq!(result, json!({"after": "raise"}));

    system.cleanup().await;
}

#[tokio::test]
async fn python_sdk_cancel_stops_a_running_job_and_frees_its_thread() {
    let (system, mut client) = python_system(1).await;

    client
        .send_json(&rpc::request(
            "long",
            "conf.sleep",
            json!({"ms": 60_000, "tag": "cancelled"}),
        ))
        .await
        .expect("sends the long sleep");
    assert_eq!(
        next_progress_of(&mut client, "long").await,
        json!({"started": true})
    );
    client
        .send_json(&rpc::cancel("long"))
        .await
        .expect("sends $/cancel");
    let response = client.recv_json().await.expect("the cancel is answered");
    assert_eq!(response["id"], "long", "{response}");
    assert_eq!(error_code(&response), Some(CANCELLED), "{response}");

    // The worker's only thread held the sleep: the echo runs only if the SDK stopped it (well
    // before its 60 s), the next sleep only if it also acked it (the queue's prefetch is 1).
    let result = client
        .call_result("conf.echo", json!(["after the cancel"]))
        .await
        .expect("an echo after the cancelled sleep is answered");
    assert_eq!(result, json!(["after the cancel"]));
    client
        .send_json(&rpc::request("next", "conf.sleep", json!({"ms": 0})))
        .await
        .expect("sends the next sleep");
    let (_started, response) = client
        .recv_until_response(&json!("next"))
        .await
        .expect("a sleep after the cancelled one is answered");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"slept": 0})),
        "{response}"
    );
    let runs = client
        .call_result("conf.runs", json!({"tag": "cancelled"}))
        .await
        .expect("conf.runs");
    assert_eq!(runs, json!({"runs": 1}), "the cancelled job ran once");
    client
        .expect_no_stray_frames()
        .await
        .expect("the cancelled call is answered only once");

    system.cleanup().await;
}

#[tokio::test]
async fn python_sdk_worker_drains_on_sigterm_and_exits_0() {
    let (mut system, mut client) = python_system(2).await;

    client
        .send_json(&rpc::request(
            "running",
            "conf.sleep",
            json!({"ms": 1500, "tag": "drain"}),
        ))
        .await
        .expect("sends the sleep");
    assert_eq!(
        next_progress_of(&mut client, "running").await,
        json!({"started": true})
    );
    // SIGTERM while the job runs: the worker stops consuming, lets the job finish and exits.
    let statuses = system.stop_workers().await.expect("the worker exits");
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].code(), Some(0), "exit status {}", statuses[0]);
    let response = client
        .recv_json()
        .await
        .expect("the running job is answered");
    assert_eq!(response["id"], "running", "{response}");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"slept": 1500})),
        "{response}"
    );

    system.cleanup().await;
}

/// The broker's id of the connection of worker process `pid` (found by its connection name).
async fn worker_connection(pid: u32) -> String {
    let name = format!("\"wsmq-worker (python) pid {pid}\"");
    let listing = rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .await
    .expect("rabbitmqctl lists the connections");
    listing
        .lines()
        .find(|line| line.contains(&name))
        .and_then(|line| line.split('\t').next())
        .unwrap_or_else(|| panic!("no connection named {name}:\n{listing}"))
        .to_owned()
}

/// A worker of the test's own whose first job in this process runs until it is told to stop
/// (its connection lost), and whose later jobs answer at once: the test needs no timing.
const FIRST_RUN_HANGS_WORKER: &str = r#"
import os, threading
from wsmq_worker import Worker

worker = Worker(queue_prefix=os.environ["WSMQ_QUEUE_PREFIX"], concurrency=1)
runs = 0
lock = threading.Lock()

@worker.method("first_run_hangs")
def first_run_hangs(params, job):
    global runs
    with lock:
        runs += 1
        run = runs
    job.progress({"run": run})
    if run == 1:
        job.cancelled.wait(60)
        return {"run": run, "cancelled": job.cancelled.is_set()}
    return {"run": run}

@worker.method("echo")
def echo(params, job):
    return params
"#;

/// Writes `source` as a Python module in `dir`; returns the `file.py:worker` target.
fn worker_module(dir: &tempfile::TempDir, name: &str, source: &str) -> String {
    let module = dir.path().join(format!("{name}.py"));
    std::fs::write(&module, source).expect("the worker module is written");
    format!("{}:worker", module.display())
}

#[tokio::test]
async fn python_sdk_worker_reconnects_and_a_job_of_the_lost_connection_is_answered_once() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    let dir = tempfile::tempdir().expect("a temp dir");
    let target = worker_module(&dir, "first_run_hangs", FIRST_RUN_HANGS_WORKER);
    system
        .start_python_sdk_target(&target, &["first_run_hangs", "echo"], 1, &[])
        .await
        .expect("the test's worker starts");
    let pid = system.worker_pid(0).expect("the worker runs");
    let connection = worker_connection(pid).await;
    let mut client = system.client().await.expect("client connects");

    client
        .send_json(&rpc::request("cut", "first_run_hangs", json!({})))
        .await
        .expect("sends the call");
    assert_eq!(
        next_progress_of(&mut client, "cut").await,
        json!({"run": 1})
    );
    // From the broker's side, as a failover or a network cut would end it (RabbitMQ itself
    // keeps running).
    rabbitmqctl(&[
        "close_connection",
        &connection,
        "the test cuts the worker off",
    ])
    .await
    .expect("rabbitmqctl closes the connection");

    // The SDK told the first run to stop (else it holds the only thread for 60 s) and did not
    // ack its job, so RabbitMQ redelivers it once the worker has reconnected: the second run
    // answers it, and only it.
    let (reports, response) = client
        .recv_until_response(&json!("cut"))
        .await
        .expect("the job is answered after the reconnection");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"run": 2})),
        "{response}"
    );
    assert_eq!(
        reports,
        [
            json!({"jsonrpc": "2.0", "method": "$/progress", "params": {"id": "cut", "value": {"run": 2}}})
        ],
        "the redelivered run's report"
    );
    client
        .expect_no_stray_frames()
        .await
        .expect("the job is answered only once");

    system.cleanup().await;
}

#[tokio::test]
async fn python_sdk_declares_classic_queues_as_the_rust_worker_does() {
    // The Rust demo worker declares echo, sleep, progress and fail first; the Python worker's
    // declarations of the same queues are refused (and it never gets ready) unless its
    // arguments are exactly the same.
    let mut system = System::start().await.expect("system starts");
    system
        .start_python_sdk_worker(2)
        .await
        .expect("the Python SDK worker declares the Rust worker's queues");
    let mut client = system.client().await.expect("client connects");
    let result = client
        .call_result("echo", json!({"served": "by either"}))
        .await
        .expect("echo");
    assert_eq!(result, json!({"served": "by either"}));
    system.cleanup().await;
}

#[tokio::test]
async fn python_sdk_declares_quorum_queues_as_the_rust_worker_does() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    system
        .start_python_sdk_worker_with(
            2,
            &[("WSMQ_QUEUE_TYPE", "quorum"), ("WSMQ_DELIVERY_LIMIT", "2")],
        )
        .await
        .expect("the Python SDK worker starts on quorum queues");
    // Now the Rust demo worker redeclares echo, sleep, progress and fail: refused unless the
    // Python worker's quorum arguments are exactly its own.
    system
        .start_worker_with(2, &["--queue-type", "quorum", "--delivery-limit", "2"])
        .await
        .expect("the Rust worker declares the Python worker's quorum queues");
    let mut client = system.client().await.expect("client connects");
    let result = client
        .call_result("echo", json!(["quorum"]))
        .await
        .expect("echo");
    assert_eq!(result, json!(["quorum"]));
    system.cleanup().await;
}

#[tokio::test]
async fn python_sdk_worker_names_a_dead_broker_url_and_serves_from_the_next() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    // Nothing listens on port 1: the worker names it and goes on to the system's broker.
    let urls = format!("amqp://guest:guest@127.0.0.1:1/%2f,{}", system.amqp_url());
    system
        .start_python_sdk_worker_with(1, &[("WSMQ_AMQP", &urls)])
        .await
        .expect("the Python SDK worker starts on the second URL");
    let worker = system.worker_mut(0).expect("the worker runs");
    worker
        .wait_for_log("the dead URL named, without its password", |l| {
            l.text
                .contains("cannot connect to the broker at amqp://guest:***@127.0.0.1:1/%2f")
        })
        .await
        .expect("the dead URL is logged");
    let mut client = system.client().await.expect("client connects");
    let result = client
        .call_result("conf.echo", json!({"via": "the second URL"}))
        .await
        .expect("conf.echo");
    assert_eq!(result, json!({"via": "the second URL"}));
    system.cleanup().await;
}

/// A worker of the test's own, run by the SDK's command line: a method whose result JSON
/// cannot hold, beside one that works.
const UNENCODABLE_WORKER: &str = r#"
import os
from wsmq_worker import Worker

worker = Worker(queue_prefix=os.environ["WSMQ_QUEUE_PREFIX"], concurrency=1)

@worker.method("unencodable")
def unencodable(params, job):
    return {"a set": {1, 2}}

@worker.method("echo")
def echo(params, job):
    return params
"#;

#[tokio::test]
async fn python_sdk_result_that_is_not_json_is_answered_internal_error_for_that_call_only() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    let dir = tempfile::tempdir().expect("a temp dir");
    let target = worker_module(&dir, "unencodable_worker", UNENCODABLE_WORKER);
    system
        .start_python_sdk_target(&target, &["unencodable", "echo"], 1, &[])
        .await
        .expect("the test's worker starts");
    let mut client = system.client().await.expect("client connects");

    let response = client
        .call("unencodable", json!({}))
        .await
        .expect("the call is answered");
    assert_eq!(
        response["error"],
        json!({
            "code": INTERNAL_ERROR,
            "message": "internal error: reply could not be encoded as JSON: Object of type set is not JSON serializable"
        }),
        "{response}"
    );
    let result = client
        .call_result("echo", json!(["next"]))
        .await
        .expect("the worker still serves");
    assert_eq!(result, json!(["next"]));

    system.cleanup().await;
}
