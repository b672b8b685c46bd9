//! Checks of a job's life beyond its answer: cancellation and deadlines stopping running jobs
//! and freeing their slots, and a job whose worker dies being redelivered.

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;
use wsmq_codes::{CANCELLED, TIMEOUT};

use super::{Kit, Outcome, expect_result, runs, tag};
use crate::client::{progress_of, response_of};
use crate::methods::SLEEP;
use crate::system::{STOP_TIMEOUT, WORKER_READY_TIMEOUT};

/// How long the jobs that `cancel-frees-slots` cancels would sleep: far beyond the check's limit,
/// so a slot still held by one shows as a call that is never answered.
const HOLD_MS: u64 = 30_000;
/// The deadline of the one job `cancel-frees-slots` lets time out.
const SHORT_DEADLINE_MS: u64 = 5_000;
/// The deadline of the jobs `cancel-frees-slots` cancels with `$/cancel`.
const LONG_DEADLINE_MS: u64 = 60_000;
/// How long `redelivery`'s job sleeps (it is killed early in its first run).
const REDELIVERED_MS: u64 = 1_000;
/// `redelivery`'s call deadline: if the job is lost, the call ends -32001 then.
const REDELIVERY_DEADLINE_MS: u64 = 15_000;

/// Whether the call `id` has reported `{"started": true}` in `log`.
fn started(log: &[crate::client::Frame], id: &Value) -> bool {
    progress_of(log, id)
        .iter()
        .any(|value| **value == json!({"started": true}))
}

/// `cancel-frees-slots`: fill every slot of the worker with long sleeps, end all but one with
/// `$/cancel` and the last with its deadline, then every slot must take a new long call at once.
pub(super) async fn cancel_frees_slots(kit: &mut Kit, until: Instant) -> Result<Outcome> {
    let n = u64::from(kit.concurrency);
    let tags: Vec<String> = (0..n).map(|i| tag(&format!("cancel-{i}"))).collect();
    let mut client = kit.client(until).await?;
    for (i, tag) in (0..n).zip(&tags) {
        let deadline = if i + 1 == n {
            SHORT_DEADLINE_MS
        } else {
            LONG_DEADLINE_MS
        };
        client
            .call(i, SLEEP, json!({"ms": HOLD_MS, "tag": tag}), Some(deadline))
            .await?;
    }
    let ids: Vec<Value> = (0..n).map(Value::from).collect();
    client
        .wait(until, "started report of every call", |log| {
            ids.iter()
                .all(|id| started(log, id) || response_of(log, id).is_some())
        })
        .await
        .with_context(|| {
            format!("the worker did not start {n} {SLEEP} calls at once (is its concurrency {n}?)")
        })?;
    if let Some((id, response)) = ids
        .iter()
        .find_map(|id| response_of(client.log(), id).map(|r| (id, r.clone())))
    {
        bail!("call {id} ({HOLD_MS} ms) was answered before it started: {response}");
    }
    for i in 0..n - 1 {
        client.cancel(i).await?;
    }
    client
        .wait(
            until,
            "answers to the cancelled and the timed-out calls",
            |log| ids.iter().all(|id| response_of(log, id).is_some()),
        )
        .await?;
    for (i, id) in ids.iter().enumerate() {
        let want = if i + 1 == ids.len() {
            TIMEOUT
        } else {
            CANCELLED
        };
        let response = response_of(client.log(), id).cloned().unwrap_or_default();
        ensure!(
            response["error"]["code"].as_i64() == Some(want),
            "call {id} was answered {response}, expected error {want}"
        );
    }
    // Every slot must be free again: n new long calls must all be running at once. A slot
    // still held by a cancelled job leaves one of them waiting, however short the jobs.
    let after: Vec<Value> = (0..n).map(|i| Value::from(format!("after-{i}"))).collect();
    for id in &after {
        client
            .call(
                id.clone(),
                SLEEP,
                json!({"ms": HOLD_MS}),
                Some(LONG_DEADLINE_MS),
            )
            .await?;
    }
    let running = client
        .wait(until, "started report of every new call", |log| {
            after
                .iter()
                .all(|id| started(log, id) || response_of(log, id).is_some())
        })
        .await;
    if let Err(e) = running {
        let waiting = after.iter().filter(|id| !started(client.log(), id)).count();
        bail!(
            "{waiting} of {n} new calls did not start after the cancellations: their slots are \
             still held by the cancelled jobs ({e:#})"
        );
    }
    if let Some((id, response)) = after
        .iter()
        .find_map(|id| response_of(client.log(), id).map(|r| (id, r.clone())))
    {
        bail!("call {id} ({HOLD_MS} ms) was answered at once: {response}");
    }
    for id in &after {
        client.cancel(id.clone()).await?;
    }
    client
        .wait(until, "answers to the new calls, cancelled", |log| {
            after.iter().all(|id| response_of(log, id).is_some())
        })
        .await?;
    for (i, tag) in tags.iter().enumerate() {
        let count = runs(&mut client, &format!("runs-{i}"), tag, until).await?;
        ensure!(
            count == 1,
            "the cancelled job {i} ran {count} times, not once"
        );
    }
    Ok(Outcome::Pass(format!(
        "{} cancelled ({CANCELLED}) and 1 timed out ({TIMEOUT}) while running; then {n} new calls ran at once",
        n - 1
    )))
}

