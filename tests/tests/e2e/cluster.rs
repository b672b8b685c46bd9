//! wsmq on a 3-node RabbitMQ cluster (`scripts/cluster`, beside the default broker): node
//! failures under steady load, and two gateway+bridge pairs on different nodes.
//!
//! Every test runs quorum queues end to end (the bridge's `--reply-queue-type quorum`, the
//! workers' `--queue-type quorum`), gives the bridge and the workers every node in some order,
//! and counts per call, with a [`Ledger`](wsmq_tests::Ledger) for each load client, answers
//! lost, duplicated and misrouted, `-32000`s and websocket closes: all must be zero.
//!
//! They are `serial_` tests: killing nodes under load needs both cores to itself, and they run
//! only in `scripts/test`'s serial pass ([`serial::alone`]). They share one cluster: each starts
//! whatever of it is not running ([`cluster::up`]; the first boots all three nodes), starts the
//! nodes it killed again before its cleanup (deleting a quorum queue waits for all its members)
//! and leaves the cluster for the next; `scripts/test` brings it down after the pass.

use std::time::Duration;

use serde_json::Value;
use wsmq_tests::cluster;
use wsmq_tests::ledger::Tally;
use wsmq_tests::load::{Load, LoadSpec};
use wsmq_tests::serial;
use wsmq_tests::{LogLine, Service, System};

/// Load clients per gateway.
const CLIENTS: usize = 6;

/// How long the load runs before the fault, and after the system has recovered from it.
const LOAD_BEFORE_FAULT: Duration = Duration::from_millis(1500);
const LOAD_AFTER_FAULT: Duration = Duration::from_millis(2000);

/// How long a quorum queue may take to show a new leader once its leader's node is gone.
const LEADER_LIMIT: Duration = Duration::from_secs(60);

/// Demo workers in each test, each with the harness's default concurrency.
const WORKERS: u32 = 2;

