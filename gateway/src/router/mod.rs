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
//!
//! The one task's work, by file: this file holds the table, the run loop and the link's
//! events; [`handle`] is how connections reach the task; [`admission`] decides whether a new
//! call is taken; [`held`] keeps calls that wait out an outage; [`replies`] carries what the
//! bridge sends back to the client that asked; [`endings`] ends a call (result, error,
//! deadline or cancel) and remembers how.

mod admission;
mod endings;
mod handle;
mod held;
mod replies;

#[cfg(test)]
mod harness;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio_util::time::{DelayQueue, delay_queue};
use tracing::{debug, info, warn};
use wsmq_ipc_proto::{BrokerState, Job, JobId, ToGateway};

use crate::jsonrpc;
use crate::link::{LinkEvent, Outgoing};
use crate::metrics::{self, Dropped, MethodLabels};
use crate::outbound::{Outbound, OutboundKind};
use crate::sessions::{SessionId, Sessions};

pub(crate) use handle::RouterHandle;

use endings::{Ending, Endings};
use handle::{COMMAND_CAPACITY, Command};
use held::{HELD_RETRY, HeldCalls};

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
    /// What detached sessions may keep.
    pub(crate) keep: crate::sessions::KeepLimits,
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
    /// Detached sessions forgotten because all sessions kept as much as they may.
    sessions_evicted: u64,
}

/// One call in the table.
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
    /// Waiting for the bridge and RabbitMQ to be back (it is in [`HeldCalls`]).
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
        sessions: Sessions::new(limits.resume_within, limits.keep),
        deadlines: DelayQueue::new(),
        endings: Endings::default(),
        methods: MethodLabels::default(),
        held: HeldCalls::default(),
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
    /// Calls waiting for the bridge and RabbitMQ, oldest first.
    held: HeldCalls,
    /// The link's current epoch (one per IPC connection), if the bridge is connected.
    epoch: Option<u64>,
    broker: BrokerState,
    counters: Counters,
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
                _ = retry.tick(), if !self.held.is_empty() => self.flush_held(),
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
            sessions_evicted = c.sessions_evicted,
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
                address,
                reply,
            } => {
                let attached =
                    self.sessions
                        .attach(client, tx.clone(), resume.as_deref(), identity, address);
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
                self.count_evicted();
            }
            Command::Call {
                client,
                call,
                batch,
            } => self.on_call(client, call, batch),
            Command::Cancel { client, id } => self.on_cancel(client, &id),
        }
    }

    /// Counts the sessions [`Sessions`] forgot to stay under `--max-kept-bytes`,
    /// `--max-sessions-per-ip` or `--max-sessions-per-identity`, and the
    /// results they dropped; warns the first time only (the metric counts every one).
    pub(super) fn count_evicted(&mut self) {
        let evicted = self.sessions.take_evicted();
        if evicted.sessions == 0 {
            return;
        }
        for _ in 0..evicted.results {
            metrics::reply_dropped(Dropped::SessionEvicted);
        }
        if self.counters.sessions_evicted == 0 {
            warn!(
                sessions = evicted.sessions,
                results = evicted.results,
                "disconnected sessions reached a bound (--max-kept-bytes, --max-sessions-per-ip or --max-sessions-per-identity); forgetting the oldest with their results (counted in wsmq_results_dropped_total, reason session_evicted; logged once)"
            );
        } else {
            debug!(
                sessions = evicted.sessions,
                results = evicted.results,
                "oldest disconnected sessions forgotten"
            );
        }
        self.counters.sessions_evicted += evicted.sessions as u64;
    }

    fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Up { epoch, broker } => {
                metrics::link_connected();
                self.epoch = Some(epoch);
                self.broker = broker;
                info!(broker = ?broker, held = self.held.len(), "bridge connected");
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
                    held = self.held.len(),
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
                    info!(broker = ?state, held = self.held.len(), "broker state changed");
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
            ToGateway::Rejected { job, reason } => self.on_rejected(job, reason),
            ToGateway::Reply(reply) => self.on_reply(epoch, reply),
            ToGateway::Welcome(_) | ToGateway::Refused(_) => {
                warn!("unexpected handshake message after the handshake; ignored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};
    use tokio::sync::mpsc;
    use wsmq_ipc_proto::ReplyBody;

    use super::harness::{assert_silent, call, harness_full, response};

    const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    use crate::outbound::OutboundKind;
    use crate::sessions::ResumeRefused;

    #[tokio::test]
    async fn a_resumed_session_gets_what_arrived_while_it_was_away_then_the_rest() {
        let mut h = harness_full(10, 100, Duration::from_secs(30));
        h.link_up(1).await;
        let (tx, mut first) = mpsc::channel(8);
        let grant = h
            .handle
            .connect(1, tx, None, None, LOCALHOST)
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
            .connect(2, tx2, Some(grant.token.clone()), None, LOCALHOST)
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
            .connect(1, tx.clone(), None, None, LOCALHOST)
            .await
            .expect("router alive")
            .expect("attached");
        let second = h
            .handle
            .connect(2, tx, Some(grant.token), None, LOCALHOST)
            .await
            .expect("router alive");
        assert_eq!(second.err(), Some(ResumeRefused::InUse));
    }
}
