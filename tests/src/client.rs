//! A websocket JSON-RPC client for the tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::RECV_TIMEOUT;
use crate::rpc::{self, check_envelope};

/// What ended a wait for the next data frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A text frame.
    Text(String),
    /// A binary frame (the gateway should never send one).
    Binary(Vec<u8>),
    /// A close frame: its code and reason, if it had them.
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame, or failed (the error's text).
    Ended(Option<String>),
}

/// Frames longer than this are shortened in the transcript on stderr.
const TRANSCRIPT_MAX_CHARS: usize = 300;

/// Numbers the clients of a test process, for the transcript.
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

/// One websocket connection to the gateway.
///
/// Every frame sent and received is written to stderr as `[client N] -> ...` / `<- ...`, which
/// nextest shows next to the processes' logs when a test fails.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    number: u64,
    /// Whether frames are written to stderr (off for load, where thousands would drown the rest).
    transcript: bool,
    /// The last `$/session` greeting received, if the gateway resumes sessions.
    session: Option<SessionGreeting>,
    /// The subprotocol the server accepted, if any.
    subprotocol: Option<String>,
}

/// The `$/session` notification the gateway sends first on every connection (a resumed one
/// too), unless `--session-resume-secs 0` turns sessions off (the default is 30).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionGreeting {
    /// The token to resume with (`/ws?session=<token>`).
    pub token: String,
    /// How long, in seconds, the session waits for a connection to resume it.
    pub resume_within_s: u64,
}

/// The method of the session greeting.
pub const SESSION_METHOD: &str = "$/session";

/// The greeting's fields if `text` is a `$/session` notification.
fn session_greeting(text: &str) -> Option<SessionGreeting> {
    // Cheap test first: every response frame passes here.
    if !text.contains(SESSION_METHOD) {
        return None;
    }
    let frame: Value = serde_json::from_str(text).ok()?;
    if frame.get("method")?.as_str()? != SESSION_METHOD || frame.get("id").is_some() {
        return None;
    }
    let params = frame.get("params")?;
    Some(SessionGreeting {
        token: params.get("session")?.as_str()?.to_owned(),
        resume_within_s: params.get("resume_within_s")?.as_u64()?,
    })
}

/// Why a websocket handshake did not give a connection.
#[derive(Debug)]
pub enum Refusal {
    /// The server answered the upgrade with this HTTP status instead of 101.
    Status(u16),
    /// No HTTP answer: the TCP connection was refused, reset or the handshake broke.
    Failed(String),
}

