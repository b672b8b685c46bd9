//! Prometheus metrics: one recorder per process, rendered by the program's `/metrics` route.
//!
//! Without the exporter's own HTTP server and runtime the recorder needs its upkeep (draining
//! histogram buckets) driven by hand; `install` spawns a task for that.

use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds for every `*_duration_seconds` histogram: 1 ms to 10 min.
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    600.0,
];

/// How often the recorder's upkeep runs.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the global recorder and returns the handle that renders it. Call once, inside a
/// tokio runtime.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("duration_seconds".into()),
            &DURATION_BUCKETS,
        )?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
