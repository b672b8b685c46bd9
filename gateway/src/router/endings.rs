//! How a call ends — answered, timed out or cancelled — exactly once, and a bounded memory of
//! how recent calls ended, to tell a late result from a duplicate when one arrives after.

use std::collections::{HashMap, VecDeque};

use tracing::debug;
use wsmq_ipc_proto::{CancelReason, JobId, ToBridge};

use super::{CallState, Pending, Router};
use crate::call_error::CallError;
use crate::link::Outgoing;
use crate::metrics::{self, Outcome};
use crate::outbound::{ClientId, OutboundKind};

use serde_json::value::RawValue;

/// How many ended calls the router remembers, to tell a late result from a duplicate or an
/// unknown one in its counters. Oldest forgotten first.
const REMEMBERED_ENDINGS: usize = 65_536;

/// How a call ended, remembered for a while to classify what arrives after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    Answered,
    TimedOut,
    Cancelled,
}

/// A bounded memory of how recent calls ended.
#[derive(Default)]
pub(super) struct Endings {
    order: VecDeque<JobId>,
    how: HashMap<JobId, Ending>,
}

impl Endings {
    fn remember(&mut self, job: JobId, ending: Ending) {
        if self.order.len() >= REMEMBERED_ENDINGS
            && let Some(oldest) = self.order.pop_front()
        {
            self.how.remove(&oldest);
        }
        self.order.push_back(job);
        self.how.insert(job, ending);
    }

    pub(super) fn get(&self, job: &JobId) -> Option<Ending> {
        self.how.get(job).copied()
    }
}

impl Router {
    pub(super) fn on_cancel(&mut self, client: ClientId, id: &RawValue) {
        // Looked up among this client's calls only: nobody can cancel another's.
        let job = self
            .sessions
            .session_of(client)
            .and_then(|session| self.sessions.call_named(session, id));
        let Some(job) = job else {
            debug!(client, id = id.get(), "cancel for an unknown call ignored");
            return;
        };
        debug!(client, %job, "call cancelled");
        let published = self.was_sent(job);
        self.finish_with_error(job, Ending::Cancelled, CallError::Cancelled);
        if published {
            self.tell_workers(job, CancelReason::Cancelled);
        }
    }

    pub(super) fn on_deadline(&mut self, job: JobId) {
        let Some(pending) = self.pending.get(&job) else {
            return;
        };
        if pending.state == CallState::Held {
            // It never reached RabbitMQ: the outage, not the worker, is why it failed.
            let outage = self.outage();
            self.finish_with_error(
                job,
                Ending::Answered,
                CallError::HeldPastDeadline { outage },
            );
            return;
        }
        debug!(%job, session = pending.session, method = %pending.method, "call timed out");
        let method = pending.method.clone();
        let published = self.was_sent(job);
        self.finish_with_error(job, Ending::TimedOut, CallError::Timeout { method });
        if published {
            self.tell_workers(job, CancelReason::Timeout);
        }
    }

    /// Whether the call may have reached the workers: a call held for fair share never did,
    /// so nobody needs to hear that it ended.
    fn was_sent(&self, job: JobId) -> bool {
        self.pending
            .get(&job)
            .is_some_and(|p| p.state != CallState::Queued)
    }

    /// Broadcasts that nobody waits for `job` any more. Best effort: if the bridge is away or
    /// backed up, the job's AMQP expiration and deadline header stop it anyway.
    fn tell_workers(&mut self, job: JobId, reason: CancelReason) {
        if let Some(epoch) = self.epoch {
            let msg = ToBridge::Cancel { job, reason };
            if self.to_link.jobs.try_send(Outgoing { epoch, msg }).is_err() {
                debug!(%job, "cancellation not sent: bridge backed up");
            }
        }
    }

    /// Ends a call: removes it from the table, its timer, the held calls and its session's
    /// books. Whoever ends it counts how, with [`count_ending`](Self::count_ending).
    pub(super) fn end(&mut self, job: JobId, ending: Ending) -> Option<Pending> {
        let pending = self.pending.remove(&job)?;
        self.held.forget(job);
        if pending.state == CallState::Queued {
            if let Some((since, held)) = self.fair.forget_held(&pending.method, job) {
                metrics::call_unheld(self.methods.label(&pending.method), since.elapsed(), held);
            }
        } else {
            self.fair.ended(&pending.method, &pending.caller);
            // A worker (or a deadline) freed a place: the next held call may take it.
            self.release(&pending.method);
        }
        self.deadlines.try_remove(&pending.deadline);
        self.endings.remember(job, ending);
        metrics::calls_in_flight(self.pending.len());
        self.sessions
            .call_ended(pending.session, pending.id.as_deref(), job);
        Some(pending)
    }

