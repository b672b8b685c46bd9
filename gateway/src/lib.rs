//! `wsmq-gateway`: the websocket side of wsmq.
//!
//! Clients send JSON-RPC 2.0 over websockets; the gateway gives each call a job id, hands it
//! to the bridge over a Unix socket, and routes the worker's reply back to the one client and
//! call id that asked. It never talks to RabbitMQ itself, so a broker outage or a bridge
//! restart costs clients a -32000 "broker unavailable" at most, never their connection.
//!
//! Tasks and who owns what:
//! - one task per websocket ([`connection`]): its socket, outbound queue and batches;
//! - the router ([`router`]): the table of calls in flight and the client registry;
//! - the link ([`link`]): the Unix socket to the bridge, reconnecting as needed;
//! - the servers ([`server`]): the accept loops of the websocket port and the admin port.
//!
//! Who may connect is settled before the upgrade ([`auth`], [`http`]); what a connection may
//! do once in is its own task's business ([`connection`], [`limits`]).

mod auth;
mod call_error;
mod config;
mod connection;
mod http;
mod jsonrpc;
mod limits;
mod linger;
mod link;
mod metrics;
mod outbound;
mod router;
mod server;
mod sessions;
mod tls;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use wsmq_ipc_proto::MAX_UNTAKEN_REPLIES;

pub use config::{Cli, Config, ConfigError, Overrides};

/// Entry points for the fuzz targets in `fuzz/`. Not an API: nothing outside the fuzz crate
/// should call it, and it may change with the parser.
#[doc(hidden)]
pub mod fuzzing {
    use wsmq_codes as codes;

    use crate::jsonrpc::{self, Entry, FrameRejected, Incoming, ParseLimits};

    /// Parses `text` as a websocket text frame with the default limits, and panics if the
    /// outcome breaks what the gateway relies on: every answer is a JSON-RPC error object with
    /// a documented code, every accepted call has a method, structured params within the limit
    /// and a scalar id, and a frame is only accepted if it is JSON.
    pub fn parse_frame(text: &str) {
        let limits = ParseLimits::default();
        match jsonrpc::parse(text, &limits) {
            Err(FrameRejected(answer)) => {
                let (code, id) = check_error(&answer);
                assert_eq!(id, "null", "a frame-level refusal has no id: {answer}");
                assert!(
                    matches!(
                        code,
                        codes::PARSE_ERROR
                            | codes::INVALID_REQUEST
                            | codes::JSON_TOO_DEEP
                            | codes::BATCH_TOO_LONG
                    ),
                    "undocumented frame refusal: {answer}"
                );
            }
            Ok(incoming) => {
                // IgnoredAny, not Value: JSON allows numbers Value cannot hold (1e999).
                let whole: Result<serde::de::IgnoredAny, _> = serde_json::from_str(text);
                assert!(whole.is_ok(), "accepted a frame that is not JSON: {text:?}");
                let entries = match incoming {
                    Incoming::Single(entry) => vec![entry],
                    Incoming::Batch(entries) => {
                        assert!(!entries.is_empty(), "empty batch accepted");
                        assert!(
                            entries.len() <= limits.max_batch_len,
                            "batch over the limit"
                        );
                        entries
                    }
                };
                for entry in entries {
                    check_entry(entry, &limits);
                }
            }
        }
    }

