//! JSON-RPC 2.0 as clients speak it: the method names wsmq reserves, and the responses and
//! notifications the gateway writes. Reading what clients send is [`parse`]'s; the errors the
//! gateway answers with are [`CallError`](crate::call_error::CallError)s.
//!
//! Responses carry ids (and workers' results) as raw JSON text, byte for byte as they came.

mod parse;

use serde_json::value::RawValue;

pub(crate) use parse::{
    Call, Entry, FrameRejected, Incoming, ParseLimits, cancel_target, parse, parse_shared,
};

/// Highest AMQP priority a call may ask for.
pub(crate) const MAX_PRIORITY: u8 = 9;

/// The notification a client sends to cancel one of its calls.
pub(crate) const CANCEL_METHOD: &str = "$/cancel";
/// The notification the gateway sends first on every connection, naming its session.
pub(crate) const SESSION_METHOD: &str = "$/session";

/// The notification the gateway sends for each progress report.
pub(crate) const PROGRESS_METHOD: &str = "$/progress";

/// The `$/progress` notification for one progress report of call `id`; `value` is a worker's
/// JSON text, spliced in verbatim (see [`result_response`]).
pub(crate) fn progress_notification(id: &RawValue, value: &str) -> String {
    let mut out = String::with_capacity(64 + id.get().len() + value.len());
    out.push_str(r#"{"jsonrpc":"2.0","method":""#);
    out.push_str(PROGRESS_METHOD);
    out.push_str(r#"","params":{"id":"#);
    out.push_str(id.get());
    out.push_str(r#","value":"#);
    out.push_str(value);
    out.push_str("}}");
    out
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

/// A success response carrying `result`, a worker's JSON text spliced in verbatim.
///
/// The bridge checked that it is JSON when the reply came; parsing it again here would cost as
/// much as everything else the gateway does for a large result, and writing the response by
/// hand keeps the worker's bytes exactly as sent (number formats, key order, whitespace inside).
pub(crate) fn result_response(id: &RawValue, result: &str) -> String {
    let mut out = String::with_capacity(32 + result.len() + id.get().len());
    out.push_str(r#"{"jsonrpc":"2.0","result":"#);
    out.push_str(result);
    out.push_str(r#","id":"#);
    out.push_str(id.get());
    out.push('}');
    out
}

/// An error response; `data` is a plain string, sent as a JSON string.
pub(crate) fn error_response(
    id: Option<&RawValue>,
    code: i64,
    message: &str,
    data: Option<&str>,
) -> String {
    let data = data.map(json_string);
    error_response_raw(id, code, message, data.as_deref())
}

/// An error response whose `data` is already JSON text (a worker's, spliced in verbatim).
pub(crate) fn error_response_raw(
    id: Option<&RawValue>,
    code: i64,
    message: &str,
    data: Option<&str>,
) -> String {
    use std::fmt::Write as _;
    let message = json_string(message);
    let id = id.map_or("null", RawValue::get);
    let mut out = String::with_capacity(64 + message.len() + data.map_or(0, str::len) + id.len());
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        r#"{{"jsonrpc":"2.0","error":{{"code":{code},"message":{message}"#
    );
    if let Some(data) = data {
        out.push_str(r#","data":"#);
        out.push_str(data);
    }
    out.push_str(r#"},"id":"#);
    out.push_str(id);
    out.push('}');
    out
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    // Serialising a str cannot fail; keep a valid fallback regardless.
    serde_json::to_string(text).unwrap_or_else(|_| r#""""#.to_owned())
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
        assert_eq!(
            value_of(&progress_notification(&id, r#"{"step": 1}"#)),
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
        assert_eq!(
            value(&result_response(&id, r#"{"x": [1]}"#)),
            json!({"jsonrpc":"2.0","id":7,"result":{"x":[1]}})
        );
        assert_eq!(
            value(&error_response_raw(
                Some(&id),
                4000,
                "boom",
                Some(r#"{"d": 1}"#)
            )),
            json!({"jsonrpc":"2.0","id":7,"error":{"code":4000,"message":"boom","data":{"d":1}}})
        );
        assert_eq!(
            value(&error_response(None, -32000, "m", None)),
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"m"}})
        );
    }

    #[test]
    fn results_and_error_data_are_spliced_byte_for_byte() {
        let id = serde_json::value::to_raw_value(&"a\"b").expect("raw");
        assert_eq!(
            result_response(&id, r#"{"b": 1.50, "a": [1e3, "\u00e9"]}"#),
            r#"{"jsonrpc":"2.0","result":{"b": 1.50, "a": [1e3, "\u00e9"]},"id":"a\"b"}"#
        );
        assert_eq!(
            error_response_raw(Some(&id), -1, "say \"no\"", Some("[2.0]")),
            r#"{"jsonrpc":"2.0","error":{"code":-1,"message":"say \"no\"","data":[2.0]},"id":"a\"b"}"#
        );
        assert_eq!(
            error_response(None, -32000, "m", Some("why")),
            r#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"m","data":"why"},"id":null}"#
        );
        assert_eq!(
            progress_notification(&id, "{ }"),
            r#"{"jsonrpc":"2.0","method":"$/progress","params":{"id":"a\"b","value":{ }}}"#
        );
    }

    #[test]
    fn batch_response_is_a_json_array_of_its_parts() {
        let parts = vec![r#"{"a":1}"#.to_string(), r#"{"b":2}"#.to_string()];
        assert_eq!(value(&batch_response(&parts)), json!([{"a":1},{"b":2}]));
    }
}
