//! The Node worker SDK (`clients/js/worker`) against a real system: its own unit tests, its
//! spelling of the AMQP contract against `wsmq-amqp-proto`, and its example worker
//! (`examples/demo.js`, run by the package's command line) serving calls, progress, errors,
//! cancellations and a drain on SIGTERM, through the real gateway and bridge.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use lapin::options::QueueDeclareOptions;
use lapin::types::AMQPValue;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use wsmq_amqp_proto as contract;
use wsmq_tests::binaries::workspace_root;
use wsmq_tests::rpc::{self, CANCELLED, INTERNAL_ERROR, error_code};
use wsmq_tests::{Service, System, broker, rabbitmq};

use super::clients::{assert_node_tests_passed, node, run};

/// The package's command line and the example worker it runs.
const CLI: &str = "clients/js/worker/bin/wsmq-worker.js";
const EXAMPLE: &str = "clients/js/worker/examples/demo.js";
/// Every method the example serves: their queues are the test's to delete.
const EXAMPLE_METHODS: [&str; 11] = [
    "echo",
    "sleep",
    "progress",
    "fail",
    "conf.echo",
    "conf.progress",
    "conf.sleep",
    "conf.runs",
    "conf.fail",
    "conf.caller",
    "conf.raise",
];

fn path_arg(relative: &str) -> String {
    workspace_root()
        .join(relative)
        .to_string_lossy()
        .into_owned()
}

/// Starts the example Node worker on the system's broker and queue prefix with `extra` flags,
/// and waits for its "worker ready" line (it has declared its queues and consumes them).
async fn start_node_worker(system: &mut System, extra: &[&str]) -> Result<Service> {
    for method in EXAMPLE_METHODS {
        let queue = system.queue_for(method);
        system.track_queue(queue);
    }
    // `extra` first, so that an `--amqp` in it is tried before the system's broker.
    let mut args = vec![path_arg(CLI), path_arg(EXAMPLE)];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.extend([
        "--amqp".to_owned(),
        system.amqp_url().to_owned(),
        "--queue-prefix".to_owned(),
        system.prefix().to_owned(),
        "--log-format".to_owned(),
        "json".to_owned(),
    ]);
    let no_env: [(&str, &str); 0] = [];
    let mut worker = Service::spawn("node-worker", node(), &args, &no_env)
        .context("cannot start node (Node.js 20+ must be installed)")?;
    worker
        .wait_for_message("worker ready")
        .await
        .context("the Node worker never got ready (run `npm ci` in clients/js/worker)")?;
    Ok(worker)
}

/// SIGTERM to the worker; it must exit 0.
async fn stop(worker: Service) {
    let status = worker.terminate().await.expect("the Node worker exits");
    assert!(status.success(), "the Node worker exited with {status}");
}

#[tokio::test]
async fn node_worker_sdk_passes_its_unit_tests() {
    let dir = "clients/js/worker/test";
    // Each file named: Node 20 runs a directory given to --test, Node 22 takes globs instead.
    let mut files: Vec<String> = std::fs::read_dir(workspace_root().join(dir))
        .expect("the test directory is there")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".test.js"))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    files.sort();
    let mut args = vec!["--test", "--test-reporter=tap"];
    args.extend(files.iter().map(String::as_str));
    let out = run(&node(), &args, &[])
        .await
        .expect("node runs (Node.js 20+ must be installed)");
    assert_node_tests_passed(&out, dir);
}

/// An AMQP value as amqplib's `{"!": type, "value": v}` notation names it (a plain string for
/// a long string), to compare with what the Node SDK declares.
fn amqplib_notation(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortShortUInt(n) => json!({"!": "unsignedbyte", "value": n}),
        AMQPValue::LongLongInt(n) => json!({"!": "long", "value": n}),
        other => panic!("no amqplib notation for {other:?} in this test"),
    }
}

