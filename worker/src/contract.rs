//! The wire side of the AMQP contract: names, properties, headers and bodies, free of I/O.
//!
//! Everything here is a pure function of its inputs so that the exact bytes and properties
//! a worker puts on the wire are pinned by unit tests. See the crate docs for the contract.

use std::time::{Duration, SystemTime};

use lapin::{
    BasicProperties,
    types::{AMQPType, AMQPValue, FieldTable, ShortString},
};
use serde_json::Value;

use crate::error::RpcError;

/// Header that tells a reply's reader whether its body is a result or an error object.
pub const STATUS_HEADER: &str = "wsmq-status";
/// [`STATUS_HEADER`] value of a reply whose body is the JSON result.
pub const STATUS_OK: &str = "ok";
/// [`STATUS_HEADER`] value of a reply whose body is a JSON-RPC error object.
pub const STATUS_ERROR: &str = "error";
/// [`STATUS_HEADER`] value of a progress message: the body is any JSON value, and the job's
/// final reply is still to come.
pub const STATUS_PROGRESS: &str = "progress";
/// Header of a job: its deadline, in milliseconds since the Unix epoch (an AMQP integer).
pub const DEADLINE_HEADER: &str = "wsmq-deadline";
/// Header of a job: the authenticated identity of the caller (an AMQP long string), present
/// when the gateway authenticates its clients.
pub const CALLER_HEADER: &str = "wsmq-caller";
/// Header of a cancellation: why the job was cancelled, [`REASON_CANCELLED`] or
/// [`REASON_TIMEOUT`] (an AMQP long string).
pub const REASON_HEADER: &str = "wsmq-reason";
/// [`REASON_HEADER`] value when the caller (or the gateway on its behalf) cancelled the call.
pub const REASON_CANCELLED: &str = "cancelled";
/// [`REASON_HEADER`] value when the call's deadline passed.
pub const REASON_TIMEOUT: &str = "timeout";
/// Name of the cancellation fanout exchange, after the queue prefix.
pub const CANCEL_EXCHANGE: &str = "wsmq.cancel";
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
/// Name of the dead-letter fanout exchange, after the queue prefix.
pub const DEAD_LETTER_EXCHANGE: &str = "wsmq.dead";
/// Before the delivery limit in a quorum queue's dead-letter routing key
/// ([`dead_letter_routing_key`]).
pub const DELIVERY_LIMIT_ROUTING_KEY_PREFIX: &str = "wsmq.delivery-limit.";
/// The `x-max-priority` method queues are declared with unless configured otherwise; job
/// priorities (the AMQP `priority` property) run from 0 to this.
pub const DEFAULT_MAX_PRIORITY: u8 = 9;
/// `content_type` of jobs and replies.
pub const CONTENT_TYPE: &str = "application/json";
/// AMQP `delivery_mode` of a persistent message; jobs and replies both use it.
pub const DELIVERY_MODE_PERSISTENT: u8 = 2;
/// The longest queue name AMQP allows, in bytes.
pub const MAX_QUEUE_NAME_LEN: usize = 255;

/// What a message on the reply queue carries, as told by its [`STATUS_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyStatus {
    /// The body is the call's JSON result.
    Ok,
    /// The body is a JSON-RPC error object.
    Error,
    /// The body is a progress report (any JSON value); the final reply follows.
    Progress,
}

impl ReplyStatus {
    /// Reads a reply's status from its headers.
    ///
    /// No headers, or no [`STATUS_HEADER`], means [`ReplyStatus::Ok`]. The value is compared as
    /// a string (long or short; the contract says long, but reading both costs nothing).
    /// Returns `None` for a header of another type or an unknown value, which the reader must
    /// not guess about.
    pub fn from_headers(headers: Option<&FieldTable>) -> Option<Self> {
        let Some(value) = headers.and_then(|h| h.inner().get(STATUS_HEADER)) else {
            return Some(Self::Ok);
        };
        let text: &[u8] = match value {
            AMQPValue::LongString(s) => s.as_bytes(),
            AMQPValue::ShortString(s) => s.as_str().as_bytes(),
            _ => return None,
        };
        match text {
            b"ok" => Some(Self::Ok),
            b"error" => Some(Self::Error),
            b"progress" => Some(Self::Progress),
            _ => None,
        }
    }

