//! Error types: the JSON-RPC error a handler replies with, and the SDK's own failures.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A JSON-RPC error object, as a handler returns it and as it travels in an error reply.
///
/// Serialises to `{"code": <int>, "message": <string>, "data"?: <any>}`; `data` is left out when
/// it is `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    /// The error code. `-32768..=-32000` is reserved by JSON-RPC; applications use the rest.
    pub code: i64,
    /// A short description of the error.
    pub message: String,
    /// Anything else the caller may want to know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// JSON-RPC "Parse error": the params sent with the job are not valid JSON.
    pub const PARSE_ERROR: i64 = wsmq_codes::PARSE_ERROR;
    /// JSON-RPC "Method not found".
    pub const METHOD_NOT_FOUND: i64 = wsmq_codes::METHOD_NOT_FOUND;
    /// JSON-RPC "Invalid params".
    pub const INVALID_PARAMS: i64 = wsmq_codes::INVALID_PARAMS;
    /// JSON-RPC "Internal error": the worker failed, not the request.
    pub const INTERNAL_ERROR: i64 = wsmq_codes::INTERNAL_ERROR;
    /// wsmq's "cancelled": what a handler may return when it stops because its call was
    /// cancelled. The worker never sends it (nobody waits for a cancelled call's reply); the
    /// caller was told by the gateway.
    pub const CANCELLED: i64 = wsmq_codes::CANCELLED;

    /// An error with this code and message and no data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The same error, carrying `data`.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// `-32700 params are not valid JSON`, with the decoder's complaint as `data`.
    pub fn parse_error(detail: impl std::fmt::Display) -> Self {
        Self::new(Self::PARSE_ERROR, "params are not valid JSON")
            .with_data(Value::String(detail.to_string()))
    }

    /// `-32602 invalid params: <reason>`.
    pub fn invalid_params(reason: impl std::fmt::Display) -> Self {
        Self::new(Self::INVALID_PARAMS, format!("invalid params: {reason}"))
    }

    /// `-32601 method not found: <method>`.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            Self::METHOD_NOT_FOUND,
            format!("method not found: {method}"),
        )
    }

    /// `-32002 cancelled`, for a handler that stops because [`Request::is_cancelled`](crate::Request::is_cancelled).
    pub fn cancelled() -> Self {
        Self::new(Self::CANCELLED, "cancelled")
    }

    /// `-32603 internal error: <reason>`.
    pub fn internal(reason: impl std::fmt::Display) -> Self {
        Self::new(Self::INTERNAL_ERROR, format!("internal error: {reason}"))
    }
}

/// Why [`WorkerBuilder::build`](crate::WorkerBuilder::build) refused a configuration.
///
/// Every one of these is a mistake in the program or its flags, found before any socket is
/// opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The AMQP URI does not parse.
    // The parser's message is kept, never the URI itself: it may hold a password.
    #[error("invalid AMQP URI: {reason}")]
    InvalidUri {
        /// What the URI parser objected to.
        reason: String,
    },
    /// No method was registered, so the worker would serve nothing.
    #[error("no method registered")]
    NoMethods,
    /// A concurrency of 0 would mean an unlimited prefetch to AMQP.
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    /// A method's own concurrency was set to 0.
    #[error("concurrency of method {method:?} must be at least 1")]
    ZeroMethodConcurrency {
        /// The method's name.
        method: String,
    },
    /// A concurrency was set for a method that is not registered.
    #[error("concurrency set for method {method:?}, which is not registered")]
    UnknownMethodConcurrency {
        /// The unregistered method's name.
        method: String,
    },
    /// A method was registered with an empty name.
    #[error("method names must not be empty")]
    EmptyMethodName,
    /// The same method was registered twice.
    #[error("method {method:?} registered twice")]
    DuplicateMethod {
        /// The method's name.
        method: String,
    },
    /// `prefix + method` is longer than the 255 bytes AMQP allows for a queue name.
    #[error("queue name for method {method:?} is {len} bytes; AMQP allows at most 255")]
    QueueNameTooLong {
        /// The method whose queue name is too long.
        method: String,
        /// The queue name's length in bytes.
        len: usize,
    },
    /// The queue prefix is so long that the cancellation exchange's name,
    /// `<prefix>wsmq.cancel`, exceeds the 255 bytes AMQP allows.
    #[error(
        "queue prefix is {len} bytes; at most 244 leave room for the exchange <prefix>wsmq.cancel"
    )]
    QueuePrefixTooLong {
        /// The prefix's length in bytes.
        len: usize,
    },
    /// Queue names starting with `amq.` are reserved by the broker, which refuses to declare them.
    #[error("queue name {queue:?} starts with the reserved prefix \"amq.\"")]
    ReservedQueueName {
        /// The refused queue name.
        queue: String,
    },
}

/// Why [`Worker::run`](crate::Worker::run) gave up.
///
/// Lost connections, refused logins and failed declarations are *not* here: the worker logs
/// them and reconnects. Only errors that no reconnection can cure end the run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The AMQP client failed in a way a new connection cannot fix (the broker speaks another
    /// protocol version, or the async runtime is shutting down).
    #[error("unrecoverable AMQP client error")]
    Unrecoverable(#[source] lapin::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_error_serialises_without_absent_data() {
        let error = RpcError::invalid_params("text must be a string");
        assert_eq!(
            serde_json::to_string(&error).ok().as_deref(),
            Some(r#"{"code":-32602,"message":"invalid params: text must be a string"}"#)
        );
    }
}
