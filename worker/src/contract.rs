//! The AMQP contract with the bridge: [`wsmq_amqp_proto`], its one owner, re-exported whole so
//! that `wsmq_worker::contract::*` keeps every name it has always had. See the crate docs for
//! the contract in prose.

use serde_json::Value;

use crate::error::RpcError;

pub use wsmq_amqp_proto::*;

/// Decodes a job body into the call's params.
///
/// A body that is not one valid JSON value is a [`RpcError::PARSE_ERROR`] error, to be replied
/// as is.
pub(crate) fn decode_params(body: &[u8]) -> Result<Value, RpcError> {
    serde_json::from_slice(body).map_err(RpcError::parse_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn handler_error_reply_body_is_the_rpc_error_object() {
        let with_data = encode_reply(
            &Err::<Value, _>(RpcError::new(4000, "requested failure").with_data(json!([1]))),
            1024,
        );
        assert_eq!(with_data.status, ReplyStatus::Error);
        assert_eq!(
            with_data.bytes,
            br#"{"code":4000,"message":"requested failure","data":[1]}"#
        );
        let without_data = encode_reply(
            &Err::<Value, _>(RpcError::invalid_params("text must be a string")),
            1024,
        );
        assert_eq!(
            without_data.bytes,
            br#"{"code":-32602,"message":"invalid params: text must be a string"}"#
        );
    }

    #[test]
    fn oversized_reply_becomes_an_internal_rpc_error() {
        let reply = encode_reply(&Ok::<_, RpcError>(json!("x".repeat(100))), 64);
        assert_eq!(reply.status, ReplyStatus::Error);
        let error: RpcError = serde_json::from_slice(&reply.bytes).expect("error object");
        assert_eq!(error.code, RpcError::INTERNAL_ERROR);
        assert!(error.message.contains("exceeds"), "{}", error.message);
    }
}
