//! Call options: unknown ones refused, priority, the timeout cap, and what reaches workers (deadline and priority).

use super::*;

#[tokio::test]
async fn unknown_call_option_is_invalid_request_naming_it() {
    let system = System::start().await.expect("system starts");
    let mut client = system.client().await.expect("client connects");

    client
        .send_json(&rpc::request_with_options(
            1,
            "echo",
            json!({}),
            json!({"bogus": 1}),
        ))
        .await
        .expect("sends");
    let response = client.recv_json().await.expect("gets a response");
    assert_eq!(response["id"], 1, "{response}");
    assert_eq!(error_code(&response), Some(INVALID_REQUEST), "{response}");
    assert!(
        response["error"]["data"].to_string().contains("bogus"),
        "error.data names the unknown option: {response}"
    );

    client
        .send_json(&rpc::request_with_options(
            2,
            "echo",
            json!({}),
            json!({"priority": 12}),
        ))
        .await
        .expect("sends");
    let response = client.recv_json().await.expect("gets a response");
    assert_eq!(response["id"], 2, "{response}");
    assert_eq!(error_code(&response), Some(INVALID_REQUEST), "{response}");

    // The options themselves are fine when they are the known ones, in range.
    client
        .send_json(&rpc::request_with_options(
            3,
            "echo",
            json!({"ok": true}),
            json!({"timeout_ms": 5000, "priority": 9}),
        ))
        .await
        .expect("sends");
    let response = client.recv_json().await.expect("gets a response");
    assert_eq!(response["id"], 3, "{response}");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"ok": true})),
        "{response}"
    );

    system.cleanup().await;
}

#[tokio::test]
async fn high_priority_calls_run_before_queued_low_ones() {
    const CALLS_PER_PRIORITY: usize = 4;
    let mut system = System::builder()
        .worker_concurrency(1)
        .start()
        .await
        .expect("system starts");
    // The worker has declared its queues; take it away so that every call waits in the queue.
    // (Keeping it busy instead is not enough: it prefetches one message per method queue even
    // while its only slot is taken, and that would be the first, low-priority, echo.)
    for status in system.stop_workers().await.expect("the worker stops") {
        assert!(status.success(), "the worker exits cleanly: {status}");
    }
    let mut client = system.client().await.expect("client connects");

    let mut sent = Vec::new();
    for (label, priority) in [("low", 0), ("high", 9)] {
        for i in 0..CALLS_PER_PRIORITY {
            let id = format!("{label}-{i}");
            client
                .send_json(&rpc::request_with_options(
                    id.clone(),
                    "echo",
                    json!({"id": id}),
                    json!({"priority": priority}),
                ))
                .await
                .expect("sends");
            sent.push(id);
        }
    }
    let queue = system.queue_for("echo");
    system
        .wait_queue_depth(&queue, u32::try_from(sent.len()).expect("small"))
        .await
        .expect("every call waits in the queue");
    system
        .start_worker(1)
        .await
        .expect("a worker with one slot starts");

    let mut order = Vec::new();
    for _ in 0..sent.len() {
        let response = client.recv_json().await.expect("every call is answered");
        let id = response["id"].as_str().unwrap_or_default().to_owned();
        assert!(sent.contains(&id), "unexpected frame: {response}");
        assert_eq!(
            rpc::result(&response),
            Some(&json!({"id": id})),
            "{response}"
        );
        order.push(id);
    }
    let first_low = order.iter().position(|id| id.starts_with("low"));
    let last_high = order.iter().rposition(|id| id.starts_with("high"));
    assert!(
        first_low > last_high,
        "every priority-9 call must run before every priority-0 one; ran {order:?}"
    );

    system.cleanup().await;
}