    /// An error answer's code and raw id. Parsed into a struct, not a `Value`: an echoed id may
    /// be a number `Value` cannot hold (1e999).
    fn check_error(answer: &str) -> (i64, String) {
        #[derive(serde::Deserialize)]
        struct Answer<'a> {
            jsonrpc: &'a str,
            error: ErrorObject,
            #[serde(borrow)]
            id: &'a serde_json::value::RawValue,
        }
        #[derive(serde::Deserialize)]
        struct ErrorObject {
            code: i64,
            #[allow(dead_code)]
            message: String,
        }
        let v: Answer<'_> = serde_json::from_str(answer).unwrap_or_else(|e| {
            panic!("an answer is not a JSON-RPC error ({e}): {answer}");
        });
        assert_eq!(v.jsonrpc, "2.0", "{answer}");
        (v.error.code, v.id.get().to_owned())
    }

    fn is_scalar_id(id: &str) -> bool {
        id == "null" || matches!(id.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
    }

    fn check_entry(entry: Entry, limits: &ParseLimits) {
        match entry {
            Entry::Invalid(answer) => {
                let (code, id) = check_error(&answer);
                assert!(
                    matches!(code, codes::INVALID_REQUEST | codes::PARAMS_TOO_LARGE),
                    "undocumented call refusal: {answer}"
                );
                assert!(is_scalar_id(&id), "{answer}");
            }
            Entry::Call(call) => {
                assert!(!call.method.is_empty(), "empty method accepted");
                if let Some(params) = &call.params {
                    let p = params.as_bytes();
                    assert!(
                        p.starts_with(b"{") || p.starts_with(b"["),
                        "params {params:?}"
                    );
                    assert!(p.len() <= limits.max_params_bytes, "params over the limit");
                }
                if let Some(id) = &call.id {
                    assert!(is_scalar_id(id.get()), "id {}", id.get());
                }
            }
        }
    }
}

/// Jobs queued for the IPC writer. Full means the bridge is not keeping up: new calls are
/// answered -32000 at once instead of queueing without bound.
const JOBS_CAPACITY: usize = 4096;
/// Messages from the IPC reader to the router (the router never blocks, so this drains).
const LINK_EVENTS_CAPACITY: usize = 1024;

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    run_until(config, wsmq_service::signals::shutdown_token()).await
}

