//! Turns a worker's AMQP reply into a typed [`ReplyBody`] for the gateway.
//!
//! Workers are written in any language by anyone, so nothing about a reply is trusted: a body
//! that is not JSON, or an error reply that is not a JSON-RPC error object, becomes
//! [`ReplyBody::Invalid`] with a reason the client can read, never a crash or a lost reply.

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable};
use serde::Deserialize;
use serde_json::value::RawValue;
use wsmq_ipc_proto::{Json, ReplyBody, WorkerError};

/// Header a worker sets to `error` when its body is a JSON-RPC error object.
pub(crate) const STATUS_HEADER: &str = "wsmq-status";

/// What the status header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Error,
    Progress,
}

fn status(headers: Option<&FieldTable>) -> Result<Status, String> {
    let Some(value) = headers.and_then(|h| h.inner().get(STATUS_HEADER)) else {
        return Ok(Status::Ok);
    };
    let text: &[u8] = match value {
        AMQPValue::LongString(s) => s.as_bytes(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes(),
        AMQPValue::ByteArray(b) => b.as_slice(),
        other => return Err(format!("header {STATUS_HEADER} is not a string: {other:?}")),
    };
    match text {
        b"ok" | b"result" => Ok(Status::Ok),
        b"error" => Ok(Status::Error),
        b"progress" => Ok(Status::Progress),
        other => Err(format!(
            "header {STATUS_HEADER} has unknown value {:?}",
            String::from_utf8_lossy(other)
        )),
    }
}

#[derive(Deserialize)]
struct ErrorObject<'a> {
    code: i64,
    message: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Classifies a reply from its headers and body.
///
/// The body is parsed once, to check it; what goes to the gateway is a slice of the body itself
/// (surrounding whitespace cut), never a copy or a re-encoding.
pub(crate) fn classify(headers: Option<&FieldTable>, body: Bytes) -> ReplyBody {
    let status = match status(headers) {
        Ok(s) => s,
        Err(reason) => return ReplyBody::Invalid { reason },
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return ReplyBody::Invalid {
            reason: "reply body is not UTF-8".into(),
        };
    };
    // `raw` borrows from `text`, which is `body`: slice_ref shares the buffer.
    let json_of = |raw: &RawValue| Json(body.slice_ref(raw.get().as_bytes()));
    match status {
        Status::Ok => match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => ReplyBody::Result(json_of(raw)),
            Err(e) => ReplyBody::Invalid {
                reason: format!("reply body is not valid JSON: {e}"),
            },
        },
        Status::Progress => match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => ReplyBody::Progress(json_of(raw)),
            Err(e) => ReplyBody::Invalid {
                reason: format!("progress report is not valid JSON: {e}"),
            },
        },
        Status::Error => match serde_json::from_str::<ErrorObject<'_>>(text) {
            Ok(obj) => ReplyBody::Error(WorkerError {
                code: obj.code,
                message: obj.message,
                data: obj.data.map(json_of),
            }),
            Err(e) => ReplyBody::Invalid {
                reason: format!(
                    "error reply is not a JSON-RPC error object {{code, message, data?}}: {e}"
                ),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &str) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert(STATUS_HEADER.into(), AMQPValue::LongString(status.into()));
        t
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
    fn garbage_progress_is_invalid() {
        assert!(matches!(
            classify(Some(&headers("progress")), Bytes::from_static(b"{")),
            ReplyBody::Invalid { .. }
        ));
    }

    #[test]
    fn plain_json_is_a_result_kept_verbatim() {
        let body = br#" {"b": 1, "a": [1.50, "x"]} "#;
        assert_eq!(
            classify(None, Bytes::from_static(body)),
            ReplyBody::Result(r#"{"b": 1, "a": [1.50, "x"]}"#.into())
        );
    }

    #[test]
    fn ok_header_is_a_result() {
        assert_eq!(
            classify(Some(&headers("ok")), Bytes::from_static(b"42")),
            ReplyBody::Result("42".into())
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
    fn error_without_data_has_none() {
        let got = classify(
            Some(&headers("error")),
            Bytes::from_static(br#"{"code":1,"message":"m"}"#),
        );
        assert!(matches!(
            got,
            ReplyBody::Error(WorkerError { data: None, .. })
        ));
    }

    #[test]
    fn garbage_body_is_invalid_with_a_reason() {
        match classify(None, Bytes::from_static(b"not json{")) {
            ReplyBody::Invalid { reason } => assert!(reason.contains("not valid JSON"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_utf8_body_is_invalid() {
        assert!(matches!(
            classify(None, Bytes::from_static(&[0xff, 0xfe])),
            ReplyBody::Invalid { .. }
        ));
    }

    #[test]
    fn error_reply_that_is_not_an_error_object_is_invalid() {
        for body in [&br#"{"message":"no code"}"#[..], b"[1]", b"\"text\""] {
            assert!(
                matches!(
                    classify(Some(&headers("error")), Bytes::from_static(body)),
                    ReplyBody::Invalid { .. }
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn unknown_status_value_is_invalid() {
        assert!(matches!(
            classify(Some(&headers("maybe")), Bytes::from_static(b"1")),
            ReplyBody::Invalid { .. }
        ));
    }
}
