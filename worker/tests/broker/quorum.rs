//! Quorum method queues: the delivery limit and dead-lettering.

use super::*;

/// The arguments a quorum method queue with delivery limit `limit` has, as a client in another
/// language would send them (integers as long ints).
fn quorum_arguments(prefix: &str, limit: i32) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments.insert("x-delivery-limit".into(), AMQPValue::LongInt(limit));
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(format!("{prefix}wsmq.dead").into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(format!("wsmq.delivery-limit.{limit}").into()),
    );
    arguments
}

/// Starts a quorum-queue echo worker with delivery limit 2 and stops it again, leaving its
/// queue and the dead-letter exchange declared.
async fn declare_quorum_echo(prefix: &str) -> Result<()> {
    let builder = Worker::builder(amqp_url())
        .queue_prefix(prefix)
        .queue_type(QueueType::Quorum { delivery_limit: 2 })
        .method("echo", |request: Request| async move { Ok(request.params) });
    let (run, shutdown) = start(builder).await?;
    stop(run, shutdown).await
}

/// Declares `<prefix>wsmq.dead` as the contract says (durable fanout, no arguments) on a channel
/// of its own; `Ok` says the exchange exists with exactly these settings.
async fn redeclare_dead_exchange(connection: &Connection, prefix: &str) -> Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            format!("{prefix}wsmq.dead").into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

async fn delete_dead_exchange(bridge: &Bridge) -> Result<()> {
    bridge
        .channel
        .exchange_delete(
            format!("{}wsmq.dead", bridge.prefix).into(),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn quorum_queues_are_declared_with_the_delivery_limit_and_the_dead_letter_exchange()
-> Result<()> {
    let prefix = unique_prefix("quorum-arguments");
    let _cleanup = Cleanup::on_drop(&prefix, &["echo"]);
    declare_quorum_echo(&prefix).await?;
    let bridge = Bridge::connect(&prefix).await?;

    // The broker accepts a redeclaration only with equivalent arguments.
    bridge
        .redeclare("echo", quorum_arguments(&prefix, 2))
        .await
        .context("the queue is a quorum queue with exactly the contract's arguments")?;
    assert!(
        bridge
            .redeclare("echo", quorum_arguments(&prefix, 3))
            .await
            .is_err(),
        "the delivery limit is 2"
    );
    let mut classic = FieldTable::default();
    classic.insert("x-max-priority".into(), AMQPValue::LongInt(9));
    assert!(
        bridge.redeclare("echo", classic).await.is_err(),
        "a quorum queue, not a classic priority queue"
    );
    redeclare_dead_exchange(&bridge.connection, &prefix)
        .await
        .context("the worker declared <prefix>wsmq.dead a durable fanout")?;
    delete_dead_exchange(&bridge).await
}

#[tokio::test]
async fn job_returned_past_the_delivery_limit_is_dead_lettered_with_the_limit_in_its_routing_key()
-> Result<()> {
    let prefix = unique_prefix("quorum-dead-letter");
    let _cleanup = Cleanup::on_drop(&prefix, &["echo"]);
    declare_quorum_echo(&prefix).await?;
    let bridge = Bridge::connect(&prefix).await?;
    // Stands in for the bridge's dead-letter queue.
    let dead = bridge
        .channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .name()
        .clone();
    bridge
        .channel
        .queue_bind(
            dead.clone(),
            format!("{prefix}wsmq.dead").into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    bridge.publish("echo", "job-poison", &json!("p")).await?;

    // Play a worker that dies holding the job: take it, then close the channel unacked.
    let queue: ShortString = format!("{prefix}echo").into();
    let mut deliveries = 0;
    loop {
        let channel = bridge.connection.create_channel().await?;
        let got = channel
            .basic_get(queue.clone(), BasicGetOptions::default())
            .await?;
        channel.close(200, "dying".into()).await?;
        if got.is_none() {
            break;
        }
        deliveries += 1;
        ensure!(deliveries <= 10, "the job is never dead-lettered");
    }
    assert_eq!(deliveries, 3, "delivery limit 2: delivered 3 times");

    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(message) = bridge
                .channel
                .basic_get(dead.clone(), BasicGetOptions { no_ack: true })
                .await?
            {
                return Ok::<_, anyhow::Error>(message);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the job never reached the dead-letter exchange")??;
    let delivery = &got.delivery;
    assert_eq!(delivery.routing_key.as_str(), "wsmq.delivery-limit.2");
    assert_eq!(
        delivery.properties.correlation_id().as_ref(),
        Some(&"job-poison".into())
    );
    assert_eq!(
        delivery.properties.reply_to().as_ref(),
        Some(&bridge.reply_queue)
    );
    let headers = delivery
        .properties
        .headers()
        .clone()
        .context("a dead job has headers")?;
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        bail!("no x-death array: {headers:?}");
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        bail!("empty x-death: {headers:?}");
    };
    assert_eq!(
        first.inner().get("reason"),
        Some(&AMQPValue::LongString("delivery_limit".into())),
        "{headers:?}"
    );
    // What RabbitMQ 3.10 does not say, and why the routing key carries the limit.
    assert_eq!(
        first.inner().get("count"),
        Some(&AMQPValue::LongLongInt(1)),
        "{headers:?}"
    );
    assert!(
        !headers.inner().contains_key("x-delivery-count"),
        "{headers:?}"
    );
    delete_dead_exchange(&bridge).await
}
