//! HTTP routes on the gateway's port: the websocket upgrade at `/ws`, `/healthz` (the bridge
//! and RabbitMQ are reachable), `/readyz` (new calls would be accepted) and `/metrics` (these
//! three can move to `--admin-listen`; they never need a token), and the browser page with its
//! scripts ([`crate::ui`], always beside `/ws`, whose page it is).
//!
//! Everything about who may connect is decided here, before the upgrade, with a plain HTTP
//! status: 403 for a browser Origin not allowed, 401 without a valid token, 429 past the
//! per-address limit, 503 past the global one or while shutting down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::header::{HOST, ORIGIN, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::auth::Authenticator;
use crate::connection::{self, ConnectionConfig};
use crate::limits::PerAddress;
use crate::router::{Health, RouterHandle};
use crate::sessions::ResumeRefused;

/// Each connection's websocket read buffer. tungstenite zero-fills all of it before every
/// read, so its default (128 KiB) made every idle connection cost the gateway 128 KiB of RSS
/// and a memset per read; JSON-RPC calls are small, and a larger message is simply read in
/// several pieces.
const WS_READ_BUFFER: usize = 8 * 1024;

/// The websocket subprotocol the gateway speaks; echoed when a client offers it (which a
/// browser presenting its token as a `bearer.<token>` subprotocol must, since a browser
/// fails a connection whose server picks none of the offered ones).
pub(crate) const SUBPROTOCOL: &str = "wsmq";

/// The query of `/ws`: `?session=<token>` resumes a session; `?token=<token>` authenticates.
#[derive(serde::Deserialize)]
struct WsQuery {
    session: Option<String>,
    token: Option<String>,
}

/// The browser Origins allowed to open a websocket. By default a browser is let in only from
/// the gateway's own origin (its `Origin` names the host the request went to) or an Origin
/// listed with `--allowed-origin`; `--allowed-origin '*'` lets every Origin in.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origins {
    /// `--allowed-origin '*'`.
    any: bool,
    listed: Arc<[String]>,
    /// The gateway listens on loopback: its own origin must then be a loopback name, so that a
    /// page whose host name was rebound to 127.0.0.1 (DNS rebinding) is not "same origin".
    loopback: bool,
}

/// The value of `--allowed-origin` that lets every Origin in.
pub(crate) const ANY_ORIGIN: &str = "*";

impl Origins {
    pub(crate) fn new(allowed: &[String], loopback: bool) -> Self {
        Self {
            any: allowed.iter().any(|o| o.trim() == ANY_ORIGIN),
            listed: allowed.iter().filter_map(|o| normalize_origin(o)).collect(),
            loopback,
        }
    }

    /// Every Origin is let in (`--allowed-origin '*'`).
    pub(crate) fn is_any(&self) -> bool {
        self.any
    }

    /// Whether a browser showing a page from `origin` may open a websocket sent to `host` (the
    /// request's `Host` header).
    fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        let Some(origin) = normalize_origin(origin) else {
            return false;
        };
        if self.listed.contains(&origin) {
            return true;
        }
        let Some(host) = host else {
            return false;
        };
        let authority = origin.split_once("://").map_or("", |(_, a)| a);
        let host = host.trim().to_ascii_lowercase();
        let same = strip_default_port(authority) == strip_default_port(&host);
        same && (!self.loopback || is_loopback_name(&host))
    }
}

/// `host:80` and `host:443` compare equal to `host` (browsers leave default ports out of
/// `Origin`).
fn strip_default_port(authority: &str) -> &str {
    authority
        .strip_suffix(":80")
        .or_else(|| authority.strip_suffix(":443"))
        .unwrap_or(authority)
}

/// `localhost`, `127.x.x.x` or `[::1]`, with or without a port.
fn is_loopback_name(authority: &str) -> bool {
    let name = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(n, _)| n),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://host[:port]`, lowercased, without a trailing slash; `None` if `origin` is not
/// one (such as the `null` Origin of a sandboxed page).
pub(crate) fn normalize_origin(origin: &str) -> Option<String> {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, host) = origin.split_once("://")?;
    let ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !host.is_empty()
        && !host.contains(['/', '?', '#', '@', ' ']);
    ok.then_some(origin)
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
    pub(crate) max_frame_bytes: usize,
    pub(crate) auth: Authenticator,
    pub(crate) origins: Origins,
    pub(crate) per_address: PerAddress,
    /// Renders `/metrics`; `None` when no recorder could be installed.
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// The routes of the main port: `/ws`, and the admin endpoints unless they have their own.
pub(crate) fn routes(state: AppState, with_admin: bool) -> Router {
    let router = Router::new()
        .route("/ws", get(websocket))
        .merge(crate::ui::routes());
    let router = if with_admin {
        admin_routes(router)
    } else {
        router
    };
    router.with_state(state)
}

