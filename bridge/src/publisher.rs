//! Publishing jobs: a few confirm-mode channels, each carrying many publishes in flight.
//!
//! Each channel is owned by one lane task; [`Publishers`] hands requests to the lanes in turn
//! over bounded queues. A lane starts every publish as soon as it has it (so lapin's I/O
//! thread takes many frames per wake-up) and settles the confirms as RabbitMQ sends them,
//! which it does in `multiple` batches: one channel carries hundreds of jobs in flight, and
//! RabbitMQ has one channel process per lane to run instead of one per job in flight.
//!
//! Unroutable jobs (no queue serves the method) come back as a `basic.return`, which RabbitMQ
//! sends before the ack that covers the job ("basic.returns must be sent before confirms",
//! `rabbit_channel.erl`). lapin hands a returned message to the *first* confirm of the batch it
//! is resolving, not necessarily to the returned job's own (lapin's `acknowledgement.rs`). So a
//! lane never trusts which confirm a return rides on: every job carries its id as `message_id`,
//! and the return names the job it belongs to. The confirm carrying a return is resolved no
//! later than the returned job's own, and a lane settles its confirms in the order lapin resolves
//! them (one `FuturesUnordered`, whose wake-up queue is first in, first out), so by the time a
//! job's own confirm is settled, any return for it has been seen.
//!
//! The supervisor owns the connection, so it alone creates channels: a lane whose channel dies
//! asks it for a new one.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};
use wsmq_amqp_proto::{Cancellation, JobMessage};
use wsmq_ipc_proto::{CancelReason, Job, JobId, Json, Rejection};

/// Longest wait for RabbitMQ to confirm one publish.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests waiting for one lane to start them. The gateway link bounds the publishes in flight
/// (`--max-unconfirmed`), so this only smooths hand-offs; when full, the publishing task waits.
const LANE_QUEUE_CAPACITY: usize = 256;

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A lane's request for a new channel in place of its dead one.
pub(crate) type ChannelRequest = oneshot::Sender<Channel>;

/// The publishing lanes of one broker connection. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Publishers {
    lanes: Arc<[mpsc::Sender<Request>]>,
    next: Arc<AtomicUsize>,
}

/// Opens a channel in confirm mode.
pub(crate) async fn open_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// One message for a lane to publish, and where its outcome goes.
#[derive(Debug)]
struct Request {
    message: Message,
    done: oneshot::Sender<Result<(), Rejection>>,
}

/// What a lane publishes.
#[derive(Debug)]
enum Message {
    /// A job to the default exchange, `mandatory`: a return means no queue serves the method.
    Job {
        id: JobId,
        routing_key: String,
        /// The client's params as the gateway sent them.
        payload: Json,
        properties: BasicProperties,
    },
    /// A cancellation broadcast to the fanout exchange.
    Cancel {
        exchange: String,
        properties: BasicProperties,
    },
}

impl Publishers {
    /// `size` lanes, each with its channel; the receiver gets a request per channel to replace.
    pub(crate) async fn open(
        connection: &Connection,
        size: usize,
    ) -> lapin::Result<(Self, mpsc::Receiver<ChannelRequest>)> {
        let (replace, replace_rx) = mpsc::channel(size.max(1));
        let mut lanes = Vec::with_capacity(size);
        for _ in 0..size.max(1) {
            let channel = open_channel(connection).await?;
            let (tx, rx) = mpsc::channel(LANE_QUEUE_CAPACITY);
            tokio::spawn(Lane::new(rx, replace.clone()).run(channel));
            lanes.push(tx);
        }
        let publishers = Self {
            lanes: lanes.into(),
            next: Arc::new(AtomicUsize::new(0)),
        };
        Ok((publishers, replace_rx))
    }

    /// Publishes one job and waits for RabbitMQ's confirm.
    ///
    /// `Ok` means the message is safely in a queue; the error says how the call must be answered.
    pub(crate) async fn publish(
        &self,
        prefix: &str,
        reply_queue: &str,
        job: Job,
    ) -> Result<(), Rejection> {
        // The gateway refuses reserved methods first; this is defence in depth, so that no IPC
        // peer can publish to a reply, dead-letter or broker queue.
        if wsmq_ipc_proto::is_reserved_method(&job.method) {
            warn!(job = %job.id, method = %job.method, "job for a reserved method name refused");
            return Err(Rejection::InvalidMethod);
        }
        let Some(routing_key) = wsmq_amqp_proto::routing_key(prefix, &job.method) else {
            warn!(job = %job.id, method = %job.method, "job whose routing key is too long or a reserved queue name refused");
            return Err(Rejection::InvalidMethod);
        };
        let started = Instant::now();
        let outcome = match job_message(routing_key, reply_queue, job) {
            Ok(message) => self.send(message).await,
            Err(rejection) => Err(rejection),
        };
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
        let properties = Cancellation {
            job_id: job.to_string(),
            reason: match reason {
                CancelReason::Cancelled => wsmq_amqp_proto::CancelReason::Cancelled,
                CancelReason::Timeout => wsmq_amqp_proto::CancelReason::Timeout,
            },
        }
        .properties();
        let outcome = self
            .send(Message::Cancel {
                exchange: exchange.to_owned(),
                properties,
            })
            .await;
        crate::metrics::cancellation_broadcast(outcome.is_ok());
        outcome
    }