    /// The [`STATUS_HEADER`] value for this status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => STATUS_OK,
            Self::Error => STATUS_ERROR,
            Self::Progress => STATUS_PROGRESS,
        }
    }
}

/// The queue that serves `method` under `prefix`: the job's routing key on the default exchange.
pub fn queue_name(prefix: &str, method: &str) -> String {
    format!("{prefix}{method}")
}

/// The cancellation exchange under `prefix`: `<prefix>wsmq.cancel`.
pub fn cancel_exchange_name(prefix: &str) -> String {
    format!("{prefix}{CANCEL_EXCHANGE}")
}

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

/// The kind of queue a worker declares for its methods.
///
/// Every worker of a method must declare its queue alike: the broker refuses a redeclaration
/// whose type or arguments differ, and a queue cannot change type without being deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// A durable classic queue, with `x-max-priority` when
    /// [`max_priority`](crate::WorkerBuilder::max_priority) is set. A job that kills every
    /// worker taking it is redelivered forever.
    #[default]
    Classic,
    /// A durable quorum queue (`x-queue-type: quorum`, replicated, poison-job safe): a job
    /// returned to the queue more than `delivery_limit` times (so delivered `delivery_limit + 1`
    /// times) is dead-lettered to [`<prefix>wsmq.dead`](DEAD_LETTER_EXCHANGE), from where the
    /// bridge answers its caller `-32004 "job failed"`.
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

/// The dead-letter fanout exchange under `prefix`: `<prefix>wsmq.dead`.
pub fn dead_letter_exchange_name(prefix: &str) -> String {
    format!("{prefix}{DEAD_LETTER_EXCHANGE}")
}

/// The routing key a quorum method queue dead-letters with: `wsmq.delivery-limit.<N>`.
///
/// RabbitMQ 3.10 tells a dead job's reader neither how often it was delivered (the
/// `x-delivery-count` header is not on the dead-lettered message, and `x-death`'s `count` is
/// the number of times it was dead-lettered, 1) nor the queue's limit, so the queue says it
/// here: the bridge reads it from the dead message's routing key and reports
/// `delivery_limit + 1` attempts. The dead-letter exchange is a fanout, which ignores it for
/// routing.
pub fn dead_letter_routing_key(delivery_limit: u32) -> String {
    format!("{DELIVERY_LIMIT_ROUTING_KEY_PREFIX}{delivery_limit}")
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

impl QueueType {
    /// The arguments of a method queue of this type under `prefix`; `max_priority` applies to
    /// classic queues only.
    pub fn arguments(self, prefix: &str, max_priority: Option<u8>) -> FieldTable {
        match self {
            Self::Classic => method_queue_arguments(max_priority),
            Self::Quorum { delivery_limit } => quorum_queue_arguments(prefix, delivery_limit),
        }
    }
}

/// Why a job's [`DEADLINE_HEADER`] could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DeadlineError {
    /// The header is an integer, but a negative one.
    #[error("{DEADLINE_HEADER} is negative ({0})")]
    Negative(i64),
    /// The header is a string that is not a decimal number of milliseconds.
    #[error("{DEADLINE_HEADER} {0:?} is not a number of milliseconds")]
    NotANumber(String),
    /// The header is a floating-point number that is not finite and non-negative.
    #[error("{DEADLINE_HEADER} {0} is not a non-negative finite number")]
    BadFloat(f64),
    /// The header is of a type that holds no number of milliseconds (a boolean, a table, or a
    /// timestamp, whose unit is by convention seconds).
    #[error("{DEADLINE_HEADER} has AMQP type {0:?}, not an integer")]
    WrongType(AMQPType),
    /// The header names a time the system clock cannot represent.
    #[error("{DEADLINE_HEADER} {0} ms is out of the clock's range")]
    OutOfRange(u64),
}

