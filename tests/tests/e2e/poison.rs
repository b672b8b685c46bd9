//! Poison jobs: a job that kills every worker taking it is dead-lettered once its quorum
//! queue's delivery limit is spent, and its caller gets -32004 "job failed" with the number of
//! deliveries, instead of the job going round the workers forever.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::future::select_all;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wsmq_tests::binaries::binaries;
use wsmq_tests::rpc::{self, error_code, error_message};
use wsmq_tests::{Service, System, broker};

/// The workers' `--delivery-limit`.
const DELIVERY_LIMIT: u32 = 2;
/// How often RabbitMQ 3.10 delivers a job from a quorum queue with `x-delivery-limit` 2 when
/// every delivery ends with the worker's death: measured, not assumed (the job is dead-lettered
/// when it is returned for the third time, i.e. the limit + 1).
const DELIVERIES: usize = 3;
/// Demo workers serving the queues at any time; each one that dies is restarted, as systemd's
/// `Restart=` would.
const WORKERS: usize = 3;
/// Bound on the poison call's answer: three deliveries, each killing a worker, then the relay.
/// It takes tens of milliseconds on an idle machine; this allows for a loaded one.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// The demo worker's flags for quorum queues that dead-letter after [`DELIVERY_LIMIT`]
/// returns, with the `crash` method.
#[derive(Clone)]
struct WorkerArgs {
    amqp_url: String,
    prefix: String,
}

impl WorkerArgs {
    /// Starts demo worker number `n` and waits until it consumes.
    async fn start(&self, n: usize) -> Result<Service> {
        let bins = binaries().await?;
        let limit = DELIVERY_LIMIT.to_string();
        let args = [
            "--amqp",
            &self.amqp_url,
            "--queue-prefix",
            &self.prefix,
            "--concurrency",
            "4",
            "--log-format",
            "json",
            "--queue-type",
            "quorum",
            "--delivery-limit",
            &limit,
            "--allow-crash",
        ];
        let no_env: &[(&str, &str)] = &[];
        let mut worker = Service::spawn(&format!("worker-{n}"), &bins.worker, args, no_env)?;
        worker
            .wait_for_log("a message containing \"worker ready\"", |l| {
                l.message().is_some_and(|m| m.contains("worker ready"))
            })
            .await?;
        Ok(worker)
    }
}

/// Keeps [`WORKERS`] demo workers running: a task that restarts each worker that exits and
/// reports every exit status.
struct Restarter {
    stop: CancellationToken,
    exits: watch::Receiver<Vec<ExitStatus>>,
    task: JoinHandle<Result<()>>,
}

impl Restarter {
    async fn start(system: &System) -> Result<Self> {
        let args = WorkerArgs {
            amqp_url: system.amqp_url().to_owned(),
            prefix: system.prefix().to_owned(),
        };
        let mut workers = Vec::with_capacity(WORKERS);
        for n in 1..=WORKERS {
            workers.push(args.start(n).await?);
        }
        let stop = CancellationToken::new();
        let (exits_tx, exits) = watch::channel(Vec::new());
        let task = tokio::spawn(restart_on_exit(args, workers, exits_tx, stop.clone()));
        Ok(Self { stop, exits, task })
    }

    /// Waits (up to `limit`) until at least `n` workers have exited; returns every exit so far.
    async fn wait_exits(&mut self, n: usize, limit: Duration) -> Result<Vec<ExitStatus>> {
        let seen = tokio::time::timeout(limit, self.exits.wait_for(|exits| exits.len() >= n))
            .await
            .with_context(|| format!("fewer than {n} workers exited within {limit:?}"))?
            .context("the restarter task is gone")?
            .clone();
        Ok(seen)
    }

    /// Every exit so far.
    fn exits(&self) -> Vec<ExitStatus> {
        self.exits.borrow().clone()
    }

    /// Stops restarting and terminates the running workers (SIGTERM).
    async fn stop(self) -> Result<()> {
        self.stop.cancel();
        self.task.await.context("the restarter task panicked")?
    }
}