    /// Hands `message` to the next lane and waits for its outcome.
    async fn send(&self, message: Message) -> Result<(), Rejection> {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let (done, outcome) = oneshot::channel();
        self.lanes[lane]
            .send(Request { message, done })
            .await
            .map_err(|_| Rejection::BrokerUnavailable)?;
        // A lane that ends (its connection died) drops what it has not settled.
        outcome.await.unwrap_or(Err(Rejection::BrokerUnavailable))
    }
}

/// The AMQP message for a job: persistent, with the job's id as `correlation_id` and
/// `message_id` (a return is matched to its job by it), its deadline as the per-message TTL.
fn job_message(routing_key: String, reply_queue: &str, job: Job) -> Result<Message, Rejection> {
    let remaining_ms = job.deadline_unix_ms.saturating_sub(unix_ms_now());
    if remaining_ms == 0 {
        return Err(Rejection::Expired);
    }
    let id = job.id.to_string();
    let properties = JobMessage {
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
    Ok(Message::Job {
        id: job.id,
        routing_key,
        payload: job.params,
        properties,
    })
}

/// How a lane's channel ended.
enum Ended {
    /// Every [`Publishers`] handle is gone: the connection is being replaced or closed.
    Closed,
    /// The channel died; the lane needs a new one.
    ChannelDied,
}

/// One confirm-mode channel and the publishes in flight on it.
struct Lane {
    requests: mpsc::Receiver<Request>,
    replace: mpsc::Sender<ChannelRequest>,
    /// Lane-local number of the next publish.
    next_seq: u64,
    /// Publishes started and not yet settled, by number.
    unsettled: BTreeSet<u64>,
    /// Jobs in flight on this lane (a return names one of them).
    in_flight: HashSet<JobId>,
    /// Jobs in flight that a return has named, before their own confirm was settled.
    returned: HashSet<JobId>,
    /// Publishes whose confirm carried another job's return: their own return may ride on a
    /// confirm of the same batch settled after them, so they wait until every publish that was
    /// in flight then is settled. (RabbitMQ sends each return right before its own ack, so
    /// this is a safety net that should never hold anything.)
    deferred: Vec<Deferred>,
}

struct Deferred {
    /// Settled once no publish numbered up to this is unsettled.
    until: u64,
    job: Option<JobId>,
    outcome: Result<(), Rejection>,
    done: oneshot::Sender<Result<(), Rejection>>,
}

/// A publish that has ended: what it was, how it ended, and who waits for the outcome.
struct Settled {
    seq: u64,
    job: Option<JobId>,
    confirmed: Result<Confirmation, Rejection>,
    done: oneshot::Sender<Result<(), Rejection>>,
}

impl Lane {
    fn new(requests: mpsc::Receiver<Request>, replace: mpsc::Sender<ChannelRequest>) -> Self {
        Self {
            requests,
            replace,
            next_seq: 0,
            unsettled: BTreeSet::new(),
            in_flight: HashSet::new(),
            returned: HashSet::new(),
            deferred: Vec::new(),
        }
    }

    async fn run(mut self, mut channel: Channel) {
        loop {
            match self.serve(&channel).await {
                Ended::Closed => return,
                Ended::ChannelDied => match self.replacement().await {
                    Some(new) => channel = new,
                    None => return,
                },
            }
        }
    }

    /// Publishes on `channel` until it dies or every handle is gone, and settles what is in
    /// flight before returning.
    async fn serve(&mut self, channel: &Channel) -> Ended {
        let mut publishes = FuturesUnordered::new();
        let mut open = true;
        loop {
            let accepting = open && channel.status().connected();
            tokio::select! {
                // Settling first frees the link's permits before more is taken in.
                biased;
                Some(settled) = publishes.next() => self.settle(settled),
                request = self.requests.recv(), if accepting => match request {
                    Some(request) => {
                        publishes.push(self.start(channel, request));
                        // Everything already queued starts now: lapin's I/O thread then
                        // writes the frames of many publishes per wake-up.
                        while let Ok(request) = self.requests.try_recv() {
                            publishes.push(self.start(channel, request));
                        }
                    }
                    None => open = false,
                },
                else => {
                    self.settle_deferred(true);
                    return if open { Ended::ChannelDied } else { Ended::Closed };
                }
            }
        }
    }

    /// Starts one publish; the future ends when its confirm is in (or it failed).
    fn start<'c>(
        &mut self,
        channel: &'c Channel,
        request: Request,
    ) -> impl Future<Output = Settled> + 'c {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unsettled.insert(seq);
        let Request { message, done } = request;
        let (job, exchange, routing_key, payload, properties, mandatory) = match message {
            Message::Job {
                id,
                routing_key,
                payload,
                properties,
            } => (
                Some(id),
                String::new(),
                routing_key,
                payload,
                properties,
                true,
            ),
            Message::Cancel {
                exchange,
                properties,
            } => (
                None,
                exchange,
                String::new(),
                Json::default(),
                properties,
                false,
            ),
        };
        if let Some(id) = job {
            self.in_flight.insert(id);
        }
        async move {
            let options = BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            };
            let confirmed = async {
                let confirm = channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        options,
                        payload.as_bytes(),
                        properties,
                    )
                    .await
                    .map_err(|e| {
                        debug!(?job, error = %e, "publish failed");
                        Rejection::BrokerUnavailable
                    })?;
                // A confirm can hang while the connection dies; the job then counts as not
                // taken and the gateway sends it again (at least once).
                match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                    Ok(Ok(confirmation)) => Ok(confirmation),
                    Ok(Err(e)) => {
                        debug!(?job, error = %e, "publish confirm failed");
                        Err(Rejection::BrokerUnavailable)
                    }
                    Err(_) => {
                        debug!(?job, timeout = ?CONFIRM_TIMEOUT, "publish confirm timed out");
                        Err(Rejection::BrokerUnavailable)
                    }
                }
            }
            .await;
            Settled {
                seq,
                job,
                confirmed,
                done,
            }
        }
    }

    /// Takes in one ended publish: notes the return it carries (whoever's it is), then
    /// answers its own job unless it must wait (see [`Lane::deferred`]).
    fn settle(&mut self, settled: Settled) {
        let Settled {
            seq,
            job,
            confirmed,
            done,
        } = settled;
        let (outcome, carried) = match confirmed {
            Err(rejection) => (Err(rejection), None),
            Ok(Confirmation::Ack(returned)) => (Ok(()), returned),
            Ok(Confirmation::Nack(returned)) => (Err(Rejection::Nacked), returned),
            Ok(Confirmation::NotRequested) => {
                // Cannot happen on a confirm_select channel; never report an unconfirmed job
                // as safe.
                error!(?job, "publish channel is not in confirm mode");
                (Err(Rejection::BrokerUnavailable), None)
            }
        };
        self.unsettled.remove(&seq);
        let foreign = carried.is_some_and(|message| self.note_return(&message) != job);
        if foreign {
            self.deferred.push(Deferred {
                until: self.next_seq.saturating_sub(1),
                job,
                outcome,
                done,
            });
        } else {
            self.answer(job, outcome, done);
        }
        if !self.deferred.is_empty() {
            self.settle_deferred(false);
        }
    }

    /// Records a returned message against the job it names; returns that job.
    fn note_return(&mut self, message: &BasicReturnMessage) -> Option<JobId> {
        let named = message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| id.as_str().parse::<JobId>().ok());
        match named {
            Some(id) if self.in_flight.contains(&id) => {
                debug!(job = %id, code = message.reply_code, text = %message.reply_text, "job returned unroutable");
                self.returned.insert(id);
            }
            _ => {
                // Only if RabbitMQ sent a return after the confirm of its job: that job has
                // already been reported as published.
                error!(job = ?named, code = message.reply_code, text = %message.reply_text, "returned message names no job in flight");
            }
        }
        named
    }

    /// Answers `job`: a return seen for it turns a confirmed publish into "no route".
    fn answer(
        &mut self,
        job: Option<JobId>,
        outcome: Result<(), Rejection>,
        done: oneshot::Sender<Result<(), Rejection>>,
    ) {
        let outcome = match job {
            Some(id) => {
                self.in_flight.remove(&id);
                match (self.returned.remove(&id), outcome) {
                    (true, Ok(())) => Err(Rejection::NoRoute),
                    (_, outcome) => outcome,
                }
            }
            None => outcome,
        };
        // The publishing task may have gone (its link ended); the outcome then has no one
        // to tell.
        let _ = done.send(outcome);
    }

    /// Answers the deferred publishes whose batch has been seen in full (all of them when
    /// `all`, as the channel is done).
    fn settle_deferred(&mut self, all: bool) {
        let oldest = self.unsettled.first().copied().unwrap_or(u64::MAX);
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|d| all || d.until < oldest);
        self.deferred = waiting;
        for d in ready {
            self.answer(d.job, d.outcome, d.done);
        }
    }

    /// Asks the supervisor for a new channel; meanwhile, requests are refused rather than left
    /// waiting. `None` once the connection is gone.
    async fn replacement(&mut self) -> Option<Channel> {
        debug!("publishing channel closed; asking for a replacement");
        let (tx, mut rx) = oneshot::channel();
        self.replace.send(tx).await.ok()?;
        loop {
            tokio::select! {
                channel = &mut rx => return channel.ok(),
                request = self.requests.recv() => {
                    let request = request?;
                    let _ = request.done.send(Err(Rejection::BrokerUnavailable));
                }
            }
        }
    }
}