/// Reads a job's caller from its [`CALLER_HEADER`]: `None` when absent or not a string.
pub fn caller_from_headers(headers: Option<&FieldTable>) -> Option<String> {
    match headers?.inner().get(CALLER_HEADER)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads a job's deadline from its [`DEADLINE_HEADER`]: `Ok(None)` when it has none.
///
/// The contract says an integer of milliseconds since the Unix epoch; any AMQP integer type is
/// accepted, and so are a decimal string (long or short) and a non-negative float (truncated),
/// since clients in other languages pick these types on their own.
pub fn deadline_from_headers(
    headers: Option<&FieldTable>,
) -> Result<Option<SystemTime>, DeadlineError> {
    let Some(value) = headers.and_then(|h| h.inner().get(DEADLINE_HEADER)) else {
        return Ok(None);
    };
    let signed = |n: i64| u64::try_from(n).map_err(|_| DeadlineError::Negative(n));
    let ms = match value {
        AMQPValue::ShortShortInt(n) => signed(i64::from(*n))?,
        AMQPValue::ShortInt(n) => signed(i64::from(*n))?,
        AMQPValue::LongInt(n) => signed(i64::from(*n))?,
        AMQPValue::LongLongInt(n) => signed(*n)?,
        AMQPValue::ShortShortUInt(n) => u64::from(*n),
        AMQPValue::ShortUInt(n) => u64::from(*n),
        AMQPValue::LongUInt(n) => u64::from(*n),
        AMQPValue::LongString(s) => parse_ms(&String::from_utf8_lossy(s.as_bytes()))?,
        AMQPValue::ShortString(s) => parse_ms(s.as_str())?,
        AMQPValue::Float(f) => float_ms(f64::from(*f))?,
        AMQPValue::Double(f) => float_ms(*f)?,
        other => return Err(DeadlineError::WrongType(other.get_type())),
    };
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .map(Some)
        .ok_or(DeadlineError::OutOfRange(ms))
}

fn parse_ms(text: &str) -> Result<u64, DeadlineError> {
    text.trim()
        .parse()
        .map_err(|_| DeadlineError::NotANumber(text.to_owned()))
}

fn float_ms(value: f64) -> Result<u64, DeadlineError> {
    if value.is_finite() && value >= 0.0 {
        // Truncation is the intent, and `as` saturates at u64::MAX.
        Ok(value as u64)
    } else {
        Err(DeadlineError::BadFloat(value))
    }
}

/// The [`DEADLINE_HEADER`] value for `deadline`, as the bridge sends it: an AMQP long-long
/// integer of milliseconds since the Unix epoch (0 for a time before the epoch).
pub fn deadline_header_value(deadline: SystemTime) -> AMQPValue {
    let ms = deadline
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// Whether a job with `deadline` must not start (or reply) any more at `now`: the caller has
/// already been told it timed out.
pub fn deadline_passed(deadline: Option<SystemTime>, now: SystemTime) -> bool {
    deadline.is_some_and(|deadline| deadline <= now)
}

/// Why a job was cancelled, from a cancellation's [`REASON_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// [`REASON_CANCELLED`]: the caller cancelled the call.
    Cancelled,
    /// [`REASON_TIMEOUT`]: the call's deadline passed.
    Timeout,
    /// No reason, or one this SDK does not know; the job is cancelled all the same.
    Unspecified,
}

impl CancelReason {
    /// The [`REASON_HEADER`] value for this reason (`None` for [`CancelReason::Unspecified`]).
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Self::Cancelled => Some(REASON_CANCELLED),
            Self::Timeout => Some(REASON_TIMEOUT),
            Self::Unspecified => None,
        }
    }
}

/// A message from the cancellation exchange: job `job_id` is not wanted any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    /// The cancelled job's id (its `correlation_id`).
    pub job_id: String,
    /// Why; informational only: every reason cancels the job the same way.
    pub reason: CancelReason,
}

