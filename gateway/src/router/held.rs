//! Calls held while the bridge or RabbitMQ is away, sent again when both are back.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tracing::debug;
use wsmq_ipc_proto::JobId;

use super::{CallState, Router};

/// How often held calls are offered to the bridge again while it is up (after a failed
/// publish, when no state change would trigger it).
pub(super) const HELD_RETRY: Duration = Duration::from_secs(1);

/// The calls waiting for the bridge and RabbitMQ, oldest first.
///
/// How many there are is the size of the set, so it cannot drift from the queue: a call that
/// ends while held is forgotten here, and its place in the queue is skipped when reached.
/// Every call in it has [`CallState::Held`] in the router's table, and no other.
#[derive(Debug, Default)]
pub(super) struct HeldCalls {
    /// In the order they were held (or put back); may name calls no longer held.
    order: VecDeque<JobId>,
    /// The calls held now.
    held: HashSet<JobId>,
}

impl HeldCalls {
    /// How many calls are held.
    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds `job` behind the others (no change if it is held already).
    pub(super) fn hold(&mut self, job: JobId) {
        if self.held.insert(job) {
            self.order.push_back(job);
        }
    }

    /// Takes the oldest held call out, to send it.
    pub(super) fn next(&mut self) -> Option<JobId> {
        while let Some(job) = self.order.pop_front() {
            if self.held.remove(&job) {
                return Some(job);
            }
        }
        None
    }

    /// Puts a call [`next`](Self::next) gave back in front, when it could not be sent.
    pub(super) fn put_back(&mut self, job: JobId) {
        if self.held.insert(job) {
            self.order.push_front(job);
        }
    }

    /// The call ended (or no longer waits); whether it was held.
    pub(super) fn forget(&mut self, job: JobId) -> bool {
        let was_held = self.held.remove(&job);
        // Calls that end while held leave their place in the queue behind; drop those places
        // once they outnumber the calls, so the queue stays bounded by what is held.
        if was_held && self.order.len() > 2 * self.held.len() + 64 {
            let held = &self.held;
            self.order.retain(|job| held.contains(job));
        }
        was_held
    }
}

impl Router {
    /// Puts a submitted call back on hold: its publish failed, or the bridge went away before
    /// RabbitMQ confirmed it. It is sent again when both are back (at least once: a job that
    /// was in fact published may run twice, and its second reply is dropped as a duplicate).
    pub(super) fn hold(&mut self, job: JobId) {
        if let Some(p) = self.pending.get_mut(&job)
            && p.state == CallState::Submitted
        {
            p.state = CallState::Held;
            self.held.hold(job);
        }
    }

