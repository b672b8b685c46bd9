//! The dead-letter relay: answers the callers of jobs RabbitMQ gave up on.
//!
//! Workers may serve a method from a quorum queue with a delivery limit (see the worker
//! contract). A job returned to such a queue more times than the limit allows — a poison job,
//! one that kills every worker that takes it — is dead-lettered to the fanout exchange
//! `<prefix>wsmq.dead` instead of being delivered again. On every connection the bridge
//! declares that exchange and a durable queue of the same name bound to it, and for each dead
//! job publishes a `-32004 "job failed"` error reply to the job's own `reply_to`, so that its
//! caller hears at once rather than at its deadline. Since each dead job names its reply queue,
//! every bridge sharing the prefix may take any of them: they compete for the queue.
//!
//! How RabbitMQ marks a dead job, and how a quorum queue tells its delivery limit, is the
//! contract's ([`wsmq_amqp_proto::dead`]), as is the reply's shape.
//!
//! A dead job is acked only once RabbitMQ has confirmed its reply, or when it cannot or need not
//! be answered (no `reply_to`, or it expired: its caller already had `-32001`). A bridge that
//! goes away in between leaves the job to the next relay, and the gateway drops the duplicate.

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer, ExchangeKind};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use wsmq_amqp_proto::ReplyAddress;
use wsmq_amqp_proto::dead::{
    DEATH_EXPIRED, DEATH_UNKNOWN, death_reason, delivery_attempts, job_failed_body,
    job_failed_properties,
};

use crate::metrics::DeadLetterOutcome as Outcome;

/// Dead jobs RabbitMQ hands the relay before it acked them. They are relayed one at a time
/// (each reply waits for its confirm), so a few suffice; the rest wait in the queue, where
/// another bridge may take them.
const DEAD_PREFETCH: u16 = 16;

