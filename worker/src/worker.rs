//! The worker: its builder, and the supervising loop that keeps one broker session serving.
//!
//! `Worker::run` owns the only broker connection. Each pass of its loop opens a session
//! (connection, reply channel in confirm mode, consume channel, queues, consumers), serves it
//! until the connection fails or shutdown is asked for, then tears it down; a failed session is
//! followed by a backoff delay and a fresh one. Jobs run as tasks on a [`TaskTracker`], each
//! holding one of `concurrency` slots.
//!
//! The same loop is the only owner of the [`JobTable`]: it admits each delivery (skipping the
//! cancelled and the expired), cancels running jobs when their cancellation is broadcast, and
//! hears from each job task through a bounded channel when it ends.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::{
    StreamExt,
    stream::{self, BoxStream, SelectAll},
};
use lapin::{
    Channel, Connection, ConnectionProperties, ErrorKind, Event, ExchangeKind,
    message::Delivery,
    options::{
        BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    protocol::constants::REPLY_SUCCESS,
    types::{FieldTable, ShortString},
    uri::AMQPUri,
};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use crate::{
    contract::{self, Cancellation, MAX_QUEUE_NAME_LEN, QueueType, ReplyAddress},
    error::{BuildError, RpcError, WorkerError},
    job::{self, Job, JobShared},
    lifecycle::{Admission, JobTable, RECENTLY_CANCELLED_CAPACITY, Ticket},
    request::{self, Handler, Request},
};
use wsmq_service::{Backoff, ErrorChain};

/// Default for [`WorkerBuilder::concurrency`].
pub const DEFAULT_CONCURRENCY: u16 = 16;
/// Default for [`WorkerBuilder::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default for [`WorkerBuilder::max_reply_bytes`]: far below RabbitMQ's message size limit, so
/// the broker never refuses a reply.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// First delay before reconnecting; doubled per failed attempt.
const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Bound on opening a session (TCP, AMQP handshake, channels, queues, consumers): an
/// unreachable host must not hold the loop for the OS's minutes-long TCP timeout.
const SESSION_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each polite goodbye (basic.cancel, connection.close) to a broker that may be gone.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// After the shutdown grace expires, how long abandoned jobs get to drop their handlers.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(1);
/// Tickets of ended jobs on their way to the delivery loop. When it is full, an ending job task
/// waits (it has already given up its slot): the loop reads this channel in every one of its
/// waits, so the wait is short, and nothing is lost.
const FINISHED_QUEUE: usize = 64;

/// Where a worker is in its life, as seen through [`Worker::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// Not consuming: connecting, or waiting to reconnect.
    Connecting,
    /// Every method's queue is declared and consumed.
    Ready,
    /// [`Worker::run`] has returned.
    Stopped,
}

/// Configures a [`Worker`]; made by [`Worker::builder`].
pub struct WorkerBuilder {
    uri: String,
    queue_prefix: String,
    concurrency: u16,
    connection_name: Option<String>,
    shutdown_grace: Duration,
    max_reply_bytes: usize,
    max_priority: Option<u8>,
    queue_type: QueueType,
    methods: Vec<(String, Handler)>,
    method_concurrency: HashMap<String, u16>,
}