fn table_notation(table: &lapin::types::FieldTable) -> Value {
    table
        .inner()
        .iter()
        .map(|(name, value)| (name.to_string(), amqplib_notation(value)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[tokio::test]
async fn node_sdk_spells_the_contract_like_amqp_proto() {
    let script = r#"
        const c = await import(process.argv[1]);
        const shape = (queueType, maxPriority) =>
            c.queueArguments({ queueType, prefix: 't1.', maxPriority, deliveryLimit: 2 });
        console.log(JSON.stringify({
            names: [c.METHOD_HEADER, c.DEADLINE_HEADER, c.CALLER_HEADER, c.STATUS_HEADER,
                c.STATUS_OK, c.STATUS_ERROR, c.STATUS_PROGRESS, c.REASON_HEADER,
                c.REASON_CANCELLED, c.REASON_TIMEOUT, c.CONTENT_TYPE, c.CANCEL_EXCHANGE,
                c.DEAD_LETTER_EXCHANGE, c.DELIVERY_LIMIT_ROUTING_KEY_PREFIX,
                c.MAX_PRIORITY_ARGUMENT, c.QUEUE_TYPE_ARGUMENT, c.QUORUM,
                c.DELIVERY_LIMIT_ARGUMENT, c.DEAD_LETTER_EXCHANGE_ARGUMENT,
                c.DEAD_LETTER_ROUTING_KEY_ARGUMENT, ...c.RESERVED_QUEUE_PREFIXES],
            numbers: [c.DELIVERY_MODE_PERSISTENT, c.DEFAULT_MAX_PRIORITY, c.MAX_QUEUE_NAME_LEN,
                c.PARSE_ERROR, c.METHOD_NOT_FOUND, c.INVALID_PARAMS, c.INTERNAL_ERROR],
            classic: shape('classic', 9),
            unprioritised: shape('classic', null),
            quorum: shape('quorum', 9),
        }));
    "#;
    let module = url_of(&path_arg("clients/js/worker/src/contract.js"));
    let out = run(
        &node(),
        &["--input-type=module", "-e", script, &module],
        &[],
    )
    .await
    .expect("node runs");
    assert!(out.status.success(), "node failed: {}", out.status);
    let seen: Value = serde_json::from_slice(&out.stdout).expect("node prints JSON");

    let names = [
        contract::METHOD_HEADER,
        contract::DEADLINE_HEADER,
        contract::CALLER_HEADER,
        contract::STATUS_HEADER,
        contract::STATUS_OK,
        contract::STATUS_ERROR,
        contract::STATUS_PROGRESS,
        contract::REASON_HEADER,
        contract::REASON_CANCELLED,
        contract::REASON_TIMEOUT,
        contract::CONTENT_TYPE,
        contract::CANCEL_EXCHANGE,
        contract::DEAD_LETTER_EXCHANGE,
        contract::DELIVERY_LIMIT_ROUTING_KEY_PREFIX,
        contract::MAX_PRIORITY_ARGUMENT,
        contract::QUEUE_TYPE_ARGUMENT,
        contract::QUORUM,
        contract::DELIVERY_LIMIT_ARGUMENT,
        contract::DEAD_LETTER_EXCHANGE_ARGUMENT,
        contract::DEAD_LETTER_ROUTING_KEY_ARGUMENT,
    ]
    .into_iter()
    .chain(contract::RESERVED_QUEUE_PREFIXES)
    .collect::<Vec<_>>();
    assert_eq!(seen["names"], json!(names));
    let numbers = [
        i64::from(contract::DELIVERY_MODE_PERSISTENT),
        i64::from(contract::DEFAULT_MAX_PRIORITY),
        i64::try_from(contract::MAX_QUEUE_NAME_LEN).expect("small"),
        wsmq_codes::PARSE_ERROR,
        wsmq_codes::METHOD_NOT_FOUND,
        wsmq_codes::INVALID_PARAMS,
        wsmq_codes::INTERNAL_ERROR,
    ];
    assert_eq!(seen["numbers"], json!(numbers));
    for (name, queue_type, max_priority) in [
        ("classic", contract::QueueType::Classic, Some(9)),
        ("unprioritised", contract::QueueType::Classic, None),
        (
            "quorum",
            contract::QueueType::Quorum { delivery_limit: 2 },
            Some(9),
        ),
    ] {
        assert_eq!(
            seen[name],
            table_notation(&queue_type.arguments("t1.", max_priority)),
            "{name} queue arguments"
        );
    }
}

/// `path` as a `file://` URL, for node's `import()`.
fn url_of(path: &str) -> String {
    format!("file://{path}")
}

#[tokio::test]
async fn node_worker_serves_calls_beside_the_rust_worker() {
    // The Rust demo worker declares echo, sleep, progress and fail first; the Node worker
    // declares them too, which RabbitMQ accepts only with exactly the same arguments.
    let mut system = System::start().await.expect("system starts");
    let worker = start_node_worker(&mut system, &[])
        .await
        .expect("the Node worker declares the Rust worker's queues and starts");
    let mut client = system.client().await.expect("client connects");

    let params = json!({"text": "héllo→", "n": [1, 2.5, null, {"deep": true}]});
    let response = client
        .call("conf.echo", params.clone())
        .await
        .expect("gets a response");
    assert_eq!(rpc::result(&response), Some(&params), "{response}");
    let response = client
        .call("conf.caller", json!({}))
        .await
        .expect("gets a response");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"caller": null})),
        "no caller without authentication: {response}"
    );

    stop(worker).await;
    system.cleanup().await;
}

