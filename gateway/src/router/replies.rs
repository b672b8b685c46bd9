//! What the bridge sends back for a call — its result, an error, progress, or a refusal to
//! publish it — carried to the one client that asked.

use tracing::{debug, warn};
use wsmq_ipc_proto::{JobId, Json, Rejection, Reply, ReplyBody, ReplySeq, ToBridge};

use super::{Ending, Router};
use crate::call_error::CallError;
use crate::jsonrpc;
use crate::link::Outgoing;
use crate::metrics::{self, Dropped, Outcome};
use crate::outbound::{Outbound, OutboundKind};
use crate::sessions::{Delivery, SessionId};

impl Router {
    /// The bridge could not publish the job: it is held for another try, or answered.
    pub(super) fn on_rejected(&mut self, job: JobId, reason: Rejection) {
        let error = match reason {
            Rejection::BrokerUnavailable | Rejection::Nacked => {
                // Not taken by RabbitMQ: wait and try again (until the call's deadline).
                debug!(%job, "publish failed; call held for another try");
                return self.hold(job);
            }
            Rejection::NoRoute => CallError::NoWorker {
                method: self
                    .pending
                    .get(&job)
                    .map(|p| p.method.clone())
                    .unwrap_or_default(),
            },
            Rejection::InvalidMethod => CallError::MethodNameTooLong,
            Rejection::Expired => CallError::ExpiredBeforePublish,
        };
        self.finish_with_error(job, Ending::Answered, error);
    }

    pub(super) fn on_reply(&mut self, epoch: u64, Reply { seq, job, body }: Reply) {
        self.taken(epoch, seq);
        // What the reply says is read before the call ends, so that it ends under the outcome
        // of the response it gets.
        if let ReplyBody::Progress(value) = body {
            return self.on_progress(job, value);
        }
        let reply = match &body {
            ReplyBody::Progress(_) => return,
            // The bridge checked the worker's JSON: it is spliced into the response as it came,
            // checked here once more only for being UTF-8 (a websocket text frame must be).
            ReplyBody::Result(json) => match json.as_str() {
                Ok(result) => Ok(Ok(result)),
                Err(e) => Err(format!("result is not UTF-8: {e}")),
            },
            ReplyBody::Error(err) => Ok(Err(err)),
            ReplyBody::Invalid { reason } => Err(reason.clone()),
        };
        let Some(pending) = self.end(job, Ending::Answered) else {
            return self.count_orphan(job);
        };
        let (outcome, text) = match reply {
            Ok(Ok(result)) => (
                Some(Outcome::Ok),
                pending
                    .id
                    .as_deref()
                    .map(|id| jsonrpc::result_response(id, result)),
            ),
            Ok(Err(err)) => (
                Some(Outcome::WorkerError),
                pending.id.as_deref().map(|id| {
                    let data = err.data.as_ref().and_then(|d| d.as_str().ok());
                    jsonrpc::error_response_raw(Some(id), err.code, &err.message, data)
                }),
            ),
            Err(reason) => {
                warn!(%job, session = pending.session, method = %pending.method, %reason, "worker replied something unreadable");
                let error = CallError::InvalidReply {
                    method: pending.method.clone(),
                    reason,
                };
                (
                    error.outcome(),
                    pending.id.as_deref().map(|id| error.response(Some(id))),
                )
            }
        };
        self.count_ending(job, &pending, outcome);
        match text {
            Some(text) => {
                self.respond_to(pending.session, pending.batch, OutboundKind::Response, text)
            }
            None => {
                debug!(%job, session = pending.session, method = %pending.method, "notification finished")
            }
        }
    }

    fn on_progress(&mut self, job: JobId, value: Json) {
        let Some(pending) = self.pending.get(&job) else {
            // The call has ended: progress never follows the final response.
            return self.count_orphan(job);
        };
        let Some(id) = pending.id.as_deref() else {
            return;
        };
        let text = match value.as_str() {
            Ok(value) => jsonrpc::progress_notification(id, value),
            Err(e) => {
                warn!(%job, error = %e, "progress report is not UTF-8; dropped");
                return;
            }
        };
        let session = pending.session;
        metrics::progress_forwarded();
        self.respond_to(session, None, OutboundKind::Notification, text);
    }