/// `/healthz`, `/readyz` and `/metrics`.
pub(crate) fn admin_routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn websocket(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if app.shutdown.is_cancelled() {
        crate::metrics::connection_refused("shutting_down");
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        if !app.origins.allows(&origin, host) {
            crate::metrics::connection_refused("origin");
            info!(%peer, %origin, "origin not allowed; upgrade refused with 403");
            return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
        }
    }
    let caller = match app.auth.authenticate(&headers, query.token.as_deref()) {
        Ok(caller) => caller,
        Err(refusal) => {
            crate::metrics::connection_refused("unauthorized");
            // The reason only: never the token.
            info!(%peer, reason = %refusal, "authentication failed; upgrade refused with 401");
            return (
                StatusCode::UNAUTHORIZED,
                [(WWW_AUTHENTICATE, "Bearer")],
                "unauthorized\n",
            )
                .into_response();
        }
    };
    let Some(address_slot) = app.per_address.admit(peer.ip()) else {
        crate::metrics::connection_refused("per_ip_limit");
        warn!(%peer, "connection limit for this address reached; upgrade refused with 429");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address\n",
        )
            .into_response();
    };
    let Ok(permit) = app.connections.clone().try_acquire_owned() else {
        crate::metrics::connection_refused("limit");
        warn!(%peer, "connection limit reached; upgrade refused");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let client = app.next_client.fetch_add(1, Ordering::Relaxed);
    let span = match &caller.identity {
        Some(identity) => info_span!("client", id = client, %peer, %identity),
        None => info_span!("client", id = client, %peer),
    };
    // Attach to the session before upgrading, so a refused resume is a plain HTTP answer.
    let (tx, rx) = mpsc::channel(app.connection.max_awaiting * 2);
    match app
        .router
        .connect(
            client,
            tx,
            query.session,
            caller.identity.clone(),
            peer.ip(),
        )
        .await
    {
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
    upgrade
        .protocols([SUBPROTOCOL])
        .max_message_size(app.max_message_bytes)
        .max_frame_size(app.max_frame_bytes)
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
                connection::serve(
                    socket,
                    client,
                    rx,
                    app.router,
                    app.connection,
                    app.shutdown,
                    caller,
                )
                .await;
                // Slots first: once the gauge says the connection is gone, its slots are free.
                drop(permit);
                drop(address_slot);
                crate::metrics::connection_closed();
                tracing::debug!("disconnected");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_by_scheme_host_and_port_ignoring_case_and_slash() {
        let origins = Origins::new(&["https://App.example.com/".to_owned()], false);
        let host = Some("gw.example.com");
        assert!(origins.allows("https://app.example.com", host));
        assert!(!origins.allows("http://app.example.com", host));
        assert!(!origins.allows("https://app.example.com:8443", host));
        assert!(!origins.allows("https://evil.example.com", host));
        assert!(!origins.allows("null", host));
        let any = Origins::new(&["*".to_owned()], true);
        assert!(any.is_any());
        assert!(any.allows("https://anything.example", None));
    }

    #[test]
    fn by_default_only_the_gateways_own_origin_passes() {
        let public = Origins::new(&[], false);
        assert!(public.allows("https://gw.example.com", Some("gw.example.com")));
        assert!(public.allows("https://gw.example.com", Some("GW.example.com:443")));
        assert!(!public.allows("https://evil.example.com", Some("gw.example.com")));
        assert!(!public.allows("https://gw.example.com", None));
        let local = Origins::new(&[], true);
        assert!(local.allows("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(local.allows("http://localhost:8080", Some("localhost:8080")));
        assert!(local.allows("http://[::1]:8080", Some("[::1]:8080")));
        assert!(!local.allows("http://localhost:8080", Some("127.0.0.1:8080")));
        // DNS rebinding: a foreign name that resolves to loopback is not the gateway's origin.
        assert!(!local.allows("http://evil.example:8080", Some("evil.example:8080")));
    }
}
