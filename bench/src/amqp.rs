//! `amqp` mode, the baseline: the same calls as a direct AMQP RPC client would make them.
//!
//! This is RabbitMQ's documented RPC pattern as an application would write it with lapin,
//! without wsmq: each caller has a channel and an exclusive, server-named reply queue it
//! consumes without acks, and publishes the job to the method's queue (`prefix + method`, the
//! queue the same worker serves) with `reply_to` and a `correlation_id`. Like a typical RPC
//! client it publishes without confirms and without persistence; wsmq does both (see README,
//! Performance), so the ratio shows the full price of wsmq's guarantees.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};

use crate::gateway::DRAIN;
use crate::stats::{LaneStats, Window};

/// One caller: its channel, reply queue and consumer.
pub(crate) struct Caller {
    channel: Channel,
    reply_queue: ShortString,
    consumer: Consumer,
}

/// What every caller publishes.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The method's queue, as the worker declared it.
    pub(crate) queue: String,
    pub(crate) params: String,
}

pub(crate) async fn connect(url: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name("wsmq-bench".into());
    Connection::connect(url, props)
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {url}"))
}

impl Caller {
    pub(crate) async fn open(connection: &Connection) -> Result<Self> {
        let channel = connection
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
            .context("cannot declare a reply queue")?;
        let reply_queue = queue.name().clone();
        let consumer = channel
            .basic_consume(
                reply_queue.clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .context("cannot consume the reply queue")?;
        Ok(Self {
            channel,
            reply_queue,
            consumer,
        })
    }

    async fn publish(&self, target: &Target, id: u64) -> Result<()> {
        let props = BasicProperties::default()
            .with_reply_to(self.reply_queue.clone())
            .with_correlation_id(id.to_string().into())
            .with_content_type("application/json".into());
        self.channel
            .basic_publish(
                "".into(),
                target.queue.as_str().into(),
                BasicPublishOptions::default(),
                target.params.as_bytes(),
                props,
            )
            .await
            .context("publish failed")?;
        Ok(())
    }

    /// Runs `share` calls in flight until the window closes, then waits for the rest.
    pub(crate) async fn drive(
        mut self,
        share: usize,
        target: &Target,
        window: Window,
    ) -> LaneStats {
        let mut stats = LaneStats::new();
        let mut sent: HashMap<u64, Instant> = HashMap::with_capacity(share);
        let mut next_id = 0u64;
        let result = async {
            for _ in 0..share {
                next_id += 1;
                sent.insert(next_id, Instant::now());
                self.publish(target, next_id).await?;
            }
            let drain_deadline = tokio::time::Instant::from_std(window.end + DRAIN);
            while !sent.is_empty() {
                let Ok(delivery) =
                    tokio::time::timeout_at(drain_deadline, self.consumer.next()).await
                else {
                    bail!("{} calls unanswered {DRAIN:?} after the run", sent.len());
                };
                let delivery = delivery
                    .context("the reply consumer ended")?
                    .context("reply consumer failed")?;
                let now = Instant::now();
                let props = &delivery.properties;
                let id = props
                    .correlation_id()
                    .as_ref()
                    .and_then(|id| id.as_str().parse::<u64>().ok());
                let started = id.and_then(|id| sent.remove(&id));
                let status = props
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("wsmq-status").cloned());
                // `ok` (or no header) is a result; `error` and anything else count as errors.
                let ok = match &status {
                    None => true,
                    Some(AMQPValue::LongString(s)) => s.as_bytes() == b"ok",
                    Some(_) => false,
                };
                match (started, ok) {
                    (Some(started), true) => stats.answered(&window, started, now),
                    (_, false) => stats.failed(1, || format!("reply with status {status:?}")),
                    (None, true) => stats.failed(1, || format!("reply to no call: {id:?}")),
                }
                if started.is_some() && window.open(now) {
                    next_id += 1;
                    sent.insert(next_id, Instant::now());
                    self.publish(target, next_id).await?;
                }
            }
            if share == 0 {
                tokio::time::sleep_until(tokio::time::Instant::from_std(window.end)).await;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            let lost = sent.len() as u64;
            stats.failed(lost.max(1), || format!("{e:#}"));
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.channel.close(200, "bench done".into()),
        )
        .await;
        stats
    }
}
