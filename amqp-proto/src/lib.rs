//! The AMQP contract between the wsmq bridge and its workers, as pure functions and types.
//!
//! This crate is the one owner of every name and value on that wire: the job headers
//! ([`METHOD_HEADER`], [`DEADLINE_HEADER`], [`CALLER_HEADER`]), the reply's [`STATUS_HEADER`]
//! and its values, the cancellation exchange and its [`REASON_HEADER`], the method queues'
//! arguments (priority, quorum, delivery limit, dead-lettering), and the dead-letter
//! conventions. The bridge, the worker SDK (`wsmq_worker::contract` re-exports this crate), the
//! end-to-end tests' fake worker and `wsmq-bench` all build and read messages with it, so none
//! of them spells a header name of its own. It is the twin of `wsmq-ipc-proto`, which owns the
//! gateway <-> bridge socket; neither depends on the other. JSON-RPC error codes live in
//! `wsmq-codes`.
//!
//! Nothing here opens a connection or does I/O: every function maps properties, headers and
//! bodies to values, so the exact bytes on the wire are pinned by the unit tests beside them.
//!
//! # Why it depends on lapin
//! Messages are built and read as lapin's own types ([`FieldTable`](lapin::types::FieldTable),
//! [`AMQPValue`](lapin::types::AMQPValue), [`BasicProperties`](lapin::BasicProperties)), so
//! that what this crate returns goes straight into `basic_publish` and what a consumer
//! delivers comes straight in, without a second set of types and conversions at each edge.
//! `BasicProperties` lives in `amq-protocol`, which lapin pins to an exact version; taking
//! both from the workspace's `lapin` dependency guarantees they are the very types the
//! bridge and the worker use, and costs nothing to build: every user of this crate links
//! lapin already, with the same features. Only types are used, never a connection.
//!
//! # The contract in one page
//! - **Jobs** go to the default exchange with routing key [`queue_name`]`(prefix, method)`;
//!   their properties are [`JobMessage::properties`]: `correlation_id` = `message_id` = the
//!   job id, `reply_to`, `application/json`, persistent, `expiration` = the milliseconds left,
//!   the optional `priority`, and the headers `wsmq-method`, `wsmq-deadline` (milliseconds
//!   since the Unix epoch, a long-long int) and `wsmq-caller` (when authenticated).
//! - **Replies** go to the job's `reply_to` with its `correlation_id` ([`reply_properties`]);
//!   `wsmq-status` says what the body is ([`ReplyStatus`], [`classify_reply`]).
//! - **Cancellations** are broadcast on the fanout exchange [`cancel_exchange_name`]
//!   ([`Cancellation`]).
//! - **Method queues** are declared by workers, never the bridge: classic with
//!   `x-max-priority`, or quorum with a delivery limit that dead-letters to
//!   [`dead_letter_exchange_name`] ([`QueueType::arguments`]); the bridge answers a dead job
//!   [`JOB_FAILED`](wsmq_codes::JOB_FAILED) ([`dead`]).
//!
//! # Header values
//! A string header is read whether it came as an AMQP long string (what this crate, pika for a
//! Python `str`, amqplib for a JS string and the Java client for a `String` send), a short
//! string, or a byte array (what pika sends for Python `bytes`, amqplib for a `Buffer`, the Java
//! client for `byte[]`): the bytes are compared exactly, so none of them can be misread. Any
//! other type is not guessed at ([`header_text`]).

#![forbid(unsafe_code)]

pub mod acks;
pub mod cancel;
pub mod dead;
pub mod headers;
pub mod job;
pub mod queue;
pub mod reply;

pub use cancel::{CANCEL_EXCHANGE, CancelReason, Cancellation, cancel_exchange_name};
pub use dead::{
    DEAD_LETTER_EXCHANGE, DELIVERY_LIMIT_ROUTING_KEY_PREFIX, dead_letter_exchange_name,
    dead_letter_routing_key,
};
pub use headers::{
    CALLER_HEADER, DEADLINE_HEADER, DeadlineError, METHOD_HEADER, REASON_CANCELLED, REASON_HEADER,
    REASON_TIMEOUT, STATUS_ERROR, STATUS_HEADER, STATUS_OK, STATUS_PROGRESS, STATUS_RESULT,
    caller_from_headers, deadline_from_headers, deadline_header_value, deadline_ms_header_value,
    deadline_passed, header_text, method_from_headers,
};
pub use job::{
    CONTENT_TYPE, DELIVERY_MODE_PERSISTENT, JobMessage, MAX_QUEUE_NAME_LEN, REPLY_QUEUE_PREFIX,
    RESERVED_QUEUE_PREFIXES, ReplyAddress, is_reserved_queue_name, queue_name, reply_queue_name,
    routing_key,
};
pub use queue::{
    DEAD_LETTER_EXCHANGE_ARGUMENT, DEAD_LETTER_ROUTING_KEY_ARGUMENT, DEFAULT_MAX_PRIORITY,
    DELIVERY_LIMIT_ARGUMENT, MAX_PRIORITY_ARGUMENT, QUEUE_TYPE_ARGUMENT, QUORUM, QueueType,
    bridge_queue_arguments, method_queue_arguments, quorum_queue_arguments,
};
pub use reply::{
    EncodedReply, ErrorReply, InvalidReply, Reply, ReplyStatus, classify_reply, encode_reply,
    reply_properties,
};
