//! Reading the gateway's `/metrics` (Prometheus text), for tests that pin what is counted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::{HEALTH_POLL_INTERVAL, http};

/// The value of `series` on the `/metrics` page at `addr`: a metric name (the sum over its
/// label sets) or one labelled series exactly as the page prints it
/// (`wsmq_results_dropped_total{reason="duplicate"}`). A series the page does not list reads
/// 0: a counter that never moved is not printed.
pub async fn read(addr: SocketAddr, series: &str) -> Result<f64> {
    let page = http::get(addr, "/metrics").await?;
    if page.status != 200 {
        bail!("GET /metrics answered HTTP {}", page.status);
    }
    Ok(sum(&String::from_utf8_lossy(&page.body), series))
}

/// Polls `series` on `addr` until `pred(value)` holds, within `limit`; returns the value.
/// `what` names the awaited state for the error, which also shows the last value read.
pub async fn wait_for(
    addr: SocketAddr,
    series: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(f64) -> bool,
) -> Result<f64> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match read(addr, series).await {
            Ok(value) if pred(value) => return Ok(value),
            Ok(value) => format!("{value}"),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("{series} did not reach {what} within {limit:?}; last: {last}");
        }
        tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
    }
}

fn sum(page: &str, series: &str) -> f64 {
    let labelled = series.contains('{');
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(key, _)| {
            *key == series
                || (!labelled
                    && key
                        .strip_prefix(series)
                        .is_some_and(|rest| rest.starts_with('{')))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# TYPE wsmq_results_dropped_total counter\n\
        wsmq_results_dropped_total{reason=\"duplicate\"} 2\n\
        wsmq_results_dropped_total{reason=\"late\"} 3\n\
        wsmq_results_dropped_totals 100\n\
        wsmq_connections 1\n";

    #[test]
    fn a_name_sums_its_series_and_a_series_is_read_exactly() {
        assert_eq!(sum(PAGE, "wsmq_results_dropped_total"), 5.0);
        assert_eq!(
            sum(PAGE, "wsmq_results_dropped_total{reason=\"late\"}"),
            3.0
        );
        assert_eq!(sum(PAGE, "wsmq_connections"), 1.0);
        assert_eq!(
            sum(PAGE, "wsmq_results_dropped_total{reason=\"client_gone\"}"),
            0.0
        );
    }
}
