//! The acknowledgements of one broker session's jobs, batched per consume channel.
//!
//! A job is acked only once it is [`Settled::Done`] (its reply confirmed, or no reply wanted).
//! Instead of one `basic.ack` per job, the delivery loop keeps an [`AckWindow`] per method
//! channel and, whenever it has nothing else ready, sends one `basic.ack` with `multiple = true`
//! up to the highest delivery tag below which every job of that channel is settled. A job not
//! settled yet is never covered, so a lost session or a killed worker still returns it to the
//! queue.
//!
//! Why a channel per method: a `multiple` ack covers every delivery of its channel up to its
//! tag, so the window must see the channel's deliveries in tag order; two consumers on one
//! channel, merged into one stream, yield theirs out of order, and a batch could cover a job of
//! the other consumer that nobody has even read yet.
//!
//! Why the session number: delivery tags restart at 1 on every channel, so a tag means something
//! only on the channel that numbered it. Each job's report names the session it came from; a
//! report from an earlier session (its job ran on a channel that is gone, whose unacked jobs
//! RabbitMQ has requeued) is dropped, never applied to the new session's windows.

use lapin::types::DeliveryTag;
use tracing::warn;

use crate::job::Settled;
use wsmq_amqp_proto::acks::{AckOp, AckWindow};

/// Which consume channel a delivery came on: the broker session and the method's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelKey {
    pub(crate) session: u64,
    pub(crate) index: usize,
}

/// A job task's word on how its delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckReport {
    pub(crate) channel: ChannelKey,
    pub(crate) tag: DeliveryTag,
    pub(crate) settled: Settled,
}

/// The ack windows of one session, one per method channel.
#[derive(Debug)]
pub(crate) struct SessionAcks {
    session: u64,
    windows: Vec<AckWindow>,
    /// Reports that named another session, or a tag this session's windows did not expect.
    unexpected: u64,
}

impl SessionAcks {
    /// For session number `session`, with one channel per entry of `prefetch` (its consumer's
    /// prefetch).
    pub(crate) fn new(session: u64, prefetch: impl IntoIterator<Item = u16>) -> Self {
        Self {
            session,
            windows: prefetch.into_iter().map(AckWindow::new).collect(),
            unexpected: 0,
        }
    }

    /// A job was delivered on method channel `index`; returns the key its report must name.
    pub(crate) fn delivered(&mut self, index: usize, tag: DeliveryTag) -> ChannelKey {
        let key = ChannelKey {
            session: self.session,
            index,
        };
        if let Some(window) = self.windows.get_mut(index)
            && let Err(error) = window.delivered(tag)
        {
            self.unexpected += 1;
            warn!(channel = index, error = %error, unexpected = self.unexpected, "unexpected delivery tag");
        }
        key
    }

    /// A job ended: returns the acks to send at once on channel `index` (the batch waits for
    /// [`Self::flush`]). A report of an earlier session is dropped.
    pub(crate) fn report(&mut self, report: AckReport) -> Vec<(usize, AckOp)> {
        let AckReport {
            channel,
            tag,
            settled,
        } = report;
        if channel.session != self.session {
            // Its channel is gone and RabbitMQ requeued the job: nothing to ack, nowhere to.
            self.unexpected += 1;
            tracing::debug!(
                report_session = channel.session,
                session = self.session,
                tag,
                "report of a job of an earlier session dropped"
            );
            return Vec::new();
        }
        let Some(window) = self.windows.get_mut(channel.index) else {
            self.unexpected += 1;
            warn!(
                channel = channel.index,
                tag, "report for a channel this session has not"
            );
            return Vec::new();
        };
        let outcome = match settled {
            Settled::Done => window.taken(tag),
            Settled::Requeued => window.settled(tag).map(|()| Vec::new()),
        };
        match outcome {
            Ok(ops) => ops.into_iter().map(|op| (channel.index, op)).collect(),
            Err(error) => {
                self.unexpected += 1;
                warn!(channel = channel.index, error = %error, unexpected = self.unexpected, "unexpected job report");
                Vec::new()
            }
        }
    }

    /// A job the delivery loop settles itself (skipped or unanswerable): acked with the batch.
    pub(crate) fn skipped(&mut self, index: usize, tag: DeliveryTag) -> Vec<(usize, AckOp)> {
        let channel = self.delivered(index, tag);
        self.report(AckReport {
            channel,
            tag,
            settled: Settled::Done,
        })
    }

    /// Whether some channel has a batched ack waiting.
    pub(crate) fn is_due(&self) -> bool {
        self.windows.iter().any(AckWindow::is_due)
    }

