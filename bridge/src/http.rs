//! The bridge's own small HTTP listener (`--metrics-listen`): `/metrics` for Prometheus and
//! `/healthz`. The bridge has no other HTTP to speak of, so it is off unless configured.

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

#[derive(Clone)]
struct AppState {
    metrics: Option<PrometheusHandle>,
    broker: watch::Receiver<BrokerState>,
}

/// Binds `addr` and serves until `shutdown`.
pub(crate) async fn spawn(
    addr: SocketAddr,
    broker: watch::Receiver<BrokerState>,
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
        .with_state(AppState { metrics, broker });
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

/// 200 while RabbitMQ is connected (even if blocking publishers), else 503.
async fn healthz(State(app): State<AppState>) -> Response {
    let state = *app.broker.borrow();
    let word = match state {
        BrokerState::Up => "up",
        BrokerState::Down => "down",
        BrokerState::Blocked => "blocked",
    };
    let status = if state == BrokerState::Down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(serde_json::json!({ "broker": word }))).into_response()
}
