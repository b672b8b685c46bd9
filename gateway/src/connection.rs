//! One websocket client, from upgrade to close.
//!
//! The connection task owns its socket, its outbound queue and the batches it is assembling;
//! it is generic over the socket's `Stream`/`Sink` so tests can drive it with channels. Bad
//! input is answered on the spot and never reaches the router; everything else goes to the
//! router, and the router's answers come back on the bounded outbound queue. If that queue
//! fills (the client is not reading), the router lets go of it and this task closes the
//! socket with 1008.
//!
//! It also owns the connection's own limits: its call-rate bucket, its method allowlist, the
//! keepalive (a ping every `ping_interval`; a client that sends nothing back by the next one is
//! dropped) and the idle timeout (no message and no call in flight for `idle_timeout`).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, close_code};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::Caller;
use crate::jsonrpc::{self, Entry, FrameRejected, Incoming};
use crate::limits::TokenBucket;
use crate::outbound::{ClientId, Outbound, OutboundKind};
use crate::router::RouterHandle;

/// Responses waiting to be written to one client. Full means the client is not reading; the
/// router then disconnects it rather than buffer more.
pub(crate) const OUTBOUND_CAPACITY: usize = 512;

/// Close code for a connection idle past `--idle-timeout` (no message, no call in flight).
pub(crate) const CLOSE_IDLE: u16 = 4000;
/// Close code for a client that answered no ping within `--ping-interval` (rarely seen: such a
/// peer is usually gone).
pub(crate) const CLOSE_NO_PONG: u16 = 4001;

/// How long the final close frame may take to write; a dead peer must not hold the task.
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
}

/// A batch whose responses are still arriving.
struct PendingBatch {
    remaining: usize,
    parts: Vec<String>,
}

/// Serves one client until it leaves, is too slow, or the gateway shuts down. The client is
/// already attached to its session (`router.connect`), which sends to `rx`.
pub(crate) async fn serve<S>(
    socket: S,
    client: ClientId,
    mut rx: mpsc::Receiver<Outbound>,
    router: RouterHandle,
    config: ConnectionConfig,
    shutdown: CancellationToken,
    caller: Caller,
) where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let mut conn = Connection {
        client,
        router: router.clone(),
        socket,
        batches: HashMap::new(),
        next_batch: 0,
        awaiting: 0,
        bucket: config
            .call_rate
            .map(|(rate, burst)| TokenBucket::new(rate, burst, tokio::time::Instant::now())),
        caller,
    };
    let close = conn.run(&mut rx, config, shutdown).await;
    // Best effort, and bounded: the client may be gone already, or not reading.
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
        if let Some(frame) = close {
            debug!(code = frame.code, reason = %frame.reason, "closing websocket");
            let _ = conn.socket.send(Message::Close(Some(frame))).await;
        }
        let _ = conn.socket.close().await;
    })
    .await;
    // What this connection received but never wrote goes back to the session, for a resume:
    // the parts of unfinished batches, and whatever is still queued.
    let mut unsent: Vec<Outbound> = conn
        .batches
        .drain()
        .flat_map(|(_, batch)| batch.parts)
        .map(|text| Outbound {
            batch: None,
            kind: OutboundKind::Response,
            text,
        })
        .collect();
    rx.close();
    while let Ok(out) = rx.try_recv() {
        unsent.push(out);
    }
    let _ = router.disconnect(client, unsent).await;
}

struct Connection<S> {
    client: ClientId,
    router: RouterHandle,
    socket: S,
    batches: HashMap<u64, PendingBatch>,
    next_batch: u64,
    /// Calls sent to the router that still owe a response.
    awaiting: usize,
    /// `None`: no rate limit.
    bucket: Option<TokenBucket>,
    caller: Caller,
}

