//! `idle` mode: many websocket connections that call nothing, to measure what one costs the
//! gateway. They stay open while the other modes run, so throughput is measured with them
//! connected.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::gateway::{self, Ws};
use crate::rss;

/// Handshakes in progress at once while opening.
const CONNECT_CONCURRENCY: usize = 64;

/// How long the gateway gets to settle (allocate and greet) before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);

/// What opening the connections cost the gateway.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IdleReport {
    pub(crate) connections: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rss_before_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rss_after_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kib_per_connection: Option<f64>,
    /// Idle connections the gateway closed while they were held (filled in at the end).
    pub(crate) closed: usize,
}

/// The open idle connections; dropping it (or [`Idle::close`]) ends them.
pub(crate) struct Idle {
    stop: watch::Sender<bool>,
    tasks: JoinSet<bool>,
}

/// Opens `n` connections to `url`, spread over `sources` loopback source addresses when the
/// gateway is on loopback, and reports the growth of `gateway_pid`'s RSS.
pub(crate) async fn open(
    url: &str,
    n: usize,
    sources: u8,
    gateway_pid: Option<u32>,
) -> Result<(Idle, IdleReport)> {
    let addr = gateway::resolve(url).await?;
    let before = gateway_pid.map(rss::rss_kib).transpose()?;
    // Idle clients never receive much: small buffers keep the bench's own memory down.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let opened: Vec<Result<Ws>> = futures::stream::iter(0..n)
        .map(|i| {
            let source = source_addr(addr, i, sources);
            gateway::connect(url, addr, source, Some(config))
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for ws in opened {
        let ws = ws.with_context(|| format!("cannot open {n} idle connections"))?;
        tasks.spawn(hold(ws, stopped.clone()));
    }
    tokio::time::sleep(SETTLE).await;
    let after = gateway_pid.map(rss::rss_kib).transpose()?;
    let kib_per_connection = match (before, after) {
        (Some(b), Some(a)) if n > 0 => Some(a.saturating_sub(b) as f64 / n as f64),
        _ => None,
    };
    let report = IdleReport {
        connections: n,
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_connection,
        closed: 0,
    };
    Ok((Idle { stop, tasks }, report))
}

impl Idle {
    /// Closes every connection; returns how many the gateway had closed before.
    pub(crate) async fn close(mut self) -> usize {
        let _ = self.stop.send(true);
        let mut closed_by_gateway = 0;
        while let Some(joined) = self.tasks.join_next().await {
            if matches!(joined, Ok(false)) {
                closed_by_gateway += 1;
            }
        }
        closed_by_gateway
    }
}

/// Reads (answering pings) until told to stop; false if the gateway closed the connection.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>) -> bool {
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return true;
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return false,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// 127.0.0.1, .2, … in turn for a loopback gateway: each source address has its own ephemeral
/// port range, so more connections fit than one address allows.
fn source_addr(target: SocketAddr, i: usize, sources: u8) -> Option<SocketAddr> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && sources > 1 => {
            let last = 1 + (i % usize::from(sources)) as u8;
            Some(SocketAddr::new(Ipv4Addr::new(127, 0, 0, last).into(), 0))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_connections_rotate_over_source_addresses() {
        let target: SocketAddr = "127.0.0.1:8080".parse().expect("valid address");
        let ips: Vec<_> = (0..5)
            .map(|i| source_addr(target, i, 4).map(|a| a.ip().to_string()))
            .collect();
        assert_eq!(
            ips,
            [
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.4",
                "127.0.0.1"
            ]
            .map(|s| Some(s.to_owned()))
        );
    }

    #[test]
    fn other_targets_use_the_default_source() {
        let target: SocketAddr = "[::1]:8080".parse().expect("valid address");
        assert_eq!(source_addr(target, 3, 4), None);
    }
}
