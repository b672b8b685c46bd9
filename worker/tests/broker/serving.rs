//! Serving jobs: replies and acks by the contract, shutdown, panics, concurrency, reconnects, progress.

use super::*;

#[tokio::test]
async fn replies_follow_the_contract_and_jobs_are_acked() -> Result<()> {
    let prefix = unique_prefix("contract");
    let _cleanup = Cleanup::on_drop(&prefix, &["echo", "fail"]);
    let builder = Worker::builder(amqp_url())
        .queue_prefix(&prefix)
        .concurrency(1)
        .method("echo", |request: Request| async move { Ok(request.params) })
        .method("fail", |request: Request| async move {
            Err::<Value, _>(RpcError::new(4000, "requested failure").with_data(request.params))
        });
    let (run, shutdown) = start(builder).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    bridge
        .publish("echo", "job-ok", &json!({"a": [1, 2]}))
        .await?;
    let reply = bridge.next_reply().await?;
    assert_eq!(reply.correlation_id, Some("job-ok".into()));
    assert_eq!(reply.status, status("ok"));
    assert_eq!(reply.content_type, Some("application/json".into()));
    assert_eq!(reply.delivery_mode, Some(2));
    assert_eq!(reply.body, json!({"a": [1, 2]}));

    bridge
        .publish("fail", "job-err", &json!({"why": 1}))
        .await?;
    let reply = bridge.next_reply().await?;
    assert_eq!(reply.correlation_id, Some("job-err".into()));
    assert_eq!(reply.status, status("error"));
    assert_eq!(
        reply.body,
        json!({"code": 4000, "message": "requested failure", "data": {"why": 1}})
    );

    bridge
        .publish_raw("echo", "job-bad-json", b"{nope", true)
        .await?;
    let reply = bridge.next_reply().await?;
    assert_eq!(reply.correlation_id, Some("job-bad-json".into()));
    assert_eq!(reply.status, status("error"));
    assert_eq!(reply.body["code"], json!(-32700));
    assert_eq!(reply.body["message"], json!("params are not valid JSON"));

    // Unanswerable, so acked unanswered. With one slot the next job starts only once this one
    // is done, so its reply proves the first was acked.
    bridge
        .publish_raw("echo", "job-no-reply-to", b"{}", false)
        .await?;
    bridge.publish("echo", "job-after", &json!(7)).await?;
    let reply = bridge.next_reply().await?;
    assert_eq!(reply.correlation_id, Some("job-after".into()));

    stop(run, shutdown).await?;
    assert_eq!(bridge.ready_jobs("echo").await?, 0, "every job was acked");
    assert_eq!(bridge.ready_jobs("fail").await?, 0, "every job was acked");
    Ok(())
}

#[tokio::test]
async fn job_in_flight_at_shutdown_still_replies_and_no_new_job_starts() -> Result<()> {
    let prefix = unique_prefix("drain");
    let _cleanup = Cleanup::on_drop(&prefix, &["slow"]);
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (on_start, on_release) = (Arc::clone(&started), Arc::clone(&release));
    let builder = Worker::builder(amqp_url())
        .queue_prefix(&prefix)
        .concurrency(1)
        .method("slow", move |request: Request| {
            let (started, release) = (Arc::clone(&on_start), Arc::clone(&on_release));
            async move {
                started.notify_one();
                release.notified().await;
                Ok(request.params)
            }
        });
    let (run, shutdown) = start(builder).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    bridge.publish("slow", "in-flight", &json!(1)).await?;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .context("handler never started")?;
    bridge.publish("slow", "waiting", &json!(2)).await?;
    shutdown.cancel();
    if run.is_finished() {
        bail!("run returned with a job in flight");
    }
    release.notify_one();

    let reply = bridge.next_reply().await?;
    assert_eq!(reply.correlation_id, Some("in-flight".into()));
    assert_eq!(reply.body, json!(1));
    tokio::time::timeout(WAIT, run)
        .await
        .context("worker did not stop in time")???;
    assert_eq!(
        bridge.ready_jobs("slow").await?,
        1,
        "the job not started before shutdown is back in the queue"
    );
    Ok(())
}

