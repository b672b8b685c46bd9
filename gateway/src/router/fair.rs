//! Fair share: one caller's flood of calls must not starve everyone else.
//!
//! RabbitMQ serves a queue first in, first out, and knows nothing of who asked: a caller that
//! sends a thousand jobs at once puts them all ahead of the next caller's one. The gateway is
//! the one place that knows who is asking, so it keeps the flood out of the queue.
//!
//! - A **caller** is the authenticated identity, or without authentication the client's
//!   address ([`Caller`]): one identity with many connections is still one caller.
//! - **Fast path.** While a method has no calls held here, a call goes out at once, exactly as
//!   without fair share, unless its caller already has `--max-queued-per-caller` calls of that
//!   method published and unanswered. That call is held instead, in its caller's queue
//!   ([`FairQueue`]), and the method is now "sharing".
//! - **Sharing.** While a method has held calls, every new call of it is held in its caller's
//!   queue, and the router asks the bridge how many jobs wait in the method's queue (RabbitMQ's
//!   own count: [`ToBridge::Backlog`](wsmq_ipc_proto::ToBridge::Backlog), asked again every
//!   [`POLL_INTERVAL`] while calls are held). Held calls are released one caller at a time,
//!   round-robin, while fewer jobs wait in the queue than it has consumers (so each worker has
//!   the next job at hand and none idles), and never past a caller's own bound. Between two
//!   answers the router keeps the count current itself: a release adds one waiting job, a
//!   result takes one (a worker took the next).
//! - Within one caller, a higher `wsmq.priority` goes first; equal ones in arrival order.
//! - A held call is in flight like any other (its session counts it, a drain waits for it); its
//!   deadline runs (-32001), `$/cancel` ends it without it ever being published, and a caller
//!   with `--max-held-per-caller` calls held gets -32003 for further ones.
//!
//! This file holds the per-caller round-robin queue, each method's books, and the router's
//! releasing and polling; `admission.rs` holds a call here, `endings.rs` ends one.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;
use wsmq_ipc_proto::{Backlog, JobId, ToBridge};

use super::{CallState, Router};
use crate::jsonrpc;
use crate::link::Outgoing;
use crate::metrics;
use crate::outbound::OutboundKind;

/// How often the router asks for the depth of a method's queue while it holds calls of it.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How soon the router asks again while the capacity it learned holds calls back although no
/// job was waiting: the workers may take more, and this is how fast it finds out. Also the
/// router's polling tick while any call is held.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// How long an answer is trusted for the fast path: after that, a caller with its
/// `max_queued_per_caller` calls out waits for a fresh answer.
const STALE_AFTER: Duration = Duration::from_secs(1);

/// How long an unanswered depth question blocks the next one (the bridge may have been
/// replaced meanwhile, and its answer lost).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is asking: what fair share divides the workers between.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
    /// The authenticated identity (token or JWT subject).
    Identity(Arc<str>),
    /// The client's address, without authentication.
    Address(IpAddr),
}

impl Caller {
    /// The identity if there is one, else the address.
    pub(crate) fn new(identity: Option<&Arc<str>>, address: IpAddr) -> Self {
        match identity {
            Some(identity) => Caller::Identity(identity.clone()),
            None => Caller::Address(address),
        }
    }
}

/// The two bounds of fair share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FairLimits {
    /// A caller's calls of one method published and unanswered, at most; 0 turns fair share
    /// off.
    pub(crate) max_queued_per_caller: usize,
    /// A caller's calls held (all methods), at most; past it, -32003.
    pub(crate) max_held_per_caller: usize,
}

impl Default for FairLimits {
    /// What `--max-queued-per-caller 16` sets (the gateway's own default is 0, off).
    fn default() -> Self {
        Self {
            max_queued_per_caller: 16,
            max_held_per_caller: 1024,
        }
    }
}

/// Where a held call sits in its caller's queue: higher priority first, then arrival.
type Place = (Reverse<u8>, u64);

/// The held calls of one method, per caller, released round-robin across callers.
#[derive(Debug, Default)]
pub(super) struct FairQueue {
    /// Callers with held calls, the next to release from at the front. Each is in it once.
    turns: VecDeque<Caller>,
    /// Each caller's held calls in release order.
    calls: HashMap<Caller, BTreeMap<Place, JobId>>,
    /// Every held call's caller, place and since when it is held, to end one wherever it is.
    index: HashMap<JobId, (Caller, Place, Instant)>,
    /// Arrival numbers.
    next_arrival: u64,
}

/// A call taken out of a [`FairQueue`], with what puts it back where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Released {
    pub(super) job: JobId,
    pub(super) caller: Caller,
    /// Since when it was held.
    pub(super) since: Instant,
    place: Place,
}

impl FairQueue {
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// How many calls `caller` has held here.
    #[cfg(test)]
    pub(super) fn held_by(&self, caller: &Caller) -> usize {
        self.calls.get(caller).map_or(0, BTreeMap::len)
    }

