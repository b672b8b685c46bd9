//! The life of a call after it is sent: progress, deadlines, cancellation, in-flight caps and
//! priority.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use wsmq_tests::rpc::{
    self, CANCELLED, INVALID_REQUEST, PROGRESS_METHOD, TIMEOUT, TOO_MANY_IN_FLIGHT, error_code,
    error_message,
};
use wsmq_tests::{CancelListener, Cancellation, FakeWorker, System, WsClient};

/// How fast the gateway must answer a cancel, which it decides on its own: no worker is
/// involved, so anything near this is a hang, not load.
const LOCAL_ANSWER_LIMIT: Duration = Duration::from_secs(2);

/// The `$/progress` notifications a `progress` call of `steps` steps must produce, in order.
fn expected_progress(id: &Value, steps: u64) -> Vec<Value> {
    (1..=steps)
        .map(|step| {
            json!({
                "jsonrpc": "2.0",
                "method": PROGRESS_METHOD,
                "params": {"id": id, "value": {"step": step, "of": steps}},
            })
        })
        .collect()
}

/// Reads `client`'s frames up to the response to `id` and checks they are exactly the
/// progress of a `steps`-step `progress` call, in order, then its result.
async fn expect_progress_then_result(client: &mut WsClient, id: &Value, steps: u64) -> Result<()> {
    let (before, response) = client.recv_until_response(id).await?;
    let expected = expected_progress(id, steps);
    ensure!(
        before == expected,
        "before the response to {id} ({response}) came {} frames:\n{}\nexpected exactly:\n{}",
        before.len(),
        lines(&before),
        lines(&expected)
    );
    ensure!(
        rpc::result(&response) == Some(&json!({ "done": steps })),
        "the response to {id} is {response}, expected result {{\"done\":{steps}}}"
    );
    Ok(())
}

fn lines(frames: &[Value]) -> String {
    frames
        .iter()
        .map(|f| format!("  {f}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn progress_arrives_in_order_before_the_result_and_only_to_its_caller() {
    let system = System::start().await.expect("system starts");
    let mut a = system.client().await.expect("client A connects");
    let mut b = system.client().await.expect("client B connects");

    // The SAME call id on both connections, so only per-client routing keeps the reports apart;
    // different step counts ("of") make a report that reaches the wrong client recognisable.
    let id = json!("job");
    let (steps_a, steps_b) = (5, 7);
    a.send_json(&rpc::request(
        id.clone(),
        "progress",
        json!({"steps": steps_a, "ms": 20}),
    ))
    .await
    .expect("A sends");
    b.send_json(&rpc::request(
        id.clone(),
        "progress",
        json!({"steps": steps_b, "ms": 20}),
    ))
    .await
    .expect("B sends");

    let (got_a, got_b) = tokio::join!(
        expect_progress_then_result(&mut a, &id, steps_a),
        expect_progress_then_result(&mut b, &id, steps_b),
    );
    got_a.expect("client A sees its own progress, in order, then its result");
    got_b.expect("client B sees its own progress, in order, then its result");

    // Nothing follows a call's final response.
    a.expect_no_stray_frames()
        .await
        .expect("nothing reaches A after its result");
    b.expect_no_stray_frames()
        .await
        .expect("nothing reaches B after its result");

    system.cleanup().await;
}

#[tokio::test]
async fn deadline_answers_timeout_and_the_late_result_never_arrives() {
    const SLEEP_MS: u64 = 1500;
    const TIMEOUT_MS: u64 = 300;
    // One job at a time: the probe below runs only once the worker has let go of the sleep.
    let system = System::builder()
        .worker_concurrency(1)
        .start()
        .await
        .expect("system starts");
    let mut client = system.client().await.expect("client connects");

    let sent = Instant::now();
    client
        .send_json(&rpc::request_with_options(
            "slow",
            "sleep",
            json!({"ms": SLEEP_MS}),
            json!({"timeout_ms": TIMEOUT_MS}),
        ))
        .await
        .expect("sends");
    let response = client.recv_json().await.expect("the call is answered");
    let elapsed = sent.elapsed();
    assert_eq!(response["id"], "slow", "{response}");
    assert_eq!(error_code(&response), Some(TIMEOUT), "{response}");
    assert_eq!(error_message(&response), Some("timeout"), "{response}");
    assert!(
        elapsed >= Duration::from_millis(TIMEOUT_MS),
        "answered after {elapsed:?}, before the {TIMEOUT_MS} ms deadline"
    );
    assert!(
        elapsed < Duration::from_millis(SLEEP_MS),
        "the timeout came after {elapsed:?}, not before the {SLEEP_MS} ms sleep could end"
    );

    // The worker serves the sleep queue one job at a time, so this probe starts only once the
    // slow job is over (finished or stopped), and its reply follows whatever the slow job
    // replied on the reply queue. Its response being the next frame means the late result was
    // dropped.
    let response = client
        .call("sleep", json!({"ms": 0}))
        .await
        .expect("the next frame answers the probe, not the timed-out call");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"slept_ms": 0})),
        "{response}"
    );
    client
        .expect_no_stray_frames()
        .await
        .expect("nothing more arrives for the timed-out call");

    system.cleanup().await;
}