impl WorkerBuilder {
    /// Prefix of every method's queue name (default empty): method `m` is served from queue
    /// `<prefix>m`. Must match the bridge's queue prefix.
    #[must_use]
    pub fn queue_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.queue_prefix = prefix.into();
        self
    }

    /// How many handlers run at once, over all methods (default [`DEFAULT_CONCURRENCY`]).
    ///
    /// It is also each method consumer's prefetch (`basic.qos`) unless the method has its own
    /// [`method_concurrency`](Self::method_concurrency), so with several methods up to
    /// `concurrency` jobs per method may be held unacked, waiting for a free handler slot; the
    /// broker requeues them if the worker goes away.
    #[must_use]
    pub fn concurrency(mut self, concurrency: u16) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// At most `concurrency` jobs of `method` run at once (within the worker-wide
    /// [`concurrency`](Self::concurrency), which still bounds all methods together).
    ///
    /// This is the prefetch of the method's consumer: the broker hands this worker no more
    /// than that many unacked jobs of the method, and the others stay in the queue for other
    /// workers (or, in a priority queue, behind later jobs of higher priority). A value above
    /// the worker-wide concurrency is lowered to it. The method must be registered with
    /// [`method`](Self::method), before or after this call; setting it twice keeps the last.
    #[must_use]
    pub fn method_concurrency(mut self, method: impl Into<String>, concurrency: u16) -> Self {
        self.method_concurrency.insert(method.into(), concurrency);
        self
    }

    /// The `x-max-priority` the method queues are declared with (default
    /// `Some(`[`DEFAULT_MAX_PRIORITY`](contract::DEFAULT_MAX_PRIORITY)`)`), so that jobs
    /// published with a higher AMQP `priority` are delivered first. `None` declares them with
    /// no arguments, as before priorities existed.
    ///
    /// Every worker of a method must declare its queue alike: the broker refuses (and this
    /// worker keeps retrying, logging why) a declaration whose arguments differ from the
    /// queue's. A queue declared without the argument has to be deleted to gain it.
    #[must_use]
    pub fn max_priority(mut self, max_priority: Option<u8>) -> Self {
        self.max_priority = max_priority;
        self
    }

    /// The type of the method queues (default [`QueueType::Classic`]).
    ///
    /// [`QueueType::Quorum`] makes a job that kills every worker taking it (a poison job) end:
    /// past its delivery limit the broker dead-letters it to `<prefix>wsmq.dead`, which this
    /// worker declares (a durable fanout exchange, no arguments) before its queues, and the
    /// bridge answers the caller `-32004 "job failed"`. Quorum queues of RabbitMQ 3.10 have no
    /// priorities: with it, [`max_priority`](Self::max_priority) is ignored.
    ///
    /// A queue keeps its type: switching a method's workers to another type means deleting the
    /// queue once (`rabbitmqctl delete_queue <prefix><method>`), or the broker refuses the
    /// declaration and the worker keeps retrying, logging why.
    #[must_use]
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Name shown for the connection in the broker's management UI (default
    /// `wsmq-worker pid <pid>`).
    #[must_use]
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// How long, on shutdown, jobs in flight get to finish and reply (default
    /// [`DEFAULT_SHUTDOWN_GRACE`]). Jobs still running then are dropped unacked, so the broker
    /// hands them to another worker.
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Largest reply body sent (default [`DEFAULT_MAX_REPLY_BYTES`]); a larger result or
    /// error is replaced by a `-32603` error saying so.
    #[must_use]
    pub fn max_reply_bytes(mut self, max: usize) -> Self {
        self.max_reply_bytes = max;
        self
    }

    /// Serves `method` with `handler`, from the queue `<prefix><method>`.
    ///
    /// The handler is called once per job, each call on its own task; its result or error is
    /// the reply. A handler that panics is answered with a `-32603` error.
    #[must_use]
    pub fn method<F, Fut>(mut self, method: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, RpcError>> + Send + 'static,
    {
        self.methods
            .push((method.into(), request::boxed_handler(handler)));
        self
    }

    /// Checks the configuration and makes the worker. Nothing touches the network here.
    pub fn build(self) -> Result<Worker, BuildError> {
        let uri: AMQPUri = self
            .uri
            .parse()
            .map_err(|reason| BuildError::InvalidUri { reason })?;
        if self.concurrency == 0 {
            return Err(BuildError::ZeroConcurrency);
        }
        if self.methods.is_empty() {
            return Err(BuildError::NoMethods);
        }
        let mut routes = Vec::with_capacity(self.methods.len());
        let mut handlers = HashMap::with_capacity(self.methods.len());
        for (method, handler) in self.methods {
            if method.is_empty() {
                return Err(BuildError::EmptyMethodName);
            }
            let queue = contract::queue_name(&self.queue_prefix, &method);
            if queue.starts_with("amq.") {
                return Err(BuildError::ReservedQueueName { queue });
            }
            let queue = ShortString::try_new(queue).map_err(|_| BuildError::QueueNameTooLong {
                len: self.queue_prefix.len() + method.len(),
                method: method.clone(),
            })?;
            debug_assert!(queue.as_str().len() <= MAX_QUEUE_NAME_LEN);
            if handlers.contains_key(&method) {
                return Err(BuildError::DuplicateMethod { method });
            }
            let prefetch = match self.method_concurrency.get(&method) {
                Some(0) => return Err(BuildError::ZeroMethodConcurrency { method }),
                Some(&own) => own.min(self.concurrency),
                None => self.concurrency,
            };
            routes.push(Arc::new(Route {
                method: Arc::from(method.as_str()),
                queue,
                prefetch,
            }));
            handlers.insert(method, handler);
        }
        if let Some(method) = self
            .method_concurrency
            .into_keys()
            .find(|method| !handlers.contains_key(method))
        {
            return Err(BuildError::UnknownMethodConcurrency { method });
        }
        let cancel_exchange = contract::cancel_exchange_name(&self.queue_prefix);
        let cancel_exchange =
            ShortString::try_new(cancel_exchange).map_err(|_| BuildError::QueuePrefixTooLong {
                len: self.queue_prefix.len(),
            })?;
        // `wsmq.dead` is shorter than `wsmq.cancel`, so the prefix fits here too.
        let dead_letter_exchange = self
            .queue_type
            .dead_letter_exchange(&self.queue_prefix)
            .map(|name| {
                ShortString::try_new(name).map_err(|_| BuildError::QueuePrefixTooLong {
                    len: self.queue_prefix.len(),
                })
            })
            .transpose()?;
        let queue_arguments = self
            .queue_type
            .arguments(&self.queue_prefix, self.max_priority);
        let connection_name = self
            .connection_name
            .unwrap_or_else(|| format!("wsmq-worker pid {}", std::process::id()));
        Ok(Worker {
            uri,
            connection_name,
            routes,
            handlers: Arc::new(handlers),
            cancel_exchange,
            dead_letter_exchange,
            queue_arguments,
            concurrency: self.concurrency,
            shutdown_grace: self.shutdown_grace,
            max_reply_bytes: self.max_reply_bytes,
            max_priority: self.max_priority,
            queue_type: self.queue_type,
            state: watch::Sender::new(WorkerState::Connecting),
        })
    }
}

