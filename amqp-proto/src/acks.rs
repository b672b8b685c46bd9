//! Acknowledging deliveries in batches.
//!
//! A delivery is acknowledged only once its consumer is done with it: in the bridge, a reply the
//! gateway has taken; in the worker SDK, a job whose reply RabbitMQ has confirmed. Instead of one
//! `basic.ack` per delivery (each a hand-off to lapin's I/O thread and a frame to RabbitMQ), the
//! consumer keeps an [`AckWindow`] per channel: the delivery tags handed on, in order, and which
//! of them are done ("taken"). Whenever the consumer has nothing else to do it sends one
//! `basic.ack` with `multiple = true` up to the highest tag below which every delivery is done.
//! A delivery not yet done is never covered, so a restart still returns it to the queue.
//!
//! A `multiple` ack covers every unacknowledged delivery of the *channel* up to its tag, so the
//! window must see every delivery of its channel in tag order: one window per channel, and one
//! consumer per channel (two consumers' streams merged can yield their tags out of order, and a
//! batch could then cover a delivery the consumer has not even read). Delivery tags restart at 1
//! on every new channel, so a window lives exactly as long as its channel.
//!
//! Tags come from the network: a tag out of order, repeated or unknown is never a panic. It is
//! reported as a [`TagError`] (the caller logs it), counted ([`AckWindow::unexpected`]), and
//! handled so that no batch covers a delivery not yet done.
//!
//! Pure bookkeeping: nothing here talks to the broker; the caller performs the [`AckOp`]s.

use std::collections::VecDeque;

use lapin::types::DeliveryTag;

/// One acknowledgement to send on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOp {
    /// `basic.ack` of one delivery.
    One(DeliveryTag),
    /// `basic.ack` with `multiple = true`: this tag and every unacknowledged one before it.
    UpTo(DeliveryTag),
    /// `basic.nack` with `requeue = true` of one delivery (never done).
    Requeue(DeliveryTag),
}

/// A delivery tag the window did not expect (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// Delivered below a tag seen before: tracked in its place, so no batch covers it.
    #[error("delivery tag {tag} arrived after tag {last}: tags on one channel only grow")]
    OutOfOrder { tag: DeliveryTag, last: DeliveryTag },
    /// Delivered at or below a tag already acknowledged with `multiple`: RabbitMQ counts it
    /// acknowledged already, so it is not tracked (an ack naming it would close the channel).
    #[error("delivery tag {tag} arrived after a multiple ack up to {covered} covered it")]
    AlreadyCovered {
        tag: DeliveryTag,
        covered: DeliveryTag,
    },
    /// Delivered twice.
    #[error("delivery tag {0} arrived twice")]
    Repeated(DeliveryTag),
    /// Reported done (or settled) but not awaiting an acknowledgement here.
    #[error("delivery tag {0} is not awaiting an acknowledgement on this channel")]
    Unknown(DeliveryTag),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Handed on, not yet done.
    Untaken,
    /// Done, not yet acknowledged.
    Taken,
    /// Done and already acknowledged (or nacked) on its own.
    Acked,
}

/// The unacknowledged deliveries of one channel, in tag order.
///
/// Bounded by the channel's prefetch: every entry is a delivery RabbitMQ counts as unacked.
#[derive(Debug)]
pub struct AckWindow {
    /// Sorted by tag; never starts with an `Acked` entry (those need nothing more).
    entries: VecDeque<(DeliveryTag, State)>,
    /// Past this many entries behind one not yet done, the done ones are acked one by one, so
    /// that one long job (or a reply the gateway holds) cannot hold RabbitMQ's prefetch, and with
    /// it every other delivery.
    stall_limit: usize,
    /// The highest tag delivered so far.
    last: Option<DeliveryTag>,
    /// The highest tag a `multiple` ack has named.
    covered: DeliveryTag,
    /// Tags reported as [`TagError`]s.
    unexpected: u64,
}

impl AckWindow {
    /// A window for a channel with `prefetch` unacknowledged deliveries at most.
    pub fn new(prefetch: u16) -> Self {
        Self {
            entries: VecDeque::new(),
            stall_limit: usize::from(prefetch / 2).max(1),
            last: None,
            covered: 0,
            unexpected: 0,
        }
    }