#[tokio::test]
async fn cancel_frees_the_worker_early() {
    const SLEEP_MS: u64 = 10_000;
    /// Well under the sleep: the worker can only be free by then if it gave up the job.
    const FREED_WITHIN: Duration = Duration::from_secs(5);
    let mut system = System::builder()
        .worker_concurrency(1)
        .start()
        .await
        .expect("system starts");
    let ping = FakeWorker::start(&mut system, "ping", |_| Some(b"\"pong\"".to_vec()))
        .await
        .expect("ping worker starts");
    let mut client = system.client().await.expect("client connects");

    client
        .send_json(&rpc::request("long", "sleep", json!({"ms": SLEEP_MS})))
        .await
        .expect("sends the long sleep");
    // A full round trip through the bridge and RabbitMQ, started after the sleep was sent: by
    // its end the idle worker has had the sleep for as long as the round trip took, so the
    // cancel below finds it running. (Were it still on its way, the worker must skip it on
    // arrival, which frees it just the same.)
    let pong = client
        .call_result("ping", json!({}))
        .await
        .expect("ping round trip");
    assert_eq!(pong, json!("pong"));

    let cancelled = Instant::now();
    client
        .send_json(&rpc::cancel("long"))
        .await
        .expect("sends $/cancel");
    let response = client
        .recv_json_within(LOCAL_ANSWER_LIMIT)
        .await
        .expect("the cancel is answered at once");
    assert_eq!(response["id"], "long", "{response}");
    assert_eq!(error_code(&response), Some(CANCELLED), "{response}");
    assert_eq!(error_message(&response), Some("cancelled"), "{response}");

    // Both need the slot the sleep held: the sleep queue's single prefetch (this one) and the
    // worker's single concurrency slot (echo).
    let response = client
        .call_within("sleep", json!({"ms": 0}), FREED_WITHIN)
        .await
        .expect("a sleep queued behind the cancelled one runs soon after the cancel");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"slept_ms": 0})),
        "{response}"
    );
    let response = client
        .call_within("echo", json!({"after": "cancel"}), FREED_WITHIN)
        .await
        .expect("an echo runs soon after the cancel");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"after": "cancel"})),
        "{response}"
    );
    let freed = cancelled.elapsed();
    assert!(
        freed < FREED_WITHIN,
        "the worker was busy for {freed:?} after the cancel: the {SLEEP_MS} ms sleep was not stopped"
    );
    // Answered once: nothing more for "long", whatever the worker sent when it stopped.
    client
        .expect_no_stray_frames()
        .await
        .expect("the cancelled call is answered only once");

    ping.stop().await;
    system.cleanup().await;
}

#[tokio::test]
async fn cancel_of_another_clients_call_does_nothing() {
    const SLEEP_MS: u64 = 2000;
    let system = System::start().await.expect("system starts");
    let mut a = system.client().await.expect("client A connects");
    let mut b = system.client().await.expect("client B connects");

    let sent = Instant::now();
    a.send_json(&rpc::request(1, "sleep", json!({"ms": SLEEP_MS})))
        .await
        .expect("A sends");
    // A connection hands its calls to the router in order: once this probe is answered, call 1
    // is registered and a cancel could find it.
    a.expect_no_stray_frames()
        .await
        .expect("A's probe is answered before its sleep");

    b.send_json(&rpc::cancel(1))
        .await
        .expect("B sends $/cancel for id 1");
    // Likewise, once B's probe is answered the router has handled B's cancel: and it said
    // nothing to B.
    b.expect_no_stray_frames()
        .await
        .expect("B gets nothing for cancelling a call that is not its own");
    let cancel_handled = sent.elapsed();
    assert!(
        cancel_handled < Duration::from_millis(SLEEP_MS),
        "inconclusive: B's cancel was handled after {cancel_handled:?}, when A's {SLEEP_MS} ms \
         call may already have ended"
    );

    let (before, response) = a
        .recv_until_response(&json!(1))
        .await
        .expect("A's call is answered");
    assert!(before.is_empty(), "A got other frames first: {before:?}");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"slept_ms": SLEEP_MS})),
        "A's call runs to its end: {response}"
    );
    a.expect_no_stray_frames()
        .await
        .expect("A gets one response");
    b.expect_no_stray_frames()
        .await
        .expect("B gets nothing of A's call");

    system.cleanup().await;
}

