//! The messages of the gateway ⇄ bridge protocol, one enum per direction.
//!
//! JSON payloads (params, results, error data) travel as [`Json`]: the bytes of the JSON text,
//! passed through untouched. The bridge does not need to understand params, and the gateway
//! splices results into its responses without parsing or re-encoding them: the side that
//! received the text from outside (the gateway from its client, the bridge from a worker) has
//! checked it, once.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The bytes of one JSON value as it travels: `params` from a client, a result, progress or
/// error `data` from a worker.
///
/// The sender has checked that it is JSON (the gateway parsed the client's frame, the bridge the
/// worker's reply); nobody on the way parses or re-encodes it. It is [`Bytes`], so keeping a copy
/// of a job to send again costs a reference count, not a copy of its params, and the bridge can
/// hand a worker's reply body through without copying it.
///
/// On the wire it is a postcard byte string, which postcard encodes exactly as the `String` this
/// field was before (a varint length, then the bytes), so peers of protocol version 3 built
/// either way read each other (pinned by a test).
///
/// Decoded by [`IpcCodec`](crate::IpcCodec), a `Json` of at least [`Json::SHARE_MIN`] bytes is a
/// slice of the received frame (no copy); a smaller one is copied, so that a few bytes of params
/// never keep a whole read buffer alive while their job waits for its confirm.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Json(pub Bytes);

impl Json {
    /// The size from which a decoded `Json`, or the gateway's copy of a client's params, shares
    /// the buffer it was received in rather than being copied out of it. Below it a copy costs
    /// next to nothing, and sharing could keep a buffer many times its size alive.
    pub const SHARE_MIN: usize = 16 * 1024;

    /// `part` of `whole` without a copy when it lies inside `whole` and is at least
    /// [`Json::SHARE_MIN`] bytes; otherwise a copy of `part`.
    pub fn slice_or_copy(whole: &Bytes, part: &[u8]) -> Json {
        let start = whole.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        let inside = at >= start && at + part.len() <= start + whole.len();
        if inside && part.len() >= Self::SHARE_MIN {
            Json(whole.slice_ref(part))
        } else {
            Json(Bytes::copy_from_slice(part))
        }
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The text, if it is UTF-8 (JSON from a well-behaved peer always is).
    pub fn as_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(&self.0), f)
    }
}

