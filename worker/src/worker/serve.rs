//! The serve loop of one broker connection, and the drain at shutdown.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use lapin::{message::Delivery, options::BasicCancelOptions};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::Worker;
use super::connection::{
    ABANDON_TIMEOUT, BrokerConnection, ConnectionLost, GOODBYE_TIMEOUT, Incoming, close_connection,
    next_connection_error,
};
use crate::{
    contract::{self, Cancellation, ReplyAddress},
    job::{self, Job},
    lifecycle::{Admission, JobTable, RECENTLY_CANCELLED_CAPACITY, Ticket},
};

/// Tickets of ended jobs on their way to the delivery loop. When it is full, an ending job task
/// waits (it has already given up its slot): the loop reads this channel in every one of its
/// waits, so the wait is short, and nothing is lost.
pub(super) const FINISHED_QUEUE: usize = 64;

/// What the delivery loop owns across sessions: the handler slots, the job tasks, the job
/// table and the channel its job tasks report their end on.
pub(super) struct Dispatch {
    pub(super) slots: Arc<Semaphore>,
    pub(super) jobs: TaskTracker,
    pub(super) table: JobTable,
    pub(super) finished_tx: mpsc::Sender<Ticket>,
    pub(super) finished_rx: mpsc::Receiver<Ticket>,
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
            ..
        } = session;
        let Dispatch {
            slots,
            jobs,
            table,
            finished_tx,
            finished_rx,
        } = dispatch;
        loop {
            let (slot, incoming) = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Served::Shutdown,
                lost = next_connection_error(events) => return Served::Lost(lost),
                () = shared.broken.cancelled() => return Served::Lost(ConnectionLost::ReplyChannel),
                // Never `None`: the dispatch holds a sender.
                Some(ticket) = finished_rx.recv() => {
                    table.finished(ticket);
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
            };
            // The semaphore is never closed, so this is only for the types' sake.
            let Ok(slot) = slot else {
                return Served::Shutdown;
            };
            // Each consumer stream yields a last `item: None` before it leaves the set, so the set
            // running dry comes after that has already ended the session.
            let Some(Incoming { route, item }) = incoming else {
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
                jobs.spawn(job::skip(acker));
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
                    jobs.spawn(job::skip(acker));
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
            let shared = Arc::clone(shared);
            let abort = abort_jobs.clone();
            let finished = finished_tx.clone();
            jobs.spawn(async move {
                tokio::select! {
                    biased;
                    () = abort.cancelled() => debug!(%method, "job dropped: its broker session ended"),
                    () = job::process(shared, job) => {}
                }
                drop(slot);
                // Fails only once the worker has stopped, when nobody needs to know.
                let _ = finished.send(ticket).await;
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
        let cancels = session.consumer_tags.iter().map(|tag| {
            session
                .consume_channel
                .basic_cancel(tag.clone(), BasicCancelOptions::default())
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
            Some(ticket) = finished_rx.recv() => table.finished(ticket),
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
