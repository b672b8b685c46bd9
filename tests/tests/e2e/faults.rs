//! Fault injection: "nothing lost, nobody dropped", counted.
//!
//! Every test makes its calls through a [`Ledger`]: each call has an id no other call uses and
//! the result only it may get back, and at the end every call must have been answered exactly
//! once, with its own result, nothing else may have arrived, and no websocket may have closed
//! unless the test closed it. No call may get -32000 either: calls made while the bridge or
//! RabbitMQ is away are held and sent when it is back, and -32000 is only for a call past
//! `--max-held-calls` or its deadline, which the tests' load never reaches.
//!
//! Tests named `serial_...` stop RabbitMQ, which every test shares: `scripts/test` runs them
//! on their own, one at a time, after the rest of the suite, with `WSMQ_SERIAL_TESTS=1`;
//! without it they skip themselves ([`wsmq_tests::serial::alone`]). To run them without
//! disturbing anyone else on the machine, point them at a private node: `WSMQ_AMQP_URL` (its
//! URL) and `WSMQ_RABBITMQCTL` (a script running `rabbitmqctl -n <node> "$@"`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use nix::sys::signal::Signal;
use serde_json::json;
use wsmq_tests::ledger::{Ledger, Tally};
use wsmq_tests::load::{self, Load, LoadSpec};
use wsmq_tests::rabbitmq::{self, BrokerOutage};
use wsmq_tests::{
    FakeWorker, HEALTH_POLL_INTERVAL, HEALTH_TIMEOUT, Incoming, Refusal, System, WsClient,
};

/// How long a test's load runs before and after its fault.
const LOAD_BEFORE_FAULT: Duration = Duration::from_millis(1500);
const LOAD_AFTER_FAULT: Duration = Duration::from_millis(2000);

/// Load clients per gateway in the load tests.
const LOAD_CLIENTS: usize = 8;

/// How long the bridge stays dead before it is restarted.
const BRIDGE_DOWN_FOR: Duration = Duration::from_secs(1);

/// How long RabbitMQ's application stays stopped.
const BROKER_DOWN_FOR: Duration = Duration::from_secs(2);

/// How long `/healthz` may take to say 200 again after RabbitMQ restarts: the bridge
/// reconnects with a capped backoff, so this is several of its steps.
const BROKER_RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// A `sleep` long enough to be in flight while a test acts: it must outlast a few
/// `rabbitmqctl` polls (each boots an Erlang VM: a second or more when the suite loads both
/// cores) or the gateway's shutdown steps.
const LONG_SLEEP_MS: u64 = 4000;

/// The sleeps the killed-worker test watches with `rabbitmqctl list_queues`, which lists every
/// queue of every test running at once: with the whole suite running, 4 s let both polls
/// that bracket the window miss it. Redelivered, it still ends well within [`ANSWERS_LIMIT`].
const KILLED_WORKER_SLEEP_MS: u64 = 8000;

/// How long a handful of calls may take to be answered once nothing is wrong any more
/// (including a job redelivered after its worker died, which then runs again).
const ANSWERS_LIMIT: Duration = Duration::from_secs(20);

/// Load clients labelled `<label><n>` on `addr`.
fn targets(addr: SocketAddr, label: &str, n: usize) -> Vec<(SocketAddr, String)> {
    (0..n).map(|i| (addr, format!("{label}{i}-"))).collect()
}

/// Prints a test's counts where nextest shows them (stderr; `--no-capture` to see them on a
/// pass).
fn report(test: &str, tally: &Tally) {
    eprintln!("[{test}] counts:\n{tally}");
}

/// The deadline of the call [`HeldCall`] makes during a fault.
const HELD_CALL_TIMEOUT_MS: u64 = 120_000;

/// How long that call may take to be answered once the fault is over: the workers reconnect too
/// (backoff up to 5 s), so as long as the load clients' settle time.
const HELD_ANSWER_LIMIT: Duration = Duration::from_secs(40);

