//! Direct RabbitMQ access for the tests: cleanup, and tests that play a worker themselves.

use anyhow::{Context, Result};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use crate::CLEANUP_TIMEOUT;

/// A new connection to the broker at `url`.
pub async fn connect(url: &str) -> Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {url} (is it running?)"))
}

/// Deletes the named queues and exchanges (whether or not they exist, consumers or not),
/// within [`CLEANUP_TIMEOUT`].
pub async fn delete_topology(url: &str, queues: &[String], exchanges: &[String]) -> Result<()> {
    tokio::time::timeout(CLEANUP_TIMEOUT, async {
        let conn = connect(url).await?;
        let channel = conn
            .create_channel()
            .await
            .context("cannot open a channel for cleanup")?;
        for queue in queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .with_context(|| format!("cannot delete queue {queue}"))?;
        }
        for exchange in exchanges {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .with_context(|| format!("cannot delete exchange {exchange}"))?;
        }
        // Closing is a courtesy; the queues are gone either way.
        let _ = conn.close(200, "test cleanup done".into()).await;
        Ok(())
    })
    .await
    .with_context(|| format!("deleting the test's queues took over {CLEANUP_TIMEOUT:?}"))?
}

/// How many ready messages `queue` holds (a passive declare, on a channel of its own since a
/// missing queue closes the channel).
pub async fn queue_depth(conn: &Connection, queue: &str) -> Result<u32> {
    let channel = conn
        .create_channel()
        .await
        .context("cannot open a channel")?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot inspect queue {queue}"))?;
    let _ = channel.close(200, "done".into()).await;
    Ok(declared.message_count())
}
