//! Which jobs are running and which were cancelled: the table the delivery loop owns.
//!
//! One task (the worker's delivery loop) owns a [`JobTable`]: it admits each delivery, hands
//! cancellations from the broadcast queue to the running jobs' tokens, and hears from each job
//! task, through a bounded channel of [`Ticket`]s, when it is done. Nothing else touches it, so
//! it needs no lock.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::SystemTime,
};

use tokio_util::sync::CancellationToken;

use crate::contract;

/// How many cancelled job ids a worker remembers for jobs it has not been given yet. A job
/// cancelled longer ago than this many cancellations (over all jobs of the deployment, since
/// every worker hears every cancellation) runs if it is delivered after all; its reply is then
/// dropped by the bridge, and its deadline, if any, still stops it.
pub(crate) const RECENTLY_CANCELLED_CAPACITY: usize = 4096;

/// The last `capacity` job ids that were cancelled, oldest evicted first.
#[derive(Debug)]
pub(crate) struct RecentlyCancelled {
    capacity: usize,
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl RecentlyCancelled {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            order: VecDeque::with_capacity(capacity),
            ids: HashSet::with_capacity(capacity),
        }
    }

    /// Remembers `job_id`, forgetting the oldest id if the set is full. An id already held keeps
    /// its place: a repeated cancellation does not make it live longer.
    pub(crate) fn insert(&mut self, job_id: &str) {
        if self.capacity == 0 || self.ids.contains(job_id) {
            return;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.order.push_back(job_id.to_owned());
        self.ids.insert(job_id.to_owned());
    }

    pub(crate) fn contains(&self, job_id: &str) -> bool {
        self.ids.contains(job_id)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }
}

/// Why a delivered job is acked without running and without a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SkipReason {
    /// A cancellation for it arrived before it was delivered.
    Cancelled,
    /// Its deadline passed before it could start.
    Expired,
}

impl SkipReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled before it started",
            Self::Expired => "deadline passed before it started",
        }
    }
}

/// What the delivery loop does with a delivered job.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Run it with this token; send the ticket back when the job task ends.
    Run(Ticket, CancellationToken),
    /// Ack it without running it or replying.
    Skip(SkipReason),
}

/// A running job's claim on its [`JobTable`] entry, sent back when the job task ends.
#[derive(Debug)]
pub(crate) struct Ticket {
    job_id: String,
    /// Tells this run of the id from a later one, so that a late ticket (from a job of a
    /// session that was lost, whose job the broker redelivered) cannot remove its successor.
    run: u64,
}

#[derive(Debug)]
struct Running {
    run: u64,
    token: CancellationToken,
}

/// The running jobs' cancellation tokens by job id, and the recently cancelled ids.
#[derive(Debug)]
pub(crate) struct JobTable {
    running: HashMap<String, Running>,
    cancelled: RecentlyCancelled,
    next_run: u64,
}

impl JobTable {
    pub(crate) fn new(cancelled_capacity: usize) -> Self {
        Self {
            running: HashMap::new(),
            cancelled: RecentlyCancelled::new(cancelled_capacity),
            next_run: 0,
        }
    }

    /// Decides about a delivered job: skip it if it was cancelled or its deadline is past at
    /// `now`, otherwise register it as running.
    pub(crate) fn admit(
        &mut self,
        job_id: &str,
        deadline: Option<SystemTime>,
        now: SystemTime,
    ) -> Admission {
        if self.cancelled.contains(job_id) {
            return Admission::Skip(SkipReason::Cancelled);
        }
        if contract::deadline_passed(deadline, now) {
            return Admission::Skip(SkipReason::Expired);
        }
        let run = self.next_run;
        self.next_run = self.next_run.wrapping_add(1);
        let token = CancellationToken::new();
        // Two runs of one id at once only happen when the broker redelivers a job whose first
        // run, on a lost session, is still being dropped; the newer one is the one that counts.
        self.running.insert(
            job_id.to_owned(),
            Running {
                run,
                token: token.clone(),
            },
        );
        let ticket = Ticket {
            job_id: job_id.to_owned(),
            run,
        };
        Admission::Run(ticket, token)
    }

    /// A job task ended: forget its entry (unless a newer run of the same id replaced it).
    pub(crate) fn finished(&mut self, ticket: Ticket) {
        if self
            .running
            .get(&ticket.job_id)
            .is_some_and(|running| running.run == ticket.run)
        {
            self.running.remove(&ticket.job_id);
        }
    }

