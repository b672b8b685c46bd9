//! Jobs: where they are routed, the properties they carry, and where their replies go.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::headers::{CALLER_HEADER, DEADLINE_HEADER, METHOD_HEADER, deadline_ms_header_value};

/// `content_type` of jobs and replies.
pub const CONTENT_TYPE: &str = "application/json";
/// AMQP `delivery_mode` of a persistent message; jobs and replies both use it.
pub const DELIVERY_MODE_PERSISTENT: u8 = 2;
/// The longest queue name (and routing key) AMQP allows, in bytes: a short string.
pub const MAX_QUEUE_NAME_LEN: usize = 255;

/// Before the bridge instance's name in its reply queue's name ([`reply_queue_name`]).
pub const REPLY_QUEUE_PREFIX: &str = "wsmq.reply.";

/// The durable reply queue of the bridge instance `instance`: `wsmq.reply.<instance>`, the
/// `reply_to` of its jobs. Not under the queue prefix: instance names are unique per broker.
pub fn reply_queue_name(instance: &str) -> String {
    format!("{REPLY_QUEUE_PREFIX}{instance}")
}

/// The queue that serves `method` under `prefix`: the job's routing key on the default exchange.
pub fn queue_name(prefix: &str, method: &str) -> String {
    format!("{prefix}{method}")
}

/// Queue-name prefixes that are never a worker's queue: `amq.` is RabbitMQ's (`amq.gen-…`
/// server-named queues, `amq.rabbitmq.reply-to`), `wsmq.` wsmq's own (the bridges' reply queues
/// `wsmq.reply.<instance>`). The same prefixes are reserved as method names by
/// `wsmq_ipc_proto::is_reserved_method`, which also covers the prefixed names
/// (`<prefix>wsmq.dead`, `<prefix>wsmq.cancel`).
pub const RESERVED_QUEUE_PREFIXES: [&str; 2] = ["amq.", "wsmq."];

/// Whether `name` starts with one of [`RESERVED_QUEUE_PREFIXES`] (ASCII case ignored).
pub fn is_reserved_queue_name(name: &str) -> bool {
    RESERVED_QUEUE_PREFIXES.iter().any(|prefix| {
        name.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    })
}

/// [`queue_name`], or `None` when it would not fit in an AMQP short string
/// ([`MAX_QUEUE_NAME_LEN`]), or would be a reserved name ([`is_reserved_queue_name`]): no
/// worker's queue can serve such a method.
pub fn routing_key(prefix: &str, method: &str) -> Option<String> {
    let key = queue_name(prefix, method);
    (key.len() <= MAX_QUEUE_NAME_LEN && !is_reserved_queue_name(&key)).then_some(key)
}

/// One job as the bridge publishes it; [`JobMessage::properties`] puts it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobMessage<'a> {
    /// The job id: its `correlation_id` and `message_id`.
    pub id: &'a str,
    /// The method called: the [`METHOD_HEADER`].
    pub method: &'a str,
    /// The bridge's reply queue: `reply_to`.
    pub reply_to: &'a str,
    /// The call's deadline in milliseconds since the Unix epoch: the [`DEADLINE_HEADER`].
    pub deadline_unix_ms: u64,
    /// Milliseconds left until the deadline, at least 1: the `expiration`, after which
    /// RabbitMQ discards the job if no worker has taken it.
    pub remaining_ms: u64,
    /// The authenticated caller, if any: the [`CALLER_HEADER`].
    pub caller: Option<&'a str>,
    /// The call's priority, if it set one: the AMQP `priority`.
    pub priority: Option<u8>,
}

impl JobMessage<'_> {
    /// The job's headers: [`METHOD_HEADER`] and [`DEADLINE_HEADER`] always,
    /// [`CALLER_HEADER`] when there is a caller.
    pub fn headers(&self) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(
            METHOD_HEADER.into(),
            AMQPValue::LongString(self.method.into()),
        );
        headers.insert(
            DEADLINE_HEADER.into(),
            deadline_ms_header_value(self.deadline_unix_ms),
        );
        if let Some(caller) = self.caller {
            headers.insert(CALLER_HEADER.into(), AMQPValue::LongString(caller.into()));
        }
        headers
    }

    /// The job's properties: ids, `reply_to`, JSON, persistent, `expiration`, `priority` and
    /// [`headers`](Self::headers).
    pub fn properties(&self) -> BasicProperties {
        let properties = BasicProperties::default()
            .with_expiration(self.remaining_ms.to_string().into())
            .with_correlation_id(self.id.into())
            .with_message_id(self.id.into())
            .with_reply_to(self.reply_to.into())
            .with_content_type(CONTENT_TYPE.into())
            .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
            .with_headers(self.headers());
        match self.priority {
            Some(priority) => properties.with_priority(priority),
            None => properties,
        }
    }
}

/// Where a job's reply goes, taken from the job's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAddress {
    /// The bridge's reply queue: the reply's routing key on the default exchange.
    pub reply_to: ShortString,
    /// The job id, echoed so the bridge can match the reply to its call.
    pub correlation_id: ShortString,
}

