//! The table of calls in flight, and the only place a worker's reply is matched to a client.
//!
//! One task owns the table of pending jobs (job id → client, JSON-RPC id, method, deadline),
//! the registry of connected clients with their outbound queues, and the timers of every
//! call's deadline; connections and the IPC link reach it through channels (the actor/handle
//! pattern), so no lock is shared anywhere.
//!
//! The router never waits on anything: it hands jobs to the IPC writer and responses to
//! clients with `try_send`. That is what keeps one slow client, or a backed-up bridge, from
//! stalling anyone else, and what rules out a read/write deadlock on the Unix socket. A client
//! whose queue is full is disconnected; a job the bridge cannot take right now is answered
//! -32000 at once.
//!
//! Every call ends exactly once — result, error, timeout or cancel — when its entry leaves the
//! table; whatever arrives for it afterwards (a late result, a duplicate delivery, progress
//! after the end) finds no entry and is dropped and counted, so it can never reach a client.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::time::{DelayQueue, delay_queue};
use tracing::{debug, info, warn};
use wsmq_ipc_proto::{
    BrokerState, CancelReason, Job, JobId, Rejection, Reply, ReplyBody, ReplySeq, ToBridge,
    ToGateway,
};

use crate::jsonrpc::{self, Call};
use crate::link::{LinkEvent, Outgoing};
use crate::metrics::{self, Dropped, MethodLabels, Outcome};
use crate::sessions::{Delivery, Grant, ResumeRefused, SessionId, Sessions};

/// Identifies one websocket connection for as long as the gateway runs.
pub(crate) type ClientId = u64;

/// Commands from connections. Connections wait for room here, which slows only themselves.
const COMMAND_CAPACITY: usize = 1024;

/// How often held calls are offered to the bridge again while it is up (after a failed
/// publish, when no state change would trigger it).
const HELD_RETRY: Duration = Duration::from_secs(1);

/// How many ended calls the router remembers, to tell a late result from a duplicate or an
/// unknown one in its counters. Oldest forgotten first.
const REMEMBERED_ENDINGS: usize = 65_536;

/// Something for one client: a response, or a progress notification.
#[derive(Debug)]
pub(crate) struct Outbound {
    /// The batch the call belonged to, as the connection numbered it (responses only).
    pub(crate) batch: Option<u64>,
    pub(crate) kind: OutboundKind,
    pub(crate) text: String,
}

/// Whether an [`Outbound`] ends its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboundKind {
    Response,
    /// `$/progress` or `$/session`: answers no call.
    Notification,
}

#[derive(Debug)]
enum Command {
    Connect {
        client: ClientId,
        tx: mpsc::Sender<Outbound>,
        resume: Option<String>,
        identity: Option<Arc<str>>,
        reply: oneshot::Sender<Result<Grant, ResumeRefused>>,
    },
    Disconnect {
        client: ClientId,
        unsent: Vec<Outbound>,
    },
    Call {
        client: ClientId,
        call: Call,
        batch: Option<u64>,
    },
    Cancel {
        client: ClientId,
        id: Box<RawValue>,
    },
}

/// Cloneable handle the connections use to reach the router.
#[derive(Debug, Clone)]
pub(crate) struct RouterHandle {
    tx: mpsc::Sender<Command>,
}

/// The router stopped; only happens during shutdown.
#[derive(Debug, thiserror::Error)]
#[error("the router has stopped")]
pub(crate) struct RouterGone;

impl RouterHandle {
    /// Registers a connection, for a new session or to resume the one `resume` names; its
    /// messages arrive on `tx` (first `$/session`, then whatever the session kept). Dropping
    /// the router's side of `tx` (the receiver sees `None`) means the client was too slow and
    /// must be closed. `identity` is the authenticated caller: its calls carry it to the
    /// workers, and only it may resume the session.
    pub(crate) async fn connect(
        &self,
        client: ClientId,
        tx: mpsc::Sender<Outbound>,
        resume: Option<String>,
        identity: Option<Arc<str>>,
    ) -> Result<Result<Grant, ResumeRefused>, RouterGone> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Connect {
            client,
            tx,
            resume,
            identity,
            reply,
        })
        .await?;
        answer.await.map_err(|_| RouterGone)
    }

    /// The connection is gone; `unsent` is what it received and could not write (kept for a
    /// resume).
    pub(crate) async fn disconnect(
        &self,
        client: ClientId,
        unsent: Vec<Outbound>,
    ) -> Result<(), RouterGone> {
        self.send(Command::Disconnect { client, unsent }).await
    }

    /// Starts a call. Every call with an id gets exactly one [`OutboundKind::Response`].
    pub(crate) async fn call(
        &self,
        client: ClientId,
        call: Call,
        batch: Option<u64>,
    ) -> Result<(), RouterGone> {
        self.send(Command::Call {
            client,
            call,
            batch,
        })
        .await
    }

    /// Cancels the client's own call with JSON-RPC id `id` (raw JSON), if it is still running.
    pub(crate) async fn cancel(
        &self,
        client: ClientId,
        id: Box<RawValue>,
    ) -> Result<(), RouterGone> {
        self.send(Command::Cancel { client, id }).await
    }

    async fn send(&self, cmd: Command) -> Result<(), RouterGone> {
        self.tx.send(cmd).await.map_err(|_| RouterGone)
    }
}

