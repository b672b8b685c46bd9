//! A router driven through its channels, for the tests beside each part of it.

use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use wsmq_ipc_proto::{
    BrokerState, CancelReason, Job, JobId, Reply, ReplyBody, ReplySeq, ToBridge, ToGateway,
};

use super::{Health, Limits, RouterHandle, ToLink, spawn};
use crate::jsonrpc::Call;
use crate::link::{LinkEvent, Outgoing};
use crate::outbound::{ClientId, Outbound};

pub(super) struct Harness {
    pub(super) handle: RouterHandle,
    pub(super) events: mpsc::Sender<LinkEvent>,
    pub(super) jobs: mpsc::Receiver<Outgoing>,
    pub(super) taken: mpsc::Receiver<Outgoing>,
    pub(super) health: watch::Receiver<Health>,
    next_seq: u64,
}

pub(super) fn harness(per_client: usize) -> Harness {
    harness_with(per_client, 100)
}

pub(super) fn harness_with(per_client: usize, max_held: usize) -> Harness {
    harness_full(per_client, max_held, Duration::ZERO)
}

pub(super) fn harness_full(per_client: usize, max_held: usize, resume_within: Duration) -> Harness {
    let (events, events_rx) = mpsc::channel(64);
    let (jobs_tx, jobs) = mpsc::channel(64);
    let (taken_tx, taken) = mpsc::channel(64);
    let (health_tx, health) = watch::channel(Health::default());
    let limits = Limits {
        per_client,
        global: 1000,
        default_timeout: Duration::from_secs(30),
        max_timeout: Duration::from_secs(60),
        max_held,
        resume_within,
        keep: crate::sessions::KeepLimits::default(),
    };
    let to_link = ToLink {
        jobs: jobs_tx,
        taken: taken_tx,
    };
    let (handle, _task) = spawn(limits, events_rx, to_link, health_tx);
    Harness {
        handle,
        events,
        jobs,
        taken,
        health,
        next_seq: 0,
    }
}

pub(super) fn call(id: Option<Value>, method: &str, params: Value) -> Call {
    Call {
        id: id.map(|v| serde_json::value::to_raw_value(&v).expect("raw")),
        method: method.into(),
        params: Some(params.to_string().into()),
        options: Default::default(),
    }
}

pub(super) fn raw(v: Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(&v).expect("raw")
}

impl Harness {
    pub(super) async fn link_up(&self, epoch: u64) {
        self.events
            .send(LinkEvent::Up {
                epoch,
                broker: BrokerState::Up,
            })
            .await
            .expect("router alive");
    }

    pub(super) async fn client(&self, id: ClientId) -> mpsc::Receiver<Outbound> {
        let (tx, rx) = mpsc::channel(4);
        self.handle
            .connect(
                id,
                tx,
                None,
                None,
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            )
            .await
            .expect("router alive")
            .expect("attached");
        rx
    }

    /// Sends a call and returns the job the bridge would receive.
    pub(super) async fn submit(&mut self, client: ClientId, call: Call) -> Job {
        self.handle
            .call(client, call, None)
            .await
            .expect("router alive");
        match self.jobs.recv().await.expect("a job").msg {
            ToBridge::Submit(job) => job,
            other => panic!("expected a job, got {other:?}"),
        }
    }

    pub(super) async fn bridge_says(&self, epoch: u64, msg: ToGateway) {
        self.events
            .send(LinkEvent::Message { epoch, msg })
            .await
            .expect("router alive");
    }

    pub(super) async fn reply(&mut self, epoch: u64, job: JobId, body: ReplyBody) -> ReplySeq {
        self.next_seq += 1;
        let seq = ReplySeq(self.next_seq);
        self.bridge_says(epoch, ToGateway::Reply(Reply { seq, job, body }))
            .await;
        seq
    }
}

pub(super) async fn response(rx: &mut mpsc::Receiver<Outbound>) -> Value {
    let out = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a response in time")
        .expect("client still registered");
    serde_json::from_str(&out.text).expect("valid JSON")
}

/// The next job-channel message, which must be a cancellation.
pub(super) async fn cancellation(h: &mut Harness) -> (JobId, CancelReason) {
    match h.jobs.recv().await.expect("a message").msg {
        ToBridge::Cancel { job, reason } => (job, reason),
        other => panic!("expected a cancellation, got {other:?}"),
    }
}

pub(super) fn assert_silent(rx: &mut mpsc::Receiver<Outbound>) {
    assert!(rx.try_recv().is_err(), "unexpected response");
}
