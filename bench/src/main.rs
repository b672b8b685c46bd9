//! `wsmq-bench`: measures wsmq's websocket path against direct AMQP RPC (and Web-STOMP) on the
//! same queue and worker, in one run.
//!
//! On a shared or small machine absolute figures drift from minute to minute, so the modes are
//! alternated round by round (A B A B …) and compared by the ratio of their medians: drift then
//! hits both sides alike. `scripts/bench` starts a system and runs the standard matrix.

#![forbid(unsafe_code)]

mod amqp;
mod fairness;
mod gateway;
mod idle;
mod rss;
mod stats;
mod stomp;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use futures::future::{join_all, try_join_all};
use serde::Serialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::stats::{LaneStats, ModeSummary, RunResult, Window};

/// Load generator for wsmq: closed-loop JSON-RPC calls through the gateway, the same calls as a
/// direct AMQP RPC client (the baseline) and through Web-STOMP; idle connections to measure
/// the gateway's memory per connection.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Modes to run, comma-separated or repeated. Load modes alternate round by round; the
    /// first is compared with each other one. `idle` opens --idle-connections first and keeps
    /// them open during the load modes.
    #[arg(long = "mode", value_enum, value_delimiter = ',', required = true)]
    modes: Vec<Mode>,

    /// The gateway's websocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,

    /// RabbitMQ, for the `amqp` and `amqp-durable` modes.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,

    /// Web-STOMP's websocket URL, for `stomp` mode.
    #[arg(long, default_value = "ws://127.0.0.1:15674/ws")]
    stomp_url: String,

    /// Web-STOMP login and passcode.
    #[arg(long, default_value = "guest:guest")]
    stomp_login: String,

    /// The bridge's and the worker's --queue-prefix: `amqp`, `amqp-durable` and `stomp` publish
    /// to `<prefix><method>`, the queue the gateway's jobs go to (`amqp-durable` also names its
    /// durable reply queues `<prefix>bench-reply.<pid>.<n>`, deleted after each run).
    #[arg(long, default_value = "")]
    queue_prefix: String,

    /// The method to call; the worker must answer it with its params (the demo worker's
    /// `echo` does).
    #[arg(long, default_value = "echo")]
    method: String,

    /// Websocket connections (gateway, stomp) or AMQP channels with their own reply queue
    /// (amqp, amqp-durable) that carry the calls.
    #[arg(long, default_value_t = 64)]
    connections: usize,

    /// Calls in flight in total, spread evenly over the connections.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,

    /// Measured time of each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Time each run calls before it starts measuring.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,

    /// Size of the params JSON of each call, in bytes.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,

    /// Runs of each load mode.
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Connections `idle` mode opens.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,

    /// Loopback source addresses (127.0.0.1, .2, …) the idle connections are spread over.
    #[arg(long, default_value_t = 4)]
    source_addrs: u8,

    /// The gateway's pid: `idle` mode reports its RSS growth per connection.
    #[arg(long)]
    gateway_pid: Option<u32>,

    /// NAME=PID of a process whose CPU time per call and RSS each run reports (repeatable):
    /// RSS at --rss-early and at the end shows whether memory grows under load.
    #[arg(long = "watch", value_name = "NAME=PID", value_parser = parse_watch)]
    watch: Vec<(String, u32)>,

    /// When, from the start of a run (warm-up included), the early RSS sample is taken.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    rss_early: Duration,

    /// `fairness` mode: a gateway with fair share off (`--max-queued-per-caller 0`) in front of
    /// the same queue and workers as --url's, to compare with.
    #[arg(long)]
    url_off: Option<String>,

    /// `fairness` mode: how long each job takes (the params `{"ms": N}` of --method, which must
    /// sleep that long; the demo worker's `sleep` does).
    #[arg(long, default_value_t = 100)]
    job_ms: u64,

    /// `fairness` mode: the flooding caller's calls in flight.
    #[arg(long, default_value_t = 200)]
    flood_in_flight: usize,

    /// `fairness` mode: the flooding caller's connections (all from 127.0.0.1: one caller).
    #[arg(long, default_value_t = 4)]
    flood_connections: usize,

    /// `fairness` mode: light callers, each one connection from its own loopback address
    /// (127.0.0.2 and up), one call at a time.
    #[arg(long, default_value_t = 4)]
    light_callers: u8,

    /// Print a JSON summary as the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    Gateway,
    /// A direct lapin RPC client with wsmq's guarantees (persistence, confirms, `mandatory`,
    /// a durable reply queue, manual acks).
    AmqpDurable,
    /// A plain direct lapin RPC client (transient, no confirms, no acks).
    Amqp,
    Stomp,
    Idle,
    /// One flooding caller and light callers, against --url (fair share on) and --url-off
    /// (off), round by round: the light callers' wait side by side. Not compared with the
    /// load modes.
    Fairness,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Gateway => "gateway",
            Mode::AmqpDurable => "amqp-durable",
            Mode::Amqp => "amqp",
            Mode::Stomp => "stomp",
            Mode::Idle => "idle",
            Mode::Fairness => "fairness",
        }
    }
}

fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|e| format!("bad pid {pid:?}: {e}"))?;
    Ok((name.to_owned(), pid))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the bench shares the machine with everything it measures, and a
    // single-threaded client costs the least CPU per call.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsmq-bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("wsmq-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs everything asked for; `Ok(false)` if any call failed.
async fn run(cli: Cli) -> Result<bool> {
    let mut modes = cli.modes.clone();
    modes.dedup();
    let load_modes: Vec<Mode> = modes
        .iter()
        .copied()
        .filter(|m| !matches!(m, Mode::Idle | Mode::Fairness))
        .collect();
    let params = params_of_size(cli.body_bytes);
    let fds = cli.connections * 2
        + 256
        + if modes.contains(&Mode::Idle) {
            cli.idle_connections
        } else {
            0
        };
    let limit = rss::raise_nofile(fds as u64)?;
    if limit < fds as u64 {
        eprintln!("wsmq-bench: warning: open-file limit {limit} is below the {fds} needed");
    }

    let mut idle = None;
    let mut idle_report = None;
    if modes.contains(&Mode::Idle) {
        let (held, report) = idle::open(
            &cli.url,
            cli.idle_connections,
            cli.source_addrs,
            cli.gateway_pid,
        )
        .await?;
        match report.kib_per_connection {
            Some(per) => println!(
                "idle     {} connections: gateway RSS {} -> {} KiB, {per:.1} KiB per connection",
                report.connections,
                report.rss_before_kib.unwrap_or(0),
                report.rss_after_kib.unwrap_or(0)
            ),
            None => println!(
                "idle     {} connections open (pass --gateway-pid for the RSS per connection)",
                report.connections
            ),
        }
        idle = Some(held);
        idle_report = Some(report);
    }

    let mut runs: BTreeMap<Mode, Vec<RunResult>> = BTreeMap::new();
    let mut usage_json = Vec::new();
    for round in 1..=cli.rounds {
        for &mode in &load_modes {
            let (result, usage) = run_once(&cli, mode, &params).await?;
            println!(
                "{:<12} round {round}: {:>9.0} calls/s  p50 {:>6} µs  p99 {:>7} µs  max {:>7} µs  errors {}{}",
                mode.name(),
                result.calls_per_s,
                result.p50_us,
                result.p99_us,
                result.max_us,
                result.errors,
                result
                    .first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
            for u in &usage {
                println!(
                    "             {:<9} {:>6.1} µs CPU per call; RSS {} KiB at the end{}",
                    u.name,
                    u.cpu_us_per_call,
                    u.rss_end_kib,
                    u.rss_early_kib
                        .map(|e| format!(
                            ", {e} KiB at {:?} ({:+.1}%)",
                            cli.rss_early,
                            (u.rss_end_kib as f64 - e as f64) * 100.0 / e.max(1) as f64
                        ))
                        .unwrap_or_default()
                );
            }
            usage_json.extend(
                usage
                    .into_iter()
                    .map(|u| json!({"mode": mode.name(), "round": round, "process": u})),
            );
            runs.entry(mode).or_default().push(result);
        }
    }

    let mut fairness_json = None;
    let mut fairness_ok = true;
    if modes.contains(&Mode::Fairness) {
        let setup = fairness::Setup {
            url_on: cli.url.clone(),
            url_off: cli
                .url_off
                .clone()
                .context("fairness mode needs --url-off, a gateway with fair share off")?,
            method: cli.method.clone(),
            job_ms: cli.job_ms,
            flood_connections: cli.flood_connections,
            flood_in_flight: cli.flood_in_flight,
            light_callers: cli.light_callers,
            warmup: cli.warmup,
            duration: cli.duration,
            rounds: cli.rounds,
        };
        let (on, off) = fairness::run(&setup).await?;
        fairness_ok = [&on, &off]
            .iter()
            .all(|side| side.light.errors == 0 && side.flood.errors == 0);
        fairness_json = Some(json!({"job_ms": cli.job_ms, "on": on, "off": off}));
    }

    if let (Some(held), Some(report)) = (idle, idle_report.as_mut()) {
        report.closed = held.close().await;
        if report.closed > 0 {
            println!(
                "idle     {} idle connections were closed by the gateway",
                report.closed
            );
        }
    }

    let summaries: BTreeMap<Mode, ModeSummary> = runs
        .into_iter()
        .map(|(mode, runs)| (mode, ModeSummary::of(runs)))
        .collect();
    print_summary(&load_modes, &summaries);

    let ok = summaries.values().all(|s| s.errors == 0)
        && idle_report.as_ref().is_none_or(|r| r.closed == 0)
        && fairness_ok;
    if cli.json {
        let modes_json: serde_json::Map<String, serde_json::Value> = summaries
            .iter()
            .map(|(mode, s)| (mode.name().to_owned(), json!(s)))
            .collect();
        let summary = json!({
            "config": {
                "connections": cli.connections,
                "in_flight": cli.in_flight,
                "duration_s": cli.duration.as_secs_f64(),
                "warmup_s": cli.warmup.as_secs_f64(),
                "body_bytes": cli.body_bytes,
                "rounds": cli.rounds,
                "method": cli.method,
            },
            "modes": modes_json,
            "idle": idle_report,
            "fairness": fairness_json,
            "usage": usage_json,
            "ok": ok,
        });
        println!("{summary}");
    }
    Ok(ok)
}

/// Medians per mode, and the first mode against each other one.
fn print_summary(modes: &[Mode], summaries: &BTreeMap<Mode, ModeSummary>) {
    for mode in modes {
        if let Some(s) = summaries.get(mode) {
            println!(
                "{:<12} median: {:>9.0} calls/s  p50 {:>6} µs  p99 {:>7} µs  max {:>7} µs  errors {}",
                mode.name(),
                s.calls_per_s,
                s.p50_us,
                s.p99_us,
                s.max_us,
                s.errors
            );
        }
    }
    let Some((first, others)) = modes.split_first() else {
        return;
    };
    let Some(a) = summaries.get(first) else {
        return;
    };
    for other in others {
        if let Some(b) = summaries.get(other)
            && b.calls_per_s > 0.0
        {
            println!(
                "{}/{}: throughput {:.2}x, p50 {:+} µs, p99 {:+} µs",
                first.name(),
                other.name(),
                a.calls_per_s / b.calls_per_s,
                a.p50_us as i64 - b.p50_us as i64,
                a.p99_us as i64 - b.p99_us as i64,
            );
        }
    }
}

/// Params of exactly `size` bytes of JSON (at least `{"data":""}`).
fn params_of_size(size: usize) -> String {
    const EMPTY: &str = r#"{"data":""}"#;
    let pad = size.saturating_sub(EMPTY.len());
    format!(r#"{{"data":"{}"}}"#, "x".repeat(pad))
}

/// How many of `total` calls in flight lane `i` of `lanes` carries.
fn share_of(total: usize, lanes: usize, i: usize) -> usize {
    total / lanes + usize::from(i < total % lanes)
}

/// The connected lanes of one run, before any call.
enum Lanes {
    Gateway(Vec<gateway::Ws>, gateway::Target),
    Amqp(Vec<amqp::Caller>, amqp::Target, lapin::Connection),
    Stomp(Vec<gateway::Ws>, stomp::Target),
}

/// What a watched process used during one run.
#[derive(Debug, Clone, Serialize)]
struct Usage {
    name: String,
    /// CPU time used inside the measuring window, per call measured.
    cpu_us_per_call: f64,
    /// RSS at --rss-early (absent when the run is shorter) and at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_early_kib: Option<u64>,
    rss_end_kib: u64,
}

/// One run of one load mode: connect every lane, then call for warm-up + duration.
async fn run_once(cli: &Cli, mode: Mode, params: &str) -> Result<(RunResult, Vec<Usage>)> {
    let lanes = connect(cli, mode, params).await?;
    let shares = |i| share_of(cli.in_flight, cli.connections.max(1), i);
    let early = watch_early(&cli.watch, cli.rss_early);
    let window = Window::new(cli.warmup, cli.duration);
    let cpu = watch_cpu(&cli.watch, window);
    let stats: Vec<LaneStats> = match lanes {
        Lanes::Gateway(conns, target) => {
            let target = &target;
            join_all(
                conns
                    .into_iter()
                    .enumerate()
                    .map(|(i, ws)| gateway::drive(ws, shares(i), target, window)),
            )
            .await
        }
        Lanes::Stomp(conns, target) => {
            let target = &target;
            join_all(
                conns
                    .into_iter()
                    .enumerate()
                    .map(|(i, ws)| stomp::drive(ws, shares(i), target, window)),
            )
            .await
        }
        Lanes::Amqp(callers, target, connection) => {
            let target = &target;
            let stats = join_all(
                callers
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| c.drive(shares(i), target, window)),
            )
            .await;
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                connection.close(200, "bench done".into()),
            )
            .await;
            stats
        }
    };
    let result = RunResult::from_lanes(&stats, cli.duration);
    // A run shorter than --rss-early has no early sample.
    let early = if early.is_finished() {
        early.await.unwrap_or_default()
    } else {
        early.abort();
        Vec::new()
    };
    let cpu = cpu.await.unwrap_or_default();
    let usage = cli
        .watch
        .iter()
        .filter_map(|(name, pid)| {
            let cpu = cpu.iter().find(|(n, _)| n == name)?.1;
            Some(Usage {
                name: name.clone(),
                cpu_us_per_call: cpu.as_secs_f64() * 1e6 / result.calls.max(1) as f64,
                rss_early_kib: early.iter().find(|(n, _)| n == name).map(|e| e.1),
                rss_end_kib: rss::rss_kib(*pid).ok()?,
            })
        })
        .collect();
    Ok((result, usage))
}

