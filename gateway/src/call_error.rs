//! Every error the gateway itself answers a client with: one value per refusal, built where
//! the refusal is decided, carrying its code, message, data and the metric it counts under.
//!
//! A worker's own errors pass through unchanged and are not here. What is here is the whole
//! list of refusals the gateway makes; the response text and the `outcome` label both come
//! from the variant, so they cannot disagree.

use std::borrow::Cow;
use std::time::Duration;

use serde_json::value::RawValue;

use wsmq_codes as codes;

use crate::jsonrpc;
use crate::metrics::Outcome;

/// An error the gateway answers a request or call with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    // Refused by the connection before the request is a call (not counted as one).
    /// The frame is not JSON; carries the parser's description.
    Parse(String),
    /// A binary websocket frame.
    BinaryFrame,
    /// Not a valid JSON-RPC 2.0 request (or a bad `wsmq` option); says what is wrong.
    InvalidRequest(Cow<'static, str>),
    /// The frame nests deeper than `max` (it reached `depth`).
    NestingTooDeep { depth: usize, max: usize },
    /// A batch of `len` members, over `max`.
    BatchTooLong { len: usize, max: usize },
    /// `params` of `len` bytes, over `max`.
    ParamsTooLarge { len: usize, max: usize },
    /// The connection calls faster than its rate limit; a token comes back in `retry_in`.
    RateLimited { retry_in: Duration },
    /// `rpc.*` or `$/*`, which no worker may serve.
    ReservedMethod,
    /// The caller's allowlist excludes `method`: answered exactly like [`Self::NoWorker`], so
    /// that whether the method exists is not the caller's business.
    NotAllowed { method: String },
    /// `method` would name one of wsmq's or RabbitMQ's own queues
    /// ([`wsmq_ipc_proto::is_reserved_method`]): answered exactly like [`Self::NoWorker`],
    /// before anything is published.
    InternalName { method: String },

    // A call ended by the gateway (counted in `wsmq_calls_total`).
    /// RabbitMQ blocks publishers (a resource alarm): new calls are shed, not held.
    BrokerBlocked,
    /// The connection has `max` calls in flight already.
    TooManyOnConnection { max: usize },
    /// The gateway has `--max-in-flight` calls in flight already.
    GatewayAtCapacity,
    /// The bridge or RabbitMQ is away (`outage` says which) and `waiting` calls are held
    /// already, the most there may be.
    TooManyHeld {
        outage: &'static str,
        waiting: usize,
    },
    /// The caller (identity, or address without authentication) has `max` calls held for fair
    /// share already (`--max-held-per-caller`).
    TooManyHeldForCaller { max: usize },
    /// The bridge has no room for the job right now.
    BridgeBackedUp,
    /// The call was held through an outage (`outage` says which) until its deadline.
    HeldPastDeadline { outage: &'static str },
    /// The client cancelled the call with `$/cancel`.
    Cancelled,
    /// No result for `method` before the call's deadline.
    Timeout { method: String },
    /// RabbitMQ routed the job to no queue: no worker serves `method`.
    NoWorker { method: String },
    /// The bridge refused the method name (too long for a routing key).
    MethodNameTooLong,
    /// The call's deadline passed before RabbitMQ took the job.
    ExpiredBeforePublish,
    /// The worker for `method` replied something unreadable (`reason` says what).
    InvalidReply { method: String, reason: String },
}

impl CallError {
    /// The JSON-RPC error code.
    pub(crate) fn code(&self) -> i64 {
        match self {
            CallError::Parse(_) | CallError::BinaryFrame => codes::PARSE_ERROR,
            CallError::InvalidRequest(_) => codes::INVALID_REQUEST,
            CallError::NestingTooDeep { .. } => codes::JSON_TOO_DEEP,
            CallError::BatchTooLong { .. } => codes::BATCH_TOO_LONG,
            CallError::ParamsTooLarge { .. } => codes::PARAMS_TOO_LARGE,
            CallError::RateLimited { .. } => codes::RATE_LIMITED,
            CallError::ReservedMethod
            | CallError::NotAllowed { .. }
            | CallError::InternalName { .. }
            | CallError::NoWorker { .. }
            | CallError::MethodNameTooLong => codes::METHOD_NOT_FOUND,
            CallError::BrokerBlocked
            | CallError::TooManyHeld { .. }
            | CallError::BridgeBackedUp
            | CallError::HeldPastDeadline { .. } => codes::BROKER_UNAVAILABLE,
            CallError::TooManyOnConnection { .. }
            | CallError::GatewayAtCapacity
            | CallError::TooManyHeldForCaller { .. } => codes::TOO_MANY_IN_FLIGHT,
            CallError::Cancelled => codes::CANCELLED,
            CallError::Timeout { .. } | CallError::ExpiredBeforePublish => codes::TIMEOUT,
            CallError::InvalidReply { .. } => codes::INTERNAL_ERROR,
        }
    }

    /// The error's `message`: the same for every error with one code, except an invalid
    /// reply, which names the method.
    pub(crate) fn message(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            CallError::Parse(_) | CallError::BinaryFrame => "Parse error",
            CallError::InvalidRequest(_) => "Invalid Request",
            CallError::NestingTooDeep { .. } => "JSON nested too deep",
            CallError::BatchTooLong { .. } => "batch too long",
            CallError::ParamsTooLarge { .. } => "params too large",
            CallError::RateLimited { .. } => "rate limited",
            CallError::ReservedMethod
            | CallError::NotAllowed { .. }
            | CallError::InternalName { .. }
            | CallError::NoWorker { .. }
            | CallError::MethodNameTooLong => "Method not found",
            CallError::BrokerBlocked
            | CallError::TooManyHeld { .. }
            | CallError::BridgeBackedUp
            | CallError::HeldPastDeadline { .. } => "broker unavailable",
            CallError::TooManyOnConnection { .. }
            | CallError::GatewayAtCapacity
            | CallError::TooManyHeldForCaller { .. } => "too many calls in flight",
            CallError::Cancelled => "cancelled",
            CallError::Timeout { .. } | CallError::ExpiredBeforePublish => "timeout",
            CallError::InvalidReply { method, .. } => {
                return Cow::Owned(format!(
                    "Internal error: the worker for method {method:?} sent an invalid reply"
                ));
            }
        })
    }

    /// The error's `data`: a sentence for people, saying what happened.
    pub(crate) fn data(&self) -> Cow<'_, str> {
        let text = match self {
            CallError::Parse(why) | CallError::InvalidReply { reason: why, .. } => {
                return Cow::Borrowed(why);
            }
            CallError::InvalidRequest(why) => return Cow::Borrowed(why),
            CallError::BinaryFrame => "binary frames are not supported; send JSON-RPC as text",
            CallError::NestingTooDeep { depth, max } => {
                return format!("nesting deeper than {depth} levels; at most {max}").into();
            }
            CallError::BatchTooLong { len, max } => {
                return format!("batch of {len} calls; at most {max}").into();
            }
            CallError::ParamsTooLarge { len, max } => {
                return format!("params of {len} bytes; at most {max}").into();
            }
            CallError::RateLimited { retry_in } => {
                return format!(
                    "too many calls per second on this connection; retry in {} ms",
                    retry_in.as_millis().max(1)
                )
                .into();
            }
            CallError::ReservedMethod => "reserved method name",
            CallError::NotAllowed { method }
            | CallError::InternalName { method }
            | CallError::NoWorker { method } => {
                return format!("no worker serves {method:?}").into();
            }
            CallError::BrokerBlocked => "RabbitMQ is blocking publishers (resource alarm)",
            CallError::TooManyOnConnection { max } => {
                return format!("at most {max} calls in flight per connection").into();
            }
            CallError::GatewayAtCapacity => "the gateway is at capacity",
            CallError::TooManyHeldForCaller { max } => {
                return format!("at most {max} calls per caller wait for their fair share").into();
            }
            CallError::TooManyHeld { outage, waiting } => {
                return format!("{outage}; {waiting} calls are already waiting for it").into();
            }
            CallError::BridgeBackedUp => "the bridge is backed up",
            CallError::HeldPastDeadline { outage } => {
                return format!("{outage} until the call's deadline").into();
            }
            CallError::Cancelled => "cancelled by the client",
            CallError::Timeout { method } => {
                return format!("no result for {method:?} before the call's deadline").into();
            }
            CallError::MethodNameTooLong => "method name too long",
            CallError::ExpiredBeforePublish => {
                "the deadline passed before the job could be published"
            }
        };
        Cow::Borrowed(text)
    }

    /// The `outcome` label the call ends with in `wsmq_calls_total`; `None` for a request the
    /// connection refuses before it is a call (those are not counted there; a rate-limited
    /// one counts in `wsmq_calls_rate_limited_total`).
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        match self {
            CallError::Parse(_)
            | CallError::BinaryFrame
            | CallError::InvalidRequest(_)
            | CallError::NestingTooDeep { .. }
            | CallError::BatchTooLong { .. }
            | CallError::ParamsTooLarge { .. }
            | CallError::RateLimited { .. }
            | CallError::ReservedMethod
            | CallError::NotAllowed { .. }
            | CallError::InternalName { .. } => None,
            CallError::BrokerBlocked
            | CallError::TooManyHeld { .. }
            | CallError::BridgeBackedUp
            | CallError::HeldPastDeadline { .. } => Some(Outcome::BrokerUnavailable),
            CallError::TooManyOnConnection { .. }
            | CallError::GatewayAtCapacity
            | CallError::TooManyHeldForCaller { .. } => Some(Outcome::TooManyInFlight),
            CallError::Cancelled => Some(Outcome::Cancelled),
            CallError::Timeout { .. } | CallError::ExpiredBeforePublish => Some(Outcome::Timeout),
            CallError::NoWorker { .. } | CallError::MethodNameTooLong => {
                Some(Outcome::MethodNotFound)
            }
            CallError::InvalidReply { .. } => Some(Outcome::InvalidReply),
        }
    }

    /// The JSON-RPC error response to request `id` (`None`: the id is unknown, sent as null).
    pub(crate) fn response(&self, id: Option<&RawValue>) -> String {
        jsonrpc::error_response(id, self.code(), &self.message(), Some(&self.data()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("valid JSON")
    }

    /// (error, code, message, data, outcome) for every variant.
    fn every_variant() -> Vec<(CallError, i64, &'static str, &'static str, Option<Outcome>)> {
        use CallError as E;
        let method = || "sum".to_owned();
        vec![
            (
                E::Parse("EOF while parsing".into()),
                -32700,
                "Parse error",
                "EOF while parsing",
                None,
            ),
            (
                E::BinaryFrame,
                -32700,
                "Parse error",
                "binary frames are not supported; send JSON-RPC as text",
                None,
            ),
            (
                E::InvalidRequest("empty batch".into()),
                -32600,
                "Invalid Request",
                "empty batch",
                None,
            ),
            (
                E::NestingTooDeep { depth: 33, max: 32 },
                -32010,
                "JSON nested too deep",
                "nesting deeper than 33 levels; at most 32",
                None,
            ),
            (
                E::BatchTooLong {
                    len: 1001,
                    max: 1000,
                },
                -32011,
                "batch too long",
                "batch of 1001 calls; at most 1000",
                None,
            ),
            (
                E::ParamsTooLarge { len: 11, max: 10 },
                -32012,
                "params too large",
                "params of 11 bytes; at most 10",
                None,
            ),
            (
                E::RateLimited {
                    retry_in: Duration::from_micros(10),
                },
                -32005,
                "rate limited",
                "too many calls per second on this connection; retry in 1 ms",
                None,
            ),
            (
                E::ReservedMethod,
                -32601,
                "Method not found",
                "reserved method name",
                None,
            ),
            (
                E::NotAllowed { method: method() },
                -32601,
                "Method not found",
                "no worker serves \"sum\"",
                None,
            ),
            (
                E::InternalName {
                    method: "wsmq.dead".into(),
                },
                -32601,
                "Method not found",
                "no worker serves \"wsmq.dead\"",
                None,
            ),
            (
                E::BrokerBlocked,
                -32000,
                "broker unavailable",
                "RabbitMQ is blocking publishers (resource alarm)",
                Some(Outcome::BrokerUnavailable),
            ),
            (
                E::TooManyOnConnection { max: 8 },
                -32003,
                "too many calls in flight",
                "at most 8 calls in flight per connection",
                Some(Outcome::TooManyInFlight),
            ),
            (
                E::GatewayAtCapacity,
                -32003,
                "too many calls in flight",
                "the gateway is at capacity",
                Some(Outcome::TooManyInFlight),
            ),
            (
                E::TooManyHeldForCaller { max: 1024 },
                -32003,
                "too many calls in flight",
                "at most 1024 calls per caller wait for their fair share",
                Some(Outcome::TooManyInFlight),
            ),
            (
                E::TooManyHeld {
                    outage: "the bridge is not connected",
                    waiting: 2,
                },
                -32000,
                "broker unavailable",
                "the bridge is not connected; 2 calls are already waiting for it",
                Some(Outcome::BrokerUnavailable),
            ),
            (
                E::BridgeBackedUp,
                -32000,
                "broker unavailable",
                "the bridge is backed up",
                Some(Outcome::BrokerUnavailable),
            ),
            (
                E::HeldPastDeadline {
                    outage: "RabbitMQ is not connected",
                },
                -32000,
                "broker unavailable",
                "RabbitMQ is not connected until the call's deadline",
                Some(Outcome::BrokerUnavailable),
            ),
            (
                E::Cancelled,
                -32002,
                "cancelled",
                "cancelled by the client",
                Some(Outcome::Cancelled),
            ),
            (
                E::Timeout { method: method() },
                -32001,
                "timeout",
                "no result for \"sum\" before the call's deadline",
                Some(Outcome::Timeout),
            ),
            (
                E::NoWorker { method: method() },
                -32601,
                "Method not found",
                "no worker serves \"sum\"",
                Some(Outcome::MethodNotFound),
            ),
            (
                E::MethodNameTooLong,
                -32601,
                "Method not found",
                "method name too long",
                Some(Outcome::MethodNotFound),
            ),
            (
                E::ExpiredBeforePublish,
                -32001,
                "timeout",
                "the deadline passed before the job could be published",
                Some(Outcome::Timeout),
            ),
            (
                E::InvalidReply {
                    method: method(),
                    reason: "reply body is not valid JSON".into(),
                },
                -32603,
                "Internal error: the worker for method \"sum\" sent an invalid reply",
                "reply body is not valid JSON",
                Some(Outcome::InvalidReply),
            ),
        ]
    }

    #[test]
    fn every_error_has_its_code_message_data_and_outcome() {
        for (error, code, message, data, outcome) in every_variant() {
            assert_eq!(error.code(), code, "{error:?}");
            assert_eq!(error.message(), message, "{error:?}");
            assert_eq!(error.data(), data, "{error:?}");
            assert_eq!(error.outcome(), outcome, "{error:?}");
        }
    }

    #[test]
    fn an_outcome_agrees_with_its_code() {
        for (error, ..) in every_variant() {
            let expected = match error.code() {
                codes::BROKER_UNAVAILABLE => Outcome::BrokerUnavailable,
                codes::TOO_MANY_IN_FLIGHT => Outcome::TooManyInFlight,
                codes::CANCELLED => Outcome::Cancelled,
                codes::TIMEOUT => Outcome::Timeout,
                codes::METHOD_NOT_FOUND => Outcome::MethodNotFound,
                codes::INTERNAL_ERROR => Outcome::InvalidReply,
                _ => continue,
            };
            if let Some(outcome) = error.outcome() {
                assert_eq!(outcome, expected, "{error:?}");
            }
        }
    }

    #[test]
    fn a_method_outside_the_allowlist_is_answered_like_one_no_worker_serves() {
        let id = raw("1");
        let not_allowed = CallError::NotAllowed {
            method: "admin".into(),
        };
        let no_worker = CallError::NoWorker {
            method: "admin".into(),
        };
        assert_eq!(
            not_allowed.response(Some(&id)),
            no_worker.response(Some(&id))
        );
    }

    #[test]
    fn the_response_is_the_json_rpc_error_object_byte_for_byte() {
        let id = raw(r#""c1""#);
        assert_eq!(
            CallError::Cancelled.response(Some(&id)),
            r#"{"jsonrpc":"2.0","error":{"code":-32002,"message":"cancelled","data":"cancelled by the client"},"id":"c1"}"#
        );
        assert_eq!(
            CallError::Parse("expected value at line 1 column 1".into()).response(None),
            r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error","data":"expected value at line 1 column 1"},"id":null}"#
        );
    }
}