/// One call made while a fault is on, on a connection of its own, that the gateway must hold:
/// nothing may come back for it while the fault lasts, then its own result once it is over.
/// (The load alone may make no new call during a short outage: its clients' windows are full
/// of calls in flight, which are sent again rather than held.)
struct HeldCall {
    client: WsClient,
    ledger: Ledger,
}

impl HeldCall {
    /// Connects before the fault (the gateway itself stays up).
    async fn connect(system: &System, label: &str) -> Self {
        Self {
            client: system.client().await.expect("client connects"),
            ledger: Ledger::new(label),
        }
    }

    /// Sends the call (once the gateway knows of the fault), then watches the connection for
    /// `down_for`, the time the test keeps the fault on: an answer then, -32000 included, is a
    /// refusal, not a hold.
    async fn send_during_the_fault(&mut self, down_for: Duration) {
        let mut call = self.ledger.echo();
        // A deadline no restart on a loaded machine reaches: its -32000 would then be the
        // documented one, at the deadline, not a refusal.
        call["wsmq"] = json!({ "timeout_ms": HELD_CALL_TIMEOUT_MS });
        self.client
            .send_json(&call)
            .await
            .expect("the websocket is open during the fault");
        if let Some(frame) = self.client.try_next_incoming(down_for).await {
            panic!("a call made during the fault was answered before it ended: {frame:?}");
        }
    }

    /// Once the fault is over: the call is answered once, with its own result.
    async fn expect_answered(mut self, test: &str) {
        assert!(
            load::collect(&mut self.client, &mut self.ledger, HELD_ANSWER_LIMIT).await,
            "the websocket stays open"
        );
        assert!(
            load::probe(&mut self.client, &mut self.ledger).await,
            "the websocket stays open"
        );
        let tally = self.ledger.finish();
        report(test, &tally);
        tally
            .check(false)
            .expect("the call held during the fault is answered once, with its own result");
        self.client.close().await.expect("client closes");
    }
}

/// Polls `rabbitmqctl` until `queue` has `ready` ready and `unacked` unacknowledged messages,
/// within [`HEALTH_TIMEOUT`].
async fn wait_queue_counts(queue: &str, ready: u64, unacked: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + HEALTH_TIMEOUT;
    loop {
        let last = match rabbitmq::queue_counts(queue).await {
            Ok(counts) if counts == (ready, unacked) => return Ok(()),
            Ok((r, u)) => format!("{r} ready, {u} unacknowledged"),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{queue} did not reach {ready} ready / {unacked} unacknowledged within \
                 {HEALTH_TIMEOUT:?}; last: {last}"
            );
        }
        tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
    }
}

