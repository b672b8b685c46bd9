//! The kit's own connection to RabbitMQ: it publishes jobs the way the bridge does (to show
//! what only a hand-made job can: one already past its deadline, a body that is not JSON), reads
//! their replies on a queue of its own, and looks at the worker's queues (consumers, arguments).
//!
//! Every name and header comes from `wsmq-amqp-proto`, the contract's one owner.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wsmq_amqp_proto::{JobMessage, queue_name};

/// Replies read from the kit's reply queue and not yet looked at. When full the consumer task
/// waits (the broker keeps the rest): a check publishes a handful of jobs.
const REPLY_CHANNEL_CAPACITY: usize = 64;

/// One message that arrived on the kit's reply queue.
#[derive(Debug, Clone)]
pub(crate) struct DirectReply {
    pub(crate) correlation_id: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) delivery_mode: Option<u8>,
    pub(crate) headers: Option<FieldTable>,
    pub(crate) body: Vec<u8>,
}

/// The kit's connection: a confirm-mode channel for its jobs and a consumer of its reply queue.
pub(crate) struct Broker {
    url: String,
    conn: Connection,
    publisher: Channel,
    reply_queue: String,
    replies: mpsc::Receiver<DirectReply>,
    /// Replies read while waiting for another one, oldest first.
    held: Vec<DirectReply>,
    consumer: JoinHandle<()>,
}

impl Broker {
    /// Connects, and declares and consumes an exclusive, server-named reply queue (gone with
    /// the connection).
    pub(crate) async fn connect(url: &str) -> Result<Self> {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .context("cannot connect to RabbitMQ (is it running? see --amqp)")?;
        let publisher = conn
            .create_channel()
            .await
            .context("cannot open a channel")?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("cannot put the channel in confirm mode")?;
        let consume = conn
            .create_channel()
            .await
            .context("cannot open a channel")?;
        let queue = consume
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
            .context("cannot declare the kit's reply queue")?;
        let reply_queue = queue.name().as_str().to_owned();
        let mut consumer = consume
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
            .context("cannot consume the kit's reply queue")?;
        let (tx, replies) = mpsc::channel(REPLY_CHANNEL_CAPACITY);
        let consumer = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let props = &delivery.properties;
                let reply = DirectReply {
                    correlation_id: props
                        .correlation_id()
                        .as_ref()
                        .map(|s| s.as_str().to_owned()),
                    content_type: props.content_type().as_ref().map(|s| s.as_str().to_owned()),
                    delivery_mode: *props.delivery_mode(),
                    headers: props.headers().clone(),
                    body: delivery.data,
                };
                if tx.send(reply).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            url: url.to_owned(),
            conn,
            publisher,
            reply_queue,
            replies,
            held: Vec::new(),
            consumer,
        })
    }

    /// Publishes a job for `method` under `prefix` as the bridge would, with the kit's reply
    /// queue as `reply_to`, a deadline `deadline_in` from now (in the past when negative) and
    /// an `expiration` of `expires_in`; waits for RabbitMQ's confirm.
    pub(crate) async fn publish_job(
        &self,
        prefix: &str,
        method: &str,
        id: &str,
        body: &[u8],
        deadline_in: i64,
        expires_in: Duration,
    ) -> Result<()> {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_millis();
        let now_ms = i64::try_from(now_ms).context("the clock is out of range")?;
        let deadline_unix_ms = u64::try_from(now_ms.saturating_add(deadline_in)).unwrap_or(0);
        let job = JobMessage {
            id,
            method,
            reply_to: &self.reply_queue,
            deadline_unix_ms,
            remaining_ms: u64::try_from(expires_in.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            caller: None,
            priority: None,
        };
        self.publish(&queue_name(prefix, method), body, job.properties())
            .await
            .with_context(|| format!("cannot publish a {method} job"))
    }

    async fn publish(&self, routing_key: &str, body: &[u8], props: BasicProperties) -> Result<()> {
        let confirm = self
            .publisher
            .basic_publish(
                "".into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?
            .await?;
        if !confirm.is_ack() {
            bail!("RabbitMQ did not confirm it: {confirm:?}");
        }
        Ok(())
    }

    /// Waits until a reply to job `id` that `wanted` accepts arrives (replies to it that it
    /// refuses, such as progress reports, are kept too), and returns it.
    pub(crate) async fn reply_to(
        &mut self,
        id: &str,
        until: Instant,
        wanted: impl Fn(&DirectReply) -> bool,
    ) -> Result<DirectReply> {
        let matches = |r: &DirectReply| r.correlation_id.as_deref() == Some(id) && wanted(r);
        loop {
            if let Some(reply) = self.held.iter().find(|r| matches(r)) {
                return Ok(reply.clone());
            }
            let reply = tokio::time::timeout_at(until, self.replies.recv())
                .await
                .map_err(|_| anyhow!("no reply to job {id} in time"))?
                .context("the kit's reply consumer ended")?;
            self.held.push(reply);
        }
    }

    /// Every reply to job `id` received so far.
    pub(crate) fn replies_so_far(&mut self, id: &str) -> Vec<DirectReply> {
        while let Ok(reply) = self.replies.try_recv() {
            self.held.push(reply);
        }
        self.held
            .iter()
            .filter(|r| r.correlation_id.as_deref() == Some(id))
            .cloned()
            .collect()
    }

    /// How many consumers `queue` has (a passive declare on a channel of its own, since a
    /// missing queue closes the channel it is asked on).
    pub(crate) async fn consumer_count(&self, queue: &str) -> Result<u32> {
        let channel = self
            .conn
            .create_channel()
            .await
            .context("cannot open a channel")?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "done".into()).await;
        Ok(declared
            .with_context(|| format!("queue {queue} does not exist"))?
            .consumer_count())
    }

    /// Declares `queue` durable with `arguments`, on a channel of its own: RabbitMQ refuses it
    /// (406 PRECONDITION_FAILED) when the queue exists with other settings.
    pub(crate) async fn declare_queue(&self, queue: &str, arguments: FieldTable) -> Result<()> {
        let channel = self
            .conn
            .create_channel()
            .await
            .context("cannot open a channel")?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await;
        let _ = channel.close(200, "done".into()).await;
        declared.map(drop).map_err(anyhow::Error::from)
    }

    /// Declares the durable fanout exchange `exchange` without arguments (as the contract says
    /// for the cancellation and dead-letter exchanges), on a channel of its own.
    pub(crate) async fn declare_fanout(&self, exchange: &str) -> Result<()> {
        let channel = self
            .conn
            .create_channel()
            .await
            .context("cannot open a channel")?;
        let declared = channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "done".into()).await;
        declared.map_err(anyhow::Error::from)
    }

    /// Deletes the named queues and exchanges, whether they exist or not.
    pub(crate) async fn delete(&self, queues: &[String], exchanges: &[String]) -> Result<()> {
        // A connection of its own: the kit's may be closing when this runs.
        let conn = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .context("cannot connect to RabbitMQ to clean up")?;
        let channel = conn
            .create_channel()
            .await
            .context("cannot open a channel")?;
        for queue in queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .with_context(|| format!("cannot delete queue {queue}"))?;
        }
        for exchange in exchanges {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .with_context(|| format!("cannot delete exchange {exchange}"))?;
        }
        let _ = conn.close(200, "clean-up done".into()).await;
        Ok(())
    }

    /// Closes the connection (its reply queue goes with it).
    pub(crate) async fn close(self) {
        self.consumer.abort();
        let _ = self.conn.close(200, "conformance run done".into()).await;
    }
}