fn close_frame(code: u16, reason: &'static str) -> Option<CloseFrame> {
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

impl<S> Connection<S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    /// Returns the close frame to send, if any.
    async fn run(
        &mut self,
        rx: &mut mpsc::Receiver<Outbound>,
        config: ConnectionConfig,
        shutdown: CancellationToken,
    ) -> Option<CloseFrame> {
        use tokio::time::{Instant, sleep_until};
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
            tokio::select! {
                () = &mut next_ping => {
                    let interval = config.ping_interval.unwrap_or(Duration::MAX);
                    if unanswered_ping.is_some() {
                        info!(?interval, "keepalive: no answer to the last ping; dropping the connection");
                        crate::metrics::connection_dropped("no_pong");
                        return close_frame(CLOSE_NO_PONG, "no pong");
                    }
                    if self.socket.send(Message::Ping(Default::default())).await.is_err() {
                        return None;
                    }
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
                        return close_frame(CLOSE_IDLE, "idle timeout");
                    }
                }
                () = shutdown.cancelled(), if !draining => {
                    draining = true;
                    if self.awaiting == 0 {
                        return close_frame(close_code::AWAY, "server shutting down");
                    }
                    drain_deadline.as_mut().reset(tokio::time::Instant::now() + config.drain);
                }
                () = &mut drain_deadline, if draining => {
                    warn!(awaiting = self.awaiting, "drain timeout: closing with calls unanswered");
                    return close_frame(close_code::AWAY, "server shutting down");
                }
                msg = self.socket.next(), if !draining => {
                    // Anything at all from the client shows it is alive.
                    unanswered_ping = None;
                    if let (Some(Ok(Message::Text(_) | Message::Binary(_))), Some(timeout)) = (&msg, config.idle_timeout) {
                        idle.as_mut().reset(Instant::now() + timeout);
                    }
                    match msg {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(close) = self.on_text(text.as_str(), &config.limits).await {
                            return close;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let text = jsonrpc::error_response(None, jsonrpc::PARSE_ERROR, "Parse error", Some("binary frames are not supported; send JSON-RPC as text"));
                        if self.write(text).await.is_err() {
                            return None;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        debug!("client closed the connection");
                        return None;
                    }
                    // tungstenite answers pings itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(e)) => return on_socket_error(e),
                    }
                },
                out = rx.recv() => match out {
                    Some(out) => {
                        if out.kind == OutboundKind::Response {
                            self.awaiting = self.awaiting.saturating_sub(1);
                        }
                        if self.deliver(out).await.is_err() {
                            return None;
                        }
                        if draining && self.awaiting == 0 {
                            return close_frame(close_code::AWAY, "server shutting down");
                        }
                    }
                    None => return close_frame(close_code::POLICY, "too slow reading responses"),
                },
            }
        }
    }

    async fn on_text(
        &mut self,
        text: &str,
        limits: &jsonrpc::ParseLimits,
    ) -> Result<(), Option<CloseFrame>> {
        match jsonrpc::parse(text, limits) {
            Err(FrameRejected(error)) => self.write(error).await.map_err(|()| None),
            Ok(Incoming::Single(entry)) => match self.submit(entry, None).await? {
                Some(error) => self.write(error).await.map_err(|()| None),
                None => Ok(()),
            },
            Ok(Incoming::Batch(entries)) => {
                let batch = self.next_batch;
                self.next_batch += 1;
                let mut parts = Vec::new();
                let mut remaining = 0;
                for entry in entries {
                    let expects_reply = matches!(&entry, Entry::Call(c) if c.id.is_some());
                    match self.submit(entry, Some(batch)).await? {
                        Some(error) => parts.push(error),
                        None if expects_reply => remaining += 1,
                        None => {}
                    }
                }
                if remaining > 0 {
                    self.batches
                        .insert(batch, PendingBatch { remaining, parts });
                    Ok(())
                } else if parts.is_empty() {
                    Ok(())
                } else {
                    self.write(jsonrpc::batch_response(&parts))
                        .await
                        .map_err(|()| None)
                }
            }
        }
    }

    /// Hands a call to the router, or returns the error to answer it with at once.
    async fn submit(
        &mut self,
        entry: Entry,
        batch: Option<u64>,
    ) -> Result<Option<String>, Option<CloseFrame>> {
        let call = match entry {
            Entry::Invalid(error) => return Ok(Some(error)),
            Entry::Call(call) => call,
        };
        if let Some(bucket) = &mut self.bucket
            && let Err(wait) = bucket.take(tokio::time::Instant::now())
        {
            crate::metrics::call_rate_limited();
            return Ok(call.id.as_deref().map(|id| {
                let data = format!(
                    "too many calls per second on this connection; retry in {} ms",
                    wait.as_millis().max(1)
                );
                jsonrpc::error_response(
                    Some(id),
                    jsonrpc::RATE_LIMITED,
                    "rate limited",
                    Some(&data),
                )
            }));
        }
        if call.method == jsonrpc::CANCEL_METHOD {
            return self.cancel(&call).await;
        }
        if !self.caller.methods.allows(&call.method) {
            // Answered exactly like a method no worker serves: whether it exists is not this
            // caller's business.
            debug!(method = %call.method, "method not in the caller's allowlist");
            return Ok(call.id.as_deref().map(|id| {
                jsonrpc::error_response(
                    Some(id),
                    jsonrpc::METHOD_NOT_FOUND,
                    "Method not found",
                    Some(&crate::router::no_worker_serves(&call.method)),
                )
            }));
        }
        if jsonrpc::is_reserved_method(&call.method) {
            return Ok(call.id.as_deref().map(|id| {
                jsonrpc::error_response(
                    Some(id),
                    jsonrpc::METHOD_NOT_FOUND,
                    "Method not found",
                    Some("reserved method name"),
                )
            }));
        }
        let expects_reply = call.id.is_some();
        if self.router.call(self.client, call, batch).await.is_err() {
            return Err(close_frame(close_code::AWAY, "server shutting down"));
        }
        if expects_reply {
            self.awaiting += 1;
        }
        Ok(None)
    }

    /// `$/cancel`: a notification naming one of this client's own calls.
    async fn cancel(&mut self, call: &jsonrpc::Call) -> Result<Option<String>, Option<CloseFrame>> {
        if let Some(id) = call.id.as_deref() {
            return Ok(Some(jsonrpc::error_response(
                Some(id),
                jsonrpc::INVALID_REQUEST,
                "Invalid Request",
                Some("$/cancel is a notification: send it without an id"),
            )));
        }
        match jsonrpc::cancel_target(call) {
            Ok(target) => {
                if self.router.cancel(self.client, target).await.is_err() {
                    return Err(close_frame(close_code::AWAY, "server shutting down"));
                }
            }
            // A notification gets no answer, not even an error.
            Err(why) => debug!(why, "malformed $/cancel ignored"),
        }
        Ok(None)
    }

    async fn deliver(&mut self, out: Outbound) -> Result<(), ()> {
        let Some(batch) = out.batch else {
            return self.write(out.text).await;
        };
        let Some(pending) = self.batches.get_mut(&batch) else {
            // Unreachable: a batch stays until its last response.
            warn!(batch, "response for an unknown batch dropped");
            return Ok(());
        };
        pending.parts.push(out.text);
        pending.remaining -= 1;
        if pending.remaining > 0 {
            return Ok(());
        }
        match self.batches.remove(&batch) {
            Some(done) => self.write(jsonrpc::batch_response(&done.parts)).await,
            None => Ok(()),
        }
    }

    async fn write(&mut self, text: String) -> Result<(), ()> {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| {
                debug!(error = %e, "websocket write failed");
            })
    }
}

/// Decides how to end a connection whose socket reported an error.
fn on_socket_error(e: axum::Error) -> Option<CloseFrame> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(cap)) => {
            info!(error = %cap, "client sent a message over the size limit; closing with 1009");
            close_frame(close_code::SIZE, "message too big")
        }
        Some(WsError::Protocol(p)) => {
            info!(error = %p, "websocket protocol violation; closing with 1002");
            close_frame(close_code::PROTOCOL, "protocol error")
        }
        Some(WsError::Utf8(_)) => close_frame(close_code::INVALID, "invalid UTF-8"),
        _ => {
            debug!(error = %inner, "websocket read failed");
            None
        }
    }
}
