//! One job: run its handler while publishing its progress, then publish the reply with a
//! confirm and only then report the job settled, for the delivery loop to ack (in a batch, see
//! `worker/acks.rs`); or, if the job was cancelled, report it settled without a reply.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::FutureExt;
use lapin::{
    Acker, BasicProperties, Channel, PublisherConfirm,
    options::{BasicNackOptions, BasicPublishOptions},
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::{
    contract::{self, ReplyAddress, ReplyStatus},
    error::RpcError,
    progress::{self, ProgressCommand},
    request::{Handler, Request},
};
use wsmq_service::ErrorChain;

/// What every job of one broker session shares.
pub(crate) struct JobShared {
    /// The method table.
    pub(crate) handlers: Arc<HashMap<String, Handler>>,
    /// The channel replies and progress are published on, in confirm mode.
    pub(crate) reply_channel: Channel,
    /// Largest reply or progress body sent; a larger reply is replaced by an error.
    pub(crate) max_reply_bytes: usize,
    /// Cancelled by a job whose reply channel failed, so the supervisor reconnects even if the
    /// connection itself reported nothing.
    pub(crate) broken: CancellationToken,
}

/// A delivered job that the delivery loop admitted.
pub(crate) struct Job {
    pub(crate) method: Arc<str>,
    pub(crate) address: ReplyAddress,
    pub(crate) redelivered: bool,
    pub(crate) deadline: Option<SystemTime>,
    /// The `wsmq-caller` header.
    pub(crate) caller: Option<String>,
    /// Cancelled by a cancellation broadcast (through the delivery loop) or by the deadline.
    pub(crate) cancellation: CancellationToken,
    pub(crate) body: Vec<u8>,
    pub(crate) acker: Acker,
}

/// Why a reply was not confirmed.
#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("the broker nacked the reply")]
    Nacked,
    #[error("publishing the reply failed")]
    Channel(#[source] lapin::Error),
}

/// How a job ended, for the delivery loop's ack window (`worker/acks.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Its reply is confirmed (or no reply is wanted any more): the delivery loop acks it,
    /// batched with the others.
    Done,
    /// Nacked back to the queue here already: no ack may name it.
    Requeued,
}

/// Serves one admitted job. Nacks it back to the queue itself when its reply was not confirmed;
/// otherwise says it is [`Settled::Done`] and leaves the ack to the delivery loop, which never
/// covers a job before that.
pub(crate) async fn process(shared: Arc<JobShared>, job: Job) -> Settled {
    let Job {
        method,
        address,
        redelivered,
        deadline,
        caller,
        cancellation,
        body,
        acker,
    } = job;
    let span = info_span!("job", %method, job_id = %address.correlation_id);
    async move {
        let outcome = match contract::decode_params(&body) {
            Ok(params) => {
                drop(body);
                let (progress, reports) = progress::queue(shared.max_reply_bytes);
                let request = Request::for_job(
                    method.to_string(),
                    params,
                    address.correlation_id.to_string(),
                    redelivered,
                    deadline,
                    cancellation.clone(),
                    progress,
                )
                .with_caller(caller);
                let handler = call_handler(&shared.handlers, request);
                supervise(handler, reports, &shared, &address, deadline, &cancellation).await
            }
            Err(error) => Err(error),
        };
        // The caller stopped waiting: it was answered "cancelled" or "timeout" already, and a
        // reply would only be dropped by the bridge.
        if cancellation.is_cancelled() || contract::deadline_passed(deadline, SystemTime::now()) {
            debug!("job ended after its cancellation; acking it without a reply");
            return Settled::Done;
        }
        if let Err(error) = &outcome {
            debug!(code = error.code, message = %error.message, "job answered with an error");
        }
        let reply = contract::encode_reply(&outcome, shared.max_reply_bytes);
        drop(outcome);
        let properties = contract::reply_properties(address.correlation_id.clone(), reply.status);
        let published = match publish(&shared, &address, &reply.bytes, properties).await {
            Ok(confirm) => confirmed(confirm).await,
            Err(error) => Err(PublishError::Channel(error)),
        };
        match published {
            Ok(()) => Settled::Done,
            Err(error) => {
                warn!(error = %ErrorChain(&error), "reply not confirmed; requeueing the job");
                if matches!(error, PublishError::Channel(_)) {
                    shared.broken.cancel();
                }
                nack_requeue(&acker).await;
                Settled::Requeued
            }
        }
    }
    .instrument(span)
    .await
}