    /// Holds `job` of `caller`, behind the caller's calls of the same or a higher priority
    /// (no priority counts as 0). A caller new to the queue takes its turn after the others.
    pub(super) fn hold(&mut self, caller: Caller, job: JobId, priority: Option<u8>, now: Instant) {
        let place = (Reverse(priority.unwrap_or(0)), self.next_arrival);
        self.next_arrival += 1;
        self.insert(caller, job, place, now, false);
    }

    fn insert(&mut self, caller: Caller, job: JobId, place: Place, since: Instant, first: bool) {
        let calls = self.calls.entry(caller.clone()).or_default();
        if calls.is_empty() {
            if first {
                self.turns.push_front(caller.clone());
            } else {
                self.turns.push_back(caller.clone());
            }
        }
        calls.insert(place, job);
        self.index.insert(job, (caller, place, since));
    }

    /// Takes the next call out: the first call of the first caller in turn that `may_release`
    /// allows; that caller then goes to the back of the turns. `None` if no caller may.
    pub(super) fn next(
        &mut self,
        mut may_release: impl FnMut(&Caller) -> bool,
    ) -> Option<Released> {
        for _ in 0..self.turns.len() {
            let caller = self.turns.pop_front()?;
            if !may_release(&caller) {
                self.turns.push_back(caller);
                continue;
            }
            let calls = self.calls.get_mut(&caller)?;
            let (place, job) = calls.pop_first()?;
            if calls.is_empty() {
                self.calls.remove(&caller);
            } else {
                self.turns.push_back(caller.clone());
            }
            let since = self
                .index
                .remove(&job)
                .map_or_else(Instant::now, |(_, _, at)| at);
            return Some(Released {
                job,
                caller,
                since,
                place,
            });
        }
        None
    }

    /// Puts back a call [`next`](Self::next) gave out and that could not be sent: first in
    /// its caller's queue, its caller first in turn.
    pub(super) fn put_back(&mut self, released: Released) {
        let Released {
            job,
            caller,
            since,
            place,
        } = released;
        if self.calls.get(&caller).is_some_and(|c| !c.is_empty()) {
            // Its caller is still in turn: it goes first.
            if let Some(at) = self.turns.iter().position(|c| *c == caller) {
                self.turns.remove(at);
            }
            self.turns.push_front(caller.clone());
        }
        self.insert(caller, job, place, since, true);
    }

    /// The call ended while held: its caller and since when it was held, if it was held here.
    pub(super) fn remove(&mut self, job: JobId) -> Option<(Caller, Instant)> {
        let (caller, place, since) = self.index.remove(&job)?;
        if let Some(calls) = self.calls.get_mut(&caller) {
            calls.remove(&place);
            if calls.is_empty() {
                self.calls.remove(&caller);
                self.turns.retain(|c| *c != caller);
            }
        }
        Some((caller, since))
    }
}

/// One method's books: its held calls, each caller's calls out, and what RabbitMQ said of its
/// queue.
///
/// How many calls may be out is learned from RabbitMQ's answers. When jobs wait in the queue
/// (`ready` > 0), the workers are saturated, and they hold `out - ready` of this gateway's
/// calls: that is their capacity. When none wait, the workers could take more: the capacity is
/// at least twice what is out (and the next answer says whether that was too much). Calls go
/// out while fewer than twice the capacity are out (at least capacity + one per consumer): the
/// workers' next round waits in the queue, so no worker idles while the gateway hears of the
/// last round's results, yet a caller who arrives later waits behind one round only, about one
/// job's time.
#[derive(Debug, Default)]
pub(super) struct MethodShare {
    pub(super) held: FairQueue,
    /// Per caller: calls of this method in flight and not held here (submitted, published, or
    /// waiting out an outage), i.e. in RabbitMQ's queue or on their way to it.
    out: HashMap<Caller, usize>,
    /// The sum of `out`.
    out_total: usize,
    /// What RabbitMQ said last.
    learned: Option<Learned>,
    /// When the question now unanswered was asked.
    asked: Option<Instant>,
    /// Calls held since the last answer, whose clients have not been told (`$/queued`): a call
    /// that waits only for the answer is not worth a notification.
    pub(super) untold: Vec<JobId>,
}

/// What the router knows of a method's queue, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Learned {
    at: Instant,
    /// Jobs the last answer said were waiting.
    ready: u32,
    /// One waiting job per consumer (at least one).
    consumers: usize,
    /// How many of this gateway's calls the workers hold at once; `None`: no queue at all,
    /// every call goes (and is answered "method not found").
    capacity: Option<usize>,
}

impl MethodShare {
    /// Whether nothing is kept for this method any more (it can be forgotten).
    pub(super) fn is_idle(&self) -> bool {
        self.held.is_empty() && self.out_total == 0
    }