#[tokio::test]
async fn node_worker_declares_quorum_queues_like_the_rust_sdk() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    // Declared first with the Rust SDK's quorum arguments: the Node worker's declaration must
    // match them exactly, or RabbitMQ refuses it and the worker never gets ready.
    let conn = broker::connect(system.amqp_url())
        .await
        .expect("broker connects");
    let channel = conn.create_channel().await.expect("channel opens");
    let arguments =
        contract::QueueType::Quorum { delivery_limit: 2 }.arguments(system.prefix(), None);
    let queue = system.queue_for("conf.echo");
    system.track_queue(queue.clone());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("the Rust SDK's quorum queue is declared");
    let _ = conn.close(200, "done".into()).await;

    let worker = start_node_worker(
        &mut system,
        &["--queue-type", "quorum", "--delivery-limit", "2"],
    )
    .await
    .expect("the Node worker declares the same quorum queue");
    let mut client = system.client().await.expect("client connects");
    let response = client
        .call("conf.echo", json!([1]))
        .await
        .expect("gets a response");
    assert_eq!(rpc::result(&response), Some(&json!([1])), "{response}");

    stop(worker).await;
    system.cleanup().await;
}

#[tokio::test]
async fn node_worker_progress_arrives_in_order_before_the_result() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    let worker = start_node_worker(&mut system, &[])
        .await
        .expect("the Node worker starts");
    let mut client = system.client().await.expect("client connects");

    let id = json!(7);
    client
        .send_json(&rpc::request(7, "conf.progress", json!({"steps": 20})))
        .await
        .expect("sends");
    let (before, response) = client
        .recv_until_response(&id)
        .await
        .expect("gets the response");
    let reports: Vec<Value> = before
        .iter()
        .map(|frame| {
            let (of, value) =
                rpc::progress(frame).unwrap_or_else(|| panic!("not progress: {frame}"));
            assert_eq!(of, &id, "{frame}");
            value.clone()
        })
        .collect();
    let expected: Vec<Value> = (1..=20).map(|step| json!({"step": step})).collect();
    assert_eq!(reports, expected);
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"steps": 20})),
        "{response}"
    );

    stop(worker).await;
    system.cleanup().await;
}

#[tokio::test]
async fn node_worker_passes_a_job_error_through_with_code_message_and_data() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    let worker = start_node_worker(&mut system, &[])
        .await
        .expect("the Node worker starts");
    let mut client = system.client().await.expect("client connects");

    let data = json!({"why": ["too big", null], "px": 4096});
    let response = client
        .call(
            "conf.fail",
            json!({"code": 4001, "message": "bad image", "data": data}),
        )
        .await
        .expect("gets a response");
    assert_eq!(
        response["error"],
        json!({"code": 4001, "message": "bad image", "data": data}),
        "{response}"
    );
    let response = client
        .call("conf.fail", json!({"code": -32050, "message": "no data"}))
        .await
        .expect("gets a response");
    assert_eq!(
        response["error"],
        json!({"code": -32050, "message": "no data"}),
        "no data member when none was given: {response}"
    );

    stop(worker).await;
    system.cleanup().await;
}

#[tokio::test]
async fn node_worker_answers_a_thrown_error_with_internal_error_and_keeps_serving() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    let mut worker = start_node_worker(&mut system, &[])
        .await
        .expect("the Node worker starts");
    let mut client = system.client().await.expect("client connects");

    let response = client
        .call("conf.raise", json!({}))
        .await
        .expect("gets a response");
    assert_eq!(
        response["error"],
        json!({"code": INTERNAL_ERROR, "message": "internal error: method conf.raise failed"}),
        "no stack, no error text: {response}"
    );
    // The stack is in the worker's log instead.
    let logged = worker
        .wait_for_log("the handler's error logged", |l| {
            l.message() == Some("handler threw; answering -32603")
        })
        .await
        .expect("the error is logged");
    let stack = logged
        .field("error")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        stack.contains("conf.raise raises on purpose") && stack.contains("examples/demo.js"),
        "the log has the stack: {stack}"
    );
    assert_eq!(logged.level(), Some("ERROR"));

    let response = client
        .call("conf.echo", json!(["after"]))
        .await
        .expect("gets a response");
    assert_eq!(
        rpc::result(&response),
        Some(&json!(["after"])),
        "{response}"
    );

    stop(worker).await;
    system.cleanup().await;
}

