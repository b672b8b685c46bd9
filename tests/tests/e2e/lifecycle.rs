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

/// How long a probe may wait behind a job its worker was told to stop: a hang guard, far
/// above what the stop takes on a loaded machine.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

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
    /// Far longer than the deadline: a -32001 before it ends came from the deadline, not from
    /// the result (the worker is told to stop, so the test does not wait for it).
    const SLEEP_MS: u64 = 20_000;
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
        .call_within("sleep", json!({"ms": 0}), SETTLE_LIMIT)
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

mod cancellation;
mod caps;
mod options;
