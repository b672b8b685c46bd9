//! The SDK against the real RabbitMQ (`WSMQ_AMQP_URL`, default the local broker): jobs and
//! cancellations are published the way the bridge does, and the replies and the queues are
//! checked.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use serde_json::{Value, json};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use wsmq_worker::{QueueType, Request, RpcError, Worker, WorkerBuilder, WorkerError, WorkerState};

/// Bound on every wait for the broker or the worker.
const WAIT: Duration = Duration::from_secs(10);

fn amqp_url() -> String {
    std::env::var("WSMQ_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A queue prefix no other test (or test run) uses.
fn unique_prefix(test: &str) -> String {
    format!("sdktest.{}.{test}.", std::process::id())
}

/// A reply as the bridge would read it.
#[derive(Debug)]
struct Reply {
    correlation_id: Option<ShortString>,
    status: Option<AMQPValue>,
    content_type: Option<ShortString>,
    delivery_mode: Option<u8>,
    body: Value,
}

/// The bridge's side: publishes jobs (with confirms, so a published job is in its queue) and
/// cancellations, and reads replies from its own exclusive queue.
struct Bridge {
    connection: Connection,
    channel: Channel,
    reply_queue: ShortString,
    replies: Consumer,
    prefix: String,
}

impl Bridge {
    async fn connect(prefix: &str) -> Result<Self> {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .context("connecting the test bridge")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // As the bridge does, with the settings the worker uses too.
        channel
            .exchange_declare(
                format!("{prefix}wsmq.cancel").into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let reply_queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await?
            .name()
            .clone();
        let replies = channel
            .basic_consume(
                reply_queue.clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            connection,
            channel,
            reply_queue,
            replies,
            prefix: prefix.to_owned(),
        })
    }

    /// Publishes a job for `method` with `body`; `reply_to: false` leaves it unanswerable.
    async fn publish_raw(
        &self,
        method: &str,
        job_id: &str,
        body: &[u8],
        reply_to: bool,
    ) -> Result<()> {
        self.publish_with(method, job_id, body, reply_to, |properties| properties)
            .await
    }

    /// [`Bridge::publish_raw`], with the job's properties passed through `amend` (for a
    /// priority or a deadline), and waiting until the broker confirmed the job.
    async fn publish_with(
        &self,
        method: &str,
        job_id: &str,
        body: &[u8],
        reply_to: bool,
        amend: impl FnOnce(BasicProperties) -> BasicProperties,
    ) -> Result<()> {
        let mut properties = BasicProperties::default()
            .with_correlation_id(job_id.into())
            .with_message_id(job_id.into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if reply_to {
            properties = properties.with_reply_to(self.reply_queue.clone());
        }
        let queue = format!("{}{method}", self.prefix);
        let confirmation = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                amend(properties),
            )
            .await?
            .await?;
        ensure!(confirmation.is_ack(), "job {job_id} not confirmed");
        Ok(())
    }

    /// Publishes a job whose `wsmq-deadline` is `deadline`, as the bridge does.
    async fn publish_due(
        &self,
        method: &str,
        job_id: &str,
        params: &Value,
        deadline: SystemTime,
    ) -> Result<()> {
        let ms = deadline.duration_since(SystemTime::UNIX_EPOCH)?.as_millis();
        let mut headers = FieldTable::default();
        headers.insert(
            "wsmq-deadline".into(),
            AMQPValue::LongLongInt(i64::try_from(ms)?),
        );
        let body = serde_json::to_vec(params)?;
        self.publish_with(method, job_id, &body, true, |properties| {
            properties.with_headers(headers)
        })
        .await
    }

    /// Publishes a job with the AMQP `priority` property.
    async fn publish_prioritised(&self, method: &str, job_id: &str, priority: u8) -> Result<()> {
        self.publish_with(method, job_id, b"null", true, |properties| {
            properties.with_priority(priority)
        })
        .await
    }

    /// Broadcasts the cancellation of `job_id` on `<prefix>wsmq.cancel`, as the bridge does.
    async fn cancel(&self, job_id: &str, reason: &str) -> Result<()> {
        let mut headers = FieldTable::default();
        headers.insert("wsmq-reason".into(), AMQPValue::LongString(reason.into()));
        let properties = BasicProperties::default()
            .with_correlation_id(job_id.into())
            .with_headers(headers);
        let confirmation = self
            .channel
            .basic_publish(
                format!("{}wsmq.cancel", self.prefix).into(),
                "".into(),
                BasicPublishOptions::default(),
                b"",
                properties,
            )
            .await?
            .await?;
        ensure!(
            confirmation.is_ack(),
            "cancellation of {job_id} not confirmed"
        );
        Ok(())
    }

    async fn publish(&self, method: &str, job_id: &str, params: &Value) -> Result<()> {
        self.publish_raw(method, job_id, &serde_json::to_vec(params)?, true)
            .await
    }

    async fn next_reply(&mut self) -> Result<Reply> {
        let delivery = tokio::time::timeout(WAIT, self.replies.next())
            .await
            .context("no reply in time")?
            .context("reply consumer ended")??;
        delivery.ack(BasicAckOptions::default()).await?;
        let properties = &delivery.properties;
        Ok(Reply {
            correlation_id: properties.correlation_id().clone(),
            status: properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("wsmq-status").cloned()),
            content_type: properties.content_type().clone(),
            delivery_mode: *properties.delivery_mode(),
            body: serde_json::from_slice(&delivery.data)?,
        })
    }

    /// Jobs ready in the queue of `method` (not counting those delivered and unacked).
    async fn ready_jobs(&self, method: &str) -> Result<u32> {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = format!("{}{method}", self.prefix);
        let queue = self
            .channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await?;
        Ok(queue.message_count())
    }

    /// Declares the queue of `method` durable with `arguments`, on a channel of its own (a
    /// refusal closes the channel); `Ok` says the queue has exactly these arguments.
    async fn redeclare(&self, method: &str, arguments: FieldTable) -> Result<()> {
        let channel = self.connection.create_channel().await?;
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let queue = format!("{}{method}", self.prefix);
        channel
            .queue_declare(queue.into(), options, arguments)
            .await?;
        Ok(())
    }

    async fn delete_queues(&self, methods: &[&str]) -> Result<()> {
        for method in methods {
            let queue = format!("{}{method}", self.prefix);
            self.channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Deletes the queues of `methods` and the test's cancellation exchange.
    async fn clean_up(&self, methods: &[&str]) -> Result<()> {
        self.delete_queues(methods).await?;
        self.channel
            .exchange_delete(
                format!("{}wsmq.cancel", self.prefix).into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
        Ok(())
    }
}

/// Starts the worker on its own task and waits until it consumes.
async fn start(
    builder: WorkerBuilder,
) -> Result<(JoinHandle<Result<(), WorkerError>>, CancellationToken)> {
    let (run, shutdown, _state) = start_watched(builder).await?;
    Ok((run, shutdown))
}

/// [`start`], also returning the worker's state, already seen as `Ready`.
async fn start_watched(
    builder: WorkerBuilder,
) -> Result<(
    JoinHandle<Result<(), WorkerError>>,
    CancellationToken,
    watch::Receiver<WorkerState>,
)> {
    let worker = builder.build()?;
    let mut state = worker.state();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(worker.run(shutdown.clone()));
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == WorkerState::Ready))
        .await
        .context("worker not ready in time")??;
    Ok((run, shutdown, state))
}

async fn stop(run: JoinHandle<Result<(), WorkerError>>, shutdown: CancellationToken) -> Result<()> {
    shutdown.cancel();
    tokio::time::timeout(WAIT, run)
        .await
        .context("worker did not stop in time")???;
    Ok(())
}

fn status(text: &str) -> Option<AMQPValue> {
    Some(AMQPValue::LongString(text.into()))
}

#[tokio::test]
async fn replies_follow_the_contract_and_jobs_are_acked() -> Result<()> {
    let prefix = unique_prefix("contract");
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
    bridge.clean_up(&["echo", "fail"]).await
}

#[tokio::test]
async fn job_in_flight_at_shutdown_still_replies_and_no_new_job_starts() -> Result<()> {
    let prefix = unique_prefix("drain");
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
    bridge.clean_up(&["slow"]).await
}

#[tokio::test]
async fn panicking_handler_is_answered_with_an_internal_error() -> Result<()> {
    let prefix = unique_prefix("panic");
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
    bridge.clean_up(&["boom"]).await
}

#[tokio::test]
async fn no_more_handlers_run_at_once_than_the_concurrency() -> Result<()> {
    const CONCURRENCY: u16 = 2;
    const JOBS: usize = 6;
    let prefix = unique_prefix("concurrency");
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
    bridge.clean_up(&["work"]).await
}

#[tokio::test]
async fn worker_reconnects_and_redeclares_after_its_queue_is_deleted() -> Result<()> {
    let prefix = unique_prefix("redeclare");
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
    bridge.clean_up(&["echo"]).await
}

#[tokio::test]
async fn progress_reports_reach_reply_to_in_order_before_the_result() -> Result<()> {
    const STEPS: u64 = 20;
    let prefix = unique_prefix("progress");
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
    bridge.clean_up(&["steps"]).await
}

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
    bridge.clean_up(&["echo"]).await
}

#[tokio::test]
async fn deadline_passing_while_running_cancels_the_job_and_no_reply_is_sent() -> Result<()> {
    let prefix = unique_prefix("deadline");
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
    bridge.clean_up(&["wait"]).await
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
    bridge.clean_up(&["hold"]).await
}

#[tokio::test]
async fn job_cancelled_before_it_is_delivered_is_acked_without_running() -> Result<()> {
    let prefix = unique_prefix("cancel-queued");
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
    bridge.clean_up(&["hold"]).await
}

#[tokio::test]
async fn method_queues_are_declared_with_x_max_priority_9_unless_disabled() -> Result<()> {
    let prefix = unique_prefix("max-priority");
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
    let builder = Worker::builder(amqp_url())
        .queue_prefix(&plain_prefix)
        .max_priority(None)
        .method("echo", |request: Request| async move { Ok(request.params) });
    let (run, shutdown) = start(builder).await?;
    let plain = Bridge::connect(&plain_prefix).await?;
    stop(run, shutdown).await?;
    plain.redeclare("echo", FieldTable::default()).await?;

    plain.clean_up(&["echo"]).await?;
    bridge.clean_up(&["echo"]).await
}

#[tokio::test]
async fn later_high_priority_job_runs_before_earlier_low_priority_ones() -> Result<()> {
    let prefix = unique_prefix("priority");
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
    bridge.clean_up(&["work"]).await
}

#[tokio::test]
async fn method_concurrency_caps_one_method_below_the_worker_concurrency() -> Result<()> {
    const JOBS: usize = 4;
    let prefix = unique_prefix("method-concurrency");
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
    bridge.clean_up(&["capped"]).await
}

#[tokio::test]
async fn cancellations_still_arrive_after_a_reconnect() -> Result<()> {
    let prefix = unique_prefix("cancel-reconnect");
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
    bridge.clean_up(&["hold"]).await
}

#[tokio::test]
async fn cancellation_during_shutdown_still_stops_the_job_in_flight() -> Result<()> {
    let prefix = unique_prefix("cancel-drain");
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
    bridge.clean_up(&["hold"]).await
}

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

    bridge.clean_up(&["echo"]).await?;
    delete_dead_exchange(&bridge).await
}

#[tokio::test]
async fn job_returned_past_the_delivery_limit_is_dead_lettered_with_the_limit_in_its_routing_key()
-> Result<()> {
    let prefix = unique_prefix("quorum-dead-letter");
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

    bridge.clean_up(&["echo"]).await?;
    delete_dead_exchange(&bridge).await
}