impl fmt::Debug for WorkerBuilder {
    // By hand: the URI may hold a password, and handlers have no Debug.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("queue_prefix", &self.queue_prefix)
            .field("concurrency", &self.concurrency)
            .field("max_priority", &self.max_priority)
            .field("queue_type", &self.queue_type)
            .field(
                "methods",
                &self.methods.iter().map(|(m, _)| m).collect::<Vec<_>>(),
            )
            .field("method_concurrency", &self.method_concurrency)
            .finish_non_exhaustive()
    }
}

/// A method, the queue it is served from, and its consumer's prefetch.
#[derive(Debug)]
struct Route {
    method: Arc<str>,
    queue: ShortString,
    prefetch: u16,
}

/// A worker serving a set of methods from their queues; see the crate docs for the contract.
pub struct Worker {
    uri: AMQPUri,
    connection_name: String,
    routes: Vec<Arc<Route>>,
    handlers: Arc<HashMap<String, Handler>>,
    /// `<prefix>wsmq.cancel`.
    cancel_exchange: ShortString,
    /// `<prefix>wsmq.dead`, declared before the queues when they dead-letter to it.
    dead_letter_exchange: Option<ShortString>,
    /// What every method queue is declared with (from the queue type and max priority).
    queue_arguments: FieldTable,
    concurrency: u16,
    shutdown_grace: Duration,
    max_reply_bytes: usize,
    max_priority: Option<u8>,
    queue_type: QueueType,
    state: watch::Sender<WorkerState>,
}

impl fmt::Debug for Worker {
    // By hand: the URI holds the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("host", &self.uri.authority.host)
            .field("port", &self.uri.authority.port)
            .field("vhost", &self.uri.vhost)
            .field("queues", &self.queue_names().collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .field("max_priority", &self.max_priority)
            .field("queue_type", &self.queue_type)
            .finish_non_exhaustive()
    }
}

/// One item of the merged consumer streams.
struct Incoming {
    route: Arc<Route>,
    /// A job, or the error that ends the consumer; `None` once the consumer's stream ended
    /// (cancelled by the broker because its queue was deleted, or its channel closed).
    item: Option<lapin::Result<Delivery>>,
}

/// One item of the cancellation consumer: a cancellation, the error that ends the consumer,
/// or `None` once its stream ended.
type CancelItem = Option<lapin::Result<Delivery>>;

/// One connection to the broker and everything opened on it.
struct Session {
    connection: Connection,
    /// The connection's events; an `Error` means the session is lost.
    events: BoxStream<'static, Event>,
    consume_channel: Channel,
    /// The method consumers' tags (not the cancellation consumer's, which lives to the end).
    consumer_tags: Vec<ShortString>,
    /// Every method consumer's stream, merged.
    deliveries: SelectAll<BoxStream<'static, Incoming>>,
    /// This worker's own queue bound to the cancellation exchange.
    cancels: BoxStream<'static, CancelItem>,
    shared: Arc<JobShared>,
    /// Cancelled when this session's jobs must stop at once: the session was lost (their acks
    /// cannot reach the broker any more) or the shutdown grace expired.
    abort_jobs: CancellationToken,
}

