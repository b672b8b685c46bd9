//! `amqp` and `amqp-durable` modes: the same calls as a direct AMQP RPC client, the way an
//! application would write it with lapin, without wsmq.
//!
//! Each caller has a channel and its own reply queue, and publishes the job to the method's
//! queue (`prefix + method`, the queue the same worker serves) with `reply_to` and a
//! `correlation_id`.
//!
//! - `amqp` (plain) is the typical RPC client: an exclusive, server-named reply queue consumed
//!   without acks, jobs published transient and without confirms.
//! - `amqp-durable` promises what wsmq promises: jobs are persistent, published `mandatory`
//!   with a per-message TTL (wsmq's deadline) and their publisher confirms awaited (a returned
//!   job is an error, as -32601 is through wsmq); the reply queue is durable and each reply is
//!   acked after it is read (one `basic.ack` per reply, not waited for, as most clients do).
//!   A call ends when both its reply and its confirm have arrived. Against it, the gateway's
//!   ratio is wsmq's own overhead; against `amqp`, the price of the guarantees as well.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};

use wsmq_amqp_proto::{CONTENT_TYPE, DELIVERY_MODE_PERSISTENT, ReplyStatus};

use crate::gateway::DRAIN;
use crate::stats::{LaneStats, Window};

/// The per-message TTL `amqp-durable` jobs carry, as wsmq's carry the call's deadline.
const JOB_TTL: Duration = Duration::from_secs(30);

/// Unacked replies RabbitMQ may push to one `amqp-durable` caller. A caller never has more
/// replies outstanding than calls in flight, so this only has to be above its share.
const DURABLE_PREFETCH: u16 = 1024;

/// What a caller promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guarantees {
    /// Transient jobs, no confirms, an exclusive reply queue without acks.
    Plain,
    /// Persistent `mandatory` jobs with confirms awaited, a durable reply queue, manual acks.
    Durable,
}

/// One caller: its channel, reply queue and consumer.
pub(crate) struct Caller {
    channel: Channel,
    reply_queue: ShortString,
    consumer: Consumer,
    guarantees: Guarantees,
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

/// A confirm in flight, with the call it belongs to.
type PendingConfirm = BoxFuture<'static, (u64, lapin::Result<Confirmation>)>;

/// Where one call stands: it ends when both its reply and (for `amqp-durable`) its confirm
/// have arrived.
struct Call {
    started: Instant,
    confirmed: bool,
    replied: Option<Instant>,
}

impl Caller {
    /// Opens caller number `index`; durable reply queues are named after `prefix`, this
    /// process and `index` (and deleted when the caller is done).
    pub(crate) async fn open(
        connection: &Connection,
        guarantees: Guarantees,
        prefix: &str,
        index: usize,
    ) -> Result<Self> {
        let channel = connection
            .create_channel()
            .await
            .context("cannot open a channel")?;
        let (name, options) = match guarantees {
            Guarantees::Plain => (
                String::new(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
            ),
            Guarantees::Durable => {
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .context("cannot enable publisher confirms")?;
                channel
                    .basic_qos(DURABLE_PREFETCH, BasicQosOptions::default())
                    .await
                    .context("cannot set the prefetch")?;
                (
                    format!("{prefix}bench-reply.{}.{index}", std::process::id()),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                )
            }
        };
        let queue = channel
            .queue_declare(name.as_str().into(), options, FieldTable::default())
            .await
            .context("cannot declare a reply queue")?;
        let reply_queue = queue.name().clone();
        let consumer = channel
            .basic_consume(
                reply_queue.clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: guarantees == Guarantees::Plain,
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
            guarantees,
        })
    }