async fn restart_on_exit(
    args: WorkerArgs,
    mut workers: Vec<Service>,
    exits: watch::Sender<Vec<ExitStatus>>,
    stop: CancellationToken,
) -> Result<()> {
    let mut started = workers.len();
    loop {
        let (status, index) = {
            let waits = workers.iter_mut().map(|w| Box::pin(w.exited()));
            tokio::select! {
                () = stop.cancelled() => break,
                (status, index, _) = select_all(waits) => (status?, index),
            }
        };
        started += 1;
        eprintln!(
            "[restarter] [{}] exited ({status}); starting [worker-{started}]",
            workers[index].name()
        );
        exits.send_modify(|all| all.push(status));
        workers[index] = args.start(started).await?;
    }
    for worker in workers {
        worker.terminate().await?;
    }
    Ok(())
}

fn aborted(status: &ExitStatus) -> bool {
    status.signal() == Some(Signal::SIGABRT as i32)
}

#[tokio::test]
async fn poison_job_is_dead_lettered_after_its_delivery_limit_and_its_caller_gets_job_failed() {
    let mut system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("system starts");
    system.track_queue(system.queue_for("crash"));
    // Declared after the system, so that on a failure it is dropped (its workers killed) before
    // the system deletes the queues they would redeclare.
    let mut workers = Restarter::start(&system)
        .await
        .expect("three quorum-queue workers start");
    let mut caller = system.client().await.expect("caller connects");
    let mut other = system.client().await.expect("other client connects");

    let poison = rpc::request_with_options(1, "crash", json!({}), json!({"timeout_ms": 60_000}));
    caller.send_json(&poison).await.expect("poison call sent");

    // Meanwhile, with workers dying under the poison job, another client is served. Not before
    // the second death: a crash returns every job its worker held, and so may a worker that died
    // a moment ago and whose consumer RabbitMQ has not dropped yet, so an echo sent after the
    // first death could itself be returned three times, dead-lettered, and answered -32004 (it
    // happened). From the second death on, at most two returns remain for it, within the limit.
    let first = workers
        .wait_exits(2, ANSWER_WITHIN)
        .await
        .expect("the poison job kills two workers");
    assert!(first.iter().all(aborted), "the workers aborted: {first:?}");
    let payload = json!({"meanwhile": "poison"});
    let response = other
        .call("echo", payload.clone())
        .await
        .expect("echo answered while the poison job goes round");
    assert_eq!(rpc::result(&response), Some(&payload), "{response}");

    let answer = caller
        .recv_json_within(ANSWER_WITHIN)
        .await
        .expect("the poison call is answered, not left to its deadline");
    assert_eq!(answer["id"], json!(1), "{answer}");
    assert_eq!(error_code(&answer), Some(-32004), "{answer}");
    assert_eq!(error_message(&answer), Some("job failed"), "{answer}");
    assert_eq!(
        answer["error"]["data"],
        json!({"attempts": DELIVERIES, "method": "crash", "reason": "delivery_limit"}),
        "{answer}"
    );

    // Each delivery killed one worker: as many aborts as the attempts reported.
    let exits = workers
        .wait_exits(DELIVERIES, ANSWER_WITHIN)
        .await
        .expect("every delivery killed a worker");
    assert!(exits.iter().all(aborted), "{exits:?}");
    system
        .bridge()
        .expect("bridge runs")
        .wait_for_log("the bridge's dead-letter relay line", |l| {
            l.message() == Some("dead job: its caller was answered -32004 job failed")
                && l.field("method") == Some(&Value::from("crash"))
        })
        .await
        .expect("the bridge relayed the dead job");

    // No loop: the restarted workers serve both clients, and nothing kills them any more.
    for client in [&mut caller, &mut other] {
        client
            .expect_no_stray_frames()
            .await
            .expect("the connection is open and has nothing pending");
    }
    let conn = broker::connect(system.amqp_url())
        .await
        .expect("broker connection");
    for queue in [system.queue_for("crash"), system.dead_letter_name()] {
        let depth = broker::queue_depth(&conn, &queue)
            .await
            .expect("queue inspected");
        assert_eq!(depth, 0, "{queue} is empty");
    }
    let _ = conn.close(200, "done".into()).await;
    let exits = workers.exits();
    assert_eq!(exits.len(), DELIVERIES, "no worker died after: {exits:?}");

    workers.stop().await.expect("workers stop on SIGTERM");
    caller.close().await.expect("caller closes");
    other.close().await.expect("other client closes");
    system.cleanup().await;
}
