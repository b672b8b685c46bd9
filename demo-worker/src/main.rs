//! `wsmq-worker`: the demo worker, serving `echo`, `sleep`, `progress`, `fib` and `fail` through
//! the SDK (and `crash`, which aborts the process, when started with `--allow-crash`).

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
    /// AMQP URI of the broker. [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    amqp: Option<String>,

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
    amqp: String,
    queue_prefix: String,
    concurrency: u16,
    method_concurrency: BTreeMap<String, u16>,
    max_priority: u8,
    queue_type: QueueKind,
    delivery_limit: u32,
    allow_crash: bool,
    log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            amqp: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue_prefix: String::new(),
            concurrency: DEFAULT_CONCURRENCY,
            method_concurrency: BTreeMap::new(),
            max_priority: DEFAULT_MAX_PRIORITY,
            queue_type: QueueKind::Classic,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            allow_crash: false,
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
            amqp: wsmq_service::mask_url_password(&self.amqp),
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
    let mut builder = Worker::builder(config.amqp.as_str())
        .queue_prefix(config.queue_prefix.as_str())
        .concurrency(config.concurrency)
        .max_priority(Some(config.max_priority).filter(|max| *max > 0))
        .queue_type(config.queue_type())
        .connection_name(format!("wsmq-worker demo pid {}", std::process::id()))
        .method("echo", |request: Request| async move { Ok(request.params) })
        .method("sleep", sleep)
        .method("progress", progress)
        .method(
            "fib",
            |request: Request| async move { fib_method(&request) },
        )
        .method("fail", |request: Request| async move { Err(fail(request)) });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, params: Value) -> Request {
        Request::new(method, params, "job-1")
    }

    #[test]
    fn fib_starts_zero_one_and_adds_up() {
        let first: Vec<Option<u64>> = (0..10).map(fib).collect();
        let expected = [0, 1, 1, 2, 3, 5, 8, 13, 21, 34].map(Some);
        assert_eq!(first, expected);
    }

    #[test]
    fn fib_reaches_the_largest_that_fits_in_u64() {
        assert_eq!(fib(MAX_FIB_N), Some(12_200_160_415_121_876_738));
        assert_eq!(fib(MAX_FIB_N + 1), None);
        assert_eq!(fib(u64::MAX), None);
    }

    #[test]
    fn fib_answers_a_json_number() {
        assert_eq!(fib_method(&request("fib", json!({"n": 10}))), Ok(json!(55)));
        assert_eq!(
            fib_method(&request("fib", json!({"n": 93}))),
            Ok(json!(12_200_160_415_121_876_738u64))
        );
    }

    #[test]
    fn fib_refuses_n_over_93_as_invalid_params() {
        let error = fib_method(&request("fib", json!({"n": 94}))).expect_err("too large");
        assert_eq!(error.code, RpcError::INVALID_PARAMS);
        assert!(error.message.contains("at most 93"), "{error}");
    }

    #[test]
    fn fib_refuses_malformed_params_as_invalid_params() {
        for params in [
            json!(null),
            json!({}),
            json!({"n": -1}),
            json!({"n": 1.5}),
            json!({"n": "3"}),
            json!({"n": 3, "m": 4}),
        ] {
            let error = fib_method(&request("fib", params.clone())).expect_err("malformed");
            assert_eq!(error.code, RpcError::INVALID_PARAMS, "{params}");
            assert!(error.message.starts_with("invalid params: "), "{error}");
        }
    }

    #[test]
    fn params_may_be_given_by_position_as_json_rpc_allows() {
        assert_eq!(sleep_ms(&request("sleep", json!([5]))), Ok(5));
        assert_eq!(fib_method(&request("fib", json!([10]))), Ok(json!(55)));
    }

    #[test]
    fn sleep_accepts_up_to_ten_minutes() {
        assert_eq!(sleep_ms(&request("sleep", json!({"ms": 0}))), Ok(0));
        assert_eq!(
            sleep_ms(&request("sleep", json!({"ms": MAX_SLEEP_MS}))),
            Ok(MAX_SLEEP_MS)
        );
    }

    #[test]
    fn sleep_refuses_more_than_ten_minutes() {
        let error =
            sleep_ms(&request("sleep", json!({"ms": MAX_SLEEP_MS + 1}))).expect_err("too long");
        assert_eq!(error.code, RpcError::INVALID_PARAMS);
        assert!(error.message.contains("at most 600000"), "{error}");
    }

    #[test]
    fn sleep_refuses_malformed_params_as_invalid_params() {
        for params in [
            json!(null),
            json!({"ms": "5"}),
            json!({"ms": -5}),
            json!([]),
        ] {
            let error = sleep_ms(&request("sleep", params.clone())).expect_err("malformed");
            assert_eq!(error.code, RpcError::INVALID_PARAMS, "{params}");
        }
    }

    #[tokio::test]
    async fn sleep_answers_how_long_it_slept() {
        assert_eq!(
            sleep(request("sleep", json!({"ms": 1}))).await,
            Ok(json!({"slept_ms": 1}))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_stops_early_when_cancelled() {
        let request = request("sleep", json!({"ms": MAX_SLEEP_MS}));
        let cancel = request.cancellation().clone();
        let started = tokio::time::Instant::now();
        let sleeping = tokio::spawn(sleep(request));
        tokio::time::sleep(Duration::from_millis(10)).await;
        cancel.cancel();
        let outcome = sleeping.await.expect("handler task");
        assert_eq!(outcome, Err(RpcError::new(-32002, "cancelled")));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_counts_its_steps_and_answers_done() {
        let started = tokio::time::Instant::now();
        let outcome = progress(request("progress", json!({"steps": 3, "ms": 100}))).await;
        assert_eq!(outcome, Ok(json!({"done": 3})));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_stops_at_once_when_cancelled() {
        let request = request("progress", json!({"steps": 1000, "ms": 60_000}));
        request.cancellation().cancel();
        let outcome = progress(request).await;
        assert_eq!(outcome, Err(RpcError::cancelled()));
    }

    #[test]
    fn progress_refuses_more_than_1000_steps_or_a_minute_per_step() {
        for params in [
            json!({"steps": 1001, "ms": 1}),
            json!({"steps": 1, "ms": 60_001}),
            json!({"steps": -1, "ms": 1}),
            json!({"steps": 1}),
        ] {
            let error =
                progress_params(&request("progress", params.clone())).expect_err("out of bounds");
            assert_eq!(error.code, RpcError::INVALID_PARAMS, "{params}");
        }
        assert_eq!(
            progress_params(&request("progress", json!({"steps": 1000, "ms": 60_000}))),
            Ok(ProgressParams {
                steps: 1000,
                ms: 60_000
            })
        );
    }

    #[test]
    fn fail_carries_code_4000_and_the_params() {
        let params = json!({"why": "testing"});
        assert_eq!(
            fail(request("fail", params.clone())),
            RpcError {
                code: 4000,
                message: "requested failure".into(),
                data: Some(params),
            }
        );
    }

    #[test]
    fn cli_reads_defaults_and_flags() {
        let cli = Cli::try_parse_from(["wsmq-worker"])
            .expect("defaults")
            .config()
            .expect("valid");
        assert_eq!(cli.amqp, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(cli.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(cli.max_priority, 9);
        assert_eq!(cli.queue_type, QueueKind::Classic);
        assert_eq!(cli.delivery_limit, 3);
        assert!(!cli.allow_crash);
        assert!(cli.method_concurrency.is_empty());
        assert_eq!(cli.log_format, LogFormat::Plain);
        let cli = Cli::try_parse_from([
            "wsmq-worker",
            "--queue-prefix",
            "t1.",
            "--concurrency",
            "4",
            "--log-format",
            "json",
            "--max-priority",
            "0",
            "--method-concurrency",
            "sleep=2",
            "--method-concurrency",
            "fib=1",
        ])
        .expect("flags")
        .config()
        .expect("valid");
        assert_eq!(cli.queue_prefix, "t1.");
        assert_eq!(cli.concurrency, 4);
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(cli.max_priority, 0);
        assert_eq!(
            cli.method_concurrency,
            BTreeMap::from([("sleep".to_owned(), 2), ("fib".to_owned(), 1)])
        );
    }

    #[test]
    fn printed_config_is_a_worker_section_with_the_password_masked() {
        let config = Cli::try_parse_from([
            "wsmq-worker",
            "--amqp",
            "amqp://u:hunter2@mq/%2f",
            "--method-concurrency",
            "sleep=2",
        ])
        .expect("flags")
        .config()
        .expect("valid");
        let text = config.render().expect("renders");
        assert!(text.starts_with("[worker]"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("sleep = 2"), "{text}");
    }

    #[test]
    fn cli_refuses_malformed_method_concurrency() {
        for bad in ["sleep", "sleep=0", "=2", "sleep=x", "sleep=70000"] {
            assert!(
                Cli::try_parse_from(["wsmq-worker", "--method-concurrency", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn method_concurrency_for_an_unknown_method_is_a_configuration_error() {
        let config = Cli::try_parse_from(["wsmq-worker", "--method-concurrency", "slep=2"])
            .expect("flags")
            .config()
            .expect("valid");
        assert!(matches!(
            demo_worker(&config),
            Err(BuildError::UnknownMethodConcurrency { .. })
        ));
    }

    #[test]
    fn quorum_flags_make_quorum_queues_with_the_delivery_limit() {
        let config = Cli::try_parse_from([
            "wsmq-worker",
            "--queue-type",
            "quorum",
            "--delivery-limit",
            "2",
        ])
        .expect("flags")
        .config()
        .expect("valid");
        assert_eq!(config.queue_type(), QueueType::Quorum { delivery_limit: 2 });
        let config = Cli::try_parse_from(["wsmq-worker", "--queue-type", "quorum"])
            .expect("flags")
            .config()
            .expect("valid");
        assert_eq!(config.queue_type(), QueueType::Quorum { delivery_limit: 3 });
        assert!(Cli::try_parse_from(["wsmq-worker", "--queue-type", "stream"]).is_err());
    }

    #[test]
    fn queue_type_and_allow_crash_come_from_the_config_file_too() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("wsmq.toml");
        std::fs::write(
            &path,
            "[worker]\nqueue_type = \"quorum\"\ndelivery_limit = 5\nallow_crash = true\n",
        )
        .expect("write config");
        let path = path.to_str().expect("utf-8 path").to_owned();
        let config = Cli::try_parse_from(["wsmq-worker", "--config", &path])
            .expect("flags")
            .config()
            .expect("valid");
        assert_eq!(config.queue_type(), QueueType::Quorum { delivery_limit: 5 });
        assert!(config.allow_crash);
        // Rendered back, the settings are there to paste.
        let text = config.render().expect("renders");
        assert!(text.contains("queue_type = \"quorum\""), "{text}");
        assert!(text.contains("allow_crash = true"), "{text}");
    }

    #[test]
    fn crash_is_served_only_when_allowed() {
        let config = Cli::try_parse_from(["wsmq-worker", "--allow-crash"])
            .expect("flags")
            .config()
            .expect("valid");
        assert!(config.allow_crash);
        let worker = demo_worker(&config).expect("valid configuration");
        assert!(worker.queue_names().any(|q| q == "crash"));
        let config = Cli::try_parse_from(["wsmq-worker"])
            .expect("flags")
            .config()
            .expect("valid");
        let worker = demo_worker(&config).expect("valid configuration");
        assert!(!worker.queue_names().any(|q| q == "crash"));
    }

    #[test]
    fn cli_refuses_zero_concurrency() {
        assert!(Cli::try_parse_from(["wsmq-worker", "--concurrency", "0"]).is_err());
    }

    #[test]
    fn demo_worker_serves_the_five_methods() {
        let config = Cli::try_parse_from(["wsmq-worker", "--queue-prefix", "p."])
            .expect("flags")
            .config()
            .expect("valid");
        let worker = demo_worker(&config).expect("valid configuration");
        let mut queues: Vec<&str> = worker.queue_names().collect();
        queues.sort_unstable();
        assert_eq!(
            queues,
            ["p.echo", "p.fail", "p.fib", "p.progress", "p.sleep"]
        );
    }
}