#[tokio::test]
async fn node_worker_cancel_aborts_the_job_signal_and_frees_its_slot() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    // One slot: whatever holds it blocks every other call.
    let worker = start_node_worker(&mut system, &["--concurrency", "1"])
        .await
        .expect("the Node worker starts");
    let mut client = system.client().await.expect("client connects");

    client
        .send_json(&rpc::request(
            "long",
            "conf.sleep",
            json!({"ms": 60_000, "tag": "c"}),
        ))
        .await
        .expect("sends");
    let started = client.recv_json().await.expect("a frame");
    assert_eq!(
        rpc::progress(&started),
        Some((&json!("long"), &json!({"started": true}))),
        "{started}"
    );
    client
        .send_json(&rpc::cancel("long"))
        .await
        .expect("cancels");
    let response = client
        .recv_json()
        .await
        .expect("the cancelled call's answer");
    assert_eq!(error_code(&response), Some(CANCELLED), "{response}");
    // Only a handler that saw job.signal abort gives the slot back before its 60 s are up.
    let response = client
        .call("conf.echo", json!(["next"]))
        .await
        .expect("the slot is free again");
    assert_eq!(rpc::result(&response), Some(&json!(["next"])), "{response}");
    let response = client
        .call("conf.runs", json!({"tag": "c"}))
        .await
        .expect("gets a response");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"runs": 1})),
        "{response}"
    );

    stop(worker).await;
    system.cleanup().await;
}

#[tokio::test]
async fn node_worker_drains_on_sigterm_finishing_the_running_job() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    let mut worker = start_node_worker(&mut system, &["--concurrency", "2"])
        .await
        .expect("the Node worker starts");
    let mut client = system.client().await.expect("client connects");

    client
        .send_json(&rpc::request("running", "conf.sleep", json!({"ms": 1_000})))
        .await
        .expect("sends");
    let started = client.recv_json().await.expect("a frame");
    assert_eq!(
        rpc::progress(&started),
        Some((&json!("running"), &json!({"started": true}))),
        "{started}"
    );
    worker.signal(Signal::SIGTERM).expect("signals");
    worker
        .wait_for_message("worker draining: taking no new jobs")
        .await
        .expect("the worker drains");
    // Sent after the worker stopped taking jobs: it stays in its queue.
    client
        .send_json(&rpc::request("later", "conf.echo", json!(["later"])))
        .await
        .expect("sends");
    let response = client.recv_json().await.expect("the running job's answer");
    assert_eq!(response["id"], json!("running"), "{response}");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"slept": 1000})),
        "{response}"
    );
    let status = worker.wait_exit().await.expect("the worker exits");
    assert!(
        status.success(),
        "exit status 0 after a drain, got {status}"
    );
    let queued = system
        .wait_queue_depth(&system.queue_for("conf.echo"), 1)
        .await
        .expect("the later call waits in its queue");
    assert_eq!(queued, 1);

    // Its caller leaves, so the gateway's own drain has no call to wait for.
    client.close().await.expect("client closes");
    system.cleanup().await;
}

/// The broker's id of the Node worker's connection (its `connection_name` ends with its pid).
async fn connection_of(worker: &Service) -> Result<String> {
    let pid = worker.os_pid().context("the worker runs")?;
    let listing = rabbitmq::rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .await?;
    let name = format!(":{pid}\"");
    listing
        .lines()
        .find(|line| line.contains("wsmq-worker (node) ") && line.contains(&name))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .with_context(|| format!("no connection of pid {pid} in:\n{listing}"))
}

#[tokio::test]
async fn node_worker_skips_a_dead_broker_url_and_reconnects_after_losing_its_connection() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    // Nothing listens on port 1: the worker names it, goes on to the system's broker.
    let dead = "amqp://guest:guest@127.0.0.1:1/%2f";
    let mut worker = start_node_worker(&mut system, &["--amqp", dead])
        .await
        .expect("the Node worker starts on the second URL");
    let unavailable = worker
        .wait_for_message("broker unavailable")
        .await
        .expect("the dead URL is logged");
    assert_eq!(
        unavailable.field("broker").and_then(Value::as_str),
        Some("amqp://guest:***@127.0.0.1:1/%2f")
    );

    let connection = connection_of(&worker)
        .await
        .expect("the worker's connection");
    rabbitmq::rabbitmqctl(&["close_connection", &connection, "test: connection lost"])
        .await
        .expect("the broker closes the worker's connection");
    worker
        .wait_for_message("broker connection lost; reconnecting")
        .await
        .expect("the worker notices");
    worker
        .wait_for_log("a second \"worker ready\"", {
            // Lines are matched in the order they were printed: the second "ready" is the one.
            let readies = AtomicUsize::new(0);
            move |l| {
                l.message() == Some("worker ready") && readies.fetch_add(1, Ordering::Relaxed) == 1
            }
        })
        .await
        .expect("the worker is back");
    let mut client = system.client().await.expect("client connects");
    let response = client
        .call("conf.echo", json!({"after": "reconnect"}))
        .await
        .expect("gets a response");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"after": "reconnect"})),
        "{response}"
    );

    stop(worker).await;
    system.cleanup().await;
}
