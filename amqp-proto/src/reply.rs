//! Replies: the status header, reading a worker's reply, and encoding one.
//!
//! Workers are written in any language by anyone, so nothing about a reply is trusted: a body
//! that is not JSON, or an error reply that is not a JSON-RPC error object, is an
//! [`InvalidReply`] with a reason the caller can read, never a crash or a lost reply.
//!
//! What the status header may hold is settled here once, for the bridge (which reads replies)
//! and the worker SDK (which writes them) alike: no header, `ok`, or `result` (an older
//! spelling the bridge has always taken) mean a result; `error` an error object; `progress` a
//! progress report. The value may come as any string type [`header_text`] reads; anything else
//! is refused, not guessed at.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::headers::{
    STATUS_ERROR, STATUS_HEADER, STATUS_OK, STATUS_PROGRESS, STATUS_RESULT, header_text,
};
use crate::job::{CONTENT_TYPE, DELIVERY_MODE_PERSISTENT};

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
    /// Reads a reply's status from its headers, or why it cannot be read.
    ///
    /// No headers, or no [`STATUS_HEADER`], means [`ReplyStatus::Ok`]; so do
    /// [`STATUS_OK`] and [`STATUS_RESULT`]. The value is compared byte for byte, as any string
    /// type ([`header_text`]).
    pub fn read(headers: Option<&FieldTable>) -> Result<Self, InvalidReply> {
        let Some(value) = headers.and_then(|h| h.inner().get(STATUS_HEADER)) else {
            return Ok(Self::Ok);
        };
        let Some(text) = header_text(value) else {
            return Err(InvalidReply::StatusNotText(value.clone()));
        };
        match text {
            t if t == STATUS_OK.as_bytes() || t == STATUS_RESULT.as_bytes() => Ok(Self::Ok),
            t if t == STATUS_ERROR.as_bytes() => Ok(Self::Error),
            t if t == STATUS_PROGRESS.as_bytes() => Ok(Self::Progress),
            other => Err(InvalidReply::UnknownStatus(
                String::from_utf8_lossy(other).into_owned(),
            )),
        }
    }

    /// [`ReplyStatus::read`], with `None` for a status that cannot be read.
    pub fn from_headers(headers: Option<&FieldTable>) -> Option<Self> {
        Self::read(headers).ok()
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

/// A worker's reply, read: borrowed from the delivery's body.
#[derive(Debug)]
pub enum Reply<'a> {
    /// The call's result, as the JSON text the worker sent (surrounding whitespace trimmed).
    Result(&'a RawValue),
    /// A progress report: any JSON value. More replies follow.
    Progress(&'a RawValue),
    /// The worker's JSON-RPC error object.
    Error(ErrorReply<'a>),
}

/// A JSON-RPC error object `{"code", "message", "data"?}`, as a worker replies it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply<'a> {
    /// The error code: the worker's own, passed through to the caller.
    pub code: i64,
    /// A short description.
    pub message: String,
    /// Anything else, as the JSON text the worker sent.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
}

/// Why a reply cannot be read; its text is the reason the caller is given.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidReply {
    /// The status header is of a type that holds no string.
    #[error("header {STATUS_HEADER} is not a string: {0:?}")]
    StatusNotText(AMQPValue),
    /// The status header holds a value the contract does not know.
    #[error("header {STATUS_HEADER} has unknown value {0:?}")]
    UnknownStatus(String),
    /// The body is not UTF-8 (so not JSON).
    #[error("reply body is not UTF-8")]
    NotUtf8,
    /// A result whose body is not one JSON value.
    #[error("reply body is not valid JSON: {0}")]
    ResultNotJson(serde_json::Error),
    /// A progress report whose body is not one JSON value.
    #[error("progress report is not valid JSON: {0}")]
    ProgressNotJson(serde_json::Error),
    /// An error reply whose body is not a JSON-RPC error object.
    #[error("error reply is not a JSON-RPC error object {{code, message, data?}}: {0}")]
    NotAnErrorObject(serde_json::Error),
}

/// Reads a reply from its headers and body.
pub fn classify_reply<'a>(
    headers: Option<&FieldTable>,
    body: &'a [u8],
) -> Result<Reply<'a>, InvalidReply> {
    let status = ReplyStatus::read(headers)?;
    let text = std::str::from_utf8(body).map_err(|_| InvalidReply::NotUtf8)?;
    match status {
        ReplyStatus::Ok => serde_json::from_str(text)
            .map(Reply::Result)
            .map_err(InvalidReply::ResultNotJson),
        ReplyStatus::Progress => serde_json::from_str(text)
            .map(Reply::Progress)
            .map_err(InvalidReply::ProgressNotJson),
        ReplyStatus::Error => serde_json::from_str(text)
            .map(Reply::Error)
            .map_err(InvalidReply::NotAnErrorObject),
    }
}

/// An encoded reply body and the status that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedReply {
    /// What the body is; the [`STATUS_HEADER`] to send with it ([`reply_properties`]).
    pub status: ReplyStatus,
    /// The body: the JSON result, or a JSON-RPC error object.
    pub bytes: Vec<u8>,
}

