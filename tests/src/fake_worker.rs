//! A worker played by the test itself, to see exactly what the bridge publishes and to send
//! replies no well-behaved worker would (bodies that are not JSON, replies to notifications,
//! results after the deadline, progress after the result); and a listener on the cancellation
//! broadcast that workers hear.

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wsmq_amqp_proto::{
    CALLER_HEADER, CONTENT_TYPE, DEADLINE_HEADER, DELIVERY_MODE_PERSISTENT, METHOD_HEADER,
    REASON_HEADER, STATUS_HEADER,
};

use crate::{RECV_TIMEOUT, System, broker};

/// Jobs received but not yet looked at by the test. When full, the consumer task waits, which
/// only delays the next delivery's ack: tests look at a handful of jobs.
const JOB_CHANNEL_CAPACITY: usize = 64;

/// Cancellations heard but not yet looked at by the test; when full the listener waits.
const CANCEL_CHANNEL_CAPACITY: usize = 64;

/// One job as the worker received it.
#[derive(Debug, Clone)]
pub struct FakeJob {
    pub body: Vec<u8>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    /// The `wsmq-method` header, if present and a string.
    pub method_header: Option<String>,
    /// The `wsmq-caller` header, if present and a string.
    pub caller_header: Option<String>,
    /// The `wsmq-deadline` header, if present and an integer.
    pub deadline_header: Option<i64>,
    /// The AMQP `expiration` property (milliseconds, as text).
    pub expiration: Option<String>,
    /// The AMQP `priority` property.
    pub priority: Option<u8>,
}

impl FakeJob {
    /// The body as (lossy) text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the fake worker sends back for a job: `None` sends nothing.
pub type ReplyFn = Box<dyn Fn(&FakeJob) -> Option<Vec<u8>> + Send + Sync>;

/// A consumer on the test's queue for one method, replying with [`ReplyFn`].
pub struct FakeWorker {
    jobs: mpsc::Receiver<FakeJob>,
    task: JoinHandle<()>,
    /// In confirm mode, for the replies the test sends itself ([`Self::send`]).
    replies: Channel,
    conn: Connection,
}

impl FakeWorker {
    /// Declares the durable queue for `method` (tracked for cleanup), consumes it, and answers
    /// every job that has a `reply_to` with `reply(job)` (same `correlation_id`, no headers).
    pub async fn start(
        system: &mut System,
        method: &str,
        reply: impl Fn(&FakeJob) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> Result<Self> {
        let queue = system.queue_for(method);
        system.track_queue(queue.clone());
        let conn = broker::connect(system.amqp_url()).await?;
        let channel = conn
            .create_channel()
            .await
            .context("cannot open a channel")?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot declare {queue}"))?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume {queue}"))?;
        let (tx, jobs) = mpsc::channel(JOB_CHANNEL_CAPACITY);
        let reply: ReplyFn = Box::new(reply);
        let task = tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let Ok(delivery) = delivery else { return };
                let props = &delivery.properties;
                let job = FakeJob {
                    body: delivery.data.clone(),
                    reply_to: props.reply_to().as_ref().map(|s| s.as_str().to_owned()),
                    correlation_id: props
                        .correlation_id()
                        .as_ref()
                        .map(|s| s.as_str().to_owned()),
                    method_header: string_header(props.headers().as_ref(), METHOD_HEADER),
                    caller_header: string_header(props.headers().as_ref(), CALLER_HEADER),
                    deadline_header: integer_header(props.headers().as_ref(), DEADLINE_HEADER),
                    expiration: props.expiration().as_ref().map(|s| s.as_str().to_owned()),
                    priority: *props.priority(),
                };
                if let (Some(reply_to), Some(body)) = (&job.reply_to, reply(&job)) {
                    let mut props = BasicProperties::default();
                    if let Some(id) = &job.correlation_id {
                        props = props.with_correlation_id(id.as_str().into());
                    }
                    let published = channel
                        .basic_publish(
                            "".into(),
                            reply_to.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            props,
                        )
                        .await;
                    if let Err(e) = published {
                        eprintln!("[fake worker] cannot publish a reply: {e}");
                        return;
                    }
                }
                if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                    eprintln!("[fake worker] cannot ack: {e}");
                    return;
                }
                if tx.send(job).await.is_err() {
                    return;
                }
            }
        });
        let replies = conn
            .create_channel()
            .await
            .context("cannot open a reply channel")?;
        replies
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("cannot put the reply channel in confirm mode")?;
        Ok(Self {
            jobs,
            task,
            replies,
            conn,
        })
    }

    /// Publishes `body` to `job`'s `reply_to` with its `correlation_id` and, if given, the
    /// `wsmq-status` header, and waits until RabbitMQ has confirmed it: once this returns, the
    /// message is in the reply queue ahead of anything published later.
    pub async fn send(&self, job: &FakeJob, status: Option<&str>, body: &[u8]) -> Result<()> {
        let reply_to = job.reply_to.as_deref().context("the job has no reply_to")?;
        let id = job
            .correlation_id
            .as_deref()
            .context("the job has no correlation_id")?;
        let mut props = BasicProperties::default()
            .with_correlation_id(id.into())
            .with_content_type(CONTENT_TYPE.into())
            .with_delivery_mode(DELIVERY_MODE_PERSISTENT);
        if let Some(status) = status {
            let mut headers = FieldTable::default();
            headers.insert(
                STATUS_HEADER.into(),
                AMQPValue::LongString(status.as_bytes().to_vec().into()),
            );
            props = props.with_headers(headers);
        }
        let confirm = self
            .replies
            .basic_publish(
                "".into(),
                reply_to.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .context("cannot publish a reply")?
            .await
            .context("no confirm for a reply")?;
        if !confirm.is_ack() {
            bail!("RabbitMQ did not ack the reply: {confirm:?}");
        }
        Ok(())
    }

    /// The next job received, within [`RECV_TIMEOUT`].
    pub async fn next_job(&mut self) -> Result<FakeJob> {
        tokio::time::timeout(RECV_TIMEOUT, self.jobs.recv())
            .await
            .with_context(|| format!("the fake worker got no job within {RECV_TIMEOUT:?}"))?
            .ok_or_else(|| anyhow!("the fake worker's consumer ended"))
    }

    /// Stops consuming and closes the connection.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.conn.close(200, "fake worker done".into()).await;
    }
}

