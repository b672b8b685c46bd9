//! The bridge's own small HTTP listener (`--metrics-listen`): `/metrics` for Prometheus,
//! `/healthz` and `/readyz` (which RabbitMQ node the bridge is on, or why it is on none). The
//! bridge has no other HTTP to speak of, so it is off unless configured.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wsmq_ipc_proto::BrokerState;

use crate::broker::NodeStatus;

#[derive(Clone)]
struct AppState {
    metrics: Option<PrometheusHandle>,
    broker: watch::Receiver<BrokerState>,
    node: watch::Receiver<NodeStatus>,
}

/// Binds `addr` and serves until `shutdown`.
pub(crate) async fn spawn(
    addr: SocketAddr,
    broker: watch::Receiver<BrokerState>,
    node: watch::Receiver<NodeStatus>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = match wsmq_service::metrics::install() {
        Ok(handle) => Some(handle),
        Err(e) => {
            warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
            None
        }
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let local = listener
        .local_addr()
        .context("metrics listener has no address")?;
    info!(addr = %local, "metrics listening");
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            metrics,
            broker,
            node,
        });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            warn!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
}

async fn render(State(app): State<AppState>) -> Response {
    let body = app.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    (
        [(header::CONTENT_TYPE, wsmq_service::metrics::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

fn word(state: BrokerState) -> &'static str {
    match state {
        BrokerState::Up => "up",
        BrokerState::Down => "down",
        BrokerState::Blocked => "blocked",
    }
}

/// 200 while RabbitMQ is connected (even if blocking publishers), else 503; `node` is the
/// node connected to, `null` while none.
async fn healthz(State(app): State<AppState>) -> Response {
    let state = *app.broker.borrow();
    let node = app.node.borrow().node.clone();
    let status = if state == BrokerState::Down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({ "broker": word(state), "node": node });
    (status, axum::Json(body)).into_response()
}

/// 200 when jobs can be published (connected, not blocked), else 503. Names the node it is
/// on, or, while on none, why: the last failure of each node tried.
async fn readyz(State(app): State<AppState>) -> Response {
    let state = *app.broker.borrow();
    let NodeStatus { node, failures } = app.node.borrow().clone();
    let ready = state == BrokerState::Up;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::json!({ "ready": ready, "broker": word(state), "node": node });
    if node.is_none() {
        let reason = if failures.is_empty() {
            "connecting to RabbitMQ".to_owned()
        } else {
            format!("no RabbitMQ node answers: {}", failures.join("; "))
        };
        body["reason"] = serde_json::Value::String(reason);
    }
    (status, axum::Json(body)).into_response()
}
