//! The conformance methods (`conf.*`, docs/conformance.md), served with `--conformance` so that
//! `wsmq-conformance` can check the Rust SDK as it checks workers in other languages.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use wsmq_worker::{Request, RpcError, WorkerBuilder};

/// Longest `conf.sleep`.
const MAX_SLEEP_MS: u64 = 60_000;
/// Most `conf.progress` steps.
const MAX_STEPS: u32 = 100;
/// Longest tag, in bytes.
const MAX_TAG_BYTES: usize = 200;
/// Tags whose runs are remembered; past this the oldest is forgotten, so callers cannot grow
/// the worker's memory without bound. A kit run uses a few dozen.
const MAX_TAGS: usize = 4096;

/// How many jobs of each tag this process has started.
///
/// A plain mutex rather than an owner task: it is held for one map update, never across an
/// await, by handlers on any runtime thread.
#[derive(Debug, Default)]
struct Runs {
    counts: HashMap<String, u64>,
    /// Tags in the order first seen, to forget the oldest.
    order: VecDeque<String>,
}

impl Runs {
    fn record(&mut self, tag: &str) {
        if let Some(count) = self.counts.get_mut(tag) {
            *count += 1;
            return;
        }
        if self.order.len() == MAX_TAGS
            && let Some(oldest) = self.order.pop_front()
        {
            self.counts.remove(&oldest);
        }
        self.order.push_back(tag.to_owned());
        self.counts.insert(tag.to_owned(), 1);
    }

    fn get(&self, tag: &str) -> u64 {
        self.counts.get(tag).copied().unwrap_or(0)
    }
}

type SharedRuns = Arc<Mutex<Runs>>;

fn lock(runs: &SharedRuns) -> std::sync::MutexGuard<'_, Runs> {
    // A handler that panicked cannot have left the map half-updated: take it as it is.
    runs.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepParams {
    ms: u64,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressParams {
    steps: u32,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsParams {
    tag: String,
}

/// Adds the `conf.*` methods to `builder`.
pub(crate) fn methods(builder: WorkerBuilder) -> WorkerBuilder {
    let runs = SharedRuns::default();
    let sleep_runs = runs.clone();
    builder
        .method(
            "conf.echo",
            |request: Request| async move { Ok(request.params) },
        )
        .method("conf.progress", progress)
        .method("conf.sleep", move |request: Request| {
            sleep(request, sleep_runs.clone())
        })
        .method("conf.runs", move |request: Request| {
            let runs = runs.clone();
            async move {
                let RunsParams { tag } = request.params_as()?;
                Ok(json!({ "runs": lock(&runs).get(&tag) }))
            }
        })
        .method("conf.fail", |request: Request| async move {
            Err(fail(&request.params)?)
        })
        .method("conf.caller", |request: Request| async move {
            Ok(json!({ "caller": request.caller }))
        })
        .method("conf.raise", |_request: Request| async move {
            panic!("conf.raise: the uncaught error the conformance kit asks for")
        })
}

/// `conf.progress {"steps": n}`: reports `{"step": 1}` … `{"step": n}`, answers `{"steps": n}`.
async fn progress(request: Request) -> Result<Value, RpcError> {
    let ProgressParams { steps } = request.params_as()?;
    if steps > MAX_STEPS {
        return Err(RpcError::invalid_params(format!(
            "steps must be at most {MAX_STEPS}, got {steps}"
        )));
    }
    for step in 1..=steps {
        request
            .progress(json!({ "step": step }))
            .await
            .map_err(RpcError::internal)?;
    }
    Ok(json!({ "steps": steps }))
}

/// `conf.sleep {"ms": n, "tag": t}`: counts a run of t, reports `{"started": true}`, waits n ms
/// unless cancelled (then nothing is sent), answers `{"slept": n}`.
async fn sleep(request: Request, runs: SharedRuns) -> Result<Value, RpcError> {
    let SleepParams { ms, tag } = request.params_as()?;
    if ms > MAX_SLEEP_MS {
        return Err(RpcError::invalid_params(format!(
            "ms must be at most {MAX_SLEEP_MS}, got {ms}"
        )));
    }
    if let Some(tag) = &tag {
        if tag.len() > MAX_TAG_BYTES {
            return Err(RpcError::invalid_params(format!(
                "tag must be at most {MAX_TAG_BYTES} bytes"
            )));
        }
        lock(&runs).record(tag);
    }
    request
        .progress(json!({"started": true}))
        .await
        .map_err(RpcError::internal)?;
    tokio::select! {
        () = request.cancelled() => Err(RpcError::cancelled()),
        () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({ "slept": ms })),
    }
}

/// `conf.fail {"code": c, "message": m, "data": d}`: the error itself, `data` only when given.
fn fail(params: &Value) -> Result<RpcError, RpcError> {
    let code = params.get("code").and_then(Value::as_i64);
    let message = params.get("message").and_then(Value::as_str);
    let (Some(code), Some(message)) = (code, message) else {
        return Err(RpcError::invalid_params(
            "expected {\"code\": <integer>, \"message\": <string>, \"data\"?: <any>}",
        ));
    };
    let error = RpcError::new(code, message);
    Ok(match params.get("data") {
        Some(data) => error.with_data(data.clone()),
        None => error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_count_per_tag_and_forget_the_oldest_past_the_cap() {
        let mut runs = Runs::default();
        runs.record("a");
        runs.record("a");
        assert_eq!(runs.get("a"), 2);
        assert_eq!(runs.get("never"), 0);
        for i in 0..MAX_TAGS {
            runs.record(&i.to_string());
        }
        assert_eq!(runs.get("a"), 0, "the oldest tag was forgotten");
        assert_eq!(runs.counts.len(), MAX_TAGS);
    }

    #[test]
    fn fail_answers_exactly_the_error_asked_for() {
        let with = fail(&json!({"code": 4001, "message": "m", "data": {"x": [1]}})).expect("ok");
        assert_eq!(with, RpcError::new(4001, "m").with_data(json!({"x": [1]})));
        let without = fail(&json!({"code": -32050, "message": "n"})).expect("ok");
        assert_eq!(without.data, None);
        let null = fail(&json!({"code": 1, "message": "n", "data": null})).expect("ok");
        assert_eq!(null.data, Some(Value::Null), "an explicit null is data");
        let bad = fail(&json!({"code": "x"})).expect_err("no code");
        assert_eq!(bad.code, RpcError::INVALID_PARAMS);
    }
}