/// The bench's websocket client settings. tungstenite zero-fills its whole read buffer before
/// every read; at its default 128 KiB that alone cost more CPU than the JSON, which a browser
/// does not pay, so the client would have skewed the ratio it measures.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Opens the lanes of one run.
async fn connect(cli: &Cli, mode: Mode, params: &str) -> Result<Lanes> {
    let lanes = cli.connections.max(1);
    let queue = format!("{}{}", cli.queue_prefix, cli.method);
    Ok(match mode {
        Mode::Gateway => {
            let target = gateway::Target::new(&cli.url, &cli.method, params.to_owned()).await?;
            let conns = try_join_all(
                (0..lanes)
                    .map(|_| gateway::connect(&target.url, target.addr, None, Some(ws_config()))),
            )
            .await
            .context("cannot connect to the gateway")?;
            Lanes::Gateway(conns, target)
        }
        Mode::Amqp | Mode::AmqpDurable => {
            let guarantees = if mode == Mode::Amqp {
                amqp::Guarantees::Plain
            } else {
                amqp::Guarantees::Durable
            };
            let connection = amqp::connect(&cli.amqp).await?;
            let callers = try_join_all(
                (0..lanes)
                    .map(|i| amqp::Caller::open(&connection, guarantees, &cli.queue_prefix, i)),
            )
            .await?;
            let target = amqp::Target {
                queue,
                params: params.to_owned(),
            };
            Lanes::Amqp(callers, target, connection)
        }
        Mode::Stomp => {
            let (login, passcode) = cli
                .stomp_login
                .split_once(':')
                .context("--stomp-login must be LOGIN:PASSCODE")?;
            let target = stomp::Target {
                url: cli.stomp_url.clone(),
                login: login.to_owned(),
                passcode: passcode.to_owned(),
                queue,
                params: params.to_owned(),
            };
            let conns = try_join_all((0..lanes).map(|_| stomp::connect(&target)))
                .await
                .context(
                    "cannot connect to Web-STOMP (rabbitmq-plugins enable rabbitmq_web_stomp)",
                )?;
            Lanes::Stomp(conns, target)
        }
        Mode::Idle | Mode::Fairness => anyhow::bail!("{} is not a load mode", mode.name()),
    })
}

