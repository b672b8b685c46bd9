//! The link with one gateway over the Unix socket (its log lines and metrics say "gateway
//! session").
//!
//! The link's task owns the socket's read half, the table of replies handed to the gateway but
//! not yet taken, and the permits that bound it; a writer task owns the write half. Publishes run
//! as their own tasks (bounded by a semaphore) so one slow confirm never holds up the others.
//!
//! A reply is acknowledged to RabbitMQ only when the gateway says it took it, in batches (see
//! [`wsmq_amqp_proto::acks`]); whatever is still untaken when the link ends is returned to the queue, so
//! a gateway or bridge restart loses no result (at worst the gateway sees one twice, and answers
//! each call once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::DeliveryTag;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use wsmq_amqp_proto::acks::{AckOp, AckWindow};
use wsmq_ipc_proto::{
    Backlog, CancelReason, IpcCodec, Job, JobId, MAX_UNTAKEN_REPLIES, OLDEST_GATEWAY_VERSION,
    PROTOCOL_VERSION, Refusal, Rejection, Reply, ReplySeq, ToBridge, ToGateway, Welcome,
};

use crate::backlog::{Probe, Prober};
use crate::broker::{BrokerHandle, ReplyDelivery, ReplySource};
use crate::publisher::Publishers;
use crate::reply;

/// Frames waiting for the writer. When full, publishes and replies wait for the gateway to read.
const OUTBOUND_CAPACITY: usize = 1024;

/// How long a connecting gateway has to say hello.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a link ended other than by the gateway hanging up or shutdown.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("gateway sent no hello within {0:?}")]
    HandshakeTimeout(Duration),
    #[error(
        "gateway speaks protocol version {0}; this bridge speaks {OLDEST_GATEWAY_VERSION} to {PROTOCOL_VERSION}"
    )]
    VersionMismatch(u16),
    #[error("gateway's first frame was not a hello")]
    NoHello,
    #[error("gateway sent a second hello")]
    RepeatedHello,
    #[error("bad frame from the gateway")]
    Frame(#[from] wsmq_ipc_proto::FrameError),
    #[error("the gateway stopped reading")]
    WriterGone,
}

/// What a link shares with the bridge for its whole life.
pub(crate) struct LinkContext<'a> {
    pub(crate) broker: &'a mut BrokerHandle,
    pub(crate) instance: &'a str,
    pub(crate) max_unconfirmed: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) shutdown: &'a CancellationToken,
}

type Reader<R> = FramedRead<R, IpcCodec<ToBridge, ToGateway>>;

/// Sends a refusal on a connection the bridge will not serve, then drops it.
pub(crate) async fn refuse<W: AsyncWrite + Unpin>(write: W, reason: String) {
    let mut out = FramedWrite::new(write, IpcCodec::<ToBridge, ToGateway>::new());
    let refusal = ToGateway::Refused(Refusal {
        version: PROTOCOL_VERSION,
        reason,
    });
    if let Err(e) = tokio::time::timeout(HANDSHAKE_TIMEOUT, out.send(refusal)).await {
        debug!(error = %e, "refusal not delivered");
    }
}

/// Runs one gateway link to its end.
pub(crate) async fn run<R, W>(read: R, write: W, mut ctx: LinkContext<'_>) -> Result<(), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader: Reader<R> = FramedRead::new(read, IpcCodec::new());

    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next()).await {
        Err(_) => return Err(LinkError::HandshakeTimeout(HANDSHAKE_TIMEOUT)),
        Ok(None) => return Ok(()),
        Ok(Some(Err(e))) => return Err(e.into()),
        Ok(Some(Ok(ToBridge::Hello(hello)))) => hello,
        Ok(Some(Ok(_))) => return Err(LinkError::NoHello),
    };
    // An older gateway is served in its own version: it never sends what came after it.
    if !(OLDEST_GATEWAY_VERSION..=PROTOCOL_VERSION).contains(&hello.version) {
        let err = LinkError::VersionMismatch(hello.version);
        drop(reader);
        refuse(write, err.to_string()).await;
        return Err(err);
    }
    info!(peer = %hello.peer, version = hello.version, "gateway connected");
    crate::metrics::gateway_connected(true);

    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let writer = tokio::spawn(write_frames(write, out_rx));
    let welcome = ToGateway::Welcome(Welcome {
        version: hello.version,
        instance: ctx.instance.to_owned(),
        broker: *ctx.broker.state.borrow_and_update(),
    });
    let mut link = GatewayLink {
        out: out_tx,
        untaken: HashMap::new(),
        acks: None,
        prefetch: ctx.broker.prefetch,
        untaken_permits: Arc::new(Semaphore::new(MAX_UNTAKEN_REPLIES)),
        publish_permits: Arc::new(Semaphore::new(ctx.max_unconfirmed)),
        publishes: TaskTracker::new(),
        next_seq: 0,
    };
    let result = match link.out.send(welcome).await {
        Ok(()) => link.serve(&mut reader, &mut ctx).await,
        Err(_) => Err(LinkError::WriterGone),
    };
    link.finish(ctx.drain_timeout).await;
    drop(link);
    if let Err(e) = writer.await {
        warn!(error = %e, "ipc writer task failed");
    }
    crate::metrics::gateway_connected(false);
    info!("gateway session ended");
    result
}