/// One cancellation broadcast, as a worker hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    /// The cancelled job's id.
    pub correlation_id: Option<String>,
    /// The `wsmq-reason` header (`cancelled` or `timeout`).
    pub reason: Option<String>,
}

/// A queue of the test's own bound to the cancellation exchange: hears what every worker hears.
pub struct CancelListener {
    cancellations: mpsc::Receiver<Cancellation>,
    task: JoinHandle<()>,
    conn: Connection,
}

impl CancelListener {
    /// Binds an exclusive, server-named queue (gone with the connection) to the system's
    /// cancellation exchange, which the bridge declares when it starts.
    pub async fn start(system: &System) -> Result<Self> {
        let exchange = system.cancel_exchange();
        let conn = broker::connect(system.amqp_url()).await?;
        let channel = conn
            .create_channel()
            .await
            .context("cannot open a channel")?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .context("cannot declare a queue for cancellations")?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot bind to the exchange {exchange}"))?;
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .context("cannot consume cancellations")?;
        let (tx, cancellations) = mpsc::channel(CANCEL_CHANNEL_CAPACITY);
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let props = &delivery.properties;
                let cancellation = Cancellation {
                    correlation_id: props
                        .correlation_id()
                        .as_ref()
                        .map(|s| s.as_str().to_owned()),
                    reason: string_header(props.headers().as_ref(), REASON_HEADER),
                };
                if tx.send(cancellation).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            cancellations,
            task,
            conn,
        })
    }

    /// The next cancellation broadcast, within [`RECV_TIMEOUT`].
    pub async fn next(&mut self) -> Result<Cancellation> {
        tokio::time::timeout(RECV_TIMEOUT, self.cancellations.recv())
            .await
            .with_context(|| format!("no cancellation broadcast within {RECV_TIMEOUT:?}"))?
            .ok_or_else(|| anyhow!("the cancellation consumer ended"))
    }

    /// Stops listening; the queue goes with the connection.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.conn.close(200, "cancel listener done".into()).await;
    }
}

/// A header's value if it is a string.
fn string_header(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A header's value if it is an integer (of any AMQP integer type).
fn integer_header(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    match headers?.inner().get(name)? {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}
