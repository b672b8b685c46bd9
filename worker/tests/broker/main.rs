//! The SDK against the real RabbitMQ (`WSMQ_AMQP_URL`, default the local broker): jobs and
//! cancellations are published the way the bridge does, and the replies and the queues are
//! checked.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use serde_json::{Value, json};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use wsmq_worker::{QueueType, Request, RpcError, Worker, WorkerBuilder, WorkerError, WorkerState};

/// Bound on every wait for the broker or the worker.
const WAIT: Duration = Duration::from_secs(10);

fn amqp_url() -> String {
    std::env::var("WSMQ_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A queue prefix no other test (or test run) uses.
fn unique_prefix(test: &str) -> String {
    format!("sdktest.{}.{test}.", std::process::id())
}

/// Deletes a test's method queues and its exchanges (cancellation, dead letters) when the test ends, passed or
/// failed: an assertion or a `?` that ends a test early must not leave its queues behind on the
/// shared broker. Declared right after the prefix, so it is dropped last, after the worker and
/// the test's own connection.
struct Cleanup {
    prefix: String,
    methods: Vec<String>,
}

impl Cleanup {
    fn on_drop(prefix: &str, methods: &[&str]) -> Self {
        Self {
            prefix: prefix.to_owned(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    async fn delete(prefix: &str, methods: &[String]) -> Result<()> {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .context("connecting to delete the test's queues")?;
        let channel = connection.create_channel().await?;
        for method in methods {
            channel
                .queue_delete(
                    format!("{prefix}{method}").into(),
                    QueueDeleteOptions::default(),
                )
                .await
                .with_context(|| format!("deleting the queue {prefix}{method}"))?;
        }
        channel
            .exchange_delete(
                format!("{prefix}wsmq.cancel").into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .context("deleting the cancellation exchange")?;
        // Declared by quorum-queue workers only; deleting an exchange that is not there is no
        // error to RabbitMQ, and this is the last step, so its failure is only reported.
        if let Err(e) = channel
            .exchange_delete(
                format!("{prefix}wsmq.dead").into(),
                ExchangeDeleteOptions::default(),
            )
            .await
        {
            eprintln!("[cleanup] {prefix}wsmq.dead: {e}");
        }
        let _ = connection.close(200, "cleaned up".into()).await;
        Ok(())
    }
}

impl Drop for Cleanup {
    /// Blocking (a `Drop` cannot await), on a thread and runtime of its own, bounded by [`WAIT`].
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let methods = std::mem::take(&mut self.methods);
        let deleted = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("a runtime to delete the test's queues")?;
            runtime.block_on(async {
                tokio::time::timeout(WAIT, Cleanup::delete(&prefix, &methods))
                    .await
                    .context("deleting the test's queues took too long")?
            })
        })
        .join();
        match deleted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("[cleanup] {}: {e:#}", self.prefix),
            Err(_) => eprintln!("[cleanup] {}: deleting its queues panicked", self.prefix),
        }
    }
}

/// A reply as the bridge would read it.
#[derive(Debug)]
struct Reply {
    correlation_id: Option<ShortString>,
    status: Option<AMQPValue>,
    content_type: Option<ShortString>,
    delivery_mode: Option<u8>,
    body: Value,
}

/// The bridge's side: publishes jobs (with confirms, so a published job is in its queue) and
/// cancellations, and reads replies from its own exclusive queue.
struct Bridge {
    connection: Connection,
    channel: Channel,
    reply_queue: ShortString,
    replies: Consumer,
    prefix: String,
}

impl Bridge {
    async fn connect(prefix: &str) -> Result<Self> {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .context("connecting the test bridge")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // As the bridge does, with the settings the worker uses too.
        channel
            .exchange_declare(
                format!("{prefix}wsmq.cancel").into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let reply_queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await?
            .name()
            .clone();
        let replies = channel
            .basic_consume(
                reply_queue.clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            connection,
            channel,
            reply_queue,
            replies,
            prefix: prefix.to_owned(),
        })
    }

    /// Publishes a job for `method` with `body`; `reply_to: false` leaves it unanswerable.
    async fn publish_raw(
        &self,
        method: &str,
        job_id: &str,
        body: &[u8],
        reply_to: bool,
    ) -> Result<()> {
        self.publish_with(method, job_id, body, reply_to, |properties| properties)
            .await
    }

    /// [`Bridge::publish_raw`], with the job's properties passed through `amend` (for a
    /// priority or a deadline), and waiting until the broker confirmed the job.
    async fn publish_with(
        &self,
        method: &str,
        job_id: &str,
        body: &[u8],
        reply_to: bool,
        amend: impl FnOnce(BasicProperties) -> BasicProperties,
    ) -> Result<()> {
        let mut properties = BasicProperties::default()
            .with_correlation_id(job_id.into())
            .with_message_id(job_id.into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if reply_to {
            properties = properties.with_reply_to(self.reply_queue.clone());
        }
        let queue = format!("{}{method}", self.prefix);
        let confirmation = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                amend(properties),
            )
            .await?
            .await?;
        ensure!(confirmation.is_ack(), "job {job_id} not confirmed");
        Ok(())
    }

    /// Publishes a job whose `wsmq-deadline` is `deadline`, as the bridge does.
    async fn publish_due(
        &self,
        method: &str,
        job_id: &str,
        params: &Value,
        deadline: SystemTime,
    ) -> Result<()> {
        let ms = deadline.duration_since(SystemTime::UNIX_EPOCH)?.as_millis();
        let mut headers = FieldTable::default();
        headers.insert(
            "wsmq-deadline".into(),
            AMQPValue::LongLongInt(i64::try_from(ms)?),
        );
        let body = serde_json::to_vec(params)?;
        self.publish_with(method, job_id, &body, true, |properties| {
            properties.with_headers(headers)
        })
        .await
    }

    /// Publishes a job with the AMQP `priority` property.
    async fn publish_prioritised(&self, method: &str, job_id: &str, priority: u8) -> Result<()> {
        self.publish_with(method, job_id, b"null", true, |properties| {
            properties.with_priority(priority)
        })
        .await
    }

    /// Broadcasts the cancellation of `job_id` on `<prefix>wsmq.cancel`, as the bridge does.
    async fn cancel(&self, job_id: &str, reason: &str) -> Result<()> {
        let mut headers = FieldTable::default();
        headers.insert("wsmq-reason".into(), AMQPValue::LongString(reason.into()));
        let properties = BasicProperties::default()
            .with_correlation_id(job_id.into())
            .with_headers(headers);
        let confirmation = self
            .channel
            .basic_publish(
                format!("{}wsmq.cancel", self.prefix).into(),
                "".into(),
                BasicPublishOptions::default(),
                b"",
                properties,
            )
            .await?
            .await?;
        ensure!(
            confirmation.is_ack(),
            "cancellation of {job_id} not confirmed"
        );
        Ok(())
    }

    async fn publish(&self, method: &str, job_id: &str, params: &Value) -> Result<()> {
        self.publish_raw(method, job_id, &serde_json::to_vec(params)?, true)
            .await
    }

    async fn next_reply(&mut self) -> Result<Reply> {
        let delivery = tokio::time::timeout(WAIT, self.replies.next())
            .await
            .context("no reply in time")?
            .context("reply consumer ended")??;
        delivery.ack(BasicAckOptions::default()).await?;
        let properties = &delivery.properties;
        Ok(Reply {
            correlation_id: properties.correlation_id().clone(),
            status: properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("wsmq-status").cloned()),
            content_type: properties.content_type().clone(),
            delivery_mode: *properties.delivery_mode(),
            body: serde_json::from_slice(&delivery.data)?,
        })
    }

    /// Jobs ready in the queue of `method` (not counting those delivered and unacked).
    async fn ready_jobs(&self, method: &str) -> Result<u32> {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = format!("{}{method}", self.prefix);
        let queue = self
            .channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await?;
        Ok(queue.message_count())
    }

    /// Declares the queue of `method` durable with `arguments`, on a channel of its own (a
    /// refusal closes the channel); `Ok` says the queue has exactly these arguments.
    async fn redeclare(&self, method: &str, arguments: FieldTable) -> Result<()> {
        let channel = self.connection.create_channel().await?;
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let queue = format!("{}{method}", self.prefix);
        channel
            .queue_declare(queue.into(), options, arguments)
            .await?;
        Ok(())
    }

    async fn delete_queues(&self, methods: &[&str]) -> Result<()> {
        for method in methods {
            let queue = format!("{}{method}", self.prefix);
            self.channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

/// Starts the worker on its own task and waits until it consumes.
async fn start(
    builder: WorkerBuilder,
) -> Result<(JoinHandle<Result<(), WorkerError>>, CancellationToken)> {
    let (run, shutdown, _state) = start_watched(builder).await?;
    Ok((run, shutdown))
}

/// [`start`], also returning the worker's state, already seen as `Ready`.
async fn start_watched(
    builder: WorkerBuilder,
) -> Result<(
    JoinHandle<Result<(), WorkerError>>,
    CancellationToken,
    watch::Receiver<WorkerState>,
)> {
    let worker = builder.build()?;
    let mut state = worker.state();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(worker.run(shutdown.clone()));
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == WorkerState::Ready))
        .await
        .context("worker not ready in time")??;
    Ok((run, shutdown, state))
}

async fn stop(run: JoinHandle<Result<(), WorkerError>>, shutdown: CancellationToken) -> Result<()> {
    shutdown.cancel();
    tokio::time::timeout(WAIT, run)
        .await
        .context("worker did not stop in time")???;
    Ok(())
}

fn status(text: &str) -> Option<AMQPValue> {
    Some(AMQPValue::LongString(text.into()))
}

mod deadlines_and_cancellations;
mod queues;
mod quorum;
mod serving;
