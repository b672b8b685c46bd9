//! Admission: whether a new call is taken, held for later, or refused at once.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tracing::debug;
use wsmq_ipc_proto::{BrokerState, Job, JobId, Json, ToBridge};

use super::{CallState, Pending, Router, unix_ms};
use crate::call_error::CallError;
use crate::jsonrpc::Call;
use crate::link::Outgoing;
use crate::metrics;
use crate::outbound::{ClientId, OutboundKind};
use crate::sessions::SessionId;

impl Router {
    pub(super) fn on_call(&mut self, client: ClientId, mut call: Call, batch: Option<u64>) {
        let Some(session) = self.sessions.session_of(client) else {
            debug!(client, "call from a connection that has gone; dropped");
            return;
        };
        if self.broker == BrokerState::Blocked && self.epoch.is_some() {
            // A resource alarm is not an outage: holding would only grow memory.
            return self.refuse(session, &call, batch, CallError::BrokerBlocked);
        }
        if self.sessions.in_flight(session) >= self.limits.per_client {
            let max = self.limits.per_client;
            return self.refuse(
                session,
                &call,
                batch,
                CallError::TooManyOnConnection { max },
            );
        }
        if self.pending.len() >= self.limits.global {
            return self.refuse(session, &call, batch, CallError::GatewayAtCapacity);
        }
        let available = self.available();
        if !available && self.held.len() >= self.limits.max_held {
            let error = CallError::TooManyHeld {
                outage: self.outage(),
                waiting: self.held.len(),
            };
            return self.refuse(session, &call, batch, error);
        }

        let timeout = call
            .options
            .timeout_ms
            .map_or(self.limits.default_timeout, Duration::from_millis)
            .min(self.limits.max_timeout);
        let job_id = new_job_id();
        let job = Job {
            id: job_id,
            method: call.method.clone(),
            // The client's text as parsed, moved (not copied) into the job.
            params: call
                .params
                .take()
                .unwrap_or_else(|| Json(Bytes::from_static(b"null"))),
            client,
            deadline_unix_ms: unix_ms(SystemTime::now() + timeout),
            priority: call.options.priority,
            caller: self.sessions.identity(session).map(|id| id.to_string()),
        };
        if available && !self.submit(&job) {
            return self.refuse(session, &call, batch, CallError::BridgeBackedUp);
        }
        let state = if available {
            debug!(client, job = %job_id, method = %call.method, ?timeout, "call submitted");
            CallState::Submitted
        } else {
            debug!(client, job = %job_id, method = %call.method, ?timeout, "call held until the bridge and RabbitMQ are back");
            self.held.hold(job_id);
            CallState::Held
        };
        self.sessions
            .call_started(session, call.id.as_deref(), job_id);
        let deadline = self.deadlines.insert(job_id, timeout);
        self.pending.insert(
            job_id,
            Pending {
                session,
                id: call.id,
                method: call.method,
                batch,
                state,
                job: Some(job),
                deadline,
                started: Instant::now(),
            },
        );
        metrics::calls_in_flight(self.pending.len());
    }

    /// Answers a call that was not taken (a notification: drops it) and counts it.
    fn refuse(&mut self, session: SessionId, call: &Call, batch: Option<u64>, error: CallError) {
        if let Some(outcome) = error.outcome() {
            metrics::call_ended(self.methods.label(&call.method), outcome, Duration::ZERO);
        }
        match &call.id {
            Some(id) => {
                let text = error.response(Some(id));
                self.respond_to(session, batch, OutboundKind::Response, text);
            }
            None => debug!(session, method = %call.method, ?error, "notification refused"),
        }
    }

    /// Whether jobs can go to RabbitMQ right now.
    pub(super) fn available(&self) -> bool {
        self.epoch.is_some() && self.broker == BrokerState::Up
    }

    /// What is down, for error messages.
    pub(super) fn outage(&self) -> &'static str {
        match (self.epoch, self.broker) {
            (None, _) => "the bridge is not connected",
            (Some(_), BrokerState::Blocked) => "RabbitMQ is blocking publishers (resource alarm)",
            (Some(_), _) => "RabbitMQ is not connected",
        }
    }

    /// Hands a job to the IPC writer for the current link epoch; false if it has no room.
    pub(super) fn submit(&mut self, job: &Job) -> bool {
        let Some(epoch) = self.epoch else {
            return false;
        };
        let out = Outgoing {
            epoch,
            msg: ToBridge::Submit(job.clone()),
        };
        self.to_link.jobs.try_send(out).is_ok()
    }
}

/// A new job id: a random (v4) UUID drawn from the thread's CSPRNG. `Uuid::new_v4` asks the
/// kernel (`getrandom`) for every id, a syscall per call: about one in six of the gateway's
/// syscalls at 256 calls in flight.
fn new_job_id() -> JobId {
    JobId(
        uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .as_u128(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;
    use wsmq_codes as codes;

    use serde_json::json;
    use wsmq_ipc_proto::{BrokerState, ReplyBody, ToGateway};

    use super::super::harness::{call, harness, response};
    use super::super::unix_ms;

    #[test]
    fn job_ids_are_distinct_v4_uuids() {
        let a = super::new_job_id();
        let b = super::new_job_id();
        assert_ne!(a, b);
        for id in [a, b] {
            let uuid = uuid::Uuid::from_u128(id.0);
            assert_eq!(uuid.get_version_num(), 4, "{uuid}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        }
    }

    #[tokio::test]
    async fn in_flight_cap_refuses_the_extra_call() {
        let mut h = harness(1);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        let first = h.submit(1, call(Some(json!(1)), "sleep", json!({}))).await;
        h.handle
            .call(1, call(Some(json!(2)), "sleep", json!({})), None)
            .await
            .expect("router alive");
        let r = response(&mut a).await;
        assert_eq!(
            (r["id"].clone(), r["error"]["code"].clone()),
            (json!(2), json!(codes::TOO_MANY_IN_FLIGHT))
        );
        // Once the first finishes there is room again.
        h.reply(1, first.id, ReplyBody::Result("0".into())).await;
        assert_eq!(response(&mut a).await["id"], 1);
        let again = h.submit(1, call(Some(json!(3)), "sleep", json!({}))).await;
        assert_eq!(again.method, "sleep");
    }

    #[tokio::test]
    async fn requested_timeout_is_capped_and_becomes_the_jobs_deadline() {
        let mut h = harness(10);
        h.link_up(1).await;
        let _a = h.client(1).await;
        let mut c = call(Some(json!(1)), "sleep", json!({}));
        c.options.timeout_ms = Some(10 * 60 * 1000);
        c.options.priority = Some(7);
        let before = unix_ms(SystemTime::now());
        let job = h.submit(1, c).await;
        let after = unix_ms(SystemTime::now());
        assert!(job.deadline_unix_ms >= before + 60_000 && job.deadline_unix_ms <= after + 60_000);
        assert_eq!(job.priority, Some(7));
    }

    #[tokio::test]
    async fn blocked_broker_sheds_new_calls() {
        let mut h = harness(10);
        h.link_up(1).await;
        let mut a = h.client(1).await;
        h.bridge_says(1, ToGateway::Broker(BrokerState::Blocked))
            .await;
        h.handle
            .call(1, call(Some(json!(1)), "echo", json!({})), None)
            .await
            .expect("router alive");
        let r = response(&mut a).await;
        assert_eq!(r["error"]["code"], codes::BROKER_UNAVAILABLE);
        assert!(h.jobs.try_recv().is_err());
    }
}
