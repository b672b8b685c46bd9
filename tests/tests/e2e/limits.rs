//! Size limits on websocket messages.

use serde_json::json;
use wsmq_tests::{Incoming, RECV_TIMEOUT, System, rpc};

const MAX_MESSAGE_BYTES: usize = 4096;

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let system = System::builder()
        .max_message_bytes(MAX_MESSAGE_BYTES)
        .start()
        .await
        .expect("system starts");
    let mut bystander = system.client().await.expect("bystander connects");
    let mut offender = system.client().await.expect("offender connects");

    // Just under the limit is fine.
    let payload = json!({"blob": "x".repeat(MAX_MESSAGE_BYTES - 200)});
    let response = offender
        .call("echo", payload.clone())
        .await
        .expect("a message under the limit is served");
    assert_eq!(rpc::result(&response), Some(&payload), "{response}");

    // A well-formed request of 8 KiB: only its size is wrong.
    let big = rpc::request(
        1,
        "echo",
        json!({"blob": "y".repeat(2 * MAX_MESSAGE_BYTES)}),
    );
    offender.send_json(&big).await.expect("sends");
    match offender
        .next_incoming(RECV_TIMEOUT)
        .await
        .expect("the gateway reacts")
    {
        Incoming::Close(Some((code, _))) => assert_eq!(code, 1009, "close code"),
        other => panic!("expected a close (1009), got {other:?}"),
    }

    let payload = json!({"unaffected": true});
    let response = bystander
        .call("echo", payload.clone())
        .await
        .expect("the other client still works");
    assert_eq!(rpc::result(&response), Some(&payload), "{response}");

    system.cleanup().await;
}

/// `--max-json-depth`, `--max-batch-len` and `--max-params-bytes` each refuse with their own
/// code, and the connection goes on serving calls after every refusal.
#[tokio::test]
async fn parser_limits_refuse_with_their_own_codes_and_keep_the_socket() {
    let system = System::builder()
        .gateway_arg("--max-json-depth", 6)
        .gateway_arg("--max-batch-len", 3)
        .gateway_arg("--max-params-bytes", 64)
        .start()
        .await
        .expect("system starts");
    let mut client = system.client().await.expect("client connects");

    // Depth: the request object is level 1; params [[[[1]]]] adds 5 levels (6, fine), one more
    // bracket is 7.
    let within = r#"{"jsonrpc":"2.0","method":"echo","id":1,"params":[[[[[1]]]]]}"#;
    client.send_text(within).await.expect("sends");
    let response = client.recv_json().await.expect("answered");
    assert_eq!(
        rpc::result(&response),
        Some(&json!([[[[[1]]]]])),
        "{response}"
    );
    let deep = r#"{"jsonrpc":"2.0","method":"echo","id":2,"params":[[[[[[1]]]]]]}"#;
    client.send_text(deep).await.expect("sends");
    let response = client.recv_json().await.expect("answered");
    assert_eq!(
        rpc::error_code(&response),
        Some(rpc::NESTING_TOO_DEEP),
        "{response}"
    );
    assert_eq!(response["id"], serde_json::Value::Null, "{response}");

    // Batch length: 4 members over a limit of 3 is one error for the whole batch.
    let batch = json!([1, 2, 3, 4]).to_string();
    client.send_text(batch).await.expect("sends");
    let response = client.recv_json().await.expect("answered");
    assert_eq!(
        rpc::error_code(&response),
        Some(rpc::BATCH_TOO_LONG),
        "{response}"
    );

    // Params size: refused per call, with the call's id; the batch's other member runs.
    let big = rpc::request("big", "echo", json!({"blob": "z".repeat(100)}));
    let small = rpc::request("small", "echo", json!({"s": 1}));
    client.send_json(&json!([big, small])).await.expect("sends");
    let response = client.recv_json().await.expect("answered");
    let members = response.as_array().expect("a batch response");
    assert_eq!(members.len(), 2, "{response}");
    for member in members {
        match member["id"].as_str() {
            Some("big") => assert_eq!(
                rpc::error_code(member),
                Some(rpc::PARAMS_TOO_LARGE),
                "{member}"
            ),
            Some("small") => assert_eq!(rpc::result(member), Some(&json!({"s": 1})), "{member}"),
            _ => panic!("unexpected member {member}"),
        }
    }

    let response = client
        .call("echo", json!({"still": "open"}))
        .await
        .expect("the socket stays open");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"still": "open"})),
        "{response}"
    );
    system.cleanup().await;
}