#[tokio::test]
async fn panicking_handler_is_answered_with_an_internal_error() -> Result<()> {
    let prefix = unique_prefix("panic");
    let _cleanup = Cleanup::on_drop(&prefix, &["boom"]);
    let builder = Worker::builder(amqp_url()).queue_prefix(&prefix).method(
        "boom",
        |request: Request| async move {
            if request.params.is_null() {
                panic!("handler bug");
            }
            Ok(request.params)
        },
    );
    let (run, shutdown) = start(builder).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    bridge.publish("boom", "job-panic", &Value::Null).await?;
    let reply = bridge.next_reply().await?;
    assert_eq!(reply.status, status("error"));
    assert_eq!(reply.body["code"], json!(RpcError::INTERNAL_ERROR));

    // The worker is still serving.
    bridge.publish("boom", "job-fine", &json!(3)).await?;
    assert_eq!(bridge.next_reply().await?.body, json!(3));

    stop(run, shutdown).await?;
    assert_eq!(bridge.ready_jobs("boom").await?, 0);
    Ok(())
}

#[tokio::test]
async fn no_more_handlers_run_at_once_than_the_concurrency() -> Result<()> {
    const CONCURRENCY: u16 = 2;
    const JOBS: usize = 6;
    let prefix = unique_prefix("concurrency");
    let _cleanup = Cleanup::on_drop(&prefix, &["work"]);
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (Arc::clone(&running), Arc::clone(&most));
    let builder = Worker::builder(amqp_url())
        .queue_prefix(&prefix)
        .concurrency(CONCURRENCY)
        .method("work", move |request: Request| {
            let (running, most) = (Arc::clone(&r), Arc::clone(&m));
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // The work itself: long enough for jobs to overlap if the worker let them.
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(request.params)
            }
        });
    let (run, shutdown) = start(builder).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    for i in 0..JOBS {
        bridge
            .publish("work", &format!("job-{i}"), &json!(i))
            .await?;
    }
    for _ in 0..JOBS {
        bridge.next_reply().await?;
    }
    assert_eq!(most.load(Ordering::SeqCst), usize::from(CONCURRENCY));

    stop(run, shutdown).await?;
    Ok(())
}

#[tokio::test]
async fn worker_reconnects_and_redeclares_after_its_queue_is_deleted() -> Result<()> {
    let prefix = unique_prefix("redeclare");
    let _cleanup = Cleanup::on_drop(&prefix, &["echo"]);
    let builder = Worker::builder(amqp_url())
        .queue_prefix(&prefix)
        .method("echo", |request: Request| async move { Ok(request.params) });
    let (run, shutdown, mut state) = start_watched(builder).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    // The broker cancels the worker's consumer, which must end the session.
    bridge.delete_queues(&["echo"]).await?;
    tokio::time::timeout(WAIT, state.changed())
        .await
        .context("worker did not notice its consumer was cancelled")??;
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == WorkerState::Ready))
        .await
        .context("worker did not reconnect in time")??;

    bridge
        .publish("echo", "after-reconnect", &json!("again"))
        .await?;
    let reply = bridge.next_reply().await?;
    assert_eq!(reply.correlation_id, Some("after-reconnect".into()));
    assert_eq!(reply.body, json!("again"));

    stop(run, shutdown).await?;
    Ok(())
}

#[tokio::test]
async fn progress_reports_reach_reply_to_in_order_before_the_result() -> Result<()> {
    const STEPS: u64 = 20;
    let prefix = unique_prefix("progress");
    let _cleanup = Cleanup::on_drop(&prefix, &["steps"]);
    let builder = Worker::builder(amqp_url()).queue_prefix(&prefix).method(
        "steps",
        |request: Request| async move {
            let steps = request.params["steps"].as_u64().unwrap_or(0);
            for step in 1..=steps {
                request
                    .progress(json!({ "step": step }))
                    .await
                    .map_err(RpcError::internal)?;
            }
            Ok(json!({ "done": steps }))
        },
    );
    let (run, shutdown) = start(builder).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    bridge
        .publish("steps", "job-steps", &json!({ "steps": STEPS }))
        .await?;
    for step in 1..=STEPS {
        let report = bridge.next_reply().await?;
        assert_eq!(report.status, status("progress"), "report {step}");
        assert_eq!(report.correlation_id, Some("job-steps".into()));
        assert_eq!(report.content_type, Some("application/json".into()));
        assert_eq!(report.delivery_mode, Some(2));
        assert_eq!(report.body, json!({ "step": step }));
    }
    let reply = bridge.next_reply().await?;
    assert_eq!(reply.status, status("ok"));
    assert_eq!(reply.correlation_id, Some("job-steps".into()));
    assert_eq!(reply.body, json!({ "done": STEPS }));

    stop(run, shutdown).await?;
    assert_eq!(bridge.ready_jobs("steps").await?, 0);
    Ok(())
}