/// The body sent when even a small error object cannot be encoded.
const LAST_RESORT_ERROR_BODY: &[u8] = br#"{"code":-32603,"message":"internal error"}"#;

/// Encodes a handler's outcome, a result or a JSON-RPC error object (anything that serialises
/// as `{"code", "message", "data"?}`), as a reply body of at most `max_len` bytes.
///
/// A body that is too large, or that cannot be encoded, is replaced by a
/// [`INTERNAL_ERROR`](wsmq_codes::INTERNAL_ERROR) error saying so: the caller gets an answer
/// either way, and the broker is never handed a message it would refuse (a refused reply would
/// be redelivered and refused again, forever).
pub fn encode_reply<T: Serialize, E: Serialize>(
    outcome: &Result<T, E>,
    max_len: usize,
) -> EncodedReply {
    let (status, encoded) = match outcome {
        Ok(result) => (ReplyStatus::Ok, serde_json::to_vec(result)),
        Err(error) => (ReplyStatus::Error, serde_json::to_vec(error)),
    };
    let reason = match encoded {
        Ok(bytes) if bytes.len() <= max_len => return EncodedReply { status, bytes },
        Ok(bytes) => format!(
            "reply of {} bytes exceeds the worker's limit of {max_len} bytes",
            bytes.len()
        ),
        Err(e) => format!("reply could not be encoded as JSON: {e}"),
    };
    let fallback = ErrorReply {
        code: wsmq_codes::INTERNAL_ERROR,
        message: format!("internal error: {reason}"),
        data: None,
    };
    EncodedReply {
        status: ReplyStatus::Error,
        bytes: serde_json::to_vec(&fallback).unwrap_or_else(|_| LAST_RESORT_ERROR_BODY.to_vec()),
    }
}

