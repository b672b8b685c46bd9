//! The checks, their names and limits, and what they share (the [`Kit`]: where the gateway is,
//! the broker connection, the worker under test).
//!
//! A check is an async function returning `Ok(Outcome)` or an error, which is its FAIL line; each
//! runs under its own time limit, so a worker that never answers fails that check, not the run.

use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::{Value, json};
use tokio::time::Instant;
use wsmq_amqp_proto::QueueType;

use crate::broker::Broker;
use crate::client::Client;
use crate::system::WorkerUnderTest;

mod calls;
mod direct;
mod lifecycle;

/// The limit of most checks.
const CHECK_LIMIT: Duration = Duration::from_secs(20);
/// The limit of `redelivery`, which kills and restarts the worker.
const REDELIVERY_LIMIT: Duration = Duration::from_secs(40);
/// How long past its limit a check may run before it is stopped: its own waits end at the limit
/// with a message saying what never came, which this leaves time to report.
const OVERRUN: Duration = Duration::from_secs(1);

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pass(String),
    Fail(String),
    Skip(String),
}

impl Outcome {
    /// The check's output line.
    pub(crate) fn line(&self, name: &str) -> String {
        match self {
            Self::Pass(detail) => format!("PASS {name}: {detail}"),
            Self::Fail(detail) => format!("FAIL {name}: {detail}"),
            Self::Skip(detail) => format!("SKIP {name}: {detail}"),
        }
    }
}

/// One check: its name (for `--check` and the output) and what it shows (for `--list`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) shows: &'static str,
    limit: Duration,
}

/// Every check, in the order they run (the one that kills the worker last).
pub(crate) const CHECKS: [Check; 12] = [
    Check {
        name: "echo",
        shows: "results come back unchanged",
        limit: CHECK_LIMIT,
    },
    Check {
        name: "out-of-order",
        shows: "results routed by call id as jobs finish, out of order",
        limit: CHECK_LIMIT,
    },
    Check {
        name: "progress",
        shows: "progress reports in order, all before the result",
        limit: CHECK_LIMIT,
    },
    Check {
        name: "error-passthrough",
        shows: "an error's code, message and data passed through exactly",
        limit: CHECK_LIMIT,
    },
    Check {
        name: "caller",
        shows: "the caller identity seen by the worker",
        limit: CHECK_LIMIT,
    },
    Check {
        name: "raise",
        shows: "an uncaught error answered -32603, and the worker keeps serving",
        limit: CHECK_LIMIT,
    },
    Check {
        name: "reply-format",
        shows: "a reply's correlation id, content type, delivery mode, status and body",
        limit: CHECK_LIMIT,
    },
    Check {
        name: "bad-params",
        shows: "a job body that is not JSON answered -32700, that job only",
        limit: CHECK_LIMIT,
    },
    Check {
        name: "deadline-skip",
        shows: "a job past its deadline is not run and not answered",
        limit: CHECK_LIMIT,
    },
    Check {
        name: "queue-arguments",
        shows: "the queues declared as the Rust worker declares them",
        limit: CHECK_LIMIT,
    },
    Check {
        name: "cancel-frees-slots",
        shows: "$/cancel and deadlines stop running jobs and free their slots",
        limit: CHECK_LIMIT,
    },
    Check {
        name: "redelivery",
        shows: "a job whose worker is killed is redelivered and answered once",
        limit: REDELIVERY_LIMIT,
    },
];

/// What the checks share.
pub(crate) struct Kit {
    /// The gateway's websocket URL.
    pub(crate) url: String,
    /// The bearer token to connect with, if the gateway authenticates.
    pub(crate) token: Option<String>,
    /// What `conf.caller` must answer: the identity, or null.
    pub(crate) caller: Value,
    pub(crate) prefix: String,
    pub(crate) broker: Broker,
    pub(crate) worker: Option<WorkerUnderTest>,
    /// How many jobs the worker runs at once.
    pub(crate) concurrency: u16,
    /// How the worker declares its queues.
    pub(crate) queue_type: QueueType,
}

impl Kit {
    /// A new connection to the gateway.
    pub(crate) async fn client(&self, until: Instant) -> Result<Client> {
        Client::connect(&self.url, self.token.as_deref(), until).await
    }