impl Cancellation {
    /// Reads a cancellation from a message's properties; `None` without a `correlation_id`
    /// (it could not name a job).
    pub fn from_properties(properties: &BasicProperties) -> Option<Self> {
        let job_id = properties
            .correlation_id()
            .as_ref()
            .filter(|s| !s.as_str().is_empty())?;
        let reason = match properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(REASON_HEADER))
        {
            Some(AMQPValue::LongString(s)) => reason_from(s.as_bytes()),
            Some(AMQPValue::ShortString(s)) => reason_from(s.as_str().as_bytes()),
            _ => CancelReason::Unspecified,
        };
        Some(Self {
            job_id: job_id.to_string(),
            reason,
        })
    }

    /// The properties the bridge publishes this cancellation with (its body is empty).
    pub fn properties(&self) -> BasicProperties {
        let mut properties =
            BasicProperties::default().with_correlation_id(self.job_id.as_str().into());
        if let Some(reason) = self.reason.as_str() {
            let mut headers = FieldTable::default();
            headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
            properties = properties.with_headers(headers);
        }
        properties
    }
}

fn reason_from(text: &[u8]) -> CancelReason {
    match text {
        b"cancelled" => CancelReason::Cancelled,
        b"timeout" => CancelReason::Timeout,
        _ => CancelReason::Unspecified,
    }
}

/// Where a job's reply goes, taken from the job's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplyAddress {
    /// The bridge's reply queue: the reply's routing key on the default exchange.
    pub(crate) reply_to: ShortString,
    /// The job id, echoed so the bridge can match the reply to its call.
    pub(crate) correlation_id: ShortString,
}