#[tokio::test]
async fn cancel_must_be_a_notification() {
    let system = System::start().await.expect("system starts");
    let mut client = system.client().await.expect("client connects");

    client
        .send_json(&rpc::request("target", "sleep", json!({"ms": 300})))
        .await
        .expect("sends the target call");
    let with_id = json!({
        "jsonrpc": "2.0",
        "method": rpc::CANCEL_METHOD,
        "params": {"id": "target"},
        "id": "c1",
    });
    client.send_json(&with_id).await.expect("sends");
    let response = client.recv_json().await.expect("gets a response");
    assert_eq!(response["id"], "c1", "{response}");
    assert_eq!(error_code(&response), Some(INVALID_REQUEST), "{response}");

    // It was refused, not acted on: the target runs to its end.
    let (_, response) = client
        .recv_until_response(&json!("target"))
        .await
        .expect("the target is answered");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"slept_ms": 300})),
        "{response}"
    );
    client
        .expect_no_stray_frames()
        .await
        .expect("nothing else arrives");

    system.cleanup().await;
}

#[tokio::test]
async fn in_flight_cap_refuses_extra_calls_while_other_clients_proceed() {
    const SLEEP_MS: u64 = 1500;
    let system = System::builder()
        .max_inflight_per_client(2)
        .start()
        .await
        .expect("system starts");
    let mut a = system.client().await.expect("client A connects");
    let mut b = system.client().await.expect("client B connects");

    let sent = Instant::now();
    for id in 1..=3 {
        a.send_json(&rpc::request(id, "sleep", json!({"ms": SLEEP_MS})))
            .await
            .expect("A sends");
    }
    // No sleep can end before SLEEP_MS, so a first frame that is the refusal came at once.
    let refusal = a.recv_json().await.expect("A's third call is refused");
    assert_eq!(
        refusal["id"], 3,
        "the call past the cap is refused: {refusal}"
    );
    assert_eq!(error_code(&refusal), Some(TOO_MANY_IN_FLIGHT), "{refusal}");

    // A's cap is A's alone.
    let result = b
        .call_result("echo", json!({"b": "proceeds"}))
        .await
        .expect("B's call succeeds while A is at its cap");
    assert_eq!(result, json!({"b": "proceeds"}));
    let b_done = sent.elapsed();
    assert!(
        b_done < Duration::from_millis(SLEEP_MS),
        "inconclusive: B's call ended after {b_done:?}, when A's calls may have finished"
    );

    let mut answered = Vec::new();
    for _ in 0..2 {
        let response = a.recv_json().await.expect("A's calls are answered");
        assert_eq!(
            rpc::result(&response),
            Some(&json!({"slept_ms": SLEEP_MS})),
            "{response}"
        );
        answered.push(response["id"].clone());
    }
    answered.sort_by_key(|id| id.as_i64());
    assert_eq!(
        answered,
        [json!(1), json!(2)],
        "the two calls under the cap"
    );
    // Room again once they are done (the probe is a call too).
    a.expect_no_stray_frames()
        .await
        .expect("A calls again once its calls are done");

    system.cleanup().await;
}