/// Where the link's jobs go.
struct PublishTarget<'a> {
    publisher: &'a tokio::sync::watch::Receiver<Option<Publishers>>,
    prober: &'a tokio::sync::watch::Receiver<Option<Prober>>,
    queue_prefix: &'a String,
    reply_queue: &'a String,
}

struct GatewayLink {
    out: mpsc::Sender<ToGateway>,
    /// Replies sent to the gateway and not yet taken: where each came from, its delivery tag
    /// there, and the permit it holds.
    untaken: HashMap<ReplySeq, (Arc<ReplySource>, DeliveryTag, OwnedSemaphorePermit)>,
    /// The replies of the current reply channel not yet acknowledged. A reply from an earlier
    /// channel (the broker connection was lost since) cannot be acknowledged any more: RabbitMQ
    /// has requeued it.
    acks: Option<(Arc<ReplySource>, AckWindow)>,
    prefetch: u16,
    untaken_permits: Arc<Semaphore>,
    publish_permits: Arc<Semaphore>,
    publishes: TaskTracker,
    next_seq: u64,
}

impl GatewayLink {
    async fn serve<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut Reader<R>,
        ctx: &mut LinkContext<'_>,
    ) -> Result<(), LinkError> {
        let mut state = ctx.broker.state.clone();
        let BrokerHandle {
            publisher,
            prober,
            replies,
            queue_prefix,
            reply_queue,
            ..
        } = &mut *ctx.broker;
        let target = PublishTarget {
            publisher,
            prober,
            queue_prefix,
            reply_queue,
        };
        let mut replies_open = true;
        loop {
            tokio::select! {
                biased;
                () = ctx.shutdown.cancelled() => return Ok(()),
                frame = reader.next() => match frame {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(msg)) => self.handle(msg, &target).await?,
                },
                changed = state.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let now = *state.borrow_and_update();
                    self.send(ToGateway::Broker(now)).await?;
                }
                next = next_reply(&self.untaken_permits, replies), if replies_open => match next {
                    Some((permit, delivery)) => self.forward(delivery, permit).await?,
                    None => replies_open = false,
                },
                // Only when nothing else is ready: one ack then covers every reply taken since.
                () = std::future::ready(()), if self.ack_due() => self.flush_acks(),
            }
        }
    }

    async fn handle(&mut self, msg: ToBridge, target: &PublishTarget<'_>) -> Result<(), LinkError> {
        match msg {
            ToBridge::Hello(_) => Err(LinkError::RepeatedHello),
            ToBridge::Submit(job) => {
                self.submit(job, target).await;
                Ok(())
            }
            ToBridge::Cancel { job, reason } => {
                self.cancel(job, reason, target).await;
                Ok(())
            }
            ToBridge::Taken { reply } => {
                let removed = self.untaken.remove(&reply);
                crate::metrics::untaken_replies(self.untaken.len());
                match removed {
                    Some((source, tag, _permit)) => self.taken(&source, tag),
                    None => warn!(seq = reply.0, "gateway took a reply it was never sent"),
                }
                Ok(())
            }
            ToBridge::Backlog { method } => self.backlog(method, target).await,
        }
    }

    /// Hands the question to the prober, which answers on its own; without one (no broker) or
    /// with no room, answers at once that the depth is not known.
    async fn backlog(
        &mut self,
        method: String,
        target: &PublishTarget<'_>,
    ) -> Result<(), LinkError> {
        let probe = Probe {
            method,
            answer: self.out.clone(),
        };
        let refused = match target.prober.borrow().clone() {
            Some(prober) => prober.ask(probe).err(),
            None => Some(probe),
        };
        match refused {
            None => Ok(()),
            Some(Probe { method, .. }) => {
                self.send(ToGateway::Backlog {
                    method,
                    backlog: Backlog::Unknown,
                })
                .await
            }
        }
    }

    async fn submit(&mut self, job: Job, target: &PublishTarget<'_>) {
        // Waiting here for a permit is the backpressure: while RabbitMQ is slow to confirm,
        // the bridge stops reading the socket and the gateway sheds load.
        let Ok(permit) = self.publish_permits.clone().acquire_owned().await else {
            return;
        };
        let publishers = target.publisher.borrow().clone();
        let prefix = target.queue_prefix.clone();
        let reply_queue = target.reply_queue.clone();
        let out = self.out.clone();
        self.publishes.spawn(async move {
            let (id, client) = (job.id, job.client);
            let outcome = match publishers {
                Some(p) => p.publish(&prefix, &reply_queue, job).await,
                None => Err(Rejection::BrokerUnavailable),
            };
            drop(permit);
            let msg = match outcome {
                Ok(()) => {
                    debug!(job = %id, client, "job published");
                    ToGateway::Published { job: id }
                }
                Err(reason) => {
                    debug!(job = %id, client, ?reason, "job rejected");
                    ToGateway::Rejected { job: id, reason }
                }
            };
            // If the gateway is gone it will not wait for this answer; the job (if published)
            // still runs and its reply waits in the reply queue.
            let _ = out.send(msg).await;
        });
    }

    async fn cancel(&mut self, job: JobId, reason: CancelReason, target: &PublishTarget<'_>) {
        let Ok(permit) = self.publish_permits.clone().acquire_owned().await else {
            return;
        };
        let Some(publishers) = target.publisher.borrow().clone() else {
            // No broker: the job's message expires at its deadline anyway.
            debug!(%job, "cancellation not broadcast: broker down");
            return;
        };
        let exchange = wsmq_amqp_proto::cancel_exchange_name(target.queue_prefix);
        self.publishes.spawn(async move {
            if let Err(e) = publishers.cancel(&exchange, job, reason).await {
                debug!(%job, error = ?e, "cancellation broadcast failed");
            }
            drop(permit);
        });
    }

    async fn forward(
        &mut self,
        reply: ReplyDelivery,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), LinkError> {
        let ReplyDelivery { delivery, source } = reply;
        let tag = delivery.delivery_tag;
        // A new reply channel numbers its deliveries from 1 again: a new window.
        let window = match &mut self.acks {
            Some((current, window)) if Arc::ptr_eq(current, &source) => window,
            _ => {
                let (_, window) = self
                    .acks
                    .insert((source.clone(), AckWindow::new(self.prefetch)));
                window
            }
        };
        if let Err(e) = window.delivered(tag) {
            warn!(error = %e, unexpected = window.unexpected(), "unexpected reply delivery tag");
        }
        let props = &delivery.properties;
        let job = props
            .correlation_id()
            .as_ref()
            .and_then(|id| id.as_str().parse().ok());
        let Some(job) = job else {
            // Nothing can route it; acking drops it for good rather than looping forever.
            crate::metrics::reply_without_correlation_id();
            warn!(
                correlation_id = ?props.correlation_id(),
                "reply without a valid correlation_id dropped"
            );
            self.taken(&source, tag);
            return Ok(());
        };
        let lapin::message::Delivery {
            properties, data, ..
        } = delivery;
        let body = reply::classify(properties.headers().as_ref(), data.into());
        crate::metrics::reply_forwarded(&body);
        self.next_seq += 1;
        let seq = ReplySeq(self.next_seq);
        self.untaken.insert(seq, (source, tag, permit));
        crate::metrics::untaken_replies(self.untaken.len());
        self.send(ToGateway::Reply(Reply { seq, job, body })).await
    }

    async fn send(&self, msg: ToGateway) -> Result<(), LinkError> {
        self.out.send(msg).await.map_err(|_| LinkError::WriterGone)
    }

    /// Lets publishes in flight finish (they tell the gateway if it is still there), then
    /// returns every untaken reply to its queue.
    async fn finish(&mut self, grace: Duration) {
        self.publishes.close();
        if tokio::time::timeout(grace, self.publishes.wait())
            .await
            .is_err()
        {
            warn!(?grace, "publishes still unconfirmed after the grace period");
        }
        crate::metrics::replies_requeued(self.untaken.len());
        crate::metrics::untaken_replies(0);
        self.untaken.clear();
        let Some((source, mut window)) = self.acks.take() else {
            return;
        };
        // In order, in one go: the frames reach lapin's queue before any of them is awaited.
        let settle =
            futures::future::join_all(window.finish().into_iter().map(|op| perform(&source, op)));
        // A broker that stopped answering must not hold up shutdown: it requeues whatever is
        // unacked when the connection goes.
        if tokio::time::timeout(grace, settle).await.is_err() {
            warn!(
                ?grace,
                "returning untaken replies timed out; RabbitMQ requeues them on close"
            );
        }
    }

    /// The gateway took (or the bridge dropped) the reply `tag` from `source`.
    fn taken(&mut self, source: &Arc<ReplySource>, tag: DeliveryTag) {
        let Some((current, window)) = &mut self.acks else {
            return;
        };
        if !Arc::ptr_eq(current, source) {
            // From a channel that is gone: RabbitMQ has requeued it already.
            return;
        }
        match window.taken(tag) {
            Ok(ops) => {
                for op in ops {
                    send_now(current, op);
                }
            }
            Err(e) => {
                warn!(error = %e, unexpected = window.unexpected(), "unexpected reply taken");
            }
        }
    }

    fn ack_due(&self) -> bool {
        self.acks.as_ref().is_some_and(|(_, w)| w.is_due())
    }

    fn flush_acks(&mut self) {
        if let Some((source, window)) = &mut self.acks
            && let Some(op) = window.flush()
        {
            send_now(source, op);
        }
    }
}

