//! The serve loop of one broker connection, and the drain at shutdown.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::{FutureExt, StreamExt};
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions},
};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::Worker;
use super::acks::{AckReport, SessionAcks};
use super::connection::{
    ABANDON_TIMEOUT, BrokerConnection, ConnectionLost, GOODBYE_TIMEOUT, Incoming, MethodChannel,
    close_connection, next_connection_error,
};
use crate::{
    contract::{self, Cancellation, ReplyAddress, acks::AckOp},
    job::{self, Job},
    lifecycle::{Admission, JobTable, RECENTLY_CANCELLED_CAPACITY, Ticket},
};

/// Ended jobs on their way to the delivery loop. When it is full, an ending job task waits (it
/// has already given up its slot): the loop reads this channel in every one of its waits, so
/// the wait is short, and nothing is lost.
pub(super) const FINISHED_QUEUE: usize = 64;

/// A job task's last word: its table entry to free, and how its delivery was settled (`None`
/// when its session ended first, so there is no channel left to ack it on).
#[derive(Debug)]
pub(super) struct Ended {
    ticket: Ticket,
    ack: Option<AckReport>,
}

/// What the delivery loop owns across sessions: the handler slots, the job tasks, the job
/// table, the channel its job tasks report their end on, and the number of the last session.
pub(super) struct Dispatch {
    pub(super) slots: Arc<Semaphore>,
    pub(super) jobs: TaskTracker,
    pub(super) table: JobTable,
    pub(super) finished_tx: mpsc::Sender<Ended>,
    pub(super) finished_rx: mpsc::Receiver<Ended>,
    sessions: u64,
}

impl Dispatch {
    pub(super) fn new(concurrency: u16) -> Self {
        let (finished_tx, finished_rx) = mpsc::channel(FINISHED_QUEUE);
        Self {
            // Shared by every session, so jobs of a lost session still count until they are gone.
            slots: Arc::new(Semaphore::new(usize::from(concurrency))),
            jobs: TaskTracker::new(),
            table: JobTable::new(RECENTLY_CANCELLED_CAPACITY),
            finished_tx,
            finished_rx,
            sessions: 0,
        }
    }

    /// The number of the next broker session (delivery tags are per channel, so per session).
    pub(super) fn next_session(&mut self) -> u64 {
        self.sessions += 1;
        self.sessions
    }
}

/// Takes in a job's end: frees its table entry and sends the acks that cannot wait.
fn on_ended(table: &mut JobTable, acks: &mut SessionAcks, methods: &[MethodChannel], ended: Ended) {
    table.finished(ended.ticket);
    if let Some(report) = ended.ack {
        for op in acks.report(report) {
            send_now(methods, op);
        }
    }
}

/// Queues an acknowledgement without waiting for lapin's I/O thread to write it (the frame goes
/// in order with the channel's others). If it is never written, the session has died and the
/// broker requeues the job; the bridge drops a second reply.
fn send_now(methods: &[MethodChannel], (index, op): (usize, AckOp)) {
    let Some(method) = methods.get(index) else {
        return;
    };
    if let Some(Err(error)) = perform(&method.channel, op).now_or_never() {
        debug!(?op, error = %error, "job acknowledgement failed; the broker will redeliver it");
    }
}

/// Sends one acknowledgement; the future ends when lapin has written it.
async fn perform(channel: &Channel, op: AckOp) -> lapin::Result<()> {
    match op {
        AckOp::One(tag) => {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await
        }
        AckOp::UpTo(tag) => {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
        }
        AckOp::Requeue(tag) => {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            channel.basic_nack(tag, options).await
        }
    }
}

/// How [`Worker::serve`] ended.
pub(super) enum Served {
    Shutdown,
    Lost(ConnectionLost),
}

