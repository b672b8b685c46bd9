//! Deadlines and cancellations: expired jobs, deadlines passing while running, the broadcast, reconnects and shutdown.

use super::*;

/// A worker of one slot serving `method` with a handler that counts its runs and echoes.
fn counting_echo(prefix: &str, method: &str, runs: &Arc<AtomicUsize>) -> WorkerBuilder {
    let runs = Arc::clone(runs);
    Worker::builder(amqp_url())
        .queue_prefix(prefix)
        .concurrency(1)
        .method(method, move |request: Request| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move { Ok(request.params) }
        })
}

#[tokio::test]
async fn job_past_its_deadline_is_acked_without_running_or_reply() -> Result<()> {
    let prefix = unique_prefix("expired");
    let _cleanup = Cleanup::on_drop(&prefix, &["echo"]);
    let runs = Arc::new(AtomicUsize::new(0));
    let (run, shutdown) = start(counting_echo(&prefix, "echo", &runs)).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    let past = SystemTime::now() - Duration::from_secs(1);
    bridge
        .publish_due("echo", "job-expired", &json!("late"), past)
        .await?;
    // One slot, one prefetch: this job is delivered only once the expired one was acked, and a
    // reply to that one would have come first.
    bridge
        .publish("echo", "job-after", &json!("on time"))
        .await?;
    let reply = bridge.next_reply().await?;
    assert_eq!(reply.correlation_id, Some("job-after".into()));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "only job-after ran");

    stop(run, shutdown).await?;
    assert_eq!(
        bridge.ready_jobs("echo").await?,
        0,
        "the expired job was acked"
    );
    Ok(())
}

#[tokio::test]
async fn deadline_passing_while_running_cancels_the_job_and_no_reply_is_sent() -> Result<()> {
    let prefix = unique_prefix("deadline");
    let _cleanup = Cleanup::on_drop(&prefix, &["wait"]);
    let saw = Arc::new(std::sync::Mutex::new(None::<Option<SystemTime>>));
    let on_run = Arc::clone(&saw);
    let builder = Worker::builder(amqp_url())
        .queue_prefix(&prefix)
        .concurrency(1)
        .method("wait", move |request: Request| {
            let saw = Arc::clone(&on_run);
            async move {
                if request.params == json!("forever") {
                    tokio::time::timeout(WAIT, request.cancelled())
                        .await
                        .map_err(|_| RpcError::internal("never cancelled"))?;
                    if let Ok(mut saw) = saw.lock() {
                        *saw = Some(request.deadline);
                    }
                    return Err(RpcError::cancelled());
                }
                Ok(request.params)
            }
        });
    let (run, shutdown) = start(builder).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    let deadline = SystemTime::now() + Duration::from_millis(300);
    bridge
        .publish_due("wait", "job-slow", &json!("forever"), deadline)
        .await?;
    bridge.publish("wait", "job-after", &json!("next")).await?;
    let reply = bridge.next_reply().await?;
    assert_eq!(reply.correlation_id, Some("job-after".into()));
    let seen = saw.lock().ok().and_then(|saw| *saw);
    let seen = seen.context("the handler was not cancelled")?;
    let expected_ms = deadline.duration_since(SystemTime::UNIX_EPOCH)?.as_millis();
    let seen_ms = seen
        .context("the request had no deadline")?
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_millis();
    assert_eq!(
        seen_ms, expected_ms,
        "the request carries the job's deadline"
    );

    stop(run, shutdown).await?;
    assert_eq!(bridge.ready_jobs("wait").await?, 0);
    Ok(())
}

/// A one-slot worker whose `hold` handler, for params `"hold"`, announces its start and then
/// waits to be cancelled (for at most [`WAIT`]); any other params are echoed. Every run's job
/// id is counted in `runs`.
fn holding_worker(
    prefix: &str,
    started: &Arc<Notify>,
    cancelled: &Arc<AtomicBool>,
    runs: &Arc<AtomicUsize>,
) -> WorkerBuilder {
    let (started, cancelled, runs) = (Arc::clone(started), Arc::clone(cancelled), Arc::clone(runs));
    Worker::builder(amqp_url())
        .queue_prefix(prefix)
        .concurrency(1)
        .method("hold", move |request: Request| {
            let (started, cancelled) = (Arc::clone(&started), Arc::clone(&cancelled));
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                if request.params != json!("hold") {
                    return Ok(request.params);
                }
                started.notify_one();
                tokio::select! {
                    () = request.cancelled() => {
                        cancelled.store(true, Ordering::SeqCst);
                        Err(RpcError::cancelled())
                    }
                    () = tokio::time::sleep(WAIT) => Ok(json!("not cancelled")),
                }
            }
        })
}

