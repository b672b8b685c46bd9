//! The gateway's JSON-RPC 2.0 semantics: errors, notifications, batches.

use serde_json::{Value, json};
use wsmq_tests::rpc::{
    self, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, check_envelope, error_code,
};
use wsmq_tests::{FakeWorker, System, WsClient};

/// A good call on `client` works: its response is the next frame and carries the params back.
async fn assert_echo_works(client: &mut WsClient, why: &str) {
    let payload = json!({"still": "usable", "nonce": uuid::Uuid::new_v4().to_string()});
    let response = client
        .call("echo", payload.clone())
        .await
        .unwrap_or_else(|e| panic!("echo {why}: {e:#}"));
    assert_eq!(
        rpc::result(&response),
        Some(&payload),
        "echo {why}: {response}"
    );
}

/// Sends `request` (which has id `id`) and asserts the very next frame is its response: nothing
/// sent before it (notifications) produced a frame.
async fn assert_next_frame_answers(client: &mut WsClient, id: &str, why: &str) {
    let payload = json!({"id": id});
    client
        .send_json(&rpc::request(id, "echo", payload.clone()))
        .await
        .expect("sends");
    let response = client.recv_json().await.expect("gets a frame");
    assert_eq!(
        response.get("id"),
        Some(&json!(id)),
        "{why}: the first frame is not the response to request {id:?}: {response}"
    );
    assert_eq!(rpc::result(&response), Some(&payload), "{why}: {response}");
}

#[tokio::test]
async fn unknown_method_is_method_not_found() {
    let system = System::start().await.expect("system starts");
    let mut client = system.client().await.expect("client connects");

    let response = client
        .call("no-such-method", json!({"x": 1}))
        .await
        .expect("gets a response with its id");
    assert_eq!(error_code(&response), Some(METHOD_NOT_FOUND), "{response}");

    // A string id comes back as the same string.
    client
        .send_json(&rpc::request("abc-7", "no.such.method", json!([1, 2])))
        .await
        .expect("sends");
    let response = client.recv_json().await.expect("gets a response");
    check_envelope(&response).expect("well-formed response");
    assert_eq!(response["id"], json!("abc-7"), "{response}");
    assert_eq!(error_code(&response), Some(METHOD_NOT_FOUND), "{response}");

    system.cleanup().await;
}

#[tokio::test]
async fn parse_error_keeps_the_socket_usable() {
    let system = System::start().await.expect("system starts");
    let mut client = system.client().await.expect("client connects");

    for garbage in [
        r#"{"jsonrpc": "2.0", "method": "echo", "params": [1, 2"#,
        "this is not json",
        r#"[{"jsonrpc": "2.0", "method": "echo", "id": 1},"#,
    ] {
        client.send_text(garbage).await.expect("sends");
        let response = client.recv_json().await.expect("gets a response");
        check_envelope(&response).expect("well-formed response");
        assert_eq!(
            error_code(&response),
            Some(PARSE_ERROR),
            "for {garbage:?}: {response}"
        );
        assert_eq!(response["id"], Value::Null, "for {garbage:?}: {response}");
    }
    assert_echo_works(&mut client, "after parse errors").await;

    system.cleanup().await;
}

