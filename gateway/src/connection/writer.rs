//! The write half of a connection's socket, and what waits for it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::ws::Message;
use futures::Sink;
use tokio::time::Instant;

use super::MAX_QUEUED_BYTES;
use crate::outbound::{Outbound, OutboundKind};

/// Something queued for the socket.
pub(super) enum Queued {
    Ping,
    Text(OutboundKind, String),
}

/// The write half of the socket and what waits for it. Writing is driven from the connection's
/// `select!` ([`Writer::poll_write`]) and never awaited on its own, so a socket that takes
/// nothing holds no one up; state lives here, not in a future, so a write interrupted by
/// another event loses nothing.
pub(super) struct Writer<W> {
    pub(super) sink: W,
    pub(super) queue: VecDeque<Queued>,
    pub(super) queued_bytes: usize,
    /// Something was handed to the sink and not flushed yet.
    unflushed: bool,
    /// When the socket last took something, or the writer last went from idle to busy.
    progress: Instant,
}

impl<W> Writer<W>
where
    W: Sink<Message, Error = axum::Error> + Unpin,
{
    pub(super) fn new(sink: W) -> Self {
        Self {
            sink,
            queue: VecDeque::new(),
            queued_bytes: 0,
            unflushed: false,
            progress: Instant::now(),
        }
    }

    /// Whether something waits to be written or flushed.
    pub(super) fn busy(&self) -> bool {
        !self.queue.is_empty() || self.unflushed
    }

    pub(super) fn push(&mut self, item: Queued) {
        if !self.busy() {
            self.progress = Instant::now();
        }
        if let Queued::Text(_, text) = &item {
            self.queued_bytes += text.len();
        }
        self.queue.push_back(item);
    }

    pub(super) fn text(&mut self, kind: OutboundKind, text: String) {
        self.push(Queued::Text(kind, text));
    }

    /// More waits than a reading client lets pile up.
    pub(super) fn over_budget(&self) -> bool {
        self.queue.len() > 1 && self.queued_bytes > MAX_QUEUED_BYTES
    }

    /// When the connection counts as stuck if the socket still takes nothing.
    pub(super) fn stall_deadline(&self, timeout: Duration) -> Instant {
        self.progress + timeout
    }

    /// Hands queued messages to the socket as far as it takes them, then flushes. Ready when
    /// everything is written.
    pub(super) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        while !self.queue.is_empty() {
            ready!(Pin::new(&mut self.sink).poll_ready(cx))?;
            self.progress = Instant::now();
            let message = match self.queue.pop_front() {
                Some(Queued::Ping) => Message::Ping(Default::default()),
                Some(Queued::Text(_, text)) => {
                    self.queued_bytes -= text.len();
                    Message::Text(text.into())
                }
                None => break,
            };
            Pin::new(&mut self.sink).start_send(message)?;
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.sink).poll_flush(cx))?;
            self.unflushed = false;
            self.progress = Instant::now();
        }
        Poll::Ready(Ok(()))
    }

    /// Writes everything queued.
    pub(super) async fn flush_all(&mut self) -> Result<(), axum::Error> {
        std::future::poll_fn(|cx| self.poll_write(cx)).await
    }

    /// What never reached the socket, for the session to keep.
    pub(super) fn take_unsent(&mut self) -> Vec<Outbound> {
        self.queued_bytes = 0;
        self.queue
            .drain(..)
            .filter_map(|item| match item {
                Queued::Ping => None,
                Queued::Text(kind, text) => Some(Outbound {
                    batch: None,
                    kind,
                    text,
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::SinkExt;

    use super::*;

    fn writer() -> Writer<impl Sink<Message, Error = axum::Error> + Unpin> {
        Writer::new(futures::sink::drain().sink_map_err(|never: Infallible| match never {}))
    }

    #[test]
    fn a_single_large_message_is_not_over_budget_but_two_past_it_are() {
        let mut w = writer();
        w.text(OutboundKind::Response, "x".repeat(MAX_QUEUED_BYTES + 1));
        assert!(
            !w.over_budget(),
            "one large result alone does not make a client slow"
        );
        w.text(OutboundKind::Response, "y".into());
        assert!(w.over_budget());
    }

    #[test]
    fn what_was_not_written_goes_back_in_order_without_pings() {
        let mut w = writer();
        w.text(OutboundKind::Notification, "n".into());
        w.push(Queued::Ping);
        w.text(OutboundKind::Response, "r".into());
        assert!(w.busy());
        let unsent = w.take_unsent();
        let got: Vec<_> = unsent.iter().map(|o| (o.kind, o.text.as_str())).collect();
        assert_eq!(
            got,
            [
                (OutboundKind::Notification, "n"),
                (OutboundKind::Response, "r")
            ]
        );
        assert!(!w.busy());
        assert!(!w.over_budget());
    }

    #[tokio::test]
    async fn flush_all_writes_everything_queued() {
        let mut w = writer();
        w.text(OutboundKind::Response, "a".into());
        w.push(Queued::Ping);
        w.flush_all().await.expect("drain takes everything");
        assert!(!w.busy());
        assert!(w.take_unsent().is_empty());
    }
}
