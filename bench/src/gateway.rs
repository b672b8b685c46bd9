//! `gateway` mode: JSON-RPC calls over websocket connections to wsmq-gateway.
//!
//! Each connection keeps its share of the calls in flight: a call is sent again the moment
//! its response arrives (a closed loop), so the system, not the bench, sets the pace.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::stats::{LaneStats, Window};

/// How long after the window a lane waits for its last responses; later ones count as lost.
pub(crate) const DRAIN: Duration = Duration::from_secs(10);

/// How long one websocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Where and what to call.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
    pub(crate) method: String,
    /// The params, already JSON.
    pub(crate) params: String,
}

impl Target {
    pub(crate) async fn new(url: &str, method: &str, params: String) -> Result<Self> {
        Ok(Self {
            url: url.to_owned(),
            addr: resolve(url).await?,
            method: method.to_owned(),
            params,
        })
    }

    fn request(&self, id: u64) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","method":"{}","params":{},"id":{id}}}"#,
            self.method, self.params
        )
    }
}

/// The socket address a `ws://host:port/path` URL points at.
pub(crate) async fn resolve(url: &str) -> Result<SocketAddr> {
    let uri: Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let host = uri.host().with_context(|| format!("{url} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to nothing"))
}

/// Opens one websocket connection, from `source` when given (to spread many connections over
/// several loopback addresses, each with its own range of ephemeral ports).
pub(crate) async fn connect(
    url: &str,
    addr: SocketAddr,
    source: Option<SocketAddr>,
    config: Option<WebSocketConfig>,
) -> Result<Ws> {
    let connect = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("cannot create a socket")?;
        if let Some(source) = source {
            socket
                .bind(source)
                .with_context(|| format!("cannot bind to {source}"))?;
        }
        let stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
        let (ws, _) = client_async_with_config(url, stream, config)
            .await
            .with_context(|| format!("websocket handshake with {url} failed"))?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .with_context(|| format!("connecting to {url} took over {CONNECT_TIMEOUT:?}"))?
}

/// The parts of a server message the bench looks at.
#[derive(Deserialize)]
struct Response<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(borrow, default)]
    method: Option<&'a str>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// Runs `share` calls in flight on `ws` until the window closes, then waits for the rest.
pub(crate) async fn drive(mut ws: Ws, share: usize, target: &Target, window: Window) -> LaneStats {
    let mut stats = LaneStats::new();
    let mut sent: HashMap<u64, Instant> = HashMap::with_capacity(share);
    let mut next_id = 0u64;
    let result = async {
        for _ in 0..share {
            next_id += 1;
            sent.insert(next_id, Instant::now());
            ws.feed(Message::text(target.request(next_id))).await?;
        }
        ws.flush().await?;
        let drain_deadline = tokio::time::Instant::from_std(window.end + DRAIN);
        loop {
            // A lane with no share only keeps its connection (and reads, to answer pings).
            let deadline = if sent.is_empty() {
                if !window.open(Instant::now()) {
                    return Ok(());
                }
                tokio::time::Instant::from_std(window.end)
            } else {
                drain_deadline
            };
            let Ok(frame) = tokio::time::timeout_at(deadline, ws.next()).await else {
                if sent.is_empty() {
                    return Ok(());
                }
                bail!("{} calls unanswered {DRAIN:?} after the run", sent.len());
            };
            let text = match frame {
                None => bail!("the gateway closed the connection"),
                Some(frame) => match frame? {
                    Message::Text(text) => text,
                    Message::Close(close) => bail!("the gateway closed the connection: {close:?}"),
                    _ => continue,
                },
            };
            let now = Instant::now();
            let response: Response<'_> = serde_json::from_str(text.as_str())
                .with_context(|| format!("unreadable message from the gateway: {text}"))?;
            if response.method.is_some() {
                continue; // $/session and other notifications
            }
            let started = response.id.and_then(|id| sent.remove(&id));
            match (started, response.error) {
                (Some(started), None) => stats.answered(&window, started, now),
                (_, Some(error)) => stats.failed(1, || format!("error response: {error}")),
                (None, None) => stats.failed(1, || format!("response to no call: {text}")),
            }
            if started.is_some() && window.open(now) {
                next_id += 1;
                sent.insert(next_id, Instant::now());
                ws.send(Message::text(target.request(next_id))).await?;
            }
        }
    }
    .await;
    if let Err(e) = result {
        let lost = sent.len() as u64;
        stats.failed(lost.max(1), || format!("{e:#}"));
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    stats
}
