//! Checks made only through the gateway, as a client sees the worker: results, their order,
//! progress, errors, the caller identity, an uncaught error.

use anyhow::{Result, bail, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;
use wsmq_codes::INTERNAL_ERROR;

use super::{Kit, Outcome, expect_result};
use crate::client::{Frame, progress_of, response_of, response_position};
use crate::methods::{CALLER, ECHO, FAIL, PROGRESS, RAISE, SLEEP};

/// How long the slow call of `out-of-order` sleeps once started: the margin within which the
/// quick calls must be answered.
const SLOW_MS: u64 = 3000;
/// The progress steps `progress` asks for.
const STEPS: u64 = 5;

/// `echo`: values that test a JSON codec come back unchanged.
pub(super) async fn echo(kit: &mut Kit, until: Instant) -> Result<Outcome> {
    let values = [
        json!({
            "text": "héllo → ✓ 😀 \"quoted\" \\ \u{1}",
            "int": 12_345_678_901_i64,
            "negative": -7,
            "float": 1.5,
            "bool": [true, false],
            "none": null,
            "nested": {"a": [1, [], {}, {"b": "c"}]},
        }),
        json!([1, "two", [3], {"four": 4}]),
        json!({}),
    ];
    let mut client = kit.client(until).await?;
    for (i, value) in values.iter().enumerate() {
        client.call(i, ECHO, value.clone(), None).await?;
    }
    for (i, value) in values.iter().enumerate() {
        let response = client.response(i, until).await?;
        let result = expect_result(&response, ECHO)?;
        ensure!(result == value, "{ECHO} with {value} answered {result}");
    }
    Ok(Outcome::Pass(format!(
        "{} values came back unchanged",
        values.len()
    )))
}

/// `out-of-order`: a slow call started first is answered after two quick ones started later,
/// each answer to its own id, and another connection's call with the same id gets its own.
pub(super) async fn out_of_order(kit: &mut Kit, until: Instant) -> Result<Outcome> {
    let mut first = kit.client(until).await?;
    let mut second = kit.client(until).await?;
    let slow = json!("slow");
    first
        .call(slow.clone(), SLEEP, json!({ "ms": SLOW_MS }), None)
        .await?;
    first
        .wait(until, "started report of the slow call", |log| {
            !progress_of(log, &slow).is_empty() || response_of(log, &slow).is_some()
        })
        .await?;
    first.call(2, SLEEP, json!({"ms": 0}), None).await?;
    first.call(3, ECHO, json!({"call": 3}), None).await?;
    second
        .call(slow.clone(), ECHO, json!({"connection": "second"}), None)
        .await?;
    let expected = [
        (slow.clone(), json!({ "slept": SLOW_MS })),
        (json!(2), json!({"slept": 0})),
        (json!(3), json!({"call": 3})),
    ];
    first
        .wait(until, "answers to all three calls", |log| {
            expected
                .iter()
                .all(|(id, _)| response_of(log, id).is_some())
        })
        .await?;
    let log = first.log();
    for (id, want) in &expected {
        let response = response_of(log, id).cloned().unwrap_or_default();
        ensure!(
            response.get("result") == Some(want),
            "call {id} was answered {response}, expected result {want}"
        );
    }
    let slow_at = response_position(log, &slow);
    for quick in [json!(2), json!(3)] {
        ensure!(
            response_position(log, &quick) < slow_at,
            "call {quick}, started after the {SLOW_MS} ms call {slow} was running, was answered \
             after it: {}",
            first.transcript()
        );
    }
    let other = second.response(slow.clone(), until).await?;
    ensure!(
        other.get("result") == Some(&json!({"connection": "second"})),
        "the second connection's call {slow} was answered {other}"
    );
    let strays = second
        .log()
        .iter()
        .filter(|frame| matches!(frame, Frame::Response { .. } | Frame::Progress { .. }))
        .count();
    ensure!(
        strays == 1,
        "the second connection received frames of the first's calls: {}",
        second.transcript()
    );
    Ok(Outcome::Pass(
        "quick calls answered while a slow one ran, each answer to its own id and connection"
            .to_owned(),
    ))
}

/// `progress`: n reports `{"step": i}` in order, all before the result; none for 0 steps.
pub(super) async fn progress(kit: &mut Kit, until: Instant) -> Result<Outcome> {
    let mut client = kit.client(until).await?;
    let response = client
        .call_and_wait(1, PROGRESS, json!({ "steps": STEPS }), until)
        .await?;
    let result = expect_result(&response, PROGRESS)?;
    ensure!(
        result == &json!({ "steps": STEPS }),
        "{PROGRESS} with {STEPS} steps answered {result}"
    );
    let reports: Vec<Value> = progress_of(client.log(), &json!(1))
        .into_iter()
        .cloned()
        .collect();
    let wanted: Vec<Value> = (1..=STEPS).map(|step| json!({ "step": step })).collect();
    ensure!(
        reports == wanted,
        "{PROGRESS} reported {} before its result; expected {}",
        Value::from(reports.clone()),
        Value::from(wanted)
    );
    let response = client
        .call_and_wait(2, PROGRESS, json!({"steps": 0}), until)
        .await?;
    let result = expect_result(&response, PROGRESS)?;
    ensure!(
        result == &json!({"steps": 0}),
        "{PROGRESS} with 0 steps answered {result}"
    );
    let reports = progress_of(client.log(), &json!(2));
    ensure!(
        reports.is_empty(),
        "{PROGRESS} with 0 steps reported {reports:?}"
    );
    Ok(Outcome::Pass(format!(
        "{STEPS} reports in order before the result, none for 0 steps"
    )))
}

/// `error-passthrough`: a worker's error reaches the client with its exact code, message and
/// data, and without a `data` member when it has none.
pub(super) async fn error_passthrough(kit: &mut Kit, until: Instant) -> Result<Outcome> {
    let mut client = kit.client(until).await?;
    let with_data = json!({
        "code": 4001,
        "message": "bad image — ünïcode",
        "data": {"why": ["too", "large"], "limit": 1024, "ok": false, "none": null},
    });
    let response = client
        .call_and_wait(1, FAIL, with_data.clone(), until)
        .await?;
    ensure!(
        response.get("error") == Some(&with_data),
        "{FAIL} with {with_data} answered {response}"
    );
    let without_data = json!({"code": -32050, "message": "no data here"});
    let response = client
        .call_and_wait(2, FAIL, without_data.clone(), until)
        .await?;
    ensure!(
        response.get("error") == Some(&without_data),
        "{FAIL} with {without_data} answered {response} (no data member expected)"
    );
    Ok(Outcome::Pass(
        "code, message and data exact; no data member when there is none".to_owned(),
    ))
}

/// `caller`: the job's caller identity, as the gateway authenticated it.
pub(super) async fn caller(kit: &mut Kit, until: Instant) -> Result<Outcome> {
    let mut client = kit.client(until).await?;
    let response = client.call_and_wait(1, CALLER, json!({}), until).await?;
    let result = expect_result(&response, CALLER)?;
    let wanted = json!({ "caller": kit.caller });
    ensure!(
        result == &wanted,
        "{CALLER} answered {result}, expected {wanted}"
    );
    Ok(Outcome::Pass(format!(
        "the worker saw caller {}",
        kit.caller
    )))
}

/// Text that gives away a traceback or a panic's source location in an error sent to a client.
const LEAKS: [&str; 3] = [
    "Traceback (most recent call last)",
    "panicked at",
    "\n    at ",
];

/// `raise`: an uncaught error in a handler is answered -32603, tells no traceback, and the
/// worker serves the next call.
pub(super) async fn raise(kit: &mut Kit, until: Instant) -> Result<Outcome> {
    let mut client = kit.client(until).await?;
    let response = client.call_and_wait(1, RAISE, json!({}), until).await?;
    let code = response["error"]["code"].as_i64();
    if code != Some(INTERNAL_ERROR) {
        bail!("{RAISE} was answered {response}, expected error {INTERNAL_ERROR}");
    }
    let text = response["error"].to_string();
    if let Some(leak) = LEAKS
        .iter()
        .find(|leak| text.contains(&leak.replace('\n', "\\n")))
    {
        bail!("{RAISE}'s error shows a traceback ({leak:?}): {response}");
    }
    let after = client
        .call_and_wait(2, ECHO, json!({"after": "raise"}), until)
        .await?;
    ensure!(
        after.get("result") == Some(&json!({"after": "raise"})),
        "{ECHO} after {RAISE} was answered {after}"
    );
    Ok(Outcome::Pass(format!(
        "answered {INTERNAL_ERROR} ({}), and the next call served",
        response["error"]["message"]
    )))
}
