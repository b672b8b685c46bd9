//! One connection to the broker and everything the worker opens on it: the set-up (channels,
//! queues, consumers, the cancellation queue), and its end.
//!
//! Channels: one for replies and progress (confirm mode), one for the declarations and the
//! cancellation consumer, and one per method for its consumer, so that each method channel's
//! delivery tags reach the delivery loop in order and its acks can be batched (`acks.rs`).

use std::{sync::Arc, time::Duration};

use futures::{
    StreamExt,
    stream::{self, BoxStream, SelectAll},
};
use lapin::{
    Channel, Connection, ConnectionProperties, Event, ExchangeKind,
    message::Delivery,
    options::{
        BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    protocol::constants::REPLY_SUCCESS,
    types::{FieldTable, ShortString},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::acks::SessionAcks;
use super::{Route, Worker};
use crate::job::JobShared;

/// Bound on opening a session (TCP, AMQP handshake, channels, queues, consumers): an
/// unreachable host must not hold the loop for the OS's minutes-long TCP timeout.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each polite goodbye (basic.cancel, connection.close) to a broker that may be gone.
pub(super) const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// After the shutdown grace expires, how long abandoned jobs get to drop their handlers.
pub(super) const ABANDON_TIMEOUT: Duration = Duration::from_secs(1);

/// One item of the merged consumer streams.
pub(super) struct Incoming {
    pub(super) route: Arc<Route>,
    /// The route's position, which is its method channel's in [`BrokerConnection::methods`].
    pub(super) index: usize,
    /// A job, or the error that ends the consumer; `None` once the consumer's stream ended
    /// (cancelled by the broker because its queue was deleted, or its channel closed).
    pub(super) item: Option<lapin::Result<Delivery>>,
}

/// One item of the cancellation consumer: a cancellation, the error that ends the consumer,
/// or `None` once its stream ended.
pub(super) type CancelItem = Option<lapin::Result<Delivery>>;

/// One connection to the broker and everything opened on it.
pub(super) struct BrokerConnection {
    pub(super) connection: Connection,
    /// The connection's events; an `Error` means the session is lost.
    pub(super) events: BoxStream<'static, Event>,
    /// Declarations and the cancellation consumer; held so that it stays open (lapin closes a
    /// channel when its last handle is dropped).
    pub(super) _control_channel: Channel,
    /// One channel per method, with its consumer (not the cancellation consumer's, which lives
    /// to the end).
    pub(super) methods: Vec<MethodChannel>,
    /// The acknowledgements of the jobs delivered on the method channels.
    pub(super) acks: SessionAcks,
    /// Every method consumer's stream, merged.
    pub(super) deliveries: SelectAll<BoxStream<'static, Incoming>>,
    /// This worker's own queue bound to the cancellation exchange.
    pub(super) cancels: BoxStream<'static, CancelItem>,
    pub(super) shared: Arc<JobShared>,
    /// Cancelled when this session's jobs must stop at once: the session was lost (their acks
    /// cannot reach the broker any more) or the shutdown grace expired.
    pub(super) abort_jobs: CancellationToken,
}

/// A method's channel and its consumer.
pub(super) struct MethodChannel {
    pub(super) channel: Channel,
    pub(super) consumer_tag: ShortString,
}

/// Why opening a session failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum SetupError {
    #[error("connecting to the broker failed")]
    Connect(#[source] lapin::Error),
    #[error("opening a channel failed")]
    OpenChannel(#[source] lapin::Error),
    #[error("enabling publisher confirms failed")]
    ConfirmSelect(#[source] lapin::Error),
    #[error("setting the prefetch failed")]
    Qos(#[source] lapin::Error),
    #[error("declaring exchange {exchange} failed")]
    DeclareExchange {
        exchange: ShortString,
        #[source]
        source: lapin::Error,
    },
    #[error("declaring the cancellation queue failed")]
    DeclareCancelQueue(#[source] lapin::Error),
    #[error("binding the cancellation queue to exchange {exchange} failed")]
    BindCancelQueue {
        exchange: ShortString,
        #[source]
        source: lapin::Error,
    },
    #[error("declaring queue {queue} failed")]
    Declare {
        queue: ShortString,
        #[source]
        source: lapin::Error,
    },
    #[error("consuming from queue {queue} failed")]
    Consume {
        queue: ShortString,
        #[source]
        source: lapin::Error,
    },
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
}

impl SetupError {
    pub(super) fn lapin_error(&self) -> Option<&lapin::Error> {
        match self {
            Self::Connect(e)
            | Self::OpenChannel(e)
            | Self::ConfirmSelect(e)
            | Self::Qos(e)
            | Self::DeclareCancelQueue(e) => Some(e),
            Self::Declare { source, .. }
            | Self::Consume { source, .. }
            | Self::DeclareExchange { source, .. }
            | Self::BindCancelQueue { source, .. } => Some(source),
            Self::TimedOut(_) => None,
        }
    }
}

/// Why a session that was serving ended without a shutdown.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectionLost {
    #[error("connection error")]
    Connection(#[source] lapin::Error),
    #[error("the connection's event stream ended")]
    EventsEnded,
    #[error("the consumer of queue {queue} failed")]
    Consumer {
        queue: ShortString,
        #[source]
        source: lapin::Error,
    },
    #[error("the consumer of queue {queue} was cancelled (queue deleted?)")]
    ConsumerEnded { queue: ShortString },
    #[error("the cancellation consumer failed")]
    CancelConsumer(#[source] lapin::Error),
    #[error("the cancellation consumer was cancelled (queue deleted?)")]
    CancelConsumerEnded,
    #[error("a reply could not be published on the reply channel")]
    ReplyChannel,
}

impl ConnectionLost {
    pub(super) fn lapin_error(&self) -> Option<&lapin::Error> {
        match self {
            Self::Connection(e) | Self::Consumer { source: e, .. } | Self::CancelConsumer(e) => {
                Some(e)
            }
            Self::EventsEnded
            | Self::ConsumerEnded { .. }
            | Self::CancelConsumerEnded
            | Self::ReplyChannel => None,
        }
    }
}

impl Worker {
    /// Connects to `uri` and sets up everything the worker needs on the broker, as session
    /// number `session` (see `acks.rs`).
    pub(super) async fn connect(
        &self,
        uri: &lapin::uri::AMQPUri,
        session: u64,
    ) -> Result<BrokerConnection, SetupError> {
        // lapin's own recovery stays off (the default): this loop rebuilds sessions itself.
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.as_str().into());
        let connection = Connection::connect_uri(uri.clone(), properties)
            .await
            .map_err(SetupError::Connect)?;
        // Listen before anything else can fail, so no error event is missed.
        let events = connection.events_listener().boxed();

        let reply_channel = connection
            .create_channel()
            .await
            .map_err(SetupError::OpenChannel)?;
        reply_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(SetupError::ConfirmSelect)?;

        let control_channel = connection
            .create_channel()
            .await
            .map_err(SetupError::OpenChannel)?;
        // Cancellations are listened to before any job arrives, so that none sent after a
        // job's delivery is missed.
        let cancels = self.consume_cancellations(&control_channel).await?;
        if let Some(exchange) = &self.dead_letter_exchange {
            // Before the queues: a job dead-lettered to a missing exchange is lost silently.
            declare_durable_fanout(&control_channel, exchange).await?;
        }
        for route in &self.routes {
            // Exactly these options and arguments: the contract fixes the queue's shape, and a
            // redeclaration with other arguments would be refused by the broker.
            let options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            control_channel
                .queue_declare(route.queue.clone(), options, self.queue_arguments.clone())
                .await
                .map_err(|source| SetupError::Declare {
                    queue: route.queue.clone(),
                    source,
                })?;
        }

        let mut methods = Vec::with_capacity(self.routes.len());
        let mut deliveries = SelectAll::new();
        for (index, route) in self.routes.iter().enumerate() {
            // One consumer per channel: its delivery tags then arrive in order (see `acks.rs`).
            let channel = connection
                .create_channel()
                .await
                .map_err(SetupError::OpenChannel)?;
            // Per consumer (`global: false`; global QoS is deprecated in RabbitMQ).
            channel
                .basic_qos(route.prefetch, BasicQosOptions::default())
                .await
                .map_err(SetupError::Qos)?;
            let consumer = channel
                .basic_consume(
                    route.queue.clone(),
                    // Empty: the broker picks a unique tag, which the consumer then carries.
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|source| SetupError::Consume {
                    queue: route.queue.clone(),
                    source,
                })?;
            methods.push(MethodChannel {
                channel,
                consumer_tag: consumer.tag(),
            });
            let (for_items, for_end) = (Arc::clone(route), Arc::clone(route));
            let stream = consumer
                .map(move |delivery| Incoming {
                    route: Arc::clone(&for_items),
                    index,
                    item: Some(delivery),
                })
                .chain(stream::once(async move {
                    Incoming {
                        route: for_end,
                        index,
                        item: None,
                    }
                }));
            deliveries.push(stream.boxed());
        }

        let shared = Arc::new(JobShared {
            handlers: Arc::clone(&self.handlers),
            reply_channel,
            max_reply_bytes: self.max_reply_bytes,
            broken: CancellationToken::new(),
        });
        Ok(BrokerConnection {
            connection,
            events,
            _control_channel: control_channel,
            methods,
            acks: SessionAcks::new(session, self.routes.iter().map(|route| route.prefetch)),
            deliveries,
            cancels,
            shared,
            abort_jobs: CancellationToken::new(),
        })
    }

    /// Declares the cancellation exchange and this worker's own queue bound to it, and consumes
    /// that queue.
    pub(super) async fn consume_cancellations(
        &self,
        channel: &Channel,
    ) -> Result<BoxStream<'static, CancelItem>, SetupError> {
        let exchange = self.cancel_exchange.clone();
        declare_durable_fanout(channel, &exchange).await?;
        // Server-named, and gone with the connection: each session of each worker process hears
        // every cancellation once.
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .map_err(SetupError::DeclareCancelQueue)?;
        let queue = queue.name().clone();
        channel
            .queue_bind(
                queue.clone(),
                exchange.clone(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| SetupError::BindCancelQueue { exchange, source })?;
        // Without acks: a cancellation lost with a connection is harmless (the job's deadline
        // still stops it, and its reply is dropped by the bridge), and each is read at once by
        // the delivery loop, so none pile up in the client.
        let options = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let consumer = channel
            .basic_consume(queue.clone(), "".into(), options, FieldTable::default())
            .await
            .map_err(|source| SetupError::Consume { queue, source })?;
        Ok(consumer
            .map(Some)
            .chain(stream::once(async { None }))
            .boxed())
    }
}

/// Declares `exchange` a durable fanout with no arguments: exactly these settings, since the
/// bridge declares it too (both the cancellation and the dead-letter exchange) and the broker
/// refuses a redeclaration that differs.
pub(super) async fn declare_durable_fanout(
    channel: &Channel,
    exchange: &ShortString,
) -> Result<(), SetupError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.clone(),
            ExchangeKind::Fanout,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|source| SetupError::DeclareExchange {
            exchange: exchange.clone(),
            source,
        })
}

impl BrokerConnection {
    /// Ends a lost session: its jobs stop, and the connection is closed if it still can be.
    pub(super) async fn abandon(self) {
        self.abort_jobs.cancel();
        close_connection(&self.connection, "worker reconnecting").await;
    }
}

/// Waits for the event that ends the session, logging the others.
pub(super) async fn next_connection_error(
    events: &mut BoxStream<'static, Event>,
) -> ConnectionLost {
    while let Some(event) = events.next().await {
        match event {
            Event::Error(error) => return ConnectionLost::Connection(error),
            Event::ConnectionBlocked(reason) => {
                warn!(%reason, "the broker blocked the connection; replies wait until it unblocks");
            }
            Event::ConnectionUnblocked => info!("the broker unblocked the connection"),
            _ => {}
        }
    }
    ConnectionLost::EventsEnded
}

pub(super) async fn close_connection(connection: &Connection, reason: &str) {
    match tokio::time::timeout(
        GOODBYE_TIMEOUT,
        connection.close(REPLY_SUCCESS, reason.into()),
    )
    .await
    {
        Ok(Ok(())) => debug!("connection closed"),
        // Expected when the connection is already gone.
        Ok(Err(error)) => debug!(error = %error, "closing the connection failed"),
        Err(_) => debug!("closing the connection timed out"),
    }
}
