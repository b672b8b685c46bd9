//! The accept loop of a listening port (plain or TLS), serving HTTP/1.1 with hyper.
//!
//! Owned here rather than left to `axum::serve` for two things it cannot do: TLS, and a
//! handshake deadline. A TCP connection gets `handshake_timeout` to finish its TLS handshake
//! and its HTTP request; a websocket upgrade then leaves hyper (the connection task ends and
//! the websocket lives on in its own task), so only connections that dawdle before their
//! upgrade — slowloris — or keep an idle keep-alive are closed when it passes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info, warn};

/// Pause after a failed `accept` (e.g. EMFILE) before trying again; the loop never ends on one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a connection told to close (handshake deadline, shutdown) may take to finish the
/// response it is writing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// One listening port.
pub(crate) struct Server {
    pub(crate) listener: TcpListener,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) app: Router,
    pub(crate) handshake_timeout: Duration,
}

impl Server {
    /// Accepts until `shutdown`, then waits (bounded) for the HTTP connections still open;
    /// upgraded websockets are not among them.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let tcp = crate::linger::Lingering::new(tcp);
            let app = self.app.clone();
            let tls = self.tls.clone();
            let timeout = self.handshake_timeout;
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let deadline = tokio::time::Instant::now() + timeout;
                match tls {
                    None => serve_http(tcp, peer, app, deadline, timeout, shutdown).await,
                    Some(acceptor) => {
                        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                serve_http(stream, peer, app, deadline, timeout, shutdown).await;
                            }
                            Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => {
                                crate::metrics::connection_refused("handshake_timeout");
                                debug!(%peer, "TLS handshake not done within the handshake timeout; closed");
                            }
                        }
                    }
                }
            });
        }
        connections.close();
        if tokio::time::timeout(CLOSE_GRACE * 2, connections.wait())
            .await
            .is_err()
        {
            debug!("HTTP connections still open at shutdown; dropped");
        }
    }
}

/// Serves HTTP/1.1 on one connection until it upgrades, closes, or misses `deadline`.
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    deadline: tokio::time::Instant,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Whether a whole request came: past the deadline, a connection that sent none was a
    // slow (or hostile) handshake; one that did is just an idle keep-alive.
    let requested = Arc::new(AtomicBool::new(false));
    let seen = requested.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let mut builder = http1::Builder::new();
    // hyper's own header timeout only as a backstop, after ours has had its chance to log.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout + CLOSE_GRACE * 2);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let handshake = tokio::time::sleep_until(deadline);
    tokio::pin!(handshake);
    let mut closing = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = &mut handshake => {
                if closing {
                    return;
                }
                if requested.load(Ordering::Relaxed) {
                    debug!(%peer, "HTTP keep-alive past the handshake timeout; closing");
                } else {
                    crate::metrics::connection_refused("handshake_timeout");
                    info!(%peer, ?handshake_timeout, "no complete HTTP request within the handshake timeout; closing");
                    // Closed now: hyper's graceful shutdown would wait for the half-read
                    // request, so the timeout fired CLOSE_GRACE late (12 s for 10 s).
                    return;
                }
                connection.as_mut().graceful_shutdown();
                closing = true;
                handshake.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            () = shutdown.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
                handshake.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
            }
        }
    }
}
