//! A worker played by the test itself, to see exactly what the bridge publishes and to send
//! replies no well-behaved worker would (bodies that are not JSON, replies to notifications).

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{RECV_TIMEOUT, System, broker};

/// Jobs received but not yet looked at by the test. When full, the consumer task waits, which
/// only delays the next delivery's ack: tests look at a handful of jobs.
const JOB_CHANNEL_CAPACITY: usize = 64;

/// One job as the worker received it.
#[derive(Debug, Clone)]
pub struct FakeJob {
    pub body: Vec<u8>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    /// The `wsmq-method` header, if present and a string.
    pub method_header: Option<String>,
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
                    method_header: props.headers().as_ref().and_then(|h| {
                        match h.inner().get("wsmq-method") {
                            Some(AMQPValue::LongString(s)) => {
                                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                            }
                            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
                            _ => None,
                        }
                    }),
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
        Ok(Self { jobs, task, conn })
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
