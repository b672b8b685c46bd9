//! One websocket client, from upgrade to close.
//!
//! The connection task owns its socket, its outbound queue and the batches it is assembling;
//! it is generic over the socket's `Stream`/`Sink` so tests can drive it with channels. Bad
//! input is answered on the spot and never reaches the router; everything else goes to the
//! router, and the router's answers come back on the bounded outbound queue.
//!
//! Reading and writing go on side by side: the task drains the router's queue into its own
//! write queue at once, whatever it is reading, and writes that queue out as fast as the socket
//! takes it. So a client is judged slow by what its socket will not take, never by what the
//! gateway has not got round to writing: when more than [`MAX_QUEUED_BYTES`] wait for the
//! socket, or the socket takes nothing for `--write-timeout`, the connection is closed with
//! 1008 (the close frame is best effort: a socket that takes nothing will not take it either).
//! A write that cannot finish never holds the task, so the ping and idle timers keep running.
//!
//! It also owns the connection's own limits: its call-rate bucket, its method allowlist, the
//! keepalive (a ping every `ping_interval`; a client that sends nothing back by the next one is
//! dropped) and the idle timeout (no message and no call in flight for `idle_timeout`).

mod writer;

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, close_code};
use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::Caller;
use crate::call_error::CallError;
use crate::jsonrpc::{self, Entry, FrameRejected, Incoming};
use crate::limits::TokenBucket;
use crate::outbound::{ClientId, Outbound, OutboundKind};
use crate::router::RouterHandle;

use writer::{Queued, Writer};

/// Sizes the queue of what the router sends one connection (see [`max_awaiting`]). The
/// connection drains that queue at once into its write queue and never has more calls
/// awaiting an answer than half of it, so it is only full when the connection task cannot run;
/// the router then disconnects the client rather than buffer more.
pub(crate) const OUTBOUND_CAPACITY: usize = 512;

/// Calls a connection may have handed to the router and not yet had answered: the in-flight
/// cap, plus room for the calls the router is answering -32003 at once because they came past
/// it. Past it the connection reads no more until answers come (briefly: only a flood gets
/// there). The outbound queue is twice this, so every answer fits it with as much room again
/// for notifications (progress, the session greeting, what a session kept).
pub(crate) fn max_awaiting(max_inflight_per_client: usize) -> usize {
    max_inflight_per_client.saturating_add(OUTBOUND_CAPACITY / 2)
}

/// Bytes of messages that may wait for the client's socket to take them. Past it the client is
/// not reading (its socket buffers are full too) and is closed with 1008. One message over it
/// is still written: a large result alone does not make a client slow.
pub(crate) const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

/// Close code for a connection idle past `--idle-timeout` (no message, no call in flight).
pub(crate) const CLOSE_IDLE: u16 = 4000;
/// Close code for a client that answered no ping within `--ping-interval` (rarely seen: such a
/// peer is usually gone).
pub(crate) const CLOSE_NO_PONG: u16 = 4001;

/// How long the goodbye may take: writing what is queued (on a normal close), the close frame,
/// and reading what the client still sends until its own close. A dead peer must not hold the
/// task.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a connection behaves; fixed for the gateway's life.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionConfig {
    /// On shutdown, how long to keep delivering responses to calls already made.
    pub(crate) drain: Duration,
    /// What one text message may hold.
    pub(crate) limits: jsonrpc::ParseLimits,
    /// Calls per second and burst; `None`: unlimited.
    pub(crate) call_rate: Option<(f64, u32)>,
    /// `None`: no pings.
    pub(crate) ping_interval: Option<Duration>,
    /// `None`: never closed for idleness.
    pub(crate) idle_timeout: Option<Duration>,
    /// Longest the socket may take nothing while something waits to be written.
    pub(crate) write_timeout: Duration,
    /// Calls handed to the router that may await their answer at once (see [`max_awaiting`]);
    /// the outbound queue holds twice as many.
    pub(crate) max_awaiting: usize,
}