/// Samples the watched processes' RSS once, `after` from now (skipped if the run ends first).
fn watch_early(
    watch: &[(String, u32)],
    after: Duration,
) -> tokio::task::JoinHandle<Vec<(String, u64)>> {
    let watch = watch.to_vec();
    tokio::spawn(async move {
        if watch.is_empty() {
            return Vec::new();
        }
        tokio::time::sleep(after).await;
        watch
            .iter()
            .filter_map(|(name, pid)| rss::rss_kib(*pid).ok().map(|kib| (name.clone(), kib)))
            .collect()
    })
}

/// The CPU time each watched process uses inside `window`.
fn watch_cpu(
    watch: &[(String, u32)],
    window: Window,
) -> tokio::task::JoinHandle<Vec<(String, Duration)>> {
    let names: Vec<String> = watch.iter().map(|(n, _)| n.clone()).collect();
    let pids: Vec<u32> = watch.iter().map(|(_, pid)| *pid).collect();
    let sample = move || -> Vec<Option<Duration>> {
        pids.iter().map(|pid| rss::cpu_time(*pid).ok()).collect()
    };
    tokio::spawn(async move {
        tokio::time::sleep_until(window.start.into()).await;
        let before = sample();
        tokio::time::sleep_until(window.end.into()).await;
        let after = sample();
        names
            .into_iter()
            .zip(before.into_iter().zip(after))
            .filter_map(|(name, (b, a))| Some((name, a?.saturating_sub(b?))))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_have_the_asked_size_and_are_json() {
        let p = params_of_size(100);
        assert_eq!(p.len(), 100);
        assert!(serde_json::from_str::<serde_json::Value>(&p).is_ok());
    }

    #[test]
    fn shares_add_up_to_the_total() {
        for (total, lanes) in [(1, 64), (16, 64), (256, 64), (100, 64), (5, 3)] {
            let sum: usize = (0..lanes).map(|i| share_of(total, lanes, i)).sum();
            assert_eq!(sum, total, "{total} over {lanes}");
        }
    }
}
