//! Fair share: one caller's flood of long jobs does not starve another caller, nothing is lost
//! or answered twice, and a caller past its held bound is refused for the excess only.

use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use wsmq_tests::{Ledger, System, SystemBuilder, WsClient, rpc};

const A_TOKEN: &str = "flood-token-5e1d";
const B_TOKEN: &str = "light-token-0c2b";

/// How long a whole flood may take to be answered (it needs about 200 x 100 ms / 2 = 10 s).
const FLOOD_LIMIT: Duration = Duration::from_secs(120);

/// The flood's calls' deadline: far beyond what they need, so that a loaded machine slows the
/// test down but does not change what it checks (the order of answers, and that all come).
const CALL_TIMEOUT_MS: u64 = 110_000;

/// A gateway that knows callers `a` and `b` by their tokens, one demo worker of concurrency 2.
struct Callers {
    _dir: TempDir,
    system: System,
}

impl Callers {
    /// `queued`: the gateway's `--max-queued-per-caller` (fair share is off by default).
    async fn start(queued: usize, configure: impl FnOnce(SystemBuilder) -> SystemBuilder) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, format!("a:{A_TOKEN}\nb:{B_TOKEN}\n")).expect("tokens file");
        let builder = System::builder()
            .worker_concurrency(2)
            .gateway_arg("--max-queued-per-caller", queued)
            .gateway_arg("--tokens", tokens.to_str().expect("utf-8 path"));
        let system = configure(builder).start().await.expect("system starts");
        Self { _dir: dir, system }
    }

    async fn connect(&self, token: &str) -> WsClient {
        let addr = self.system.gateway_addr().expect("gateway running");
        let header = format!("Bearer {token}");
        WsClient::try_connect_with(addr, "/ws", &[("authorization", &header)])
            .await
            .expect("handshake answered")
            .unwrap_or_else(|refusal| panic!("refused: {refusal:?}"))
            .quiet()
    }
}

/// Reads one frame of `client` into `ledger`; whether it answered one of its calls.
async fn read_one(client: &mut WsClient, ledger: &mut Ledger) -> bool {
    let before = ledger.outstanding();
    let frame = client
        .next_incoming(FLOOD_LIMIT)
        .await
        .expect("a frame before the flood's limit");
    ledger.record(&frame);
    ledger.outstanding() < before
}

#[tokio::test]
async fn a_flooding_caller_does_not_starve_a_later_one_and_every_call_is_answered_once() {
    let callers = Callers::start(16, |b| b).await;
    let mut a = callers.connect(A_TOKEN).await;
    let mut b = callers.connect(B_TOKEN).await;
    let mut a_ledger = Ledger::new("a");
    let mut b_ledger = Ledger::new("b");

    for _ in 0..200 {
        let mut request = a_ledger.sleep(100);
        request["wsmq"] = json!({"queued": true, "timeout_ms": CALL_TIMEOUT_MS});
        a.send_json(&request).await.expect("sends");
    }
    // B calls once A's flood is under way: A's first answer is in.
    while !read_one(&mut a, &mut a_ledger).await {}
    let mut request = b_ledger.sleep(100);
    request["wsmq"] = json!({"timeout_ms": CALL_TIMEOUT_MS});
    b.send_json(&request).await.expect("sends");

    let mut a_answers_before_b = None;
    while a_ledger.outstanding() > 0 || b_ledger.outstanding() > 0 {
        tokio::select! {
            _ = read_one(&mut a, &mut a_ledger), if a_ledger.outstanding() > 0 => {}
            answered = read_one(&mut b, &mut b_ledger), if b_ledger.outstanding() > 0 => {
                if answered {
                    a_answers_before_b = Some(200 - a_ledger.outstanding());
                }
            }
        }
    }
    // Without fair share all 200 of A's jobs are in RabbitMQ's queue ahead of B's, and B's
    // answer comes after all 200 of A's (measured: 200). With it, A has 16 calls out when B
    // calls, and B's call goes out at the next room: measured after 17 of A's on a quiet
    // machine. A loaded one can make the gateway's first look at the queue see A's calls still
    // on their way to it and let more of them out first, so the bound leaves room for that.
    let before = a_answers_before_b.expect("B answered");
    assert!(
        before < 80,
        "B's one call was answered only after {before} of A's 200"
    );
    let a_tally = a_ledger.finish();
    a_tally
        .check(false)
        .expect("A: every call answered once with its result");
    assert_eq!((a_tally.sent, a_tally.ok), (200, 200), "{a_tally}");
    assert!(
        a_tally.queued_notices > 0,
        "A heard its calls wait: {a_tally}"
    );
    let b_tally = b_ledger.finish();
    b_tally
        .check(false)
        .expect("B: answered once with its result");
    assert_eq!(b_tally.ok, 1);
    callers.system.cleanup().await;
}

