//! Restarts and shutdowns: websocket clients outlive the bridge; SIGTERM is a clean exit.

use std::collections::HashMap;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use wsmq_tests::rpc::{self, check_envelope};
use wsmq_tests::{Incoming, RECV_TIMEOUT, System};

/// A call long enough to be in flight across the bridge's death and restart.
const SLOW_CALL_MS: u64 = 1500;

fn all_up() -> Value {
    json!({"status": "ok", "bridge": "up", "broker": "up"})
}

#[tokio::test]
async fn bridge_restart_keeps_clients_connected() {
    let mut system = System::start().await.expect("system starts");
    let (status, body) = system.healthz().await.expect("healthz answers");
    assert_eq!((status, &body), (200, &all_up()), "healthy at start");
    let mut client = system.client().await.expect("client connects");
    let result = client
        .call_result("echo", json!({"when": "before"}))
        .await
        .expect("echo works");
    assert_eq!(result, json!({"when": "before"}));

    client
        .send_json(&rpc::request("slow", "sleep", json!({"ms": SLOW_CALL_MS})))
        .await
        .expect("sends the slow call");
    // Once a later call has made the whole round trip, the gateway has long had the slow
    // call's confirmation: the bridge forwards it at once, the echo's reply only after a worker
    // ran. (The bridge's own "job published" line is too early: killing it right then can
    // lose the confirmation on its way to the gateway, which then rightly fails the call.)
    let result = client
        .call_result("echo", json!({"when": "slow call in flight"}))
        .await
        .expect("echo works while the slow call runs");
    assert_eq!(result, json!({"when": "slow call in flight"}));
    system.kill_bridge().await.expect("bridge is killed");

    let (_, body) = system
        .wait_health("503 with the bridge down", |status, body| {
            status == 503 && body["bridge"] == "down"
        })
        .await
        .expect("healthz notices the bridge is gone");
    assert_eq!(body["status"], "unavailable", "{body}");

    // A call made during the outage is held by the gateway and sent once the bridge is back.
    client
        .send_json(&rpc::request("during", "echo", json!({"during": "outage"})))
        .await
        .expect("the websocket is still open during the outage");

    // Restart only once the slow call's reply waits in the durable reply queue: it must reach
    // the client through the new bridge.
    system
        .wait_queue_depth(&system.reply_queue(), 1)
        .await
        .expect("the worker's reply waits in the reply queue while the bridge is down");
    system.start_bridge().await.expect("bridge restarts");
    let (_, body) = system
        .wait_health("200 again", |status, _| status == 200)
        .await
        .expect("healthz recovers");
    assert_eq!(body, all_up());

    client
        .send_json(&rpc::request("after", "echo", json!({"after": "restart"})))
        .await
        .expect("the same websocket still sends");
    let mut responses = HashMap::new();
    while responses.len() < 3 {
        let response = client
            .recv_json()
            .await
            .unwrap_or_else(|e| panic!("responses so far {responses:?}: {e:#}"));
        check_envelope(&response).expect("well-formed response");
        let id = response["id"].as_str().unwrap_or_default().to_owned();
        assert!(
            matches!(id.as_str(), "slow" | "during" | "after") && !responses.contains_key(&id),
            "unexpected response {response}"
        );
        responses.insert(id, response);
    }
    assert_eq!(
        rpc::result(&responses["slow"]),
        Some(&json!({"slept_ms": SLOW_CALL_MS})),
        "the call in flight across the restart completes: {}",
        responses["slow"]
    );
    assert_eq!(
        rpc::result(&responses["during"]),
        Some(&json!({"during": "outage"})),
        "the call held during the outage is sent when the bridge is back: {}",
        responses["during"]
    );
    assert_eq!(
        rpc::result(&responses["after"]),
        Some(&json!({"after": "restart"})),
        "{}",
        responses["after"]
    );
    // Replies the killed bridge had not acknowledged are redelivered to the new one; the
    // gateway must drop those for calls already answered, not answer twice.
    let result = client
        .call_result("echo", json!({"when": "last"}))
        .await
        .expect("the next frame is the answer to the next call: no duplicates");
    assert_eq!(result, json!({"when": "last"}));

    system.cleanup().await;
}

#[tokio::test]
async fn every_binary_exits_cleanly_on_sigterm() {
    let mut system = System::start().await.expect("system starts");
    let mut client = system.client().await.expect("client connects");
    client
        .call_result("echo", json!([1]))
        .await
        .expect("echo works");

    let status = system
        .stop_gateway()
        .await
        .expect("gateway stops on SIGTERM");
    assert!(status.success(), "gateway exit status on SIGTERM: {status}");
    for status in system
        .stop_workers()
        .await
        .expect("worker stops on SIGTERM")
    {
        assert!(status.success(), "worker exit status on SIGTERM: {status}");
    }
    let status = system.stop_bridge().await.expect("bridge stops on SIGTERM");
    assert!(status.success(), "bridge exit status on SIGTERM: {status}");

    system.cleanup().await;
}

#[tokio::test]
async fn gateway_sigterm_finishes_calls_in_flight() {
    let mut system = System::start().await.expect("system starts");
    let mut client = system.client().await.expect("client connects");

    client
        .send_json(&rpc::request("slow", "sleep", json!({"ms": 500})))
        .await
        .expect("sends");
    // The echo's answer proves the gateway has read the slow call before the signal.
    let result = client
        .call_result("echo", json!(["read"]))
        .await
        .expect("echo works");
    assert_eq!(result, json!(["read"]));

    let gateway = system.take_gateway().expect("gateway runs");
    gateway.signal(Signal::SIGTERM).expect("SIGTERM sent");
    let response = client
        .recv_json()
        .await
        .expect("the call in flight is answered during shutdown");
    assert_eq!(response["id"], "slow", "{response}");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"slept_ms": 500})),
        "{response}"
    );
    match client
        .next_incoming(RECV_TIMEOUT)
        .await
        .expect("the gateway closes")
    {
        Incoming::Close(_) | Incoming::Ended(_) => {}
        other => panic!("expected the websocket to close, got {other:?}"),
    }
    let status = gateway.wait_exit().await.expect("gateway exits");
    assert!(status.success(), "gateway exit status: {status}");

    system.cleanup().await;
}
