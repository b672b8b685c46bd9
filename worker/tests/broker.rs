//! The SDK against the real RabbitMQ (`WSMQ_AMQP_URL`, default the local broker): jobs are
//! published the way the bridge does, and the replies and the queues are checked.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use serde_json::{Value, json};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use wsmq_worker::{Request, RpcError, Worker, WorkerBuilder, WorkerError, WorkerState};

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

/// The bridge's side: publishes jobs and reads replies from its own exclusive queue.
struct Bridge {
    _connection: Connection,
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
            _connection: connection,
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
        let mut properties = BasicProperties::default()
            .with_correlation_id(job_id.into())
            .with_message_id(job_id.into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if reply_to {
            properties = properties.with_reply_to(self.reply_queue.clone());
        }
        let queue = format!("{}{method}", self.prefix);
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?;
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

    async fn delete_queues(&self, methods: &[&str]) -> Result<()> {
        for method in methods {
            let queue = format!("{}{method}", self.prefix);
            self.channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
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
    bridge.delete_queues(&["echo", "fail"]).await
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
    bridge.delete_queues(&["slow"]).await
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
    bridge.delete_queues(&["boom"]).await
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
    bridge.delete_queues(&["work"]).await
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
    bridge.delete_queues(&["echo"]).await
}