/// What `/healthz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Health {
    pub(crate) bridge: bool,
    pub(crate) broker: bool,
    /// RabbitMQ is connected but blocks publishers: alive, not ready.
    pub(crate) blocked: bool,
}

/// Caps and defaults for calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) per_client: usize,
    pub(crate) global: usize,
    /// Deadline of a call that names none.
    pub(crate) default_timeout: Duration,
    /// Longest deadline a call may ask for (longer requests are cut to this).
    pub(crate) max_timeout: Duration,
    /// Calls held while the bridge or RabbitMQ is away, at most; past it, -32000 at once.
    pub(crate) max_held: usize,
    /// How long a session outlives its connection; zero: not at all.
    pub(crate) resume_within: Duration,
}

/// Where the router sends what the bridge must hear.
#[derive(Debug)]
pub(crate) struct ToLink {
    /// Jobs and cancellations; full means the bridge is backed up.
    pub(crate) jobs: mpsc::Sender<Outgoing>,
    /// Confirmations that replies were taken; sized so it is never full (see
    /// `MAX_UNTAKEN_REPLIES`).
    pub(crate) taken: mpsc::Sender<Outgoing>,
}

/// How a call ended, remembered for a while to classify what arrives after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Answered,
    TimedOut,
    Cancelled,
}

/// Counts of replies that reached nobody, and why.
#[derive(Debug, Default)]
struct Counters {
    /// Replies for clients that had disconnected.
    dropped_client_gone: u64,
    /// Results that came after the call's deadline.
    dropped_late: u64,
    /// Results of calls the client had cancelled.
    dropped_cancelled: u64,
    /// Second deliveries of a reply (at-least-once delivery).
    dropped_duplicate: u64,
    /// Replies for jobs this gateway does not know (or no longer remembers).
    dropped_unknown_job: u64,
    /// Clients disconnected because their outbound queue was full.
    slow_clients_closed: u64,
}

struct Pending {
    session: SessionId,
    id: Option<Box<RawValue>>,
    method: String,
    batch: Option<u64>,
    state: CallState,
    /// The job as submitted, kept until RabbitMQ confirms it, to send again if needed.
    job: Option<Job>,
    deadline: delay_queue::Key,
    started: Instant,
}

/// Where a call is on its way to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// Waiting for the bridge and RabbitMQ to be back.
    Held,
    /// Sent to the bridge, not yet confirmed by RabbitMQ.
    Submitted,
    /// RabbitMQ confirmed it; its reply will come even across a bridge restart.
    Published,
}

/// Starts the router; it runs until every [`RouterHandle`] is dropped.
pub(crate) fn spawn(
    limits: Limits,
    link_events: mpsc::Receiver<LinkEvent>,
    to_link: ToLink,
    health: watch::Sender<Health>,
) -> (RouterHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
    let router = Router {
        limits,
        to_link,
        health,
        pending: HashMap::new(),
        sessions: Sessions::new(limits.resume_within),
        deadlines: DelayQueue::new(),
        endings: Endings::default(),
        methods: MethodLabels::default(),
        held: VecDeque::new(),
        held_count: 0,
        epoch: None,
        broker: BrokerState::Down,
        counters: Counters::default(),
    };
    (
        RouterHandle { tx },
        tokio::spawn(router.run(rx, link_events)),
    )
}