    /// Sends held calls, oldest first, while the bridge takes them.
    pub(super) fn flush_held(&mut self) {
        while self.available() {
            let Some(job) = self.held.next() else {
                return;
            };
            let Some(copy) = self.pending.get(&job).and_then(|p| p.job.clone()) else {
                // Unreachable: a held call is in the table and not yet confirmed.
                continue;
            };
            if !self.submit(&copy) {
                // The bridge is backed up: try again on the next tick.
                self.held.put_back(job);
                return;
            }
            if let Some(p) = self.pending.get_mut(&job) {
                p.state = CallState::Submitted;
            }
            debug!(%job, "held call submitted");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wsmq_codes as codes;
    use wsmq_ipc_proto::{BrokerState, JobId, Rejection, ReplyBody, ToBridge, ToGateway};

    use super::super::harness::{assert_silent, call, harness, harness_with, response};
    use super::HeldCalls;
    use crate::link::LinkEvent;

    #[test]
    fn held_calls_come_out_oldest_first_and_ended_ones_are_skipped() {
        let mut held = HeldCalls::default();
        for n in 1..=3 {
            held.hold(JobId(n));
        }
        held.hold(JobId(1));
        assert_eq!(held.len(), 3, "holding twice counts once");
        assert!(held.forget(JobId(2)));
        assert!(!held.forget(JobId(2)), "forgotten once");
        assert_eq!(held.len(), 2);
        assert_eq!(held.next(), Some(JobId(1)));
        held.put_back(JobId(1));
        assert_eq!(held.next(), Some(JobId(1)), "put back in front");
        assert_eq!(held.next(), Some(JobId(3)));
        assert_eq!(held.next(), None);
        assert!(held.is_empty());
    }

    #[test]
    fn the_queue_stays_bounded_by_what_is_held() {
        let mut held = HeldCalls::default();
        for n in 0..10_000 {
            held.hold(JobId(n));
            held.forget(JobId(n));
        }
        assert!(held.is_empty());
        assert!(
            held.order.len() <= 64 + 1,
            "{} places kept",
            held.order.len()
        );
    }

    #[tokio::test]
    async fn calls_while_the_bridge_is_away_are_held_and_sent_when_it_returns() {
        let mut h = harness(10);
        let mut a = h.client(1).await;
        h.handle
            .call(1, call(Some(json!(1)), "echo", json!({"x": 1})), None)
            .await
            .expect("router alive");
        h.link_up(4).await;
        let out = h.jobs.recv().await.expect("the held job");
        assert_eq!(out.epoch, 4, "sent on the new link epoch");
        let ToBridge::Submit(job) = out.msg else {
            panic!("expected a job, got {:?}", out.msg);
        };
        assert_eq!(job.params, r#"{"x":1}"#.into());
        h.reply(4, job.id, ReplyBody::Result("\"ok\"".into())).await;
        assert_eq!(response(&mut a).await["result"], "ok");
    }

    #[tokio::test]
    async fn held_calls_past_the_bound_get_broker_unavailable_at_once() {
        let mut h = harness_with(10, 2);
        let mut a = h.client(1).await;
        for i in 0..3 {
            h.handle
                .call(1, call(Some(json!(i)), "echo", json!({})), None)
                .await
                .expect("router alive");
        }
        let r = response(&mut a).await;
        assert_eq!(
            (r["id"].clone(), r["error"]["code"].clone()),
            (json!(2), json!(codes::BROKER_UNAVAILABLE))
        );
        assert!(!h.health.borrow().bridge);
        assert!(
            h.jobs.try_recv().is_err(),
            "nothing sent to a bridge that is not there"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_call_reaching_its_deadline_gets_broker_unavailable() {
        let mut h = harness(10);
        let mut a = h.client(1).await;
        let mut c = call(Some(json!(1)), "echo", json!({}));
        c.options.timeout_ms = Some(500);
        h.handle.call(1, c, None).await.expect("router alive");
        let r = response(&mut a).await;
        assert_eq!(r["error"]["code"], codes::BROKER_UNAVAILABLE);
        h.link_up(1).await;
        assert!(
            h.jobs.try_recv().is_err(),
            "an answered call is not sent later"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_call_that_ended_frees_its_place_under_the_bound() {
        let mut h = harness_with(10, 1);
        let mut a = h.client(1).await;
        let mut c = call(Some(json!(1)), "echo", json!({}));
        c.options.timeout_ms = Some(500);
        h.handle.call(1, c, None).await.expect("router alive");
        assert_eq!(
            response(&mut a).await["error"]["code"],
            codes::BROKER_UNAVAILABLE
        );
        // The first call's deadline ended it: the second takes its place, the third is over.
        for i in [2, 3] {
            h.handle
                .call(1, call(Some(json!(i)), "echo", json!({})), None)
                .await
                .expect("router alive");
        }
        let r = response(&mut a).await;
        assert_eq!(
            (r["id"].clone(), r["error"]["code"].clone()),
            (json!(3), json!(codes::BROKER_UNAVAILABLE))
        );
        h.link_up(1).await;
        let out = h.jobs.recv().await.expect("the held job");
        let ToBridge::Submit(job) = out.msg else {
            panic!("expected a job, got {:?}", out.msg);
        };
        h.reply(1, job.id, ReplyBody::Result("2".into())).await;
        assert_eq!(response(&mut a).await["id"], 2);
    }

    #[tokio::test]
    async fn link_loss_resends_unconfirmed_calls_and_keeps_published_ones_waiting() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let published = h
            .submit(1, call(Some(json!("p")), "sleep", json!({})))
            .await;
        let unconfirmed = h
            .submit(1, call(Some(json!("u")), "sleep", json!({})))
            .await;
        h.bridge_says(1, ToGateway::Published { job: published.id })
            .await;
        h.events.send(LinkEvent::Down).await.expect("router alive");
        h.link_up(2).await;

        let again = h.jobs.recv().await.expect("resent");
        assert_eq!(again.epoch, 2);
        assert_eq!(
            again.msg,
            ToBridge::Submit(unconfirmed.clone()),
            "same job id, resent once"
        );
        assert!(
            h.jobs.try_recv().is_err(),
            "the published job is not sent again"
        );

        // Both replies arrive through the new link epoch, each answered once.
        h.reply(2, published.id, ReplyBody::Result("\"p done\"".into()))
            .await;
        h.reply(2, unconfirmed.id, ReplyBody::Result("\"u done\"".into()))
            .await;
        h.reply(2, unconfirmed.id, ReplyBody::Result("\"u again\"".into()))
            .await;
        let mut got = [response(&mut a).await, response(&mut a).await];
        got.sort_by_key(|r| r["id"].to_string());
        assert_eq!(got[0]["result"], "p done");
        assert_eq!(got[1]["result"], "u done");
        for _ in 0..3 {
            assert!(h.taken.recv().await.is_some());
        }
        assert_silent(&mut a);
    }

    #[tokio::test]
    async fn failed_publish_is_tried_again_when_the_broker_is_back() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let job = h.submit(1, call(Some(json!(1)), "echo", json!({}))).await;
        h.bridge_says(1, ToGateway::Broker(BrokerState::Down)).await;
        h.bridge_says(
            1,
            ToGateway::Rejected {
                job: job.id,
                reason: Rejection::BrokerUnavailable,
            },
        )
        .await;
        h.bridge_says(1, ToGateway::Broker(BrokerState::Up)).await;
        let again = h.jobs.recv().await.expect("resent");
        assert_eq!(again.msg, ToBridge::Submit(job.clone()));
        h.reply(1, job.id, ReplyBody::Result("1".into())).await;
        assert_eq!(response(&mut a).await["result"], 1);
    }
}
