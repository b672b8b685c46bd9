//! The demo worker's configuration and methods, without a broker.

use super::*;

fn request(method: &str, params: Value) -> Request {
    Request::new(method, params, "job-1")
}

#[test]
fn fib_starts_zero_one_and_adds_up() {
    let first: Vec<Option<u64>> = (0..10).map(fib).collect();
    let expected = [0, 1, 1, 2, 3, 5, 8, 13, 21, 34].map(Some);
    assert_eq!(first, expected);
}

#[test]
fn fib_reaches_the_largest_that_fits_in_u64() {
    assert_eq!(fib(MAX_FIB_N), Some(12_200_160_415_121_876_738));
    assert_eq!(fib(MAX_FIB_N + 1), None);
    assert_eq!(fib(u64::MAX), None);
}

#[test]
fn fib_answers_a_json_number() {
    assert_eq!(fib_method(&request("fib", json!({"n": 10}))), Ok(json!(55)));
    assert_eq!(
        fib_method(&request("fib", json!({"n": 93}))),
        Ok(json!(12_200_160_415_121_876_738u64))
    );
}

#[test]
fn fib_refuses_n_over_93_as_invalid_params() {
    let error = fib_method(&request("fib", json!({"n": 94}))).expect_err("too large");
    assert_eq!(error.code, RpcError::INVALID_PARAMS);
    assert!(error.message.contains("at most 93"), "{error}");
}

#[test]
fn fib_refuses_malformed_params_as_invalid_params() {
    for params in [
        json!(null),
        json!({}),
        json!({"n": -1}),
        json!({"n": 1.5}),
        json!({"n": "3"}),
        json!({"n": 3, "m": 4}),
    ] {
        let error = fib_method(&request("fib", params.clone())).expect_err("malformed");
        assert_eq!(error.code, RpcError::INVALID_PARAMS, "{params}");
        assert!(error.message.starts_with("invalid params: "), "{error}");
    }
}

#[test]
fn params_may_be_given_by_position_as_json_rpc_allows() {
    assert_eq!(sleep_ms(&request("sleep", json!([5]))), Ok(5));
    assert_eq!(fib_method(&request("fib", json!([10]))), Ok(json!(55)));
}

#[test]
fn sleep_accepts_up_to_ten_minutes() {
    assert_eq!(sleep_ms(&request("sleep", json!({"ms": 0}))), Ok(0));
    assert_eq!(
        sleep_ms(&request("sleep", json!({"ms": MAX_SLEEP_MS}))),
        Ok(MAX_SLEEP_MS)
    );
}

#[test]
fn sleep_refuses_more_than_ten_minutes() {
    let error = sleep_ms(&request("sleep", json!({"ms": MAX_SLEEP_MS + 1}))).expect_err("too long");
    assert_eq!(error.code, RpcError::INVALID_PARAMS);
    assert!(error.message.contains("at most 600000"), "{error}");
}

#[test]
fn sleep_refuses_malformed_params_as_invalid_params() {
    for params in [
        json!(null),
        json!({"ms": "5"}),
        json!({"ms": -5}),
        json!([]),
    ] {
        let error = sleep_ms(&request("sleep", params.clone())).expect_err("malformed");
        assert_eq!(error.code, RpcError::INVALID_PARAMS, "{params}");
    }
}

#[tokio::test]
async fn sleep_answers_how_long_it_slept() {
    assert_eq!(
        sleep(request("sleep", json!({"ms": 1}))).await,
        Ok(json!({"slept_ms": 1}))
    );
}

