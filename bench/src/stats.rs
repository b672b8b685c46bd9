//! What one run measured, and how runs of the same mode are summed up.
//!
//! Every lane (a websocket connection, an AMQP channel) keeps its own histogram so the hot
//! path never shares anything; the run merges them at the end. Only calls that *end* inside
//! the measuring window count towards throughput and latency, so the warm-up and the drain at
//! the end are excluded. Errors are counted over the whole run: a bench that hides failures
//! during warm-up would hide a broken system.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms track (longer ones are clamped to it).
const MAX_LATENCY_US: u64 = 60_000_000;

/// When the measurement runs: calls ending between `start` and `end` count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
}

impl Window {
    pub(crate) fn new(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + duration,
        }
    }

    pub(crate) fn contains(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }

    /// Whether new calls should still be started.
    pub(crate) fn open(&self, now: Instant) -> bool {
        now < self.end
    }
}

/// One lane's tally.
#[derive(Debug)]
pub(crate) struct LaneStats {
    latencies: Histogram<u64>,
    /// Calls answered with a result inside the window.
    pub(crate) calls: u64,
    /// Error responses, lost calls and broken lanes, over the whole run.
    pub(crate) errors: u64,
    /// The first error seen, to say what went wrong.
    pub(crate) first_error: Option<String>,
}

impl LaneStats {
    pub(crate) fn new() -> Self {
        Self {
            latencies: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid"),
            calls: 0,
            errors: 0,
            first_error: None,
        }
    }

    /// A call that started at `sent` got its result now.
    pub(crate) fn answered(&mut self, window: &Window, sent: Instant, now: Instant) {
        if window.contains(now) {
            let us = u64::try_from(now.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
            self.latencies.saturating_record(us.max(1));
            self.calls += 1;
        }
    }

    /// `n` calls failed (or were lost) for `why`.
    pub(crate) fn failed(&mut self, n: u64, why: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        self.errors += n;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }

    fn merge(&mut self, other: &LaneStats) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latencies.add(&other.latencies);
        self.calls += other.calls;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// One run of one mode.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunResult {
    pub(crate) calls: u64,
    pub(crate) calls_per_s: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
    pub(crate) errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_error: Option<String>,
}

impl RunResult {
    pub(crate) fn from_lanes(lanes: &[LaneStats], measured: Duration) -> Self {
        let mut all = LaneStats::new();
        for lane in lanes {
            all.merge(lane);
        }
        let h = &all.latencies;
        let secs = measured.as_secs_f64();
        Self {
            calls: all.calls,
            calls_per_s: if secs > 0.0 {
                all.calls as f64 / secs
            } else {
                0.0
            },
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            errors: all.errors,
            first_error: all.first_error,
        }
    }
}

/// The runs of one mode, summed up by medians (robust to one noisy round on a shared machine).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModeSummary {
    pub(crate) calls_per_s: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) runs: Vec<RunResult>,
}

impl ModeSummary {
    pub(crate) fn of(runs: Vec<RunResult>) -> Self {
        Self {
            calls_per_s: median_f64(runs.iter().map(|r| r.calls_per_s).collect()),
            p50_us: median_u64(runs.iter().map(|r| r.p50_us).collect()),
            p99_us: median_u64(runs.iter().map(|r| r.p99_us).collect()),
            max_us: runs.iter().map(|r| r.max_us).max().unwrap_or(0),
            calls: runs.iter().map(|r| r.calls).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            runs,
        }
    }
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2
    } else {
        v[mid]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median_u64(vec![4, 1, 3, 2]), 2);
        assert!((median_f64(vec![4.0, 1.0, 3.0, 2.0]) - 2.5).abs() < f64::EPSILON);
    }

    #[test]
    fn calls_outside_the_window_are_not_measured() {
        let window = Window::new(Duration::from_secs(60), Duration::from_secs(1));
        let mut lane = LaneStats::new();
        let now = Instant::now();
        lane.answered(&window, now, now);
        assert_eq!(lane.calls, 0);
        lane.answered(&window, window.start, window.start);
        assert_eq!(lane.calls, 1);
    }

    #[test]
    fn errors_keep_the_first_reason() {
        let mut lane = LaneStats::new();
        lane.failed(2, || "first".into());
        lane.failed(1, || "second".into());
        assert_eq!(lane.errors, 3);
        assert_eq!(lane.first_error.as_deref(), Some("first"));
    }
}
