//! In-flight caps, per client and for the whole gateway.
//!
//! The calls that fill a cap go to a worker played by the test, which answers only when the
//! test says: they are in flight for as long as the test needs, however slow the machine.

use super::*;

/// The method the capped calls go to.
const HOLD: &str = "hold";

#[tokio::test]
async fn in_flight_cap_refuses_extra_calls_while_other_clients_proceed() {
    let mut system = System::builder()
        .max_inflight_per_client(2)
        .start()
        .await
        .expect("system starts");
    let mut hold = FakeWorker::start(&mut system, HOLD, |_| None)
        .await
        .expect("fake worker starts");
    let mut a = system.client().await.expect("client A connects");
    let mut b = system.client().await.expect("client B connects");

    for id in 1..=3 {
        a.send_json(&rpc::request(id, HOLD, json!({ "n": id })))
            .await
            .expect("A sends");
    }
    // Nothing answers A's first two calls until the test does: the first frame is the refusal.
    let refusal = a.recv_json().await.expect("A's third call is refused");
    assert_eq!(
        refusal["id"], 3,
        "the call past the cap is refused: {refusal}"
    );
    assert_eq!(error_code(&refusal), Some(TOO_MANY_IN_FLIGHT), "{refusal}");

    // A's cap is A's alone: B is served while A's two calls are in flight.
    let result = b
        .call_result("echo", json!({"b": "proceeds"}))
        .await
        .expect("B's call succeeds while A is at its cap");
    assert_eq!(result, json!({"b": "proceeds"}));

    for _ in 0..2 {
        let job = hold.next_job().await.expect("A's call reaches the worker");
        let body = job.body.clone();
        hold.send(&job, None, &body).await.expect("reply published");
    }
    let mut answered = Vec::new();
    for _ in 0..2 {
        let response = a.recv_json().await.expect("A's calls are answered");
        let id = response["id"].clone();
        assert_eq!(
            rpc::result(&response),
            Some(&json!({ "n": id })),
            "{response}"
        );
        answered.push(id);
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

    hold.stop().await;
    system.cleanup().await;
}

#[tokio::test]
async fn global_in_flight_cap_refuses_every_client_until_calls_end() {
    let mut system = System::builder()
        .max_inflight(2)
        .start()
        .await
        .expect("system starts");
    let mut hold = FakeWorker::start(&mut system, HOLD, |_| None)
        .await
        .expect("fake worker starts");
    let mut a = system.client().await.expect("client A connects");
    let mut b = system.client().await.expect("client B connects");

    for id in 1..=2 {
        a.send_json(&rpc::request(id, HOLD, json!({ "n": id })))
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

    // B has nothing in flight, but the gateway is full until the test answers A's calls.
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
        let job = hold.next_job().await.expect("A's call reaches the worker");
        let body = job.body.clone();
        hold.send(&job, None, &body).await.expect("reply published");
    }
    for _ in 0..2 {
        let response = a.recv_json().await.expect("A's calls are answered");
        assert_eq!(
            rpc::result(&response),
            Some(&json!({ "n": response["id"] })),
            "{response}"
        );
    }
    // Room again.
    let result = b
        .call_result("echo", json!({"b": 2}))
        .await
        .expect("B's call succeeds once A's calls have ended");
    assert_eq!(result, json!({"b": 2}));

    hold.stop().await;
    system.cleanup().await;
}