/// `redelivery`: the worker is killed while a job runs; the job is redelivered to the restarted
/// worker, which answers it, once.
pub(super) async fn redelivery(kit: &mut Kit, until: Instant) -> Result<Outcome> {
    if kit.worker.is_none() {
        return Ok(Outcome::Skip(
            "needs --worker-cmd: the kit must kill and restart the worker".to_owned(),
        ));
    }
    let tag = tag("redelivery");
    let id = json!("redelivered");
    let mut client = kit.client(until).await?;
    client
        .call(
            id.clone(),
            SLEEP,
            json!({"ms": REDELIVERED_MS, "tag": tag}),
            Some(REDELIVERY_DEADLINE_MS),
        )
        .await?;
    client
        .wait(until, "started report", |log| {
            started(log, &id) || response_of(log, &id).is_some()
        })
        .await?;
    if let Some(response) = response_of(client.log(), &id) {
        bail!("the call was answered before it started: {response}");
    }
    let Some(worker) = kit.worker.as_mut() else {
        bail!("the worker is gone");
    };
    worker.kill().await.context("cannot kill the worker")?;
    worker
        .wait_consumers(&kit.broker, &kit.prefix, false, STOP_TIMEOUT)
        .await?;
    worker.spawn().context("cannot start the worker again")?;
    worker
        .wait_consumers(&kit.broker, &kit.prefix, true, WORKER_READY_TIMEOUT)
        .await?;
    let response = client.response(id.clone(), until).await?;
    if response["error"]["code"].as_i64() == Some(TIMEOUT) {
        bail!(
            "the call ended {TIMEOUT}: the job was lost with the killed worker (acked before its \
             reply was confirmed?)"
        );
    }
    let result = expect_result(&response, SLEEP)?;
    ensure!(
        result == &json!({ "slept": REDELIVERED_MS }),
        "the redelivered job answered {result}"
    );
    let count = runs(&mut client, "runs", &tag, until).await?;
    ensure!(
        count == 1,
        "the restarted worker ran the job {count} times, not once"
    );
    let answers = client
        .log()
        .iter()
        .filter(
            |frame| matches!(frame, crate::client::Frame::Response { id: got, .. } if *got == id),
        )
        .count();
    ensure!(answers == 1, "the call was answered {answers} times");
    Ok(Outcome::Pass(
        "killed mid-job, redelivered to the restarted worker, answered once".to_owned(),
    ))
}