    pub(super) fn out_of(&self, caller: &Caller) -> usize {
        self.out.get(caller).copied().unwrap_or(0)
    }

    /// A call of `caller` went out (or waits out an outage).
    pub(super) fn sent(&mut self, caller: &Caller) {
        match self.out.get_mut(caller) {
            Some(n) => *n += 1,
            None => {
                self.out.insert(caller.clone(), 1);
            }
        }
        self.out_total += 1;
    }

    /// A call of `caller` that was out ended.
    pub(super) fn ended(&mut self, caller: &Caller) {
        if let Some(n) = self.out.get_mut(caller) {
            *n -= 1;
            self.out_total -= 1;
            if *n == 0 {
                self.out.remove(caller);
            }
        }
    }

    /// How many more calls may go out now without a backlog building; 0 while nothing recent
    /// is known (the router asks first).
    pub(super) fn room(&self, now: Instant) -> usize {
        match self.learned {
            Some(l) if now.duration_since(l.at) < STALE_AFTER => match l.capacity {
                None => usize::MAX,
                // One round of the workers' capacity may wait (at least one job per
                // consumer): enough that no worker idles while the gateway hears of the last
                // round's results, little enough that a newcomer waits about one job's time.
                Some(capacity) => {
                    (capacity + capacity.max(l.consumers)).saturating_sub(self.out_total)
                }
            },
            _ => 0,
        }
    }

    /// Whether to ask for the queue's depth now: only while calls are held, one question at
    /// a time, every [`POLL_INTERVAL`], or every [`PROBE_INTERVAL`] while the learned capacity
    /// is all that holds calls back although no job waited (the workers may take more).
    pub(super) fn should_ask(&self, now: Instant) -> bool {
        if self.held.is_empty()
            || self
                .asked
                .is_some_and(|at| now.duration_since(at) < ANSWER_TIMEOUT)
        {
            return false;
        }
        match self.learned {
            None => true,
            Some(l) => {
                let since = now.duration_since(l.at);
                since >= POLL_INTERVAL
                    || (since >= PROBE_INTERVAL && l.ready == 0 && self.room(now) == 0)
            }
        }
    }

    pub(super) fn asking(&mut self, now: Instant) {
        self.asked = Some(now);
    }

    /// RabbitMQ's answer.
    pub(super) fn told(&mut self, backlog: Backlog, now: Instant) {
        self.asked = None;
        let previous = self.learned.and_then(|l| l.capacity);
        self.learned = match backlog {
            Backlog::Depth { ready, consumers } => Some(Learned {
                at: now,
                ready,
                consumers: (consumers as usize).max(1),
                capacity: Some(if ready > 0 {
                    // Saturated: what is out and not waiting is what the workers hold.
                    self.out_total.saturating_sub(ready as usize)
                } else {
                    previous.unwrap_or(0).max(2 * self.out_total)
                }),
            }),
            Backlog::NoQueue => Some(Learned {
                at: now,
                ready: 0,
                consumers: 1,
                capacity: None,
            }),
            // Keep what was known; ask again on the next poll.
            Backlog::Unknown => self.learned,
        };
    }
}

/// Every method's books, and each caller's held calls across methods. Owned by the router.
#[derive(Debug, Default)]
pub(super) struct FairShare {
    pub(super) limits: FairLimits,
    /// Only methods with calls out or held: forgotten when idle, so bounded by the calls in
    /// flight (method names are the clients' choice).
    methods: HashMap<String, MethodShare>,
    /// Held calls per caller, all methods.
    held_per_caller: HashMap<Caller, usize>,
}