/// A batch whose responses are still arriving.
struct PendingBatch {
    /// Responses still to come for calls already submitted.
    remaining: usize,
    parts: Vec<String>,
    /// Its calls are still being handed to the router (more may be added to `remaining`).
    submitting: bool,
}

/// Serves one client until it leaves, is too slow, or the gateway shuts down. The client is
/// already attached to its session (`router.connect`), which sends to `rx`.
pub(crate) async fn serve<S>(
    socket: S,
    client: ClientId,
    rx: mpsc::Receiver<Outbound>,
    router: RouterHandle,
    config: ConnectionConfig,
    shutdown: CancellationToken,
    caller: Caller,
) where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let (sink, stream) = socket.split();
    let mut conn = Connection {
        client,
        router: router.clone(),
        stream,
        writer: Writer::new(sink),
        rx,
        batches: HashMap::new(),
        next_batch: 0,
        awaiting: 0,
        bucket: config
            .call_rate
            .map(|(rate, burst)| TokenBucket::new(rate, burst, tokio::time::Instant::now())),
        caller,
    };
    let end = conn.run(config, shutdown).await;
    // Best effort, and bounded: the client may be gone already, or not reading.
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, conn.goodbye(end)).await;
    // What this connection received but never wrote goes back to the session, for a resume:
    // what is still queued for the socket, the parts of unfinished batches, and whatever is
    // still on its way from the router.
    let mut unsent: Vec<Outbound> = conn.writer.take_unsent();
    unsent.extend(
        conn.batches
            .drain()
            .flat_map(|(_, batch)| batch.parts)
            .map(|text| Outbound {
                batch: None,
                kind: OutboundKind::Response,
                text,
            }),
    );
    conn.rx.close();
    while let Ok(out) = conn.rx.try_recv() {
        unsent.push(out);
    }
    let _ = router.disconnect(client, unsent).await;
}

/// How a connection ends.
#[derive(Debug)]
enum End {
    /// Write what is queued, then this close frame (if any).
    Close(Option<CloseFrame>),
    /// The client does not read: close at once (best effort); what is queued stays with the
    /// session.
    Slow,
    /// The socket is gone or broken: nothing more can be written.
    Gone,
}