    /// Counts a call that [`end`](Self::end) ended, under `outcome` (`None` only for an
    /// error that is no call's outcome, which the router never decides: see
    /// [`CallError::outcome`]).
    pub(super) fn count_ending(&self, job: JobId, pending: &Pending, outcome: Option<Outcome>) {
        let took = pending.started.elapsed();
        debug!(%job, session = pending.session, method = %pending.method, ?outcome, ?took, "call ended");
        if let Some(outcome) = outcome {
            metrics::call_ended(self.methods.label(&pending.method), outcome, took);
        }
    }

    /// Ends a call with an error the gateway decided, and answers it.
    pub(super) fn finish_with_error(&mut self, job: JobId, ending: Ending, error: CallError) {
        let Some(pending) = self.end(job, ending) else {
            return;
        };
        self.count_ending(job, &pending, error.outcome());
        match pending.id.as_deref() {
            Some(id) => {
                let text = error.response(Some(id));
                self.respond_to(pending.session, pending.batch, OutboundKind::Response, text);
            }
            None => {
                debug!(%job, session = pending.session, method = %pending.method, ?error, "notification failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wsmq_codes as codes;
    use wsmq_ipc_proto::{CancelReason, JobId, ReplyBody};

    use super::super::harness::{assert_silent, call, cancellation, harness, raw, response};
    use super::{Ending, Endings, REMEMBERED_ENDINGS};

    #[test]
    fn endings_forget_the_oldest_past_their_bound() {
        let mut endings = Endings::default();
        let total = u128::try_from(REMEMBERED_ENDINGS).expect("fits") + 1;
        for n in 0..total {
            endings.remember(JobId(n), Ending::Answered);
        }
        endings.remember(JobId(total), Ending::Cancelled);
        assert_eq!(endings.get(&JobId(0)), None);
        assert_eq!(endings.get(&JobId(1)), None);
        assert_eq!(endings.get(&JobId(2)), Some(Ending::Answered));
        assert_eq!(endings.get(&JobId(total)), Some(Ending::Cancelled));
        assert_eq!(endings.how.len(), REMEMBERED_ENDINGS);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_answers_timeout_and_drops_the_late_result() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let mut c = call(Some(json!(1)), "sleep", json!({}));
        c.options.timeout_ms = Some(200);
        let job = h.submit(1, c).await;
        let r = response(&mut a).await;
        assert_eq!(
            (r["id"].clone(), r["error"]["code"].clone()),
            (json!(1), json!(codes::TIMEOUT))
        );
        assert_eq!(cancellation(&mut h).await, (job.id, CancelReason::Timeout));

        h.reply(1, job.id, ReplyBody::Result("\"late\"".into()))
            .await;
        assert!(
            h.taken.recv().await.is_some(),
            "the late result is still acked"
        );
        assert_silent(&mut a);
    }

    #[tokio::test]
    async fn cancel_answers_cancelled_once_and_tells_the_workers() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let job = h
            .submit(1, call(Some(json!("c1")), "sleep", json!({})))
            .await;
        h.handle
            .cancel(1, raw(json!("c1")))
            .await
            .expect("router alive");
        let r = response(&mut a).await;
        assert_eq!(
            (r["id"].clone(), r["error"]["code"].clone()),
            (json!("c1"), json!(codes::CANCELLED))
        );
        assert_eq!(
            cancellation(&mut h).await,
            (job.id, CancelReason::Cancelled)
        );

        // A second cancel and the worker's late result both go nowhere.
        h.handle
            .cancel(1, raw(json!("c1")))
            .await
            .expect("router alive");
        h.reply(1, job.id, ReplyBody::Result("1".into())).await;
        assert!(h.taken.recv().await.is_some());
        assert_silent(&mut a);
        assert!(h.jobs.try_recv().is_err(), "no second broadcast");
    }

    #[tokio::test]
    async fn cancel_reaches_the_latest_call_under_a_reused_id() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let first = h
            .submit(1, call(Some(json!("dup")), "sleep", json!({})))
            .await;
        let second = h
            .submit(1, call(Some(json!("dup")), "sleep", json!({})))
            .await;
        h.reply(1, first.id, ReplyBody::Result("1".into())).await;
        assert_eq!(response(&mut a).await["result"], 1);
        h.handle
            .cancel(1, raw(json!("dup")))
            .await
            .expect("router alive");
        assert_eq!(response(&mut a).await["error"]["code"], codes::CANCELLED);
        assert_eq!(
            cancellation(&mut h).await,
            (second.id, CancelReason::Cancelled)
        );
    }

    #[tokio::test]
    async fn a_client_cannot_cancel_another_clients_call() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let mut b = h.client(2).await;
        let job = h.submit(1, call(Some(json!(7)), "sleep", json!({}))).await;
        h.handle
            .cancel(2, raw(json!(7)))
            .await
            .expect("router alive");
        h.reply(1, job.id, ReplyBody::Result("\"mine\"".into()))
            .await;
        assert_eq!(response(&mut a).await["result"], "mine");
        assert_silent(&mut b);
    }
}
