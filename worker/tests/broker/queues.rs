//! How method queues are declared and served: priorities and per-method concurrency.

use super::*;

#[tokio::test]
async fn method_queues_are_declared_with_x_max_priority_9_unless_disabled() -> Result<()> {
    let prefix = unique_prefix("max-priority");
    let _cleanup = Cleanup::on_drop(&prefix, &["echo"]);
    let builder = Worker::builder(amqp_url())
        .queue_prefix(&prefix)
        .method("echo", |request: Request| async move { Ok(request.params) });
    let (run, shutdown) = start(builder).await?;
    let bridge = Bridge::connect(&prefix).await?;
    stop(run, shutdown).await?;

    // The broker accepts a redeclaration only with equivalent arguments; a client in another
    // language would send 9 as a long int.
    let mut nine = FieldTable::default();
    nine.insert("x-max-priority".into(), AMQPValue::LongInt(9));
    bridge.redeclare("echo", nine).await?;
    let without = bridge.redeclare("echo", FieldTable::default()).await;
    assert!(without.is_err(), "the queue has an x-max-priority argument");

    let plain_prefix = unique_prefix("no-priority");

    let _plain_cleanup = Cleanup::on_drop(&plain_prefix, &["echo"]);
    let builder = Worker::builder(amqp_url())
        .queue_prefix(&plain_prefix)
        .max_priority(None)
        .method("echo", |request: Request| async move { Ok(request.params) });
    let (run, shutdown) = start(builder).await?;
    let plain = Bridge::connect(&plain_prefix).await?;
    stop(run, shutdown).await?;
    plain.redeclare("echo", FieldTable::default()).await?;
    Ok(())
}

#[tokio::test]
async fn later_high_priority_job_runs_before_earlier_low_priority_ones() -> Result<()> {
    let prefix = unique_prefix("priority");
    let _cleanup = Cleanup::on_drop(&prefix, &["work"]);
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (on_start, on_release) = (Arc::clone(&started), Arc::clone(&release));
    let builder = Worker::builder(amqp_url())
        .queue_prefix(&prefix)
        .concurrency(1)
        .method("work", move |request: Request| {
            let (started, release) = (Arc::clone(&on_start), Arc::clone(&on_release));
            async move {
                if request.job_id == "blocker" {
                    started.notify_one();
                    release.notified().await;
                }
                Ok(Value::Null)
            }
        });
    let (run, shutdown) = start(builder).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    bridge.publish_prioritised("work", "blocker", 0).await?;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .context("handler never started")?;
    // Confirmed, so all in the queue while the worker is busy.
    for job in ["low-1", "low-2", "low-3"] {
        bridge.publish_prioritised("work", job, 0).await?;
    }
    bridge.publish_prioritised("work", "high", 9).await?;
    release.notify_one();

    let mut order = Vec::new();
    for _ in 0..5 {
        let reply = bridge.next_reply().await?;
        order.push(
            reply
                .correlation_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
        );
    }
    assert_eq!(order, ["blocker", "high", "low-1", "low-2", "low-3"]);

    stop(run, shutdown).await?;
    Ok(())
}

#[tokio::test]
async fn method_concurrency_caps_one_method_below_the_worker_concurrency() -> Result<()> {
    const JOBS: usize = 4;
    let prefix = unique_prefix("method-concurrency");
    let _cleanup = Cleanup::on_drop(&prefix, &["capped"]);
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (Arc::clone(&running), Arc::clone(&most));
    let builder = Worker::builder(amqp_url())
        .queue_prefix(&prefix)
        .concurrency(4)
        .method_concurrency("capped", 1)
        .method("capped", move |request: Request| {
            let (running, most) = (Arc::clone(&r), Arc::clone(&m));
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(request.params)
            }
        });
    let (run, shutdown) = start(builder).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    for i in 0..JOBS {
        bridge
            .publish("capped", &format!("job-{i}"), &json!(i))
            .await?;
    }
    for _ in 0..JOBS {
        bridge.next_reply().await?;
    }
    assert_eq!(most.load(Ordering::SeqCst), 1);

    stop(run, shutdown).await?;
    Ok(())
}