impl ReplyAddress {
    /// `None` if the job lacks `reply_to` or `correlation_id` (an empty one counts as absent:
    /// a reply routed to `""` goes nowhere, and one without an id cannot be matched).
    pub(crate) fn from_properties(properties: &BasicProperties) -> Option<Self> {
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

/// Decodes a job body into the call's params.
///
/// A body that is not one valid JSON value is a `-32700` error, to be replied as is.
pub(crate) fn decode_params(body: &[u8]) -> Result<Value, RpcError> {
    serde_json::from_slice(body).map_err(RpcError::parse_error)
}

/// An encoded reply body and the status that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplyBody {
    pub(crate) status: ReplyStatus,
    pub(crate) bytes: Vec<u8>,
}

/// The body the worker sends when even a small error object cannot be encoded.
const LAST_RESORT_ERROR_BODY: &[u8] = br#"{"code":-32603,"message":"internal error"}"#;

/// Encodes a handler's outcome as a reply body of at most `max_len` bytes.
///
/// A body that is too large, or that cannot be encoded, is replaced by a `-32603` error saying
/// so: the caller gets an answer either way, and the broker is never handed a message it
/// would refuse (a refused reply would be redelivered and refused again, forever).
pub(crate) fn encode_reply(outcome: &Result<Value, RpcError>, max_len: usize) -> ReplyBody {
    let (status, encoded) = match outcome {
        Ok(result) => (ReplyStatus::Ok, serde_json::to_vec(result)),
        Err(error) => (ReplyStatus::Error, serde_json::to_vec(error)),
    };
    let fallback = match encoded {
        Ok(bytes) if bytes.len() <= max_len => return ReplyBody { status, bytes },
        Ok(bytes) => RpcError::internal(format!(
            "reply of {} bytes exceeds the worker's limit of {max_len} bytes",
            bytes.len()
        )),
        Err(e) => RpcError::internal(format!("reply could not be encoded as JSON: {e}")),
    };
    ReplyBody {
        status: ReplyStatus::Error,
        bytes: serde_json::to_vec(&fallback).unwrap_or_else(|_| LAST_RESORT_ERROR_BODY.to_vec()),
    }
}

/// The properties of a reply or a progress message: same `correlation_id` as the job, JSON,
/// persistent, and the status header.
pub(crate) fn reply_properties(
    correlation_id: ShortString,
    status: ReplyStatus,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        STATUS_HEADER.into(),
        AMQPValue::LongString(status.as_str().into()),
    );
    BasicProperties::default()
        .with_correlation_id(correlation_id)
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers_with(value: AMQPValue) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(STATUS_HEADER.into(), value);
        headers
    }

    #[test]
    fn reply_without_headers_is_a_result() {
        assert_eq!(ReplyStatus::from_headers(None), Some(ReplyStatus::Ok));
        let unrelated = {
            let mut h = FieldTable::default();
            h.insert("x-other".into(), AMQPValue::LongString("error".into()));
            h
        };
        assert_eq!(
            ReplyStatus::from_headers(Some(&unrelated)),
            Some(ReplyStatus::Ok)
        );
    }

    #[test]
    fn status_header_error_marks_an_error_reply() {
        let long = headers_with(AMQPValue::LongString("error".into()));
        let short = headers_with(AMQPValue::ShortString("error".into()));
        assert_eq!(
            ReplyStatus::from_headers(Some(&long)),
            Some(ReplyStatus::Error)
        );
        assert_eq!(
            ReplyStatus::from_headers(Some(&short)),
            Some(ReplyStatus::Error)
        );
    }

    #[test]
    fn status_header_ok_marks_a_result() {
        let ok = headers_with(AMQPValue::LongString("ok".into()));
        assert_eq!(ReplyStatus::from_headers(Some(&ok)), Some(ReplyStatus::Ok));
    }

    #[test]
    fn unknown_status_header_is_not_guessed() {
        let unknown = headers_with(AMQPValue::LongString("Error".into()));
        let wrong_type = headers_with(AMQPValue::Boolean(true));
        assert_eq!(ReplyStatus::from_headers(Some(&unknown)), None);
        assert_eq!(ReplyStatus::from_headers(Some(&wrong_type)), None);
    }

    fn deadline_headers(value: AMQPValue) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(DEADLINE_HEADER.into(), value);
        headers
    }

    fn read_deadline(value: AMQPValue) -> Result<Option<SystemTime>, DeadlineError> {
        deadline_from_headers(Some(&deadline_headers(value)))
    }

    const MS: u64 = 1_700_000_000_123;

    fn at_ms(ms: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }

    #[test]
    fn caller_header_is_read_as_a_string_and_absent_otherwise() {
        let mut h = FieldTable::default();
        assert_eq!(caller_from_headers(None), None);
        assert_eq!(caller_from_headers(Some(&h)), None);
        h.insert(CALLER_HEADER.into(), AMQPValue::LongString("alice".into()));
        assert_eq!(caller_from_headers(Some(&h)).as_deref(), Some("alice"));
        h.insert(CALLER_HEADER.into(), AMQPValue::LongLongInt(7));
        assert_eq!(caller_from_headers(Some(&h)), None);
    }

    #[test]
    fn job_without_deadline_header_has_no_deadline() {
        assert_eq!(deadline_from_headers(None), Ok(None));
        let unrelated = {
            let mut h = FieldTable::default();
            h.insert("x-other".into(), AMQPValue::LongLongInt(1));
            h
        };
        assert_eq!(deadline_from_headers(Some(&unrelated)), Ok(None));
    }

    #[test]
    fn deadline_header_is_read_from_any_integer_type() {
        let ms = i64::try_from(MS).expect("fits");
        assert_eq!(read_deadline(AMQPValue::LongLongInt(ms)), Ok(at_ms(MS)));
        assert_eq!(read_deadline(AMQPValue::LongInt(5)), Ok(at_ms(5)));
        assert_eq!(read_deadline(AMQPValue::LongUInt(6)), Ok(at_ms(6)));
        assert_eq!(read_deadline(AMQPValue::ShortInt(7)), Ok(at_ms(7)));
        assert_eq!(read_deadline(AMQPValue::ShortUInt(8)), Ok(at_ms(8)));
        assert_eq!(read_deadline(AMQPValue::ShortShortInt(9)), Ok(at_ms(9)));
        assert_eq!(read_deadline(AMQPValue::ShortShortUInt(10)), Ok(at_ms(10)));
    }

    #[test]
    fn deadline_header_is_read_from_a_decimal_string() {
        let text = MS.to_string();
        assert_eq!(
            read_deadline(AMQPValue::LongString(text.as_str().into())),
            Ok(at_ms(MS))
        );
        assert_eq!(
            read_deadline(AMQPValue::ShortString(format!(" {text} ").into())),
            Ok(at_ms(MS))
        );
    }

    #[test]
    fn deadline_header_is_read_from_a_float_truncated() {
        assert_eq!(read_deadline(AMQPValue::Double(1234.9)), Ok(at_ms(1234)));
        assert_eq!(read_deadline(AMQPValue::Float(2.0)), Ok(at_ms(2)));
    }

    #[test]
    fn unreadable_deadline_header_is_an_error() {
        assert_eq!(
            read_deadline(AMQPValue::LongLongInt(-1)),
            Err(DeadlineError::Negative(-1))
        );
        assert_eq!(
            read_deadline(AMQPValue::LongString("soon".into())),
            Err(DeadlineError::NotANumber("soon".into()))
        );
        assert!(matches!(
            read_deadline(AMQPValue::Double(f64::NAN)),
            Err(DeadlineError::BadFloat(_))
        ));
        assert_eq!(
            read_deadline(AMQPValue::Boolean(true)),
            Err(DeadlineError::WrongType(AMQPType::Boolean))
        );
        assert_eq!(
            read_deadline(AMQPValue::Timestamp(5)),
            Err(DeadlineError::WrongType(AMQPType::Timestamp)),
            "a timestamp's unit is seconds by convention: not guessed"
        );
    }

    #[test]
    fn deadline_header_value_round_trips_as_a_long_long_int() {
        let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(MS);
        let value = deadline_header_value(deadline);
        assert_eq!(value, AMQPValue::LongLongInt(1_700_000_000_123));
        assert_eq!(read_deadline(value), Ok(Some(deadline)));
        let before_epoch = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(
            deadline_header_value(before_epoch),
            AMQPValue::LongLongInt(0)
        );
    }

    #[test]
    fn deadline_has_passed_from_its_very_millisecond() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(MS);
        assert!(!deadline_passed(None, now));
        assert!(deadline_passed(Some(now), now));
        assert!(deadline_passed(Some(now - Duration::from_millis(1)), now));
        assert!(!deadline_passed(Some(now + Duration::from_millis(1)), now));
    }

    #[test]
    fn cancellation_names_its_job_and_reason() {
        for reason in [CancelReason::Cancelled, CancelReason::Timeout] {
            let sent = Cancellation {
                job_id: "job-1".into(),
                reason,
            };
            let properties = sent.properties();
            assert_eq!(
                properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(REASON_HEADER)),
                reason
                    .as_str()
                    .map(|text| AMQPValue::LongString(text.into()))
                    .as_ref()
            );
            assert_eq!(Cancellation::from_properties(&properties), Some(sent));
        }
    }

    #[test]
    fn cancellation_with_unknown_or_no_reason_still_cancels() {
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString("bored".into()));
        let unknown = BasicProperties::default()
            .with_correlation_id("job-1".into())
            .with_headers(headers);
        let none = BasicProperties::default().with_correlation_id("job-2".into());
        for (properties, job_id) in [(unknown, "job-1"), (none, "job-2")] {
            assert_eq!(
                Cancellation::from_properties(&properties),
                Some(Cancellation {
                    job_id: job_id.into(),
                    reason: CancelReason::Unspecified
                })
            );
        }
    }

    #[test]
    fn cancellation_without_correlation_id_names_no_job() {
        let empty = BasicProperties::default().with_correlation_id("".into());
        assert_eq!(
            Cancellation::from_properties(&BasicProperties::default()),
            None
        );
        assert_eq!(Cancellation::from_properties(&empty), None);
    }

    #[test]
    fn cancel_exchange_is_prefix_then_wsmq_cancel() {
        assert_eq!(cancel_exchange_name("t1."), "t1.wsmq.cancel");
        assert_eq!(cancel_exchange_name(""), "wsmq.cancel");
    }

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
    fn classic_queue_type_keeps_the_priority_arguments() {
        assert_eq!(
            QueueType::default().arguments("p.", Some(9)),
            method_queue_arguments(Some(9))
        );
        assert!(QueueType::Classic.arguments("p.", None).inner().is_empty());
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
    fn progress_message_carries_status_progress() {
        let props = reply_properties("job-1".into(), ReplyStatus::Progress);
        assert_eq!(
            props
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(STATUS_HEADER)),
            Some(&AMQPValue::LongString("progress".into()))
        );
        assert_eq!(
            ReplyStatus::from_headers(props.headers().as_ref()),
            Some(ReplyStatus::Progress)
        );
        assert_eq!(props.correlation_id().as_ref(), Some(&"job-1".into()));
        assert_eq!(*props.delivery_mode(), Some(DELIVERY_MODE_PERSISTENT));
        assert_eq!(props.content_type().as_ref(), Some(&CONTENT_TYPE.into()));
    }

    #[test]
    fn queue_name_is_prefix_then_method() {
        assert_eq!(queue_name("t123.", "echo"), "t123.echo");
        assert_eq!(queue_name("", "echo"), "echo");
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

    #[test]
    fn job_body_is_decoded_as_params() {
        assert_eq!(decode_params(br#"{"n": 3}"#), Ok(json!({"n": 3})));
        assert_eq!(decode_params(b"null"), Ok(Value::Null));
    }

    #[test]
    fn invalid_json_body_is_a_parse_error() {
        for body in [&b"{not json"[..], b"", b"1 2"] {
            let error = decode_params(body).expect_err("body is not one JSON value");
            assert_eq!(error.code, RpcError::PARSE_ERROR);
            assert_eq!(error.message, "params are not valid JSON");
            assert!(error.data.is_some());
        }
    }

    #[test]
    fn result_reply_body_is_the_bare_result() {
        let reply = encode_reply(&Ok(json!({"slept_ms": 5})), 1024);
        assert_eq!(reply.status, ReplyStatus::Ok);
        assert_eq!(reply.bytes, br#"{"slept_ms":5}"#);
    }

    #[test]
    fn error_reply_body_is_a_json_rpc_error_object() {
        let with_data = encode_reply(
            &Err(RpcError::new(4000, "requested failure").with_data(json!([1]))),
            1024,
        );
        assert_eq!(with_data.status, ReplyStatus::Error);
        assert_eq!(
            with_data.bytes,
            br#"{"code":4000,"message":"requested failure","data":[1]}"#
        );
        let without_data = encode_reply(&Err(RpcError::new(-32602, "invalid params")), 1024);
        assert_eq!(
            without_data.bytes,
            br#"{"code":-32602,"message":"invalid params"}"#
        );
    }

    #[test]
    fn oversized_reply_becomes_an_internal_error() {
        let reply = encode_reply(&Ok(json!("x".repeat(100))), 64);
        assert_eq!(reply.status, ReplyStatus::Error);
        assert!(reply.bytes.len() <= 256);
        let error: RpcError = serde_json::from_slice(&reply.bytes).expect("error object");
        assert_eq!(error.code, RpcError::INTERNAL_ERROR);
        assert!(error.message.contains("exceeds"), "{}", error.message);
    }

    #[test]
    fn reply_properties_follow_the_contract() {
        let props = reply_properties("job-1".into(), ReplyStatus::Error);
        assert_eq!(props.correlation_id().as_ref(), Some(&"job-1".into()));
        assert_eq!(props.content_type().as_ref(), Some(&CONTENT_TYPE.into()));
        assert_eq!(*props.delivery_mode(), Some(DELIVERY_MODE_PERSISTENT));
        assert_eq!(
            props
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(STATUS_HEADER)),
            Some(&AMQPValue::LongString("error".into()))
        );
        let ok = reply_properties("job-1".into(), ReplyStatus::Ok);
        assert_eq!(
            ReplyStatus::from_headers(ok.headers().as_ref()),
            Some(ReplyStatus::Ok)
        );
    }
}