/// Why the relay stopped other than on request; each ends the broker connection, and the
/// supervisor's reconnection builds a new relay.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error("dead-letter consumer failed")]
    Consumer(#[source] lapin::Error),
    #[error("dead-letter consumer was cancelled by the broker (queue deleted?)")]
    ConsumerEnded,
    #[error("publishing the reply to dead job {job} failed")]
    Publish {
        job: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ refused (nacked) the reply to dead job {job}")]
    Nacked { job: String },
    #[error("acknowledging dead job {job} failed")]
    Ack {
        job: String,
        #[source]
        source: lapin::Error,
    },
}

/// What to do with one dead job.
#[derive(Debug, PartialEq)]
enum Action {
    /// Ack it without a reply.
    Drop(Outcome),
    /// Answer its caller, then ack it.
    Answer(Answer),
}

/// The -32004 reply to a dead job.
#[derive(Debug, PartialEq)]
struct Answer {
    reply_to: ShortString,
    correlation_id: ShortString,
    reason: String,
    attempts: Option<u64>,
    method: Option<String>,
}

impl Answer {
    /// The JSON-RPC error object the caller receives.
    fn body(&self) -> Vec<u8> {
        job_failed_body(self.attempts, self.method.as_deref(), &self.reason)
    }

    /// An error reply as a worker would send it.
    fn properties(&self) -> BasicProperties {
        job_failed_properties(self.correlation_id.clone())
    }
}

/// Decides what to do with a dead job from its routing key and properties.
fn decide(routing_key: &str, properties: &BasicProperties) -> Action {
    let headers = properties.headers().as_ref();
    let reason = death_reason(headers).unwrap_or_else(|| DEATH_UNKNOWN.to_owned());
    if reason == DEATH_EXPIRED {
        return Action::Drop(Outcome::Expired);
    }
    let Some(ReplyAddress {
        reply_to,
        correlation_id,
    }) = ReplyAddress::from_properties(properties)
    else {
        return Action::Drop(Outcome::Unanswerable);
    };
    Action::Answer(Answer {
        reply_to,
        correlation_id,
        attempts: delivery_attempts(&reason, routing_key),
        method: wsmq_amqp_proto::method_from_headers(headers),
        reason,
    })
}

/// The dead-letter queue's consumer, on a confirm-mode channel that also carries the replies.
pub(crate) struct Relay {
    channel: Channel,
    consumer: Consumer,
}

impl Relay {
    /// Declares `<prefix>wsmq.dead` (a durable fanout exchange without arguments, which the
    /// workers declare alike, and a durable queue bound to it: classic, or quorum when
    /// `replicated`, as every bridge of the prefix must agree) and starts consuming the queue
    /// with manual acks.
    pub(crate) async fn open(
        connection: &Connection,
        prefix: &str,
        consumer_tag: &str,
        replicated: bool,
    ) -> lapin::Result<Self> {
        let name = wsmq_amqp_proto::dead_letter_exchange_name(prefix);
        let channel = crate::publisher::open_channel(connection).await?;
        channel
            .exchange_declare(
                name.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                wsmq_amqp_proto::bridge_queue_arguments(replicated),
            )
            .await?;
        channel
            .queue_bind(
                name.as_str().into(),
                name.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .basic_qos(DEAD_PREFETCH, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                name.as_str().into(),
                consumer_tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self { channel, consumer })
    }

    /// Relays dead jobs until `stop` (finishing the one in hand) or until the consumer or the
    /// channel fails.
    pub(crate) async fn run(mut self, stop: CancellationToken) -> Result<(), RelayError> {
        loop {
            let delivery = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                delivery = self.consumer.next() => match delivery {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(RelayError::Consumer(e)),
                    None => return Err(RelayError::ConsumerEnded),
                },
            };
            let outcome = match decide(delivery.routing_key.as_str(), &delivery.properties) {
                Action::Drop(outcome) => {
                    let job = delivery.properties.correlation_id().as_ref();
                    match outcome {
                        Outcome::Unanswerable => {
                            warn!(?job, "dead job without reply_to or correlation_id; dropped");
                        }
                        _ => debug!(?job, outcome = outcome.as_str(), "dead job dropped"),
                    }
                    outcome
                }
                Action::Answer(answer) => self.answer(&answer).await.inspect_err(|_| {
                    crate::metrics::dead_letter(Outcome::Failed);
                })?,
            };
            let job = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default();
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(|source| RelayError::Ack { job, source })?;
            crate::metrics::dead_letter(outcome);
        }
    }

    /// Publishes the -32004 reply and waits for RabbitMQ's confirm.
    async fn answer(&self, answer: &Answer) -> Result<Outcome, RelayError> {
        let job = answer.correlation_id.to_string();
        // Mandatory, to hear when the reply queue is gone. One publish at a time on this
        // channel, so a return can only be this reply's.
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                answer.reply_to.clone(),
                options,
                &answer.body(),
                answer.properties(),
            )
            .await
            .map_err(|source| RelayError::Publish {
                job: job.clone(),
                source,
            })?;
        let confirmation = confirm.await.map_err(|source| RelayError::Publish {
            job: job.clone(),
            source,
        })?;
        match confirmation {
            Confirmation::Ack(None) => {
                info!(
                    %job,
                    method = answer.method.as_deref().unwrap_or(""),
                    reason = %answer.reason,
                    attempts = %answer
                        .attempts
                        .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
                    "dead job: its caller was answered -32004 job failed"
                );
                Ok(Outcome::Relayed)
            }
            Confirmation::Ack(Some(_)) => {
                warn!(%job, reply_to = %answer.reply_to, "dead job: its reply queue is gone; dropped");
                Ok(Outcome::Unroutable)
            }
            Confirmation::Nack(_) => Err(RelayError::Nacked { job }),
            Confirmation::NotRequested => {
                // Cannot happen on a confirm_select channel; never ack a job whose reply may be lost.
                error!(%job, "dead-letter channel is not in confirm mode");
                Err(RelayError::Nacked { job })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldArray};
    use serde_json::{Value, json};
    use wsmq_amqp_proto::{DEADLINE_HEADER, METHOD_HEADER};

    /// The headers RabbitMQ 3.10 put on a job dead-lettered by a quorum queue (as observed).
    fn dead_headers(reason: &str) -> FieldTable {
        let mut death = FieldTable::default();
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert("reason".into(), AMQPValue::LongString(reason.into()));
        death.insert("queue".into(), AMQPValue::LongString("p.crash".into()));
        death.insert("exchange".into(), AMQPValue::LongString("".into()));
        death.insert(
            "original-expiration".into(),
            AMQPValue::LongString("30000".into()),
        );
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        headers.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString(reason.into()),
        );
        headers.insert(METHOD_HEADER.into(), AMQPValue::LongString("crash".into()));
        headers.insert(DEADLINE_HEADER.into(), AMQPValue::LongLongInt(1));
        headers
    }

    fn dead_job(reason: &str) -> BasicProperties {
        BasicProperties::default()
            .with_reply_to("wsmq.reply.web-1".into())
            .with_correlation_id("job-1".into())
            .with_headers(dead_headers(reason))
    }

    #[test]
    fn job_dead_of_its_delivery_limit_is_answered_job_failed() {
        let action = decide("wsmq.delivery-limit.2", &dead_job("delivery_limit"));
        let Action::Answer(answer) = action else {
            panic!("expected an answer, got {action:?}");
        };
        assert_eq!(answer.reply_to.as_str(), "wsmq.reply.web-1");
        assert_eq!(answer.correlation_id.as_str(), "job-1");
        let body: Value = serde_json::from_slice(&answer.body()).expect("JSON");
        assert_eq!(
            body,
            json!({
                "code": -32004,
                "message": "job failed",
                "data": {"attempts": 3, "method": "crash", "reason": "delivery_limit"},
            })
        );
    }

    #[test]
    fn rejected_job_is_answered_with_unknown_attempts() {
        let Action::Answer(answer) = decide("p.crash", &dead_job("rejected")) else {
            panic!("expected an answer");
        };
        let body: Value = serde_json::from_slice(&answer.body()).expect("JSON");
        assert_eq!(
            body["data"],
            json!({"attempts": null, "method": "crash", "reason": "rejected"})
        );
    }

    #[test]
    fn expired_job_is_dropped_quietly() {
        assert_eq!(
            decide("wsmq.delivery-limit.2", &dead_job("expired")),
            Action::Drop(Outcome::Expired)
        );
    }

    #[test]
    fn dead_job_without_an_address_is_unanswerable() {
        let no_reply_to = dead_job("delivery_limit").with_reply_to("".into());
        let no_id = BasicProperties::default()
            .with_reply_to("q".into())
            .with_headers(dead_headers("delivery_limit"));
        for properties in [no_reply_to, no_id] {
            assert_eq!(
                decide("wsmq.delivery-limit.2", &properties),
                Action::Drop(Outcome::Unanswerable)
            );
        }
    }

    #[test]
    fn job_without_x_death_or_method_is_still_answered() {
        let bare = BasicProperties::default()
            .with_reply_to("q".into())
            .with_correlation_id("job-9".into());
        let Action::Answer(answer) = decide("", &bare) else {
            panic!("expected an answer");
        };
        let body: Value = serde_json::from_slice(&answer.body()).expect("JSON");
        assert_eq!(
            body["data"],
            json!({"attempts": null, "method": null, "reason": "unknown"})
        );
    }

    #[test]
    fn reply_is_an_error_reply_the_bridge_itself_reads_as_a_worker_error() {
        let Action::Answer(answer) = decide("wsmq.delivery-limit.1", &dead_job("delivery_limit"))
        else {
            panic!("expected an answer");
        };
        let properties = answer.properties();
        assert_eq!(properties.correlation_id().as_ref(), Some(&"job-1".into()));
        assert_eq!(
            properties.content_type().as_ref(),
            Some(&"application/json".into())
        );
        assert_eq!(*properties.delivery_mode(), Some(2));
        match crate::reply::classify(properties.headers().as_ref(), answer.body().into()) {
            wsmq_ipc_proto::ReplyBody::Error(error) => {
                assert_eq!(error.code, -32004);
                assert_eq!(error.message, "job failed");
                let data: Value =
                    serde_json::from_slice(error.data.as_ref().expect("data").as_bytes())
                        .expect("JSON");
                assert_eq!(data["attempts"], 2);
            }
            other => panic!("expected a worker error, got {other:?}"),
        }
    }
}