    /// The batched acks that are due, one per channel at most.
    pub(crate) fn flush(&mut self) -> Vec<(usize, AckOp)> {
        self.windows
            .iter_mut()
            .enumerate()
            .filter_map(|(index, window)| window.flush().map(|op| (index, op)))
            .collect()
    }

    /// Everything left as the session ends in a shutdown: the batched acks, each settled job
    /// acked and each unsettled one back to the queue.
    pub(crate) fn finish(&mut self) -> Vec<(usize, AckOp)> {
        self.windows
            .iter_mut()
            .enumerate()
            .flat_map(|(index, window)| window.finish().into_iter().map(move |op| (index, op)))
            .collect()
    }

    /// Reports and tags this session did not expect (logged as they came).
    #[cfg(test)]
    pub(crate) fn unexpected(&self) -> u64 {
        self.unexpected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(channel: ChannelKey, tag: DeliveryTag) -> AckReport {
        AckReport {
            channel,
            tag,
            settled: Settled::Done,
        }
    }

    #[test]
    fn jobs_of_each_channel_are_acked_in_one_batch_per_channel() {
        let mut acks = SessionAcks::new(1, [16, 16]);
        let echo: Vec<_> = (1..=3).map(|t| acks.delivered(0, t)).collect();
        let sleep = acks.delivered(1, 1);
        for (tag, key) in (1..=3).zip(&echo) {
            assert!(acks.report(done(*key, tag)).is_empty());
        }
        assert!(acks.is_due());
        assert_eq!(acks.flush(), vec![(0, AckOp::UpTo(3))]);
        assert!(!acks.is_due(), "the sleep job is not settled");
        assert!(acks.report(done(sleep, 1)).is_empty());
        assert_eq!(acks.flush(), vec![(1, AckOp::UpTo(1))]);
        assert_eq!(acks.unexpected(), 0);
    }

    #[test]
    fn a_report_from_before_a_channel_reset_is_never_acked_on_the_new_channel() {
        // Session 1 delivers tags 1-3; the connection is lost before any is settled.
        let mut old = SessionAcks::new(1, [16]);
        let stale: Vec<_> = (1..=3).map(|t| old.delivered(0, t)).collect();
        drop(old);
        // Session 2's channel numbers its deliveries from 1 again.
        let mut acks = SessionAcks::new(2, [16]);
        let fresh = acks.delivered(0, 1);
        // The old jobs end now: their tags 1-3 mean other deliveries here, or none at all.
        for (tag, key) in (1..=3).zip(&stale) {
            assert!(acks.report(done(*key, tag)).is_empty());
        }
        assert!(
            !acks.is_due(),
            "the new tag 1 is not settled: nothing may be acked"
        );
        assert_eq!(acks.flush(), vec![]);
        assert_eq!(acks.unexpected(), 3);
        assert!(acks.report(done(fresh, 1)).is_empty());
        assert_eq!(acks.flush(), vec![(0, AckOp::UpTo(1))]);
    }

    #[test]
    fn unexpected_tags_are_counted_not_fatal() {
        let mut acks = SessionAcks::new(7, [4]);
        let key = acks.delivered(0, 5);
        acks.delivered(0, 5);
        acks.delivered(0, 2);
        assert!(acks.report(done(key, 9)).is_empty());
        let elsewhere = ChannelKey {
            session: 7,
            index: 3,
        };
        assert!(acks.report(done(elsewhere, 5)).is_empty());
        assert_eq!(acks.unexpected(), 4);
        // 2 came late and is not settled: 5 waits behind it.
        assert!(acks.report(done(key, 5)).is_empty());
        assert_eq!(acks.flush(), vec![]);
        assert!(acks.report(done(key, 2)).is_empty());
        assert_eq!(acks.flush(), vec![(0, AckOp::UpTo(5))]);
    }

    #[test]
    fn a_requeued_job_is_never_named_and_finish_returns_the_unsettled() {
        let mut acks = SessionAcks::new(1, [16]);
        let keys: Vec<_> = (1..=4).map(|t| acks.delivered(0, t)).collect();
        assert!(
            acks.report(AckReport {
                channel: keys[0],
                tag: 1,
                settled: Settled::Requeued,
            })
            .is_empty()
        );
        acks.report(done(keys[1], 2));
        acks.report(done(keys[3], 4));
        assert_eq!(
            acks.finish(),
            vec![
                (0, AckOp::UpTo(2)),
                (0, AckOp::Requeue(3)),
                (0, AckOp::One(4))
            ]
        );
    }
}