impl FairShare {
    pub(super) fn new(limits: FairLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Whether fair share is on at all.
    pub(super) fn on(&self) -> bool {
        self.limits.max_queued_per_caller > 0
    }

    /// Whether some method has held calls (the router then polls).
    pub(super) fn sharing(&self) -> bool {
        !self.held_per_caller.is_empty()
    }

    /// Whether a new call of `caller` to `method` must be held rather than sent at once: the
    /// method holds calls already, or the caller has its `max_queued_per_caller` calls out and
    /// the method has no room (or nothing recent is known of its queue).
    pub(super) fn must_hold(&self, method: &str, caller: &Caller, now: Instant) -> bool {
        self.on()
            && self.methods.get(method).is_some_and(|m| {
                !m.held.is_empty()
                    || (m.out_of(caller) >= self.limits.max_queued_per_caller && m.room(now) == 0)
            })
    }

    /// Whether `caller` holds as many calls as it may.
    pub(super) fn held_full(&self, caller: &Caller) -> bool {
        self.held_per_caller.get(caller).copied().unwrap_or(0) >= self.limits.max_held_per_caller
    }

    /// Holds a call; its method's held calls now.
    pub(super) fn hold(
        &mut self,
        method: &str,
        caller: Caller,
        job: JobId,
        priority: Option<u8>,
        now: Instant,
    ) -> usize {
        *self.held_per_caller.entry(caller.clone()).or_default() += 1;
        let share = self.method_mut(method);
        share.held.hold(caller, job, priority, now);
        share.untold.push(job);
        share.held.len()
    }

    /// A call of `caller` to `method` went out at once, or waits out an outage.
    pub(super) fn sent(&mut self, method: &str, caller: &Caller) {
        if self.on() {
            self.method_mut(method).sent(caller);
        }
    }

    /// A call that was out ended.
    pub(super) fn ended(&mut self, method: &str, caller: &Caller) {
        if let Some(share) = self.methods.get_mut(method) {
            share.ended(caller);
            if share.is_idle() {
                self.methods.remove(method);
            }
        }
    }

    /// A held call ended (deadline, cancel): since when it was held, and how many calls of its
    /// method are still held.
    pub(super) fn forget_held(&mut self, method: &str, job: JobId) -> Option<(Instant, usize)> {
        let share = self.methods.get_mut(method)?;
        let (caller, since) = share.held.remove(job)?;
        let left = share.held.len();
        self.unheld(method, &caller);
        Some((since, left))
    }

    /// The next held call of `method` that may go out now, if any: while the method has room,
    /// round-robin across the callers that have fewer than `max_queued_per_caller` calls out,
    /// or if none has, across all (no worker waits while a call is held).
    pub(super) fn release(&mut self, method: &str, now: Instant) -> Option<Released> {
        let max = self.limits.max_queued_per_caller;
        let share = self.methods.get_mut(method)?;
        if share.room(now) == 0 {
            return None;
        }
        let out = &share.out;
        let released = match share
            .held
            .next(|caller| out.get(caller).is_none_or(|n| *n < max))
        {
            Some(released) => released,
            None => share.held.next(|_| true)?,
        };
        share.sent(&released.caller);
        let caller = released.caller.clone();
        self.unheld(method, &caller);
        Some(released)
    }

    /// Undoes [`release`](Self::release) for a call that could not be sent.
    pub(super) fn put_back(&mut self, method: &str, released: Released) {
        *self
            .held_per_caller
            .entry(released.caller.clone())
            .or_default() += 1;
        let share = self.method_mut(method);
        share.ended(&released.caller);
        share.held.put_back(released);
    }

    /// How many calls of `method` are held.
    pub(super) fn held_of(&self, method: &str) -> usize {
        self.methods.get(method).map_or(0, |m| m.held.len())
    }

    /// The methods whose queue depth to ask for now; each is marked as asked.
    pub(super) fn questions(&mut self, now: Instant) -> Vec<String> {
        let mut ask = Vec::new();
        for (method, share) in &mut self.methods {
            if share.should_ask(now) {
                share.asking(now);
                ask.push(method.clone());
            }
        }
        ask
    }

    /// A question could not be sent: ask again on the next poll.
    pub(super) fn not_asked(&mut self, method: &str) {
        if let Some(share) = self.methods.get_mut(method) {
            share.asked = None;
        }
    }

    /// RabbitMQ's answer about `method`'s queue.
    pub(super) fn told(&mut self, method: &str, backlog: Backlog, now: Instant) {
        if let Some(share) = self.methods.get_mut(method) {
            share.told(backlog, now);
        }
    }

    /// The calls of `method` held since the last answer, to tell their clients if they still
    /// wait.
    pub(super) fn take_untold(&mut self, method: &str) -> Vec<JobId> {
        self.methods
            .get_mut(method)
            .map(|m| std::mem::take(&mut m.untold))
            .unwrap_or_default()
    }

    /// The methods with held calls.
    pub(super) fn sharing_methods(&self) -> Vec<String> {
        self.methods
            .iter()
            .filter(|(_, m)| !m.held.is_empty())
            .map(|(method, _)| method.clone())
            .collect()
    }

    fn method_mut(&mut self, method: &str) -> &mut MethodShare {
        if !self.methods.contains_key(method) {
            self.methods
                .insert(method.to_owned(), MethodShare::default());
        }
        self.methods.get_mut(method).expect("inserted just above")
    }

    fn unheld(&mut self, method: &str, caller: &Caller) {
        if let Some(n) = self.held_per_caller.get_mut(caller) {
            *n -= 1;
            if *n == 0 {
                self.held_per_caller.remove(caller);
            }
        }
        if let Some(share) = self.methods.get_mut(method) {
            if share.held.is_empty() {
                share.untold.clear();
            }
            if share.is_idle() {
                self.methods.remove(method);
            }
        }
    }
}

impl Router {
    /// Sends `method`'s held calls that may go now (see [`FairShare::release`]).
    pub(super) fn release(&mut self, method: &str) {
        if !self.available() {
            return;
        }
        let now = Instant::now();
        let mut released = 0;
        while let Some(next) = self.fair.release(method, now) {
            let job = next.job;
            let Some(copy) = self.pending.get(&job).and_then(|p| p.job.clone()) else {
                // Unreachable: a held call is in the table, its job kept.
                continue;
            };
            if !self.submit(&copy) {
                // The bridge is backed up: the next poll tries again.
                self.fair.put_back(method, next);
                break;
            }
            released += 1;
            let since = next.since;
            let Some(p) = self.pending.get_mut(&job) else {
                continue;
            };
            p.state = CallState::Submitted;
            let told = p.told_queued.then(|| (p.session, p.id.clone()));
            metrics::call_unheld(
                self.methods.label(method),
                now.duration_since(since),
                self.fair.held_of(method),
            );
            if let Some((session, Some(id))) = told {
                let text = jsonrpc::queued_notification(&id, false);
                self.respond_to(session, None, OutboundKind::Notification, text);
            }
        }
        if released > 0 {
            debug!(
                method,
                released,
                held = self.fair.held_of(method),
                "held calls released"
            );
        }
    }

