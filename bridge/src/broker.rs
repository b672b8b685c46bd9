//! The one connection to RabbitMQ, and the loop that keeps it alive.
//!
//! lapin's own recovery is not dependable, so one supervising task owns the connection: it
//! connects, builds the topology (a confirm-mode publishing channel, the durable reply queue and
//! its consumer, the dead-letter relay), then watches for the connection's death and starts over.
//! Given several URLs (the nodes of a cluster) it connects to the first that answers, in order,
//! and on losing a node goes to the next; each attempt is bounded, and only after a whole round
//! has failed does it wait (capped, jittered backoff). Everything else reaches it through
//! [`BrokerHandle`]: the current publishing channel and state as `watch` values, and the reply
//! deliveries through a bounded channel.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Event, ExchangeKind};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wsmq_ipc_proto::BrokerState;
use wsmq_service::{AfterFailure, Backoff, ErrorChain, Failover};

use crate::dead::{Relay, RelayError};
use crate::publisher::Publishers;

/// Reply deliveries waiting for the gateway link. When full (no gateway, or a slow one) the
/// supervisor stops taking deliveries from lapin; RabbitMQ keeps the rest, bounded by prefetch.
const REPLY_QUEUE_CAPACITY: usize = 256;

/// How long shutdown waits for RabbitMQ to confirm the connection's close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Bound on one connection attempt (TCP, AMQP handshake, channels, queues, consumers): a node
/// that accepts the socket but never answers must not hold the bridge off the others.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait between two rounds of connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First wait after a failed connection attempt.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// How long the dead-letter relay may take, when its connection ends, to finish the dead job in
/// hand (its reply's confirm, then its ack) before it is dropped; the job then stays queued.
const RELAY_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the supervisor needs to (re)build its topology.
#[derive(Debug, Clone)]
pub(crate) struct BrokerSettings {
    /// The nodes to try, in order (at least one).
    pub(crate) urls: Vec<String>,
    pub(crate) reply_queue: String,
    /// Declare the reply and dead-letter queues as quorum queues.
    pub(crate) replicated: bool,
    pub(crate) queue_prefix: String,
    pub(crate) prefetch: u16,
    /// Confirm-mode channels to publish on (each carries many publishes in flight).
    pub(crate) publish_channels: usize,
    /// Shown in RabbitMQ's management UI as the connection name.
    pub(crate) connection_name: String,
}