struct Router {
    limits: Limits,
    to_link: ToLink,
    health: watch::Sender<Health>,
    pending: HashMap<JobId, Pending>,
    sessions: Sessions,
    /// One timer per pending call.
    deadlines: DelayQueue<JobId>,
    endings: Endings,
    /// Method names usable as metric labels.
    methods: MethodLabels,
    /// Calls waiting for the bridge and RabbitMQ, oldest first (entries whose call has since
    /// ended or been sent are skipped).
    held: VecDeque<JobId>,
    /// How many pending calls are held.
    held_count: usize,
    /// The current IPC session, if the bridge is connected.
    epoch: Option<u64>,
    broker: BrokerState,
    counters: Counters,
}

/// A bounded memory of how recent calls ended.
#[derive(Default)]
struct Endings {
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

    fn get(&self, job: &JobId) -> Option<Ending> {
        self.how.get(job).copied()
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Router {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut link_events: mpsc::Receiver<LinkEvent>,
    ) {
        let mut link_open = true;
        let mut retry = tokio::time::interval(HELD_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Replies first: they free capacity that new calls want.
                biased;
                event = link_events.recv(), if link_open => match event {
                    Some(event) => self.on_link(event),
                    None => link_open = false,
                },
                Some(expired) = self.deadlines.next(), if !self.deadlines.is_empty() => {
                    self.on_deadline(expired.into_inner());
                }
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = retry.tick(), if self.held_count > 0 => self.flush_held(),
                dropped = self.sessions.next_expired(), if self.sessions.expiring() => {
                    debug!(dropped, "session expired");
                    for _ in 0..dropped {
                        metrics::reply_dropped(Dropped::SessionExpired);
                    }
                }
            }
        }
        let c = &self.counters;
        info!(
            pending = self.pending.len(),
            dropped_client_gone = c.dropped_client_gone,
            dropped_late = c.dropped_late,
            dropped_cancelled = c.dropped_cancelled,
            dropped_duplicate = c.dropped_duplicate,
            dropped_unknown_job = c.dropped_unknown_job,
            slow_clients_closed = c.slow_clients_closed,
            "router stopped"
        );
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Connect {
                client,
                tx,
                resume,
                identity,
                reply,
            } => {
                let attached =
                    self.sessions
                        .attach(client, tx.clone(), resume.as_deref(), identity);
                let answer = match attached {
                    Ok((grant, kept)) => {
                        if self.sessions.resumable() {
                            let text = jsonrpc::session_notification(
                                &grant.token,
                                self.sessions.resume_within().as_secs(),
                            );
                            let hello = Outbound {
                                batch: None,
                                kind: OutboundKind::Notification,
                                text,
                            };
                            // A fresh queue: these fit (what a session keeps is bounded below
                            // its size).
                            let _ = tx.try_send(hello);
                        }
                        debug!(
                            client,
                            session = grant.session,
                            resumed = resume.is_some(),
                            kept = kept.len(),
                            "connection attached"
                        );
                        for out in kept {
                            let _ = tx.try_send(out);
                        }
                        Ok(grant)
                    }
                    Err(refused) => Err(refused),
                };
                let _ = reply.send(answer);
            }
            Command::Disconnect { client, unsent } => {
                // The session's calls go on; their results wait for a resume (or are dropped
                // when it expires).
                let dropped = self.sessions.detach(client, unsent);
                for _ in 0..dropped {
                    metrics::reply_dropped(Dropped::ClientGone);
                }
            }
            Command::Call {
                client,
                call,
                batch,
            } => self.on_call(client, call, batch),
            Command::Cancel { client, id } => self.on_cancel(client, &id),
        }
    }

    fn on_call(&mut self, client: ClientId, call: Call, batch: Option<u64>) {
        let Some(session) = self.sessions.session_of(client) else {
            debug!(client, "call from a connection that has gone; dropped");
            return;
        };
        let refuse = |this: &mut Self, call: &Call, code: i64, message: &str, data: &str| {
            metrics::call_ended(
                this.methods.label(&call.method),
                outcome_of(code),
                Duration::ZERO,
            );
            match &call.id {
                Some(id) => {
                    let text = jsonrpc::error_response(Some(id), code, message, Some(data));
                    this.respond_to(session, batch, OutboundKind::Response, text);
                }
                None => debug!(client, method = %call.method, message, "notification dropped"),
            }
        };
        let unavailable = "broker unavailable";
        if self.broker == BrokerState::Blocked && self.epoch.is_some() {
            // A resource alarm is not an outage: holding would only grow memory.
            return refuse(
                self,
                &call,
                jsonrpc::BROKER_UNAVAILABLE,
                unavailable,
                "RabbitMQ is blocking publishers (resource alarm)",
            );
        }
        let too_many = "too many calls in flight";
        let in_flight = self.sessions.in_flight(session);
        if in_flight >= self.limits.per_client {
            let data = format!(
                "at most {} calls in flight per connection",
                self.limits.per_client
            );
            return refuse(self, &call, jsonrpc::TOO_MANY_IN_FLIGHT, too_many, &data);
        }
        if self.pending.len() >= self.limits.global {
            return refuse(
                self,
                &call,
                jsonrpc::TOO_MANY_IN_FLIGHT,
                too_many,
                "the gateway is at capacity",
            );
        }
        let available = self.available();
        if !available && self.held_count >= self.limits.max_held {
            let data = format!(
                "{}; {} calls are already waiting for it",
                self.outage(),
                self.held_count
            );
            return refuse(self, &call, jsonrpc::BROKER_UNAVAILABLE, unavailable, &data);
        }

        let timeout = call
            .options
            .timeout_ms
            .map_or(self.limits.default_timeout, Duration::from_millis)
            .min(self.limits.max_timeout);
        let job_id = JobId(uuid::Uuid::new_v4().as_u128());
        let job = Job {
            id: job_id,
            method: call.method.clone(),
            params: call
                .params
                .as_deref()
                .map_or("null", RawValue::get)
                .to_owned(),
            client,
            deadline_unix_ms: unix_ms(SystemTime::now() + timeout),
            priority: call.options.priority,
            caller: self.sessions.identity(session).map(|id| id.to_string()),
        };
        if available && !self.submit(&job) {
            return refuse(
                self,
                &call,
                jsonrpc::BROKER_UNAVAILABLE,
                unavailable,
                "the bridge is backed up",
            );
        }
        let state = if available {
            debug!(client, job = %job_id, method = %call.method, ?timeout, "call submitted");
            CallState::Submitted
        } else {
            debug!(client, job = %job_id, method = %call.method, ?timeout, "call held until the bridge and RabbitMQ are back");
            self.held.push_back(job_id);
            self.held_count += 1;
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

    /// Whether jobs can go to RabbitMQ right now.
    fn available(&self) -> bool {
        self.epoch.is_some() && self.broker == BrokerState::Up
    }

    /// What is down, for error messages.
    fn outage(&self) -> &'static str {
        match (self.epoch, self.broker) {
            (None, _) => "the bridge is not connected",
            (Some(_), BrokerState::Blocked) => "RabbitMQ is blocking publishers (resource alarm)",
            (Some(_), _) => "RabbitMQ is not connected",
        }
    }

    /// Hands a job to the IPC writer for the current session; false if it has no room.
    fn submit(&mut self, job: &Job) -> bool {
        let Some(epoch) = self.epoch else {
            return false;
        };
        let out = Outgoing {
            epoch,
            msg: ToBridge::Submit(job.clone()),
        };
        self.to_link.jobs.try_send(out).is_ok()
    }

    /// Puts a submitted call back on hold: its publish failed, or the bridge went away before
    /// RabbitMQ confirmed it. It is sent again when both are back (at least once: a job that
    /// was in fact published may run twice, and its second reply is dropped as a duplicate).
    fn hold(&mut self, job: JobId) {
        if let Some(p) = self.pending.get_mut(&job)
            && p.state == CallState::Submitted
        {
            p.state = CallState::Held;
            self.held.push_back(job);
            self.held_count += 1;
        }
    }

    /// Sends held calls, oldest first, while the bridge takes them.
    fn flush_held(&mut self) {
        while self.available() {
            let Some(job) = self.held.pop_front() else {
                return;
            };
            let Some(p) = self.pending.get(&job) else {
                continue;
            };
            if p.state != CallState::Held {
                continue;
            }
            let Some(copy) = p.job.clone() else {
                continue;
            };
            if !self.submit(&copy) {
                // The bridge is backed up: try again on the next tick.
                self.held.push_front(job);
                return;
            }
            self.held_count = self.held_count.saturating_sub(1);
            if let Some(p) = self.pending.get_mut(&job) {
                p.state = CallState::Submitted;
            }
            debug!(%job, "held call submitted");
        }
    }

    fn on_cancel(&mut self, client: ClientId, id: &RawValue) {
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
        self.finish_with_error(
            job,
            Ending::Cancelled,
            jsonrpc::CANCELLED,
            "cancelled",
            "cancelled by the client",
        );
        self.tell_workers(job, CancelReason::Cancelled);
    }

    fn on_deadline(&mut self, job: JobId) {
        let Some(pending) = self.pending.get(&job) else {
            return;
        };
        if pending.state == CallState::Held {
            // It never reached RabbitMQ: the outage, not the worker, is why it failed.
            let data = format!("{} until the call's deadline", self.outage());
            self.finish_with_error(
                job,
                Ending::Answered,
                jsonrpc::BROKER_UNAVAILABLE,
                "broker unavailable",
                &data,
            );
            return;
        }
        debug!(%job, session = pending.session, method = %pending.method, "call timed out");
        let data = format!(
            "no result for {:?} before the call's deadline",
            pending.method
        );
        self.finish_with_error(job, Ending::TimedOut, jsonrpc::TIMEOUT, "timeout", &data);
        self.tell_workers(job, CancelReason::Timeout);
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

    fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Up { epoch, broker } => {
                metrics::link_connected();
                self.epoch = Some(epoch);
                self.broker = broker;
                info!(broker = ?broker, held = self.held_count, "bridge connected");
                self.flush_held();
            }
            LinkEvent::Down => {
                self.epoch = None;
                self.broker = BrokerState::Down;
                // Jobs RabbitMQ never confirmed may or may not have been published: send them
                // again when the bridge is back (a duplicate reply is dropped). Confirmed jobs
                // just wait: their replies sit in the durable reply queue.
                let unconfirmed: Vec<JobId> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.state == CallState::Submitted)
                    .map(|(id, _)| *id)
                    .collect();
                warn!(
                    unconfirmed = unconfirmed.len(),
                    held = self.held_count,
                    waiting = self.pending.len(),
                    "bridge disconnected; holding calls until it is back"
                );
                for job in unconfirmed {
                    self.hold(job);
                }
            }
            LinkEvent::Message { epoch, msg } => self.on_bridge_message(epoch, msg),
        }
        self.health.send_if_modified(|h| {
            let now = Health {
                bridge: self.epoch.is_some(),
                broker: self.epoch.is_some() && self.broker != BrokerState::Down,
                blocked: self.broker == BrokerState::Blocked,
            };
            metrics::link_state(now.bridge, now.broker);
            std::mem::replace(h, now) != now
        });
    }

    fn on_bridge_message(&mut self, epoch: u64, msg: ToGateway) {
        match msg {
            ToGateway::Broker(state) => {
                if self.epoch == Some(epoch) {
                    info!(broker = ?state, held = self.held_count, "broker state changed");
                    self.broker = state;
                    self.flush_held();
                }
            }
            ToGateway::Published { job } => {
                if let Some(p) = self.pending.get_mut(&job) {
                    p.state = CallState::Published;
                    p.job = None;
                    self.methods.learn(&p.method);
                }
            }
            ToGateway::Rejected {
                job,
                reason: Rejection::BrokerUnavailable | Rejection::Nacked,
            } => {
                // Not taken by RabbitMQ: wait and try again (until the call's deadline).
                debug!(%job, "publish failed; call held for another try");
                self.hold(job);
            }
            ToGateway::Rejected { job, reason } => {
                let method = self
                    .pending
                    .get(&job)
                    .map(|p| p.method.clone())
                    .unwrap_or_default();
                let (code, message, data) = match reason {
                    Rejection::NoRoute => (
                        jsonrpc::METHOD_NOT_FOUND,
                        "Method not found",
                        no_worker_serves(&method),
                    ),
                    Rejection::InvalidMethod => (
                        jsonrpc::METHOD_NOT_FOUND,
                        "Method not found",
                        "method name too long".to_owned(),
                    ),
                    Rejection::BrokerUnavailable => (
                        jsonrpc::BROKER_UNAVAILABLE,
                        "broker unavailable",
                        "RabbitMQ did not take the job".to_owned(),
                    ),
                    Rejection::Nacked => (
                        jsonrpc::BROKER_UNAVAILABLE,
                        "broker unavailable",
                        "RabbitMQ refused the job".to_owned(),
                    ),
                    Rejection::Expired => (
                        jsonrpc::TIMEOUT,
                        "timeout",
                        "the deadline passed before the job could be published".to_owned(),
                    ),
                };
                self.finish_with_error(job, Ending::Answered, code, message, &data);
            }
            ToGateway::Reply(reply) => self.on_reply(epoch, reply),
            ToGateway::Welcome(_) | ToGateway::Refused(_) => {
                warn!("unexpected handshake message mid-session; ignored");
            }
        }
    }

    fn on_reply(&mut self, epoch: u64, Reply { seq, job, body }: Reply) {
        self.taken(epoch, seq);
        if let ReplyBody::Progress(value) = body {
            return self.on_progress(job, value);
        }
        let outcome = match &body {
            ReplyBody::Result(_) | ReplyBody::Progress(_) => Outcome::Ok,
            ReplyBody::Error(_) => Outcome::WorkerError,
            ReplyBody::Invalid { .. } => Outcome::InvalidReply,
        };
        let Some(pending) = self.end(job, Ending::Answered, outcome) else {
            return self.count_orphan(job);
        };
        let Some(id) = pending.id.as_deref() else {
            debug!(%job, session = pending.session, method = %pending.method, "notification finished");
            return;
        };
        let text = match body {
            ReplyBody::Result(json) => match RawValue::from_string(json) {
                Ok(result) => jsonrpc::result_response(id, &result),
                Err(e) => invalid_reply(id, &pending.method, &e.to_string()),
            },
            ReplyBody::Error(err) => {
                let data = err.data.and_then(|d| RawValue::from_string(d).ok());
                jsonrpc::error_response_raw(Some(id), err.code, &err.message, data.as_deref())
            }
            ReplyBody::Invalid { reason } => {
                warn!(%job, session = pending.session, method = %pending.method, %reason, "worker replied something unreadable");
                invalid_reply(id, &pending.method, &reason)
            }
            ReplyBody::Progress(_) => return,
        };
        self.respond_to(pending.session, pending.batch, OutboundKind::Response, text);
    }

    fn on_progress(&mut self, job: JobId, value: String) {
        let Some(pending) = self.pending.get(&job) else {
            // The call has ended: progress never follows the final response.
            return self.count_orphan(job);
        };
        let Some(id) = pending.id.as_deref() else {
            return;
        };
        let text = match RawValue::from_string(value) {
            Ok(value) => jsonrpc::progress_notification(id, &value),
            Err(e) => {
                warn!(%job, error = %e, "progress report is not JSON; dropped");
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

    /// Ends a call: removes it from the table, its timer and its client's books.
    fn end(&mut self, job: JobId, ending: Ending, outcome: Outcome) -> Option<Pending> {
        let pending = self.pending.remove(&job)?;
        if pending.state == CallState::Held {
            self.held_count = self.held_count.saturating_sub(1);
        }
        self.deadlines.try_remove(&pending.deadline);
        self.endings.remember(job, ending);
        let took = pending.started.elapsed();
        debug!(%job, session = pending.session, method = %pending.method, ?outcome, ?took, "call ended");
        metrics::call_ended(self.methods.label(&pending.method), outcome, took);
        metrics::calls_in_flight(self.pending.len());
        self.sessions
            .call_ended(pending.session, pending.id.as_deref(), job);
        Some(pending)
    }

    fn finish_with_error(
        &mut self,
        job: JobId,
        ending: Ending,
        code: i64,
        message: &str,
        data: &str,
    ) {
        let Some(pending) = self.end(job, ending, outcome_of(code)) else {
            return;
        };
        match pending.id.as_deref() {
            Some(id) => {
                let text = jsonrpc::error_response(Some(id), code, message, Some(data));
                self.respond_to(pending.session, pending.batch, OutboundKind::Response, text);
            }
            None => {
                debug!(%job, session = pending.session, method = %pending.method, message, "notification failed")
            }
        }
    }

    fn respond_to(
        &mut self,
        session: SessionId,
        batch: Option<u64>,
        kind: OutboundKind,
        text: String,
    ) {
        match self
            .sessions
            .deliver(session, Outbound { batch, kind, text })
        {
            Delivery::Sent | Delivery::Kept => {}
            Delivery::NoSession => {
                self.counters.dropped_client_gone += 1;
                metrics::reply_dropped(Dropped::ClientGone);
                debug!(session, "response for a session that has ended dropped");
            }
            Delivery::BufferFull => {
                metrics::reply_dropped(Dropped::SessionBufferFull);
                warn!(
                    session,
                    "session kept too much while disconnected; response dropped"
                );
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

/// The metrics outcome of a call answered with error `code` by the gateway itself.
/// The `data` of the -32601 for a method no worker serves; also given for a method the
/// caller's allowlist excludes, so that the two cannot be told apart.
pub(crate) fn no_worker_serves(method: &str) -> String {
    format!("no worker serves {method:?}")
}

fn outcome_of(code: i64) -> Outcome {
    match code {
        jsonrpc::TIMEOUT => Outcome::Timeout,
        jsonrpc::CANCELLED => Outcome::Cancelled,
        jsonrpc::METHOD_NOT_FOUND => Outcome::MethodNotFound,
        jsonrpc::TOO_MANY_IN_FLIGHT => Outcome::TooManyInFlight,
        _ => Outcome::BrokerUnavailable,
    }
}

fn invalid_reply(id: &RawValue, method: &str, reason: &str) -> String {
    let message = format!("Internal error: the worker for method {method:?} sent an invalid reply");
    jsonrpc::error_response(Some(id), jsonrpc::INTERNAL_ERROR, &message, Some(reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use wsmq_ipc_proto::WorkerError;

    struct Harness {
        handle: RouterHandle,
        events: mpsc::Sender<LinkEvent>,
        jobs: mpsc::Receiver<Outgoing>,
        taken: mpsc::Receiver<Outgoing>,
        health: watch::Receiver<Health>,
        next_seq: u64,
    }

    fn harness(per_client: usize) -> Harness {
        harness_with(per_client, 100)
    }

    fn harness_with(per_client: usize, max_held: usize) -> Harness {
        harness_full(per_client, max_held, Duration::ZERO)
    }

    fn harness_full(per_client: usize, max_held: usize, resume_within: Duration) -> Harness {
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

    fn call(id: Option<Value>, method: &str, params: Value) -> Call {
        Call {
            id: id.map(|v| serde_json::value::to_raw_value(&v).expect("raw")),
            method: method.into(),
            params: Some(serde_json::value::to_raw_value(&params).expect("raw")),
            options: jsonrpc::CallOptions::default(),
        }
    }

    fn raw(v: Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).expect("raw")
    }

    impl Harness {
        async fn link_up(&self, epoch: u64) {
            self.events
                .send(LinkEvent::Up {
                    epoch,
                    broker: BrokerState::Up,
                })
                .await
                .expect("router alive");
        }

        async fn client(&self, id: ClientId) -> mpsc::Receiver<Outbound> {
            let (tx, rx) = mpsc::channel(4);
            self.handle
                .connect(id, tx, None, None)
                .await
                .expect("router alive")
                .expect("attached");
            rx
        }

        /// Sends a call and returns the job the bridge would receive.
        async fn submit(&mut self, client: ClientId, call: Call) -> Job {
            self.handle
                .call(client, call, None)
                .await
                .expect("router alive");
            match self.jobs.recv().await.expect("a job").msg {
                ToBridge::Submit(job) => job,
                other => panic!("expected a job, got {other:?}"),
            }
        }

        async fn bridge_says(&self, epoch: u64, msg: ToGateway) {
            self.events
                .send(LinkEvent::Message { epoch, msg })
                .await
                .expect("router alive");
        }

        async fn reply(&mut self, epoch: u64, job: JobId, body: ReplyBody) -> ReplySeq {
            self.next_seq += 1;
            let seq = ReplySeq(self.next_seq);
            self.bridge_says(epoch, ToGateway::Reply(Reply { seq, job, body }))
                .await;
            seq
        }
    }

    async fn response(rx: &mut mpsc::Receiver<Outbound>) -> Value {
        let out = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a response in time")
            .expect("client still registered");
        serde_json::from_str(&out.text).expect("valid JSON")
    }

    /// The next job-channel message, which must be a cancellation.
    async fn cancellation(h: &mut Harness) -> (JobId, CancelReason) {
        match h.jobs.recv().await.expect("a message").msg {
            ToBridge::Cancel { job, reason } => (job, reason),
            other => panic!("expected a cancellation, got {other:?}"),
        }
    }

    fn assert_silent(rx: &mut mpsc::Receiver<Outbound>) {
        assert!(rx.try_recv().is_err(), "unexpected response");
    }

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
        assert_eq!(job_a.params, r#"{"who":"a"}"#);

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
    async fn every_reply_is_confirmed_to_the_bridge_for_its_session() {
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
    async fn calls_while_the_bridge_is_away_are_held_and_sent_when_it_returns() {
        let mut h = harness(10);
        let mut a = h.client(1).await;
        h.handle
            .call(1, call(Some(json!(1)), "echo", json!({"x": 1})), None)
            .await
            .expect("router alive");
        h.link_up(4).await;
        let out = h.jobs.recv().await.expect("the held job");
        assert_eq!(out.epoch, 4, "sent on the new session");
        let ToBridge::Submit(job) = out.msg else {
            panic!("expected a job, got {:?}", out.msg);
        };
        assert_eq!(job.params, r#"{"x":1}"#);
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
            (json!(2), json!(jsonrpc::BROKER_UNAVAILABLE))
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
        assert_eq!(r["error"]["code"], jsonrpc::BROKER_UNAVAILABLE);
        h.link_up(1).await;
        assert!(
            h.jobs.try_recv().is_err(),
            "an answered call is not sent later"
        );
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

        // Both replies arrive through the new session, each answered once.
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
            (json!(2), json!(jsonrpc::TOO_MANY_IN_FLIGHT))
        );
        // Once the first finishes there is room again.
        h.reply(1, first.id, ReplyBody::Result("0".into())).await;
        assert_eq!(response(&mut a).await["id"], 1);
        let again = h.submit(1, call(Some(json!(3)), "sleep", json!({}))).await;
        assert_eq!(again.method, "sleep");
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
        assert_eq!(r["error"]["code"], jsonrpc::INTERNAL_ERROR);
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
            (json!(9), json!(jsonrpc::METHOD_NOT_FOUND))
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
            (json!(1), json!(jsonrpc::TIMEOUT))
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
            (json!("c1"), json!(jsonrpc::CANCELLED))
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
        assert_eq!(response(&mut a).await["error"]["code"], jsonrpc::CANCELLED);
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
                ReplyBody::Progress(format!("{{\"step\":{step}}}")),
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
        assert_eq!(r["error"]["code"], jsonrpc::BROKER_UNAVAILABLE);
        assert!(h.jobs.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_resumed_session_gets_what_arrived_while_it_was_away_then_the_rest() {
        let mut h = harness_full(10, 100, Duration::from_secs(30));
        h.link_up(1).await;
        let (tx, mut first) = mpsc::channel(8);
        let grant = h
            .handle
            .connect(1, tx, None, None)
            .await
            .expect("router alive")
            .expect("attached");
        let hello: Value =
            serde_json::from_str(&first.recv().await.expect("$/session").text).expect("json");
        assert_eq!(
            hello,
            json!({"jsonrpc":"2.0","method":"$/session","params":{"session": grant.token, "resume_within_s": 30}})
        );
        let early = h
            .submit(1, call(Some(json!("early")), "echo", json!({})))
            .await;
        let late = h
            .submit(1, call(Some(json!("late")), "echo", json!({})))
            .await;
        h.handle
            .disconnect(1, Vec::new())
            .await
            .expect("router alive");
        // Commands are handled in order, so once another connection is attached the
        // disconnect has been too (link events, which carry the reply, go first otherwise).
        let _other = h.client(99).await;
        h.reply(1, early.id, ReplyBody::Result("1".into())).await;
        assert!(h.taken.recv().await.is_some());

        let (tx2, mut second) = mpsc::channel(8);
        let again = h
            .handle
            .connect(2, tx2, Some(grant.token.clone()), None)
            .await
            .expect("router alive")
            .expect("resumed");
        assert_eq!(again.token, grant.token);
        assert_eq!(
            second.recv().await.expect("$/session").kind,
            OutboundKind::Notification
        );
        assert_eq!(response(&mut second).await["id"], "early");
        h.reply(1, late.id, ReplyBody::Result("2".into())).await;
        assert_eq!(response(&mut second).await["id"], "late");
        assert_silent(&mut first);
    }

    #[tokio::test]
    async fn a_session_is_served_by_one_connection_at_a_time() {
        let h = harness_full(10, 100, Duration::from_secs(30));
        let (tx, _rx) = mpsc::channel(8);
        let grant = h
            .handle
            .connect(1, tx.clone(), None, None)
            .await
            .expect("router alive")
            .expect("attached");
        let second = h
            .handle
            .connect(2, tx, Some(grant.token), None)
            .await
            .expect("router alive");
        assert_eq!(second.err(), Some(ResumeRefused::InUse));
    }
}
