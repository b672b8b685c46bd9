//! Method queues: how workers declare them, classic or quorum.

use lapin::types::{AMQPValue, FieldTable};

use crate::dead::{dead_letter_exchange_name, dead_letter_routing_key};

/// Queue argument that makes a method queue a priority queue.
pub const MAX_PRIORITY_ARGUMENT: &str = "x-max-priority";
/// Queue argument naming the queue type ([`QUORUM`] for a quorum queue).
pub const QUEUE_TYPE_ARGUMENT: &str = "x-queue-type";
/// [`QUEUE_TYPE_ARGUMENT`] value of a quorum queue.
pub const QUORUM: &str = "quorum";
/// Quorum queue argument: how many times a job may be returned to the queue (by a worker that
/// died, lost its connection, or nacked it) before the broker dead-letters it.
pub const DELIVERY_LIMIT_ARGUMENT: &str = "x-delivery-limit";
/// Queue argument naming the exchange a dead job is republished to.
pub const DEAD_LETTER_EXCHANGE_ARGUMENT: &str = "x-dead-letter-exchange";
/// Queue argument naming the routing key a dead job is republished with.
pub const DEAD_LETTER_ROUTING_KEY_ARGUMENT: &str = "x-dead-letter-routing-key";
/// The `x-max-priority` method queues are declared with unless configured otherwise; job
/// priorities (the AMQP `priority` property) run from 0 to this.
pub const DEFAULT_MAX_PRIORITY: u8 = 9;

/// The arguments a method queue is declared with: `x-max-priority` (an AMQP unsigned byte)
/// when `max_priority` is set, nothing otherwise.
///
/// RabbitMQ compares a redeclaration's integer arguments by value, not by AMQP type, so a
/// worker declaring `x-max-priority` as another integer type (pika sends a long int) agrees
/// with this one.
pub fn method_queue_arguments(max_priority: Option<u8>) -> FieldTable {
    let mut arguments = FieldTable::default();
    if let Some(max) = max_priority {
        arguments.insert(MAX_PRIORITY_ARGUMENT.into(), AMQPValue::ShortShortUInt(max));
    }
    arguments
}

/// The arguments a quorum method queue is declared with under `prefix`: `x-queue-type`
/// `quorum`, `x-delivery-limit` (an AMQP long-long int), `x-dead-letter-exchange`
/// `<prefix>wsmq.dead` and `x-dead-letter-routing-key` [`dead_letter_routing_key`].
pub fn quorum_queue_arguments(prefix: &str, delivery_limit: u32) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        QUEUE_TYPE_ARGUMENT.into(),
        AMQPValue::LongString(QUORUM.into()),
    );
    arguments.insert(
        DELIVERY_LIMIT_ARGUMENT.into(),
        AMQPValue::LongLongInt(i64::from(delivery_limit)),
    );
    arguments.insert(
        DEAD_LETTER_EXCHANGE_ARGUMENT.into(),
        AMQPValue::LongString(dead_letter_exchange_name(prefix).into()),
    );
    arguments.insert(
        DEAD_LETTER_ROUTING_KEY_ARGUMENT.into(),
        AMQPValue::LongString(dead_letter_routing_key(delivery_limit).into()),
    );
    arguments
}

/// The arguments the bridge's own queues (its reply queue and the dead-letter queue) are
/// declared with: none when classic, `x-queue-type` `quorum` when `replicated`, so that a
/// RabbitMQ cluster keeps them through the loss of a node. No delivery limit: a reply the
/// bridge returns to its queue (because its gateway went away) is redelivered, never dropped.
pub fn bridge_queue_arguments(replicated: bool) -> FieldTable {
    let mut arguments = FieldTable::default();
    if replicated {
        arguments.insert(
            QUEUE_TYPE_ARGUMENT.into(),
            AMQPValue::LongString(QUORUM.into()),
        );
    }
    arguments
}