impl Worker {
    /// Hands deliveries to job tasks, and cancellations to running jobs, until shutdown or
    /// until the session is lost.
    pub(super) async fn serve(
        &self,
        session: &mut BrokerConnection,
        shutdown: &CancellationToken,
        dispatch: &mut Dispatch,
    ) -> Served {
        let BrokerConnection {
            events,
            deliveries,
            cancels,
            shared,
            abort_jobs,
            methods,
            acks,
            ..
        } = session;
        let Dispatch {
            slots,
            jobs,
            table,
            finished_tx,
            finished_rx,
            ..
        } = dispatch;
        loop {
            let (slot, incoming) = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Served::Shutdown,
                lost = next_connection_error(events) => return Served::Lost(lost),
                () = shared.broken.cancelled() => return Served::Lost(ConnectionLost::ReplyChannel),
                // Never `None`: the dispatch holds a sender.
                Some(ended) = finished_rx.recv() => {
                    on_ended(table, acks, methods, ended);
                    continue;
                }
                // Before deliveries, so that of a cancellation and its job arriving together
                // the cancellation is seen first.
                cancel = cancels.next() => match cancel {
                    Some(Some(Ok(message))) => {
                        on_cancellation(table, &message);
                        continue;
                    }
                    Some(Some(Err(error))) => {
                        return Served::Lost(ConnectionLost::CancelConsumer(error));
                    }
                    Some(None) | None => return Served::Lost(ConnectionLost::CancelConsumerEnded),
                },
                // The slot is taken before the delivery (as a server takes its permit before
                // accepting), so a busy worker starts no more handlers than it has slots.
                next = async {
                    let slot = Arc::clone(slots).acquire_owned().await;
                    (slot, deliveries.next().await)
                } => next,
                // Nothing else is ready: the batched acks go now, one per channel.
                () = std::future::ready(()), if acks.is_due() => {
                    for op in acks.flush() {
                        send_now(methods, op);
                    }
                    continue;
                }
            };
            // The semaphore is never closed, so this is only for the types' sake.
            let Ok(slot) = slot else {
                return Served::Shutdown;
            };
            // Each consumer stream yields a last `item: None` before it leaves the set, so the set
            // running dry comes after that has already ended the session.
            let Some(Incoming { route, index, item }) = incoming else {
                return Served::Lost(ConnectionLost::EventsEnded);
            };
            let delivery = match item {
                Some(Ok(delivery)) => delivery,
                Some(Err(source)) => {
                    let queue = route.queue.clone();
                    return Served::Lost(ConnectionLost::Consumer { queue, source });
                }
                None => {
                    let queue = route.queue.clone();
                    return Served::Lost(ConnectionLost::ConsumerEnded { queue });
                }
            };
            let Delivery {
                delivery_tag,
                redelivered,
                properties,
                data,
                acker,
                ..
            } = delivery;
            let method = Arc::clone(&route.method);
            let Some(address) = ReplyAddress::from_properties(&properties) else {
                // Nothing can answer it, and a requeue would bring it straight back.
                warn!(%method, delivery_tag, "job without reply_to or correlation_id; acking it unanswered");
                for op in acks.skipped(index, delivery_tag) {
                    send_now(methods, op);
                }
                continue;
            };
            let job_id = address.correlation_id.as_str();
            let deadline = contract::deadline_from_headers(properties.headers().as_ref())
                .unwrap_or_else(|error| {
                    warn!(%method, job_id, error = %error, "ignoring the job's unreadable deadline");
                    None
                });
            let (ticket, cancellation) = match table.admit(job_id, deadline, SystemTime::now()) {
                Admission::Run(ticket, cancellation) => (ticket, cancellation),
                Admission::Skip(reason) => {
                    debug!(%method, job_id, reason = reason.as_str(), "job skipped; acking it without a reply");
                    for op in acks.skipped(index, delivery_tag) {
                        send_now(methods, op);
                    }
                    continue;
                }
            };
            let caller = contract::caller_from_headers(properties.headers().as_ref());
            let job = Job {
                method: Arc::clone(&method),
                address,
                redelivered,
                deadline,
                caller,
                cancellation,
                body: data,
                acker,
            };
            let channel = acks.delivered(index, delivery_tag);
            let shared = Arc::clone(shared);
            let abort = abort_jobs.clone();
            let finished = finished_tx.clone();
            jobs.spawn(async move {
                let settled = tokio::select! {
                    biased;
                    () = abort.cancelled() => {
                        debug!(%method, "job dropped: its broker session ended");
                        None
                    }
                    settled = job::process(shared, job) => Some(settled),
                };
                drop(slot);
                let ack = settled.map(|settled| AckReport {
                    channel,
                    tag: delivery_tag,
                    settled,
                });
                // Fails only once the worker has stopped, when nobody needs to know.
                let _ = finished.send(Ended { ticket, ack }).await;
            });
        }
    }

    /// Graceful end of a serving session: stop deliveries, let the jobs in flight finish within
    /// the grace period (still hearing cancellations), then close.
    pub(super) async fn drain(&self, mut session: BrokerConnection, dispatch: &mut Dispatch) {
        info!(
            in_flight = dispatch.jobs.len(),
            "shutting down: cancelling consumers"
        );
        let cancels = session.methods.iter().map(|method| {
            method
                .channel
                .basic_cancel(method.consumer_tag.clone(), BasicCancelOptions::default())
        });
        match tokio::time::timeout(GOODBYE_TIMEOUT, futures::future::join_all(cancels)).await {
            Ok(results) => {
                for error in results.into_iter().filter_map(Result::err) {
                    debug!(error = %error, "cancelling a consumer failed");
                }
            }
            Err(_) => debug!("cancelling the consumers timed out"),
        }
        // Deliveries the broker sent before the cancel and no job took stay unacked; the close
        // below hands them back to the queue.
        dispatch.jobs.close();
        if !wait_for_jobs(&mut session, dispatch, self.shutdown_grace).await {
            warn!(
                abandoned = dispatch.jobs.len(),
                grace_ms = self.shutdown_grace.as_millis(),
                "shutdown grace period expired; abandoning the jobs in flight to the broker's requeue"
            );
            session.abort_jobs.cancel();
            if !wait_for_jobs(&mut session, dispatch, ABANDON_TIMEOUT).await {
                debug!("abandoned jobs still winding down");
            }
        }
        // The ends of jobs that finished as the wait ended are still queued: take them in, so
        // that a job settled just then is acked, not requeued.
        while let Ok(ended) = dispatch.finished_rx.try_recv() {
            on_ended(
                &mut dispatch.table,
                &mut session.acks,
                &session.methods,
                ended,
            );
        }
        // The settled jobs' acks must reach the broker before the close, which requeues the
        // rest (as the explicit nacks of the unsettled ones do).
        let settle = session.acks.finish().into_iter().filter_map(|(index, op)| {
            let channel = &session.methods.get(index)?.channel;
            Some(async move {
                if let Err(error) = perform(channel, op).await {
                    debug!(?op, error = %error, "job acknowledgement failed at shutdown");
                }
            })
        });
        if tokio::time::timeout(GOODBYE_TIMEOUT, futures::future::join_all(settle))
            .await
            .is_err()
        {
            debug!("the last acknowledgements timed out; the broker requeues those jobs");
        }
        close_connection(&session.connection, "worker shutting down").await;
        info!("worker stopped");
    }
}

