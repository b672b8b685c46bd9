//! What an authenticated identity brings: its method allowlist, the wsmq-caller header, and sessions bound to it.

use super::*;

#[tokio::test]
async fn method_outside_the_allowlist_is_refused_exactly_like_an_unknown_method() {
    let secrets = Secrets::new();
    let tokens = secrets.write("tokens", &format!("alice:{ALICE}:echo,prog*\nbob:{BOB}\n"));
    let system = system_with(&[("--tokens", arg(&tokens))]).await;

    let header = bearer(ALICE);
    let mut alice = connect_with(&system, "/ws", &[("authorization", &header)])
        .await
        .expect("alice");
    echo_works(&mut alice).await;
    // The worker answers it (here: about its params), so the gateway let it through.
    let progress = alice.call("progress", json!({})).await.expect("answered");
    assert_ne!(
        rpc::error_code(&progress),
        Some(-32601),
        "prog* allows progress: {progress}"
    );

    // fib exists (bob may call it); nosuch.method does not. Alice cannot tell them apart.
    let header = bearer(BOB);
    let mut bob = connect_with(&system, "/ws", &[("authorization", &header)])
        .await
        .expect("bob");
    let fib = bob.call("fib", json!({"n": 10})).await.expect("answered");
    assert!(rpc::result(&fib).is_some(), "fib exists: {fib}");

    let refused = alice.call("fib", json!({"n": 10})).await.expect("answered");
    let unknown = alice
        .call("nosuch.method", json!({"n": 10}))
        .await
        .expect("answered");
    for (response, method) in [(&refused, "fib"), (&unknown, "nosuch.method")] {
        assert_eq!(
            response["error"],
            json!({"code": -32601, "message": "Method not found", "data": format!("no worker serves {method:?}")}),
            "{response}"
        );
    }
    system.cleanup().await;
}

#[tokio::test]
async fn callers_identity_reaches_the_worker_in_the_wsmq_caller_header() {
    let secrets = Secrets::new();
    let tokens = secrets.write("tokens", &format!("alice:{ALICE}\n"));
    let mut system = system_with(&[("--tokens", arg(&tokens))]).await;
    let mut worker = FakeWorker::start(&mut system, "whoami", |job| {
        Some(serde_json::to_vec(&json!({"caller": job.caller_header})).expect("json"))
    })
    .await
    .expect("fake worker");

    let header = bearer(ALICE);
    let mut alice = connect_with(&system, "/ws", &[("authorization", &header)])
        .await
        .expect("alice");
    let response = alice.call("whoami", json!({})).await.expect("answered");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"caller": "alice"})),
        "{response}"
    );
    let job = worker.next_job().await.expect("job");
    assert_eq!(job.caller_header.as_deref(), Some("alice"));
    worker.stop().await;
    system.cleanup().await;
}

#[tokio::test]
async fn session_resumes_only_for_the_identity_that_created_it() {
    let secrets = Secrets::new();
    let tokens = secrets.write("tokens", &format!("alice:{ALICE}\nbob:{BOB}\n"));
    let system = system_with(&[("--tokens", arg(&tokens))]).await;

    let alice_auth = bearer(ALICE);
    let mut alice = connect_with(&system, "/ws", &[("authorization", &alice_auth)])
        .await
        .expect("alice");
    let session = alice
        .await_session(RECV_TIMEOUT)
        .await
        .expect("greeting")
        .token;
    alice.close().await.expect("closes");
    let resume = format!("/ws?session={session}");

    let bob_auth = bearer(BOB);
    assert_eq!(
        status_of(connect_with(&system, &resume, &[("authorization", &bob_auth)]).await),
        404,
        "another identity is told the session does not exist"
    );
    assert_eq!(
        status_of(
            connect_with(
                &system,
                "/ws?session=00112233445566778899aabbccddeeff",
                &[("authorization", &bob_auth)]
            )
            .await
        ),
        404
    );
    // The connection's close reaches the gateway asynchronously: the session is free once the
    // gateway has let the connection go.
    system
        .wait_metric("wsmq_connections", "0", |n| n == 0.0)
        .await
        .expect("the gateway lets alice's first connection go");
    let mut alice = connect_with(&system, &resume, &[("authorization", &alice_auth)])
        .await
        .unwrap_or_else(|status| panic!("alice could not resume her session: HTTP {status}"));
    echo_works(&mut alice).await;
    system.cleanup().await;
}