    /// Releases what may go of every method that holds calls (the bridge or RabbitMQ is back).
    pub(super) fn release_all(&mut self) {
        for method in self.fair.sharing_methods() {
            self.release(&method);
        }
    }

    /// RabbitMQ's answer about `method`'s queue: release what may go, and tell the clients of
    /// the calls that still wait (`$/queued`).
    pub(super) fn on_backlog(&mut self, method: &str, backlog: Backlog) {
        self.fair.told(method, backlog, Instant::now());
        self.release(method);
        for job in self.fair.take_untold(method) {
            let Some(p) = self.pending.get_mut(&job) else {
                continue;
            };
            if p.state != CallState::Queued || p.told_queued || !p.wants_queued {
                continue;
            }
            p.told_queued = true;
            let (session, id) = (p.session, p.id.clone());
            if let Some(id) = id {
                let text = jsonrpc::queued_notification(&id, true);
                self.respond_to(session, None, OutboundKind::Notification, text);
            }
        }
    }

    /// Asks the bridge for the depth of each queue whose method holds calls and is due.
    pub(super) fn poll_backlog(&mut self) {
        let Some(epoch) = self.epoch else {
            return;
        };
        for method in self.fair.questions(Instant::now()) {
            let msg = ToBridge::Backlog {
                method: method.clone(),
            };
            if self.to_link.jobs.try_send(Outgoing { epoch, msg }).is_err() {
                self.fair.not_asked(&method);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        Instant::now()
    }

    fn who(name: &str) -> Caller {
        Caller::Identity(name.into())
    }

    fn drain(q: &mut FairQueue) -> Vec<u128> {
        std::iter::from_fn(|| q.next(|_| true))
            .map(|r| r.job.0)
            .collect()
    }

    #[test]
    fn callers_take_turns_whatever_each_sent() {
        let mut q = FairQueue::default();
        for n in 0..5 {
            q.hold(who("a"), JobId(n), None, now());
        }
        q.hold(who("b"), JobId(10), None, now());
        q.hold(who("c"), JobId(20), None, now());
        q.hold(who("c"), JobId(21), None, now());
        assert_eq!(q.len(), 8);
        assert_eq!(drain(&mut q), [0, 10, 20, 1, 21, 2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_callers_higher_priority_goes_first_and_equal_ones_in_arrival_order() {
        let mut q = FairQueue::default();
        q.hold(who("a"), JobId(1), None, now());
        q.hold(who("a"), JobId(2), Some(5), now());
        q.hold(who("a"), JobId(3), Some(0), now());
        q.hold(who("a"), JobId(4), Some(5), now());
        q.hold(who("b"), JobId(9), Some(9), now());
        // b's priority does not jump a's turn: priorities order one caller's calls only.
        assert_eq!(drain(&mut q), [2, 9, 4, 1, 3]);
    }

    #[test]
    fn a_caller_at_its_bound_is_passed_over_and_keeps_its_calls() {
        let mut q = FairQueue::default();
        q.hold(who("a"), JobId(1), None, now());
        q.hold(who("a"), JobId(2), None, now());
        q.hold(who("b"), JobId(3), None, now());
        let not_a = |c: &Caller| *c != who("a");
        assert_eq!(q.next(not_a).map(|r| r.job), Some(JobId(3)));
        assert_eq!(q.next(not_a), None);
        assert_eq!(q.held_by(&who("a")), 2);
        assert_eq!(drain(&mut q), [1, 2]);
    }

    #[test]
    fn ended_calls_leave_the_queue_and_a_caller_with_none_leaves_the_turns() {
        let mut q = FairQueue::default();
        q.hold(who("a"), JobId(1), None, now());
        q.hold(who("b"), JobId(2), None, now());
        q.hold(who("b"), JobId(3), None, now());
        assert_eq!(q.remove(JobId(1)).map(|(c, _)| c), Some(who("a")));
        assert_eq!(q.remove(JobId(1)), None, "removed once");
        assert_eq!(q.held_by(&who("a")), 0);
        assert_eq!(q.turns.len(), 1);
        assert_eq!(q.remove(JobId(3)).map(|(c, _)| c), Some(who("b")));
        assert_eq!(drain(&mut q), [2]);
        assert!(q.turns.is_empty() && q.calls.is_empty() && q.index.is_empty());
    }

    #[test]
    fn a_call_put_back_goes_out_first_next_time() {
        let mut q = FairQueue::default();
        q.hold(who("a"), JobId(1), None, now());
        q.hold(who("a"), JobId(2), None, now());
        q.hold(who("b"), JobId(3), None, now());
        let first = q.next(|_| true).expect("a call");
        assert_eq!(first.job, JobId(1));
        q.put_back(first);
        assert_eq!(drain(&mut q), [1, 3, 2]);
        // A caller whose only call is put back comes first too.
        q.hold(who("a"), JobId(4), None, now());
        q.hold(who("b"), JobId(5), None, now());
        let a = q.next(|_| true).expect("a call");
        q.put_back(a);
        assert_eq!(drain(&mut q), [4, 5]);
    }

    #[test]
    fn the_addressless_and_the_authenticated_are_different_callers() {
        let address: IpAddr = [127, 0, 0, 1].into();
        let identity: Arc<str> = "alice".into();
        assert_eq!(Caller::new(None, address), Caller::Address(address));
        assert_eq!(
            Caller::new(Some(&identity), address),
            Caller::Identity(identity)
        );
    }

    fn depth(ready: u32, consumers: u32) -> Backlog {
        Backlog::Depth { ready, consumers }
    }

    #[test]
    fn a_saturated_queue_leaves_room_for_one_round_of_the_workers() {
        let mut m = MethodShare::default();
        let t0 = now();
        for _ in 0..16 {
            m.sent(&who("a"));
        }
        assert_eq!(m.room(t0), 0, "nothing goes out before RabbitMQ has said");
        // 14 of 16 wait: the workers hold 2 (their capacity); one consumer.
        m.told(depth(14, 1), t0);
        assert_eq!(m.room(t0), 0);
        for _ in 0..14 {
            m.ended(&who("a"));
        }
        assert_eq!(
            (m.out_of(&who("a")), m.room(t0)),
            (2, 2),
            "2 running, 2 may wait"
        );
        m.sent(&who("b"));
        m.sent(&who("b"));
        assert_eq!(m.room(t0), 0);
        assert_eq!(m.room(t0 + STALE_AFTER), 0, "an old answer gives no room");
    }

    #[test]
    fn an_empty_queue_lets_twice_as_many_out_and_a_missing_one_lets_all_go() {
        let mut m = MethodShare::default();
        let t0 = now();
        for _ in 0..10 {
            m.sent(&who("a"));
        }
        m.told(depth(0, 2), t0);
        assert_eq!(
            m.room(t0),
            2 * 20 - 10,
            "capacity at least 2 x 10, and one round of it waiting"
        );
        m.told(Backlog::Unknown, t0);
        assert_eq!(m.room(t0), 30, "an unknown depth keeps what was known");
        m.told(depth(0, 2), t0);
        assert_eq!(m.room(t0), 30, "capacity never shrinks without a backlog");
        m.told(Backlog::NoQueue, t0);
        assert_eq!(m.room(t0), usize::MAX);
        for _ in 0..10 {
            m.ended(&who("a"));
        }
        assert!(m.is_idle());
    }

    #[test]
    fn the_depth_is_asked_only_while_calls_are_held_and_one_question_at_a_time() {
        let mut m = MethodShare::default();
        let t0 = now();
        assert!(!m.should_ask(t0), "nothing held");
        m.held.hold(who("a"), JobId(1), None, t0);
        assert!(m.should_ask(t0));
        m.asking(t0);
        assert!(!m.should_ask(t0 + POLL_INTERVAL), "still unanswered");
        m.sent(&who("a"));
        m.told(depth(3, 1), t0);
        assert!(
            !m.should_ask(t0 + PROBE_INTERVAL),
            "a backlog: the usual poll"
        );
        assert!(m.should_ask(t0 + POLL_INTERVAL));
        m.asking(t0);
        assert!(
            m.should_ask(t0 + ANSWER_TIMEOUT),
            "a lost answer is asked again"
        );
        // No job waits, yet the learned capacity holds calls back: probe sooner.
        for _ in 0..2 {
            m.sent(&who("a"));
        }
        m.told(depth(0, 1), t0);
        m.sent(&who("a"));
        m.sent(&who("a"));
        assert_eq!(m.room(t0), 7, "capacity 2 x 3, a round of it, 5 out");
        assert!(!m.should_ask(t0 + PROBE_INTERVAL));
        for _ in 0..7 {
            m.sent(&who("a"));
        }
        assert!(m.should_ask(t0 + PROBE_INTERVAL));
    }

    #[test]
    fn release_prefers_callers_under_their_bound_and_then_takes_anyone() {
        let mut fair = FairShare::new(FairLimits {
            max_queued_per_caller: 1,
            max_held_per_caller: 8,
        });
        let t0 = now();
        fair.sent("m", &who("a"));
        assert!(fair.must_hold("m", &who("a"), t0), "a has its one call out");
        assert!(!fair.must_hold("m", &who("b"), t0), "b has none out");
        fair.hold("m", who("a"), JobId(1), None, t0);
        fair.hold("m", who("a"), JobId(2), None, t0);
        assert!(fair.must_hold("m", &who("b"), t0), "the method holds calls");
        fair.hold("m", who("b"), JobId(3), None, t0);
        fair.hold("m", who("a"), JobId(4), None, t0);
        assert!(fair.release("m", t0).is_none(), "nothing known yet");
        fair.told("m", depth(0, 1), t0);
        // Capacity 2 x 1 out, a round of it may wait: 3 may go. b (none out) first, then a
        // over its bound.
        let order: Vec<u128> = std::iter::from_fn(|| fair.release("m", t0))
            .map(|r| r.job.0)
            .collect();
        assert_eq!(order, [3, 1, 2]);
        assert_eq!(fair.held_of("m"), 1);
        assert!(fair.sharing());
        assert_eq!(
            fair.forget_held("m", JobId(4)).map(|(_, left)| left),
            Some(0)
        );
        assert!(!fair.sharing());
        for caller in ["a", "a", "a", "b"] {
            fair.ended("m", &who(caller));
        }
        assert!(fair.methods.is_empty(), "an idle method is forgotten");
    }

    #[test]
    fn a_caller_holding_its_bound_is_full_across_methods() {
        let mut fair = FairShare::new(FairLimits {
            max_queued_per_caller: 1,
            max_held_per_caller: 2,
        });
        let t0 = now();
        fair.hold("m", who("a"), JobId(1), None, t0);
        assert!(!fair.held_full(&who("a")));
        fair.hold("n", who("a"), JobId(2), None, t0);
        assert!(fair.held_full(&who("a")));
        assert!(!fair.held_full(&who("b")));
        fair.forget_held("n", JobId(2));
        assert!(!fair.held_full(&who("a")));
    }

    #[test]
    fn fair_share_off_never_holds() {
        let mut fair = FairShare::new(FairLimits {
            max_queued_per_caller: 0,
            max_held_per_caller: 2,
        });
        for _ in 0..100 {
            fair.sent("m", &who("a"));
        }
        assert!(!fair.must_hold("m", &who("a"), now()));
        assert!(fair.methods.is_empty(), "nothing kept");
    }

    use serde_json::json;
    use wsmq_codes as codes;
    use wsmq_ipc_proto::{ReplyBody, ToBridge, ToGateway};

    use super::super::harness::{assert_silent, call, harness_fair, raw, response};

    fn one_out(max_held_per_caller: usize) -> FairLimits {
        FairLimits {
            max_queued_per_caller: 1,
            max_held_per_caller,
        }
    }

    fn said(method: &str, backlog: Backlog) -> ToGateway {
        ToGateway::Backlog {
            method: method.into(),
            backlog,
        }
    }

    fn queued(id: &str, queued: bool) -> serde_json::Value {
        json!({"jsonrpc": "2.0", "method": "$/queued", "params": {"id": id, "queued": queued}})
    }

    /// Sends call `id` of `client` (its params name it too), asking for `$/queued`.
    async fn send(h: &super::super::harness::Harness, client: u64, id: &str) {
        let mut c = call(Some(json!(id)), "sleep", json!({"n": id}));
        c.options.queued = true;
        h.handle.call(client, c, None).await.expect("router alive");
    }

    fn named(job: &wsmq_ipc_proto::Job) -> String {
        let params: serde_json::Value =
            serde_json::from_slice(job.params.as_bytes()).expect("json params");
        params["n"].as_str().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_later_caller_is_not_stuck_behind_a_flood_and_callers_take_turns() {
        let mut h = harness_fair(one_out(100));
        h.link_up(1).await;
        let mut a = h.client_as(1, "a").await;
        let mut b = h.client_as(2, "b").await;
        send(&h, 1, "a1").await;
        let a1 = h.next_job().await;
        for id in ["a2", "a3", "a4"] {
            send(&h, 1, id).await;
        }
        match h.jobs.recv().await.expect("a question").msg {
            ToBridge::Backlog { method } => assert_eq!(method, "sleep"),
            other => panic!("expected a question about the queue, got {other:?}"),
        }
        for id in ["b1", "b2"] {
            send(&h, 2, id).await;
        }
        h.barrier().await;
        // One job waits in the queue: the workers hold nothing more, so nothing goes, and the
        // callers hear that their calls wait.
        h.bridge_says(1, said("sleep", depth(1, 1))).await;
        for id in ["a2", "a3", "a4"] {
            assert_eq!(response(&mut a).await, queued(id, true));
        }
        for id in ["b1", "b2"] {
            assert_eq!(response(&mut b).await, queued(id, true));
        }
        assert!(
            h.sent_to_bridge().is_empty(),
            "held while the queue has a backlog"
        );

        // The queue drained: capacity 2 x 1 out, and a round of it may wait, so 3 go: b (none
        // out) first though a sent first, then turns alternate. When a1 is answered, a3 goes.
        h.bridge_says(1, said("sleep", depth(0, 1))).await;
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(named(&h.next_job().await));
        }
        h.reply(1, a1.id, ReplyBody::Result("1".into())).await;
        order.push(named(&h.next_job().await));
        assert_eq!(order, ["b1", "a2", "b2", "a3"]);
        assert_eq!(response(&mut b).await, queued("b1", false));
        assert_eq!(response(&mut b).await, queued("b2", false));
        assert_eq!(response(&mut a).await, queued("a2", false));
        assert_eq!(response(&mut a).await, queued("a3", false));
        assert_eq!(response(&mut a).await["id"], "a1");
        assert!(h.sent_to_bridge().is_empty(), "a4 still waits");
    }

    #[tokio::test]
    async fn a_client_that_did_not_ask_hears_nothing_of_its_held_call() {
        let mut h = harness_fair(one_out(10));
        h.link_up(1).await;
        let mut a = h.client_as(1, "a").await;
        h.submit(1, call(Some(json!("a1")), "sleep", json!({})))
            .await;
        h.handle
            .call(1, call(Some(json!("a2")), "sleep", json!({})), None)
            .await
            .expect("router alive");
        h.barrier().await;
        h.bridge_says(1, said("sleep", depth(1, 1))).await;
        h.barrier().await;
        assert!(h.sent_to_bridge().is_empty(), "a2 is held");
        assert_silent(&mut a);
    }

    #[tokio::test]
    async fn a_caller_past_its_held_bound_gets_too_many_in_flight_for_the_excess_only() {
        let mut h = harness_fair(one_out(2));
        h.link_up(1).await;
        let mut a = h.client_as(1, "a").await;
        let mut b = h.client_as(2, "b").await;
        h.submit(1, call(Some(json!("a1")), "sleep", json!({})))
            .await;
        for id in ["a2", "a3", "a4", "a5"] {
            h.handle
                .call(1, call(Some(json!(id)), "sleep", json!({})), None)
                .await
                .expect("router alive");
        }
        for id in ["a4", "a5"] {
            let r = response(&mut a).await;
            assert_eq!(
                (r["id"].clone(), r["error"].clone()),
                (
                    json!(id),
                    json!({"code": codes::TOO_MANY_IN_FLIGHT, "message": "too many calls in flight",
                           "data": "at most 2 calls per caller wait for their fair share"})
                )
            );
        }
        h.handle
            .call(2, call(Some(json!("b1")), "sleep", json!({})), None)
            .await
            .expect("router alive");
        h.barrier().await;
        h.bridge_says(1, said("sleep", depth(0, 1))).await;
        // Room for 3: b first, then a's two; nobody else was refused.
        let released = [h.next_job().await, h.next_job().await];
        assert_eq!(released[0].caller.as_deref(), Some("b"));
        assert_eq!(released[1].caller.as_deref(), Some("a"));
        // b's call went out before the answer was handled: it never waited, and was never
        // told it did.
        assert_silent(&mut b);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_call_cancelled_or_past_its_deadline_is_answered_and_never_published() {
        let mut h = harness_fair(one_out(10));
        h.link_up(1).await;
        let mut a = h.client_as(1, "a").await;
        send(&h, 1, "a1").await;
        assert_eq!(named(&h.next_job().await), "a1");
        let mut c = call(Some(json!("a2")), "sleep", json!({"n": "a2"}));
        c.options.timeout_ms = Some(500);
        h.handle.call(1, c, None).await.expect("router alive");
        send(&h, 1, "a3").await;
        h.barrier().await;
        h.handle
            .cancel(1, raw(json!("a3")))
            .await
            .expect("router alive");
        let r = response(&mut a).await;
        assert_eq!(
            (r["id"].clone(), r["error"]["code"].clone()),
            (json!("a3"), json!(codes::CANCELLED))
        );
        let r = response(&mut a).await;
        assert_eq!(
            (r["id"].clone(), r["error"]["code"].clone()),
            (json!("a2"), json!(codes::TIMEOUT))
        );
        h.bridge_says(1, said("sleep", depth(0, 1))).await;
        h.barrier().await;
        send(&h, 1, "a4").await;
        assert_eq!(named(&h.next_job().await), "a4");
        assert!(
            h.sent_to_bridge().is_empty(),
            "neither ended call was published, and no worker was told to cancel them"
        );
        assert_silent(&mut a);
    }
}