#[tokio::test]
async fn timeout_option_above_the_maximum_is_capped() {
    /// Far longer than the cap: a -32001 before it ends came from a deadline (the worker is
    /// told to stop, so the test does not wait for it).
    const SLEEP_MS: u64 = 20_000;
    const MAX_TIMEOUT: Duration = Duration::from_millis(300);
    let system = System::builder()
        .call_timeout(Duration::from_millis(200))
        .max_call_timeout(MAX_TIMEOUT)
        .start()
        .await
        .expect("system starts");
    let mut client = system.client().await.expect("client connects");

    let sent = Instant::now();
    client
        .send_json(&rpc::request_with_options(
            "capped",
            "sleep",
            json!({"ms": SLEEP_MS}),
            json!({"timeout_ms": 60_000}),
        ))
        .await
        .expect("sends");
    let response = client.recv_json().await.expect("the call is answered");
    let elapsed = sent.elapsed();
    assert_eq!(response["id"], "capped", "{response}");
    assert_eq!(error_code(&response), Some(TIMEOUT), "{response}");
    // At the cap: not at the default (which only applies when no timeout is asked for) ...
    assert!(
        elapsed >= MAX_TIMEOUT,
        "timed out after {elapsed:?}, before the {MAX_TIMEOUT:?} maximum"
    );
    // ... and not at the 60 s asked for, nor when the sleep ends (a bound only a real
    // regression crosses, however loaded the machine).
    assert!(
        elapsed < Duration::from_millis(SLEEP_MS),
        "timed out after {elapsed:?}: the {MAX_TIMEOUT:?} maximum did not cap the 60 s asked for"
    );

    system.cleanup().await;
}

/// Milliseconds since the Unix epoch, as the `wsmq-deadline` header counts them.
fn unix_ms_now() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since_epoch.as_millis()).expect("fits")
}

#[tokio::test]
async fn jobs_carry_their_deadline_and_priority_to_workers() {
    const TIMEOUT_MS: i64 = 5000;
    /// The gateway's default `--call-timeout`.
    const DEFAULT_TIMEOUT_MS: i64 = 30_000;
    let mut system = System::start().await.expect("system starts");
    let mut inspect = FakeWorker::start(&mut system, "inspect", |_| Some(b"{}".to_vec()))
        .await
        .expect("fake worker starts");
    let mut client = system.client().await.expect("client connects");

    let before = unix_ms_now();
    client
        .send_json(&rpc::request_with_options(
            1,
            "inspect",
            json!({}),
            json!({"timeout_ms": TIMEOUT_MS, "priority": 7}),
        ))
        .await
        .expect("sends");
    let response = client.recv_json().await.expect("gets a response");
    let after = unix_ms_now();
    assert_eq!(rpc::result(&response), Some(&json!({})), "{response}");
    let job = inspect
        .next_job()
        .await
        .expect("the job reached the worker");
    assert_eq!(job.priority, Some(7), "AMQP priority: {job:?}");
    let deadline = job
        .deadline_header
        .unwrap_or_else(|| panic!("the job has an integer wsmq-deadline header: {job:?}"));
    assert!(
        (before + TIMEOUT_MS..=after + TIMEOUT_MS).contains(&deadline),
        "wsmq-deadline {deadline} is not {TIMEOUT_MS} ms after the call ({before}..={after})"
    );
    let expiration: i64 = job
        .expiration
        .as_deref()
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("the job has a numeric expiration: {job:?}"));
    assert!(
        (1..=TIMEOUT_MS).contains(&expiration),
        "expiration {expiration} ms is not the time left before the deadline: {job:?}"
    );

    // Without options: the default deadline, and no priority.
    let before = unix_ms_now();
    let result = client
        .call_result("inspect", json!({}))
        .await
        .expect("gets a result");
    let after = unix_ms_now();
    assert_eq!(result, json!({}));
    let job = inspect
        .next_job()
        .await
        .expect("the job reached the worker");
    assert_eq!(job.priority, None, "no priority asked for: {job:?}");
    let deadline = job.deadline_header.unwrap_or_default();
    assert!(
        (before + DEFAULT_TIMEOUT_MS..=after + DEFAULT_TIMEOUT_MS).contains(&deadline),
        "wsmq-deadline {deadline} is not the default {DEFAULT_TIMEOUT_MS} ms after the call \
         ({before}..={after}): {job:?}"
    );

    inspect.stop().await;
    system.cleanup().await;
}