#[tokio::test(start_paused = true)]
async fn sleep_stops_early_when_cancelled() {
    let request = request("sleep", json!({"ms": MAX_SLEEP_MS}));
    let cancel = request.cancellation().clone();
    let started = tokio::time::Instant::now();
    let sleeping = tokio::spawn(sleep(request));
    tokio::time::sleep(Duration::from_millis(10)).await;
    cancel.cancel();
    let outcome = sleeping.await.expect("handler task");
    assert_eq!(outcome, Err(RpcError::new(-32002, "cancelled")));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn progress_counts_its_steps_and_answers_done() {
    let started = tokio::time::Instant::now();
    let outcome = progress(request("progress", json!({"steps": 3, "ms": 100}))).await;
    assert_eq!(outcome, Ok(json!({"done": 3})));
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn progress_stops_at_once_when_cancelled() {
    let request = request("progress", json!({"steps": 1000, "ms": 60_000}));
    request.cancellation().cancel();
    let outcome = progress(request).await;
    assert_eq!(outcome, Err(RpcError::cancelled()));
}

#[test]
fn progress_refuses_more_than_1000_steps_or_a_minute_per_step() {
    for params in [
        json!({"steps": 1001, "ms": 1}),
        json!({"steps": 1, "ms": 60_001}),
        json!({"steps": -1, "ms": 1}),
        json!({"steps": 1}),
    ] {
        let error =
            progress_params(&request("progress", params.clone())).expect_err("out of bounds");
        assert_eq!(error.code, RpcError::INVALID_PARAMS, "{params}");
    }
    assert_eq!(
        progress_params(&request("progress", json!({"steps": 1000, "ms": 60_000}))),
        Ok(ProgressParams {
            steps: 1000,
            ms: 60_000
        })
    );
}

#[test]
fn fail_carries_code_4000_and_the_params() {
    let params = json!({"why": "testing"});
    assert_eq!(
        fail(request("fail", params.clone())),
        RpcError {
            code: 4000,
            message: "requested failure".into(),
            data: Some(params),
        }
    );
}

#[test]
fn cli_reads_defaults_and_flags() {
    let cli = Cli::try_parse_from(["wsmq-worker"])
        .expect("defaults")
        .config()
        .expect("valid");
    assert_eq!(cli.amqp, ["amqp://guest:guest@127.0.0.1:5672/%2f"]);
    assert_eq!(cli.concurrency, DEFAULT_CONCURRENCY);
    assert_eq!(cli.max_priority, 9);
    assert_eq!(cli.queue_type, QueueKind::Classic);
    assert_eq!(cli.delivery_limit, 3);
    assert!(!cli.allow_crash);
    assert!(cli.method_concurrency.is_empty());
    assert_eq!(cli.log_format, LogFormat::Plain);
    let cli = Cli::try_parse_from([
        "wsmq-worker",
        "--queue-prefix",
        "t1.",
        "--concurrency",
        "4",
        "--log-format",
        "json",
        "--max-priority",
        "0",
        "--method-concurrency",
        "sleep=2",
        "--method-concurrency",
        "fib=1",
    ])
    .expect("flags")
    .config()
    .expect("valid");
    assert_eq!(cli.queue_prefix, "t1.");
    assert_eq!(cli.concurrency, 4);
    assert_eq!(cli.log_format, LogFormat::Json);
    assert_eq!(cli.max_priority, 0);
    assert_eq!(
        cli.method_concurrency,
        BTreeMap::from([("sleep".to_owned(), 2), ("fib".to_owned(), 1)])
    );
}

#[test]
fn printed_config_is_a_worker_section_with_the_password_masked() {
    let config = Cli::try_parse_from([
        "wsmq-worker",
        "--amqp",
        "amqp://u:hunter2@mq/%2f",
        "--method-concurrency",
        "sleep=2",
    ])
    .expect("flags")
    .config()
    .expect("valid");
    let text = config.render().expect("renders");
    assert!(text.starts_with("[worker]"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("sleep = 2"), "{text}");
}

#[test]
fn amqp_repeats_into_the_worker_s_ordered_broker_list() {
    let config = Cli::try_parse_from([
        "wsmq-worker",
        "--amqp",
        "amqp://g:g@127.0.0.1:5681/%2f, amqp://g:g@127.0.0.1:5682/%2f",
        "--amqp",
        "amqp://g:g@127.0.0.1:5683/%2f",
    ])
    .expect("flags")
    .config()
    .expect("valid");
    assert_eq!(config.amqp.len(), 3);
    let worker = demo_worker(&config).expect("builds");
    assert_eq!(
        worker.nodes(),
        ["127.0.0.1:5681", "127.0.0.1:5682", "127.0.0.1:5683"]
    );
}

#[test]
fn cli_refuses_malformed_method_concurrency() {
    for bad in ["sleep", "sleep=0", "=2", "sleep=x", "sleep=70000"] {
        assert!(
            Cli::try_parse_from(["wsmq-worker", "--method-concurrency", bad]).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn method_concurrency_for_an_unknown_method_is_a_configuration_error() {
    let config = Cli::try_parse_from(["wsmq-worker", "--method-concurrency", "slep=2"])
        .expect("flags")
        .config()
        .expect("valid");
    assert!(matches!(
        demo_worker(&config),
        Err(BuildError::UnknownMethodConcurrency { .. })
    ));
}

#[test]
fn quorum_flags_make_quorum_queues_with_the_delivery_limit() {
    let config = Cli::try_parse_from([
        "wsmq-worker",
        "--queue-type",
        "quorum",
        "--delivery-limit",
        "2",
    ])
    .expect("flags")
    .config()
    .expect("valid");
    assert_eq!(config.queue_type(), QueueType::Quorum { delivery_limit: 2 });
    let config = Cli::try_parse_from(["wsmq-worker", "--queue-type", "quorum"])
        .expect("flags")
        .config()
        .expect("valid");
    assert_eq!(config.queue_type(), QueueType::Quorum { delivery_limit: 3 });
    assert!(Cli::try_parse_from(["wsmq-worker", "--queue-type", "stream"]).is_err());
}

#[test]
fn queue_type_and_allow_crash_come_from_the_config_file_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("wsmq.toml");
    std::fs::write(
        &path,
        "[worker]\nqueue_type = \"quorum\"\ndelivery_limit = 5\nallow_crash = true\n",
    )
    .expect("write config");
    let path = path.to_str().expect("utf-8 path").to_owned();
    let config = Cli::try_parse_from(["wsmq-worker", "--config", &path])
        .expect("flags")
        .config()
        .expect("valid");
    assert_eq!(config.queue_type(), QueueType::Quorum { delivery_limit: 5 });
    assert!(config.allow_crash);
    // Rendered back, the settings are there to paste.
    let text = config.render().expect("renders");
    assert!(text.contains("queue_type = \"quorum\""), "{text}");
    assert!(text.contains("allow_crash = true"), "{text}");
}

#[test]
fn crash_is_served_only_when_allowed() {
    let config = Cli::try_parse_from(["wsmq-worker", "--allow-crash"])
        .expect("flags")
        .config()
        .expect("valid");
    assert!(config.allow_crash);
    let worker = demo_worker(&config).expect("valid configuration");
    assert!(worker.queue_names().any(|q| q == "crash"));
    let config = Cli::try_parse_from(["wsmq-worker"])
        .expect("flags")
        .config()
        .expect("valid");
    let worker = demo_worker(&config).expect("valid configuration");
    assert!(!worker.queue_names().any(|q| q == "crash"));
}

#[test]
fn cli_refuses_zero_concurrency() {
    assert!(Cli::try_parse_from(["wsmq-worker", "--concurrency", "0"]).is_err());
}

#[test]
fn demo_worker_serves_the_five_methods() {
    let config = Cli::try_parse_from(["wsmq-worker", "--queue-prefix", "p."])
        .expect("flags")
        .config()
        .expect("valid");
    let worker = demo_worker(&config).expect("valid configuration");
    let mut queues: Vec<&str> = worker.queue_names().collect();
    queues.sort_unstable();
    assert_eq!(
        queues,
        ["p.echo", "p.fail", "p.fib", "p.progress", "p.sleep"]
    );
}
