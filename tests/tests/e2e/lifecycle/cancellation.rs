//! Cancelling a call: the worker freed early, only the caller's own calls, notifications only, and the broadcast to workers.

use super::*;

#[tokio::test]
async fn cancel_frees_the_worker_early() {
    /// Long enough that a worker still running it when the probes below come could not
    /// answer them in time: only a stopped sleep frees it.
    const SLEEP_MS: u64 = 60_000;
    /// How long the probes may take once the worker is free: anything near this on a loaded
    /// machine is a hang, and it is half the sleep.
    const FREED_WITHIN: Duration = Duration::from_secs(30);
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

    client
        .send_json(&rpc::cancel("long"))
        .await
        .expect("sends $/cancel");
    // The gateway answers the cancel itself: the next frame, long before the sleep could end.
    let response = client.recv_json().await.expect("the cancel is answered");
    assert_eq!(response["id"], "long", "{response}");
    assert_eq!(error_code(&response), Some(CANCELLED), "{response}");
    assert_eq!(error_message(&response), Some("cancelled"), "{response}");

    // Both need the slot the sleep held: the sleep queue's single prefetch (this one) and the
    // worker's single concurrency slot (echo).
    let response = client
        .call_within("sleep", json!({"ms": 0}), FREED_WITHIN)
        .await
        .expect("a sleep queued behind the cancelled one runs: the worker was freed");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"slept_ms": 0})),
        "{response}"
    );
    let response = client
        .call_within("echo", json!({"after": "cancel"}), FREED_WITHIN)
        .await
        .expect("an echo runs: the worker was freed");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"after": "cancel"})),
        "{response}"
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
    const HOLD: &str = "hold";
    let mut system = System::start().await.expect("system starts");
    // A's call stays in flight until the test answers it, however slow the machine.
    let mut hold = FakeWorker::start(&mut system, HOLD, |_| None)
        .await
        .expect("fake worker starts");
    let mut a = system.client().await.expect("client A connects");
    let mut b = system.client().await.expect("client B connects");

    a.send_json(&rpc::request(1, HOLD, json!({"a": 1})))
        .await
        .expect("A sends");
    let job = hold.next_job().await.expect("A's call reaches the worker");

    b.send_json(&rpc::cancel(1))
        .await
        .expect("B sends $/cancel for id 1");
    // Once B's probe is answered the router has handled B's cancel (a connection hands its
    // messages to the router in order): and it said nothing to B.
    b.expect_no_stray_frames()
        .await
        .expect("B gets nothing for cancelling a call that is not its own");

    hold.send(&job, None, br#"{"a":1}"#)
        .await
        .expect("reply published");
    let (before, response) = a
        .recv_until_response(&json!(1))
        .await
        .expect("A's call is answered");
    assert!(before.is_empty(), "A got other frames first: {before:?}");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"a": 1})),
        "A's call runs to its end: {response}"
    );
    a.expect_no_stray_frames()
        .await
        .expect("A gets one response");
    b.expect_no_stray_frames()
        .await
        .expect("B gets nothing of A's call");

    hold.stop().await;
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
