//! The one connection to RabbitMQ, and the loop that keeps it alive.
//!
//! lapin's own recovery is not dependable, so one supervising task owns the connection: it
//! connects, builds the topology (a confirm-mode publishing channel, the durable reply queue and
//! its consumer), then watches for the connection's death and starts over with capped,
//! jittered backoff. Everything else reaches it through [`BrokerHandle`]: the current publishing
//! channel and state as `watch` values, and the reply deliveries through a bounded channel.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wsmq_ipc_proto::{BrokerState, Job, Rejection};

/// Reply deliveries waiting for the gateway session. When full (no gateway, or a slow one) the
/// supervisor stops taking deliveries from lapin; RabbitMQ keeps the rest, bounded by prefetch.
const REPLY_QUEUE_CAPACITY: usize = 256;

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First wait after a failed connection attempt.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// AMQP 0-9-1 short strings (routing keys, queue names) hold at most 255 bytes.
const MAX_ROUTING_KEY: usize = 255;

/// Everything the supervisor needs to (re)build its topology.
#[derive(Debug, Clone)]
pub(crate) struct BrokerSettings {
    pub(crate) url: String,
    pub(crate) reply_queue: String,
    pub(crate) queue_prefix: String,
    pub(crate) prefetch: u16,
    /// Shown in RabbitMQ's management UI as the connection name.
    pub(crate) connection_name: String,
}

