//! Dead-lettering: where quorum method queues send the jobs RabbitMQ gave up on, what such a
//! job tells about its death, and the [`JOB_FAILED`](wsmq_codes::JOB_FAILED) reply its caller
//! gets from the bridge.
//!
//! What RabbitMQ 3.10 puts on a dead job (observed): the job's properties and headers as
//! published, plus [`X_DEATH_HEADER`] (an array, newest first, of tables with `reason` =
//! `delivery_limit`, `rejected`, `expired` or `maxlen`, `count` = times dead-lettered for that
//! reason, `queue`, `exchange`, `routing-keys`, `time`, and `original-expiration` when the job
//! had one) and `x-first-death-reason`/`-queue`/`-exchange`. It does **not** carry the job's
//! `x-delivery-count`, and `x-death`'s `count` is 1, so neither tells how often the job was
//! delivered. Quorum method queues therefore dead-letter with the routing key
//! [`dead_letter_routing_key`]: a job dead-lettered for `delivery_limit` was delivered N + 1
//! times.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde_json::json;

use crate::headers::header_text;
use crate::reply::{ReplyStatus, reply_properties};

/// Name of the dead-letter fanout exchange (and of the bridge's queue bound to it), after the
/// queue prefix.
pub const DEAD_LETTER_EXCHANGE: &str = "wsmq.dead";
/// Before the delivery limit in a quorum queue's dead-letter routing key
/// ([`dead_letter_routing_key`]).
pub const DELIVERY_LIMIT_ROUTING_KEY_PREFIX: &str = "wsmq.delivery-limit.";
/// RabbitMQ's header on a dead job: the array of its deaths, newest first.
pub const X_DEATH_HEADER: &str = "x-death";
/// RabbitMQ's header on a dead job: the reason of its first death.
pub const X_FIRST_DEATH_REASON_HEADER: &str = "x-first-death-reason";
/// Death reason of a job that expired before anyone took it.
pub const DEATH_EXPIRED: &str = "expired";
/// Death reason of a job returned more often than its queue's delivery limit.
pub const DEATH_DELIVERY_LIMIT: &str = "delivery_limit";
/// The reason reported when a dead job has no `x-death` (somebody published it to the
/// exchange by hand).
pub const DEATH_UNKNOWN: &str = "unknown";
/// The message of the [`JOB_FAILED`](wsmq_codes::JOB_FAILED) error a dead job's caller gets.
pub const JOB_FAILED_MESSAGE: &str = "job failed";

/// The dead-letter fanout exchange under `prefix`: `<prefix>wsmq.dead`. The bridge's queue
/// bound to it has the same name.
pub fn dead_letter_exchange_name(prefix: &str) -> String {
    format!("{prefix}{DEAD_LETTER_EXCHANGE}")
}

/// The routing key a quorum method queue dead-letters with: `wsmq.delivery-limit.<N>`.
///
/// RabbitMQ 3.10 tells a dead job's reader neither how often it was delivered nor the queue's
/// limit (see the module docs), so the queue says it here: the bridge reads it from the dead
/// message's routing key ([`delivery_attempts`]). The dead-letter exchange is a fanout, which
/// ignores it for routing.
pub fn dead_letter_routing_key(delivery_limit: u32) -> String {
    format!("{DELIVERY_LIMIT_ROUTING_KEY_PREFIX}{delivery_limit}")
}

fn text(value: &AMQPValue) -> Option<String> {
    header_text(value).map(|text| String::from_utf8_lossy(text).into_owned())
}

/// Why a job died: the `reason` of the newest [`X_DEATH_HEADER`] entry (RabbitMQ puts it
/// first), else [`X_FIRST_DEATH_REASON_HEADER`]; `None` without either.
pub fn death_reason(headers: Option<&FieldTable>) -> Option<String> {
    let headers = headers?.inner();
    let newest = match headers.get(X_DEATH_HEADER) {
        Some(AMQPValue::FieldArray(deaths)) => match deaths.as_slice().first() {
            Some(AMQPValue::FieldTable(death)) => death.inner().get("reason").and_then(text),
            _ => None,
        },
        _ => None,
    };
    newest.or_else(|| headers.get(X_FIRST_DEATH_REASON_HEADER).and_then(text))
}

/// How many times a dead job was delivered, when its death tells: one more than the delivery
/// limit its queue dead-letters with ([`dead_letter_routing_key`]) for a job that died of that
/// limit. `None` for any other death, or a queue that does not say its limit.
pub fn delivery_attempts(reason: &str, routing_key: &str) -> Option<u64> {
    if reason != DEATH_DELIVERY_LIMIT {
        return None;
    }
    let limit: u64 = routing_key
        .strip_prefix(DELIVERY_LIMIT_ROUTING_KEY_PREFIX)?
        .parse()
        .ok()?;
    limit.checked_add(1)
}

/// The body of the error reply a dead job's caller gets: `{"code": -32004, "message": "job
/// failed", "data": {"attempts", "method", "reason"}}` (`null` for what is not known).
pub fn job_failed_body(attempts: Option<u64>, method: Option<&str>, reason: &str) -> Vec<u8> {
    json!({
        "code": wsmq_codes::JOB_FAILED,
        "message": JOB_FAILED_MESSAGE,
        "data": {
            "attempts": attempts,
            "method": method,
            "reason": reason,
        },
    })
    .to_string()
    .into_bytes()
}

