//! [`WorkerBuilder`]: a worker's settings, checked by [`WorkerBuilder::build`] before any
//! connection is made.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use lapin::{types::ShortString, uri::AMQPUri};
use serde_json::Value;
use tokio::sync::watch;

use super::{Route, Worker, WorkerState};
use crate::{
    contract::{self, MAX_QUEUE_NAME_LEN, QueueType},
    error::{BuildError, RpcError},
    request::{self, Handler, Request},
};

/// Default for [`WorkerBuilder::concurrency`].
pub const DEFAULT_CONCURRENCY: u16 = 16;
/// Default for [`WorkerBuilder::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default for [`WorkerBuilder::max_reply_bytes`]: far below RabbitMQ's message size limit, so
/// the broker never refuses a reply.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

impl Worker {
    /// Starts configuring a worker that connects to the broker at `amqp_uri`
    /// (`amqp://user:password@host:port/vhost`).
    pub fn builder(amqp_uri: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            uris: vec![amqp_uri.into()],
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
}

/// Configures a [`Worker`]; made by [`Worker::builder`].
pub struct WorkerBuilder {
    /// The builder's URI first, then the fallbacks in the order given.
    uris: Vec<String>,
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
    /// Another broker to connect to, after those given before it (the nodes of one RabbitMQ
    /// cluster): the worker connects to the first that answers, in order, and on losing it
    /// goes to the next; it waits (with backoff) only when none has answered in a whole round.
    ///
    /// A malformed URI among them is named in a warning at [`build`](Self::build) and skipped;
    /// only when none is well-formed does `build` fail.
    #[must_use]
    pub fn fallback_uri(mut self, amqp_uri: impl Into<String>) -> Self {
        self.uris.push(amqp_uri.into());
        self
    }

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
        let uris = parse_uris(&self.uris)?;
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
            uris,
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

/// The well-formed URIs, in order; a malformed one is named (without its password) in a
/// warning and skipped. None well-formed: the first one's error.
fn parse_uris(uris: &[String]) -> Result<Vec<AMQPUri>, BuildError> {
    let mut parsed = Vec::with_capacity(uris.len());
    let mut first_error = None;
    for (position, text) in uris.iter().enumerate() {
        match text.parse::<AMQPUri>() {
            Ok(uri) => parsed.push(uri),
            Err(reason) => {
                if uris.len() > 1 {
                    tracing::warn!(
                        position = position + 1,
                        node = %wsmq_service::node_name(text),
                        %reason,
                        "malformed broker URI skipped"
                    );
                }
                first_error.get_or_insert(reason);
            }
        }
    }
    match first_error {
        Some(reason) if parsed.is_empty() => Err(BuildError::InvalidUri { reason }),
        _ => Ok(parsed),
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
    fn fallback_uris_keep_their_order_and_malformed_ones_are_skipped() {
        let worker = echo(
            Worker::builder("amqp://h1:5681/%2f")
                .fallback_uri("nonsense")
                .fallback_uri("amqp://h3:5683/%2f"),
            "echo",
        )
        .build()
        .expect("two usable URIs");
        assert_eq!(worker.nodes(), ["h1:5681", "h3:5683"]);
        let built = echo(
            Worker::builder("http://nope").fallback_uri("nonsense"),
            "echo",
        )
        .build();
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