/// Runs the gateway until `shutdown` is cancelled, then drains.
pub async fn run_until(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (auth, tokens_reloader) =
        auth::Authenticator::load(&config.auth()).context("authentication setup")?;
    let tls = tls::acceptor(&config).context("TLS setup")?;
    let origins = http::Origins::new(&config.allowed_origins, config.listen.ip().is_loopback());
    let public = !config.listen.ip().is_loopback();
    if !auth.enabled() && public {
        warn!(
            listen = %config.listen,
            "INSECURE: --insecure-no-auth: anyone who reaches this non-loopback address may call every method"
        );
    }
    if origins.is_any() {
        warn!(
            listen = %config.listen,
            "--allowed-origin '*': any web page may open a websocket here with its visitors' browsers"
        );
    }
    auth::spawn_sighup_handler(tokens_reloader, shutdown.clone());

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("listener has no address")?;
    let admin_listener = match config.admin_listen {
        Some(admin) => Some(
            tokio::net::TcpListener::bind(admin)
                .await
                .with_context(|| format!("cannot listen on {admin} (admin)"))?,
        ),
        None => None,
    };
    info!(
        %addr,
        ipc = %config.ipc.display(),
        tls = tls.is_some(),
        auth = auth.enabled(),
        "gateway listening"
    );

    let (health_tx, health) = watch::channel(router::Health::default());
    let health_rx_for_status = health.clone();
    let (events_tx, events_rx) = mpsc::channel(LINK_EVENTS_CAPACITY);
    let (jobs_tx, jobs_rx) = mpsc::channel(JOBS_CAPACITY);
    let (taken_tx, taken_rx) = mpsc::channel(MAX_UNTAKEN_REPLIES);
    let link_shutdown = CancellationToken::new();
    let link = tokio::spawn(
        link::Link {
            path: config.ipc.clone(),
            trust: link::BridgeTrust::for_this_process(config.ipc_bridge_uid),
            events: events_tx,
            jobs: jobs_rx,
            taken: taken_rx,
            shutdown: link_shutdown.clone(),
        }
        .run(),
    );
    let limits = router::Limits {
        per_client: config.max_inflight_per_client,
        global: config.max_inflight,
        default_timeout: config.call_timeout,
        max_timeout: config.max_call_timeout,
        max_held: config.max_held_calls,
        resume_within: Duration::from_secs(config.session_resume_secs),
        keep: sessions::KeepLimits {
            session_bytes: config.max_session_bytes,
            total_bytes: config.max_kept_bytes,
            sessions_per_address: config.max_sessions_per_ip,
            sessions_per_identity: config.max_sessions_per_identity,
        },
    };
    let to_link = router::ToLink {
        jobs: jobs_tx,
        taken: taken_tx,
    };
    let (router_handle, router_task) = router::spawn(limits, events_rx, to_link, health_tx);

    let metrics = match wsmq_service::metrics::install() {
        Ok(handle) => Some(handle),
        Err(e) => {
            warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
            None
        }
    };
    let tracker = TaskTracker::new();
    let drain = Duration::from_secs(config.drain_timeout);
    let state = http::AppState {
        router: router_handle,
        health,
        connections: Arc::new(Semaphore::new(config.max_connections)),
        next_client: Arc::new(AtomicU64::new(1)),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        connection: connection::ConnectionConfig {
            drain,
            limits: jsonrpc::ParseLimits {
                max_depth: config.max_json_depth,
                max_batch_len: config.max_batch_len,
                max_params_bytes: config.max_params_bytes,
            },
            call_rate: (config.call_rate > 0)
                .then(|| (f64::from(config.call_rate), config.call_burst)),
            ping_interval: (!config.ping_interval.is_zero()).then_some(config.ping_interval),
            idle_timeout: (!config.idle_timeout.is_zero()).then_some(config.idle_timeout),
            write_timeout: config.write_timeout,
            max_awaiting: connection::max_awaiting(config.max_inflight_per_client),
        },
        max_message_bytes: config.max_message_bytes,
        max_frame_bytes: config.frame_limit(),
        auth,
        origins,
        per_address: limits::PerAddress::new(config.max_connections_per_ip),
        metrics,
    };
    // The listeners keep serving through the drain, so that a new upgrade is answered 503 and
    // `/readyz` says `"draining": true` (what a load balancer polls) instead of the connection
    // being refused; they stop once the websocket connections are done.
    let stop_listening = CancellationToken::new();
    let admin = match admin_listener {
        Some(listener) => {
            let admin_addr = listener
                .local_addr()
                .context("admin listener has no address")?;
            info!(addr = %admin_addr, "admin listening");
            let server = server::Server {
                listener,
                tls: None,
                app: http::admin_routes(axum::Router::new()).with_state(state.clone()),
                handshake_timeout: config.handshake_timeout,
            };
            Some(tokio::spawn(server.run(stop_listening.clone())))
        }
        None => None,
    };
    let main = server::Server {
        listener,
        tls,
        app: http::routes(state, admin.is_none()),
        handshake_timeout: config.handshake_timeout,
    };
    report_to_systemd(addr, health_rx_for_status, shutdown.clone());
    let main = tokio::spawn(main.run(stop_listening.clone()));
    shutdown.cancelled().await;

    // No new websocket now (upgrades get 503); the open ones answer what they can within
    // `drain`, then close.
    tracker.close();
    if tokio::time::timeout(drain + Duration::from_secs(2), tracker.wait())
        .await
        .is_err()
    {
        warn!("websocket connections still open after the drain timeout");
    }
    stop_listening.cancel();
    main.await.context("server panicked")?;
    if let Some(admin) = admin {
        admin.await.context("admin server panicked")?;
    }
    // Every router handle is gone with the connections and the HTTP app: the router stops.
    router_task.await.context("router panicked")?;
    link_shutdown.cancel();
    link.await.context("ipc link panicked")?;
    info!("gateway stopped");
    Ok(())
}

/// Tells systemd the gateway is ready (it is listening; calls are held until the bridge is
/// up), keeps `systemctl status` current with the link's state, and pings the watchdog
/// (STOPPING=1 is sent by the signal handler).
fn report_to_systemd(
    addr: SocketAddr,
    health: watch::Receiver<router::Health>,
    shutdown: CancellationToken,
) {
    let ready = format!("listening on {addr}; waiting for the bridge");
    wsmq_service::notify::follow(&ready, health, shutdown, move |h| {
        let word = |up: bool| if up { "up" } else { "down" };
        format!(
            "listening on {addr}; bridge {}, broker {}{}",
            word(h.bridge),
            word(h.broker),
            if h.blocked { " (blocked)" } else { "" }
        )
    });
}
