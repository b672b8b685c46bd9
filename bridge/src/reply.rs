//! Turns a worker's AMQP reply into a typed [`ReplyBody`] for the gateway.
//!
//! Reading the reply is the contract's ([`wsmq_amqp_proto::classify_reply`]): workers are
//! written in any language by anyone, so nothing about a reply is trusted, and a reply that
//! cannot be read becomes [`ReplyBody::Invalid`] with a reason the client can read, never a
//! crash or a lost reply. This module only moves the result into the IPC protocol's types.

use bytes::Bytes;
use lapin::types::FieldTable;
use serde_json::value::RawValue;
use wsmq_amqp_proto::{Reply, classify_reply};
use wsmq_ipc_proto::{Json, ReplyBody, WorkerError};

/// Classifies a reply from its headers and body.
///
/// The body is parsed once, to check it; what goes to the gateway is a slice of the body itself
/// (surrounding whitespace cut), never a copy or a re-encoding.
pub(crate) fn classify(headers: Option<&FieldTable>, body: Bytes) -> ReplyBody {
    // What classify_reply returns borrows from `body`: slice_ref shares its buffer.
    let json_of = |raw: &RawValue| Json(body.slice_ref(raw.get().as_bytes()));
    match classify_reply(headers, &body) {
        Ok(Reply::Result(raw)) => ReplyBody::Result(json_of(raw)),
        Ok(Reply::Progress(raw)) => ReplyBody::Progress(json_of(raw)),
        Ok(Reply::Error(error)) => ReplyBody::Error(WorkerError {
            code: error.code,
            message: error.message,
            data: error.data.map(json_of),
        }),
        Err(invalid) => ReplyBody::Invalid {
            reason: invalid.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;
    use wsmq_amqp_proto::STATUS_HEADER;

    fn headers(status: &str) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert(STATUS_HEADER.into(), AMQPValue::LongString(status.into()));
        t
    }

    #[test]
    fn result_is_kept_verbatim() {
        assert_eq!(
            classify(None, Bytes::from_static(br#" {"b": 1, "a": [1.50, "x"]} "#)),
            ReplyBody::Result(r#"{"b": 1, "a": [1.50, "x"]}"#.into())
        );
    }

    #[test]
    fn progress_header_makes_a_progress_report() {
        assert_eq!(
            classify(
                Some(&headers("progress")),
                Bytes::from_static(br#"{"step":1}"#)
            ),
            ReplyBody::Progress(r#"{"step":1}"#.into())
        );
    }

    #[test]
    fn error_header_carries_the_workers_error_object() {
        let body = br#"{"code": 4000, "message": "nope", "data": {"why": [1]}}"#;
        assert_eq!(
            classify(Some(&headers("error")), Bytes::from_static(body)),
            ReplyBody::Error(WorkerError {
                code: 4000,
                message: "nope".into(),
                data: Some(r#"{"why": [1]}"#.into()),
            })
        );
    }

    #[test]
    fn unreadable_reply_is_invalid_with_the_contracts_reason() {
        assert_eq!(
            classify(Some(&headers("maybe")), Bytes::from_static(b"1")),
            ReplyBody::Invalid {
                reason: r#"header wsmq-status has unknown value "maybe""#.into()
            }
        );
    }
}