#[tokio::test]
async fn cancellation_broadcast_stops_a_running_job_and_no_reply_is_sent() -> Result<()> {
    let prefix = unique_prefix("cancel-running");
    let _cleanup = Cleanup::on_drop(&prefix, &["hold"]);
    let started = Arc::new(Notify::new());
    let cancelled = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let (run, shutdown) = start(holding_worker(&prefix, &started, &cancelled, &runs)).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    bridge.publish("hold", "job-held", &json!("hold")).await?;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .context("handler never started")?;
    let asked = tokio::time::Instant::now();
    bridge.cancel("job-held", "cancelled").await?;
    bridge.publish("hold", "job-after", &json!("next")).await?;
    // One slot: job-after runs once job-held has ended, and a reply to job-held would come first.
    let reply = bridge.next_reply().await?;
    assert_eq!(reply.correlation_id, Some("job-after".into()));
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the handler saw its cancellation"
    );
    assert!(asked.elapsed() < WAIT, "the handler stopped early");

    stop(run, shutdown).await?;
    assert_eq!(
        bridge.ready_jobs("hold").await?,
        0,
        "the cancelled job was acked"
    );
    Ok(())
}

#[tokio::test]
async fn job_cancelled_before_it_is_delivered_is_acked_without_running() -> Result<()> {
    let prefix = unique_prefix("cancel-queued");
    let _cleanup = Cleanup::on_drop(&prefix, &["hold"]);
    let started = Arc::new(Notify::new());
    let cancelled = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let (run, shutdown) = start(holding_worker(&prefix, &started, &cancelled, &runs)).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    bridge
        .publish("hold", "job-blocker", &json!("hold"))
        .await?;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .context("handler never started")?;
    // Held in the queue: the worker's one slot (and prefetch) is taken by the blocker.
    bridge
        .publish("hold", "job-doomed", &json!("doomed"))
        .await?;
    // Cancellations reach the worker in order, so once the blocker has seen its own, the
    // worker has heard of the doomed job's too.
    bridge.cancel("job-doomed", "timeout").await?;
    bridge.cancel("job-blocker", "cancelled").await?;
    bridge.publish("hold", "job-after", &json!("next")).await?;

    let reply = bridge.next_reply().await?;
    assert_eq!(reply.correlation_id, Some("job-after".into()));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the blocker and job-after ran, the doomed job did not"
    );

    stop(run, shutdown).await?;
    assert_eq!(
        bridge.ready_jobs("hold").await?,
        0,
        "the doomed job was acked"
    );
    Ok(())
}

#[tokio::test]
async fn cancellations_still_arrive_after_a_reconnect() -> Result<()> {
    let prefix = unique_prefix("cancel-reconnect");
    let _cleanup = Cleanup::on_drop(&prefix, &["hold"]);
    let started = Arc::new(Notify::new());
    let cancelled = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let (run, shutdown, mut state) =
        start_watched(holding_worker(&prefix, &started, &cancelled, &runs)).await?;
    let mut bridge = Bridge::connect(&prefix).await?;

    // Deleting its queue makes the worker open a new session, with a new cancellation queue.
    bridge.delete_queues(&["hold"]).await?;
    tokio::time::timeout(WAIT, state.changed())
        .await
        .context("worker did not notice its consumer was cancelled")??;
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == WorkerState::Ready))
        .await
        .context("worker did not reconnect in time")??;

    bridge.publish("hold", "job-held", &json!("hold")).await?;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .context("handler never started")?;
    bridge.cancel("job-held", "cancelled").await?;
    bridge.publish("hold", "job-after", &json!("next")).await?;
    let reply = bridge.next_reply().await?;
    assert_eq!(reply.correlation_id, Some("job-after".into()));
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the handler saw its cancellation"
    );

    stop(run, shutdown).await?;
    Ok(())
}

#[tokio::test]
async fn cancellation_during_shutdown_still_stops_the_job_in_flight() -> Result<()> {
    let prefix = unique_prefix("cancel-drain");
    let _cleanup = Cleanup::on_drop(&prefix, &["hold"]);
    let started = Arc::new(Notify::new());
    let cancelled = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let builder = holding_worker(&prefix, &started, &cancelled, &runs).shutdown_grace(WAIT * 2);
    let (run, shutdown) = start(builder).await?;
    let bridge = Bridge::connect(&prefix).await?;

    bridge.publish("hold", "job-held", &json!("hold")).await?;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .context("handler never started")?;
    shutdown.cancel();
    let asked = tokio::time::Instant::now();
    bridge.cancel("job-held", "cancelled").await?;
    tokio::time::timeout(WAIT, run)
        .await
        .context("worker did not stop in time")???;
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the handler saw its cancellation"
    );
    assert!(
        asked.elapsed() < WAIT,
        "the drain did not wait for the handler's own end"
    );
    assert_eq!(
        bridge.ready_jobs("hold").await?,
        0,
        "the cancelled job was acked"
    );
    Ok(())
}