#[tokio::test]
async fn a_flooding_caller_alone_still_gets_every_call_answered_once() {
    let callers = Callers::start(16, |b| b).await;
    let mut a = callers.connect(A_TOKEN).await;
    let mut ledger = Ledger::new("alone");
    for _ in 0..200 {
        let mut request = ledger.sleep(50);
        request["wsmq"] = json!({"timeout_ms": CALL_TIMEOUT_MS});
        a.send_json(&request).await.expect("sends");
    }
    while ledger.outstanding() > 0 {
        read_one(&mut a, &mut ledger).await;
    }
    let tally = ledger.finish();
    tally
        .check(false)
        .expect("every call answered once with its result");
    assert_eq!((tally.sent, tally.ok), (200, 200), "{tally}");
    callers.system.cleanup().await;
}

#[tokio::test]
async fn a_caller_past_its_held_bound_gets_too_many_in_flight_for_the_excess_only() {
    let mut callers = Callers::start(1, |b| b.gateway_arg("--max-held-per-caller", 3)).await;
    // The queue stays, with no consumer: every job waits in it until a worker is back.
    callers.system.stop_workers().await.expect("worker stops");
    let queue = callers.system.queue_for("sleep");
    let mut a = callers.connect(A_TOKEN).await;
    let mut b = callers.connect(B_TOKEN).await;
    let mut a_ledger = Ledger::new("a");
    let mut b_ledger = Ledger::new("b");

    // A's first call goes out; once it waits in the queue, RabbitMQ's count says the queue has a
    // backlog, so A's next three are held and the two after them are refused.
    let first = a_ledger.sleep(10);
    a.send_json(&first).await.expect("sends");
    callers
        .system
        .wait_queue_depth(&queue, 1)
        .await
        .expect("the first call waits in the queue");
    let mut requests: Vec<Value> = Vec::new();
    for _ in 0..5 {
        let request = a_ledger.sleep(10);
        a.send_json(&request).await.expect("sends");
        requests.push(request);
    }
    let mut refused = Vec::new();
    while refused.len() < 2 {
        let frame = a.recv_json().await.expect("a frame");
        a_ledger.record_json(&frame);
        if frame.get("id").is_some() {
            refused.push(frame);
        }
    }
    for (frame, request) in refused.iter().zip(&requests[3..]) {
        assert_eq!(frame["id"], request["id"], "{frame}");
        assert_eq!(
            frame["error"],
            json!({"code": rpc::TOO_MANY_IN_FLIGHT, "message": "too many calls in flight",
                   "data": "at most 3 calls per caller wait for their fair share"}),
            "{frame}"
        );
    }

    // B is not refused: its call waits its turn, and goes first when a worker is back.
    let request = b_ledger.sleep(10);
    b.send_json(&request).await.expect("sends");
    callers.system.start_worker(2).await.expect("worker starts");
    while b_ledger.outstanding() > 0 {
        read_one(&mut b, &mut b_ledger).await;
    }
    while a_ledger.outstanding() > 0 {
        read_one(&mut a, &mut a_ledger).await;
    }
    let b_tally = b_ledger.finish();
    b_tally.check(false).expect("B answered with its result");
    assert_eq!(b_tally.ok, 1);
    let a_tally = a_ledger.finish();
    assert_eq!(
        (
            a_tally.ok,
            a_tally.other_error_count(),
            a_tally.lost,
            a_tally.duplicated
        ),
        (4, 2, 0, 0),
        "{a_tally}"
    );
    callers.system.cleanup().await;
}
