//! What workers say reaches the client faithfully, whatever the worker is written in.

use serde_json::{Value, json};
use wsmq_tests::rpc::{self, INTERNAL_ERROR, error_code, error_message};
use wsmq_tests::{FakeWorker, System};

#[tokio::test]
async fn worker_error_passes_through() {
    let system = System::start().await.expect("system starts");
    let mut client = system.client().await.expect("client connects");

    let params = json!({"reason": "testing", "nested": [1, {"deep": null}]});
    let response = client
        .call("fail", params.clone())
        .await
        .expect("gets a response");
    assert_eq!(error_code(&response), Some(4000), "{response}");
    assert_eq!(
        error_message(&response),
        Some("requested failure"),
        "{response}"
    );
    assert_eq!(
        response["error"]["data"], params,
        "data is the params: {response}"
    );
    assert!(response.get("result").is_none(), "{response}");

    system.cleanup().await;
}

#[tokio::test]
async fn garbage_reply_from_worker_is_internal_error_naming_the_method() {
    let mut system = System::start().await.expect("system starts");
    let garbage = FakeWorker::start(&mut system, "garbage", |_| Some(b"not json{".to_vec()))
        .await
        .expect("garbage worker starts");
    let mut client = system.client().await.expect("client connects");

    let response = client
        .call("garbage", json!({"x": 1}))
        .await
        .expect("gets a response");
    assert_eq!(error_code(&response), Some(INTERNAL_ERROR), "{response}");
    let error = &response["error"];
    let names_method = error_message(&response).is_some_and(|m| m.contains("garbage"))
        || error
            .get("data")
            .is_some_and(|d| d.to_string().contains("garbage"));
    assert!(
        names_method,
        "the error names the method \"garbage\": {response}"
    );

    // The bad reply did not hurt the connection or the bridge.
    let payload = json!({"after": "garbage"});
    let response = client
        .call("echo", payload.clone())
        .await
        .expect("echo works after");
    assert_eq!(rpc::result(&response), Some(&payload), "{response}");

    garbage.stop().await;
    system.cleanup().await;
}

#[tokio::test]
async fn python_pika_worker_serves_a_method() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    system
        .start_pika_worker("reverse")
        .await
        .expect("pika worker starts (needs `pip install pika`)");
    let mut client = system.client().await.expect("client connects");

    let response = client
        .call("reverse", json!({"text": "abc"}))
        .await
        .expect("gets a response");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"reversed": "cba", "worker": "pika"})),
        "{response}"
    );
    // Unicode survives the trip through Python.
    let response = client
        .call("reverse", json!({"text": "héllo→"}))
        .await
        .expect("gets a response");
    assert_eq!(
        response["result"]["reversed"],
        Value::from("→olléh"),
        "{response}"
    );

    system.cleanup().await;
}