    /// Counts a reply that has no call to go to.
    fn count_orphan(&mut self, job: JobId) {
        let c = &mut self.counters;
        let reason = match self.endings.get(&job) {
            Some(Ending::Answered) => {
                c.dropped_duplicate += 1;
                Dropped::Duplicate
            }
            Some(Ending::TimedOut) => {
                c.dropped_late += 1;
                Dropped::Late
            }
            Some(Ending::Cancelled) => {
                c.dropped_cancelled += 1;
                Dropped::Cancelled
            }
            None => {
                c.dropped_unknown_job += 1;
                Dropped::UnknownJob
            }
        };
        metrics::reply_dropped(reason);
        debug!(%job, ending = ?self.endings.get(&job), "reply for an ended call dropped");
    }

    /// Tells the bridge it may ack the reply. The queue is sized so this cannot be full.
    fn taken(&mut self, epoch: u64, seq: ReplySeq) {
        let out = Outgoing {
            epoch,
            msg: ToBridge::Taken { reply: seq },
        };
        if self.to_link.taken.try_send(out).is_err() {
            // The bridge will redeliver it; the duplicate is then dropped as already answered.
            warn!(seq = seq.0, "could not confirm a reply to the bridge");
        }
    }

    /// Hands `text` to the session's connection (or keeps it for a resume), and counts what
    /// could not be.
    pub(super) fn respond_to(
        &mut self,
        session: SessionId,
        batch: Option<u64>,
        kind: OutboundKind,
        text: String,
    ) {
        let delivery = self
            .sessions
            .deliver(session, Outbound { batch, kind, text });
        self.count_evicted();
        match delivery {
            Delivery::Sent | Delivery::Kept => {}
            Delivery::NoSession => {
                self.counters.dropped_client_gone += 1;
                metrics::reply_dropped(Dropped::ClientGone);
                debug!(session, "response for a session that has ended dropped");
            }
            Delivery::BufferFull { first } => {
                metrics::reply_dropped(Dropped::SessionBufferFull);
                // Once per session: a client that left thousands of calls behind would
                // otherwise log thousands of lines. The metric counts every one.
                if first {
                    warn!(
                        session,
                        "session kept too much while disconnected; dropping its further responses (counted in wsmq_results_dropped_total)"
                    );
                } else {
                    debug!(session, "session buffer full; response dropped");
                }
            }
            Delivery::SlowClient(client) => {
                self.counters.slow_clients_closed += 1;
                metrics::slow_client_closed();
                warn!(
                    client,
                    session, "client is not reading its responses; disconnecting it"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use wsmq_codes as codes;
    use wsmq_ipc_proto::{Rejection, ReplyBody, ToBridge, ToGateway, WorkerError};

    use super::super::harness::{assert_silent, call, harness, response};
    use crate::outbound::OutboundKind;

    #[tokio::test]
    async fn reply_reaches_only_the_client_that_called() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let mut b = h.client(2).await;
        let job_a = h
            .submit(1, call(Some(json!("same")), "echo", json!({"who": "a"})))
            .await;
        let job_b = h
            .submit(2, call(Some(json!("same")), "echo", json!({"who": "b"})))
            .await;
        assert_ne!(job_a.id, job_b.id);
        assert_eq!(job_a.params, r#"{"who":"a"}"#.into());

        // Finish out of order: b first.
        h.reply(1, job_b.id, ReplyBody::Result(r#"{"who":"b"}"#.into()))
            .await;
        h.reply(1, job_a.id, ReplyBody::Result(r#"{"who":"a"}"#.into()))
            .await;
        assert_eq!(
            response(&mut b).await,
            json!({"jsonrpc":"2.0","id":"same","result":{"who":"b"}})
        );
        assert_eq!(
            response(&mut a).await,
            json!({"jsonrpc":"2.0","id":"same","result":{"who":"a"}})
        );
        assert_silent(&mut a);
        assert_silent(&mut b);
    }

    #[tokio::test]
    async fn every_reply_is_confirmed_to_the_bridge_for_its_link_epoch() {
        let mut h = harness(10);
        h.link_up(3).await;
        let _a = h.client(1).await;
        let job = h.submit(1, call(Some(json!(1)), "echo", json!([]))).await;
        let seq = h.reply(3, job.id, ReplyBody::Result("[]".into())).await;
        let taken = h.taken.recv().await.expect("taken");
        assert_eq!(taken.epoch, 3);
        assert_eq!(taken.msg, ToBridge::Taken { reply: seq });
    }

    #[tokio::test]
    async fn duplicate_reply_is_taken_but_answered_once() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let job = h.submit(1, call(Some(json!(5)), "echo", json!({}))).await;
        h.reply(1, job.id, ReplyBody::Result("1".into())).await;
        h.reply(1, job.id, ReplyBody::Result("2".into())).await;
        assert_eq!(response(&mut a).await["result"], 1);
        assert!(h.taken.recv().await.is_some());
        assert!(h.taken.recv().await.is_some(), "the duplicate is acked too");
        assert_silent(&mut a);
    }

    #[tokio::test]
    async fn reply_for_a_departed_client_goes_to_nobody() {
        let mut h = harness(10);
        h.link_up(1).await;
        let _gone = h.client(1).await;
        let mut other = h.client(2).await;
        let job = h.submit(1, call(Some(json!(1)), "echo", json!({}))).await;
        h.handle
            .disconnect(1, Vec::new())
            .await
            .expect("router alive");
        h.reply(1, job.id, ReplyBody::Result("1".into())).await;
        assert!(h.taken.recv().await.is_some(), "still acked to the bridge");
        assert_silent(&mut other);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_let_go_and_others_are_unaffected() {
        let mut h = harness(100);
        h.link_up(1).await;
        let mut slow = h.client(1).await; // queue of 4, never read
        let mut fine = h.client(2).await;
        let mut jobs = Vec::new();
        for i in 0..6 {
            jobs.push(h.submit(1, call(Some(json!(i)), "echo", json!({}))).await);
        }
        let other = h.submit(2, call(Some(json!("x")), "echo", json!({}))).await;
        for job in &jobs {
            h.reply(1, job.id, ReplyBody::Result("0".into())).await;
        }
        h.reply(1, other.id, ReplyBody::Result("1".into())).await;
        assert_eq!(response(&mut fine).await["id"], "x");
        let mut delivered = 0;
        while slow.recv().await.is_some() {
            delivered += 1;
        }
        assert_eq!(delivered, 4, "the queue's worth, then the channel closes");
    }

    #[tokio::test]
    async fn worker_errors_pass_through_and_garbage_names_the_method() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let failing = h.submit(1, call(Some(json!(1)), "fail", json!({}))).await;
        let garbled = h
            .submit(1, call(Some(json!(2)), "garbled", json!({})))
            .await;
        let error = WorkerError {
            code: 4000,
            message: "requested failure".into(),
            data: Some(r#"{"k":1}"#.into()),
        };
        h.reply(1, failing.id, ReplyBody::Error(error)).await;
        h.reply(
            1,
            garbled.id,
            ReplyBody::Invalid {
                reason: "reply body is not valid JSON".into(),
            },
        )
        .await;
        assert_eq!(
            response(&mut a).await["error"],
            json!({"code": 4000, "message": "requested failure", "data": {"k": 1}})
        );
        let r = response(&mut a).await;
        assert_eq!(r["error"]["code"], codes::INTERNAL_ERROR);
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("garbled")),
            "{r}"
        );
    }

    #[tokio::test]
    async fn unroutable_job_is_method_not_found() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let job = h.submit(1, call(Some(json!(9)), "nosuch", json!({}))).await;
        h.bridge_says(
            1,
            ToGateway::Rejected {
                job: job.id,
                reason: Rejection::NoRoute,
            },
        )
        .await;
        let r = response(&mut a).await;
        assert_eq!(
            (r["id"].clone(), r["error"]["code"].clone()),
            (json!(9), json!(codes::METHOD_NOT_FOUND))
        );
    }

    #[tokio::test]
    async fn notifications_run_but_never_answer() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let job = h.submit(1, call(None, "echo", json!({}))).await;
        h.reply(1, job.id, ReplyBody::Result("1".into())).await;
        assert!(h.taken.recv().await.is_some());
        assert_silent(&mut a);
    }

    #[tokio::test]
    async fn progress_reaches_the_caller_in_order_and_never_after_the_result() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let mut b = h.client(2).await;
        let job = h
            .submit(1, call(Some(json!("p")), "progress", json!({})))
            .await;
        for step in 1..=3 {
            h.reply(
                1,
                job.id,
                ReplyBody::Progress(format!("{{\"step\":{step}}}").into()),
            )
            .await;
        }
        h.reply(1, job.id, ReplyBody::Result("\"done\"".into()))
            .await;
        h.reply(1, job.id, ReplyBody::Progress("{\"step\":4}".into()))
            .await;
        for step in 1..=3 {
            let out = a.recv().await.expect("progress");
            assert_eq!(out.kind, OutboundKind::Notification);
            let v: Value = serde_json::from_str(&out.text).expect("json");
            assert_eq!(
                v,
                json!({"jsonrpc":"2.0","method":"$/progress","params":{"id":"p","value":{"step":step}}})
            );
        }
        let out = a.recv().await.expect("result");
        assert_eq!(out.kind, OutboundKind::Response);
        for _ in 0..5 {
            assert!(h.taken.recv().await.is_some());
        }
        assert_silent(&mut a);
        assert_silent(&mut b);
    }
}
