//! The wire side of the AMQP contract: names, properties, headers and bodies, free of I/O.
//!
//! Everything here is a pure function of its inputs so that the exact bytes and properties
//! a worker puts on the wire are pinned by unit tests. See the crate docs for the contract.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, ShortString},
};
use serde_json::Value;

use crate::error::RpcError;

/// Header that tells a reply's reader whether its body is a result or an error object.
pub const STATUS_HEADER: &str = "wsmq-status";
/// [`STATUS_HEADER`] value of a reply whose body is the JSON result.
pub const STATUS_OK: &str = "ok";
/// [`STATUS_HEADER`] value of a reply whose body is a JSON-RPC error object.
pub const STATUS_ERROR: &str = "error";
/// `content_type` of jobs and replies.
pub const CONTENT_TYPE: &str = "application/json";
/// AMQP `delivery_mode` of a persistent message; jobs and replies both use it.
pub const DELIVERY_MODE_PERSISTENT: u8 = 2;
/// The longest queue name AMQP allows, in bytes.
pub const MAX_QUEUE_NAME_LEN: usize = 255;

/// What a reply carries, as told by its [`STATUS_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStatus {
    /// The body is the call's JSON result.
    Ok,
    /// The body is a JSON-RPC error object.
    Error,
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
            _ => None,
        }
    }

    /// The [`STATUS_HEADER`] value for this status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => STATUS_OK,
            Self::Error => STATUS_ERROR,
        }
    }
}

/// The queue that serves `method` under `prefix`: the job's routing key on the default exchange.
pub fn queue_name(prefix: &str, method: &str) -> String {
    format!("{prefix}{method}")
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

/// The properties of a reply: same `correlation_id` as the job, JSON, persistent, and the
/// status header.
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
