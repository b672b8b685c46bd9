//! What a handler receives, and the boxed form handlers are stored in.

use std::{future::Future, pin::Pin, time::SystemTime};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::{
    error::RpcError,
    progress::{ProgressError, ProgressHandle},
};

/// One call, as handed to the handler of its method.
///
/// Clones share the call's cancellation and progress: cancelling one cancels them all.
#[derive(Debug, Clone)]
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
    /// When the caller stops waiting (the job's `wsmq-deadline`), if it set a deadline. The
    /// worker cancels the request then; see [`Request::cancelled`].
    pub deadline: Option<SystemTime>,
    /// Who made the call: the identity the gateway authenticated (the job's `wsmq-caller`
    /// header), or `None` when the gateway lets clients in without authentication. The
    /// gateway's method allowlist has already been applied; a handler may check more.
    pub caller: Option<String>,
    cancellation: CancellationToken,
    /// `None` outside a worker (a request made by [`Request::new`]): progress goes nowhere.
    progress: Option<ProgressHandle>,
}

impl Request {
    /// A request as the worker would build it for a first delivery; for testing handlers.
    pub fn new(method: impl Into<String>, params: Value, job_id: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            params,
            job_id: job_id.into(),
            redelivered: false,
            deadline: None,
            caller: None,
            cancellation: CancellationToken::new(),
            progress: None,
        }
    }

    /// A request for a delivered job, with its deadline, cancellation and progress queue.
    pub(crate) fn for_job(
        method: String,
        params: Value,
        job_id: String,
        redelivered: bool,
        deadline: Option<SystemTime>,
        cancellation: CancellationToken,
        progress: ProgressHandle,
    ) -> Self {
        Self {
            method,
            params,
            job_id,
            redelivered,
            deadline,
            caller: None,
            cancellation,
            progress: Some(progress),
        }
    }

    /// The same request, made by `caller`; for testing handlers that look at it.
    pub fn with_caller(mut self, caller: Option<String>) -> Self {
        self.caller = caller;
        self
    }

    /// The call's cancellation token. The worker cancels it when a cancellation for this job
    /// is broadcast or its deadline passes; after that, nobody will read the reply, so a
    /// handler should stop early and may return anything (the worker acks the job and sends
    /// no reply). In a handler's unit test, cancel it to simulate either.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancellation
    }

    /// Completes when the call is cancelled; for `tokio::select!` against the handler's work.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancellation.cancelled()
    }

    /// Whether the call has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// Reports progress: publishes `value` to the caller (status `progress`) and waits for the
    /// broker's confirm. Reports reach the caller in the order they were made, all before the
    /// result.
    ///
    /// Once the call is cancelled, reports are skipped and `Ok(())` returned. For a request
    /// made by [`Request::new`] (a unit test), reports go nowhere and return `Ok(())`.
    pub async fn progress(&self, value: Value) -> Result<(), ProgressError> {
        match &self.progress {
            Some(handle) if !self.is_cancelled() => handle.report(&value).await,
            _ => Ok(()),
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

    #[tokio::test]
    async fn progress_of_a_test_request_goes_nowhere() {
        let request = Request::new("steps", json!({}), "job-1");
        assert!(request.progress(json!({"step": 1})).await.is_ok());
    }

    #[test]
    fn clones_share_the_cancellation() {
        let request = Request::new("sleep", json!({}), "job-1");
        let clone = request.clone();
        clone.cancellation().cancel();
        assert!(request.is_cancelled());
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