    /// Publishes call `id`; for `amqp-durable`, its confirm joins `confirms`.
    async fn publish(
        &self,
        target: &Target,
        id: u64,
        confirms: &mut FuturesUnordered<PendingConfirm>,
    ) -> Result<()> {
        let mut props = BasicProperties::default()
            .with_reply_to(self.reply_queue.clone())
            .with_correlation_id(id.to_string().into())
            .with_content_type(CONTENT_TYPE.into());
        let mut options = BasicPublishOptions::default();
        if self.guarantees == Guarantees::Durable {
            props = props
                .with_message_id(id.to_string().into())
                .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
                .with_expiration(JOB_TTL.as_millis().to_string().into());
            options.mandatory = true;
        }
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                target.queue.as_str().into(),
                options,
                target.params.as_bytes(),
                props,
            )
            .await
            .context("publish failed")?;
        if self.guarantees == Guarantees::Durable {
            confirms.push(Box::pin(async move { (id, confirm.await) }));
        }
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
        let mut calls: HashMap<u64, Call> = HashMap::with_capacity(share);
        let mut confirms: FuturesUnordered<PendingConfirm> = FuturesUnordered::new();
        let durable = self.guarantees == Guarantees::Durable;
        let mut next_id = 0u64;
        let result = async {
            for _ in 0..share {
                next_id += 1;
                calls.insert(next_id, Call::new(!durable));
                self.publish(target, next_id, &mut confirms).await?;
            }
            let drain_deadline = tokio::time::Instant::from_std(window.end + DRAIN);
            while !calls.is_empty() {
                let event = tokio::time::timeout_at(drain_deadline, async {
                    tokio::select! {
                        Some((id, confirmed)) = confirms.next() => Event::Confirm(id, confirmed),
                        delivery = self.consumer.next() => Event::Reply(delivery),
                    }
                });
                let Ok(event) = event.await else {
                    bail!("{} calls unanswered {DRAIN:?} after the run", calls.len());
                };
                let now = Instant::now();
                let id = match event {
                    Event::Confirm(id, confirmed) => {
                        match confirmed.context("publisher confirm failed")? {
                            Confirmation::Ack(None) => {}
                            Confirmation::Ack(Some(_)) => {
                                calls.remove(&id);
                                stats.failed(1, || format!("call {id} returned unroutable"));
                                continue;
                            }
                            other => bail!("call {id} not confirmed: {other:?}"),
                        }
                        let Some(call) = calls.get_mut(&id) else {
                            continue;
                        };
                        call.confirmed = true;
                        id
                    }
                    Event::Reply(delivery) => {
                        let delivery = delivery
                            .context("the reply consumer ended")?
                            .context("reply consumer failed")?;
                        if durable {
                            // One ack per reply, sent without waiting for lapin to write it
                            // (as most AMQP clients' basic_ack is).
                            let ack = self
                                .channel
                                .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                                .now_or_never();
                            if let Some(Err(e)) = ack {
                                bail!("reply ack failed: {e}");
                            }
                        }
                        let props = &delivery.properties;
                        let id = props
                            .correlation_id()
                            .as_ref()
                            .and_then(|id| id.as_str().parse::<u64>().ok());
                        // A result (`ok`, or no status) is an answer; an error, a progress
                        // report or anything unreadable is a failed call.
                        let status = ReplyStatus::from_headers(props.headers().as_ref());
                        let ok = status == Some(ReplyStatus::Ok);
                        let Some(id) = id.filter(|id| calls.contains_key(id)) else {
                            stats.failed(1, || format!("reply to no call: {id:?}"));
                            continue;
                        };
                        if !ok {
                            calls.remove(&id);
                            stats.failed(1, || format!("reply with status {status:?}"));
                            continue;
                        }
                        if let Some(call) = calls.get_mut(&id) {
                            call.replied = Some(now);
                        }
                        id
                    }
                };
                let done = calls.get(&id).is_some_and(Call::done);
                if !done {
                    continue;
                }
                if let Some(call) = calls.remove(&id) {
                    stats.answered(&window, call.started, now);
                }
                if window.open(now) {
                    next_id += 1;
                    calls.insert(next_id, Call::new(!durable));
                    self.publish(target, next_id, &mut confirms).await?;
                }
            }
            if share == 0 {
                tokio::time::sleep_until(tokio::time::Instant::from_std(window.end)).await;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            let lost = calls.len() as u64;
            stats.failed(lost.max(1), || format!("{e:#}"));
        }
        if durable {
            // The durable reply queue outlives the channel; it is the bench's, so it goes.
            let delete = self
                .channel
                .queue_delete(self.reply_queue.clone(), QueueDeleteOptions::default());
            let _ = tokio::time::timeout(Duration::from_secs(1), delete).await;
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.channel.close(200, "bench done".into()),
        )
        .await;
        stats
    }
}

/// What a caller's loop waits for next.
enum Event {
    Confirm(u64, lapin::Result<Confirmation>),
    Reply(Option<lapin::Result<lapin::message::Delivery>>),
}

impl Call {
    /// A new call; `confirmed` from the start when no confirm is awaited.
    fn new(confirmed: bool) -> Self {
        Self {
            started: Instant::now(),
            confirmed,
            replied: None,
        }
    }

    fn done(&self) -> bool {
        self.confirmed && self.replied.is_some()
    }
}