#[tokio::test]
async fn worker_killed_mid_job_is_redelivered_and_answered_once() {
    // Two workers that run one job at a time (and so each take one `sleep` at a time).
    let mut system = System::builder()
        .workers(2)
        .worker_concurrency(1)
        .start()
        .await
        .expect("system starts");
    let mut client = system.client().await.expect("client connects");
    let mut ledger = Ledger::new("killed-worker-");

    // Two long sleeps: one on each worker, so whichever is killed holds one.
    for _ in 0..2 {
        let call = ledger.sleep(KILLED_WORKER_SLEEP_MS);
        client.send_json(&call).await.expect("sends a sleep");
    }
    wait_queue_counts(&system.queue_for("sleep"), 0, 2)
        .await
        .expect("each worker has taken one sleep");
    // A few more behind them, queued while both workers are busy.
    for call in [ledger.echo(), ledger.sleep(100), ledger.echo()] {
        client.send_json(&call).await.expect("sends a call");
    }

    system.kill_worker(0).await.expect("kill -9 a worker");
    system
        .start_worker(1)
        .await
        .expect("a replacement worker starts");

    let open = load::collect(&mut client, &mut ledger, ANSWERS_LIMIT).await;
    assert!(open, "the websocket stays open");
    assert!(
        load::probe(&mut client, &mut ledger).await,
        "the websocket stays open"
    );
    let tally = ledger.finish();
    report("worker_killed_mid_job", &tally);
    tally
        .check(false)
        .expect("every call answered once with its own result");
    client.close().await.expect("client closes");

    system.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_bridge_pairs_share_workers_and_each_result_returns_through_its_own_pair() {
    let mut system = System::builder()
        .workers(2)
        .start()
        .await
        .expect("system starts");
    let second = system.start_pair().await.expect("a second bridge+gateway");
    let mut clients = targets(system.pair_addr(0).expect("pair 0"), "pair0.", 3);
    clients.extend(targets(
        system.pair_addr(second).expect("pair 1"),
        "pair1.",
        3,
    ));

    let load = Load::start(&clients, &LoadSpec::default());
    tokio::time::sleep(LOAD_BEFORE_FAULT + LOAD_AFTER_FAULT).await;
    let tally = load.finish().await.expect("load clients run");
    report("two_pairs", &tally);
    tally
        .check(false)
        .expect("every call answered once, through its own gateway, with its own result");

    system.cleanup().await;
}

#[tokio::test]
async fn duplicate_reply_is_answered_once() {
    const METHOD: &str = "twice";
    let mut system = System::start().await.expect("system starts");
    let mut fake = FakeWorker::start(&mut system, METHOD, |_| None)
        .await
        .expect("fake worker starts");
    let mut client = system.client().await.expect("client connects");
    let mut ledger = Ledger::new("dup-");

    let call = ledger.call(METHOD, json!({"n": 1}), json!({"answer": 1}));
    client.send_json(&call).await.expect("sends");
    let job = fake
        .next_job()
        .await
        .expect("the job reaches the fake worker");
    // The same reply twice, as a redelivery after a crash would bring it.
    for _ in 0..2 {
        fake.send(&job, None, br#"{"answer":1}"#)
            .await
            .expect("reply published");
    }
    assert!(load::collect(&mut client, &mut ledger, ANSWERS_LIMIT).await);

    // The following call still works, and the duplicate, queued before its reply, would have
    // been read on the way.
    let call = ledger.call(METHOD, json!({"n": 2}), json!({"answer": 2}));
    client.send_json(&call).await.expect("sends");
    let job = fake.next_job().await.expect("the second job arrives");
    fake.send(&job, None, br#"{"answer":2}"#)
        .await
        .expect("reply published");
    assert!(load::collect(&mut client, &mut ledger, ANSWERS_LIMIT).await);
    assert!(load::probe(&mut client, &mut ledger).await);
    // The router took the duplicate before the second reply, which followed it on the reply
    // queue: it is counted by now.
    let duplicates = system
        .metric("wsmq_results_dropped_total{reason=\"duplicate\"}")
        .await
        .expect("metrics answer");
    assert_eq!(
        duplicates, 1.0,
        "the duplicate reply is dropped and counted"
    );

    let tally = ledger.finish();
    report("duplicate_reply", &tally);
    tally.check(false).expect("each call answered exactly once");
    client.close().await.expect("client closes");
    fake.stop().await;
    system.cleanup().await;
}

#[tokio::test]
async fn gateway_sigterm_drains_then_closes_with_1001() {
    let mut system = System::start().await.expect("system starts");
    let addr = system.gateway_addr().expect("gateway runs");
    let mut client = system.client().await.expect("client connects");
    let mut ledger = Ledger::new("drain-");

    let slow = ledger.sleep(LONG_SLEEP_MS);
    client.send_json(&slow).await.expect("sends the slow call");
    // An echo answered before the signal proves the gateway has read the slow call.
    let echo = ledger.echo();
    let echo_id = echo["id"].as_str().unwrap_or_default().to_owned();
    client.send_json(&echo).await.expect("sends");
    while !ledger.is_answered(&echo_id) {
        let frame = client
            .next_incoming(HEALTH_TIMEOUT)
            .await
            .expect("echo answered");
        ledger.record(&frame);
    }

    let mut gateway = system.take_gateway().expect("gateway runs");
    gateway.signal(Signal::SIGTERM).expect("SIGTERM sent");
    gateway
        .wait_for_message("SIGTERM: shutting down")
        .await
        .expect("the gateway takes the signal");
    // Once /readyz says it drains, a new connection gets HTTP 503; the one above is still
    // served.
    let (_, ready) = wsmq_tests::system::wait_json_at(
        addr,
        "/readyz",
        HEALTH_TIMEOUT,
        "draining",
        |status, body| status == 503 && body["draining"] == true,
    )
    .await
    .expect("/readyz says the gateway drains");
    assert_eq!(
        ready,
        json!({"ready": false, "bridge": "up", "broker": "up", "draining": true}),
        "/readyz while draining"
    );
    match wsmq_tests::WsClient::try_connect(addr, "/ws")
        .await
        .expect("handshake answered")
    {
        Err(Refusal::Status(503)) => {}
        Err(other) => panic!("expected HTTP 503 during the drain, got {other:?}"),
        Ok(_) => panic!("expected HTTP 503 during the drain, but the upgrade succeeded"),
    }

    // The call in flight is answered, then the socket is closed with 1001.
    let close = loop {
        let frame = client
            .next_incoming(HEALTH_TIMEOUT)
            .await
            .expect("the drain answers the call in flight, then closes");
        match frame {
            Incoming::Close(close) => break close,
            other => ledger.record(&other),
        }
    };
    let code = close.as_ref().map(|(code, _)| *code);
    assert_eq!(code, Some(1001), "close frame {close:?}");
    let tally = ledger.finish();
    report("gateway_sigterm_drain", &tally);
    tally
        .check(false)
        .expect("the call in flight is answered once, before the close");
    let status = gateway.wait_exit().await.expect("gateway exits");
    assert!(status.success(), "gateway exit status: {status}");

    system.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_killed_under_load_keeps_every_client() {
    let mut system = System::builder()
        .workers(2)
        .start()
        .await
        .expect("system starts");
    let clients = targets(
        system.gateway_addr().expect("gateway runs"),
        "bridge-kill.",
        LOAD_CLIENTS,
    );
    let mut held = HeldCall::connect(&system, "bridge-held-").await;
    let load = Load::start(&clients, &LoadSpec::default());
    tokio::time::sleep(LOAD_BEFORE_FAULT).await;

    system.kill_bridge().await.expect("kill -9 the bridge");
    system
        .wait_health("the bridge down", |status, body| {
            status == 503 && body["bridge"] == "down"
        })
        .await
        .expect("the gateway notices");
    held.send_during_the_fault(BRIDGE_DOWN_FOR).await;
    system.start_bridge().await.expect("the bridge restarts");
    system.wait_healthy().await.expect("healthy again");
    held.expect_answered("bridge_killed_held_call").await;
    tokio::time::sleep(LOAD_AFTER_FAULT).await;

    let tally = load.finish().await.expect("load clients run");
    report("bridge_killed_under_load", &tally);
    tally.check(false).expect(
        "every call answered once with its own result (held, never -32000), no socket closed",
    );

    system.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_connection_lost_under_load_answers_every_call_once() {
    // One worker serving `echo` and `sleep` at once: each method on its channel, the acks of
    // each batched. Its connection is closed by the broker mid-load (the rest of RabbitMQ stays
    // up): the jobs it held unacked are redelivered on its next connection, whose delivery tags
    // start again at 1.
    let mut system = System::builder()
        .workers(1)
        .start()
        .await
        .expect("system starts");
    let clients = targets(
        system.gateway_addr().expect("gateway runs"),
        "worker-conn.",
        LOAD_CLIENTS,
    );
    let load = Load::start(&clients, &LoadSpec::default());
    tokio::time::sleep(LOAD_BEFORE_FAULT).await;

    let name = system.worker_connection_name(0).expect("the worker runs");
    let closed = rabbitmq::close_connections_named(&name, "test: connection lost under load")
        .await
        .expect("rabbitmqctl close_connection");
    assert_eq!(closed, 1, "the worker's one connection is closed");
    let sessions = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&sessions);
    system
        .worker(0)
        .expect("the worker runs")
        .wait_for_log(
            "a second \"connected to the broker; consuming\"",
            move |line| {
                line.message() == Some("connected to the broker; consuming")
                    && seen.fetch_add(1, Ordering::SeqCst) + 1 == 2
            },
        )
        .await
        .expect("the worker reconnects");
    tokio::time::sleep(LOAD_AFTER_FAULT).await;

    let tally = load.finish().await.expect("load clients run");
    report("worker_connection_lost_under_load", &tally);
    tally
        .check(false)
        .expect("every call answered once with its own result, no socket closed");
    for method in ["echo", "sleep"] {
        wait_queue_counts(&system.queue_for(method), 0, 0)
            .await
            .expect("every job acked, none left behind");
    }
    system.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_rabbitmq_restart_under_load_loses_no_confirmed_call() {
    if !wsmq_tests::serial::alone() {
        return;
    }
    let system = System::builder()
        .workers(2)
        .start()
        .await
        .expect("system starts");
    let clients = targets(
        system.gateway_addr().expect("gateway runs"),
        "broker-restart.",
        LOAD_CLIENTS,
    );
    let mut held = HeldCall::connect(&system, "broker-held-").await;
    let load = Load::start(&clients, &LoadSpec::default());
    tokio::time::sleep(LOAD_BEFORE_FAULT).await;

    let outage = BrokerOutage::begin().await.expect("rabbitmqctl stop_app");
    system
        .wait_health("the broker down", |status, body| {
            status == 503 && body["broker"] == "down"
        })
        .await
        .expect("the gateway hears the broker is down");
    held.send_during_the_fault(BROKER_DOWN_FOR).await;
    outage.end().await.expect("rabbitmqctl start_app");
    system
        .wait_health_within(BROKER_RECOVERY_LIMIT, "200", |status, _| status == 200)
        .await
        .expect("healthy again after the broker restart");
    held.expect_answered("rabbitmq_restart_held_call").await;
    tokio::time::sleep(LOAD_AFTER_FAULT).await;

    let tally = load.finish().await.expect("load clients run");
    report("rabbitmq_restart_under_load", &tally);
    tally.check(false).expect(
        "every call answered once with its own result (held, never -32000), no socket closed",
    );

    system.cleanup().await;
}

// Session resume (`--session-resume-secs`): a connection that drops can come back for its
// calls' results.

/// The resume window of the session tests that do not test its expiry.
const RESUME_WITHIN_S: u64 = 10;

/// Waits until the gateway has let go of every websocket (`wsmq_connections` 0): a client's
/// close reaches it asynchronously, and its session is free for a resume only once the
/// connection is gone (the gauge drops after the session is handed back).
async fn wait_connection_gone(system: &System) {
    system
        .wait_metric("wsmq_connections", "0", |n| n == 0.0)
        .await
        .expect("the gateway lets the closed connection go");
}

/// `/ws?session=<token>`.
fn resume_path(token: &str) -> String {
    format!("/ws?session={token}")
}

#[tokio::test]
async fn client_reconnects_and_resumes_its_session() {
    const CALLS: usize = 5;
    const SLEEP_MS: u64 = 500;
    let system = System::builder()
        .session_resume_secs(RESUME_WITHIN_S)
        .start()
        .await
        .expect("system starts");
    let addr = system.gateway_addr().expect("gateway runs");
    let mut first = system.client().await.expect("client connects");
    let greeting = first
        .await_session(HEALTH_TIMEOUT)
        .await
        .expect("the gateway names the session first");
    assert_eq!(greeting.resume_within_s, RESUME_WITHIN_S, "{greeting:?}");

    let mut ledger = Ledger::new("resume-");
    for _ in 0..CALLS {
        let call = ledger.sleep(SLEEP_MS);
        first.send_json(&call).await.expect("sends");
    }
    // Gone before any result: every one has to come through the resumed connection.
    first.close().await.expect("the first connection closes");
    wait_connection_gone(&system).await;

    let mut resumed = match wsmq_tests::WsClient::try_connect(addr, &resume_path(&greeting.token))
        .await
        .expect("handshake answered")
    {
        Ok(client) => client,
        Err(refusal) => panic!("resuming the session was refused: {refusal:?}"),
    };
    let again = resumed
        .await_session(HEALTH_TIMEOUT)
        .await
        .expect("the resumed connection is greeted too");
    assert_eq!(again.token, greeting.token, "the same session is resumed");
    assert!(load::collect(&mut resumed, &mut ledger, ANSWERS_LIMIT).await);
    assert!(load::probe(&mut resumed, &mut ledger).await);
    let tally = ledger.finish();
    report("session_resume", &tally);
    tally
        .check(false)
        .expect("every call made before the drop is answered exactly once after the resume");
    resumed.close().await.expect("closes");

    system.cleanup().await;
}

#[tokio::test]
async fn second_connection_cannot_take_a_live_session() {
    let system = System::builder()
        .session_resume_secs(RESUME_WITHIN_S)
        .start()
        .await
        .expect("system starts");
    let addr = system.gateway_addr().expect("gateway runs");
    let mut owner = system.client().await.expect("client connects");
    let greeting = owner
        .await_session(HEALTH_TIMEOUT)
        .await
        .expect("the gateway names the session first");
    let mut ledger = Ledger::new("live-session-");
    let call = ledger.sleep(300);
    owner.send_json(&call).await.expect("sends");

    match wsmq_tests::WsClient::try_connect(addr, &resume_path(&greeting.token))
        .await
        .expect("handshake answered")
    {
        Err(Refusal::Status(409)) => {}
        Err(other) => panic!("expected HTTP 409 for a session in use, got {other:?}"),
        Ok(_) => panic!("expected HTTP 409 for a session in use, but the upgrade succeeded"),
    }

    // The owner still has its session and its call.
    assert!(load::collect(&mut owner, &mut ledger, ANSWERS_LIMIT).await);
    assert!(load::probe(&mut owner, &mut ledger).await);
    let tally = ledger.finish();
    report("live_session", &tally);
    tally
        .check(false)
        .expect("the owner's calls are answered once");
    owner.close().await.expect("closes");

    system.cleanup().await;
}

/// The resume window of the expiry test: short, but long enough that the reply the test sends
/// right after the client has gone reaches the session before it expires.
const EXPIRES_WITHIN_S: u64 = 3;

#[tokio::test]
async fn expired_session_is_not_resumable_and_what_it_held_is_dropped_and_counted() {
    const METHOD: &str = "kept";
    const EXPIRED: &str = "wsmq_results_dropped_total{reason=\"session_expired\"}";
    let mut system = System::builder()
        .session_resume_secs(EXPIRES_WITHIN_S)
        .start()
        .await
        .expect("system starts");
    let mut fake = FakeWorker::start(&mut system, METHOD, |_| None)
        .await
        .expect("fake worker starts");
    let addr = system.gateway_addr().expect("gateway runs");
    let mut first = system.client().await.expect("client connects");
    let greeting = first
        .await_session(HEALTH_TIMEOUT)
        .await
        .expect("the gateway names the session first");
    assert_eq!(greeting.resume_within_s, EXPIRES_WITHIN_S, "{greeting:?}");
    first
        .send_json(&wsmq_tests::rpc::request("kept-1", METHOD, json!({})))
        .await
        .expect("sends");
    let job = fake.next_job().await.expect("the job reaches the worker");
    first.close().await.expect("closes");
    wait_connection_gone(&system).await;
    // The result arrives for a session with no connection: it is kept for a resume...
    fake.send(&job, None, br#""kept""#)
        .await
        .expect("reply published");
    // ...and, nobody resuming it in time, dropped and counted when the session expires.
    let dropped = system
        .wait_metric(EXPIRED, "1", |n| n >= 1.0)
        .await
        .expect("the expired session's result is counted as dropped");
    assert_eq!(dropped, 1.0, "one result was kept, one dropped");

    match wsmq_tests::WsClient::try_connect(addr, &resume_path(&greeting.token))
        .await
        .expect("handshake answered")
    {
        Err(Refusal::Status(404)) => {}
        Err(other) => panic!("expected HTTP 404 for an expired session, got {other:?}"),
        Ok(_) => panic!("expected HTTP 404 for an expired session, but the upgrade succeeded"),
    }

    fake.stop().await;
    system.cleanup().await;
}