fn close_with(code: u16, reason: &'static str) -> End {
    End::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

struct Connection<S: Stream + Sink<Message>> {
    client: ClientId,
    router: RouterHandle,
    stream: futures::stream::SplitStream<S>,
    writer: Writer<futures::stream::SplitSink<S, Message>>,
    rx: mpsc::Receiver<Outbound>,
    batches: HashMap<u64, PendingBatch>,
    next_batch: u64,
    /// Calls sent to the router that still owe a response.
    awaiting: usize,
    /// `None`: no rate limit.
    bucket: Option<TokenBucket>,
    caller: Caller,
}

impl<S> Connection<S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    async fn run(&mut self, config: ConnectionConfig, shutdown: CancellationToken) -> End {
        use tokio::time::sleep_until;
        // Far enough to never fire, near enough not to overflow an Instant.
        let never = || Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let drain_deadline = tokio::time::sleep(Duration::MAX);
        tokio::pin!(drain_deadline);
        let mut draining = false;
        let next_ping = sleep_until(
            config
                .ping_interval
                .map_or_else(never, |i| Instant::now() + i),
        );
        tokio::pin!(next_ping);
        // When the last ping went out, if the client has sent nothing since.
        let mut unanswered_ping: Option<Instant> = None;
        let idle = sleep_until(
            config
                .idle_timeout
                .map_or_else(never, |t| Instant::now() + t),
        );
        tokio::pin!(idle);
        loop {
            if self.writer.over_budget() {
                return self
                    .too_slow("more queued for the socket than a reading client lets pile up");
            }
            let busy = self.writer.busy();
            let stalled = sleep_until(self.writer.stall_deadline(config.write_timeout));
            tokio::select! {
                written = std::future::poll_fn(|cx| self.writer.poll_write(cx)), if busy => {
                    if let Err(e) = written {
                        debug!(error = %e, "websocket write failed");
                        return End::Gone;
                    }
                }
                () = stalled, if busy => {
                    info!(timeout = ?config.write_timeout, "the socket took nothing within the write timeout");
                    crate::metrics::connection_dropped("write_timeout");
                    return self.too_slow("the socket took nothing within the write timeout");
                }
                () = &mut next_ping => {
                    let interval = config.ping_interval.unwrap_or(Duration::MAX);
                    if unanswered_ping.is_some() {
                        info!(?interval, "keepalive: no answer to the last ping; dropping the connection");
                        crate::metrics::connection_dropped("no_pong");
                        return close_with(CLOSE_NO_PONG, "no pong");
                    }
                    self.writer.push(Queued::Ping);
                    unanswered_ping = Some(Instant::now());
                    next_ping.as_mut().reset(Instant::now() + interval);
                }
                () = &mut idle => {
                    let timeout = config.idle_timeout.unwrap_or(Duration::MAX);
                    if self.awaiting > 0 {
                        // Waiting for results is not idleness; look again later.
                        idle.as_mut().reset(Instant::now() + timeout);
                    } else {
                        info!(?timeout, "idle timeout; closing the connection");
                        crate::metrics::connection_dropped("idle");
                        return close_with(CLOSE_IDLE, "idle timeout");
                    }
                }
                () = shutdown.cancelled(), if !draining => {
                    draining = true;
                    if self.awaiting == 0 {
                        return close_with(close_code::AWAY, "server shutting down");
                    }
                    drain_deadline.as_mut().reset(tokio::time::Instant::now() + config.drain);
                }
                () = &mut drain_deadline, if draining => {
                    warn!(awaiting = self.awaiting, "drain timeout: closing with calls unanswered");
                    return close_with(close_code::AWAY, "server shutting down");
                }
                msg = self.stream.next(), if !draining && self.awaiting < config.max_awaiting => {
                    // Anything at all from the client shows it is alive.
                    unanswered_ping = None;
                    if let (Some(Ok(Message::Text(_) | Message::Binary(_))), Some(timeout)) = (&msg, config.idle_timeout) {
                        idle.as_mut().reset(Instant::now() + timeout);
                    }
                    match msg {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(end) = self.on_text(text, &config.limits, config.max_awaiting).await {
                            return end;
                        }
                        // Each call read may already be answered (-32003 from the router at
                        // once): take answers as fast as calls come, or the queue fills.
                        self.take_ready();
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let text = CallError::BinaryFrame.response(None);
                        self.writer.text(OutboundKind::Response, text);
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        debug!("client closed the connection");
                        return End::Close(None);
                    }
                    // tungstenite answers pings itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(e)) => return on_socket_error(e),
                    }
                },
                out = self.rx.recv() => match out {
                    Some(out) => {
                        self.take(out);
                        self.take_ready();
                        if draining && self.awaiting == 0 {
                            return close_with(close_code::AWAY, "server shutting down");
                        }
                    }
                    // The router let go of this client: it could not keep up.
                    None => return End::Slow,
                },
            }
        }
    }

    fn too_slow(&self, why: &'static str) -> End {
        info!(
            queued_bytes = self.writer.queued_bytes,
            queued = self.writer.queue.len(),
            why,
            "client is not reading its responses; disconnecting it"
        );
        crate::metrics::slow_client_closed();
        End::Slow
    }

    /// Ends the connection as `end` says: writes what is queued and the close frame, then reads
    /// what the client still sends until its own close, so the socket is not closed with
    /// unread data (the kernel would answer with a reset, which can overtake the close frame).
    async fn goodbye(&mut self, end: End) {
        let frame = match end {
            End::Gone => return,
            End::Close(frame) => {
                if self.writer.flush_all().await.is_err() {
                    return;
                }
                frame
            }
            End::Slow => Some(CloseFrame {
                code: close_code::POLICY,
                reason: "too slow reading responses".into(),
            }),
        };
        if let Some(frame) = frame {
            debug!(code = frame.code, reason = %frame.reason, "closing websocket");
            if self
                .writer
                .sink
                .send(Message::Close(Some(frame)))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = self.writer.sink.close().await;
        while let Some(Ok(message)) = self.stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    }

    /// Takes what the router sent: counts a response, and queues it (or its batch) for the
    /// socket.
    fn take(&mut self, out: Outbound) {
        if out.kind == OutboundKind::Response {
            self.awaiting = self.awaiting.saturating_sub(1);
        }
        self.deliver(out);
    }

    /// Waits (writing meanwhile) until fewer than `max_awaiting` calls await an answer, so
    /// that the answers to the calls handed to the router always fit the outbound queue.
    async fn wait_for_room(&mut self, max_awaiting: usize) -> Result<(), End> {
        while self.awaiting >= max_awaiting {
            let busy = self.writer.busy();
            tokio::select! {
                written = std::future::poll_fn(|cx| self.writer.poll_write(cx)), if busy => {
                    if written.is_err() {
                        return Err(End::Gone);
                    }
                }
                out = self.rx.recv() => match out {
                    Some(out) => self.take(out),
                    None => return Err(End::Slow),
                },
            }
        }
        Ok(())
    }

    /// Takes whatever the router has sent so far, without waiting.
    fn take_ready(&mut self) {
        while let Ok(out) = self.rx.try_recv() {
            self.take(out);
        }
    }

    async fn on_text(
        &mut self,
        text: Utf8Bytes,
        limits: &jsonrpc::ParseLimits,
        max_awaiting: usize,
    ) -> Result<(), End> {
        // The frame's own buffer: large params are sliced out of it, not copied.
        let frame = Bytes::from(text.clone());
        match jsonrpc::parse_shared(text.as_str(), &frame, limits) {
            Err(FrameRejected(error)) => self.writer.text(OutboundKind::Response, error),
            Ok(Incoming::Single(entry)) => {
                if let Some(error) = self.submit(entry, None).await? {
                    self.writer.text(OutboundKind::Response, error);
                }
            }
            Ok(Incoming::Batch(entries)) => {
                let batch = self.next_batch;
                self.next_batch += 1;
                self.batches.insert(
                    batch,
                    PendingBatch {
                        remaining: 0,
                        parts: Vec::new(),
                        submitting: true,
                    },
                );
                for entry in entries {
                    let expects_reply = matches!(&entry, Entry::Call(c) if c.id.is_some());
                    if expects_reply {
                        self.wait_for_room(max_awaiting).await?;
                    }
                    let answered = self.submit(entry, Some(batch)).await?;
                    if let Some(pending) = self.batches.get_mut(&batch) {
                        match answered {
                            Some(error) => pending.parts.push(error),
                            None if expects_reply => pending.remaining += 1,
                            None => {}
                        }
                    }
                    // The first calls' results come back while the rest are submitted; take
                    // them now, or the router's queue fills meanwhile.
                    self.take_ready();
                }
                if let Some(pending) = self.batches.get_mut(&batch) {
                    pending.submitting = false;
                    if pending.remaining == 0 {
                        self.finish_batch(batch);
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands a call to the router, or returns the error to answer it with at once.
    async fn submit(&mut self, entry: Entry, batch: Option<u64>) -> Result<Option<String>, End> {
        let call = match entry {
            Entry::Invalid(error) => return Ok(Some(error)),
            Entry::Call(call) => call,
        };
        if let Some(bucket) = &mut self.bucket
            && let Err(wait) = bucket.take(tokio::time::Instant::now())
        {
            crate::metrics::call_rate_limited();
            let error = CallError::RateLimited { retry_in: wait };
            return Ok(call.id.as_deref().map(|id| error.response(Some(id))));
        }
        if call.method == jsonrpc::CANCEL_METHOD {
            return self.cancel(&call).await;
        }
        if !self.caller.methods.allows(&call.method) {
            // Answered exactly like a method no worker serves: whether it exists is not this
            // caller's business.
            debug!(method = %call.method, "method not in the caller's allowlist");
            let error = CallError::NotAllowed {
                method: call.method,
            };
            return Ok(call.id.as_deref().map(|id| error.response(Some(id))));
        }
        if jsonrpc::is_reserved_method(&call.method) {
            let error = CallError::ReservedMethod;
            return Ok(call.id.as_deref().map(|id| error.response(Some(id))));
        }
        if wsmq_ipc_proto::is_reserved_method(&call.method) {
            // It would be published to a reply, dead-letter or broker queue: never sent on.
            info!(method = %call.method, "call to a reserved queue name refused as an unknown method");
            let error = CallError::InternalName {
                method: call.method,
            };
            return Ok(call.id.as_deref().map(|id| error.response(Some(id))));
        }
        let expects_reply = call.id.is_some();
        if self.router.call(self.client, call, batch).await.is_err() {
            return Err(close_with(close_code::AWAY, "server shutting down"));
        }
        if expects_reply {
            self.awaiting += 1;
        }
        Ok(None)
    }

    /// `$/cancel`: a notification naming one of this client's own calls.
    async fn cancel(&mut self, call: &jsonrpc::Call) -> Result<Option<String>, End> {
        if let Some(id) = call.id.as_deref() {
            let why = "$/cancel is a notification: send it without an id";
            return Ok(Some(
                CallError::InvalidRequest(why.into()).response(Some(id)),
            ));
        }
        match jsonrpc::cancel_target(call) {
            Ok(target) => {
                if self.router.cancel(self.client, target).await.is_err() {
                    return Err(close_with(close_code::AWAY, "server shutting down"));
                }
            }
            // A notification gets no answer, not even an error.
            Err(why) => debug!(why, "malformed $/cancel ignored"),
        }
        Ok(None)
    }

    /// Queues a message for the socket; a batch's response waits for the batch's last part.
    fn deliver(&mut self, out: Outbound) {
        let Some(batch) = out.batch else {
            self.writer.text(out.kind, out.text);
            return;
        };
        let Some(pending) = self.batches.get_mut(&batch) else {
            // Unreachable: a batch stays until its last response.
            warn!(batch, "response for an unknown batch dropped");
            return;
        };
        pending.parts.push(out.text);
        pending.remaining = pending.remaining.saturating_sub(1);
        if pending.remaining == 0 && !pending.submitting {
            self.finish_batch(batch);
        }
    }

    /// A batch is complete: its one response goes out (none if all its calls were
    /// notifications).
    fn finish_batch(&mut self, batch: u64) {
        if let Some(done) = self.batches.remove(&batch)
            && !done.parts.is_empty()
        {
            self.writer
                .text(OutboundKind::Response, jsonrpc::batch_response(&done.parts));
        }
    }
}

/// Decides how to end a connection whose socket reported an error.
fn on_socket_error(e: axum::Error) -> End {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(cap)) => {
            info!(error = %cap, "client sent a message over the size limit; closing with 1009");
            close_with(close_code::SIZE, "message too big")
        }
        Some(WsError::Protocol(p)) => {
            info!(error = %p, "websocket protocol violation; closing with 1002");
            close_with(close_code::PROTOCOL, "protocol error")
        }
        Some(WsError::Utf8(_)) => close_with(close_code::INVALID, "invalid UTF-8"),
        _ => {
            debug!(error = %inner, "websocket read failed");
            End::Gone
        }
    }
}
