//! Acknowledging replies in batches.
//!
//! A reply is acknowledged only once the gateway has taken it. Instead of one `basic.ack` per
//! reply (each a hand-off to lapin's I/O thread and a frame to RabbitMQ), the gateway link keeps an
//! [`AckWindow`] per reply channel: the delivery tags handed to the gateway, in order, and which
//! of them it has taken. Whenever the link has nothing else to do it sends one `basic.ack`
//! with `multiple = true` up to the highest tag below which every reply has been taken. A reply
//! not yet taken is never covered, so a bridge or gateway restart still returns it to the queue.

use std::collections::VecDeque;

use lapin::types::DeliveryTag;

/// One acknowledgement to send on the reply channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckOp {
    /// `basic.ack` of one delivery.
    One(DeliveryTag),
    /// `basic.ack` with `multiple = true`: this tag and every unacknowledged one before it.
    UpTo(DeliveryTag),
    /// `basic.nack` with `requeue = true` of one delivery (the gateway never took it).
    Requeue(DeliveryTag),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Handed to the gateway, not yet taken.
    Untaken,
    /// Taken, not yet acknowledged.
    Taken,
    /// Taken and already acknowledged on its own.
    Acked,
}

/// The unacknowledged replies of one reply channel, in delivery order.
///
/// Bounded by the channel's prefetch: every entry is a delivery RabbitMQ counts as unacked.
#[derive(Debug)]
pub(crate) struct AckWindow {
    entries: VecDeque<(DeliveryTag, State)>,
    /// The highest tag a `multiple` ack may cover now, not yet sent.
    due: Option<DeliveryTag>,
    /// Past this many entries, replies taken behind one the gateway still holds are acked one
    /// by one, so that reply cannot hold RabbitMQ's prefetch (and with it every other reply).
    stall_limit: usize,
}

impl AckWindow {
    /// A window for a channel with `prefetch` unacknowledged deliveries at most.
    pub(crate) fn new(prefetch: u16) -> Self {
        Self {
            entries: VecDeque::new(),
            due: None,
            stall_limit: usize::from(prefetch / 2).max(1),
        }
    }

    /// A delivery was handed on; tags on one channel only grow.
    pub(crate) fn delivered(&mut self, tag: DeliveryTag) {
        debug_assert!(self.entries.back().is_none_or(|(last, _)| *last < tag));
        self.entries.push_back((tag, State::Untaken));
    }

    /// The gateway took the reply with `tag`. Returns the acks to send at once (only when a
    /// reply not yet taken holds up too many others); the batched one waits for [`Self::flush`].
    pub(crate) fn taken(&mut self, tag: DeliveryTag) -> Vec<AckOp> {
        let Ok(i) = self.entries.binary_search_by_key(&tag, |(t, _)| *t) else {
            return Vec::new();
        };
        if self.entries[i].1 == State::Untaken {
            self.entries[i].1 = State::Taken;
        }
        while let Some(&(front, state)) = self.entries.front() {
            match state {
                State::Untaken => break,
                State::Taken => self.due = Some(front),
                State::Acked => {}
            }
            self.entries.pop_front();
        }
        if self.entries.len() <= self.stall_limit {
            return Vec::new();
        }
        self.entries
            .iter_mut()
            .filter(|(_, state)| *state == State::Taken)
            .map(|(tag, state)| {
                *state = State::Acked;
                AckOp::One(*tag)
            })
            .collect()
    }

    /// Whether a batched ack is waiting to be sent.
    pub(crate) fn is_due(&self) -> bool {
        self.due.is_some()
    }

    /// The batched ack, if one is due.
    pub(crate) fn flush(&mut self) -> Option<AckOp> {
        self.due.take().map(AckOp::UpTo)
    }

    /// Everything left, as the link ends: the batched ack, then each reply not taken back
    /// to the queue and each taken one acknowledged.
    pub(crate) fn finish(&mut self) -> Vec<AckOp> {
        let mut ops: Vec<AckOp> = self.flush().into_iter().collect();
        for (tag, state) in self.entries.drain(..) {
            match state {
                State::Untaken => ops.push(AckOp::Requeue(tag)),
                State::Taken => ops.push(AckOp::One(tag)),
                State::Acked => {}
            }
        }
        ops
    }

    /// Replies handed on and not yet acknowledged.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tags: impl IntoIterator<Item = DeliveryTag>) -> AckWindow {
        let mut w = AckWindow::new(256);
        for t in tags {
            w.delivered(t);
        }
        w
    }

    #[test]
    fn replies_taken_in_order_are_acked_by_one_multiple_ack() {
        let mut w = window(1..=5);
        for t in 1..=5 {
            assert!(w.taken(t).is_empty());
        }
        assert_eq!(w.flush(), Some(AckOp::UpTo(5)));
        assert_eq!(w.flush(), None);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn an_untaken_reply_is_never_covered() {
        let mut w = window(1..=4);
        w.taken(1);
        w.taken(3);
        w.taken(4);
        assert_eq!(w.flush(), Some(AckOp::UpTo(1)));
        assert!(!w.is_due(), "2 is not taken: nothing past it may be acked");
        w.taken(2);
        assert_eq!(w.flush(), Some(AckOp::UpTo(4)));
    }

    #[test]
    fn finish_requeues_what_was_not_taken_and_acks_the_rest() {
        let mut w = window([3, 7, 9, 12]);
        w.taken(3);
        w.taken(9);
        assert_eq!(
            w.finish(),
            vec![
                AckOp::UpTo(3),
                AckOp::Requeue(7),
                AckOp::One(9),
                AckOp::Requeue(12)
            ]
        );
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn an_unknown_or_repeated_take_changes_nothing() {
        let mut w = window([5, 6]);
        assert!(w.taken(4).is_empty());
        assert!(!w.is_due());
        w.taken(5);
        w.taken(5);
        assert_eq!(w.flush(), Some(AckOp::UpTo(5)));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn replies_stuck_behind_a_held_one_are_acked_one_by_one_past_the_limit() {
        // prefetch 8: the limit is 4 entries.
        let mut w = AckWindow::new(8);
        for t in 1..=4 {
            w.delivered(t);
        }
        assert!(w.taken(2).is_empty());
        assert!(w.taken(3).is_empty());
        w.delivered(5);
        w.delivered(6);
        // 6 entries > 4: the taken ones go on their own; 1 (held) and the untaken stay.
        assert_eq!(
            w.taken(4),
            vec![AckOp::One(2), AckOp::One(3), AckOp::One(4)]
        );
        assert!(!w.is_due());
        w.taken(1);
        // 1 is the only one a multiple ack may name: 2-4 are acked already.
        assert_eq!(w.flush(), Some(AckOp::UpTo(1)));
        w.taken(5);
        w.taken(6);
        assert_eq!(w.flush(), Some(AckOp::UpTo(6)));
        assert_eq!(w.len(), 0);
    }
}