/// The kind of queue a worker declares for its methods.
///
/// Every worker of a method must declare its queue alike: the broker refuses a redeclaration
/// whose type or arguments differ, and a queue cannot change type without being deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// A durable classic queue, with `x-max-priority` when a maximum priority is set (the
    /// worker SDK's `WorkerBuilder::max_priority`). A job that kills every worker taking it
    /// is redelivered forever.
    #[default]
    Classic,
    /// A durable quorum queue (`x-queue-type: quorum`, replicated, poison-job safe): a job
    /// returned to the queue more than `delivery_limit` times (so delivered `delivery_limit + 1`
    /// times) is dead-lettered to [`<prefix>wsmq.dead`](crate::DEAD_LETTER_EXCHANGE), from
    /// where the bridge answers its caller [`JOB_FAILED`](wsmq_codes::JOB_FAILED)
    /// `"job failed"`.
    ///
    /// The trade-off: RabbitMQ 3.10 quorum queues have **no priorities**, so no
    /// `x-max-priority` is declared and jobs are delivered in order whatever their priority.
    /// Every return counts towards the limit, whatever its cause: a worker crash, a lost
    /// connection, a shutdown that abandons its jobs, or a nack, and it counts for every job
    /// the worker held unacked (up to its prefetch), not just the one that killed it.
    Quorum {
        /// Returns allowed before the job is dead-lettered (`x-delivery-limit`).
        delivery_limit: u32,
    },
}

impl QueueType {
    /// The arguments of a method queue of this type under `prefix`; `max_priority` applies to
    /// classic queues only.
    pub fn arguments(self, prefix: &str, max_priority: Option<u8>) -> FieldTable {
        match self {
            Self::Classic => method_queue_arguments(max_priority),
            Self::Quorum { delivery_limit } => quorum_queue_arguments(prefix, delivery_limit),
        }
    }

    /// The exchange a method queue of this type under `prefix` dead-letters to, which must be
    /// declared before the queue: [`dead_letter_exchange_name`] for a quorum queue, `None` for
    /// a classic one.
    pub fn dead_letter_exchange(self, prefix: &str) -> Option<String> {
        match self {
            Self::Classic => None,
            Self::Quorum { .. } => Some(dead_letter_exchange_name(prefix)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_queues_carry_x_max_priority_only_when_set() {
        let with = method_queue_arguments(Some(9));
        assert_eq!(
            with.inner().get(MAX_PRIORITY_ARGUMENT),
            Some(&AMQPValue::ShortShortUInt(9))
        );
        assert_eq!(with.inner().len(), 1);
        assert!(method_queue_arguments(None).inner().is_empty());
    }

    #[test]
    fn bridge_queues_are_quorum_only_when_replicated() {
        assert!(bridge_queue_arguments(false).inner().is_empty());
        let replicated = bridge_queue_arguments(true);
        assert_eq!(
            replicated.inner().get(QUEUE_TYPE_ARGUMENT),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(replicated.inner().len(), 1);
    }

    #[test]
    fn classic_queue_type_keeps_the_priority_arguments() {
        assert_eq!(
            QueueType::default().arguments("p.", Some(9)),
            method_queue_arguments(Some(9))
        );
        assert!(QueueType::Classic.arguments("p.", None).inner().is_empty());
        assert_eq!(QueueType::Classic.dead_letter_exchange("p."), None);
    }

    #[test]
    fn quorum_queues_dead_letter_to_the_prefixed_exchange_after_the_delivery_limit() {
        let arguments = QueueType::Quorum { delivery_limit: 2 }.arguments("t1.", Some(9));
        let expected = [
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString("t1.wsmq.dead".into()),
            ),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString("wsmq.delivery-limit.2".into()),
            ),
            ("x-delivery-limit", AMQPValue::LongLongInt(2)),
            ("x-queue-type", AMQPValue::LongString("quorum".into())),
        ];
        let got: Vec<(&str, &AMQPValue)> = arguments
            .inner()
            .iter()
            .map(|(name, value)| (name.as_str(), value))
            .collect();
        let expected: Vec<(&str, &AMQPValue)> = expected
            .iter()
            .map(|(name, value)| (*name, value))
            .collect();
        assert_eq!(
            got, expected,
            "and no x-max-priority: quorum queues have none"
        );
        assert_eq!(
            QueueType::Quorum { delivery_limit: 2 }
                .dead_letter_exchange("t1.")
                .as_deref(),
            Some("t1.wsmq.dead")
        );
    }
}