impl ReplyAddress {
    /// `None` if the job lacks `reply_to` or `correlation_id` (an empty one counts as absent:
    /// a reply routed to `""` goes nowhere, and one without an id cannot be matched).
    pub fn from_properties(properties: &BasicProperties) -> Option<Self> {
        let reply_to = properties
            .reply_to()
            .as_ref()
            .filter(|s| !s.as_str().is_empty())?;
        let correlation_id = properties
            .correlation_id()
            .as_ref()
            .filter(|s| !s.as_str().is_empty())?;
        Some(Self {
            reply_to: reply_to.clone(),
            correlation_id: correlation_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::{caller_from_headers, deadline_from_headers, method_from_headers};
    use std::time::{Duration, SystemTime};

    #[test]
    fn reply_queue_is_named_after_the_instance() {
        assert_eq!(reply_queue_name("web-1"), "wsmq.reply.web-1");
    }

    #[test]
    fn queue_name_is_prefix_then_method() {
        assert_eq!(queue_name("t123.", "echo"), "t123.echo");
        assert_eq!(queue_name("", "echo"), "echo");
    }

    #[test]
    fn routing_key_is_never_a_reply_or_broker_queue() {
        for (prefix, method) in [
            ("", "wsmq.reply.web-1"),
            ("", "amq.gen-JzTY20BRgKO"),
            ("", "AMQ.rabbitmq.reply-to"),
            ("wsmq.", "reply.web-1"),
            ("am", "q.gen-x"),
        ] {
            assert_eq!(routing_key(prefix, method), None, "{prefix}{method}");
        }
        assert!(routing_key("t1.", "wsmq_echo").is_some());
        assert!(routing_key("", "amqp.x").is_some());
    }

    #[test]
    fn routing_key_longer_than_a_short_string_is_refused() {
        assert_eq!(routing_key("t1.", "echo").as_deref(), Some("t1.echo"));
        assert!(routing_key("p.", &"m".repeat(253)).is_some());
        assert!(routing_key("p.", &"m".repeat(254)).is_none());
    }

    fn job(caller: Option<&'static str>, priority: Option<u8>) -> JobMessage<'static> {
        JobMessage {
            id: "job-1",
            method: "echo",
            reply_to: "wsmq.reply.web-1",
            deadline_unix_ms: 1_700_000_000_123,
            remaining_ms: 30_000,
            caller,
            priority,
        }
    }

    #[test]
    fn job_properties_follow_the_contract() {
        let properties = job(Some("alice"), Some(7)).properties();
        assert_eq!(properties.correlation_id().as_ref(), Some(&"job-1".into()));
        assert_eq!(properties.message_id().as_ref(), Some(&"job-1".into()));
        assert_eq!(
            properties.reply_to().as_ref(),
            Some(&"wsmq.reply.web-1".into())
        );
        assert_eq!(
            properties.content_type().as_ref(),
            Some(&CONTENT_TYPE.into())
        );
        assert_eq!(*properties.delivery_mode(), Some(DELIVERY_MODE_PERSISTENT));
        assert_eq!(properties.expiration().as_ref(), Some(&"30000".into()));
        assert_eq!(*properties.priority(), Some(7));
        let headers = properties.headers().as_ref();
        assert_eq!(
            headers.and_then(|h| h.inner().get(DEADLINE_HEADER)),
            Some(&AMQPValue::LongLongInt(1_700_000_000_123))
        );
        assert_eq!(
            headers.and_then(|h| h.inner().get(METHOD_HEADER)),
            Some(&AMQPValue::LongString("echo".into()))
        );
        assert_eq!(method_from_headers(headers).as_deref(), Some("echo"));
        assert_eq!(caller_from_headers(headers).as_deref(), Some("alice"));
        assert_eq!(
            deadline_from_headers(headers),
            Ok(Some(
                SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
            ))
        );
    }

    #[test]
    fn job_without_caller_or_priority_carries_neither() {
        let properties = job(None, None).properties();
        assert_eq!(*properties.priority(), None);
        let headers = properties.headers().as_ref().expect("headers");
        assert_eq!(headers.inner().get(CALLER_HEADER), None);
        assert_eq!(headers.inner().len(), 2);
    }

    #[test]
    fn reply_address_needs_reply_to_and_correlation_id() {
        let full = BasicProperties::default()
            .with_reply_to("replies".into())
            .with_correlation_id("job-1".into());
        assert_eq!(
            ReplyAddress::from_properties(&full),
            Some(ReplyAddress {
                reply_to: "replies".into(),
                correlation_id: "job-1".into()
            })
        );
        let no_reply_to = BasicProperties::default().with_correlation_id("job-1".into());
        let no_id = BasicProperties::default().with_reply_to("replies".into());
        let empty_reply_to = full.clone().with_reply_to("".into());
        assert_eq!(ReplyAddress::from_properties(&no_reply_to), None);
        assert_eq!(ReplyAddress::from_properties(&no_id), None);
        assert_eq!(ReplyAddress::from_properties(&empty_reply_to), None);
    }
}
