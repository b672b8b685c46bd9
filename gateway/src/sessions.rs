//! Sessions: what a client's calls belong to, so that a dropped connection can come back.
//!
//! Every websocket connection serves one session. The session, not the connection, owns the
//! calls in flight, so when a connection drops its calls go on; what they produce while no
//! connection serves the session is kept (bounded) and handed to the connection that resumes it
//! with the session's token, within the resume window. A session is served by one connection
//! at a time, and is forgotten when the window passes (what it still held is dropped and
//! counted). The router owns the one [`Sessions`]; nothing here is shared.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::time::{DelayQueue, delay_queue};
use wsmq_ipc_proto::JobId;

use crate::outbound::{ClientId, Outbound, OutboundKind};

/// Responses and progress kept for a session while no connection serves it. Past it, more are
/// dropped (and counted); it is below the connection's outbound queue, so a resuming connection
/// always has room for all of them.
pub(crate) const MAX_SESSION_BUFFER: usize = 256;

/// What sessions keep while no connection serves them: bytes per session and in all, and how
/// many such sessions one address or one identity may leave behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeepLimits {
    /// One session's kept results, at most; past it, its further results are dropped.
    pub(crate) session_bytes: usize,
    /// All sessions' kept results, at most; past it, the oldest detached session is forgotten.
    pub(crate) total_bytes: usize,
    /// Detached sessions created from one client address, at most; past it, that address's
    /// oldest detached session is forgotten. Without it one address could park
    /// `total_bytes` worth of results and push every other client's kept results out.
    pub(crate) sessions_per_address: usize,
    /// Detached sessions of one authenticated identity, at most (the same, for a token used
    /// from many addresses).
    pub(crate) sessions_per_identity: usize,
}

impl Default for KeepLimits {
    fn default() -> Self {
        Self {
            session_bytes: 8 * 1024 * 1024,
            total_bytes: 256 * 1024 * 1024,
            sessions_per_address: 64,
            sessions_per_identity: 256,
        }
    }
}

/// Identifies a session inside the gateway (never shown to clients; the token is).
pub(crate) type SessionId = u64;

/// Why a connection could not resume a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ResumeRefused {
    #[error("unknown or expired session")]
    Unknown,
    #[error("the session is served by another connection")]
    InUse,
}

/// What a connection is told about its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) session: SessionId,
    pub(crate) token: String,
}

/// What became of something sent to a session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// On its way to the connection.
    Sent,
    /// Kept until a connection resumes the session.
    Kept,
    /// The session is gone (expired, or resumption is off and its connection left).
    NoSession,
    /// The session's buffer is full; `first`: the first message this session dropped (the
    /// router logs that one only, and counts them all).
    BufferFull { first: bool },
    /// The connection is not reading; it has been let go and the message kept for a resume.
    SlowClient(ClientId),
}

struct Session {
    token: String,
    /// Who created it; only the same identity may resume it.
    identity: Option<Arc<str>>,
    /// The client address that created it (a resume from another address keeps it: the
    /// bound is on what one address can leave behind).
    address: IpAddr,
    /// Counted in [`Sessions::detached`] (no connection serves it and it is kept).
    detached: bool,
    /// The connection serving the session, if any.
    attached: Option<(ClientId, mpsc::Sender<Outbound>)>,
    buffer: VecDeque<Outbound>,
    /// Bytes of text in `buffer`.
    buffered_bytes: usize,
    expiry: Option<delay_queue::Key>,
    /// Calls in flight that have an id, by the id's JSON text (for `$/cancel`).
    calls: HashMap<Box<str>, JobId>,
    in_flight: usize,
    /// Messages dropped because the buffer was full.
    dropped: u64,
}

/// All sessions, and the connections attached to them.
pub(crate) struct Sessions {
    sessions: HashMap<SessionId, Session>,
    tokens: HashMap<String, SessionId>,
    clients: HashMap<ClientId, SessionId>,
    expiries: DelayQueue<SessionId>,
    next: SessionId,
    /// How long a session without a connection is kept; zero turns resumption off.
    resume_within: Duration,
    keep: KeepLimits,
    /// Bytes kept by all sessions.
    kept_bytes: usize,
    /// Detached sessions per creating address and per identity.
    detached: DetachedCounts,
    /// Sessions forgotten to stay under the [`KeepLimits`], and the results they dropped, not
    /// yet taken by [`Self::take_evicted`].
    evicted: Evicted,
}

