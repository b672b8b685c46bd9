//! One job: run its handler, publish the reply with a confirm, and only then ack the job.

use std::{collections::HashMap, panic::AssertUnwindSafe, sync::Arc};

use futures::FutureExt;
use lapin::{
    Acker, Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions},
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::{
    contract::{self, ReplyAddress, ReplyBody},
    error::{Chain, RpcError},
    request::{Handler, Request},
};

/// What every job of one broker session shares.
pub(crate) struct JobShared {
    /// The method table.
    pub(crate) handlers: Arc<HashMap<String, Handler>>,
    /// The channel replies are published on, in confirm mode.
    pub(crate) reply_channel: Channel,
    /// Largest reply body sent; a larger one is replaced by an error.
    pub(crate) max_reply_bytes: usize,
    /// Cancelled by a job whose reply channel failed, so the supervisor reconnects even if the
    /// connection itself reported nothing.
    pub(crate) broken: CancellationToken,
}

/// Why a reply was not confirmed.
#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("the broker nacked the reply")]
    Nacked,
    #[error("publishing the reply failed")]
    Channel(#[source] lapin::Error),
}

/// Serves one delivery from the queue of `method`, acking or nacking it in every case where
/// the channel still allows it.
pub(crate) async fn process(shared: Arc<JobShared>, method: Arc<str>, delivery: Delivery) {
    let Delivery {
        delivery_tag,
        redelivered,
        properties,
        data,
        acker,
        ..
    } = delivery;
    let Some(address) = ReplyAddress::from_properties(&properties) else {
        // Nothing can answer it, and a requeue would bring it straight back.
        warn!(%method, delivery_tag, "job without reply_to or correlation_id; acking it unanswered");
        ack(&acker).await;
        return;
    };
    let span = info_span!("job", %method, job_id = %address.correlation_id);
    async move {
        let outcome = match contract::decode_params(&data) {
            Ok(params) => {
                drop(data);
                let request = Request {
                    method: method.to_string(),
                    params,
                    job_id: address.correlation_id.to_string(),
                    redelivered,
                };
                call_handler(&shared.handlers, request).await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = &outcome {
            debug!(code = error.code, message = %error.message, "job answered with an error");
        }
        let body = contract::encode_reply(&outcome, shared.max_reply_bytes);
        drop(outcome);
        match publish_reply(&shared.reply_channel, address, body).await {
            Ok(()) => ack(&acker).await,
            Err(error) => {
                warn!(error = %Chain(&error), "reply not confirmed; requeueing the job");
                if matches!(error, PublishError::Channel(_)) {
                    shared.broken.cancel();
                }
                nack_requeue(&acker).await;
            }
        }
    }
    .instrument(span)
    .await;
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

/// Publishes the reply and waits for the broker's confirm.
///
/// There is no timeout here on purpose: a confirm is late only when the broker applies flow
/// control (a memory or disk alarm), and then waiting is the backpressure we want. A lost
/// connection ends the wait with an error, and shutdown bounds it with its grace period.
async fn publish_reply(
    channel: &Channel,
    address: ReplyAddress,
    body: ReplyBody,
) -> Result<(), PublishError> {
    let properties = contract::reply_properties(address.correlation_id, body.status);
    let confirmation = channel
        .basic_publish(
            "".into(),
            address.reply_to,
            BasicPublishOptions::default(),
            &body.bytes,
            properties,
        )
        .await
        .map_err(PublishError::Channel)?
        .await
        .map_err(PublishError::Channel)?;
    if confirmation.is_nack() {
        return Err(PublishError::Nacked);
    }
    Ok(())
}

async fn ack(acker: &Acker) {
    match acker.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        // The channel is gone; the broker requeues the job by itself.
        Ok(false) => debug!("job not acked: its channel is closed"),
        Err(error) => debug!(error = %error, "job not acked"),
    }
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
