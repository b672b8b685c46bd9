//! The gateway's Prometheus metrics: names, labels and what each counts, in one place.
//!
//! Label values are bounded: `method` is a method this gateway has seen published (so a queue
//! exists for it), up to [`MAX_METHOD_LABELS`] of them, else `other` — clients choose method
//! names, and a label per arbitrary string would grow without limit.

use std::collections::HashSet;
use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// Distinct `method` label values, at most.
pub(crate) const MAX_METHOD_LABELS: usize = 256;

/// How a call ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    WorkerError,
    InvalidReply,
    Timeout,
    Cancelled,
    MethodNotFound,
    BrokerUnavailable,
    TooManyInFlight,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::WorkerError => "worker_error",
            Outcome::InvalidReply => "invalid_reply",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::MethodNotFound => "method_not_found",
            Outcome::BrokerUnavailable => "broker_unavailable",
            Outcome::TooManyInFlight => "too_many_in_flight",
        }
    }
}

/// Why a reply reached nobody, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    ClientGone,
    Late,
    Cancelled,
    Duplicate,
    UnknownJob,
    /// Kept for a disconnected session that was never resumed.
    SessionExpired,
    /// A disconnected session had kept as much as it may.
    SessionBufferFull,
    /// Kept by a disconnected session that was forgotten because all sessions kept as much as
    /// they may (`--max-kept-bytes`).
    SessionEvicted,
}

impl Dropped {
    fn as_str(self) -> &'static str {
        match self {
            Dropped::ClientGone => "client_gone",
            Dropped::Late => "late",
            Dropped::Cancelled => "cancelled",
            Dropped::Duplicate => "duplicate",
            Dropped::UnknownJob => "unknown_job",
            Dropped::SessionExpired => "session_expired",
            Dropped::SessionBufferFull => "session_buffer_full",
            Dropped::SessionEvicted => "session_evicted",
        }
    }
}

/// The set of method names used as label values; owned by the router.
#[derive(Debug, Default)]
pub(crate) struct MethodLabels {
    known: HashSet<String>,
}

impl MethodLabels {
    /// Remembers a method that RabbitMQ routed (it has a queue).
    pub(crate) fn learn(&mut self, method: &str) {
        if self.known.len() < MAX_METHOD_LABELS && !self.known.contains(method) {
            self.known.insert(method.to_owned());
        }
    }

    /// The label value for `method`.
    pub(crate) fn label(&self, method: &str) -> String {
        if self.known.contains(method) {
            method.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

/// A call ended (or was refused at once, with `took` zero).
pub(crate) fn call_ended(method: String, outcome: Outcome, took: Duration) {
    let labels = [("method", method), ("outcome", outcome.as_str().to_owned())];
    counter!("wsmq_calls_total", &labels).increment(1);
    histogram!("wsmq_call_duration_seconds", &labels).record(took.as_secs_f64());
}

/// A call was held for fair share; `held` calls of its method are held now.
pub(crate) fn call_held(method: String, held: usize) {
    counter!("wsmq_calls_held_total", "method" => method.clone()).increment(1);
    gauge!("wsmq_calls_held", "method" => method).set(held as f64);
}

/// A call held for fair share went to the workers, or ended while held, after `took`; `held`
/// calls of its method are still held.
pub(crate) fn call_unheld(method: String, took: Duration, held: usize) {
    histogram!("wsmq_call_held_seconds", "method" => method.clone()).record(took.as_secs_f64());
    gauge!("wsmq_calls_held", "method" => method).set(held as f64);
}

pub(crate) fn calls_in_flight(n: usize) {
    gauge!("wsmq_calls_in_flight").set(n as f64);
}

pub(crate) fn reply_dropped(reason: Dropped) {
    counter!("wsmq_results_dropped_total", "reason" => reason.as_str()).increment(1);
}

pub(crate) fn progress_forwarded() {
    counter!("wsmq_progress_notifications_total").increment(1);
}

pub(crate) fn slow_client_closed() {
    counter!("wsmq_slow_clients_closed_total").increment(1);
}

pub(crate) fn link_state(bridge_up: bool, broker_up: bool) {
    gauge!("wsmq_ipc_link_up").set(f64::from(u8::from(bridge_up)));
    gauge!("wsmq_broker_up").set(f64::from(u8::from(broker_up)));
}

pub(crate) fn link_connected() {
    counter!("wsmq_ipc_connects_total").increment(1);
}

pub(crate) fn connection_opened() {
    counter!("wsmq_connections_total").increment(1);
    gauge!("wsmq_connections").increment(1.0);
}

pub(crate) fn connection_closed() {
    gauge!("wsmq_connections").decrement(1.0);
}

/// A connection refused before the upgrade: `reason` is `shutting_down`, `limit`,
/// `per_ip_limit`, `origin`, `unauthorized` or `handshake_timeout`.
pub(crate) fn connection_refused(reason: &'static str) {
    counter!("wsmq_connections_refused_total", "reason" => reason).increment(1);
}

/// A websocket the gateway closed on its own: `reason` is `idle` or `no_pong`.
pub(crate) fn connection_dropped(reason: &'static str) {
    counter!("wsmq_connections_dropped_total", "reason" => reason).increment(1);
}

/// A call refused by the connection's call-rate limit.
pub(crate) fn call_rate_limited() {
    counter!("wsmq_calls_rate_limited_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        let mut labels = MethodLabels::default();
        labels.learn("echo");
        assert_eq!(labels.label("echo"), "echo");
        assert_eq!(labels.label("random-123"), "other");
    }

    #[test]
    fn method_labels_stop_growing_at_the_cap() {
        let mut labels = MethodLabels::default();
        for i in 0..MAX_METHOD_LABELS + 10 {
            labels.learn(&format!("m{i}"));
        }
        assert_eq!(
            labels.label(&format!("m{}", MAX_METHOD_LABELS + 5)),
            "other"
        );
        assert_eq!(labels.label("m0"), "m0");
    }
}
