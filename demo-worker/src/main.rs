//! `wsmq-worker`: the demo worker, serving `echo`, `sleep`, `progress`, `fib` and `fail` through
//! the SDK (and `crash`, which aborts the process, when started with `--allow-crash`); with
//! `--conformance`, the conformance kit's `conf.*` methods instead (`conformance.rs`).

use std::{collections::BTreeMap, ops::ControlFlow, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use wsmq_service::LogFormat;
use wsmq_worker::{
    BuildError, DEFAULT_CONCURRENCY, QueueType, Request, RpcError, Worker, WorkerState,
    contract::DEFAULT_MAX_PRIORITY,
};

/// Exit status for a bad command line or configuration (BSD `EX_USAGE`).
const EXIT_USAGE: u8 = wsmq_service::EXIT_USAGE;
/// Exit status when a second signal cuts the graceful shutdown short.
const EXIT_INTERRUPTED: i32 = 130;
/// Longest `sleep` a caller may ask for.
const MAX_SLEEP_MS: u64 = 600_000;
/// Most steps a `progress` call may ask for.
const MAX_PROGRESS_STEPS: u32 = 1000;
/// Longest step of a `progress` call.
const MAX_PROGRESS_STEP_MS: u64 = 60_000;
/// Largest `n` for `fib`: fib(94) does not fit in a u64.
const MAX_FIB_N: u64 = 93;
/// `fail`'s error code.
const FAIL_CODE: i64 = 4000;
/// Default `--delivery-limit`: a poison job kills four workers, then its caller hears of it.
const DEFAULT_DELIVERY_LIMIT: u32 = 3;
/// The method that aborts the worker, served only with `--allow-crash`.
const CRASH_METHOD: &str = "crash";

/// The demo wsmq worker: serves `echo`, `sleep`, `progress`, `fib` and `fail` from RabbitMQ.
///
/// Every setting can also come from `[worker]` in the --config file or from the environment
/// variable WSMQ_<NAME> (e.g. WSMQ_AMQP); flags win over the environment, which wins over the
/// file.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    file: wsmq_service::ConfigArgs,

    #[command(flatten)]
    overrides: Overrides,
}

/// Settings given as flags; each overrides the file and the environment.
#[derive(Debug, Default, clap::Args, Serialize)]
struct Overrides {
    /// AMQP URI of the broker; repeat it (or separate URIs with commas) for the nodes of a
    /// cluster: the worker connects to the first that answers, in this order, and on losing it
    /// goes to the next. [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, value_name = "URI")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    amqp: Vec<String>,

    /// Prefix of the method queues (method `m` is served from `<prefix>m`); must match the
    /// bridge's. [default: none]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_prefix: Option<String>,

    /// How many jobs run at once; also each method consumer's prefetch. [default: 16]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<u16>,

    /// A method's own limit of jobs at once (and its consumer's prefetch), as METHOD=N;
    /// repeatable.
    #[arg(long = "method-concurrency", value_name = "METHOD=N", value_parser = parse_method_concurrency)]
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_map")]
    method_concurrency: Vec<(String, u16)>,

    /// The x-max-priority the method queues are declared with; 0 declares them without it (no
    /// priorities). Every worker of a queue must use the same value. [default: 9]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_priority: Option<u8>,

    /// Type of the method queues. quorum: a job returned to its queue more than
    /// --delivery-limit times (its workers died) is dead-lettered and its caller gets -32004;
    /// quorum queues have no priorities (--max-priority is ignored). Every worker of a queue
    /// must use the same type. [default: classic]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_type: Option<QueueKind>,

    /// With --queue-type quorum: returns to the queue a job survives (it is delivered at most
    /// N + 1 times). [default: 3]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_limit: Option<u32>,

    /// Serve `crash`, which aborts this process at once (to test poison jobs). Never in
    /// production: any client could kill the workers.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    allow_crash: bool,

    /// Serve the conformance kit's methods (conf.echo, conf.sleep, ...; see
    /// docs/conformance.md) instead of the demo methods, to check the SDK with
    /// wsmq-conformance.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    conformance: bool,

    /// Format of the log lines on stderr (level filter from RUST_LOG, default info).
    /// [default: plain]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
}

/// `--queue-type`: the [`QueueType`] without its delivery limit, which has its own setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
enum QueueKind {
    Classic,
    Quorum,
}