/// How many detached sessions each address and identity has.
#[derive(Default)]
struct DetachedCounts {
    by_address: HashMap<IpAddr, usize>,
    by_identity: HashMap<Arc<str>, usize>,
}

impl DetachedCounts {
    fn add(&mut self, session: &Session) {
        *self.by_address.entry(session.address).or_default() += 1;
        if let Some(identity) = &session.identity {
            *self.by_identity.entry(identity.clone()).or_default() += 1;
        }
    }

    fn remove(&mut self, session: &Session) {
        decrement(&mut self.by_address, &session.address);
        if let Some(identity) = &session.identity {
            decrement(&mut self.by_identity, identity);
        }
    }
}

/// Lowers a count, removing it at zero so the maps hold only addresses and identities that
/// have detached sessions.
fn decrement<K: Eq + Hash>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Sessions forgotten because all sessions kept too much, and what they kept.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Evicted {
    pub(crate) sessions: usize,
    pub(crate) results: usize,
}

/// A new unguessable token: 128 random bits from the thread's CSPRNG, as hex.
fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Sessions {
    pub(crate) fn new(resume_within: Duration, keep: KeepLimits) -> Self {
        Self {
            sessions: HashMap::new(),
            tokens: HashMap::new(),
            clients: HashMap::new(),
            expiries: DelayQueue::new(),
            next: 1,
            resume_within,
            keep,
            kept_bytes: 0,
            detached: DetachedCounts::default(),
            evicted: Evicted::default(),
        }
    }

    /// Sessions forgotten (and results dropped with them) to keep all sessions under the
    /// total bound since the last call.
    pub(crate) fn take_evicted(&mut self) -> Evicted {
        std::mem::take(&mut self.evicted)
    }

    /// Bytes kept by all sessions.
    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        self.kept_bytes
    }

    /// Keeps a message for a later connection of session `id`, within the bounds: past the
    /// session's own, the message is dropped (false); past the total, the oldest other detached
    /// session that keeps anything is forgotten first. Responses that belonged to a batch of
    /// the old connection go out on their own: the new connection never saw that batch.
    fn keep(&mut self, id: SessionId, mut out: Outbound) -> bool {
        let bytes = out.text.len();
        let Some(session) = self.sessions.get(&id) else {
            return false;
        };
        if session.buffer.len() >= MAX_SESSION_BUFFER
            || session.buffered_bytes + bytes > self.keep.session_bytes
        {
            return false;
        }
        while self.kept_bytes + bytes > self.keep.total_bytes {
            let oldest = self
                .sessions
                .iter()
                .filter(|(other, s)| **other != id && s.attached.is_none() && s.buffered_bytes > 0)
                .map(|(other, _)| *other)
                .min();
            let Some(oldest) = oldest else {
                return false;
            };
            let results = self.forget(oldest);
            self.evicted.sessions += 1;
            self.evicted.results += results;
        }
        let Some(session) = self.sessions.get_mut(&id) else {
            return false;
        };
        if out.kind == OutboundKind::Response {
            out.batch = None;
        }
        session.buffered_bytes += bytes;
        self.kept_bytes += bytes;
        session.buffer.push_back(out);
        true
    }

    /// Whether sessions outlive their connection.
    pub(crate) fn resumable(&self) -> bool {
        !self.resume_within.is_zero()
    }

    pub(crate) fn resume_within(&self) -> Duration {
        self.resume_within
    }

    /// The identity that created the session.
    pub(crate) fn identity(&self, id: SessionId) -> Option<&Arc<str>> {
        self.sessions.get(&id)?.identity.as_ref()
    }

    /// Attaches a new connection to a new session, or to the session `resume` names. The
    /// returned messages (kept while the session had no connection) must go to `tx` first.
    /// A session is bound to the identity that created it: another identity is told it does
    /// not exist, exactly as for an unknown token.
    pub(crate) fn attach(
        &mut self,
        client: ClientId,
        tx: mpsc::Sender<Outbound>,
        resume: Option<&str>,
        identity: Option<Arc<str>>,
        address: IpAddr,
    ) -> Result<(Grant, Vec<Outbound>), ResumeRefused> {
        let Some(token) = resume else {
            let id = self.next;
            self.next += 1;
            let token = new_token();
            self.tokens.insert(token.clone(), id);
            self.sessions.insert(
                id,
                Session {
                    token: token.clone(),
                    identity,
                    address,
                    detached: false,
                    attached: Some((client, tx)),
                    buffer: VecDeque::new(),
                    buffered_bytes: 0,
                    expiry: None,
                    calls: HashMap::new(),
                    in_flight: 0,
                    dropped: 0,
                },
            );
            self.clients.insert(client, id);
            return Ok((Grant { session: id, token }, Vec::new()));
        };
        let id = *self.tokens.get(token).ok_or(ResumeRefused::Unknown)?;
        let session = self.sessions.get_mut(&id).ok_or(ResumeRefused::Unknown)?;
        if session.identity != identity {
            return Err(ResumeRefused::Unknown);
        }
        if session.attached.is_some() {
            return Err(ResumeRefused::InUse);
        }
        if let Some(key) = session.expiry.take() {
            self.expiries.try_remove(&key);
        }
        if std::mem::take(&mut session.detached) {
            self.detached.remove(session);
        }
        session.attached = Some((client, tx));
        let kept = session.buffer.drain(..).collect();
        self.kept_bytes -= std::mem::take(&mut session.buffered_bytes);
        self.clients.insert(client, id);
        Ok((
            Grant {
                session: id,
                token: session.token.clone(),
            },
            kept,
        ))
    }

    /// The connection left (or was let go). What it had not written (`unsent`) is kept for a
    /// resume. Returns how many messages were dropped because the session ends here.
    pub(crate) fn detach(&mut self, client: ClientId, unsent: Vec<Outbound>) -> usize {
        let Some(id) = self.clients.remove(&client) else {
            return unsent.len();
        };
        let Some(session) = self.sessions.get_mut(&id) else {
            return unsent.len();
        };
        if session.attached.as_ref().is_some_and(|(c, _)| *c == client) {
            session.attached = None;
        }
        if session.attached.is_some() {
            // A newer connection already serves it (resumed after a slow-client close).
            return unsent.len();
        }
        if self.resume_within.is_zero() {
            return unsent.len() + self.forget(id);
        }
        if session.expiry.is_none() {
            session.expiry = Some(self.expiries.insert(id, self.resume_within));
        }
        if !session.detached {
            session.detached = true;
            self.detached.add(session);
            self.bound_detached(id);
        }
        let mut dropped = 0;
        for out in unsent {
            if !self.keep(id, out) {
                dropped += 1;
            }
        }
        dropped
    }

    /// Forgets a session; returns how many kept messages that drops.
    fn forget(&mut self, id: SessionId) -> usize {
        let Some(session) = self.sessions.remove(&id) else {
            return 0;
        };
        self.tokens.remove(&session.token);
        if let Some((client, _)) = session.attached {
            self.clients.remove(&client);
        }
        if let Some(key) = session.expiry {
            self.expiries.try_remove(&key);
        }
        if session.detached {
            self.detached.remove(&session);
        }
        self.kept_bytes -= session.buffered_bytes;
        session.buffer.len()
    }

    /// Session `id` just lost its connection: past the bound on detached sessions of its
    /// address or its identity, the oldest other detached session of that address (identity)
    /// is forgotten with what it kept. The one just detached is spared: it is the one most
    /// likely to come back.
    fn bound_detached(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let address = session.address;
        let identity = session.identity.clone();
        while self.detached.by_address.get(&address).copied().unwrap_or(0)
            > self.keep.sessions_per_address
        {
            if !self.evict_oldest_detached(id, |s| s.address == address) {
                break;
            }
        }
        let Some(identity) = identity else {
            return;
        };
        while self
            .detached
            .by_identity
            .get(&identity)
            .copied()
            .unwrap_or(0)
            > self.keep.sessions_per_identity
        {
            if !self.evict_oldest_detached(id, |s| s.identity.as_ref() == Some(&identity)) {
                break;
            }
        }
    }

    /// Forgets the oldest detached session other than `spare` that `matches`; false when
    /// there is none.
    fn evict_oldest_detached(
        &mut self,
        spare: SessionId,
        matches: impl Fn(&Session) -> bool,
    ) -> bool {
        let oldest = self
            .sessions
            .iter()
            .filter(|(other, s)| **other != spare && s.detached && matches(s))
            .map(|(other, _)| *other)
            .min();
        let Some(oldest) = oldest else {
            return false;
        };
        let results = self.forget(oldest);
        self.evicted.sessions += 1;
        self.evicted.results += results;
        true
    }

    /// The next session whose resume window passed; it is forgotten. Returns the number of
    /// kept messages dropped with it. Pending forever while there is none.
    pub(crate) async fn next_expired(&mut self) -> usize {
        loop {
            match self.expiries.next().await {
                Some(expired) => {
                    let id = expired.into_inner();
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.expiry = None;
                    }
                    return self.forget(id);
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Whether any session is waiting to expire (so [`Self::next_expired`] can complete).
    pub(crate) fn expiring(&self) -> bool {
        !self.expiries.is_empty()
    }

    pub(crate) fn session_of(&self, client: ClientId) -> Option<SessionId> {
        self.clients.get(&client).copied()
    }

    /// Calls in flight of a session.
    pub(crate) fn in_flight(&self, id: SessionId) -> usize {
        self.sessions.get(&id).map_or(0, |s| s.in_flight)
    }

    /// A call started: counts it, and remembers its id for `$/cancel`.
    pub(crate) fn call_started(&mut self, id: SessionId, rpc_id: Option<&RawValue>, job: JobId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.in_flight += 1;
            if let Some(rpc_id) = rpc_id {
                s.calls.insert(rpc_id.get().into(), job);
            }
        }
    }

    /// A call ended.
    pub(crate) fn call_ended(&mut self, id: SessionId, rpc_id: Option<&RawValue>, job: JobId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.in_flight = s.in_flight.saturating_sub(1);
            // Only if the id still names this call: a client that reused an id while the first
            // call ran has the newer call under it.
            if let Some(rpc_id) = rpc_id
                && s.calls.get(rpc_id.get()) == Some(&job)
            {
                s.calls.remove(rpc_id.get());
            }
        }
    }

    /// The job of the session's call with JSON-RPC id `rpc_id`.
    pub(crate) fn call_named(&self, id: SessionId, rpc_id: &RawValue) -> Option<JobId> {
        self.sessions.get(&id)?.calls.get(rpc_id.get()).copied()
    }

    /// Counts a message session `id` could not keep.
    fn count_drop(&mut self, id: SessionId) -> Delivery {
        match self.sessions.get_mut(&id) {
            Some(session) => {
                session.dropped += 1;
                Delivery::BufferFull {
                    first: session.dropped == 1,
                }
            }
            None => Delivery::BufferFull { first: false },
        }
    }

    /// Sends to the session's connection, or keeps it for a resume.
    pub(crate) fn deliver(&mut self, id: SessionId, out: Outbound) -> Delivery {
        let Some(session) = self.sessions.get_mut(&id) else {
            return Delivery::NoSession;
        };
        let Some((client, tx)) = &session.attached else {
            return if self.keep(id, out) {
                Delivery::Kept
            } else {
                self.count_drop(id)
            };
        };
        let client = *client;
        match tx.try_send(out) {
            Ok(()) => Delivery::Sent,
            Err(mpsc::error::TrySendError::Full(out) | mpsc::error::TrySendError::Closed(out)) => {
                // Dropping its sender closes the connection: buffering more there would let one
                // slow reader eat the gateway's memory. The session lives on for a resume.
                session.attached = None;
                if self.resume_within.is_zero() {
                    self.clients.remove(&client);
                    self.forget(id);
                    return Delivery::SlowClient(client);
                }
                if session.expiry.is_none() {
                    session.expiry = Some(self.expiries.insert(id, self.resume_within));
                }
                if self.keep(id, out) {
                    Delivery::SlowClient(client)
                } else {
                    self.count_drop(id)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const ADDR: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn response(text: &str) -> Outbound {
        Outbound {
            batch: Some(3),
            kind: OutboundKind::Response,
            text: text.into(),
        }
    }

    #[test]
    fn tokens_are_128_bit_hex_and_differ() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn detached_session_keeps_messages_for_the_connection_that_resumes_it() {
        let mut s = Sessions::new(Duration::from_secs(30), KeepLimits::default());
        let (tx, _rx) = mpsc::channel(8);
        let (grant, kept) = s.attach(1, tx, None, None, ADDR).expect("new session");
        assert!(kept.is_empty());
        assert_eq!(s.detach(1, vec![response("a")]), 0);
        assert_eq!(s.deliver(grant.session, response("b")), Delivery::Kept);

        let (tx2, _rx2) = mpsc::channel(8);
        let (again, kept) = s
            .attach(2, tx2, Some(&grant.token), None, ADDR)
            .expect("resumes");
        assert_eq!(again, grant);
        let texts: Vec<_> = kept.iter().map(|o| o.text.as_str()).collect();
        assert_eq!(texts, ["a", "b"]);
        assert!(
            kept.iter().all(|o| o.batch.is_none()),
            "old batches go out on their own"
        );
        assert_eq!(s.session_of(2), Some(grant.session));
    }

    #[tokio::test]
    async fn a_live_session_cannot_be_taken_and_unknown_tokens_are_refused() {
        let mut s = Sessions::new(Duration::from_secs(30), KeepLimits::default());
        let (tx, _rx) = mpsc::channel(8);
        let (grant, _) = s
            .attach(1, tx.clone(), None, None, ADDR)
            .expect("new session");
        assert_eq!(
            s.attach(2, tx.clone(), Some(&grant.token), None, ADDR)
                .err(),
            Some(ResumeRefused::InUse)
        );
        assert_eq!(
            s.attach(3, tx, Some("00ff"), None, ADDR).err(),
            Some(ResumeRefused::Unknown)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unresumed_session_expires_and_drops_what_it_kept() {
        let mut s = Sessions::new(Duration::from_secs(5), KeepLimits::default());
        let (tx, _rx) = mpsc::channel(8);
        let (grant, _) = s.attach(1, tx, None, None, ADDR).expect("new session");
        s.detach(1, vec![response("a"), response("b")]);
        assert!(s.expiring());
        assert_eq!(s.next_expired().await, 2);
        let (tx2, _rx2) = mpsc::channel(8);
        assert_eq!(
            s.attach(2, tx2, Some(&grant.token), None, ADDR).err(),
            Some(ResumeRefused::Unknown)
        );
        assert_eq!(s.deliver(grant.session, response("c")), Delivery::NoSession);
    }

    #[tokio::test]
    async fn without_resumption_a_session_ends_with_its_connection() {
        let mut s = Sessions::new(Duration::ZERO, KeepLimits::default());
        let (tx, _rx) = mpsc::channel(8);
        let (grant, _) = s.attach(1, tx, None, None, ADDR).expect("new session");
        assert_eq!(s.detach(1, vec![response("a")]), 1);
        assert_eq!(s.deliver(grant.session, response("b")), Delivery::NoSession);
    }

    #[tokio::test]
    async fn kept_messages_are_bounded() {
        let mut s = Sessions::new(Duration::from_secs(30), KeepLimits::default());
        let (tx, _rx) = mpsc::channel(8);
        let (grant, _) = s.attach(1, tx, None, None, ADDR).expect("new session");
        s.detach(1, Vec::new());
        for i in 0..MAX_SESSION_BUFFER {
            assert_eq!(
                s.deliver(grant.session, response(&i.to_string())),
                Delivery::Kept
            );
        }
        assert_eq!(
            s.deliver(grant.session, response("over")),
            Delivery::BufferFull { first: true }
        );
    }

    #[tokio::test]
    async fn a_full_connection_is_let_go_but_its_session_lives_on() {
        let mut s = Sessions::new(Duration::from_secs(30), KeepLimits::default());
        let (tx, _rx) = mpsc::channel(1);
        let (grant, _) = s.attach(1, tx, None, None, ADDR).expect("new session");
        assert_eq!(s.deliver(grant.session, response("a")), Delivery::Sent);
        assert_eq!(
            s.deliver(grant.session, response("b")),
            Delivery::SlowClient(1)
        );
        // The connection's own goodbye comes later and finds nothing more to do.
        assert_eq!(s.detach(1, Vec::new()), 0);
        let (tx2, _rx2) = mpsc::channel(8);
        let (_, kept) = s
            .attach(2, tx2, Some(&grant.token), None, ADDR)
            .expect("resumes");
        assert_eq!(kept.len(), 1);
    }

    fn small(session_bytes: usize, total_bytes: usize) -> Sessions {
        Sessions::new(
            Duration::from_secs(30),
            KeepLimits {
                session_bytes,
                total_bytes,
                ..KeepLimits::default()
            },
        )
    }

    fn per_owner(sessions_per_address: usize, sessions_per_identity: usize) -> Sessions {
        Sessions::new(
            Duration::from_secs(30),
            KeepLimits {
                sessions_per_address,
                sessions_per_identity,
                ..KeepLimits::default()
            },
        )
    }

    /// A new session of `identity` from `address` that kept one result, then lost its
    /// connection.
    fn left_behind(
        s: &mut Sessions,
        client: ClientId,
        address: IpAddr,
        identity: Option<&str>,
    ) -> Grant {
        let (tx, _rx) = mpsc::channel(8);
        let (grant, _) = s
            .attach(client, tx, None, identity.map(Arc::from), address)
            .expect("new session");
        s.detach(client, vec![response("kept")]);
        grant
    }

    fn detached(s: &mut Sessions, client: ClientId) -> Grant {
        let (tx, _rx) = mpsc::channel(8);
        let (grant, _) = s.attach(client, tx, None, None, ADDR).expect("new session");
        s.detach(client, Vec::new());
        grant
    }

    #[tokio::test]
    async fn a_session_keeps_at_most_its_bytes() {
        let mut s = small(10, 100);
        let grant = detached(&mut s, 1);
        assert_eq!(s.deliver(grant.session, response("aaaaaa")), Delivery::Kept);
        assert_eq!(
            s.deliver(grant.session, response("bbbbb")),
            Delivery::BufferFull { first: true }
        );
        assert_eq!(s.deliver(grant.session, response("cccc")), Delivery::Kept);
        assert_eq!(s.kept_bytes(), 10);
        assert_eq!(s.take_evicted(), Evicted::default());
    }

    #[tokio::test]
    async fn past_the_total_the_oldest_detached_session_is_forgotten() {
        let mut s = small(10, 20);
        let old = detached(&mut s, 1);
        let mid = detached(&mut s, 2);
        let (tx, _rx) = mpsc::channel(8);
        let (live, _) = s.attach(3, tx, None, None, ADDR).expect("new session");
        let new = detached(&mut s, 4);
        assert_eq!(s.deliver(old.session, response("aaaaa")), Delivery::Kept);
        assert_eq!(s.deliver(old.session, response("aaaaa")), Delivery::Kept);
        assert_eq!(
            s.deliver(mid.session, response("bbbbbbbbb")),
            Delivery::Kept
        );
        assert_eq!(s.deliver(live.session, response("live")), Delivery::Sent);
        assert_eq!(s.kept_bytes(), 19);
        // 19 + 3 > 20: the oldest detached session goes, with its two results.
        assert_eq!(s.deliver(new.session, response("ccc")), Delivery::Kept);
        assert_eq!(
            s.take_evicted(),
            Evicted {
                sessions: 1,
                results: 2
            }
        );
        assert_eq!(s.take_evicted(), Evicted::default());
        assert_eq!(s.kept_bytes(), 12);
        assert_eq!(s.deliver(old.session, response("x")), Delivery::NoSession);
        let (tx, _rx) = mpsc::channel(8);
        assert_eq!(
            s.attach(5, tx, Some(&old.token), None, ADDR).err(),
            Some(ResumeRefused::Unknown)
        );
        // Resuming gives back what was kept and frees its bytes.
        let (tx, _rx) = mpsc::channel(8);
        let (_, kept) = s
            .attach(6, tx, Some(&mid.token), None, ADDR)
            .expect("resumes");
        assert_eq!(kept.len(), 1);
        assert_eq!(s.kept_bytes(), 3);
    }

    #[tokio::test]
    async fn a_session_alone_over_the_total_drops_its_own_results_and_evicts_nothing() {
        let mut s = small(100, 8);
        let grant = detached(&mut s, 1);
        assert_eq!(s.deliver(grant.session, response("aaaaaa")), Delivery::Kept);
        assert_eq!(
            s.deliver(grant.session, response("bbb")),
            Delivery::BufferFull { first: true }
        );
        assert_eq!(s.take_evicted(), Evicted::default());
        assert_eq!(s.kept_bytes(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_frees_the_kept_bytes() {
        let mut s = small(100, 100);
        let grant = detached(&mut s, 1);
        assert_eq!(s.deliver(grant.session, response("abc")), Delivery::Kept);
        assert_eq!(s.next_expired().await, 1);
        assert_eq!(s.kept_bytes(), 0);
    }

    #[tokio::test]
    async fn past_its_bound_an_address_loses_its_oldest_detached_session_only() {
        let mut s = per_owner(2, 100);
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
        let first = left_behind(&mut s, 1, ADDR, None);
        let elsewhere = left_behind(&mut s, 2, other, None);
        let second = left_behind(&mut s, 3, ADDR, None);
        assert_eq!(s.take_evicted(), Evicted::default());
        let third = left_behind(&mut s, 4, ADDR, None);
        assert_eq!(
            s.take_evicted(),
            Evicted {
                sessions: 1,
                results: 1
            }
        );
        let (tx, _rx) = mpsc::channel(8);
        assert_eq!(
            s.attach(5, tx.clone(), Some(&first.token), None, ADDR)
                .err(),
            Some(ResumeRefused::Unknown)
        );
        for (client, grant) in [(6, &elsewhere), (7, &second), (8, &third)] {
            let (_, kept) = s
                .attach(client, tx.clone(), Some(&grant.token), None, ADDR)
                .expect("resumes");
            assert_eq!(kept.len(), 1);
        }
    }

    #[tokio::test]
    async fn a_resumed_session_no_longer_counts_against_its_address() {
        let mut s = per_owner(1, 100);
        let first = left_behind(&mut s, 1, ADDR, None);
        let (tx, _rx) = mpsc::channel(8);
        s.attach(2, tx, Some(&first.token), None, ADDR)
            .expect("resumes");
        let _second = left_behind(&mut s, 3, ADDR, None);
        assert_eq!(s.take_evicted(), Evicted::default());
        // The resumed one leaves again: now two detached, one too many; the older goes.
        s.detach(2, Vec::new());
        assert_eq!(
            s.take_evicted(),
            Evicted {
                sessions: 1,
                results: 1
            }
        );
        let (tx, _rx) = mpsc::channel(8);
        s.attach(4, tx, Some(&first.token), None, ADDR)
            .expect("the one just detached is spared");
    }

    #[tokio::test]
    async fn past_its_bound_an_identity_loses_its_oldest_detached_session_from_any_address() {
        let mut s = per_owner(100, 2);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let first = left_behind(&mut s, 1, a, Some("alice"));
        let _bob = left_behind(&mut s, 2, a, Some("bob"));
        let _anonymous = left_behind(&mut s, 3, a, None);
        let _second = left_behind(&mut s, 4, b, Some("alice"));
        assert_eq!(s.take_evicted(), Evicted::default());
        let _third = left_behind(&mut s, 5, b, Some("alice"));
        assert_eq!(
            s.take_evicted(),
            Evicted {
                sessions: 1,
                results: 1
            }
        );
        let (tx, _rx) = mpsc::channel(8);
        assert_eq!(
            s.attach(6, tx, Some(&first.token), Some(Arc::from("alice")), a)
                .err(),
            Some(ResumeRefused::Unknown)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_session_frees_its_place_under_the_address_bound() {
        let mut s = per_owner(1, 100);
        let _first = left_behind(&mut s, 1, ADDR, None);
        assert_eq!(s.next_expired().await, 1);
        let _second = left_behind(&mut s, 2, ADDR, None);
        assert_eq!(s.take_evicted(), Evicted::default());
        assert!(s.detached.by_address.get(&ADDR) == Some(&1));
    }
}