#[tokio::test]
async fn invalid_requests_get_invalid_request() {
    let system = System::start().await.expect("system starts");
    let mut client = system.client().await.expect("client connects");

    // (request, the id its error carries: the request's own when it is a usable one, a
    // string, a number or null; null when there is none to read)
    let cases: [(&str, Option<Value>); 9] = [
        (
            r#"{"jsonrpc":"1.0","method":"echo","params":{},"id":1}"#,
            Some(json!(1)),
        ),
        (r#"{"method":"echo","params":{},"id":2}"#, Some(json!(2))),
        (
            r#"{"jsonrpc":"2.0","method":42,"params":{},"id":3}"#,
            Some(json!(3)),
        ),
        (
            r#"{"jsonrpc":"2.0","method":"echo","params":5,"id":4}"#,
            Some(json!(4)),
        ),
        (
            r#"{"jsonrpc":"2.0","method":"echo","params":"text","id":5}"#,
            Some(json!(5)),
        ),
        (r#"{"jsonrpc":"2.0","id":6}"#, Some(json!(6))),
        // An id that is neither string, number nor null cannot be echoed.
        (
            r#"{"jsonrpc":"2.0","method":"echo","id":{"nested":true}}"#,
            None,
        ),
        ("42", None),
        (r#""echo""#, None),
    ];
    for (request, echoed_id) in cases {
        client.send_text(request).await.expect("sends");
        let response = client
            .recv_json()
            .await
            .unwrap_or_else(|e| panic!("no response to {request}: {e:#}"));
        check_envelope(&response).unwrap_or_else(|e| panic!("bad response to {request}: {e}"));
        assert_eq!(
            error_code(&response),
            Some(INVALID_REQUEST),
            "for {request}: {response}"
        );
        let expected_id = echoed_id.unwrap_or(Value::Null);
        assert_eq!(
            response["id"], expected_id,
            "for {request}: the error carries the request's id when it has a usable one, else \
             null: {response}"
        );
    }
    assert_echo_works(&mut client, "after invalid requests").await;

    system.cleanup().await;
}

#[tokio::test]
async fn notification_runs_without_reply() {
    let mut system = System::start().await.expect("system starts");
    // A method served by the test itself, to see that a notification's job really is published.
    let mut probe = FakeWorker::start(&mut system, "probe", |_| Some(b"\"ignored\"".to_vec()))
        .await
        .expect("probe worker starts");
    let mut client = system.client().await.expect("client connects");

    client
        .send_json(&rpc::notification("probe", json!({"seen": "yes"})))
        .await
        .expect("sends");
    let job = probe
        .next_job()
        .await
        .expect("the notification is published");
    let params: Value = serde_json::from_slice(&job.body).expect("job body is JSON");
    assert_eq!(params, json!({"seen": "yes"}), "job body is the params");
    assert_next_frame_answers(&mut client, "after-probe", "notification to probe").await;

    client
        .send_json(&rpc::notification("echo", json!({"n": 1})))
        .await
        .expect("sends");
    assert_next_frame_answers(&mut client, "after-echo", "notification to echo").await;

    client
        .send_json(&rpc::notification("sleep", json!({"ms": 50})))
        .await
        .expect("sends");
    assert_next_frame_answers(&mut client, "after-sleep", "notification to sleep").await;

    // Not even an error answers a notification.
    client
        .send_json(&rpc::notification("no-such-method", json!({})))
        .await
        .expect("sends");
    assert_next_frame_answers(&mut client, "after-unknown", "notification to no method").await;

    probe.stop().await;
    system.cleanup().await;
}

#[tokio::test]
async fn batch_answers_every_request_and_skips_notifications() {
    let system = System::start().await.expect("system starts");
    let mut client = system.client().await.expect("client connects");

    let batch = json!([
        rpc::request(1, "echo", json!({"a": 1})),
        rpc::notification("echo", json!({"note": true})),
        {"foo": "bar"},
        rpc::request("two", "sleep", json!({"ms": 20})),
        rpc::request(3, "no-such-method", json!({})),
        rpc::request(4, "fail", json!({"why": "batch"})),
    ]);
    client.send_json(&batch).await.expect("sends");
    let response = client.recv_json().await.expect("gets a response");
    let members = response
        .as_array()
        .unwrap_or_else(|| panic!("a batch is answered with an array: {response}"));
    assert_eq!(
        members.len(),
        5,
        "one response per non-notification member: {response}"
    );
    for member in members {
        check_envelope(member).expect("well-formed member");
    }
    let find = |id: Value| {
        members
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no response with id {id} in {response}"))
    };
    assert_eq!(rpc::result(find(json!(1))), Some(&json!({"a": 1})));
    assert_eq!(
        rpc::result(find(json!("two"))),
        Some(&json!({"slept_ms": 20}))
    );
    assert_eq!(error_code(find(json!(3))), Some(METHOD_NOT_FOUND));
    assert_eq!(error_code(find(json!(4))), Some(4000));
    assert_eq!(error_code(find(Value::Null)), Some(INVALID_REQUEST));

    // An empty batch is one invalid request, not an array.
    client.send_text("[]").await.expect("sends");
    let response = client.recv_json().await.expect("gets a response");
    assert!(
        response.is_object(),
        "[] gets a single error object: {response}"
    );
    assert_eq!(error_code(&response), Some(INVALID_REQUEST), "{response}");
    assert_eq!(response["id"], Value::Null, "{response}");

    // A batch of non-objects: one invalid-request error per member.
    client.send_text("[1, 2]").await.expect("sends");
    let response = client.recv_json().await.expect("gets a response");
    let members = response
        .as_array()
        .unwrap_or_else(|| panic!("an array: {response}"));
    assert_eq!(members.len(), 2, "{response}");
    for member in members {
        assert_eq!(error_code(member), Some(INVALID_REQUEST), "{response}");
        assert_eq!(member["id"], Value::Null, "{response}");
    }

    // A batch of notifications only gets nothing back.
    client
        .send_json(&json!([
            rpc::notification("echo", json!({"quiet": 1})),
            rpc::notification("sleep", json!({"ms": 10})),
        ]))
        .await
        .expect("sends");
    assert_next_frame_answers(&mut client, "after-quiet-batch", "all-notification batch").await;

    system.cleanup().await;
}

#[tokio::test]
async fn method_not_found_goes_to_the_right_call_among_concurrent_ones() {
    // RabbitMQ returns an unroutable message (basic.return) and then confirms it, often with one
    // `multiple` ack covering other publishes in flight on the channel; the return must still
    // be matched to the job it belongs to, not to whichever confirm completes next. Several
    // bursts, since whether acks get batched depends on timing.
    const ROUNDS: i64 = 8;
    const CALLS: i64 = 100;
    let system = System::builder()
        .max_inflight_per_client(128)
        .start()
        .await
        .expect("system starts");
    let mut client = system.client().await.expect("client connects");

    for round in 0..ROUNDS {
        let ids = (0..CALLS).map(|i| round * 1000 + i);
        for id in ids.clone() {
            let method = if id % 2 == 0 {
                "echo"
            } else {
                "no-such-method"
            };
            client
                .send_json(&rpc::request(id, method, json!({"id": id})))
                .await
                .expect("sends");
        }
        let mut answered = std::collections::BTreeSet::new();
        let mut wrong = Vec::new();
        while answered.len() < CALLS as usize {
            let Ok(response) = client.recv_json().await else {
                break;
            };
            let Some(id) = response["id"].as_i64() else {
                panic!("response without a numeric id: {response}");
            };
            assert!(answered.insert(id), "call {id} answered twice: {response}");
            let right = if id % 2 == 0 {
                rpc::result(&response) == Some(&json!({"id": id}))
            } else {
                error_code(&response) == Some(METHOD_NOT_FOUND)
            };
            if !right {
                wrong.push(response);
            }
        }
        let missing: Vec<i64> = ids.filter(|id| !answered.contains(id)).collect();
        assert!(
            wrong.is_empty() && missing.is_empty(),
            "round {round}: wrong answers: {wrong:?}; never answered: {missing:?} \
             (odd ids call no-such-method, even ids echo)"
        );
    }

    system.cleanup().await;
}

/// Large params and results pass the gateway and the bridge as slices of the buffers they
/// arrived in rather than copies (from 16 KiB on); whatever the size, what the worker gets and
/// what the client gets back is the JSON that was sent, escapes and multi-byte text included,
/// alone or in a batch beside small calls.
#[tokio::test]
async fn large_params_and_results_cross_unchanged_alone_and_in_a_batch() {
    let system = System::start().await.expect("system starts");
    let mut client = system.client().await.expect("client connects");

    // 14 bytes of UTF-8, 17 once escaped in JSON.
    let unit = "é\"\\ ☃ 𝄞\n";
    for units in [6usize, 960, 964, 4_000, 30_000] {
        let payload = json!({"data": unit.repeat(units), "n": units});
        let response = client
            .call("echo", payload.clone())
            .await
            .unwrap_or_else(|e| panic!("echo of {units} units: {e:#}"));
        assert_eq!(rpc::result(&response), Some(&payload), "{units} units");
    }

    let big = json!({"big": unit.repeat(6_000)});
    let small = json!({"small": 1});
    client
        .send_json(&json!([
            rpc::request("big", "echo", big.clone()),
            rpc::request("small", "echo", small.clone()),
        ]))
        .await
        .expect("sends");
    let response = client.recv_json().await.expect("gets the batch's response");
    let members = response
        .as_array()
        .unwrap_or_else(|| panic!("an array: {}", &response.to_string()[..200]));
    assert_eq!(members.len(), 2);
    for (id, payload) in [("big", &big), ("small", &small)] {
        let member = members
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no response to {id}"));
        assert_eq!(rpc::result(member), Some(payload), "{id}");
    }

    system.cleanup().await;
}