/// Waits up to `limit` for every job task to end, meanwhile still passing cancellations to the
/// running jobs and taking in their tickets (which their tasks must hand over to end). Returns
/// whether they all ended.
pub(super) async fn wait_for_jobs(
    session: &mut BrokerConnection,
    dispatch: &mut Dispatch,
    limit: Duration,
) -> bool {
    let Dispatch {
        jobs,
        table,
        finished_rx,
        ..
    } = dispatch;
    let all_ended = jobs.wait();
    let expired = tokio::time::sleep(limit);
    tokio::pin!(all_ended, expired);
    let mut cancels_open = true;
    loop {
        tokio::select! {
            biased;
            () = &mut all_ended => return true,
            () = &mut expired => return false,
            Some(ended) = finished_rx.recv() => {
                on_ended(table, &mut session.acks, &session.methods, ended);
            }
            cancel = session.cancels.next(), if cancels_open => match cancel {
                Some(Some(Ok(message))) => on_cancellation(table, &message),
                // The session is closing anyway; the jobs just stop hearing cancellations.
                _ => cancels_open = false,
            },
        }
    }
}

/// A message from the cancellation exchange: cancel the job if it runs here, and remember it
/// in case it is delivered later.
pub(super) fn on_cancellation(table: &mut JobTable, message: &Delivery) {
    let Some(Cancellation { job_id, reason }) = Cancellation::from_properties(&message.properties)
    else {
        warn!("cancellation without a correlation_id; ignoring it");
        return;
    };
    let reason = reason.as_str().unwrap_or("unspecified");
    if table.cancel(&job_id) {
        info!(%job_id, reason, "cancelling a running job");
    } else {
        debug!(%job_id, reason, "cancellation for a job not running here; remembered");
    }
}