fn as_map<S: serde::Serializer>(pairs: &[(String, u16)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    #[serde(deserialize_with = "wsmq_service::url_list::deserialize")]
    amqp: Vec<String>,
    queue_prefix: String,
    concurrency: u16,
    method_concurrency: BTreeMap<String, u16>,
    max_priority: u8,
    queue_type: QueueKind,
    delivery_limit: u32,
    allow_crash: bool,
    conformance: bool,
    log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            amqp: vec!["amqp://guest:guest@127.0.0.1:5672/%2f".into()],
            queue_prefix: String::new(),
            concurrency: DEFAULT_CONCURRENCY,
            method_concurrency: BTreeMap::new(),
            max_priority: DEFAULT_MAX_PRIORITY,
            queue_type: QueueKind::Classic,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            allow_crash: false,
            conformance: false,
            log_format: LogFormat::Plain,
        }
    }
}

impl Cli {
    fn config(&self) -> Result<Config, wsmq_service::ConfigError> {
        wsmq_service::load("worker", self.file.config.as_deref(), &self.overrides)
    }
}

impl Config {
    /// The configuration as a `[worker]` TOML section, with the broker password masked.
    fn render(&self) -> Result<String, wsmq_service::ConfigError> {
        let masked = Config {
            amqp: wsmq_service::mask_url_passwords(&self.amqp),
            ..self.clone()
        };
        wsmq_service::render("worker", &masked)
    }

    fn queue_type(&self) -> QueueType {
        match self.queue_type {
            QueueKind::Classic => QueueType::Classic,
            QueueKind::Quorum => QueueType::Quorum {
                delivery_limit: self.delivery_limit,
            },
        }
    }
}

fn main() -> ExitCode {
    // --help and --version come this way too, on stdout and with success.
    let cli = match wsmq_service::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let config = match wsmq_service::startup("wsmq-worker", &cli.file, cli.config(), Config::render)
    {
        ControlFlow::Continue(config) => config,
        ControlFlow::Break(code) => return code,
    };
    config.log_format.init();
    if config.allow_crash {
        warn!(
            method = CRASH_METHOD,
            "allow_crash is on: any client can abort this worker by calling `crash`; never run it so in production"
        );
    }
    // The configuration is checked before the runtime and any socket exist.
    let worker = match demo_worker(&config) {
        Ok(worker) => worker,
        Err(e) => {
            error!(error = %e, "invalid configuration");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(worker)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "worker failed");
            ExitCode::FAILURE
        }
    }
}

/// Runs the worker until SIGTERM or SIGINT, then shuts it down gracefully.
async fn run(worker: Worker) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut sigterm = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let token = shutdown.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down gracefully");
        token.cancel();
        // Someone who signals twice does not want to wait for the grace period.
        tokio::select! {
            _ = sigterm.recv() => {},
            _ = sigint.recv() => {},
        }
        warn!("second signal: exiting at once; unfinished jobs are requeued by the broker");
        std::process::exit(EXIT_INTERRUPTED);
    });

    let queues: Vec<String> = worker.queue_names().map(str::to_owned).collect();
    let mut state = worker.state();
    // Announced once, at the first time every consumer runs; reconnections log on their own.
    tokio::spawn(async move {
        if state.wait_for(|s| *s == WorkerState::Ready).await.is_ok() {
            info!(?queues, "worker ready");
        }
    });

    worker.run(shutdown).await.context("worker stopped")?;
    Ok(())
}

/// Reads `METHOD=N` with N ≥ 1.
fn parse_method_concurrency(text: &str) -> Result<(String, u16), String> {
    let (method, n) = text
        .split_once('=')
        .ok_or_else(|| format!("expected METHOD=N, got {text:?}"))?;
    let n: u16 = n
        .parse()
        .map_err(|e| format!("bad concurrency in {text:?}: {e}"))?;
    if method.is_empty() || n == 0 {
        return Err(format!(
            "expected a method name and a concurrency of at least 1, got {text:?}"
        ));
    }
    Ok((method.to_owned(), n))
}