    /// A cancellation arrived: cancel the job's token if it runs here, and remember the id
    /// either way, so that the job is skipped if it is delivered (again) later. Returns whether
    /// a running job was cancelled.
    pub(crate) fn cancel(&mut self, job_id: &str) -> bool {
        self.cancelled.insert(job_id);
        match self.running.get(job_id) {
            Some(running) => {
                running.token.cancel();
                true
            }
            None => false,
        }
    }

    /// How many jobs are registered as running.
    #[cfg(test)]
    fn running(&self) -> usize {
        self.running.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn run(admission: Admission) -> (Ticket, CancellationToken) {
        match admission {
            Admission::Run(ticket, token) => (ticket, token),
            Admission::Skip(reason) => panic!("job skipped: {reason:?}"),
        }
    }

    fn skip_reason(admission: Admission) -> Option<SkipReason> {
        match admission {
            Admission::Run(..) => None,
            Admission::Skip(reason) => Some(reason),
        }
    }

    #[test]
    fn recently_cancelled_forgets_the_oldest_id_first() {
        let mut set = RecentlyCancelled::new(3);
        for id in ["a", "b", "c", "d"] {
            set.insert(id);
        }
        assert!(!set.contains("a"));
        assert!(set.contains("b") && set.contains("c") && set.contains("d"));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn recently_cancelled_does_not_refresh_a_repeated_id() {
        let mut set = RecentlyCancelled::new(2);
        set.insert("a");
        set.insert("b");
        set.insert("a");
        set.insert("c");
        assert!(!set.contains("a"), "a kept its first place and was evicted");
        assert!(set.contains("b") && set.contains("c"));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn recently_cancelled_with_no_capacity_remembers_nothing() {
        let mut set = RecentlyCancelled::new(0);
        set.insert("a");
        assert!(!set.contains("a"));
    }

    #[test]
    fn job_cancelled_before_delivery_is_skipped() {
        let mut table = JobTable::new(8);
        assert!(!table.cancel("job-1"), "nothing was running");
        let admission = table.admit("job-1", None, SystemTime::now());
        assert_eq!(skip_reason(admission), Some(SkipReason::Cancelled));
        assert_eq!(table.running(), 0);
    }

    #[test]
    fn job_past_its_deadline_is_skipped() {
        let mut table = JobTable::new(8);
        let now = SystemTime::now();
        let past = now - Duration::from_millis(1);
        assert_eq!(
            skip_reason(table.admit("job-1", Some(past), now)),
            Some(SkipReason::Expired)
        );
        assert_eq!(
            skip_reason(table.admit("job-2", Some(now), now)),
            Some(SkipReason::Expired),
            "a deadline of exactly now has passed"
        );
        let future = now + Duration::from_secs(1);
        assert_eq!(skip_reason(table.admit("job-3", Some(future), now)), None);
    }

    #[test]
    fn cancellation_of_a_running_job_cancels_its_token_only() {
        let mut table = JobTable::new(8);
        let (_t1, token1) = run(table.admit("job-1", None, SystemTime::now()));
        let (_t2, token2) = run(table.admit("job-2", None, SystemTime::now()));
        assert!(table.cancel("job-1"));
        assert!(token1.is_cancelled());
        assert!(!token2.is_cancelled());
    }

    #[test]
    fn cancelled_running_job_is_skipped_when_redelivered() {
        let mut table = JobTable::new(8);
        let (ticket, _token) = run(table.admit("job-1", None, SystemTime::now()));
        table.cancel("job-1");
        table.finished(ticket);
        let again = table.admit("job-1", None, SystemTime::now());
        assert_eq!(skip_reason(again), Some(SkipReason::Cancelled));
    }

    #[test]
    fn finished_job_leaves_the_table() {
        let mut table = JobTable::new(8);
        let (ticket, token) = run(table.admit("job-1", None, SystemTime::now()));
        table.finished(ticket);
        assert_eq!(table.running(), 0);
        assert!(!table.cancel("job-1"), "no longer running");
        assert!(!token.is_cancelled());
    }

    #[test]
    fn late_ticket_of_an_earlier_run_keeps_the_newer_run() {
        let mut table = JobTable::new(8);
        let (first, _old) = run(table.admit("job-1", None, SystemTime::now()));
        let (_second, newer) = run(table.admit("job-1", None, SystemTime::now()));
        table.finished(first);
        assert_eq!(table.running(), 1);
        assert!(table.cancel("job-1"));
        assert!(newer.is_cancelled());
    }
}
