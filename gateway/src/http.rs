//! HTTP routes on the gateway's port: the websocket upgrade at `/ws`, `/healthz` (the bridge
//! and RabbitMQ are reachable), `/readyz` (new calls would be accepted), `/metrics`, and the
//! browser page with its scripts ([`crate::ui`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::connection::{self, ConnectionConfig, OUTBOUND_CAPACITY};
use crate::router::{Health, RouterHandle};
use crate::sessions::ResumeRefused;

/// Each connection's websocket read buffer. tungstenite zero-fills all of it on the first
/// read, so its default (128 KiB) made every idle connection cost the gateway 128 KiB of RSS;
/// JSON-RPC calls are small, and a larger message is simply read in several pieces.
const WS_READ_BUFFER: usize = 8 * 1024;

/// The query of `/ws`: `?session=<token>` resumes a session.
#[derive(Debug, serde::Deserialize)]
struct WsQuery {
    session: Option<String>,
}

/// What every request handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) router: RouterHandle,
    pub(crate) health: watch::Receiver<Health>,
    /// One permit per open websocket.
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) next_client: Arc<AtomicU64>,
    /// Websocket tasks, so shutdown can wait for them to drain.
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    pub(crate) connection: ConnectionConfig,
    pub(crate) max_message_bytes: usize,
    /// Renders `/metrics`; `None` when no recorder could be installed.
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::ui::routes())
        .with_state(state)
}

async fn websocket(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if app.shutdown.is_cancelled() {
        crate::metrics::connection_refused("shutting_down");
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let Ok(permit) = app.connections.clone().try_acquire_owned() else {
        crate::metrics::connection_refused("limit");
        warn!(%peer, "connection limit reached; upgrade refused");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let client = app.next_client.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("client", id = client, %peer);
    // Attach to the session before upgrading, so a refused resume is a plain HTTP answer.
    let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
    match app.router.connect(client, tx, query.session).await {
        Ok(Ok(_grant)) => {}
        Ok(Err(refused)) => {
            let status = match refused {
                ResumeRefused::Unknown => StatusCode::NOT_FOUND,
                ResumeRefused::InUse => StatusCode::CONFLICT,
            };
            tracing::debug!(client, %peer, %refused, "session resume refused");
            return (status, format!("{refused}\n")).into_response();
        }
        Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
    let router = app.router.clone();
    let ws_frame_limit = app.max_message_bytes;
    upgrade
        .max_message_size(ws_frame_limit)
        .max_frame_size(ws_frame_limit)
        .read_buffer_size(WS_READ_BUFFER)
        // Writes are flushed one message at a time, so this only has to hold the largest one.
        .max_write_buffer_size(wsmq_ipc_proto::MAX_FRAME_LEN * 2)
        .on_failed_upgrade(move |e| {
            tracing::debug!(error = %e, "websocket upgrade failed");
            // The session stays resumable; only this connection is gone.
            tokio::spawn(async move { router.disconnect(client, Vec::new()).await });
        })
        .on_upgrade(move |socket| {
            let task = async move {
                tracing::debug!("connected");
                crate::metrics::connection_opened();
                connection::serve(socket, client, rx, app.router, app.connection, app.shutdown)
                    .await;
                crate::metrics::connection_closed();
                tracing::debug!("disconnected");
                drop(permit);
            };
            app.tracker.track_future(task.instrument(span))
        })
}

async fn healthz(State(app): State<AppState>) -> Response {
    let health = *app.health.borrow();
    let word = |up: bool| if up { "up" } else { "down" };
    let ok = health.bridge && health.broker;
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "bridge": word(health.bridge),
        "broker": word(health.broker),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Ready to take calls: bridge and RabbitMQ connected, publishing not blocked, not draining.
async fn readyz(State(app): State<AppState>) -> Response {
    let health = *app.health.borrow();
    let draining = app.shutdown.is_cancelled();
    let ready = health.bridge && health.broker && !health.blocked && !draining;
    let body = serde_json::json!({
        "ready": ready,
        "bridge": if health.bridge { "up" } else { "down" },
        "broker": if !health.broker { "down" } else if health.blocked { "blocked" } else { "up" },
        "draining": draining,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    let body = app.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            wsmq_service::metrics::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}
