//! `wsmq-worker`: the demo worker, serving `echo`, `sleep`, `fib` and `fail` through the SDK.

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::{EnvFilter, filter::LevelFilter};
use wsmq_worker::{BuildError, DEFAULT_CONCURRENCY, Request, RpcError, Worker, WorkerState};

/// Exit status for a bad command line or configuration (BSD `EX_USAGE`).
const EXIT_USAGE: u8 = 64;
/// Exit status when a second signal cuts the graceful shutdown short.
const EXIT_INTERRUPTED: i32 = 130;
/// Longest `sleep` a caller may ask for.
const MAX_SLEEP_MS: u64 = 600_000;
/// Largest `n` for `fib`: fib(94) does not fit in a u64.
const MAX_FIB_N: u64 = 93;
/// `fail`'s error code.
const FAIL_CODE: i64 = 4000;

/// The demo wsmq worker: serves `echo`, `sleep`, `fib` and `fail` from RabbitMQ.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// AMQP URI of the broker.
    // Its env value is hidden from --help: it holds the password.
    #[arg(
        long,
        env = "WSMQ_AMQP",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp: String,

    /// Prefix of the method queues (method `m` is served from `<prefix>m`); must match the
    /// bridge's.
    #[arg(long, env = "WSMQ_QUEUE_PREFIX", default_value = "")]
    queue_prefix: String,

    /// How many jobs run at once; also each method consumer's prefetch.
    #[arg(
        long,
        env = "WSMQ_CONCURRENCY",
        default_value_t = DEFAULT_CONCURRENCY,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    concurrency: u16,

    /// Format of the log lines on stderr (level filter from RUST_LOG, default info).
    #[arg(long, env = "WSMQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version come this way too, on stdout and with success.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing(cli.log_format);
    // The configuration is checked before the runtime and any socket exist.
    let worker = match demo_worker(&cli) {
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

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = installed {
        eprintln!("wsmq-worker: logging unavailable: {e}");
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

fn demo_worker(cli: &Cli) -> Result<Worker, BuildError> {
    Worker::builder(cli.amqp.as_str())
        .queue_prefix(cli.queue_prefix.as_str())
        .concurrency(cli.concurrency)
        .connection_name(format!("wsmq-worker demo pid {}", std::process::id()))
        .method("echo", |request: Request| async move { Ok(request.params) })
        .method("sleep", sleep)
        .method(
            "fib",
            |request: Request| async move { fib_method(&request) },
        )
        .method("fail", |request: Request| async move { Err(fail(request)) })
        .build()
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepParams {
    ms: u64,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FibParams {
    n: u64,
}

/// `sleep {"ms": N}`: waits N ms, answers `{"slept_ms": N}`.
async fn sleep(request: Request) -> Result<Value, RpcError> {
    let ms = sleep_ms(&request)?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json!({ "slept_ms": ms }))
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
        let cli = Cli::try_parse_from(["wsmq-worker"]).expect("defaults");
        assert_eq!(cli.amqp, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(cli.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(cli.log_format, LogFormat::Plain);
        let cli = Cli::try_parse_from([
            "wsmq-worker",
            "--queue-prefix",
            "t1.",
            "--concurrency",
            "4",
            "--log-format",
            "json",
        ])
        .expect("flags");
        assert_eq!(cli.queue_prefix, "t1.");
        assert_eq!(cli.concurrency, 4);
        assert_eq!(cli.log_format, LogFormat::Json);
    }

    #[test]
    fn cli_refuses_zero_concurrency() {
        assert!(Cli::try_parse_from(["wsmq-worker", "--concurrency", "0"]).is_err());
    }

    #[test]
    fn demo_worker_serves_the_four_methods() {
        let cli = Cli::try_parse_from(["wsmq-worker", "--queue-prefix", "p."]).expect("flags");
        let worker = demo_worker(&cli).expect("valid configuration");
        let mut queues: Vec<&str> = worker.queue_names().collect();
        queues.sort_unstable();
        assert_eq!(queues, ["p.echo", "p.fail", "p.fib", "p.sleep"]);
    }
}