impl WsClient {
    /// Connects to `ws://addr/ws`.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        Self::connect_path(addr, "/ws").await
    }

    /// Connects to `ws://addr{path}` (`path` may carry a query, e.g. `/ws?session=...`).
    pub async fn connect_path(addr: SocketAddr, path: &str) -> Result<Self> {
        match Self::try_connect(addr, path).await? {
            Ok(client) => Ok(client),
            Err(refusal) => {
                bail!("websocket handshake with ws://{addr}{path} refused: {refusal:?}")
            }
        }
    }

    /// Connects to `ws://addr{path}`; a refused handshake is `Ok(Err(refusal))`, so a test can
    /// check how it was refused. Only a handshake that takes over [`RECV_TIMEOUT`] is an error.
    pub async fn try_connect(addr: SocketAddr, path: &str) -> Result<Result<Self, Refusal>> {
        Self::try_connect_with(addr, path, &[]).await
    }

    /// Like [`Self::try_connect`], with extra request headers (`Authorization`, `Origin`,
    /// `Sec-WebSocket-Protocol`, ...).
    pub async fn try_connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Result<Self, Refusal>> {
        Self::try_connect_url(&format!("ws://{addr}{path}"), headers, None).await
    }

    /// Connects to `url` (`ws://` or, with `tls` trusting the server, `wss://`) with extra
    /// request headers.
    pub async fn try_connect_url(
        url: &str,
        headers: &[(&str, &str)],
        tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    ) -> Result<Result<Self, Refusal>> {
        use tokio_tungstenite::tungstenite::Error as WsError;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let url = url.to_owned();
        let mut request = url
            .as_str()
            .into_client_request()
            .with_context(|| format!("bad websocket URL {url}"))?;
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).context("bad header name")?,
                HeaderValue::from_str(value).context("bad header value")?,
            );
        }
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
        let handshake = tokio::time::timeout(RECV_TIMEOUT, connect)
            .await
            .with_context(|| {
                format!("websocket handshake with {url} took over {RECV_TIMEOUT:?}")
            })?;
        let (ws, subprotocol) = match handshake {
            Ok((ws, response)) => {
                let subprotocol = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                (ws, subprotocol)
            }
            Err(WsError::Http(response)) => {
                let status = response.status().as_u16();
                eprintln!("[client] upgrade at {url} refused with HTTP {status}");
                return Ok(Err(Refusal::Status(status)));
            }
            Err(e) => {
                eprintln!("[client] handshake with {url} failed: {e}");
                return Ok(Err(Refusal::Failed(e.to_string())));
            }
        };
        let number = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
        eprintln!("[client {number}] connected to {url}");
        Ok(Ok(Self {
            ws,
            next_id: 1,
            number,
            transcript: true,
            session: None,
            subprotocol,
        }))
    }

    /// Stops writing this client's frames to stderr (connects and closes are still noted).
    pub fn quiet(mut self) -> Self {
        self.transcript = false;
        self
    }

    /// The websocket subprotocol the server accepted (`Sec-WebSocket-Protocol`), if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// Sends one raw websocket frame (e.g. a fragment: `Frame::message(data, opcode, fin)`).
    pub async fn send_frame(
        &mut self,
        frame: tokio_tungstenite::tungstenite::protocol::frame::Frame,
    ) -> Result<()> {
        self.ws
            .send(Message::Frame(frame))
            .await
            .context("cannot send a websocket frame")
    }

    /// The client's number in the transcript.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        let text: String = text.into();
        if self.transcript {
            eprintln!("[client {}] -> {}", self.number, shorten(&text));
        }
        self.ws
            .send(Message::text(text))
            .await
            .context("cannot send a websocket text frame")
    }

    /// Sends any websocket message as is: binary frames, raw frames (`Message::Frame`, for
    /// fragments, bad UTF-8 or reserved opcodes), pings. For hostile-input tests.
    pub async fn send_message(&mut self, message: Message) -> Result<()> {
        if self.transcript {
            let what = match &message {
                Message::Text(t) => shorten(t.as_str()),
                Message::Binary(b) => format!("<binary, {} bytes>", b.len()),
                Message::Frame(f) => format!(
                    "<raw frame {:?}, final {}, {} bytes>",
                    f.header().opcode,
                    f.header().is_final,
                    f.payload().len()
                ),
                other => shorten(&format!("{other:?}")),
            };
            eprintln!("[client {}] -> {what}", self.number);
        }
        self.ws
            .send(message)
            .await
            .context("cannot send a websocket message")
    }

    /// Sends `value` as one text frame.
    pub async fn send_json(&mut self, value: &Value) -> Result<()> {
        self.send_text(value.to_string()).await
    }

    /// The next frame other than ping/pong, within `limit`.
    pub async fn next_incoming(&mut self, limit: Duration) -> Result<Incoming> {
        self.try_next_incoming(limit)
            .await
            .with_context(|| format!("no websocket frame within {limit:?}"))
    }

    /// The session greeting, once it has been received (see [`Self::await_session`]).
    pub fn session(&self) -> Option<&SessionGreeting> {
        self.session.as_ref()
    }

    /// The `$/session` greeting, which must be the first frame of the connection, within
    /// `limit`.
    pub async fn await_session(&mut self, limit: Duration) -> Result<SessionGreeting> {
        if let Some(greeting) = &self.session {
            return Ok(greeting.clone());
        }
        let frame = self
            .read_frame(limit)
            .await
            .with_context(|| format!("no $/session greeting within {limit:?}"))?;
        self.log_incoming(&frame);
        match &frame {
            Incoming::Text(text) => match session_greeting(text) {
                Some(greeting) => {
                    self.session = Some(greeting.clone());
                    Ok(greeting)
                }
                None => bail!("expected the $/session greeting first, got {text}"),
            },
            other => bail!("expected the $/session greeting first, got {other:?}"),
        }
    }

    /// The next frame other than ping/pong and the session greeting (which is kept, see
    /// [`Self::session`]), or `None` if none came within `limit`. Cancel-safe: a frame is never
    /// lost to the timeout.
    pub async fn try_next_incoming(&mut self, limit: Duration) -> Option<Incoming> {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let incoming = self.read_frame(left).await?;
            self.log_incoming(&incoming);
            if let Incoming::Text(text) = &incoming
                && let Some(greeting) = session_greeting(text)
            {
                self.session = Some(greeting);
                continue;
            }
            return Some(incoming);
        }
    }

    /// The next frame other than ping/pong, as is, within `limit`.
    async fn read_frame(&mut self, limit: Duration) -> Option<Incoming> {
        let wait = async {
            loop {
                let incoming = match self.ws.next().await {
                    None => Incoming::Ended(None),
                    Some(Err(e)) => Incoming::Ended(Some(e.to_string())),
                    Some(Ok(Message::Text(t))) => Incoming::Text(t.as_str().to_owned()),
                    Some(Ok(Message::Binary(b))) => Incoming::Binary(b.to_vec()),
                    Some(Ok(Message::Close(frame))) => {
                        Incoming::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                };
                return incoming;
            }
        };
        tokio::time::timeout(limit, wait).await.ok()
    }

    fn log_incoming(&self, incoming: &Incoming) {
        match incoming {
            Incoming::Text(text) if self.transcript => {
                eprintln!("[client {}] <- {}", self.number, shorten(text));
            }
            Incoming::Text(_) => {}
            other => eprintln!("[client {}] <- {other:?}", self.number),
        }
    }

    /// The next text frame parsed as JSON, within [`RECV_TIMEOUT`].
    pub async fn recv_json(&mut self) -> Result<Value> {
        self.recv_json_within(RECV_TIMEOUT).await
    }

    /// The next text frame parsed as JSON, within `limit`.
    pub async fn recv_json_within(&mut self, limit: Duration) -> Result<Value> {
        match self.next_incoming(limit).await? {
            Incoming::Text(text) => serde_json::from_str(&text).with_context(|| {
                format!("the gateway sent a text frame that is not JSON: {text:?}")
            }),
            other => bail!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// Sends a request with a fresh numeric id and returns its response, which must be the
    /// next frame and carry that id.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.call_within(method, params, RECV_TIMEOUT).await
    }

    /// [`Self::call`], expecting success: returns the `result`, or an error showing the error
    /// response.
    pub async fn call_result(&mut self, method: &str, params: Value) -> Result<Value> {
        let response = self.call(method, params).await?;
        match response.get("result") {
            Some(result) => Ok(result.clone()),
            None => bail!("{method} failed: {response}"),
        }
    }

    /// [`Self::call`] with another response deadline.
    pub async fn call_within(
        &mut self,
        method: &str,
        params: Value,
        limit: Duration,
    ) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_json(&rpc::request(id, method, params)).await?;
        let response = self
            .recv_json_within(limit)
            .await
            .with_context(|| format!("waiting for the response to {method} (id {id})"))?;
        check_envelope(&response).map_err(anyhow::Error::msg)?;
        if response.get("id") != Some(&Value::from(id)) {
            bail!("sent {method} with id {id}, but the next frame was {response}");
        }
        Ok(response)
    }

    /// Reads frames until the response whose `id` is `id`, each within [`RECV_TIMEOUT`].
    /// Returns the frames that came before it (notifications, other calls' responses) and the
    /// response itself.
    pub async fn recv_until_response(&mut self, id: &Value) -> Result<(Vec<Value>, Value)> {
        let mut before = Vec::new();
        loop {
            let frame = self.recv_json().await.with_context(|| {
                format!(
                    "waiting for the response with id {id} after {} other frames",
                    before.len()
                )
            })?;
            // Notifications have no `id`, so only a response can match.
            if frame.get("id") == Some(id) {
                check_envelope(&frame).map_err(anyhow::Error::msg)?;
                return Ok((before, frame));
            }
            before.push(frame);
        }
    }

    /// Checks that nothing is on its way to this client: sends an `echo` with an id and a
    /// payload never used before, and requires its response to be the very next frame. Any
    /// stray frame queued before it (a late result, a duplicate, someone else's progress)
    /// makes this fail, naming the frame.
    pub async fn expect_no_stray_frames(&mut self) -> Result<()> {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let id = Value::from(format!("probe-{nonce}"));
        let payload = serde_json::json!({"probe": nonce});
        self.send_json(&rpc::request(id.clone(), "echo", payload.clone()))
            .await?;
        let frame = self
            .recv_json()
            .await
            .context("waiting for the response to the probe echo")?;
        if frame.get("id") != Some(&id) {
            bail!("expected the response to the probe echo {id} as the next frame, got {frame}");
        }
        if rpc::result(&frame) != Some(&payload) {
            bail!("the probe echo {id} got {frame}, expected result {payload}");
        }
        Ok(())
    }

    /// Sends a websocket close frame and waits for the connection to end.
    pub async fn close(mut self) -> Result<()> {
        self.ws
            .close(None)
            .await
            .context("cannot close the websocket")?;
        // Drain until the server's close arrives or the stream ends.
        if let Some(frame) = self.read_frame(RECV_TIMEOUT).await
            && self.transcript
        {
            self.log_incoming(&frame);
        }
        Ok(())
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(TRANSCRIPT_MAX_CHARS) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
        None => text.to_owned(),
    }
}