/// The ways a broker connection fails; each ends one connection attempt.
#[derive(Debug, thiserror::Error)]
enum BrokerError {
    #[error("cannot connect to RabbitMQ")]
    Connect(#[source] lapin::Error),
    #[error("cannot set up channels and the reply queue {queue}")]
    Topology {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ connection failed")]
    Connection(#[source] lapin::Error),
    #[error("reply consumer failed")]
    Consumer(#[source] lapin::Error),
    #[error("reply consumer was cancelled by the broker")]
    ConsumerEnded,
}

/// The other tasks' view of the broker.
#[derive(Debug)]
pub(crate) struct BrokerHandle {
    pub(crate) state: watch::Receiver<BrokerState>,
    /// The confirm-mode channel to publish on; `None` while disconnected.
    pub(crate) publisher: watch::Receiver<Option<Channel>>,
    /// Worker replies, unacknowledged: whoever takes one must ack or nack it.
    pub(crate) replies: mpsc::Receiver<Delivery>,
    pub(crate) queue_prefix: String,
    pub(crate) reply_queue: String,
}

/// Starts the supervising task; it runs until `shutdown`.
pub(crate) fn spawn(
    settings: BrokerSettings,
    shutdown: CancellationToken,
) -> (BrokerHandle, tokio::task::JoinHandle<()>) {
    let (state_tx, state) = watch::channel(BrokerState::Down);
    let (publisher_tx, publisher) = watch::channel(None);
    let (replies_tx, replies) = mpsc::channel(REPLY_QUEUE_CAPACITY);
    let handle = BrokerHandle {
        state,
        publisher,
        replies,
        queue_prefix: settings.queue_prefix.clone(),
        reply_queue: settings.reply_queue.clone(),
    };
    let supervisor = Supervisor {
        settings,
        state_tx,
        publisher_tx,
        replies_tx,
        shutdown,
    };
    (handle, tokio::spawn(supervisor.run()))
}

struct Supervisor {
    settings: BrokerSettings,
    state_tx: watch::Sender<BrokerState>,
    publisher_tx: watch::Sender<Option<Channel>>,
    replies_tx: mpsc::Sender<Delivery>,
    shutdown: CancellationToken,
}

impl Supervisor {
    async fn run(self) {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(MIN_BACKOFF)
            .with_max_delay(MAX_BACKOFF)
            .with_jitter()
            .without_max_times();
        let mut delays = backoff.build();
        loop {
            let outcome = self
                .connect_and_serve(&mut || delays = backoff.build())
                .await;
            self.publisher_tx.send_replace(None);
            self.state_tx.send_replace(BrokerState::Down);
            match outcome {
                Ok(()) => return,
                Err(e) => warn!(error = %e, cause = %error_chain(&e), "broker connection lost"),
            }
            let delay = delays.next().unwrap_or(MAX_BACKOFF);
            debug!(?delay, "reconnecting to RabbitMQ after backoff");
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection's life. Returns `Ok` only on shutdown.
    async fn connect_and_serve(&self, reset_backoff: &mut impl FnMut()) -> Result<(), BrokerError> {
        let s = &self.settings;
        let props =
            ConnectionProperties::default().with_connection_name(s.connection_name.clone().into());
        let connection = tokio::select! {
            () = self.shutdown.cancelled() => return Ok(()),
            c = Connection::connect(&s.url, props) => c.map_err(BrokerError::Connect)?,
        };
        let mut events = connection.events_listener();
        let topology = |source| BrokerError::Topology {
            queue: s.reply_queue.clone(),
            source,
        };

        let publisher = connection.create_channel().await.map_err(topology)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(topology)?;

        let consuming = connection.create_channel().await.map_err(topology)?;
        consuming
            .basic_qos(s.prefetch, BasicQosOptions::default())
            .await
            .map_err(topology)?;
        consuming
            .queue_declare(
                s.reply_queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(topology)?;
        let mut consumer = consuming
            .basic_consume(
                s.reply_queue.as_str().into(),
                s.connection_name.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(topology)?;

        info!(reply_queue = %s.reply_queue, "broker connected");
        reset_backoff();
        self.publisher_tx.send_replace(Some(publisher));
        self.state_tx.send_replace(BrokerState::Up);

        let result = loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break Ok(()),
                event = events.next() => match event {
                    Some(Event::Error(e)) => break Err(BrokerError::Connection(e)),
                    Some(Event::ConnectionBlocked(reason)) => warn!(%reason, "RabbitMQ blocked publishing"),
                    Some(Event::ConnectionUnblocked) => info!("RabbitMQ unblocked publishing"),
                    Some(other) => debug!(event = ?other, "connection event"),
                    None => break Err(BrokerError::ConsumerEnded),
                },
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        // Hand it on; while the gateway is away this waits (bounded), and the
                        // rest stays in RabbitMQ.
                        tokio::select! {
                            () = self.shutdown.cancelled() => break Ok(()),
                            sent = self.replies_tx.send(delivery) => if sent.is_err() { break Ok(()) },
                        }
                    }
                    Some(Err(e)) => break Err(BrokerError::Consumer(e)),
                    None => break Err(BrokerError::ConsumerEnded),
                },
            }
        };
        self.publisher_tx.send_replace(None);
        self.state_tx.send_replace(BrokerState::Down);
        if result.is_ok() {
            // Unacked replies go back to the queue for the next bridge.
            if let Err(e) = connection
                .close(200, "wsmq-bridge shutting down".into())
                .await
            {
                debug!(error = %e, "closing the RabbitMQ connection");
            }
            info!("broker connection closed");
        }
        result
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(err) = cur {
        parts.push(err.to_string());
        cur = err.source();
    }
    parts.join(": ")
}

/// The routing key for a method, or `None` if it would not fit in an AMQP short string.
pub(crate) fn routing_key(prefix: &str, method: &str) -> Option<String> {
    let key = format!("{prefix}{method}");
    (key.len() <= MAX_ROUTING_KEY).then_some(key)
}

/// Header carrying the method name, so a worker serving several queues can tell them apart.
pub(crate) const METHOD_HEADER: &str = "wsmq-method";

/// Publishes one job and waits for RabbitMQ's confirm.
///
/// `Ok` means the message is safely in a queue; the error says how the call must be answered.
pub(crate) async fn publish(
    channel: &Channel,
    prefix: &str,
    reply_queue: &str,
    job: &Job,
) -> Result<(), Rejection> {
    let Some(key) = routing_key(prefix, &job.method) else {
        return Err(Rejection::InvalidMethod);
    };
    let id = job.id.to_string();
    let mut headers = FieldTable::default();
    headers.insert(
        METHOD_HEADER.into(),
        AMQPValue::LongString(job.method.as_str().into()),
    );
    let props = BasicProperties::default()
        .with_correlation_id(id.as_str().into())
        .with_message_id(id.as_str().into())
        .with_reply_to(reply_queue.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = channel
        .basic_publish(
            "".into(),
            key.as_str().into(),
            options,
            job.params.as_bytes(),
            props,
        )
        .await
        .map_err(|e| {
            debug!(job = %job.id, error = %e, "publish failed");
            Rejection::BrokerUnavailable
        })?;
    match confirm.await {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(returned))) => {
            debug!(job = %job.id, code = returned.reply_code, text = %returned.reply_text, "job returned unroutable");
            Err(Rejection::NoRoute)
        }
        Ok(Confirmation::Nack(_)) => Err(Rejection::Nacked),
        Ok(Confirmation::NotRequested) => {
            // Cannot happen on a confirm_select channel; never report an unconfirmed job as safe.
            tracing::error!(job = %job.id, "publish channel is not in confirm mode");
            Err(Rejection::BrokerUnavailable)
        }
        Err(e) => {
            debug!(job = %job.id, error = %e, "publish confirm failed");
            Err(Rejection::BrokerUnavailable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_key_is_prefix_then_method() {
        assert_eq!(routing_key("t1.", "echo").as_deref(), Some("t1.echo"));
        assert_eq!(routing_key("", "echo").as_deref(), Some("echo"));
    }

    #[test]
    fn routing_key_longer_than_a_short_string_is_refused() {
        assert!(routing_key("p.", &"m".repeat(253)).is_some());
        assert!(routing_key("p.", &"m".repeat(254)).is_none());
    }
}