    /// Runs the check `check` within its limit. If the worker the kit started has exited, the
    /// check fails saying so and the worker is started again for the next one.
    pub(crate) async fn run(&mut self, check: &Check) -> Outcome {
        if let Some(worker) = self.worker.as_mut()
            && let Some(status) = worker.exited()
        {
            let restarted = match worker.spawn() {
                Ok(()) => {
                    let ready = worker
                        .wait_consumers(
                            &self.broker,
                            &self.prefix,
                            true,
                            crate::system::WORKER_READY_TIMEOUT,
                        )
                        .await;
                    match ready {
                        Ok(()) => "started it again".to_owned(),
                        Err(e) => format!("could not start it again: {e:#}"),
                    }
                }
                Err(e) => format!("could not start it again: {e:#}"),
            };
            return Outcome::Fail(format!(
                "the worker had exited ({status}) before this check; {restarted}"
            ));
        }
        // The check's own waits end at `until` and say what they waited for; the timeout,
        // a little later, only stops a check stuck elsewhere.
        let until = Instant::now() + check.limit;
        let result =
            tokio::time::timeout(check.limit + OVERRUN, self.dispatch(check.name, until)).await;
        match result {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome::Fail(format!("{e:#}")),
            Err(_) => Outcome::Fail(format!("did not finish within {:?}", check.limit + OVERRUN)),
        }
    }

    async fn dispatch(&mut self, name: &str, until: Instant) -> Result<Outcome> {
        match name {
            "echo" => calls::echo(self, until).await,
            "out-of-order" => calls::out_of_order(self, until).await,
            "progress" => calls::progress(self, until).await,
            "error-passthrough" => calls::error_passthrough(self, until).await,
            "caller" => calls::caller(self, until).await,
            "raise" => calls::raise(self, until).await,
            "reply-format" => direct::reply_format(self, until).await,
            "bad-params" => direct::bad_params(self, until).await,
            "deadline-skip" => direct::deadline_skip(self, until).await,
            "queue-arguments" => direct::queue_arguments(self).await,
            "cancel-frees-slots" => lifecycle::cancel_frees_slots(self, until).await,
            "redelivery" => lifecycle::redelivery(self, until).await,
            other => bail!("no check is named {other:?}"),
        }
    }
}

/// A fresh tag for `conf.sleep` runs, unique to this run of the kit.
fn tag(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

/// `result` of `response`, or an error naming the call and what came instead.
fn expect_result<'a>(response: &'a Value, call: &str) -> Result<&'a Value> {
    match response.get("result") {
        Some(result) => Ok(result),
        None => bail!("{call} was answered with an error, not a result: {response}"),
    }
}

/// Asks the worker how many jobs tagged `tag` it has started (`conf.runs`).
async fn runs(client: &mut Client, id: &str, tag: &str, until: Instant) -> Result<u64> {
    let response = client
        .call_and_wait(id, crate::methods::RUNS, json!({ "tag": tag }), until)
        .await?;
    let result = expect_result(&response, crate::methods::RUNS)?;
    match result.get("runs").and_then(Value::as_u64) {
        Some(runs) => Ok(runs),
        None => bail!(
            "{} answered {result}, not {{\"runs\": <count>}}",
            crate::methods::RUNS
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_are_unique() {
        for (i, check) in CHECKS.iter().enumerate() {
            assert!(
                CHECKS[i + 1..].iter().all(|other| other.name != check.name),
                "{} twice",
                check.name
            );
        }
    }

    #[test]
    fn redelivery_runs_last_since_it_kills_the_worker() {
        assert_eq!(CHECKS.last().map(|c| c.name), Some("redelivery"));
    }

    #[test]
    fn outcome_lines_start_with_the_verdict_and_the_name() {
        assert_eq!(Outcome::Pass("ok".into()).line("echo"), "PASS echo: ok");
        assert_eq!(Outcome::Fail("no".into()).line("caller"), "FAIL caller: no");
        assert_eq!(
            Outcome::Skip("why".into()).line("redelivery"),
            "SKIP redelivery: why"
        );
    }
}
