//! JSON-RPC 2.0 message builders and response accessors for the tests.

use serde_json::{Value, json};

// The codes are wsmq-codes'; `NESTING_TOO_DEEP` is the tests' name for `JSON_TOO_DEEP`.
pub use wsmq_codes::{
    BATCH_TOO_LONG, BROKER_UNAVAILABLE, CANCELLED, INTERNAL_ERROR, INVALID_REQUEST, JOB_FAILED,
    JSON_TOO_DEEP as NESTING_TOO_DEEP, METHOD_NOT_FOUND, PARAMS_TOO_LARGE, PARSE_ERROR,
    RATE_LIMITED, TIMEOUT, TOO_MANY_IN_FLIGHT,
};

/// The notification a client sends to cancel one of its calls.
pub const CANCEL_METHOD: &str = "$/cancel";
/// The notification the gateway sends for each progress report of a call.
pub const PROGRESS_METHOD: &str = "$/progress";

/// A request `{"jsonrpc":"2.0","id":id,"method":method,"params":params}`.
pub fn request(id: impl Into<Value>, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id.into(), "method": method, "params": params})
}

/// A request carrying call options in its `wsmq` member (`timeout_ms`, `priority`).
pub fn request_with_options(
    id: impl Into<Value>,
    method: &str,
    params: Value,
    options: Value,
) -> Value {
    let mut request = request(id, method, params);
    request["wsmq"] = options;
    request
}

/// The `$/cancel` notification for the call with id `id`.
pub fn cancel(id: impl Into<Value>) -> Value {
    notification(CANCEL_METHOD, json!({"id": id.into()}))
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

/// `(params.id, params.value)` of a `$/progress` notification; `None` for any other frame.
pub fn progress(frame: &Value) -> Option<(&Value, &Value)> {
    if frame.get("method")? != PROGRESS_METHOD || frame.get("id").is_some() {
        return None;
    }
    let params = frame.get("params")?;
    Some((params.get("id")?, params.get("value")?))
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
