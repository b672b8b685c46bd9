//! `wsmq-bridge`: the RabbitMQ side of wsmq.
//!
//! The bridge is the only process that talks AMQP. It takes jobs from its gateway over a Unix
//! socket and publishes them with confirms; it consumes the workers' replies from its own
//! durable queue and hands them to the gateway, acknowledging each only once the gateway has
//! taken it. Living in its own process, it can be restarted, or lose RabbitMQ, without a
//! single websocket client noticing more than a -32000 "broker unavailable".

mod backlog;
mod broker;
mod config;
mod dead;
mod gateway_link;
mod http;
mod metrics;
mod publisher;
mod reply;
mod server;

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::{Cli, Config, ConfigError, Overrides, ReplyQueueType};

/// Runs the bridge until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    run_until(config, wsmq_service::signals::shutdown_token()).await
}

/// Runs the bridge until `shutdown` is cancelled.
pub async fn run_until(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let instance = config.instance.clone();
    let reply_queue = config.reply_queue();
    let group = config.ipc_gid()?;
    let listener = server::bind(&config.ipc, group)?;
    let policy = server::PeerPolicy::for_this_process(group);
    info!(path = %config.ipc.display(), %instance, "bridge listening");

    let urls = usable_urls(&config.amqp);
    let nodes: Vec<String> = urls
        .iter()
        .map(|url| wsmq_service::node_name(url))
        .collect();
    info!(?nodes, reply_queue_type = ?config.reply_queue_type, "RabbitMQ nodes, in the order tried");
    let settings = broker::BrokerSettings {
        urls,
        reply_queue,
        replicated: config.reply_queue_type == ReplyQueueType::Quorum,
        queue_prefix: config.queue_prefix.clone(),
        prefetch: config.prefetch,
        publish_channels: config.publish_channels,
        connection_name: format!("wsmq-bridge {instance} pid {}", std::process::id()),
    };
    let broker_shutdown = CancellationToken::new();
    let (mut handle, supervisor) = broker::spawn(settings, broker_shutdown.clone());
    if let Some(addr) = config.metrics_addr()? {
        http::spawn(
            addr,
            handle.state.clone(),
            handle.node.clone(),
            shutdown.clone(),
        )
        .await?;
    }
    report_to_systemd(&config.ipc, handle.state.clone(), shutdown.clone());

    let ctx = gateway_link::LinkContext {
        broker: &mut handle,
        instance: &instance,
        max_unconfirmed: config.max_unconfirmed,
        drain_timeout: Duration::from_secs(config.drain_timeout),
        shutdown: &shutdown,
    };
    server::serve(listener, policy, ctx).await;

    // The gateway link has finished its publishes and requeued what the gateway did not take; only
    // now close the broker connection.
    broker_shutdown.cancel();
    let stop_limit = Duration::from_secs(config.drain_timeout) + Duration::from_secs(5);
    match tokio::time::timeout(stop_limit, supervisor).await {
        Ok(joined) => joined.context("broker supervisor panicked")?,
        Err(_) => tracing::warn!(
            ?stop_limit,
            "broker connection did not close in time; exiting anyway"
        ),
    }
    info!("bridge stopped");
    Ok(())
}

/// The broker URLs worth trying: a malformed one is named in a warning and skipped, unless
/// none is well-formed (then all are kept, and each attempt fails and is logged, as with one
/// bad URL: the bridge keeps running and its gateway holds calls).
fn usable_urls(urls: &[String]) -> Vec<String> {
    let good: Vec<&String> = urls
        .iter()
        .filter(|url| url.parse::<lapin::uri::AMQPUri>().is_ok())
        .collect();
    if good.is_empty() {
        return urls.to_vec();
    }
    for (position, url) in urls.iter().enumerate() {
        if let Err(reason) = url.parse::<lapin::uri::AMQPUri>() {
            // Not the URL itself: without a scheme, a password would not be masked.
            tracing::warn!(
                position = position + 1,
                node = %wsmq_service::node_name(url),
                %reason,
                "malformed RabbitMQ URL skipped"
            );
        }
    }
    good.into_iter().cloned().collect()
}

/// Tells systemd the bridge is ready (its socket is listening; the gateway learns the broker's
/// state from it), keeps `systemctl status` current with the broker's state, pings the
/// watchdog (STOPPING=1 is sent by the signal handler).
fn report_to_systemd(
    ipc: &std::path::Path,
    broker: tokio::sync::watch::Receiver<wsmq_ipc_proto::BrokerState>,
    shutdown: CancellationToken,
) {
    let ipc = ipc.display().to_string();
    let ready = format!("listening on {ipc}; connecting to RabbitMQ");
    wsmq_service::notify::follow(&ready, broker, shutdown, move |state| {
        format!("listening on {ipc}; RabbitMQ {state:?}")
    });
}