/// Why opening a session failed.
#[derive(Debug, thiserror::Error)]
enum SetupError {
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
    fn lapin_error(&self) -> Option<&lapin::Error> {
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
enum SessionLost {
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

impl SessionLost {
    fn lapin_error(&self) -> Option<&lapin::Error> {
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

/// What the delivery loop owns across sessions: the handler slots, the job tasks, the job
/// table and the channel its job tasks report their end on.
struct Dispatch {
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    table: JobTable,
    finished_tx: mpsc::Sender<Ticket>,
    finished_rx: mpsc::Receiver<Ticket>,
}

impl Dispatch {
    fn new(concurrency: u16) -> Self {
        let (finished_tx, finished_rx) = mpsc::channel(FINISHED_QUEUE);
        Self {
            // Shared by every session, so jobs of a lost session still count until they are gone.
            slots: Arc::new(Semaphore::new(usize::from(concurrency))),
            jobs: TaskTracker::new(),
            table: JobTable::new(RECENTLY_CANCELLED_CAPACITY),
            finished_tx,
            finished_rx,
        }
    }
}

/// How [`Worker::serve`] ended.
enum Served {
    Shutdown,
    Lost(SessionLost),
}

/// Errors no new connection can cure; any other is retried.
fn is_unrecoverable(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::InvalidProtocolVersion(_)
            | ErrorKind::RuntimeShutdownError(_)
            | ErrorKind::NoDefaultRuntime
    )
}

impl Worker {
    /// Starts configuring a worker that connects to the broker at `amqp_uri`
    /// (`amqp://user:password@host:port/vhost`).
    pub fn builder(amqp_uri: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            uri: amqp_uri.into(),
            queue_prefix: String::new(),
            concurrency: DEFAULT_CONCURRENCY,
            connection_name: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            max_priority: Some(contract::DEFAULT_MAX_PRIORITY),
            queue_type: QueueType::Classic,
            methods: Vec::new(),
            method_concurrency: HashMap::new(),
        }
    }

    /// The queues this worker consumes, one per method.
    pub fn queue_names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|route| route.queue.as_str())
    }

    /// Watches the worker's [`WorkerState`]; take it before calling [`Worker::run`].
    pub fn state(&self) -> watch::Receiver<WorkerState> {
        self.state.subscribe()
    }

    /// Serves jobs until `shutdown` is cancelled, reconnecting whenever the broker is lost.
    ///
    /// On shutdown it cancels its consumers, gives the jobs in flight the shutdown grace period
    /// to reply and be acked, closes the connection and returns `Ok(())`. Broker outages,
    /// refused logins and failed declarations are logged and retried with capped exponential
    /// backoff (100 ms doubling to 5 s, with jitter); only an [unrecoverable](WorkerError)
    /// client error ends the run early.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let mut dispatch = Dispatch::new(self.concurrency);
        let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
        let outcome = loop {
            self.set_state(WorkerState::Connecting);
            let opened = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                opened = tokio::time::timeout(SESSION_SETUP_TIMEOUT, self.open_session()) => {
                    opened.unwrap_or(Err(SetupError::TimedOut(SESSION_SETUP_TIMEOUT)))
                }
            };
            match opened {
                Ok(mut session) => {
                    info!(
                        host = %self.uri.authority.host,
                        vhost = %self.uri.vhost,
                        queues = ?self.queue_names().collect::<Vec<_>>(),
                        concurrency = self.concurrency,
                        queue_type = ?self.queue_type,
                        max_priority = ?self.max_priority,
                        "connected to the broker; consuming"
                    );
                    self.set_state(WorkerState::Ready);
                    backoff.reset();
                    match self.serve(&mut session, &shutdown, &mut dispatch).await {
                        Served::Shutdown => {
                            self.drain(session, &mut dispatch).await;
                            break Ok(());
                        }
                        Served::Lost(lost) => {
                            self.set_state(WorkerState::Connecting);
                            session.abandon().await;
                            if let Some(e) = lost.lapin_error().filter(|e| is_unrecoverable(e)) {
                                break Err(WorkerError::Unrecoverable(e.clone()));
                            }
                            warn!(error = %ErrorChain(&lost), "lost the broker session; reconnecting");
                        }
                    }
                }
                Err(error) => {
                    if let Some(e) = error.lapin_error().filter(|e| is_unrecoverable(e)) {
                        break Err(WorkerError::Unrecoverable(e.clone()));
                    }
                    warn!(error = %ErrorChain(&error), "could not open a broker session; retrying");
                }
            }
            let delay = backoff.next_delay();
            debug!(delay_ms = delay.as_millis(), "waiting before reconnecting");
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        };
        self.set_state(WorkerState::Stopped);
        outcome
    }

    /// Moves to `state`, waking the watchers only if it is a change.
    fn set_state(&self, state: WorkerState) {
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    /// Connects and sets up everything the worker needs on the broker.
    async fn open_session(&self) -> Result<Session, SetupError> {
        // lapin's own recovery stays off (the default): this loop rebuilds sessions itself.
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.as_str().into());
        let connection = Connection::connect_uri(self.uri.clone(), properties)
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

        let consume_channel = connection
            .create_channel()
            .await
            .map_err(SetupError::OpenChannel)?;
        // Cancellations are listened to before any job arrives, so that none sent after a
        // job's delivery is missed.
        let cancels = self.consume_cancellations(&consume_channel).await?;
        if let Some(exchange) = &self.dead_letter_exchange {
            // Before the queues: a job dead-lettered to a missing exchange is lost silently.
            declare_durable_fanout(&consume_channel, exchange).await?;
        }
        for route in &self.routes {
            // Exactly these options and arguments: the contract fixes the queue's shape, and a
            // redeclaration with other arguments would be refused by the broker.
            let options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            consume_channel
                .queue_declare(route.queue.clone(), options, self.queue_arguments.clone())
                .await
                .map_err(|source| SetupError::Declare {
                    queue: route.queue.clone(),
                    source,
                })?;
        }

        let mut consumer_tags = Vec::with_capacity(self.routes.len());
        let mut deliveries = SelectAll::new();
        for route in &self.routes {
            // Per consumer (`global: false`; global QoS is deprecated in RabbitMQ): it applies
            // to the consumers started after it on this channel, so each method gets its own.
            consume_channel
                .basic_qos(route.prefetch, BasicQosOptions::default())
                .await
                .map_err(SetupError::Qos)?;
            let consumer = consume_channel
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
            consumer_tags.push(consumer.tag());
            let (for_items, for_end) = (Arc::clone(route), Arc::clone(route));
            let stream = consumer
                .map(move |delivery| Incoming {
                    route: Arc::clone(&for_items),
                    item: Some(delivery),
                })
                .chain(stream::once(async move {
                    Incoming {
                        route: for_end,
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
        Ok(Session {
            connection,
            events,
            consume_channel,
            consumer_tags,
            deliveries,
            cancels,
            shared,
            abort_jobs: CancellationToken::new(),
        })
    }

    /// Declares the cancellation exchange and this worker's own queue bound to it, and consumes
    /// that queue.
    async fn consume_cancellations(
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

    /// Hands deliveries to job tasks, and cancellations to running jobs, until shutdown or
    /// until the session is lost.
    async fn serve(
        &self,
        session: &mut Session,
        shutdown: &CancellationToken,
        dispatch: &mut Dispatch,
    ) -> Served {
        let Session {
            events,
            deliveries,
            cancels,
            shared,
            abort_jobs,
            ..
        } = session;
        let Dispatch {
            slots,
            jobs,
            table,
            finished_tx,
            finished_rx,
        } = dispatch;
        loop {
            let (slot, incoming) = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Served::Shutdown,
                lost = next_connection_error(events) => return Served::Lost(lost),
                () = shared.broken.cancelled() => return Served::Lost(SessionLost::ReplyChannel),
                // Never `None`: the dispatch holds a sender.
                Some(ticket) = finished_rx.recv() => {
                    table.finished(ticket);
                    continue;
                }
                // Before deliveries, so that of a cancellation and its job arriving together
                // the cancellation is seen first.
                cancel = cancels.next() => match cancel {
                    Some(Some(Ok(message))) => {
                        on_cancellation(table, &message);
                        continue;
                    }
                    Some(Some(Err(error))) => {
                        return Served::Lost(SessionLost::CancelConsumer(error));
                    }
                    Some(None) | None => return Served::Lost(SessionLost::CancelConsumerEnded),
                },
                // The slot is taken before the delivery (as a server takes its permit before
                // accepting), so a busy worker starts no more handlers than it has slots.
                next = async {
                    let slot = Arc::clone(slots).acquire_owned().await;
                    (slot, deliveries.next().await)
                } => next,
            };
            // The semaphore is never closed, so this is only for the types' sake.
            let Ok(slot) = slot else {
                return Served::Shutdown;
            };
            // Each consumer stream yields a last `item: None` before it leaves the set, so the set
            // running dry comes after that has already ended the session.
            let Some(Incoming { route, item }) = incoming else {
                return Served::Lost(SessionLost::EventsEnded);
            };
            let delivery = match item {
                Some(Ok(delivery)) => delivery,
                Some(Err(source)) => {
                    let queue = route.queue.clone();
                    return Served::Lost(SessionLost::Consumer { queue, source });
                }
                None => {
                    let queue = route.queue.clone();
                    return Served::Lost(SessionLost::ConsumerEnded { queue });
                }
            };
            let Delivery {
                delivery_tag,
                redelivered,
                properties,
                data,
                acker,
                ..
            } = delivery;
            let method = Arc::clone(&route.method);
            let Some(address) = ReplyAddress::from_properties(&properties) else {
                // Nothing can answer it, and a requeue would bring it straight back.
                warn!(%method, delivery_tag, "job without reply_to or correlation_id; acking it unanswered");
                jobs.spawn(job::skip(acker));
                continue;
            };
            let job_id = address.correlation_id.as_str();
            let deadline = contract::deadline_from_headers(properties.headers().as_ref())
                .unwrap_or_else(|error| {
                    warn!(%method, job_id, error = %error, "ignoring the job's unreadable deadline");
                    None
                });
            let (ticket, cancellation) = match table.admit(job_id, deadline, SystemTime::now()) {
                Admission::Run(ticket, cancellation) => (ticket, cancellation),
                Admission::Skip(reason) => {
                    debug!(%method, job_id, reason = reason.as_str(), "job skipped; acking it without a reply");
                    jobs.spawn(job::skip(acker));
                    continue;
                }
            };
            let caller = contract::caller_from_headers(properties.headers().as_ref());
            let job = Job {
                method: Arc::clone(&method),
                address,
                redelivered,
                deadline,
                caller,
                cancellation,
                body: data,
                acker,
            };
            let shared = Arc::clone(shared);
            let abort = abort_jobs.clone();
            let finished = finished_tx.clone();
            jobs.spawn(async move {
                tokio::select! {
                    biased;
                    () = abort.cancelled() => debug!(%method, "job dropped: its broker session ended"),
                    () = job::process(shared, job) => {}
                }
                drop(slot);
                // Fails only once the worker has stopped, when nobody needs to know.
                let _ = finished.send(ticket).await;
            });
        }
    }

    /// Graceful end of a serving session: stop deliveries, let the jobs in flight finish within
    /// the grace period (still hearing cancellations), then close.
    async fn drain(&self, mut session: Session, dispatch: &mut Dispatch) {
        info!(
            in_flight = dispatch.jobs.len(),
            "shutting down: cancelling consumers"
        );
        let cancels = session.consumer_tags.iter().map(|tag| {
            session
                .consume_channel
                .basic_cancel(tag.clone(), BasicCancelOptions::default())
        });
        match tokio::time::timeout(GOODBYE_TIMEOUT, futures::future::join_all(cancels)).await {
            Ok(results) => {
                for error in results.into_iter().filter_map(Result::err) {
                    debug!(error = %error, "cancelling a consumer failed");
                }
            }
            Err(_) => debug!("cancelling the consumers timed out"),
        }
        // Deliveries the broker sent before the cancel and no job took stay unacked; the close
        // below hands them back to the queue.
        dispatch.jobs.close();
        if !wait_for_jobs(&mut session, dispatch, self.shutdown_grace).await {
            warn!(
                abandoned = dispatch.jobs.len(),
                grace_ms = self.shutdown_grace.as_millis(),
                "shutdown grace period expired; abandoning the jobs in flight to the broker's requeue"
            );
            session.abort_jobs.cancel();
            if !wait_for_jobs(&mut session, dispatch, ABANDON_TIMEOUT).await {
                debug!("abandoned jobs still winding down");
            }
        }
        close_connection(&session.connection, "worker shutting down").await;
        info!("worker stopped");
    }
}

/// Declares `exchange` a durable fanout with no arguments: exactly these settings, since the
/// bridge declares it too (both the cancellation and the dead-letter exchange) and the broker
/// refuses a redeclaration that differs.
async fn declare_durable_fanout(
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

/// Waits up to `limit` for every job task to end, meanwhile still passing cancellations to the
/// running jobs and taking in their tickets (which their tasks must hand over to end). Returns
/// whether they all ended.
async fn wait_for_jobs(session: &mut Session, dispatch: &mut Dispatch, limit: Duration) -> bool {
    let Dispatch {
        jobs,
        table,
        finished_rx,
        ..
    } = dispatch;
    let all_ended = jobs.wait();
    let expired = tokio::time::sleep(limit);
    tokio::pin!(all_ended, expired);
    let mut cancels_open = true;
    loop {
        tokio::select! {
            biased;
            () = &mut all_ended => return true,
            () = &mut expired => return false,
            Some(ticket) = finished_rx.recv() => table.finished(ticket),
            cancel = session.cancels.next(), if cancels_open => match cancel {
                Some(Some(Ok(message))) => on_cancellation(table, &message),
                // The session is closing anyway; the jobs just stop hearing cancellations.
                _ => cancels_open = false,
            },
        }
    }
}

/// A message from the cancellation exchange: cancel the job if it runs here, and remember it
/// in case it is delivered later.
fn on_cancellation(table: &mut JobTable, message: &Delivery) {
    let Some(Cancellation { job_id, reason }) = Cancellation::from_properties(&message.properties)
    else {
        warn!("cancellation without a correlation_id; ignoring it");
        return;
    };
    let reason = reason.as_str().unwrap_or("unspecified");
    if table.cancel(&job_id) {
        info!(%job_id, reason, "cancelling a running job");
    } else {
        debug!(%job_id, reason, "cancellation for a job not running here; remembered");
    }
}

impl Session {
    /// Ends a lost session: its jobs stop, and the connection is closed if it still can be.
    async fn abandon(self) {
        self.abort_jobs.cancel();
        close_connection(&self.connection, "worker reconnecting").await;
    }
}

/// Waits for the event that ends the session, logging the others.
async fn next_connection_error(events: &mut BoxStream<'static, Event>) -> SessionLost {
    while let Some(event) = events.next().await {
        match event {
            Event::Error(error) => return SessionLost::Connection(error),
            Event::ConnectionBlocked(reason) => {
                warn!(%reason, "the broker blocked the connection; replies wait until it unblocks");
            }
            Event::ConnectionUnblocked => info!("the broker unblocked the connection"),
            _ => {}
        }
    }
    SessionLost::EventsEnded
}

async fn close_connection(connection: &Connection, reason: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    fn echo(builder: WorkerBuilder, method: &str) -> WorkerBuilder {
        builder.method(method, |request: Request| async move { Ok(request.params) })
    }

    #[test]
    fn build_names_each_queue_prefix_then_method() {
        let worker = echo(
            echo(Worker::builder(URI).queue_prefix("t1."), "echo"),
            "fib",
        )
        .build()
        .expect("valid configuration");
        assert_eq!(
            worker.queue_names().collect::<Vec<_>>(),
            ["t1.echo", "t1.fib"]
        );
    }

    #[test]
    fn build_refuses_a_bad_uri() {
        let built = echo(Worker::builder("http://nope"), "echo").build();
        assert!(
            matches!(built, Err(BuildError::InvalidUri { .. })),
            "{built:?}"
        );
    }

    #[test]
    fn build_refuses_zero_concurrency() {
        let built = echo(Worker::builder(URI).concurrency(0), "echo").build();
        assert!(
            matches!(built, Err(BuildError::ZeroConcurrency)),
            "{built:?}"
        );
    }

    #[test]
    fn build_refuses_a_worker_without_methods() {
        let built = Worker::builder(URI).build();
        assert!(matches!(built, Err(BuildError::NoMethods)), "{built:?}");
    }

    #[test]
    fn build_refuses_a_method_registered_twice() {
        let built = echo(echo(Worker::builder(URI), "echo"), "echo").build();
        assert!(
            matches!(&built, Err(BuildError::DuplicateMethod { method }) if method == "echo"),
            "{built:?}"
        );
    }

    #[test]
    fn build_refuses_an_empty_method_name() {
        let built = echo(Worker::builder(URI), "").build();
        assert!(
            matches!(built, Err(BuildError::EmptyMethodName)),
            "{built:?}"
        );
    }

    #[test]
    fn build_refuses_a_queue_name_over_255_bytes() {
        let prefix = "p".repeat(240);
        let method = "m".repeat(15);
        let fits = echo(Worker::builder(URI).queue_prefix(&prefix), &method).build();
        assert!(fits.is_ok(), "{fits:?}");
        let built = echo(
            Worker::builder(URI).queue_prefix(&prefix),
            &format!("{method}m"),
        )
        .build();
        assert!(
            matches!(built, Err(BuildError::QueueNameTooLong { len: 256, .. })),
            "{built:?}"
        );
    }

    #[test]
    fn build_refuses_a_prefix_leaving_no_room_for_the_cancel_exchange() {
        let fits = echo(Worker::builder(URI).queue_prefix("p".repeat(244)), "m").build();
        assert!(fits.is_ok(), "{fits:?}");
        let built = echo(Worker::builder(URI).queue_prefix("p".repeat(245)), "m").build();
        assert!(
            matches!(built, Err(BuildError::QueuePrefixTooLong { len: 245 })),
            "{built:?}"
        );
    }

    #[test]
    fn method_concurrency_becomes_that_consumers_prefetch() {
        let worker = echo(echo(Worker::builder(URI).concurrency(8), "echo"), "sleep")
            .method_concurrency("sleep", 2)
            .build()
            .expect("valid configuration");
        let prefetch: Vec<(&str, u16)> = worker
            .routes
            .iter()
            .map(|route| (&*route.method, route.prefetch))
            .collect();
        assert_eq!(prefetch, [("echo", 8), ("sleep", 2)]);
    }

    #[test]
    fn method_concurrency_above_the_worker_concurrency_is_lowered_to_it() {
        let worker = echo(Worker::builder(URI).concurrency(4), "sleep")
            .method_concurrency("sleep", 100)
            .build()
            .expect("valid configuration");
        assert_eq!(worker.routes[0].prefetch, 4);
    }

    #[test]
    fn build_refuses_zero_method_concurrency() {
        let built = echo(Worker::builder(URI), "sleep")
            .method_concurrency("sleep", 0)
            .build();
        assert!(
            matches!(&built, Err(BuildError::ZeroMethodConcurrency { method }) if method == "sleep"),
            "{built:?}"
        );
    }

    #[test]
    fn build_refuses_concurrency_for_an_unregistered_method() {
        let built = echo(Worker::builder(URI), "echo")
            .method_concurrency("slep", 2)
            .build();
        assert!(
            matches!(&built, Err(BuildError::UnknownMethodConcurrency { method }) if method == "slep"),
            "{built:?}"
        );
    }

    #[test]
    fn queues_are_priority_queues_up_to_9_unless_configured() {
        let worker = echo(Worker::builder(URI), "echo")
            .build()
            .expect("valid configuration");
        assert_eq!(worker.max_priority, Some(9));
        let worker = echo(Worker::builder(URI).max_priority(None), "echo")
            .build()
            .expect("valid configuration");
        assert_eq!(worker.max_priority, None);
    }

    #[test]
    fn quorum_queues_dead_letter_and_drop_the_priority() {
        let worker = echo(
            Worker::builder(URI)
                .queue_prefix("t1.")
                .queue_type(QueueType::Quorum { delivery_limit: 2 }),
            "echo",
        )
        .build()
        .expect("valid configuration");
        assert_eq!(
            worker
                .dead_letter_exchange
                .as_ref()
                .map(ShortString::as_str),
            Some("t1.wsmq.dead")
        );
        assert_eq!(
            worker.queue_arguments,
            contract::quorum_queue_arguments("t1.", 2)
        );
        let classic = echo(Worker::builder(URI), "echo")
            .build()
            .expect("valid configuration");
        assert_eq!(classic.queue_type, QueueType::Classic);
        assert_eq!(classic.dead_letter_exchange, None);
        assert_eq!(
            classic.queue_arguments,
            contract::method_queue_arguments(Some(9))
        );
    }

    #[test]
    fn build_refuses_the_reserved_amq_prefix() {
        let built = echo(Worker::builder(URI).queue_prefix("amq."), "echo").build();
        assert!(
            matches!(built, Err(BuildError::ReservedQueueName { .. })),
            "{built:?}"
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let worker = echo(Worker::builder("amqp://user:s3cret@host:5672/%2f"), "echo")
            .build()
            .expect("valid configuration");
        let shown = format!("{worker:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("host"), "{shown}");
    }
}
