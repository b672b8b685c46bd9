//! `wsmq-conformance`: checks a worker, in any language, against the wsmq worker contract through
//! the real system (a gateway, a bridge, RabbitMQ), so that an SDK author can prove their SDK
//! follows it rather than read seven steps and hope. docs/conformance.md is its manual.
//!
//! The run: read the command line (64 when bad), connect to RabbitMQ, start a bridge and a
//! gateway (`--start`) or take the given one, start the worker under test and wait until it
//! consumes every `conf.*` queue (any failure so far: exit 2), run the checks one by one (one
//! stdout line each), stop what it started, delete a started system's queues, print the summary.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::time::Instant;
use wsmq_amqp_proto::{
    QueueType, cancel_exchange_name, dead_letter_exchange_name, queue_name, reply_queue_name,
};

mod broker;
mod checks;
mod cli;
mod client;
mod methods;
mod process;
mod system;

use checks::{CHECKS, Check, Kit, Outcome};
use cli::{Cli, QueueKind};
use system::{KIT_IDENTITY, OwnSystem, WORKER_READY_TIMEOUT, WorkerUnderTest, sibling_binary};

/// Exit status when a check failed or was skipped.
const EXIT_FAILED: u8 = 1;
/// Exit status when the kit could not run its checks.
const EXIT_CANNOT_RUN: u8 = 2;