impl From<&str> for Json {
    fn from(text: &str) -> Self {
        Json(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl From<String> for Json {
    fn from(text: String) -> Self {
        Json(Bytes::from(text))
    }
}

impl From<Bytes> for Json {
    fn from(bytes: Bytes) -> Self {
        Json(bytes)
    }
}

impl Serialize for Json {
    /// A byte string; in human-readable formats (JSON, for tools and logs) the text as a string
    /// when it is UTF-8.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.as_str() {
            Ok(text) if serializer.is_human_readable() => serializer.serialize_str(text),
            _ => serializer.serialize_bytes(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON text as a byte string")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Json, E> {
                // Inside `decode_shared` the bytes are a part of the frame being decoded.
                Ok(FRAME.with(|frame| match frame.borrow().as_ref() {
                    Some(frame) => Json::slice_or_copy(frame, v),
                    None => Json(Bytes::copy_from_slice(v)),
                }))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Json, E> {
                Ok(Json(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Json, E> {
                Ok(Json(Bytes::from(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Json, E> {
                Ok(Json::from(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Json, E> {
                Ok(Json::from(v))
            }
        }
        // `deserialize_bytes`, not `_byte_buf`: postcard then lends the bytes from the frame,
        // which `visit_borrowed_bytes` can share instead of copying.
        deserializer.deserialize_bytes(Visitor)
    }
}

thread_local! {
    /// The frame [`decode_shared`] is decoding on this thread, if any.
    static FRAME: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` (a deserialisation from `frame`'s bytes) so that every [`Json`] it reads of at
/// least [`Json::SHARE_MIN`] bytes is a slice of `frame` instead of a copy.
///
/// serde gives a visitor only a `&[u8]`; the frame it lies in is lent through a thread-local for
/// the length of the call (restored afterwards, even on a panic), and a slice is taken only when
/// the bytes are checked to lie inside it.
pub(crate) fn decode_shared<R>(frame: &Bytes, decode: impl FnOnce() -> R) -> R {
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            FRAME.with(|frame| *frame.borrow_mut() = previous);
        }
    }
    let previous = FRAME.with(|current| current.replace(Some(frame.clone())));
    let _restore = Restore(previous);
    decode()
}

/// Identifies one job (one JSON-RPC call) across the gateway, the bridge, RabbitMQ and workers.
///
/// It is a random (v4) UUID; on AMQP it is the `correlation_id` and `message_id`, formatted as
/// the usual hyphenated lowercase UUID, which is also how [`fmt::Display`] prints it.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u128);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xffff_ffff_ffff
        )
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for JobId {
    type Err = InvalidJobId;

    /// Parses the hyphenated form [`fmt::Display`] prints (what workers echo as `correlation_id`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != lens.len()
            || groups.iter().zip(lens).any(|(g, len)| {
                g.len() != len
                    || !g
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
        {
            return Err(InvalidJobId);
        }
        let hex: String = groups.concat();
        u128::from_str_radix(&hex, 16)
            .map(JobId)
            .map_err(|_| InvalidJobId)
    }
}

/// A string that is not a lowercase hyphenated UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a lowercase hyphenated UUID")]
pub struct InvalidJobId;

/// Sequence number the bridge gives each reply it forwards; the gateway echoes it in
/// [`ToBridge::Taken`] so the bridge can acknowledge the right AMQP delivery.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ReplySeq(pub u64);

/// Messages from the gateway to the bridge.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub enum ToBridge {
    /// First frame of every session. Must stay variant 0 (see the crate docs).
    Hello(Hello),
    /// Publish this job.
    Submit(Job),
    /// The gateway has taken this reply (delivered it, or dropped it on purpose and counted it):
    /// the bridge may acknowledge it to RabbitMQ.
    Taken { reply: ReplySeq },
    /// Nobody waits for this job any more: tell the workers, so a running one can stop and a
    /// queued one is skipped.
    Cancel { job: JobId, reason: CancelReason },
}

/// Why a job was called off.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum CancelReason {
    /// The client sent `$/cancel`.
    Cancelled,
    /// Its deadline passed.
    Timeout,
}

impl CancelReason {
    /// The value of the `wsmq-reason` header on the cancellation broadcast.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Cancelled => "cancelled",
            CancelReason::Timeout => "timeout",
        }
    }
}

/// The gateway's half of the handshake.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct Hello {
    /// Must stay the first field (see the crate docs).
    pub version: u16,
    /// Free text naming the gateway in the bridge's logs (host, pid, version).
    pub peer: String,
}

/// Method-name prefixes no job may have, because the routing key they make would name a queue
/// or exchange that is not a worker's: `wsmq.` is wsmq's own (the bridges' reply queues
/// `wsmq.reply.<instance>`, the dead-letter queue `<prefix>wsmq.dead`, the cancellation
/// exchange `<prefix>wsmq.cancel`, and whatever wsmq names next), `amq.` is RabbitMQ's
/// (`amq.gen-…` server-named queues, `amq.rabbitmq.reply-to`). The gateway answers a call to
/// such a method exactly like one no worker serves, and the bridge refuses such a job.
pub const RESERVED_METHOD_PREFIXES: [&str; 2] = ["wsmq.", "amq."];

/// Whether `method` is reserved (see [`RESERVED_METHOD_PREFIXES`]). Compared without regard to
/// ASCII case: RabbitMQ's names are case-sensitive, but no worker should be a case away from
/// one of them.
pub fn is_reserved_method(method: &str) -> bool {
    RESERVED_METHOD_PREFIXES.iter().any(|prefix| {
        method
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    })
}

/// One call to run.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct Job {
    pub id: JobId,
    /// The JSON-RPC method: the routing key, after the bridge's optional prefix.
    pub method: String,
    /// The call's `params` (`null` when the call had none).
    pub params: Json,
    /// The gateway's id for the websocket client, for log correlation only.
    pub client: u64,
    /// When the caller stops waiting, in unix milliseconds. Becomes the message's
    /// `expiration` and `wsmq-deadline` header, so late jobs are never started.
    pub deadline_unix_ms: u64,
    /// AMQP priority, 0-9; `None` publishes without one.
    pub priority: Option<u8>,
    /// The authenticated identity of the caller (the `wsmq-caller` header); `None` when the
    /// gateway runs without authentication.
    pub caller: Option<String>,
}

/// Messages from the bridge to the gateway.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub enum ToGateway {
    /// Answer to [`ToBridge::Hello`] when the versions match. Must stay variant 0.
    Welcome(Welcome),
    /// Answer to [`ToBridge::Hello`] when they don't; the bridge closes the socket after it.
    Refused(Refusal),
    /// The broker connection changed state.
    Broker(BrokerState),
    /// RabbitMQ confirmed the job: it is durable in a queue and its reply will come.
    Published { job: JobId },
    /// The job was not published; the call must be answered with an error.
    Rejected { job: JobId, reason: Rejection },
    /// A worker replied.
    Reply(Reply),
}

/// The bridge's half of the handshake.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct Welcome {
    /// Must stay the first field (see the crate docs).
    pub version: u16,
    /// The bridge's stable instance name (its reply queue is named after it).
    pub instance: String,
    /// Whether the bridge is connected to RabbitMQ right now.
    pub broker: BrokerState,
}

/// Why the bridge refused a gateway.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct Refusal {
    /// Must stay the first field (see the crate docs).
    pub version: u16,
    pub reason: String,
}

/// Whether the bridge has a working broker connection.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum BrokerState {
    Up,
    Down,
    /// Connected, but RabbitMQ blocks publishers (a memory or disk alarm).
    Blocked,
}

/// Why a job was not published.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub enum Rejection {
    /// RabbitMQ returned the message as unroutable: no queue serves this method.
    NoRoute,
    /// No broker connection, or it failed before the publish was confirmed. Retryable.
    BrokerUnavailable,
    /// RabbitMQ refused the message (a publisher nack). Retryable.
    Nacked,
    /// The method cannot be a routing key (too long once prefixed), or names a queue that is
    /// not a worker's (see [`is_reserved_method`]).
    InvalidMethod,
    /// The deadline passed before the job could be published.
    Expired,
}

/// A worker's reply to a job.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct Reply {
    pub seq: ReplySeq,
    pub job: JobId,
    pub body: ReplyBody,
}

/// What the worker said, already classified by the bridge.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub enum ReplyBody {
    /// A result: valid JSON.
    Result(Json),
    /// A progress report (header `wsmq-status: progress`): valid JSON. More replies follow.
    Progress(Json),
    /// The worker replied with header `wsmq-status: error` and a well-formed error object.
    Error(WorkerError),
    /// The reply could not be understood; the reason says why, for the client's -32603 error.
    Invalid { reason: String },
}

/// A JSON-RPC error object reported by a worker.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct WorkerError {
    pub code: i64,
    pub message: String,
    /// The optional `data` member.
    pub data: Option<Json>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_displays_as_hyphenated_uuid_and_parses_back() {
        let id = JobId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let text = id.to_string();
        assert_eq!(text, "01234567-89ab-cdef-0011-223344556677");
        assert_eq!(text.parse::<JobId>(), Ok(id));
    }

    #[test]
    fn json_encodes_exactly_as_the_string_it_replaced() {
        // Protocol version 3 carried these fields as `String`: the bytes must not change.
        #[derive(Serialize)]
        struct Before<'a>(&'a str, Option<&'a str>);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct After(Json, Option<Json>);
        let text = r#"{"a":[1,"\u00e9 é"]}"#;
        let before = postcard::to_allocvec(&Before(text, Some("null"))).expect("encodes");
        let after =
            postcard::to_allocvec(&After(text.into(), Some("null".into()))).expect("encodes");
        assert_eq!(before, after);
        let back: After = postcard::from_bytes(&before).expect("decodes");
        assert_eq!(back, After(text.into(), Some("null".into())));
    }

    #[test]
    fn job_id_rejects_malformed_text() {
        for bad in [
            "",
            "01234567-89ab-cdef-0011-22334455667",
            "01234567-89ab-cdef-0011-2233445566778",
            "0123456789abcdef0011223344556677",
            "01234567-89AB-cdef-0011-223344556677",
            "0123456g-89ab-cdef-0011-223344556677",
            "+1234567-89ab-cdef-0011-223344556677",
        ] {
            assert_eq!(bad.parse::<JobId>(), Err(InvalidJobId), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod reserved_tests {
    use super::*;

    #[test]
    fn wsmq_and_broker_names_are_reserved_and_worker_names_are_not() {
        for method in [
            "wsmq.dead",
            "wsmq.reply.web-1",
            "wsmq.cancel",
            "WSMQ.Dead",
            "amq.gen-JzTY20BRgKO",
            "amq.rabbitmq.reply-to",
        ] {
            assert!(is_reserved_method(method), "{method}");
        }
        for method in [
            "echo",
            "wsmq",
            "amq",
            "wsmqx.dead",
            "report.wsmq.dead",
            "amqp.x",
            "é",
        ] {
            assert!(!is_reserved_method(method), "{method}");
        }
    }
}
