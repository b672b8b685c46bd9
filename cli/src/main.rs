//! `wsmq`: call methods through a wsmq gateway from the command line.
//!
//! `wsmq call METHOD [PARAMS]` prints the result as JSON on stdout and a failure on stderr, with
//! an exit status per class of failure (see [`exit`]) so scripts can branch on it. Thin on
//! purpose: parse the command line, run the calls ([`calls`]), show them ([`display`]).

#![forbid(unsafe_code)]

mod calls;
mod display;
mod exit;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::calls::{Outcome, Plan};
use crate::display::Display;
use crate::exit::Exit;

/// The gateway's default `--call-timeout`.
const DEFAULT_TIMEOUT: &str = "30s";
/// The gateway's default `--max-inflight-per-client`: more at once would be refused -32003.
const DEFAULT_CONCURRENCY: usize = 256;

/// Call methods through a wsmq gateway.
#[derive(Debug, Parser)]
#[command(name = "wsmq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Call METHOD and print its result as JSON.
    #[command(after_help = exit::TABLE)]
    Call(CallArgs),
}

#[derive(Debug, Args)]
struct CallArgs {
    /// The method, e.g. `fib`.
    method: String,

    /// The params: a JSON object or array, e.g. '{"n": 10}'. `-` reads them from stdin.
    params: Option<String>,

    /// The gateway's websocket URL.
    #[arg(long, env = "WSMQ_URL", default_value = "ws://127.0.0.1:8080/ws")]
    url: String,

    /// A token for a gateway that requires one (sent as `Authorization: Bearer`).
    #[arg(long, env = "WSMQ_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// The call's deadline, e.g. `500ms`, `30s`, `2m`.
    #[arg(long, default_value = DEFAULT_TIMEOUT, value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// The call's priority, 0-9: queued calls with a higher one run first.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,

    /// Make the call N times, concurrently, with an overall progress bar; prints one JSON line
    /// per call as each finishes: {"call":K,"result":…} or {"call":K,"error":…}.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    many: Option<u64>,

    /// With --many: most calls in flight at once.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(usize))]
    concurrency: usize,
}

fn main() -> ExitCode {
    // --help and --version print and succeed; anything else is a bad command line (64).
    let cli = match wsmq_service::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let Command::Call(args) = cli.command;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsmq: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(call(args)).into()
}

async fn call(args: CallArgs) -> Exit {
    let params = match args.params.as_deref().map(read_params).transpose() {
        Ok(params) => params,
        Err(e) => {
            eprintln!("wsmq: {e}");
            return Exit::Usage;
        }
    };
    if args.concurrency == 0 {
        eprintln!("wsmq: --concurrency must be at least 1");
        return Exit::Usage;
    }
    let many = args.many.is_some();
    let count = usize::try_from(args.many.unwrap_or(1)).unwrap_or(usize::MAX);
    let plan = Plan {
        method: args.method,
        params,
        timeout: args.timeout,
        priority: args.priority,
        count,
        concurrency: args.concurrency,
    };
    let socket = match calls::connect(&args.url, args.token.as_deref()).await {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("wsmq: {e:#}");
            return Exit::Connection;
        }
    };
    let mut display = Display::new(count, many);
    let finished = calls::run(socket, &plan, &mut display).await;
    display.clear();
    let exit = if many {
        summarize(&finished.outcomes)
    } else {
        report_one(finished.outcomes.first())
    };
    // Ctrl-C wins: the shell convention, whatever the cancelled calls answered.
    if finished.interrupted {
        Exit::Interrupted
    } else {
        exit
    }
}

/// The params from the command line (or stdin for `-`): a JSON object or array.
fn read_params(text: &str) -> anyhow::Result<Value> {
    let text = if text == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| anyhow::anyhow!("cannot read the params from stdin: {e}"))?
    } else {
        text.to_owned()
    };
    let params: Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("PARAMS is not JSON: {e}"))?;
    anyhow::ensure!(
        params.is_object() || params.is_array(),
        "PARAMS must be a JSON object or array (JSON-RPC), got {params}"
    );
    Ok(params)
}

fn report_one(outcome: Option<&Outcome>) -> Exit {
    match outcome {
        Some(Outcome::Result(result)) => {
            let text = if std::io::stdout().is_terminal() {
                serde_json::to_string_pretty(result)
            } else {
                serde_json::to_string(result)
            }
            .unwrap_or_else(|_| result.to_string());
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            Exit::Ok
        }
        Some(other) => {
            eprintln!("wsmq: {}", display::describe(other));
            display::exit_of(other)
        }
        None => Exit::Connection,
    }
}

fn summarize(outcomes: &[Outcome]) -> Exit {
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !matches!(o, Outcome::Result(_)))
        .collect();
    eprintln!(
        "wsmq: {} calls: {} ok, {} failed",
        outcomes.len(),
        outcomes.len() - failed.len(),
        failed.len()
    );
    match failed.first() {
        Some(first) => {
            eprintln!("wsmq: first failure: {}", display::describe(first));
            display::exit_of(first)
        }
        None => Exit::Ok,
    }
}