/// The properties of that reply: an error reply as a worker would send it
/// ([`reply_properties`] with [`ReplyStatus::Error`]).
pub fn job_failed_properties(correlation_id: ShortString) -> BasicProperties {
    reply_properties(correlation_id, ReplyStatus::Error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::{Reply, classify_reply};
    use lapin::types::FieldArray;
    use serde_json::Value;

    /// The headers RabbitMQ 3.10 put on a job dead-lettered by a quorum queue (as observed).
    fn dead_headers(reason: &str) -> FieldTable {
        let mut death = FieldTable::default();
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert("reason".into(), AMQPValue::LongString(reason.into()));
        death.insert("queue".into(), AMQPValue::LongString("p.crash".into()));
        let mut headers = FieldTable::default();
        headers.insert(
            X_DEATH_HEADER.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        headers.insert(
            X_FIRST_DEATH_REASON_HEADER.into(),
            AMQPValue::LongString(reason.into()),
        );
        headers
    }

    #[test]
    fn dead_letter_names_follow_the_prefix_and_the_limit() {
        assert_eq!(dead_letter_exchange_name("t1."), "t1.wsmq.dead");
        assert_eq!(dead_letter_exchange_name(""), "wsmq.dead");
        assert_eq!(dead_letter_routing_key(0), "wsmq.delivery-limit.0");
        assert_eq!(
            dead_letter_routing_key(u32::MAX),
            "wsmq.delivery-limit.4294967295"
        );
    }

    #[test]
    fn reason_is_the_newest_x_death_entry() {
        let mut headers = dead_headers("delivery_limit");
        let mut older = FieldTable::default();
        older.insert("reason".into(), AMQPValue::LongString("rejected".into()));
        if let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get(X_DEATH_HEADER).cloned() {
            let mut deaths = deaths.as_slice().to_vec();
            deaths.push(AMQPValue::FieldTable(older));
            headers.insert(
                X_DEATH_HEADER.into(),
                AMQPValue::FieldArray(FieldArray::from(deaths)),
            );
        }
        assert_eq!(
            death_reason(Some(&headers)).as_deref(),
            Some("delivery_limit")
        );
    }

    #[test]
    fn reason_falls_back_to_x_first_death_reason_and_is_none_without_either() {
        let mut headers = FieldTable::default();
        headers.insert(
            X_FIRST_DEATH_REASON_HEADER.into(),
            AMQPValue::ShortString("rejected".into()),
        );
        assert_eq!(death_reason(Some(&headers)).as_deref(), Some("rejected"));
        assert_eq!(death_reason(Some(&FieldTable::default())), None);
        assert_eq!(death_reason(None), None);
    }

    #[test]
    fn attempts_are_one_more_than_the_delivery_limit_in_the_routing_key() {
        let key = dead_letter_routing_key(2);
        assert_eq!(delivery_attempts("delivery_limit", &key), Some(3));
        assert_eq!(
            delivery_attempts("delivery_limit", "wsmq.delivery-limit.0"),
            Some(1)
        );
        assert_eq!(
            delivery_attempts("delivery_limit", "wsmq.delivery-limit.18446744073709551615"),
            None,
            "no overflow"
        );
    }

    #[test]
    fn attempts_are_unknown_for_other_deaths_or_queues_that_do_not_say_their_limit() {
        assert_eq!(delivery_attempts("rejected", "wsmq.delivery-limit.2"), None);
        assert_eq!(delivery_attempts("delivery_limit", "p.crash"), None);
        assert_eq!(
            delivery_attempts("delivery_limit", "wsmq.delivery-limit.x"),
            None
        );
        assert_eq!(
            delivery_attempts("delivery_limit", "wsmq.delivery-limit.-1"),
            None
        );
    }

    #[test]
    fn job_failed_reply_is_an_error_reply_readers_take_as_a_worker_error() {
        let body = job_failed_body(Some(3), Some("crash"), "delivery_limit");
        let parsed: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            parsed,
            json!({
                "code": -32004,
                "message": "job failed",
                "data": {"attempts": 3, "method": "crash", "reason": "delivery_limit"},
            })
        );
        let properties = job_failed_properties("job-1".into());
        assert_eq!(properties.correlation_id().as_ref(), Some(&"job-1".into()));
        let Ok(Reply::Error(error)) = classify_reply(properties.headers().as_ref(), &body) else {
            panic!("expected an error reply");
        };
        assert_eq!(error.code, wsmq_codes::JOB_FAILED);
        assert_eq!(error.message, JOB_FAILED_MESSAGE);
    }

    #[test]
    fn job_failed_body_says_null_for_what_is_unknown() {
        let body: Value =
            serde_json::from_slice(&job_failed_body(None, None, "unknown")).expect("JSON");
        assert_eq!(
            body["data"],
            json!({"attempts": null, "method": null, "reason": "unknown"})
        );
    }
}