/// The ways a broker connection fails; each ends one connection attempt.
#[derive(Debug, thiserror::Error)]
enum BrokerError {
    #[error("cannot connect to RabbitMQ")]
    Connect(#[source] lapin::Error),
    #[error("no connection within {0:?}")]
    TimedOut(Duration),
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
    #[error("cannot set up the dead-letter exchange and queue {name}")]
    DeadLetterTopology {
        name: String,
        #[source]
        source: lapin::Error,
    },
    #[error("dead-letter relay failed")]
    DeadLetters(#[source] RelayError),
    #[error("dead-letter relay panicked")]
    RelayPanicked,
}

/// Which node the bridge is on, or why it is on none: for `/healthz` and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NodeStatus {
    /// `host:port` of the node connected to.
    pub(crate) node: Option<String>,
    /// While on none: the last failure of each node tried, in the order tried.
    pub(crate) failures: Vec<String>,
}

/// The other tasks' view of the broker.
#[derive(Debug)]
pub(crate) struct BrokerHandle {
    pub(crate) state: watch::Receiver<BrokerState>,
    pub(crate) node: watch::Receiver<NodeStatus>,
    /// Where to publish; `None` while disconnected.
    pub(crate) publisher: watch::Receiver<Option<Publishers>>,
    /// Worker replies, unacknowledged: whoever takes one must ack or nack it, on its source.
    pub(crate) replies: mpsc::Receiver<ReplyDelivery>,
    pub(crate) queue_prefix: String,
    pub(crate) reply_queue: String,
    /// Unacknowledged replies RabbitMQ hands out at most (per reply channel).
    pub(crate) prefetch: u16,
}

/// A worker's reply and the channel it came on.
#[derive(Debug)]
pub(crate) struct ReplyDelivery {
    pub(crate) delivery: Delivery,
    pub(crate) source: Arc<ReplySource>,
}

/// The reply channel of one broker connection. Delivery tags count per channel, so an
/// acknowledgement must go to the channel its reply came on (compared by identity).
#[derive(Debug)]
pub(crate) struct ReplySource {
    pub(crate) channel: Channel,
}

/// Starts the supervising task; it runs until `shutdown`.
pub(crate) fn spawn(
    settings: BrokerSettings,
    shutdown: CancellationToken,
) -> (BrokerHandle, tokio::task::JoinHandle<()>) {
    let (state_tx, state) = watch::channel(BrokerState::Down);
    let (node_tx, node) = watch::channel(NodeStatus::default());
    let (publisher_tx, publisher) = watch::channel(None);
    let (replies_tx, replies) = mpsc::channel(REPLY_QUEUE_CAPACITY);
    let handle = BrokerHandle {
        state,
        node,
        publisher,
        replies,
        queue_prefix: settings.queue_prefix.clone(),
        reply_queue: settings.reply_queue.clone(),
        prefetch: settings.prefetch,
    };
    let supervisor = Supervisor {
        settings,
        state_tx,
        node_tx,
        publisher_tx,
        replies_tx,
        shutdown,
    };
    (handle, tokio::spawn(supervisor.run()))
}

/// Everything one connection attempt sets up, handed to the serve loop.
struct Opened {
    connection: Connection,
    events: futures::stream::BoxStream<'static, Event>,
    publishers: Publishers,
    replace: mpsc::Receiver<crate::publisher::ChannelRequest>,
    consumer: lapin::Consumer,
    source: Arc<ReplySource>,
    relay: Relay,
}

struct Supervisor {
    settings: BrokerSettings,
    state_tx: watch::Sender<BrokerState>,
    node_tx: watch::Sender<NodeStatus>,
    publisher_tx: watch::Sender<Option<Publishers>>,
    replies_tx: mpsc::Sender<ReplyDelivery>,
    shutdown: CancellationToken,
}

impl Supervisor {
    async fn run(self) {
        let urls = &self.settings.urls;
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        let mut failover = Failover::new(urls.len());
        loop {
            let index = failover.current();
            let url = urls.get(index).map_or("", String::as_str);
            let node = wsmq_service::node_name(url);
            let mut connected = false;
            let outcome = self
                .connect_and_serve(url, &node, &mut || {
                    connected = true;
                    backoff.reset();
                    if failover.connected() {
                        crate::metrics::broker_failover();
                        info!(%node, "failed over to another RabbitMQ node");
                    }
                })
                .await;
            self.publisher_tx.send_replace(None);
            self.set_state(BrokerState::Down);
            let error = match outcome {
                Ok(()) => return,
                Err(e) => e,
            };
            let single = urls.len() == 1;
            let wait = if connected || single {
                // One URL logs as it always has, whether the connection failed or was lost.
                warn!(%node, error = %ErrorChain(&error), "broker connection lost");
                let failure = format!("{node}: {}", ErrorChain(&error));
                self.node_tx.send_replace(NodeStatus {
                    node: None,
                    failures: vec![failure],
                });
                if connected {
                    failover.lost();
                    true
                } else {
                    failover.failed() == AfterFailure::BackOff
                }
            } else {
                warn!(%node, error = %ErrorChain(&error), "cannot use this RabbitMQ node");
                self.node_tx.send_modify(|status| {
                    let prefix = format!("{node}: ");
                    status.node = None;
                    status.failures.retain(|f| !f.starts_with(&prefix));
                    status
                        .failures
                        .push(format!("{prefix}{}", ErrorChain(&error)));
                });
                let round_over = failover.failed() == AfterFailure::BackOff;
                if round_over {
                    warn!(
                        nodes = urls.len(),
                        "no RabbitMQ node answers; trying again after backoff"
                    );
                }
                round_over
            };
            if !wait {
                continue;
            }
            let delay = backoff.next_delay();
            debug!(?delay, "reconnecting to RabbitMQ after backoff");
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn set_state(&self, state: BrokerState) {
        crate::metrics::broker_state(state != BrokerState::Down, state == BrokerState::Blocked);
        self.state_tx.send_replace(state);
    }

    /// Connects to `url` and sets up the topology.
    async fn open(&self, url: &str) -> Result<Opened, BrokerError> {
        let s = &self.settings;
        let props =
            ConnectionProperties::default().with_connection_name(s.connection_name.clone().into());
        let connection = Connection::connect(url, props)
            .await
            .map_err(BrokerError::Connect)?;
        let events = connection.events_listener().boxed();
        let topology = |source| BrokerError::Topology {
            queue: s.reply_queue.clone(),
            source,
        };

        let (publishers, replace) = Publishers::open(&connection, s.publish_channels)
            .await
            .map_err(topology)?;

        let consuming = connection.create_channel().await.map_err(topology)?;
        // Workers declare the same exchange, with the same settings, to hear cancellations.
        consuming
            .exchange_declare(
                wsmq_amqp_proto::cancel_exchange_name(&s.queue_prefix)
                    .as_str()
                    .into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(topology)?;
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
                wsmq_amqp_proto::bridge_queue_arguments(s.replicated),
            )
            .await
            .map_err(topology)?;
        let consumer = consuming
            .basic_consume(
                s.reply_queue.as_str().into(),
                s.connection_name.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(topology)?;
        let source = Arc::new(ReplySource {
            channel: consuming.clone(),
        });
        let relay = Relay::open(
            &connection,
            &s.queue_prefix,
            &s.connection_name,
            s.replicated,
        )
        .await
        .map_err(|source| BrokerError::DeadLetterTopology {
            name: wsmq_amqp_proto::dead_letter_exchange_name(&s.queue_prefix),
            source,
        })?;
        Ok(Opened {
            connection,
            events,
            publishers,
            replace,
            consumer,
            source,
            relay,
        })
    }

    /// One connection's life, to `url`; `on_connected` runs once it is set up. Returns `Ok`
    /// only on shutdown.
    async fn connect_and_serve(
        &self,
        url: &str,
        node: &str,
        on_connected: &mut impl FnMut(),
    ) -> Result<(), BrokerError> {
        let s = &self.settings;
        let opened = tokio::select! {
            () = self.shutdown.cancelled() => return Ok(()),
            opened = tokio::time::timeout(CONNECT_TIMEOUT, self.open(url)) => {
                opened.unwrap_or(Err(BrokerError::TimedOut(CONNECT_TIMEOUT)))?
            }
        };
        let Opened {
            connection,
            mut events,
            publishers,
            mut replace,
            mut consumer,
            source,
            relay,
        } = opened;
        // Its own task: a reply's confirm must not hold up this loop.
        let relay_stop = self.shutdown.child_token();
        let mut relay = Some(tokio::spawn(relay.run(relay_stop.clone())));

        on_connected();
        self.publisher_tx.send_replace(Some(publishers.clone()));
        self.node_tx.send_replace(NodeStatus {
            node: Some(node.to_owned()),
            failures: Vec::new(),
        });
        self.set_state(BrokerState::Up);
        // Only now: whoever waits for this line (an operator, the tests) may rely on it.
        info!(%node, reply_queue = %s.reply_queue, "broker connected");
        crate::metrics::broker_connected();

        let result = loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break Ok(()),
                event = events.next() => match event {
                    Some(Event::Error(e)) => break Err(BrokerError::Connection(e)),
                    Some(Event::ConnectionBlocked(reason)) => {
                        warn!(%reason, "RabbitMQ blocked publishing");
                        self.set_state(BrokerState::Blocked);
                    }
                    Some(Event::ConnectionUnblocked) => {
                        info!("RabbitMQ unblocked publishing");
                        self.set_state(BrokerState::Up);
                    }
                    Some(other) => debug!(event = ?other, "connection event"),
                    None => break Err(BrokerError::ConsumerEnded),
                },
                ended = async { relay.as_mut()?.await.ok() }, if relay.is_some() => {
                    relay = None;
                    match ended {
                        Some(Ok(())) => break Ok(()),
                        Some(Err(e)) => break Err(BrokerError::DeadLetters(e)),
                        None => break Err(BrokerError::RelayPanicked),
                    }
                }
                Some(lane) = replace.recv() => match crate::publisher::open_channel(&connection).await {
                    // A lane that has gone meanwhile drops the channel with it.
                    Ok(channel) => { let _ = lane.send(channel); }
                    Err(e) => break Err(BrokerError::Connection(e)),
                },
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        // Hand it on; while the gateway is away this waits (bounded), and the
                        // rest stays in RabbitMQ.
                        tokio::select! {
                            () = self.shutdown.cancelled() => break Ok(()),
                            sent = self.replies_tx.send(ReplyDelivery { delivery, source: source.clone() }) => if sent.is_err() { break Ok(()) },
                        }
                    }
                    Some(Err(e)) => break Err(BrokerError::Consumer(e)),
                    None => break Err(BrokerError::ConsumerEnded),
                },
            }
        };
        self.publisher_tx.send_replace(None);
        self.set_state(BrokerState::Down);
        relay_stop.cancel();
        if let Some(mut relay) = relay
            && tokio::time::timeout(RELAY_STOP_TIMEOUT, &mut relay)
                .await
                .is_err()
        {
            debug!("dead-letter relay did not stop in time; dropped");
            relay.abort();
        }
        if result.is_ok() {
            // Unacked replies go back to the queue for the next bridge.
            let close = connection.close(200, "wsmq-bridge shutting down".into());
            match tokio::time::timeout(CLOSE_TIMEOUT, close).await {
                Ok(Ok(())) => info!("broker connection closed"),
                Ok(Err(e)) => debug!(error = %e, "closing the RabbitMQ connection"),
                // RabbitMQ requeues the unacked replies when the socket goes anyway.
                Err(_) => {
                    warn!(timeout = ?CLOSE_TIMEOUT, "RabbitMQ did not confirm the close; leaving")
                }
            }
        }
        result
    }
}