/// Runs the handler to its end while publishing the progress it reports, and cancels the job
/// when its deadline passes.
///
/// A cancelled handler is still awaited: cancellation is cooperative, so that a handler can
/// stop at a point of its choosing (and release what it holds) rather than be dropped midway.
async fn supervise(
    handler: impl Future<Output = Result<Value, RpcError>>,
    mut reports: mpsc::Receiver<ProgressCommand>,
    shared: &JobShared,
    address: &ReplyAddress,
    deadline: Option<SystemTime>,
    cancellation: &CancellationToken,
) -> Result<Value, RpcError> {
    let until_deadline = deadline.map_or(Duration::MAX, |deadline| {
        deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    });
    let deadline_timer = tokio::time::sleep(until_deadline);
    tokio::pin!(handler, deadline_timer);
    let mut deadline_open = deadline.is_some();
    loop {
        tokio::select! {
            // The handler first: once it has returned, a report still queued (from a task that
            // outlived it) is refused, since it would follow the reply.
            biased;
            outcome = &mut handler => return outcome,
            Some(ProgressCommand { body, sent }) = reports.recv() => {
                let published = if cancellation.is_cancelled() {
                    Ok(None)
                } else {
                    let properties =
                        contract::reply_properties(address.correlation_id.clone(), ReplyStatus::Progress);
                    // The handler awaits the confirm itself, so this loop goes on polling it
                    // (and publishing its other reports) meanwhile.
                    publish(shared, address, &body, properties).await.map(Some).inspect_err(|_| {
                        shared.broken.cancel();
                    })
                };
                // The handler may have stopped waiting for it; that is its business.
                let _ = sent.send(published);
            }
            () = &mut deadline_timer, if deadline_open => {
                debug!("the job's deadline passed; cancelling it");
                deadline_open = false;
                cancellation.cancel();
            }
        }
    }
}

/// Runs the handler of `request.method`, turning a panic into an internal error so that the
/// job is still answered and acked (a requeued job that panics would panic again, forever).
async fn call_handler(
    handlers: &HashMap<String, Handler>,
    request: Request,
) -> Result<Value, RpcError> {
    let Some(handler) = handlers.get(&request.method) else {
        // Unreachable by construction (a consumer exists only for a registered method), but an
        // answer is cheap and a panic is not.
        return Err(RpcError::method_not_found(&request.method));
    };
    // The handler is called inside the future so that a panic in the call itself is caught too.
    let run = async move { handler(request).await };
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(_panic) => {
            warn!("handler panicked; answering with an internal error");
            Err(RpcError::internal("handler panicked"))
        }
    }
}

/// Hands a message for the job's caller to the reply channel. Messages handed over one after
/// the other on one channel reach the reply queue in that order.
async fn publish(
    shared: &JobShared,
    address: &ReplyAddress,
    body: &[u8],
    properties: BasicProperties,
) -> Result<PublisherConfirm, lapin::Error> {
    shared
        .reply_channel
        .basic_publish(
            "".into(),
            address.reply_to.clone(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
}

/// Waits for the broker's confirm of a published message.
///
/// There is no timeout here on purpose: a confirm is late only when the broker applies flow
/// control (a memory or disk alarm), and then waiting is the backpressure we want. A lost
/// connection ends the wait with an error, and shutdown bounds it with its grace period.
async fn confirmed(confirm: PublisherConfirm) -> Result<(), PublishError> {
    let confirmation = confirm.await.map_err(PublishError::Channel)?;
    if confirmation.is_nack() {
        return Err(PublishError::Nacked);
    }
    Ok(())
}

async fn nack_requeue(acker: &Acker) {
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    match acker.nack(options).await {
        Ok(true) => {}
        Ok(false) => debug!("job not nacked: its channel is closed"),
        Err(error) => debug!(error = %error, "job not nacked"),
    }
}
