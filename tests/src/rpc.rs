//! JSON-RPC 2.0 message builders and response accessors for the tests.

use serde_json::{Value, json};

/// Parse error: the frame is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Invalid request: JSON, but not a JSON-RPC 2.0 request.
pub const INVALID_REQUEST: i64 = -32600;
/// Method not found: no queue serves the method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Internal error: e.g. a worker reply that is not valid JSON.
pub const INTERNAL_ERROR: i64 = -32603;
/// The bridge or the broker is down; retryable.
pub const BROKER_UNAVAILABLE: i64 = -32000;

/// A request `{"jsonrpc":"2.0","id":id,"method":method,"params":params}`.
pub fn request(id: impl Into<Value>, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id.into(), "method": method, "params": params})
}

/// A notification (a request without `id`).
pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

/// `error.code` of a response, if it is an error response.
pub fn error_code(response: &Value) -> Option<i64> {
    response.get("error")?.get("code")?.as_i64()
}

/// `error.message` of a response, if it is an error response.
pub fn error_message(response: &Value) -> Option<&str> {
    response.get("error")?.get("message")?.as_str()
}

/// `result` of a response, if it is a success response.
pub fn result(response: &Value) -> Option<&Value> {
    response.get("result")
}

/// Checks the members every response must have, whatever it says: `"jsonrpc":"2.0"`, an `id`,
/// and exactly one of `result` and `error`. Returns a description of what is wrong.
pub fn check_envelope(response: &Value) -> Result<(), String> {
    let Some(obj) = response.as_object() else {
        return Err(format!("response is not an object: {response}"));
    };
    if obj.get("jsonrpc") != Some(&json!("2.0")) {
        return Err(format!("response lacks \"jsonrpc\":\"2.0\": {response}"));
    }
    if !obj.contains_key("id") {
        return Err(format!("response has no id: {response}"));
    }
    match (obj.get("result"), obj.get("error")) {
        (Some(_), None) => Ok(()),
        (None, Some(err)) if err.get("code").is_some_and(Value::is_i64) => {
            if err.get("message").is_some_and(Value::is_string) {
                Ok(())
            } else {
                Err(format!("error without a string message: {response}"))
            }
        }
        _ => Err(format!(
            "response must have exactly one of result and a well-formed error: {response}"
        )),
    }
}