/// The `node` field of a "broker connected" (bridge) or "connected to the broker; consuming"
/// (worker) line.
fn node_of(line: &LogLine) -> String {
    line.field("node")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Waits until `service` logs that it connected to node `n` (lines logged before count).
async fn await_connected_to(service: &mut Service, n: usize) -> LogLine {
    let address = cluster::address(n);
    let name = service.name().to_owned();
    let wanted = address.clone();
    service
        .wait_for_log(&format!("a connection to {address}"), move |line| {
            let connected = matches!(
                line.message(),
                Some("broker connected" | "connected to the broker; consuming")
            );
            connected && node_of(line) == wanted
        })
        .await
        .unwrap_or_else(|e| panic!("{name} connects to node {n}: {e:#}"))
}

/// Starts the cluster (what is not running of it) and a system on it: quorum queues, the
/// bridge on `bridge` (in that order), the workers on `workers`; the harness itself (preflight
/// and cleanup) uses node `harness`, which the test must not leave dead at its end.
async fn start_on_cluster(bridge: &[usize], workers: &[usize], harness: usize) -> System {
    cluster::up().await.expect("scripts/cluster up");
    System::builder()
        .amqp_url(cluster::url(harness))
        .bridge_amqp(cluster::urls(bridge))
        .worker_amqp(cluster::urls(workers))
        .quorum_queues()
        .workers(WORKERS)
        .start()
        .await
        .expect("system starts on the cluster")
}

/// Steady load on pair `pair`'s gateway from [`CLIENTS`] clients labelled `label`.
fn load_on(system: &System, pairs: &[usize], label: &str) -> Load {
    let targets: Vec<_> = pairs
        .iter()
        .flat_map(|&pair| {
            let addr = system.pair_addr(pair).expect("the pair's gateway runs");
            (0..CLIENTS).map(move |i| (addr, format!("{label}p{pair}c{i}-")))
        })
        .collect();
    Load::start(&targets, &LoadSpec::default())
}

/// Ends the load and pins the outcome: every call answered once with its own result, no
/// `-32000`, no socket closed.
async fn finish(test: &str, load: Load) -> Tally {
    let tally = load.finish().await.expect("load clients run");
    eprintln!("[{test}] counts:\n{tally}");
    tally
        .check(false)
        .expect("every call answered once with its own result, none refused, no socket closed");
    tally
}

#[tokio::test]
async fn serial_cluster_bridge_node_killed_the_bridge_fails_over_and_no_call_is_lost() {
    if !serial::alone() {
        return;
    }
    // The bridge on node 1 (then 2, 3), the workers on node 2: killing node 1 cuts the bridge
    // off and takes the reply queue's leader with it.
    let mut system = start_on_cluster(&[1, 2, 3], &[2, 3, 1], 3).await;
    await_connected_to(system.bridge().expect("bridge runs"), 1).await;
    let load = load_on(&system, &[0], "bridge-node.");
    tokio::time::sleep(LOAD_BEFORE_FAULT).await;

    cluster::kill(1).await.expect("kill -9 node 1");
    let moved = system
        .bridge()
        .expect("bridge runs")
        .wait_for_message("failed over to another RabbitMQ node")
        .await
        .expect("the bridge fails over");
    assert_eq!(
        node_of(&moved),
        cluster::address(2),
        "the next node in its list"
    );
    system
        .wait_healthy()
        .await
        .expect("the gateway is healthy again");
    tokio::time::sleep(LOAD_AFTER_FAULT).await;
    finish("bridge_node_killed", load).await;

    // Before cleanup: deleting a quorum queue waits for all its members.
    cluster::start(1).await.expect("node 1 starts again");
    system.cleanup().await;
}

#[tokio::test]
async fn serial_cluster_queue_leader_node_killed_no_job_and_no_reply_is_lost() {
    if !serial::alone() {
        return;
    }
    // Everything declares its queues on node 1 first, so node 1 leads the reply queue and
    // every method queue; then the bridge and the workers move to nodes 2 and 3, and node 1,
    // killed, takes only the leaders with it.
    let mut system = start_on_cluster(&[1, 2, 3], &[1, 2, 3], 2).await;
    system.set_amqp(cluster::urls(&[2, 3, 1]), cluster::urls(&[3, 2, 1]));
    system.stop_bridge().await.expect("bridge stops");
    system
        .start_bridge()
        .await
        .expect("bridge starts on node 2");
    await_connected_to(system.bridge().expect("bridge runs"), 2).await;
    system.stop_workers().await.expect("workers stop");
    for i in 0..WORKERS as usize {
        system
            .start_worker(wsmq_tests::system::DEFAULT_WORKER_CONCURRENCY)
            .await
            .expect("worker starts on node 3");
        await_connected_to(system.worker_mut(i).expect("worker runs"), 3).await;
    }
    system
        .wait_healthy()
        .await
        .expect("healthy on nodes 2 and 3");
    let mut led = vec![system.reply_queue()];
    led.extend(["echo", "sleep"].map(|m| system.queue_for(m)));
    for queue in &led {
        assert_eq!(
            cluster::leader(queue, 2).await.expect("leader listed"),
            1,
            "{queue} is led by node 1"
        );
    }

    let load = load_on(&system, &[0], "leader-node.");
    tokio::time::sleep(LOAD_BEFORE_FAULT).await;
    cluster::kill(1).await.expect("kill -9 node 1");
    tokio::time::sleep(LOAD_AFTER_FAULT).await;
    finish("queue_leader_node_killed", load).await;
    // Nobody's connection was cut: the quorum queues elected new leaders among nodes 2 and 3.
    // (`list_queues` leaves a queue out while it has none, which may last a while under load.)
    for queue in &led {
        let deadline = tokio::time::Instant::now() + LEADER_LIMIT;
        loop {
            match cluster::leader(queue, 2).await {
                Ok(n) if n != 1 => break,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "{queue} has no new leader within {LEADER_LIMIT:?}: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // Before cleanup: deleting a quorum queue waits for all its members.
    cluster::start(1).await.expect("node 1 starts again");
    system.cleanup().await;
}

#[tokio::test]
async fn serial_cluster_two_pairs_on_two_nodes_every_result_returns_through_its_own_pair() {
    if !serial::alone() {
        return;
    }
    // Pair 0's bridge on node 1, pair 1's on node 2, the workers on node 3.
    let mut system = start_on_cluster(&[1, 2, 3], &[3, 1, 2], 3).await;
    await_connected_to(system.bridge().expect("bridge runs"), 1).await;
    for i in 0..WORKERS as usize {
        await_connected_to(system.worker_mut(i).expect("worker runs"), 3).await;
    }
    let pair = system
        .start_pair_on(&cluster::urls(&[2, 3, 1]))
        .await
        .expect("second pair starts");
    await_connected_to(system.pair_bridge(pair).expect("pair bridge runs"), 2).await;

    let load = load_on(&system, &[0, pair], "two-pairs.");
    tokio::time::sleep(LOAD_BEFORE_FAULT + LOAD_AFTER_FAULT).await;
    finish("two_pairs_two_nodes", load).await;

    system.cleanup().await;
}