    /// A delivery was handed on. Tags on one channel only grow; anything else is an error (see
    /// [`TagError`] for how each is handled).
    pub fn delivered(&mut self, tag: DeliveryTag) -> Result<(), TagError> {
        if self.last.is_none_or(|last| last < tag) {
            self.last = Some(tag);
            self.entries.push_back((tag, State::Untaken));
            return Ok(());
        }
        self.unexpected += 1;
        if tag <= self.covered {
            return Err(TagError::AlreadyCovered {
                tag,
                covered: self.covered,
            });
        }
        match self.entries.binary_search_by_key(&tag, |(t, _)| *t) {
            Ok(_) => Err(TagError::Repeated(tag)),
            Err(i) => {
                self.entries.insert(i, (tag, State::Untaken));
                Err(TagError::OutOfOrder {
                    tag,
                    last: self.last.unwrap_or(tag),
                })
            }
        }
    }

    /// The delivery `tag` is done. Returns the acks to send at once (only when one not yet done
    /// holds up too many others); the batched one waits for [`Self::flush`].
    pub fn taken(&mut self, tag: DeliveryTag) -> Result<Vec<AckOp>, TagError> {
        let i = self.find(tag)?;
        if self.entries[i].1 == State::Untaken {
            self.entries[i].1 = State::Taken;
        }
        let stalled = self
            .entries
            .front()
            .is_some_and(|(_, state)| *state == State::Untaken);
        if !stalled || self.entries.len() <= self.stall_limit {
            return Ok(Vec::new());
        }
        let ops = self
            .entries
            .iter_mut()
            .filter(|(_, state)| *state == State::Taken)
            .map(|(tag, state)| {
                *state = State::Acked;
                AckOp::One(*tag)
            })
            .collect();
        Ok(ops)
    }

    /// The delivery `tag` was settled on its own (say, nacked back to the queue): no ack may
    /// name it, and it no longer holds up the ones after it.
    pub fn settled(&mut self, tag: DeliveryTag) -> Result<(), TagError> {
        let i = self.find(tag)?;
        self.entries[i].1 = State::Acked;
        self.drop_acked_front();
        Ok(())
    }

    fn find(&mut self, tag: DeliveryTag) -> Result<usize, TagError> {
        self.entries
            .binary_search_by_key(&tag, |(t, _)| *t)
            .map_err(|_| {
                self.unexpected += 1;
                TagError::Unknown(tag)
            })
    }

    fn drop_acked_front(&mut self) {
        while self
            .entries
            .front()
            .is_some_and(|(_, state)| *state == State::Acked)
        {
            self.entries.pop_front();
        }
    }

    /// Whether a batched ack is waiting to be sent.
    pub fn is_due(&self) -> bool {
        self.entries
            .front()
            .is_some_and(|(_, state)| *state == State::Taken)
    }

    /// The batched ack, if one is due: up to the last done delivery before the first one not
    /// yet done.
    pub fn flush(&mut self) -> Option<AckOp> {
        let mut due = None;
        while let Some(&(tag, state)) = self.entries.front() {
            match state {
                State::Untaken => break,
                State::Taken => due = Some(tag),
                State::Acked => {}
            }
            self.entries.pop_front();
        }
        let due = due?;
        self.covered = self.covered.max(due);
        Some(AckOp::UpTo(due))
    }

