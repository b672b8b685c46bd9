//! What a handler receives, and the boxed form handlers are stored in.

use std::{future::Future, pin::Pin};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::RpcError;

/// One call, as handed to the handler of its method.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Request {
    /// The method called (without the queue prefix).
    pub method: String,
    /// The call's JSON-RPC `params` (`Value::Null` when the call had none).
    pub params: Value,
    /// The job id (the job's `correlation_id`), for logs and idempotency.
    pub job_id: String,
    /// Whether the broker delivered this job before (to a worker that did not ack it), so the
    /// call may already have been carried out once.
    pub redelivered: bool,
}

impl Request {
    /// A request as the worker would build it for a first delivery; for testing handlers.
    pub fn new(method: impl Into<String>, params: Value, job_id: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            params,
            job_id: job_id.into(),
            redelivered: false,
        }
    }

    /// The params deserialised as `T`, or a `-32602 invalid params: <why>` error to return.
    pub fn params_as<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        T::deserialize(&self.params).map_err(RpcError::invalid_params)
    }
}

/// The future a stored handler returns.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, RpcError>> + Send>>;

/// A handler as stored in the worker's method table.
pub(crate) type Handler = Box<dyn Fn(Request) -> HandlerFuture + Send + Sync>;

/// Boxes a handler closure into the stored form.
pub(crate) fn boxed_handler<F, Fut>(handler: F) -> Handler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, RpcError>> + Send + 'static,
{
    Box::new(move |request| Box::pin(handler(request)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Sleep {
        ms: u64,
    }

    #[test]
    fn params_as_reads_well_formed_params() {
        let request = Request::new("sleep", json!({"ms": 5}), "job-1");
        assert_eq!(request.params_as::<Sleep>(), Ok(Sleep { ms: 5 }));
    }

    #[test]
    fn params_as_turns_bad_params_into_invalid_params() {
        let request = Request::new("sleep", json!({"ms": "soon"}), "job-1");
        let error = request
            .params_as::<Sleep>()
            .expect_err("ms is not a number");
        assert_eq!(error.code, RpcError::INVALID_PARAMS);
        assert!(error.message.starts_with("invalid params: "), "{error}");
        assert!(error.message.contains("invalid type"), "{error}");
    }
}
