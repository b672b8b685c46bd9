//! `wsmq-bench` still runs against the real system, so the benchmark cannot rot. The figures
//! it prints are never asserted (speed lives in `scripts/bench`); only that every mode made
//! calls and none failed.

use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;
use wsmq_tests::System;
use wsmq_tests::binaries::binaries;

/// Far above what the tiny configuration below needs (two short runs and a few connections).
const BENCH_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn bench_runs_every_mode_against_the_real_system_without_errors() {
    let system = System::start().await.expect("system starts");
    let bench = &binaries().await.expect("binaries").bench;
    let addr = system.gateway_addr().expect("gateway address");
    let pid = system.gateway_pid().expect("gateway pid");

    let run = Command::new(bench)
        .args(["--mode", "idle,gateway,amqp-durable,amqp"])
        .args(["--url", &format!("ws://{addr}/ws")])
        .args(["--amqp", system.amqp_url()])
        .args(["--queue-prefix", system.prefix()])
        .args([
            "--connections",
            "3",
            "--in-flight",
            "5",
            "--idle-connections",
            "4",
        ])
        .args(["--duration", "1s", "--warmup", "200ms", "--rounds", "1"])
        .args(["--gateway-pid", &pid.to_string(), "--json"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BENCH_TIMEOUT, run)
        .await
        .expect("the bench finishes in time")
        .expect("the bench starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "wsmq-bench failed: {}", out.status);

    let summary: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("the last line is the JSON summary");
    for mode in ["gateway", "amqp-durable", "amqp"] {
        let m = &summary["modes"][mode];
        assert!(m["calls"].as_u64() > Some(0), "{mode} made calls: {m}");
        assert_eq!(m["errors"].as_u64(), Some(0), "{mode} had no errors: {m}");
    }
    let idle = &summary["idle"];
    assert_eq!(idle["connections"].as_u64(), Some(4), "{idle}");
    assert_eq!(idle["closed"].as_u64(), Some(0), "{idle}");
    assert!(idle["kib_per_connection"].is_number(), "{idle}");

    system.cleanup().await;
}
