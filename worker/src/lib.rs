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
//!     .method("echo", |req: Request| async move { Ok(req.params) })
//!     .method("fail", |_req: Request| async move {
//!         Err::<serde_json::Value, _>(RpcError::new(4000, "requested failure"))
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
//! keeps to it can serve methods (`tests/workers/pika_worker.py` is one in Python).
//!
//! ## Queues
//! The bridge publishes each call of method `m` as a job to the default exchange `""` with
//! routing key `<queue-prefix>m`, so the queue named `<queue-prefix>m` serves `m`. **Workers**
//! declare these queues: durable, nothing else, and no arguments (in lapin,
//! `QueueDeclareOptions { durable: true, ..Default::default() }` and an empty `FieldTable`).
//! The bridge never declares them; keep it that way, so there is one declaration to agree on.
//!
//! ## Jobs
//! - `correlation_id` and `message_id`: the job id (a hyphenated UUID);
//! - `reply_to`: the bridge's reply queue;
//! - `content_type`: `application/json`; `delivery_mode`: 2 (persistent);
//! - body: the call's JSON-RPC `params` as JSON (`null` when the call had none).
//!
//! ## Replies
//! Published to the default exchange `""` with routing key = the job's `reply_to`, the job's
//! `correlation_id`, `content_type` `application/json` and `delivery_mode` 2. The header
//! [`wsmq-status`](contract::STATUS_HEADER) (an AMQP long string) says what the body is:
//! - `"ok"`, or no such header: the body is the JSON result;
//! - `"error"`: the body is a JSON-RPC error object `{"code": <int>, "message": <string>,
//!   "data"?: <any>}`.
//!
//! ## Acknowledgement
//! - A job is acked only **after** the broker confirmed its reply (publisher confirms on the
//!   reply channel). If the broker nacks the reply, or the publish fails, the job is nacked
//!   with `requeue = true` and will be delivered again.
//! - A job without `reply_to` or `correlation_id` cannot be answered: it is logged at warn and
//!   acked.
//! - A job whose body is not valid JSON is answered with error `-32700` ("params are not valid
//!   JSON") and acked.
//! - Delivery is therefore at least once: a worker that dies after replying but before acking
//!   has its job delivered again, and [`Request::redelivered`] says so.
//!
//! ## Flow control
//! Each consumer's prefetch (`basic.qos`) is the worker's concurrency, and at most that many
//! handlers run at once, each on its own task, each acking its own job.
//!
//! # Behaviour of this SDK
//! - [`Worker::run`] supervises one connection: on any connection or channel error, or when a
//!   consumer is cancelled, it tears everything down and reconnects with capped exponential
//!   backoff and jitter (100 ms doubling to 5 s), redeclaring queues and consumers. lapin's own
//!   recovery is not used.
//! - On shutdown it cancels its consumers, lets the jobs in flight reply and ack within a grace
//!   period (10 s by default), closes the connection and returns.
//! - A panicking handler is answered with `-32603`, so a job cannot crash-loop a worker.

mod backoff;
pub mod contract;
mod error;
mod job;
mod lifecycle;
mod progress;
mod request;
mod worker;

pub use error::{BuildError, RpcError, WorkerError};
pub use progress::ProgressError;
pub use request::Request;
pub use worker::{
    DEFAULT_CONCURRENCY, DEFAULT_MAX_REPLY_BYTES, DEFAULT_SHUTDOWN_GRACE, Worker, WorkerBuilder,
    WorkerState,
};
