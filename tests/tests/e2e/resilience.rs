//! Restarts, outages and shutdowns: websocket clients outlive the bridge; calls made while the
//! bridge or RabbitMQ is away are held up to `--max-held-calls`; `/readyz` says what keeps the
//! gateway from taking calls; SIGTERM is a clean exit.

use std::collections::HashMap;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use wsmq_tests::rpc::{self, BROKER_UNAVAILABLE, check_envelope, error_code};
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
        Incoming::Close(Some((code, _))) => assert_eq!(code, 1001, "close code"),
        other => panic!("expected the websocket to close with 1001, got {other:?}"),
    }
    let status = gateway.wait_exit().await.expect("gateway exits");
    assert!(status.success(), "gateway exit status: {status}");

    system.cleanup().await;
}

/// An AMQP URL where nothing listens: a port the system gave this process, closed again. A
/// bridge pointed there sees RabbitMQ down without the shared broker being stopped.
fn unreachable_amqp_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds a port");
    let port = listener.local_addr().expect("has an address").port();
    drop(listener);
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// The `/readyz` body with the gateway not draining.
fn readiness(ready: bool, bridge: &str, broker: &str) -> Value {
    json!({"ready": ready, "bridge": bridge, "broker": broker, "draining": false})
}

#[tokio::test]
async fn readyz_says_ready_bridge_down_or_broker_down() {
    let mut system = System::start().await.expect("system starts");
    assert_eq!(
        system.readyz().await.expect("readyz answers"),
        (200, readiness(true, "up", "up")),
        "ready"
    );

    system.stop_bridge().await.expect("the bridge stops");
    let (_, body) = system
        .wait_readyz("the bridge down", |status, body| {
            status == 503 && body["bridge"] == "down"
        })
        .await
        .expect("/readyz notices the bridge is gone");
    // Without the bridge, nothing says RabbitMQ is up.
    assert_eq!(body, readiness(false, "down", "down"), "bridge down");

    system
        .start_bridge_with_amqp(&unreachable_amqp_url())
        .await
        .expect("a bridge that cannot reach RabbitMQ starts");
    let (_, body) = system
        .wait_readyz("the bridge up", |status, body| {
            status == 503 && body["bridge"] == "up"
        })
        .await
        .expect("the gateway links to the bridge");
    assert_eq!(body, readiness(false, "up", "down"), "broker down");

    system.stop_bridge().await.expect("that bridge stops");
    system.start_bridge().await.expect("the real bridge starts");
    let (_, body) = system
        .wait_readyz("ready", |status, _| status == 200)
        .await
        .expect("ready again");
    assert_eq!(body, readiness(true, "up", "up"), "ready again");

    system.cleanup().await;
}

#[tokio::test]
async fn calls_past_max_held_calls_get_32000_and_the_held_ones_are_sent_when_the_broker_is_back() {
    const MAX_HELD: u64 = 2;
    let mut system = System::builder()
        .gateway_arg("--max-held-calls", MAX_HELD)
        .start()
        .await
        .expect("system starts");
    let mut client = system.client().await.expect("client connects");
    system.stop_bridge().await.expect("the bridge stops");
    system
        .start_bridge_with_amqp(&unreachable_amqp_url())
        .await
        .expect("a bridge that cannot reach RabbitMQ starts");
    system
        .wait_health("the bridge up and RabbitMQ down", |status, body| {
            status == 503 && body["bridge"] == "up" && body["broker"] == "down"
        })
        .await
        .expect("the gateway hears RabbitMQ is down");

    for id in 1..=MAX_HELD + 1 {
        client
            .send_json(&rpc::request(id, "echo", json!({ "n": id })))
            .await
            .expect("sends");
    }
    // The call past the bound is refused at once; the first ones wait, so the refusal is the
    // first frame.
    let refusal = client
        .recv_json()
        .await
        .expect("the extra call is answered");
    assert_eq!(refusal["id"], MAX_HELD + 1, "{refusal}");
    assert_eq!(error_code(&refusal), Some(BROKER_UNAVAILABLE), "{refusal}");
    assert_eq!(
        refusal["error"]["message"], "broker unavailable",
        "{refusal}"
    );

    system.stop_bridge().await.expect("that bridge stops");
    system.start_bridge().await.expect("the real bridge starts");
    let mut answered = HashMap::new();
    while answered.len() < MAX_HELD as usize {
        let response = client
            .recv_json()
            .await
            .expect("the held calls are answered");
        let id = response["id"].as_u64().unwrap_or_default();
        assert!(
            (1..=MAX_HELD).contains(&id) && !answered.contains_key(&id),
            "unexpected response {response}"
        );
        answered.insert(id, response);
    }
    for (id, response) in &answered {
        assert_eq!(
            rpc::result(response),
            Some(&json!({ "n": id })),
            "a held call is sent when RabbitMQ is back: {response}"
        );
    }
    client
        .expect_no_stray_frames()
        .await
        .expect("each call answered once");

    system.cleanup().await;
}