    /// Everything left, as the channel's consumer ends: the batched ack, then each delivery not
    /// done back to the queue and each done one acknowledged.
    pub fn finish(&mut self) -> Vec<AckOp> {
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

    /// Deliveries handed on and not yet acknowledged.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether every delivery handed on is acknowledged.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many tags were reported as [`TagError`]s on this channel.
    pub fn unexpected(&self) -> u64 {
        self.unexpected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tags: impl IntoIterator<Item = DeliveryTag>) -> AckWindow {
        let mut w = AckWindow::new(256);
        for t in tags {
            w.delivered(t).expect("tags in order");
        }
        w
    }

    fn take(w: &mut AckWindow, tag: DeliveryTag) -> Vec<AckOp> {
        w.taken(tag).expect("a delivered tag")
    }

    #[test]
    fn deliveries_done_in_order_are_acked_by_one_multiple_ack() {
        let mut w = window(1..=5);
        for t in 1..=5 {
            assert!(take(&mut w, t).is_empty());
        }
        assert_eq!(w.flush(), Some(AckOp::UpTo(5)));
        assert_eq!(w.flush(), None);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_delivery_not_done_is_never_covered() {
        let mut w = window(1..=4);
        take(&mut w, 1);
        take(&mut w, 3);
        take(&mut w, 4);
        assert_eq!(w.flush(), Some(AckOp::UpTo(1)));
        assert!(!w.is_due(), "2 is not done: nothing past it may be acked");
        take(&mut w, 2);
        assert_eq!(w.flush(), Some(AckOp::UpTo(4)));
    }

    #[test]
    fn finish_requeues_what_was_not_done_and_acks_the_rest() {
        let mut w = window([3, 7, 9, 12]);
        take(&mut w, 3);
        take(&mut w, 9);
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
    fn a_settled_delivery_is_never_named_but_no_longer_holds_the_batch() {
        let mut w = window(1..=3);
        w.settled(1).expect("delivered");
        assert!(!w.is_due());
        take(&mut w, 3);
        assert!(!w.is_due(), "2 is not done");
        w.settled(2).expect("delivered");
        assert_eq!(w.flush(), Some(AckOp::UpTo(3)));
        assert_eq!(w.len(), 0);
        let mut w = window(4..=6);
        take(&mut w, 4);
        w.settled(5).expect("delivered");
        take(&mut w, 6);
        // 5 is between them, settled on its own: the batch names 6, which covers 4 too.
        assert_eq!(w.finish(), vec![AckOp::UpTo(6)]);
    }

    #[test]
    fn an_unknown_or_repeated_take_changes_nothing_and_is_counted() {
        let mut w = window([5, 6]);
        assert_eq!(w.taken(4), Err(TagError::Unknown(4)));
        assert!(!w.is_due());
        take(&mut w, 5);
        take(&mut w, 5);
        assert_eq!(w.flush(), Some(AckOp::UpTo(5)));
        assert_eq!(w.len(), 1);
        assert_eq!(w.taken(5), Err(TagError::Unknown(5)), "acked already");
        assert_eq!(w.unexpected(), 2);
    }

    #[test]
    fn deliveries_stuck_behind_a_held_one_are_acked_one_by_one_past_the_limit() {
        // prefetch 8: the limit is 4 entries.
        let mut w = AckWindow::new(8);
        for t in 1..=4 {
            w.delivered(t).expect("in order");
        }
        assert!(take(&mut w, 2).is_empty());
        assert!(take(&mut w, 3).is_empty());
        w.delivered(5).expect("in order");
        w.delivered(6).expect("in order");
        // 6 entries > 4 behind 1, not done: the done ones go on their own.
        assert_eq!(
            take(&mut w, 4),
            vec![AckOp::One(2), AckOp::One(3), AckOp::One(4)]
        );
        assert!(!w.is_due());
        take(&mut w, 1);
        // 1 is the only one a multiple ack may name: 2-4 are acked already.
        assert_eq!(w.flush(), Some(AckOp::UpTo(1)));
        take(&mut w, 5);
        take(&mut w, 6);
        assert_eq!(w.flush(), Some(AckOp::UpTo(6)));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn many_done_deliveries_wait_for_one_batch_when_nothing_holds_them() {
        // prefetch 8 (limit 4): ten done in order are not a stall.
        let mut w = AckWindow::new(8);
        for t in 1..=10 {
            w.delivered(t).expect("in order");
            assert!(take(&mut w, t).is_empty());
        }
        assert_eq!(w.flush(), Some(AckOp::UpTo(10)));
    }

    #[test]
    fn a_tag_out_of_order_is_counted_and_never_covered_before_it_is_done() {
        let mut w = window([1, 2, 5]);
        take(&mut w, 1);
        take(&mut w, 2);
        take(&mut w, 5);
        assert_eq!(
            w.delivered(4),
            Err(TagError::OutOfOrder { tag: 4, last: 5 })
        );
        // The batch stops before 4, which is not done: 5 waits behind it.
        assert_eq!(w.flush(), Some(AckOp::UpTo(2)));
        assert!(!w.is_due());
        take(&mut w, 4);
        assert_eq!(w.flush(), Some(AckOp::UpTo(5)));
        assert_eq!(
            w.delivered(5),
            Err(TagError::AlreadyCovered { tag: 5, covered: 5 })
        );
        assert_eq!(w.delivered(6), Ok(()));
        assert_eq!(w.delivered(6), Err(TagError::Repeated(6)));
        assert_eq!(w.unexpected(), 3);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn a_new_channel_starts_a_new_window_at_tag_one() {
        // What the worker and the bridge do on every new channel: the old window (with its
        // unacknowledged tags) goes with the old channel, whose deliveries RabbitMQ requeued.
        let mut old = window(1..=3);
        take(&mut old, 1);
        drop(old);
        let mut new = AckWindow::new(256);
        assert_eq!(new.delivered(1), Ok(()));
        assert_eq!(
            new.taken(3),
            Err(TagError::Unknown(3)),
            "a tag of the old channel"
        );
        take(&mut new, 1);
        assert_eq!(new.flush(), Some(AckOp::UpTo(1)));
    }
}
