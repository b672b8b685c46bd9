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
        // Dropping the connection outright is acceptable too; a close frame without the
        // 1009 code is not.
        Incoming::Ended(_) => {}
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
