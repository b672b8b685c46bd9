//! In-flight caps, per client and for the whole gateway.

use super::*;

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