/// Sends an acknowledgement without waiting for lapin's I/O thread to write it: the frame is
/// queued (in order with every other frame of the channel) before this returns. If it is never
/// written, the connection has died and RabbitMQ requeues the reply; the gateway drops the
/// second copy.
fn send_now(source: &ReplySource, op: AckOp) {
    if let Some(Err(e)) = perform(source, op).now_or_never() {
        debug!(?op, error = %e, "acknowledgement failed; the reply will be redelivered");
    }
}

/// Sends one acknowledgement; the future ends when lapin has written it.
async fn perform(source: &ReplySource, op: AckOp) -> lapin::Result<()> {
    let channel = &source.channel;
    let result = match op {
        AckOp::One(tag) => {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await
        }
        AckOp::UpTo(tag) => {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
        }
        AckOp::Requeue(tag) => {
            let requeue = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            channel.basic_nack(tag, requeue).await
        }
    };
    if let Err(e) = &result {
        debug!(?op, error = %e, "acknowledgement not sent; RabbitMQ requeues the reply when the channel closes");
    }
    result
}

/// The next reply, once there is room for it among the untaken ones. Cancel-safe: a permit won
/// in a lost race is simply returned.
async fn next_reply(
    permits: &Arc<Semaphore>,
    replies: &mut mpsc::Receiver<ReplyDelivery>,
) -> Option<(OwnedSemaphorePermit, ReplyDelivery)> {
    let permit = permits.clone().acquire_owned().await.ok()?;
    let delivery = replies.recv().await?;
    Some((permit, delivery))
}

async fn write_frames<W: AsyncWrite + Unpin>(write: W, mut rx: mpsc::Receiver<ToGateway>) {
    let mut out = FramedWrite::new(write, IpcCodec::<ToBridge, ToGateway>::new());
    while let Some(msg) = rx.recv().await {
        // Batch whatever is already queued into one flush.
        let mut result = out.feed(msg).await;
        while result.is_ok() {
            match rx.try_recv() {
                Ok(more) => result = out.feed(more).await,
                Err(_) => break,
            }
        }
        if let Err(e) = result.and(out.flush().await) {
            debug!(error = %e, "ipc write failed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn next_reply_waits_for_a_free_permit() {
        let permits = Arc::new(Semaphore::new(1));
        let (_tx, mut rx) = mpsc::channel::<ReplyDelivery>(1);
        let held = permits.clone().acquire_owned().await.expect("permit");
        let waiting =
            tokio::time::timeout(Duration::from_millis(20), next_reply(&permits, &mut rx));
        assert!(waiting.await.is_err(), "must not proceed without a permit");
        drop(held);
        assert_eq!(
            permits.available_permits(),
            1,
            "a cancelled wait returns nothing it took"
        );
    }
}
