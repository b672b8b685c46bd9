//! The worker, and the supervising loop that keeps one broker connection serving. Its builder
//! is in `builder.rs`, the set-up of one broker connection in `connection.rs`, the serve loop
//! and the drain at shutdown in `serve.rs`.
//!
//! `Worker::run` owns the only broker connection. Given several brokers (the nodes of a
//! cluster) it connects to the first that answers, in order, and on losing it goes to the next;
//! it backs off only after a whole round of them has failed. Each pass of its loop opens a session
//! (connection, reply channel in confirm mode, consume channel, queues, consumers), serves it
//! until the connection fails or shutdown is asked for, then tears it down; a failed session is
//! followed by a backoff delay and a fresh one. Jobs run as tasks on a [`TaskTracker`], each
//! holding one of `concurrency` slots.
//!
//! The same loop is the only owner of the [`JobTable`]: it admits each delivery (skipping the
//! cancelled and the expired), cancels running jobs when their cancellation is broadcast, and
//! hears from each job task through a bounded channel when it ends.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use lapin::{
    ErrorKind,
    types::{FieldTable, ShortString},
    uri::AMQPUri,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{contract::QueueType, error::WorkerError, request::Handler};
use wsmq_service::{AfterFailure, Backoff, ErrorChain, Failover};

mod acks;
mod builder;
mod connection;
mod serve;

pub use builder::{
    DEFAULT_CONCURRENCY, DEFAULT_MAX_REPLY_BYTES, DEFAULT_SHUTDOWN_GRACE, WorkerBuilder,
};
use connection::{CONNECT_TIMEOUT, SetupError};
use serve::{Dispatch, Served};

/// First delay before reconnecting; doubled per failed attempt.
const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

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

/// A method, the queue it is served from, and its consumer's prefetch.
#[derive(Debug)]
struct Route {
    method: Arc<str>,
    queue: ShortString,
    prefetch: u16,
}

/// A worker serving a set of methods from their queues; see the crate docs for the contract.
pub struct Worker {
    /// The brokers to try, in order (at least one).
    uris: Vec<AMQPUri>,
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
            .field("nodes", &self.nodes())
            .field("queues", &self.queue_names().collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .field("max_priority", &self.max_priority)
            .field("queue_type", &self.queue_type)
            .finish_non_exhaustive()
    }
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

/// `host:port` of a broker URI, for logs.
fn node_of(uri: &AMQPUri) -> String {
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

impl Worker {
    /// The brokers this worker connects to, as `host:port`, in the order it tries them.
    pub fn nodes(&self) -> Vec<String> {
        self.uris.iter().map(node_of).collect()
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
        let mut failover = Failover::new(self.uris.len());
        let outcome = loop {
            self.set_state(WorkerState::Connecting);
            let Some(uri) = self.uris.get(failover.current()) else {
                // `build` keeps at least one URI; this cannot happen.
                break Ok(());
            };
            let node = node_of(uri);
            let opened = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                opened = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(uri, dispatch.next_session())) => {
                    opened.unwrap_or(Err(SetupError::TimedOut(CONNECT_TIMEOUT)))
                }
            };
            match opened {
                Ok(mut session) => {
                    let failed_over = failover.connected();
                    info!(
                        %node,
                        host = %uri.authority.host,
                        vhost = %uri.vhost,
                        queues = ?self.queue_names().collect::<Vec<_>>(),
                        concurrency = self.concurrency,
                        queue_type = ?self.queue_type,
                        max_priority = ?self.max_priority,
                        failed_over,
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
                            warn!(%node, error = %ErrorChain(&lost), "lost the broker session; reconnecting");
                            failover.lost();
                        }
                    }
                }
                Err(error) => {
                    if let Some(e) = error.lapin_error().filter(|e| is_unrecoverable(e)) {
                        break Err(WorkerError::Unrecoverable(e.clone()));
                    }
                    if self.uris.len() == 1 {
                        warn!(%node, error = %ErrorChain(&error), "could not open a broker session; retrying");
                        failover.failed();
                    } else {
                        warn!(%node, error = %ErrorChain(&error), "cannot use this broker node");
                        if failover.failed() == AfterFailure::TryNext {
                            continue;
                        }
                        warn!(
                            nodes = self.uris.len(),
                            "no broker node answers; retrying after backoff"
                        );
                    }
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
}
