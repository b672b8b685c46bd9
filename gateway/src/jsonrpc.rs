//! JSON-RPC 2.0 as clients speak it: the method names wsmq reserves, and the responses and
//! notifications the gateway writes. Reading what clients send is [`parse`]'s; the errors the
//! gateway answers with are [`CallError`](crate::call_error::CallError)s.
//!
//! Responses carry ids (and workers' results) as raw JSON text, byte for byte as they came.

mod parse;

use serde::Serialize;
use serde_json::value::RawValue;

pub(crate) use parse::{Call, Entry, FrameRejected, Incoming, ParseLimits, cancel_target, parse};

/// Highest AMQP priority a call may ask for.
pub(crate) const MAX_PRIORITY: u8 = 9;

/// The notification a client sends to cancel one of its calls.
pub(crate) const CANCEL_METHOD: &str = "$/cancel";
/// The notification the gateway sends first on every connection, naming its session.
pub(crate) const SESSION_METHOD: &str = "$/session";

/// The notification the gateway sends for each progress report.
pub(crate) const PROGRESS_METHOD: &str = "$/progress";

/// The `$/progress` notification for one progress report of call `id`.
pub(crate) fn progress_notification(id: &RawValue, value: &RawValue) -> String {
    #[derive(Serialize)]
    struct Params<'a> {
        id: &'a RawValue,
        value: &'a RawValue,
    }
    #[derive(Serialize)]
    struct Notification<'a> {
        jsonrpc: &'static str,
        method: &'static str,
        params: Params<'a>,
    }
    serde_json::to_string(&Notification {
        jsonrpc: "2.0",
        method: PROGRESS_METHOD,
        params: Params { id, value },
    })
    .unwrap_or_default()
}

/// The `$/session` notification: the token to resume with, and for how long.
pub(crate) fn session_notification(token: &str, resume_within_s: u64) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "method": SESSION_METHOD,
        "params": {"session": token, "resume_within_s": resume_within_s},
    })
    .to_string()
}

/// Methods clients may not call: `rpc.` is reserved by the spec, `$/` for wsmq's own.
pub(crate) fn is_reserved_method(method: &str) -> bool {
    method.starts_with("rpc.") || method.starts_with("$/")
}

#[derive(Serialize)]
struct Response<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorObject<'a>>,
    id: &'a RawValue,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: i64,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

fn null() -> &'static RawValue {
    // A valid literal: this cannot fail.
    #[allow(clippy::unwrap_used)]
    serde_json::from_str("null").unwrap()
}

fn to_text(response: &Response<'_>) -> String {
    // Serialising borrowed, already-valid JSON cannot fail; keep a valid fallback regardless.
    serde_json::to_string(response).unwrap_or_else(|_| {
        format!(
            r#"{{"jsonrpc":"2.0","error":{{"code":{},"message":"Internal error"}},"id":null}}"#,
            wsmq_codes::INTERNAL_ERROR
        )
    })
}

/// A success response carrying `result` (valid JSON text).
pub(crate) fn result_response(id: &RawValue, result: &RawValue) -> String {
    to_text(&Response {
        jsonrpc: "2.0",
        result: Some(result),
        error: None,
        id,
    })
}

/// An error response; `data` is a plain string, sent as a JSON string.
pub(crate) fn error_response(
    id: Option<&RawValue>,
    code: i64,
    message: &str,
    data: Option<&str>,
) -> String {
    let data = data.and_then(|d| serde_json::value::to_raw_value(d).ok());
    error_response_raw(id, code, message, data.as_deref())
}

/// An error response whose `data` is already JSON.
pub(crate) fn error_response_raw(
    id: Option<&RawValue>,
    code: i64,
    message: &str,
    data: Option<&RawValue>,
) -> String {
    to_text(&Response {
        jsonrpc: "2.0",
        result: None,
        error: Some(ErrorObject {
            code,
            message,
            data,
        }),
        id: match id {
            Some(id) => id,
            None => null(),
        },
    })
}

/// Joins the responses of a batch into one array.
pub(crate) fn batch_response(parts: &[String]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 2);
    out.push('[');
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(part);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn value(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn progress_notification_carries_the_call_id_and_value() {
        let id = serde_json::value::to_raw_value(&"c7").expect("raw");
        let value = serde_json::value::to_raw_value(&json!({"step": 1})).expect("raw");
        assert_eq!(
            value_of(&progress_notification(&id, &value)),
            json!({"jsonrpc":"2.0","method":"$/progress","params":{"id":"c7","value":{"step":1}}})
        );
    }

    fn value_of(text: &str) -> Value {
        value(text)
    }

    #[test]
    fn reserved_method_names_are_recognised() {
        assert!(is_reserved_method("rpc.discover"));
        assert!(is_reserved_method("$/cancel"));
        assert!(!is_reserved_method("rpcx"));
    }

    #[test]
    fn responses_are_well_formed() {
        let id = serde_json::value::to_raw_value(&7).expect("raw");
        let result = serde_json::value::to_raw_value(&json!({"x": [1]})).expect("raw");
        assert_eq!(
            value(&result_response(&id, &result)),
            json!({"jsonrpc":"2.0","id":7,"result":{"x":[1]}})
        );
        let data = serde_json::value::to_raw_value(&json!({"d": 1})).expect("raw");
        assert_eq!(
            value(&error_response_raw(Some(&id), 4000, "boom", Some(&data))),
            json!({"jsonrpc":"2.0","id":7,"error":{"code":4000,"message":"boom","data":{"d":1}}})
        );
        assert_eq!(
            value(&error_response(None, -32000, "m", None)),
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"m"}})
        );
    }

    #[test]
    fn batch_response_is_a_json_array_of_its_parts() {
        let parts = vec![r#"{"a":1}"#.to_string(), r#"{"b":2}"#.to_string()];
        assert_eq!(value(&batch_response(&parts)), json!([{"a":1},{"b":2}]));
    }
}
