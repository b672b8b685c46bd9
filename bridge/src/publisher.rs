//! Publishing jobs: a pool of confirm-mode channels, each with at most one publish unconfirmed.
//!
//! Why a pool and not one channel with many publishes in flight: RabbitMQ acknowledges
//! publishes in batches (`multiple = true`), and lapin attaches a returned (unroutable) message
//! to whichever confirm of the batch it completes first. With several jobs in flight on one
//! channel, "no worker serves this method" could be reported for the wrong call, and the
//! unroutable call counted as published and never answered. With one job in flight per
//! channel, the return that precedes a confirm can only be that job's. Concurrency comes from
//! the number of channels instead.
//!
//! The supervisor owns the connection, so it alone creates channels: the pool asks it for a
//! replacement when a channel dies.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};
use wsmq_amqp_proto::{Cancellation, JobMessage};
use wsmq_ipc_proto::{CancelReason, Job, JobId, Rejection};

/// Longest wait for RabbitMQ to confirm one publish.
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The channels of one broker connection. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Publishers {
    idle_tx: flume::Sender<Channel>,
    idle_rx: flume::Receiver<Channel>,
    /// Asks the supervisor for a new channel in place of a dead one.
    replace: mpsc::Sender<()>,
}

/// Opens a channel in confirm mode.
pub(crate) async fn open_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

impl Publishers {
    /// A pool of `size` channels; the receiver gets one message per channel to replace.
    pub(crate) async fn open(
        connection: &Connection,
        size: usize,
    ) -> lapin::Result<(Self, mpsc::Receiver<()>)> {
        let (idle_tx, idle_rx) = flume::bounded(size);
        let (replace, replace_rx) = mpsc::channel(size);
        let pool = Self {
            idle_tx,
            idle_rx,
            replace,
        };
        for _ in 0..size {
            pool.give_back(open_channel(connection).await?);
        }
        Ok((pool, replace_rx))
    }

    /// Puts a (new or used) channel into the pool.
    pub(crate) fn give_back(&self, channel: Channel) {
        // The pool holds at most `size` channels and at most `size` exist, so it has room.
        if self.idle_tx.try_send(channel).is_err() {
            debug!("publisher pool full; extra channel dropped");
        }
    }

    /// Publishes one job and waits for RabbitMQ's confirm.
    ///
    /// `Ok` means the message is safely in a queue; the error says how the call must be answered.
    pub(crate) async fn publish(
        &self,
        prefix: &str,
        reply_queue: &str,
        job: &Job,
    ) -> Result<(), Rejection> {
        // The gateway refuses reserved methods first; this is defence in depth, so that no IPC
        // peer can publish to a reply, dead-letter or broker queue.
        if wsmq_ipc_proto::is_reserved_method(&job.method) {
            warn!(job = %job.id, method = %job.method, "job for a reserved method name refused");
            return Err(Rejection::InvalidMethod);
        }
        let Some(key) = wsmq_amqp_proto::routing_key(prefix, &job.method) else {
            warn!(job = %job.id, method = %job.method, "job whose routing key is too long or a reserved queue name refused");
            return Err(Rejection::InvalidMethod);
        };
        let started = std::time::Instant::now();
        let channel = self.take().await?;
        let outcome = publish_on(&channel, &key, reply_queue, job).await;
        self.put_back(channel);
        crate::metrics::published(&outcome, started.elapsed());
        outcome
    }

    /// Broadcasts a cancellation to every worker (fanout), and waits for its confirm.
    pub(crate) async fn cancel(
        &self,
        exchange: &str,
        job: JobId,
        reason: CancelReason,
    ) -> Result<(), Rejection> {
        let channel = self.take().await?;
        let props = Cancellation {
            job_id: job.to_string(),
            reason: match reason {
                CancelReason::Cancelled => wsmq_amqp_proto::CancelReason::Cancelled,
                CancelReason::Timeout => wsmq_amqp_proto::CancelReason::Timeout,
            },
        }
        .properties();
        let confirm = channel
            .basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions::default(),
                b"",
                props,
            )
            .await;
        let outcome = match confirm {
            Ok(confirm) => match confirm.await {
                Ok(c) if c.is_ack() => Ok(()),
                _ => Err(Rejection::Nacked),
            },
            Err(_) => Err(Rejection::BrokerUnavailable),
        };
        self.put_back(channel);
        crate::metrics::cancellation_broadcast(outcome.is_ok());
        outcome
    }

    async fn take(&self) -> Result<Channel, Rejection> {
        self.idle_rx
            .recv_async()
            .await
            .map_err(|_| Rejection::BrokerUnavailable)
    }

    fn put_back(&self, channel: Channel) {
        if channel.status().connected() {
            self.give_back(channel);
        } else {
            debug!("publishing channel closed; asking for a replacement");
            let _ = self.replace.try_send(());
        }
    }
}

async fn publish_on(
    channel: &Channel,
    key: &str,
    reply_queue: &str,
    job: &Job,
) -> Result<(), Rejection> {
    let remaining_ms = job.deadline_unix_ms.saturating_sub(unix_ms_now());
    if remaining_ms == 0 {
        return Err(Rejection::Expired);
    }
    let id = job.id.to_string();
    let props = JobMessage {
        id: &id,
        method: &job.method,
        reply_to: reply_queue,
        deadline_unix_ms: job.deadline_unix_ms,
        // RabbitMQ discards the job if no worker has taken it by then.
        remaining_ms,
        caller: job.caller.as_deref(),
        priority: job.priority,
    }
    .properties();
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = channel
        .basic_publish("".into(), key.into(), options, job.params.as_bytes(), props)
        .await
        .map_err(|e| {
            debug!(job = %job.id, error = %e, "publish failed");
            Rejection::BrokerUnavailable
        })?;
    // A confirm can hang while the connection dies; the job then counts as not taken and the
    // gateway sends it again (at least once).
    let Ok(confirmed) = tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await else {
        debug!(job = %job.id, timeout = ?CONFIRM_TIMEOUT, "publish confirm timed out");
        return Err(Rejection::BrokerUnavailable);
    };
    match confirmed {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(returned))) => {
            // One publish in flight on this channel: the return is this job's. Check anyway.
            let returned_id = returned.delivery.properties.correlation_id().clone();
            if returned_id.as_ref().map(|s| s.as_str()) != Some(id.as_str()) {
                error!(job = %job.id, ?returned_id, "returned message belongs to another job");
            }
            debug!(job = %job.id, code = returned.reply_code, text = %returned.reply_text, "job returned unroutable");
            Err(Rejection::NoRoute)
        }
        Ok(Confirmation::Nack(_)) => Err(Rejection::Nacked),
        Ok(Confirmation::NotRequested) => {
            // Cannot happen on a confirm_select channel; never report an unconfirmed job as safe.
            error!(job = %job.id, "publish channel is not in confirm mode");
            Err(Rejection::BrokerUnavailable)
        }
        Err(e) => {
            debug!(job = %job.id, error = %e, "publish confirm failed");
            Err(Rejection::BrokerUnavailable)
        }
    }
}
