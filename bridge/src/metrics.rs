//! The bridge's Prometheus metrics, served on `--metrics-listen`: names and labels in one
//! place. Every label value is one of a fixed set.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use wsmq_ipc_proto::{Rejection, ReplyBody};

/// A publish ended: `Ok` (confirmed) or why not.
pub(crate) fn published(outcome: &Result<(), Rejection>, took: Duration) {
    let label = match outcome {
        Ok(()) => "confirmed",
        Err(Rejection::NoRoute) => "returned",
        Err(Rejection::Nacked) => "nacked",
        Err(Rejection::BrokerUnavailable) => "failed",
        Err(Rejection::Expired) => "expired",
        Err(Rejection::InvalidMethod) => "invalid_method",
    };
    counter!("wsmq_bridge_publishes_total", "outcome" => label).increment(1);
    histogram!("wsmq_bridge_publish_confirm_duration_seconds").record(took.as_secs_f64());
}

pub(crate) fn cancellation_broadcast(ok: bool) {
    let label = if ok { "sent" } else { "failed" };
    counter!("wsmq_bridge_cancellations_total", "outcome" => label).increment(1);
}

/// How one dead job ended; the label of `wsmq_bridge_dead_letters_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetterOutcome {
    /// Its caller was sent -32004 and RabbitMQ confirmed it.
    Relayed,
    /// It expired unstarted; its caller had -32001 at its deadline. Acked quietly.
    Expired,
    /// It has no `reply_to` or `correlation_id`: nobody to answer. Acked and logged.
    Unanswerable,
    /// Its reply queue no longer exists (its bridge is gone for good). Acked and logged.
    Unroutable,
    /// The reply could not be published or was refused; the job stays in the queue.
    Failed,
}

impl DeadLetterOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Relayed => "relayed",
            Self::Expired => "expired",
            Self::Unanswerable => "unanswerable",
            Self::Unroutable => "unroutable",
            Self::Failed => "failed",
        }
    }
}

/// A dead job (from `<prefix>wsmq.dead`) was relayed to its caller, dropped, or failed.
pub(crate) fn dead_letter(outcome: DeadLetterOutcome) {
    counter!("wsmq_bridge_dead_letters_total", "outcome" => outcome.as_str()).increment(1);
}

pub(crate) fn reply_forwarded(body: &ReplyBody) {
    let kind = match body {
        ReplyBody::Result(_) => "result",
        ReplyBody::Progress(_) => "progress",
        ReplyBody::Error(_) => "error",
        ReplyBody::Invalid { .. } => "invalid",
    };
    counter!("wsmq_bridge_replies_total", "kind" => kind).increment(1);
}

pub(crate) fn reply_without_correlation_id() {
    counter!("wsmq_bridge_replies_total", "kind" => "uncorrelated").increment(1);
}

/// Replies handed to the gateway and not yet taken (each holds an unacked AMQP delivery).
pub(crate) fn untaken_replies(n: usize) {
    gauge!("wsmq_bridge_replies_untaken").set(n as f64);
}

pub(crate) fn replies_requeued(n: usize) {
    counter!("wsmq_bridge_replies_requeued_total").increment(n as u64);
}

pub(crate) fn gateway_connected(connected: bool) {
    gauge!("wsmq_bridge_gateway_connected").set(f64::from(u8::from(connected)));
    if connected {
        counter!("wsmq_bridge_gateway_sessions_total").increment(1);
    }
}

pub(crate) fn gateway_refused() {
    counter!("wsmq_bridge_gateway_refused_total").increment(1);
}

/// A connection to the IPC socket refused before any session: `reason` = `credentials`.
pub(crate) fn peer_refused(reason: &'static str) {
    counter!("wsmq_bridge_ipc_peers_refused_total", "reason" => reason).increment(1);
}

pub(crate) fn broker_connected() {
    counter!("wsmq_bridge_broker_connects_total").increment(1);
}

/// A connection made to another node than the previous connection's.
pub(crate) fn broker_failover() {
    counter!("wsmq_bridge_broker_failovers_total").increment(1);
}

pub(crate) fn broker_state(up: bool, blocked: bool) {
    gauge!("wsmq_bridge_broker_up").set(f64::from(u8::from(up)));
    gauge!("wsmq_bridge_broker_blocked").set(f64::from(u8::from(blocked)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_outcome_labels_are_fixed() {
        let labels = [
            DeadLetterOutcome::Relayed,
            DeadLetterOutcome::Expired,
            DeadLetterOutcome::Unanswerable,
            DeadLetterOutcome::Unroutable,
            DeadLetterOutcome::Failed,
        ]
        .map(DeadLetterOutcome::as_str);
        assert_eq!(
            labels,
            ["relayed", "expired", "unanswerable", "unroutable", "failed"]
        );
    }
}
