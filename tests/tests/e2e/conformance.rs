//! The conformance kit against every worker CI knows: each must pass every check, and a worker
//! broken on purpose must fail the checks it breaks. A new worker (an SDK's example) is one
//! function calling `conformance::assert_conforms` with its command line (docs/conformance.md).

use wsmq_tests::System;
use wsmq_tests::binaries::binaries;
use wsmq_tests::conformance::{self, python};

#[tokio::test]
async fn rust_demo_worker_passes_the_conformance_kit() {
    let bins = binaries().await.expect("binaries");
    conformance::assert_conforms(&format!("{} --conformance", bins.worker.display())).await;
}

#[tokio::test]
async fn node_sdk_example_worker_passes_the_conformance_kit() {
    conformance::assert_conforms(&format!(
        "exec {} clients/js/worker/bin/wsmq-worker.js clients/js/worker/examples/demo.js",
        super::clients::node()
    ))
    .await;
}

#[tokio::test]
async fn pika_example_worker_passes_the_conformance_kit() {
    conformance::assert_conforms(&format!(
        "{} tests/workers/pika_worker.py --conformance",
        python()
    ))
    .await;
}

#[tokio::test]
async fn python_sdk_example_passes_the_conformance_kit() {
    // This tree's SDK (PYTHONPATH), whatever copy pip installed; `exec` so that the kit's
    // signals reach the worker itself.
    conformance::assert_conforms(&format!(
        "PYTHONPATH=clients/python exec {} -m wsmq_worker clients/python/examples/demo_worker.py:worker",
        python()
    ))
    .await;
}

#[tokio::test]
async fn conformance_kit_fails_a_worker_that_acks_early_and_ignores_deadlines() {
    let all = conformance::all_checks()
        .await
        .expect("the kit lists its checks");
    let report = conformance::run_kit(&format!(
        "{} tests/workers/nonconforming_worker.py --conformance",
        python()
    ))
    .await
    .expect("the kit runs");
    assert_eq!(
        report.with_verdict("FAIL"),
        ["deadline-skip", "redelivery"],
        "{:#?}",
        report.lines
    );
    let passed = report.with_verdict("PASS");
    assert_eq!(passed.len() + 2, all.len(), "{:#?}", report.lines);
    assert_eq!(
        report.status.code(),
        Some(1),
        "exit status 1: a check failed"
    );
}

#[tokio::test]
async fn conformance_kit_checks_a_worker_behind_a_running_gateway() {
    // --gateway instead of --start: the harness's gateway, which authenticates, and bridge; the
    // kit connects with the token given and expects the worker to see its identity, and still
    // starts, kills and restarts the worker itself.
    const TOKEN: &str = "conformance-token-5f0c";
    let secrets = tempfile::tempdir().expect("temp dir");
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, format!("sdk-author:{TOKEN}\n")).expect("writes the tokens file");
    let mut system = System::builder()
        .without_worker()
        .gateway_arg("--tokens", tokens.to_str().expect("utf-8 path"))
        .start()
        .await
        .expect("system starts");
    for method in conformance::METHODS {
        system.track_queue(system.queue_for(method));
    }
    let bins = binaries().await.expect("binaries");
    let args = [
        "--gateway".to_owned(),
        format!("ws://{}/ws", system.gateway_addr().expect("gateway")),
        "--token".to_owned(),
        TOKEN.to_owned(),
        "--caller".to_owned(),
        "sdk-author".to_owned(),
        "--amqp".to_owned(),
        system.amqp_url().to_owned(),
        "--queue-prefix".to_owned(),
        system.prefix().to_owned(),
        "--worker-cmd".to_owned(),
        format!("{} --conformance", bins.worker.display()),
    ];
    let report = conformance::run_kit_with(&args)
        .await
        .expect("the kit runs");
    let all = conformance::all_checks()
        .await
        .expect("the kit lists its checks");
    assert_eq!(report.with_verdict("PASS"), all, "{:#?}", report.lines);
    assert!(report.status.success(), "{}", report.status);
    system.cleanup().await;
}
