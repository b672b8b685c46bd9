//! Results go back to exactly the client and call id that asked, whatever the completion order.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use wsmq_tests::rpc::{self, check_envelope};
use wsmq_tests::{System, WsClient};

const CLIENTS: usize = 16;
const CALLS_PER_CLIENT: usize = 20;
const MAX_SLEEP_MS: u64 = 300;

/// One call a client makes and the result only it may get back.
struct Call {
    id: Value,
    request: Value,
    expected: Value,
}

/// The calls of client `c`. Every client uses the SAME ids (numbers and strings), so only
/// per-client routing can get them right; echo payloads are unique to client and call.
fn calls_for(c: usize) -> Vec<Call> {
    (0..CALLS_PER_CLIENT)
        .map(|k| {
            let id = if k % 2 == 0 {
                json!(k)
            } else {
                json!(format!("call-{k}"))
            };
            let (method, params, expected) = if k % 3 == 1 {
                let payload = json!({
                    "client": c,
                    "call": k,
                    "nonce": uuid::Uuid::new_v4().to_string(),
                });
                ("echo", payload.clone(), payload)
            } else {
                // The first call sleeps longest, so a gateway that answers in send order
                // (or one that serialises a client's calls) cannot pass.
                let ms = if k == 0 {
                    MAX_SLEEP_MS
                } else {
                    (uuid::Uuid::new_v4().as_u128() % u128::from(MAX_SLEEP_MS + 1)) as u64
                };
                ("sleep", json!({"ms": ms}), json!({"slept_ms": ms}))
            };
            Call {
                request: rpc::request(id.clone(), method, params),
                id,
                expected,
            }
        })
        .collect()
}

/// Sends all calls pipelined, takes exactly one matching response per id, then (once every
/// client is done) checks that the next frame is the answer to a fresh call: nothing extra.
/// Returns whether the responses came in another order than the calls.
async fn run_client(c: usize, mut client: WsClient, all_done: Arc<Barrier>) -> Result<bool> {
    let calls = calls_for(c);
    for call in &calls {
        client.send_json(&call.request).await?;
    }
    let mut pending: HashMap<String, (usize, &Call)> = calls
        .iter()
        .enumerate()
        .map(|(i, call)| (call.id.to_string(), (i, call)))
        .collect();
    let mut order = Vec::with_capacity(calls.len());
    while !pending.is_empty() {
        let response = client
            .recv_json()
            .await
            .with_context(|| format!("client {c}: {} responses missing", pending.len()))?;
        check_envelope(&response).map_err(|e| anyhow::anyhow!("client {c}: {e}"))?;
        let id = response.get("id").map(Value::to_string).unwrap_or_default();
        let Some((index, call)) = pending.remove(&id) else {
            bail!(
                "client {c}: response with an id it is not waiting for (foreign or duplicate): {response}"
            );
        };
        ensure!(
            rpc::result(&response) == Some(&call.expected),
            "client {c}: call {} got {response}, expected result {}",
            call.id,
            call.expected
        );
        order.push(index);
    }

    all_done.wait().await;
    let marker = json!({"marker": c, "nonce": uuid::Uuid::new_v4().to_string()});
    let response = client
        .call("echo", marker.clone())
        .await
        .with_context(|| format!("client {c}: after all its responses"))?;
    ensure!(
        rpc::result(&response) == Some(&marker),
        "client {c}: marker call got {response}"
    );
    client.close().await?;
    Ok(order.windows(2).any(|w| w[0] > w[1]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reach_only_their_own_client_in_any_order() {
    // Enough worker concurrency that sleeps overlap (16 clients x ~13 sleeps of up to 300 ms),
    // and an in-flight limit above the pipelined 20.
    let system = System::builder()
        .worker_concurrency(64)
        .max_inflight_per_client(64)
        .start()
        .await
        .expect("system starts");

    let all_done = Arc::new(Barrier::new(CLIENTS));
    let mut clients = JoinSet::new();
    for c in 0..CLIENTS {
        let client = system.client().await.expect("client connects");
        clients.spawn(run_client(c, client, all_done.clone()));
    }
    let mut reordered = 0;
    while let Some(joined) = clients.join_next().await {
        if joined
            .expect("client task does not panic")
            .expect("client gets exactly its results")
        {
            reordered += 1;
        }
    }
    assert!(
        reordered > 0,
        "every client got its responses in send order: results are not delivered as they complete"
    );

    system.cleanup().await;
}
