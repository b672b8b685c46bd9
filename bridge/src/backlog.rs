//! How many jobs wait in a method's queue, asked of RabbitMQ for the gateway's fair share.
//!
//! The gateway holds a method's calls per caller only while that method's queue has a backlog,
//! and it cannot see the queue: it asks ([`ToBridge::Backlog`](wsmq_ipc_proto::ToBridge)), and
//! this answers from RabbitMQ's own count, a passive `queue.declare` (ready messages and
//! consumers; nothing is created or changed). One task per broker connection owns one channel
//! for these questions, apart from the publishing lanes, because RabbitMQ closes a channel on
//! which a passive declare names a missing queue (404): that costs only this channel, which is
//! opened again for the next question.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, ErrorKind};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;
use wsmq_ipc_proto::{Backlog, ToGateway};

/// Questions waiting for the prober. The gateway asks at most once per method per poll
/// interval, so this only smooths bursts; when full, the question is answered
/// [`Backlog::Unknown`] at once and the gateway asks again later.
const PROBE_QUEUE_CAPACITY: usize = 64;

/// Longest wait for RabbitMQ's answer to one passive declare.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The prober's request to the broker supervisor for a fresh channel.
pub(crate) type ProbeChannelRequest = oneshot::Sender<Channel>;

/// One question: the depth of `method`'s queue, answered on `answer` (the gateway link's
/// outbound frames).
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) method: String,
    pub(crate) answer: mpsc::Sender<ToGateway>,
}

/// The handle to one broker connection's prober. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Prober {
    requests: mpsc::Sender<Probe>,
}

impl Prober {
    /// Starts the prober of one broker connection; it asks the supervisor for channels on the
    /// returned receiver, and ends when every handle is gone.
    pub(crate) fn spawn(queue_prefix: String) -> (Self, mpsc::Receiver<ProbeChannelRequest>) {
        let (requests, rx) = mpsc::channel(PROBE_QUEUE_CAPACITY);
        let (channels, channels_rx) = mpsc::channel(1);
        tokio::spawn(run(rx, channels, queue_prefix));
        (Self { requests }, channels_rx)
    }

    /// Queues the question; gives it back if the prober has no room or has ended.
    pub(crate) fn ask(&self, probe: Probe) -> Result<(), Probe> {
        self.requests.try_send(probe).map_err(|e| e.into_inner())
    }
}

async fn run(
    mut requests: mpsc::Receiver<Probe>,
    channels: mpsc::Sender<ProbeChannelRequest>,
    queue_prefix: String,
) {
    let mut channel: Option<Channel> = None;
    while let Some(Probe { method, answer }) = requests.recv().await {
        let backlog = match queue_name(&queue_prefix, &method) {
            None => Backlog::Unknown,
            Some(queue) => depth(&mut channel, &channels, &queue).await,
        };
        debug!(%method, ?backlog, "queue depth asked");
        // A gateway that has gone does not wait for the answer.
        let _ = answer.send(ToGateway::Backlog { method, backlog }).await;
    }
}

/// The queue a job for `method` is routed to, if the method may name one (the same check as
/// publishing: a reserved or too long name never names a worker's queue).
fn queue_name(prefix: &str, method: &str) -> Option<String> {
    if wsmq_ipc_proto::is_reserved_method(method) {
        return None;
    }
    wsmq_amqp_proto::routing_key(prefix, method)
}

/// Asks RabbitMQ on `channel`, opening one first if there is none (or it was closed).
async fn depth(
    channel: &mut Option<Channel>,
    channels: &mpsc::Sender<ProbeChannelRequest>,
    queue: &str,
) -> Backlog {
    if !channel.as_ref().is_some_and(|c| c.status().connected()) {
        *channel = open(channels).await;
    }
    let Some(open) = channel.as_ref() else {
        return Backlog::Unknown;
    };
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = tokio::time::timeout(
        PROBE_TIMEOUT,
        open.queue_declare(queue.into(), passive, FieldTable::default()),
    )
    .await;
    match declared {
        Ok(Ok(q)) => Backlog::Depth {
            ready: q.message_count(),
            consumers: q.consumer_count(),
        },
        Ok(Err(e)) => {
            // RabbitMQ has closed the channel (404 and every other channel error close it).
            *channel = None;
            if matches!(e.kind(), ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404) {
                Backlog::NoQueue
            } else {
                debug!(%queue, error = %e, "queue depth not known");
                Backlog::Unknown
            }
        }
        Err(_) => {
            *channel = None;
            debug!(%queue, timeout = ?PROBE_TIMEOUT, "RabbitMQ did not say the queue's depth in time");
            Backlog::Unknown
        }
    }
}

/// A new channel from the supervisor, or `None` if its connection is gone.
async fn open(channels: &mpsc::Sender<ProbeChannelRequest>) -> Option<Channel> {
    let (tx, rx) = oneshot::channel();
    channels.send(tx).await.ok()?;
    rx.await.ok()
}
