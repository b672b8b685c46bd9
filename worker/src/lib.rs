//! wsmq worker SDK: serve JSON-RPC methods from RabbitMQ queues for the wsmq bridge.
//!
//! ```no_run
//! use wsmq_worker::{Request, RpcError, Worker};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let worker = Worker::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .queue_prefix("t123.")
//!     .concurrency(32)
//!     .method_concurrency("render", 2)
//!     .method("echo", |req: Request| async move { Ok(req.params) })
//!     .method("fail", |_req: Request| async move {
//!         Err::<serde_json::Value, _>(RpcError::new(4000, "requested failure"))
//!     })
//!     .method("render", |req: Request| async move {
//!         for page in 1..=3 {
//!             tokio::select! {
//!                 () = req.cancelled() => return Err(RpcError::cancelled()),
//!                 () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
//!             }
//!             req.progress(serde_json::json!({"page": page})).await.map_err(RpcError::internal)?;
//!         }
//!         Ok(serde_json::json!({"pages": 3}))
//!     })
//!     .build()?;
//! let shutdown = CancellationToken::new();
//! worker.run(shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! # The AMQP contract
//!
//! This is the whole agreement between the bridge and a worker; a worker in any language that
//! keeps to it can serve methods (`tests/workers/pika_worker.py` is one in Python). Its names,
//! values and encodings have one owner, the `wsmq-amqp-proto` crate, which the bridge uses too
//! and which [`contract`] re-exports whole; what follows describes it from a worker's side and
//! says how this SDK keeps it.
//!
//! ## Queues
//! The bridge publishes each call of method `m` as a job to the default exchange `""` with
//! routing key `<queue-prefix>m`, so the queue named `<queue-prefix>m` serves `m`. **Workers**
//! declare these queues: durable, nothing else, and one argument, `x-max-priority` = 9 (in
//! lapin, `QueueDeclareOptions { durable: true, ..Default::default() }` and
//! [`contract::method_queue_arguments`]`(Some(9))`, which sends 9 as an AMQP unsigned byte;
//! RabbitMQ compares integer arguments by value, so a client sending a long int agrees). Every
//! worker of a queue must declare it alike, or the broker refuses the declaration; a queue
//! declared before priorities existed (no arguments) must be deleted once, or its workers run
//! with [`WorkerBuilder::max_priority`]`(None)`. The bridge never declares the method queues;
//! keep it that way, so there is one declaration to agree on.
//!
//! ## Quorum queues and poison jobs
//! A job that kills every worker taking it is redelivered from a classic queue forever. With
//! [`WorkerBuilder::queue_type`]`(`[`QueueType::Quorum`]` { delivery_limit: N })` a worker
//! declares the method queues as quorum queues instead, with these arguments and no others
//! ([`contract::quorum_queue_arguments`]):
//! - `x-queue-type` = `quorum`;
//! - `x-delivery-limit` = N (any AMQP integer type);
//! - `x-dead-letter-exchange` = `<queue-prefix>wsmq.dead`;
//! - `x-dead-letter-routing-key` = `wsmq.delivery-limit.N`.
//!
//! and, before them, declares the fanout exchange
//! [`<queue-prefix>wsmq.dead`](contract::DEAD_LETTER_EXCHANGE): durable, no arguments (the bridge
//! declares it alike). RabbitMQ counts every return of a job to its queue (a worker crashed, its
//! connection or channel closed with the job unacked, or it nacked the job) and, when a job is
//! returned for the (N+1)-th time, i.e. after N + 1 deliveries, dead-letters it to that
//! exchange instead of delivering it again. The bridge consumes `<queue-prefix>wsmq.dead` and
//! answers the caller `-32004 "job failed"` with `data` `{"attempts": N + 1, "method": ...,
//! "reason": "delivery_limit"}` (a job that dead-letters because its `expiration` passed is
//! dropped quietly: its caller had its `-32001` already). RabbitMQ does not tell a dead job's
//! delivery count (the dead-lettered message carries no `x-delivery-count`, and `x-death`'s
//! `count` counts dead-letterings), so the routing key carries the limit.
//!
//! The trade-off: RabbitMQ 3.10's quorum queues have **no priorities**, so no `x-max-priority`
//! is declared and a job's `priority` is ignored. A crash also returns every other job the
//! worker held unacked (up to its prefetch), and each of those returns counts too.
//!
//! ## Jobs
//! - `correlation_id` and `message_id`: the job id (a hyphenated UUID);
//! - `reply_to`: the bridge's reply queue;
//! - `content_type`: `application/json`; `delivery_mode`: 2 (persistent);
//! - `priority` (optional): 0 to 9; RabbitMQ delivers a queue's higher-priority jobs first;
//! - header `wsmq-method` (long string): the method;
//! - header [`wsmq-deadline`](contract::DEADLINE_HEADER): when the caller stops waiting, in
//!   milliseconds since the Unix epoch, an AMQP integer (the bridge sends a long-long int;
//!   this SDK reads any integer type, a decimal string, or a float). The `expiration` property
//!   carries the milliseconds left at publication, so that RabbitMQ drops a job nobody took in
//!   time;
//! - header [`wsmq-caller`](contract::CALLER_HEADER) (long string, optional): the identity the
//!   gateway authenticated the caller as; [`Request::caller`] holds it;
//! - body: the call's JSON-RPC `params` as JSON (`null` when the call had none).
//!
//! A job whose deadline has passed when it is delivered is acked **without running and
//! without a reply**: the caller has already been answered `-32001` "timeout". An unreadable
//! `wsmq-deadline` is logged at warn and the job runs without a deadline.
//!
//! ## Replies
//! Published to the default exchange `""` with routing key = the job's `reply_to`, the job's
//! `correlation_id`, `content_type` `application/json` and `delivery_mode` 2. The header
//! [`wsmq-status`](contract::STATUS_HEADER) (an AMQP long string) says what the body is:
//! - `"ok"`, or no such header: the body is the JSON result;
//! - `"error"`: the body is a JSON-RPC error object `{"code": <int>, "message": <string>,
//!   "data"?: <any>}`;
//! - `"progress"`: a progress report, any JSON value; the job's final reply is still to come.
//!   A job's reports are published on the same channel as its reply, each confirmed, in the
//!   order the handler made them and all before the reply, so they reach the reply queue in
//!   that order ([`Request::progress`]).
//!
//! ## Cancellation
//! The bridge broadcasts cancellations on the fanout exchange
//! [`<queue-prefix>wsmq.cancel`](contract::CANCEL_EXCHANGE): durable, type `fanout`, no
//! arguments (the bridge and every worker declare it with exactly these settings). A
//! cancellation has `correlation_id` = the job id, an empty body and the header
//! [`wsmq-reason`](contract::REASON_HEADER) = `"cancelled"` (the caller gave up) or
//! `"timeout"` (the deadline passed), an AMQP long string. Each worker process declares its
//! own exclusive, auto-delete, server-named queue, binds it to the exchange with routing key
//! `""`, and consumes it without acks (anew on every reconnection). On a cancellation:
//! - a job running on this worker has its [cancellation token](Request::cancellation)
//!   cancelled;
//! - either way the id joins the worker's last 4096 cancelled ids (oldest forgotten first), so
//!   that the job, if it is delivered later, is acked without running and without a reply.
//!
//! A job that ends after its token was cancelled, by a cancellation or by its deadline passing
//! while it runs, is acked and **not** replied to: nobody waits for it, and the bridge would
//! drop the reply. Cancellation is cooperative: the handler is awaited until it returns, and
//! should watch [`Request::cancelled`] to return early.
//!
//! ## Acknowledgement
//! - A job is acked only **after** the broker confirmed its reply (publisher confirms on the
//!   reply channel). If the broker nacks the reply, or the publish fails, the job is nacked
//!   with `requeue = true` and will be delivered again.
//! - Acks are batched: each method is consumed on a channel of its own, and whenever the
//!   delivery loop has nothing else to do it sends one `basic.ack` with `multiple = true` per
//!   channel, up to the highest delivery tag below which every job is settled. A job not yet
//!   settled is never covered; a job settled but not yet acked when the connection is lost is
//!   delivered again (and answered again: the bridge keeps the first answer).
//! - A job without `reply_to` or `correlation_id` cannot be answered: it is logged at warn and
//!   acked.
//! - A job whose body is not valid JSON is answered with error `-32700` ("params are not valid
//!   JSON") and acked.
//! - Delivery is therefore at least once: a worker that dies after replying but before acking
//!   has its job delivered again, and [`Request::redelivered`] says so.
//!
//! ## Flow control
//! Each method consumer's prefetch (`basic.qos`) is the worker's concurrency, or the method's
//! own [`method_concurrency`](WorkerBuilder::method_concurrency) when it has one (at most the
//! worker's). At most `concurrency` handlers run at once over all methods, and at most a
//! method's own concurrency of that method, each on its own task. A
//! small prefetch also keeps priorities meaningful: jobs not yet delivered are the ones the
//! broker can still reorder.
//!
//! # Behaviour of this SDK
//! - [`Worker::run`] supervises one connection: on any connection or channel error, or when a
//!   consumer is cancelled, it tears everything down and reconnects with capped exponential
//!   backoff and jitter (100 ms doubling to 5 s), redeclaring the cancellation exchange, its
//!   own cancellation queue and binding, the method queues and the consumers. lapin's own
//!   recovery is not used.
//! - On shutdown it cancels its method consumers, lets the jobs in flight reply and ack within
//!   a grace period (10 s by default; cancellations still reach them meanwhile), closes the
//!   connection and returns.
//! - A panicking handler is answered with `-32603`, so a job cannot crash-loop a worker.

pub mod contract;
mod error;
mod job;
mod lifecycle;
mod progress;
mod request;
mod worker;

pub use contract::QueueType;
pub use error::{BuildError, RpcError, WorkerError};
pub use progress::ProgressError;
pub use request::Request;
pub use worker::{
    DEFAULT_CONCURRENCY, DEFAULT_MAX_REPLY_BYTES, DEFAULT_SHUTDOWN_GRACE, Worker, WorkerBuilder,
    WorkerState,
};