fn main() -> ExitCode {
    let cli = match wsmq_service::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if cli.list {
        for check in CHECKS {
            println!("{:<20} {}", check.name, check.shows);
        }
        return ExitCode::SUCCESS;
    }
    let selected = match select(&cli.checks) {
        Ok(selected) => selected,
        Err(e) => {
            eprintln!("wsmq-conformance: {e}");
            return ExitCode::from(wsmq_service::EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wsmq-conformance: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    match runtime.block_on(run(cli, selected)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILED),
        Err(e) => {
            eprintln!("wsmq-conformance: cannot run the checks: {e:#}");
            ExitCode::from(EXIT_CANNOT_RUN)
        }
    }
}

/// The checks `--check` names (all of them without it), in their running order.
fn select(names: &[String]) -> Result<Vec<Check>> {
    if let Some(unknown) = names.iter().find(|n| !CHECKS.iter().any(|c| c.name == *n)) {
        let known: Vec<&str> = CHECKS.iter().map(|c| c.name).collect();
        bail!(
            "no check is named {unknown:?}; the checks: {}",
            known.join(", ")
        );
    }
    Ok(CHECKS
        .into_iter()
        .filter(|c| names.is_empty() || names.iter().any(|n| n == c.name))
        .collect())
}

/// Sets everything up, runs `selected`, tears down. `Ok(true)` when every check passed.
async fn run(cli: Cli, selected: Vec<Check>) -> Result<bool> {
    let started_at = Instant::now();
    if let Err(e) = process::become_subreaper() {
        eprintln!("wsmq-conformance: {e:#}; a worker's orphaned processes may be left behind");
    }
    let prefix = match &cli.queue_prefix {
        Some(prefix) => prefix.clone(),
        None => format!("wsmq-conformance.{}.", uuid::Uuid::new_v4().simple()),
    };
    let broker = broker::Broker::connect(&cli.amqp).await?;
    let own = if cli.start {
        let bridge_bin = match &cli.bridge_bin {
            Some(path) => path.clone(),
            None => sibling_binary("wsmq-bridge")?,
        };
        let gateway_bin = match &cli.gateway_bin {
            Some(path) => path.clone(),
            None => sibling_binary("wsmq-gateway")?,
        };
        let own = OwnSystem::start(&bridge_bin, &gateway_bin, &cli.amqp, &prefix, cli.verbose)
            .await
            .context("cannot start the bridge and the gateway")?;
        eprintln!(
            "wsmq-conformance: gateway {} on queue prefix {prefix:?}",
            own.url
        );
        Some(own)
    } else {
        None
    };
    let (url, token, caller) = match &own {
        Some(own) => (
            own.url.clone(),
            Some(own.token.clone()),
            Value::from(KIT_IDENTITY),
        ),
        None => (
            cli.gateway
                .clone()
                .context("--gateway is required without --start")?,
            cli.token.clone(),
            cli.caller.clone().map_or(Value::Null, Value::from),
        ),
    };
    let queue_type = match cli.queue_type {
        QueueKind::Classic => QueueType::Classic,
        QueueKind::Quorum => QueueType::Quorum {
            delivery_limit: cli.delivery_limit,
        },
    };
    let mut kit = Kit {
        url,
        token,
        caller,
        prefix: prefix.clone(),
        broker,
        worker: cli.worker_cmd.clone().map(|command| {
            WorkerUnderTest::new(
                command,
                vec![
                    ("WSMQ_AMQP", cli.amqp.clone()),
                    ("WSMQ_QUEUE_PREFIX", prefix.clone()),
                    ("WSMQ_CONCURRENCY", cli.concurrency.to_string()),
                ],
            )
        }),
        concurrency: cli.concurrency,
        queue_type,
    };

    let outcome = run_checks(&mut kit, &selected).await;

    if let Some(worker) = kit.worker.as_mut() {
        worker.stop().await;
    }
    if let Some(own) = own {
        let instance = own.instance.clone();
        own.stop().await;
        // The queues of the worker's methods: the conformance methods, and the demo methods
        // the examples in the wsmq repository serve beside them (deleting a queue that does not
        // exist is harmless). The prefix is the kit's own, so nothing else is touched.
        let mut queues: Vec<String> = methods::ALL
            .iter()
            .chain(&methods::EXAMPLE_DEMO_METHODS)
            .map(|m| queue_name(&prefix, m))
            .collect();
        queues.push(reply_queue_name(&instance));
        queues.push(dead_letter_exchange_name(&prefix));
        let exchanges = vec![
            cancel_exchange_name(&prefix),
            dead_letter_exchange_name(&prefix),
        ];
        if let Err(e) = kit.broker.delete(&queues, &exchanges).await {
            eprintln!("wsmq-conformance: cannot delete the run's queues: {e:#}");
        }
    }
    kit.broker.close().await;
    let outcomes = outcome?;
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let passed = count(|o| matches!(o, Outcome::Pass(_)));
    let failed = count(|o| matches!(o, Outcome::Fail(_)));
    let skipped = count(|o| matches!(o, Outcome::Skip(_)));
    println!(
        "conformance: {passed} passed, {failed} failed, {skipped} skipped of {} in {:.1} s",
        outcomes.len(),
        started_at.elapsed().as_secs_f64()
    );
    Ok(passed == outcomes.len())
}

/// Starts the worker (when the kit runs it), waits until it consumes, then runs the checks,
/// printing each line as it ends.
async fn run_checks(kit: &mut Kit, selected: &[Check]) -> Result<Vec<Outcome>> {
    if let Some(worker) = kit.worker.as_mut() {
        worker.spawn()?;
    }
    let ready = wait_ready(kit, WORKER_READY_TIMEOUT).await;
    ready?;
    let mut outcomes = Vec::with_capacity(selected.len());
    for check in selected {
        let started = Instant::now();
        let outcome = kit.run(check).await;
        println!(
            "{} [{:.1} s]",
            outcome.line(check.name),
            started.elapsed().as_secs_f64()
        );
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Waits until every `conf.*` queue has a consumer: the worker the kit started, or one already
/// running.
async fn wait_ready(kit: &mut Kit, limit: Duration) -> Result<()> {
    match kit.worker.as_mut() {
        Some(worker) => {
            worker
                .wait_consumers(&kit.broker, &kit.prefix, true, limit)
                .await
        }
        None => {
            let mut probe = WorkerUnderTest::new(String::new(), Vec::new());
            probe
                .wait_consumers(&kit.broker, &kit.prefix, true, limit)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_runs_without_a_selection_and_in_order() {
        let all = select(&[]).expect("no selection");
        let names: Vec<&str> = all.iter().map(|c| c.name).collect();
        let expected: Vec<&str> = CHECKS.iter().map(|c| c.name).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn a_selection_keeps_the_running_order() {
        let some = select(&["redelivery".to_owned(), "echo".to_owned()]).expect("known names");
        let names: Vec<&str> = some.iter().map(|c| c.name).collect();
        assert_eq!(names, ["echo", "redelivery"]);
    }

    #[test]
    fn an_unknown_check_is_refused_naming_the_known_ones() {
        let error = select(&["echoo".to_owned()]).expect_err("unknown");
        assert!(error.to_string().contains("\"echoo\""), "{error}");
        assert!(error.to_string().contains("cancel-frees-slots"), "{error}");
    }
}