#[tokio::test]
async fn global_in_flight_cap_refuses_every_client_until_calls_end() {
    const SLEEP_MS: u64 = 1000;
    let system = System::builder()
        .max_inflight(2)
        .start()
        .await
        .expect("system starts");
    let mut a = system.client().await.expect("client A connects");
    let mut b = system.client().await.expect("client B connects");

    for id in 1..=2 {
        a.send_json(&rpc::request(id, "sleep", json!({"ms": SLEEP_MS})))
            .await
            .expect("A sends");
    }
    // Refused at once, and proof that A's two calls are in flight: a connection hands its
    // calls to the router in order.
    a.send_json(&rpc::request(3, "echo", json!({})))
        .await
        .expect("A sends");
    let refusal = a.recv_json().await.expect("A's third call is answered");
    assert_eq!(refusal["id"], 3, "{refusal}");
    assert_eq!(error_code(&refusal), Some(TOO_MANY_IN_FLIGHT), "{refusal}");

    // B has nothing in flight, but the gateway is full.
    let response = b
        .call("echo", json!({"b": 1}))
        .await
        .expect("B's call is answered");
    assert_eq!(
        error_code(&response),
        Some(TOO_MANY_IN_FLIGHT),
        "the gateway-wide cap holds for every client: {response}"
    );

    for _ in 0..2 {
        let response = a.recv_json().await.expect("A's calls are answered");
        assert_eq!(
            rpc::result(&response),
            Some(&json!({"slept_ms": SLEEP_MS})),
            "{response}"
        );
    }
    // Room again.
    let result = b
        .call_result("echo", json!({"b": 2}))
        .await
        .expect("B's call succeeds once A's calls have ended");
    assert_eq!(result, json!({"b": 2}));

    system.cleanup().await;
}

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
    const SLEEP_MS: u64 = 2000;
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
    // ... and not at the 60 s asked for, nor when the sleep ends.
    assert!(
        elapsed < Duration::from_millis(1500),
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

#[tokio::test]
async fn cancellations_and_timeouts_are_broadcast_to_workers() {
    let mut system = System::start().await.expect("system starts");
    let mut listener = CancelListener::start(&system)
        .await
        .expect("listens on the cancellation exchange");
    // Takes jobs and never answers them.
    let mut hold = FakeWorker::start(&mut system, "hold", |_| None)
        .await
        .expect("fake worker starts");
    let mut client = system.client().await.expect("client connects");

    client
        .send_json(&rpc::request("c", "hold", json!({})))
        .await
        .expect("sends");
    let job = hold.next_job().await.expect("the job reached the worker");
    client.send_json(&rpc::cancel("c")).await.expect("cancels");
    let response = client.recv_json().await.expect("the cancel is answered");
    assert_eq!(
        (response["id"].clone(), error_code(&response)),
        (json!("c"), Some(CANCELLED)),
        "{response}"
    );
    let heard = listener.next().await.expect("the cancel is broadcast");
    assert_eq!(
        heard,
        Cancellation {
            correlation_id: job.correlation_id.clone(),
            reason: Some("cancelled".to_owned()),
        },
        "the broadcast names the job and why"
    );

    client
        .send_json(&rpc::request_with_options(
            "t",
            "hold",
            json!({}),
            json!({"timeout_ms": 200}),
        ))
        .await
        .expect("sends");
    let job = hold.next_job().await.expect("the job reached the worker");
    let response = client.recv_json().await.expect("the call times out");
    assert_eq!(
        (response["id"].clone(), error_code(&response)),
        (json!("t"), Some(TIMEOUT)),
        "{response}"
    );
    let heard = listener.next().await.expect("the timeout is broadcast");
    assert_eq!(
        heard,
        Cancellation {
            correlation_id: job.correlation_id.clone(),
            reason: Some("timeout".to_owned()),
        },
        "the broadcast names the job and why"
    );

    listener.stop().await;
    hold.stop().await;
    system.cleanup().await;
}

#[tokio::test]
async fn nothing_a_worker_sends_after_a_calls_end_reaches_the_client() {
    let mut system = System::start().await.expect("system starts");
    let mut hold = FakeWorker::start(&mut system, "hold", |_| None)
        .await
        .expect("fake worker starts");
    let mut client = system.client().await.expect("client connects");

    // Progress and a result after the deadline.
    client
        .send_json(&rpc::request_with_options(
            "late",
            "hold",
            json!({}),
            json!({"timeout_ms": 200}),
        ))
        .await
        .expect("sends");
    let job = hold.next_job().await.expect("the job reached the worker");
    let response = client.recv_json().await.expect("the call times out");
    assert_eq!(error_code(&response), Some(TIMEOUT), "{response}");
    hold.send(&job, Some("progress"), br#"{"step":1}"#)
        .await
        .expect("late progress is published");
    hold.send(&job, None, br#""too late""#)
        .await
        .expect("the late result is published");
    // Both are in the reply queue ahead of the probe's reply.
    client
        .expect_no_stray_frames()
        .await
        .expect("nothing reaches the client after the timeout");

    // Progress after the result.
    client
        .send_json(&rpc::request("done", "hold", json!({})))
        .await
        .expect("sends");
    let job = hold.next_job().await.expect("the job reached the worker");
    hold.send(&job, Some("progress"), br#"{"step":1}"#)
        .await
        .expect("progress is published");
    hold.send(&job, None, br#""result""#)
        .await
        .expect("the result is published");
    hold.send(&job, Some("progress"), br#"{"step":2}"#)
        .await
        .expect("progress after the result is published");
    let progress = client.recv_json().await.expect("the progress report");
    assert_eq!(
        rpc::progress(&progress),
        Some((&json!("done"), &json!({"step": 1}))),
        "{progress}"
    );
    let response = client.recv_json().await.expect("the result");
    assert_eq!(response["id"], "done", "{response}");
    assert_eq!(rpc::result(&response), Some(&json!("result")), "{response}");
    client
        .expect_no_stray_frames()
        .await
        .expect("no progress after the result");

    hold.stop().await;
    system.cleanup().await;
}
