//! Every JSON-RPC error code wsmq answers with: the one owner of these numbers.
//!
//! The gateway (its refusals), the bridge (the dead-letter relay's [`JOB_FAILED`]), the worker
//! SDK (the codes a worker replies with) and the `wsmq` CLI (its exit statuses) all take their
//! codes from here, so a number cannot drift between them. It is a crate of its own, without
//! dependencies, rather than a module of `wsmq-ipc-proto` or `wsmq-amqp-proto`: the CLI speaks
//! neither protocol, and the worker SDK and the gateway should not link the other's wire crate
//! (postcard, lapin) to learn a number.
//!
//! The JavaScript client `clients/js/wsmq.js` exports the same set as `codes`, under the same
//! names; a test in this crate reads that file, and the table of `docs/protocol.md` ("Error
//! codes", which says when each is sent), and fails when any of the three lists differ.
//!
//! Codes from -32768 to -32000 are reserved by JSON-RPC 2.0: -32700 and -326xx are the spec's,
//! -32000 to -32099 are "server errors" the implementation defines, and wsmq's are below.
//! A worker may reply with any code; the gateway passes it through unchanged.

#![forbid(unsafe_code)]

/// JSON-RPC "Parse error": the frame is not JSON (or, from a worker, the job's params are not).
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC "Invalid Request": not a JSON-RPC 2.0 request object, or a bad `wsmq` option.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC "Method not found": no worker serves the method, or the caller may not call it.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC "Invalid params": sent by workers whose handler refuses the params.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC "Internal error": a worker failed, or replied something unreadable.
pub const INTERNAL_ERROR: i64 = -32603;
/// The bridge or RabbitMQ is unavailable, or backed up. Retryable.
pub const BROKER_UNAVAILABLE: i64 = -32000;
/// The call's deadline passed before its result came.
pub const TIMEOUT: i64 = -32001;
/// The client cancelled the call with `$/cancel`.
pub const CANCELLED: i64 = -32002;
/// The connection or the whole gateway has too many calls in flight. Retryable.
pub const TOO_MANY_IN_FLIGHT: i64 = -32003;
/// The job was dead-lettered (its quorum queue's delivery limit was spent); the bridge's
/// dead-letter relay answers it.
pub const JOB_FAILED: i64 = -32004;
/// The connection calls faster than its rate limit allows. Retryable after `data`'s wait.
pub const RATE_LIMITED: i64 = -32005;
/// The frame nests arrays and objects deeper than the gateway allows.
pub const JSON_TOO_DEEP: i64 = -32010;
/// A batch has more members than the gateway allows.
pub const BATCH_TOO_LONG: i64 = -32011;
/// A call's `params` is larger than the gateway allows.
pub const PARAMS_TOO_LARGE: i64 = -32012;

/// Every code above with its name, in the order the docs list them.
pub const ALL: [(&str, i64); 14] = [
    ("PARSE_ERROR", PARSE_ERROR),
    ("INVALID_REQUEST", INVALID_REQUEST),
    ("METHOD_NOT_FOUND", METHOD_NOT_FOUND),
    ("INVALID_PARAMS", INVALID_PARAMS),
    ("INTERNAL_ERROR", INTERNAL_ERROR),
    ("BROKER_UNAVAILABLE", BROKER_UNAVAILABLE),
    ("TIMEOUT", TIMEOUT),
    ("CANCELLED", CANCELLED),
    ("TOO_MANY_IN_FLIGHT", TOO_MANY_IN_FLIGHT),
    ("JOB_FAILED", JOB_FAILED),
    ("RATE_LIMITED", RATE_LIMITED),
    ("JSON_TOO_DEEP", JSON_TOO_DEEP),
    ("BATCH_TOO_LONG", BATCH_TOO_LONG),
    ("PARAMS_TOO_LARGE", PARAMS_TOO_LARGE),
];

/// The name of a code wsmq defines (`"TIMEOUT"` for -32001), or `None` for any other (a
/// worker's own).
pub fn name(code: i64) -> Option<&'static str> {
    ALL.iter()
        .find(|(_, known)| *known == code)
        .map(|(name, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_are_unique() {
        for (i, (name, code)) in ALL.iter().enumerate() {
            for (other_name, other_code) in &ALL[i + 1..] {
                assert_ne!(name, other_name);
                assert_ne!(code, other_code, "{name} and {other_name}");
            }
        }
    }

    #[test]
    fn every_code_is_in_the_range_json_rpc_reserves() {
        for (name, code) in ALL {
            assert!((-32768..=-32000).contains(&code), "{name} = {code}");
        }
    }

    #[test]
    fn name_finds_wsmq_codes_only() {
        assert_eq!(name(-32001), Some("TIMEOUT"));
        assert_eq!(name(-32004), Some("JOB_FAILED"));
        assert_eq!(name(4000), None);
    }
}