fn demo_worker(config: &Config) -> Result<Worker, BuildError> {
    let mut uris = config.amqp.iter();
    let mut builder = Worker::builder(uris.next().map_or("", String::as_str));
    for uri in uris {
        builder = builder.fallback_uri(uri.as_str());
    }
    builder = builder
        .queue_prefix(config.queue_prefix.as_str())
        .concurrency(config.concurrency)
        .max_priority(Some(config.max_priority).filter(|max| *max > 0))
        .queue_type(config.queue_type())
        .connection_name(format!("wsmq-worker demo pid {}", std::process::id()));
    // Under the conformance kit, only its methods: the kit knows their queues and deletes them.
    builder = if config.conformance {
        conformance::methods(builder)
    } else {
        builder
            .method("echo", |request: Request| async move { Ok(request.params) })
            .method("sleep", sleep)
            .method("progress", progress)
            .method(
                "fib",
                |request: Request| async move { fib_method(&request) },
            )
            .method("fail", |request: Request| async move { Err(fail(request)) })
    };
    if config.allow_crash {
        builder = builder.method(
            CRASH_METHOD,
            |request: Request| async move { crash(&request) },
        );
    }
    for (method, concurrency) in &config.method_concurrency {
        builder = builder.method_concurrency(method.as_str(), *concurrency);
    }
    builder.build()
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepParams {
    ms: u64,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressParams {
    steps: u32,
    ms: u64,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FibParams {
    n: u64,
}

/// `sleep {"ms": N}`: waits N ms, answers `{"slept_ms": N}`; stops early if cancelled.
async fn sleep(request: Request) -> Result<Value, RpcError> {
    let ms = sleep_ms(&request)?;
    pause(&request, ms).await?;
    Ok(json!({ "slept_ms": ms }))
}

/// Waits `ms`, or fails with `-32002 cancelled` as soon as the call is cancelled. (The SDK
/// sends no reply for a cancelled call; the error just ends the handler.)
async fn pause(request: &Request, ms: u64) -> Result<(), RpcError> {
    tokio::select! {
        () = request.cancelled() => Err(RpcError::cancelled()),
        () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
    }
}

/// `progress {"steps": N, "ms": M}`: N times, waits M ms then reports `{"step": i, "of": N}`;
/// answers `{"done": N}`. Stops early if cancelled.
async fn progress(request: Request) -> Result<Value, RpcError> {
    let ProgressParams { steps, ms } = progress_params(&request)?;
    for step in 1..=steps {
        pause(&request, ms).await?;
        request
            .progress(json!({ "step": step, "of": steps }))
            .await
            .map_err(RpcError::internal)?;
    }
    Ok(json!({ "done": steps }))
}

fn progress_params(request: &Request) -> Result<ProgressParams, RpcError> {
    let params: ProgressParams = request.params_as()?;
    if params.steps > MAX_PROGRESS_STEPS {
        return Err(RpcError::invalid_params(format!(
            "steps must be at most {MAX_PROGRESS_STEPS}, got {}",
            params.steps
        )));
    }
    if params.ms > MAX_PROGRESS_STEP_MS {
        return Err(RpcError::invalid_params(format!(
            "ms must be at most {MAX_PROGRESS_STEP_MS}, got {}",
            params.ms
        )));
    }
    Ok(params)
}

fn sleep_ms(request: &Request) -> Result<u64, RpcError> {
    let SleepParams { ms } = request.params_as()?;
    if ms > MAX_SLEEP_MS {
        return Err(RpcError::invalid_params(format!(
            "ms must be at most {MAX_SLEEP_MS}, got {ms}"
        )));
    }
    Ok(ms)
}

/// `fib {"n": N}`: the N-th Fibonacci number.
fn fib_method(request: &Request) -> Result<Value, RpcError> {
    let FibParams { n } = request.params_as()?;
    let value = fib(n).ok_or_else(|| {
        RpcError::invalid_params(format!(
            "n must be at most {MAX_FIB_N} (larger results do not fit in a u64), got {n}"
        ))
    })?;
    Ok(json!(value))
}

/// fib(0) = 0, fib(1) = 1, ...; `None` once the result overflows a u64 (n > 93). At most 93
/// additions, whatever `n` is.
fn fib(n: u64) -> Option<u64> {
    if n == 0 {
        return Some(0);
    }
    let (mut previous, mut current) = (0u64, 1u64);
    for _ in 1..n {
        let next = previous.checked_add(current)?;
        previous = current;
        current = next;
    }
    Some(current)
}

/// `fail`: always the error 4000 "requested failure", carrying the params as data.
fn fail(request: Request) -> RpcError {
    RpcError::new(FAIL_CODE, "requested failure").with_data(request.params)
}

/// `crash`: aborts the whole process at once, as a job that kills its worker would (no reply,
/// no ack, no unwinding, so the broker sees the connection drop with the job unacked).
fn crash(request: &Request) -> ! {
    error!(job_id = %request.job_id, "crash requested: aborting the process");
    std::process::abort()
}

mod conformance;

#[cfg(test)]
mod tests;