/// The properties of a reply or a progress message: the job's `correlation_id`, JSON,
/// persistent, and the [`STATUS_HEADER`] (an AMQP long string).
pub fn reply_properties(correlation_id: ShortString, status: ReplyStatus) -> BasicProperties {
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
    use lapin::types::ByteArray;
    use serde_json::{Value, json};

    fn headers_with(value: AMQPValue) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(STATUS_HEADER.into(), value);
        headers
    }

    fn status(text: &str) -> FieldTable {
        headers_with(AMQPValue::LongString(text.into()))
    }

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).expect("valid JSON")
    }

    /// A reply's kind and JSON text, for comparing.
    fn seen(reply: Result<Reply<'_>, InvalidReply>) -> (&'static str, String) {
        match reply {
            Ok(Reply::Result(raw)) => ("result", raw.get().to_owned()),
            Ok(Reply::Progress(raw)) => ("progress", raw.get().to_owned()),
            Ok(Reply::Error(error)) => ("error", error.code.to_string()),
            Err(invalid) => ("invalid", invalid.to_string()),
        }
    }

    #[test]
    fn reply_without_status_header_is_a_result() {
        assert_eq!(ReplyStatus::read(None).ok(), Some(ReplyStatus::Ok));
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
    fn ok_and_result_both_mark_a_result() {
        for text in ["ok", "result"] {
            assert_eq!(
                ReplyStatus::from_headers(Some(&status(text))),
                Some(ReplyStatus::Ok),
                "{text}"
            );
        }
    }

    #[test]
    fn error_and_progress_are_read_as_such() {
        assert_eq!(
            ReplyStatus::from_headers(Some(&status("error"))),
            Some(ReplyStatus::Error)
        );
        assert_eq!(
            ReplyStatus::from_headers(Some(&status("progress"))),
            Some(ReplyStatus::Progress)
        );
    }

    #[test]
    fn status_is_read_from_every_string_type() {
        let short = headers_with(AMQPValue::ShortString("error".into()));
        // pika sends Python `bytes`, amqplib a `Buffer`, as a byte array.
        let bytes = headers_with(AMQPValue::ByteArray(ByteArray::from(&b"error"[..])));
        assert_eq!(
            ReplyStatus::from_headers(Some(&short)),
            Some(ReplyStatus::Error)
        );
        assert_eq!(
            ReplyStatus::from_headers(Some(&bytes)),
            Some(ReplyStatus::Error)
        );
    }

    #[test]
    fn unknown_or_non_string_status_is_not_guessed() {
        for headers in [
            status("Error"),
            status("maybe"),
            status(""),
            headers_with(AMQPValue::Boolean(true)),
            headers_with(AMQPValue::LongLongInt(0)),
        ] {
            assert_eq!(
                ReplyStatus::from_headers(Some(&headers)),
                None,
                "{headers:?}"
            );
            assert!(matches!(
                classify_reply(Some(&headers), b"1"),
                Err(InvalidReply::UnknownStatus(_) | InvalidReply::StatusNotText(_))
            ));
        }
        let reason = classify_reply(Some(&status("maybe")), b"1")
            .expect_err("unknown")
            .to_string();
        assert_eq!(reason, r#"header wsmq-status has unknown value "maybe""#);
    }

    #[test]
    fn plain_json_is_a_result_kept_verbatim() {
        let body = br#" {"b": 1, "a": [1.50, "x"]} "#;
        assert_eq!(
            seen(classify_reply(None, body)),
            ("result", r#"{"b": 1, "a": [1.50, "x"]}"#.to_owned())
        );
        assert_eq!(
            seen(classify_reply(Some(&status("ok")), b"42")),
            ("result", "42".to_owned())
        );
        assert_eq!(
            seen(classify_reply(Some(&status("result")), b"42")),
            ("result", "42".to_owned())
        );
    }

    #[test]
    fn progress_header_makes_a_progress_report() {
        assert_eq!(
            seen(classify_reply(Some(&status("progress")), br#"{"step":1}"#)),
            ("progress", r#"{"step":1}"#.to_owned())
        );
        assert!(matches!(
            classify_reply(Some(&status("progress")), b"{"),
            Err(InvalidReply::ProgressNotJson(_))
        ));
    }

    #[test]
    fn error_header_carries_the_workers_error_object() {
        let body = br#"{"code": 4000, "message": "nope", "data": {"why": [1]}}"#;
        let Ok(Reply::Error(error)) = classify_reply(Some(&status("error")), body) else {
            panic!("expected an error reply");
        };
        assert_eq!(error.code, 4000);
        assert_eq!(error.message, "nope");
        assert_eq!(error.data.map(RawValue::get), Some(r#"{"why": [1]}"#));
        let Ok(Reply::Error(bare)) =
            classify_reply(Some(&status("error")), br#"{"code":1,"message":"m"}"#)
        else {
            panic!("expected an error reply");
        };
        assert!(bare.data.is_none());
    }

    #[test]
    fn garbage_body_is_invalid_with_a_reason() {
        let reason = classify_reply(None, b"not json{")
            .expect_err("not JSON")
            .to_string();
        assert!(
            reason.starts_with("reply body is not valid JSON: "),
            "{reason}"
        );
        assert!(matches!(
            classify_reply(None, &[0xff, 0xfe]),
            Err(InvalidReply::NotUtf8)
        ));
    }

    #[test]
    fn error_reply_that_is_not_an_error_object_is_invalid() {
        for body in [&br#"{"message":"no code"}"#[..], b"[1]", b"\"text\""] {
            let error = classify_reply(Some(&status("error")), body).expect_err("invalid");
            assert!(
                error.to_string().starts_with(
                    "error reply is not a JSON-RPC error object {code, message, data?}: "
                ),
                "{error}"
            );
        }
    }

    #[test]
    fn result_reply_body_is_the_bare_result() {
        let reply = encode_reply(&Ok::<_, ErrorReply<'_>>(json!({"slept_ms": 5})), 1024);
        assert_eq!(reply.status, ReplyStatus::Ok);
        assert_eq!(reply.bytes, br#"{"slept_ms":5}"#);
    }

    #[test]
    fn error_reply_body_is_a_json_rpc_error_object() {
        let data = raw("[1]");
        let with_data = encode_reply(
            &Err::<Value, _>(ErrorReply {
                code: 4000,
                message: "requested failure".into(),
                data: Some(data),
            }),
            1024,
        );
        assert_eq!(with_data.status, ReplyStatus::Error);
        assert_eq!(
            with_data.bytes,
            br#"{"code":4000,"message":"requested failure","data":[1]}"#
        );
    }

    #[test]
    fn oversized_reply_becomes_an_internal_error() {
        let reply = encode_reply(&Ok::<_, ErrorReply<'_>>(json!("x".repeat(100))), 64);
        assert_eq!(reply.status, ReplyStatus::Error);
        assert!(reply.bytes.len() <= 256);
        let Ok(Reply::Error(error)) = classify_reply(Some(&status("error")), &reply.bytes) else {
            panic!("expected an error object");
        };
        assert_eq!(error.code, wsmq_codes::INTERNAL_ERROR);
        assert_eq!(
            error.message,
            "internal error: reply of 102 bytes exceeds the worker's limit of 64 bytes"
        );
    }

    #[test]
    fn last_resort_body_is_an_internal_error_object() {
        let Ok(Reply::Error(error)) =
            classify_reply(Some(&status("error")), LAST_RESORT_ERROR_BODY)
        else {
            panic!("expected an error object");
        };
        assert_eq!(error.code, wsmq_codes::INTERNAL_ERROR);
    }

    #[test]
    fn reply_properties_follow_the_contract() {
        for reply_status in [ReplyStatus::Ok, ReplyStatus::Error, ReplyStatus::Progress] {
            let props = reply_properties("job-1".into(), reply_status);
            assert_eq!(props.correlation_id().as_ref(), Some(&"job-1".into()));
            assert_eq!(props.content_type().as_ref(), Some(&CONTENT_TYPE.into()));
            assert_eq!(*props.delivery_mode(), Some(DELIVERY_MODE_PERSISTENT));
            assert_eq!(
                props
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(STATUS_HEADER)),
                Some(&AMQPValue::LongString(reply_status.as_str().into()))
            );
            assert_eq!(
                ReplyStatus::from_headers(props.headers().as_ref()),
                Some(reply_status)
            );
        }
    }
}
