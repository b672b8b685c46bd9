//! `wsmq-soak`: steady load on a whole local deployment for a while, optionally with faults,
//! counting every call ("nothing lost, nobody dropped").
//!
//! ```text
//! wsmq-soak --seconds N [--clients K] [--chaos] [--cluster] [--seed S] [--log-dir DIR]
//! ```
//!
//! Checks RabbitMQ answers, starts a bridge, a gateway and two demo workers (the e2e harness's
//! [`System`], loopback only, per-run queue names), drives K websocket clients for N seconds and
//! with `--chaos` injects faults at random moments, at most one every ~20 s and none in the
//! last 10 s: `kill -9` of the bridge (restarted 1-3 s later), `kill -9` of a worker
//! (replaced 1-3 s later) and a RabbitMQ restart (`rabbitmqctl stop_app`, 1-3 s, `start_app`).
//! With `--cluster` the deployment runs on the 3-node cluster of `scripts/cluster` (started if
//! it is not running, left running at the end): quorum queues end to end, the bridge given the
//! nodes in the order 1, 2, 3, the workers 2, 3, 1; the chaos then kills a random node
//! (`kill -9`, started again 1-3 s later, which rejoins) instead of restarting RabbitMQ.
//! Then it prints the counts and exits 1 if any call was lost, duplicated or misrouted or a
//! websocket was closed, 2 if the run itself could not be carried out.
//!
//! The processes' logs go to files in the log directory (they log every call). Ctrl-C or
//! SIGTERM ends the run early, cleanly (RabbitMQ is started again if it was stopped).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wsmq_tests::ledger::Tally;
use wsmq_tests::load::{Load, LoadSpec};
use wsmq_tests::rabbitmq::BrokerOutage;
use wsmq_tests::{System, cluster, process};

const USAGE: &str = "usage: wsmq-soak --seconds N [--clients K] [--chaos] [--cluster] [--seed S] \
     [--log-dir DIR]";

/// Load clients unless `--clients` says otherwise.
const DEFAULT_CLIENTS: usize = 8;
/// Demo workers, and each one's `--concurrency`.
const WORKERS: u32 = 2;
const WORKER_CONCURRENCY: u32 = 8;
/// When the first fault may come (seconds into the run), and the gap to the next one.
const FIRST_FAULT_S: (u64, u64) = (3, 8);
const FAULT_GAP_S: (u64, u64) = (20, 22);
/// No fault starts this close to the end, so the run ends on a settled system.
const QUIET_TAIL: Duration = Duration::from_secs(10);
/// How long a killed process stays dead, or RabbitMQ stopped (seconds, inclusive).
const DOWN_FOR_S: (u64, u64) = (1, 3);
/// How long the deployment may take to be healthy again after a fault.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// The longest run accepted (an hour): the runner must stop by itself.
const MAX_SECONDS: u64 = 3600;

#[derive(Debug)]
struct Args {
    seconds: u64,
    clients: usize,
    chaos: bool,
    cluster: bool,
    seed: Option<u64>,
    log_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut seconds = None;
    let mut clients = DEFAULT_CLIENTS;
    let mut chaos = false;
    let mut on_cluster = false;
    let mut seed = None;
    let mut log_dir = None;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--seconds" => {
                seconds = Some(value("--seconds")?.parse().context("--seconds: a number")?);
            }
            "--clients" => clients = value("--clients")?.parse().context("--clients: a number")?,
            "--chaos" => chaos = true,
            "--cluster" => on_cluster = true,
            "--seed" => seed = Some(value("--seed")?.parse().context("--seed: a number")?),
            "--log-dir" => log_dir = Some(PathBuf::from(value("--log-dir")?)),
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let seconds: u64 = seconds.with_context(|| format!("--seconds is required\n{USAGE}"))?;
    if seconds == 0 || seconds > MAX_SECONDS {
        bail!("--seconds must be 1..={MAX_SECONDS}");
    }
    if clients == 0 {
        bail!("--clients must be at least 1");
    }
    Ok(Args {
        seconds,
        clients,
        chaos,
        cluster: on_cluster,
        seed,
        log_dir,
    })
}

/// A small deterministic generator (xorshift64*), so a `--seed` replays the same faults.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough in `lo..=hi`.
    fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillBridge,
    KillWorker,
    RestartRabbitmq,
    /// `kill -9` of a random cluster node, started again after the down time.
    KillNode,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::KillBridge => "kill -9 bridge",
            Self::KillWorker => "kill -9 worker",
            Self::RestartRabbitmq => "restart RabbitMQ",
            Self::KillNode => "kill -9 node",
        }
    }
}

/// One fault as it happened, for the report.
struct Injected {
    at: Duration,
    fault: Fault,
    down_for: Duration,
    /// From the fault to `/healthz` 200 again; the error if it never came back.
    recovered: Result<Duration>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(64);
        }
    };
    match run(args).await {
        Ok(clean) if clean => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("wsmq-soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The run; `Ok(clean)`.
async fn run(args: Args) -> Result<bool> {
    let seed = args.seed.unwrap_or_else(|| {
        // Any bits will do; uuid's come from the OS generator.
        let bits = uuid::Uuid::new_v4().as_u128();
        (bits as u64) ^ ((bits >> 64) as u64)
    });
    let log_dir = match args.log_dir.clone() {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("wsmq-soak-")
            .tempdir()
            .context("cannot create a log directory")?
            .keep(),
    };
    process::log_to_dir(&log_dir)?;
    println!(
        "wsmq-soak: {} s, {} clients, chaos {}, {}, seed {seed}; process logs in {}",
        args.seconds,
        args.clients,
        if args.chaos { "on" } else { "off" },
        if args.cluster {
            "on the 3-node cluster (quorum queues)"
        } else {
            "on the default broker"
        },
        log_dir.display()
    );

    let stop = CancellationToken::new();
    spawn_signal_watch(stop.clone());

    let mut builder = System::builder()
        .workers(WORKERS)
        .worker_concurrency(WORKER_CONCURRENCY);
    if args.cluster {
        cluster::up().await.context("cannot start the cluster")?;
        builder = builder
            .amqp_url(cluster::url(1))
            .bridge_amqp(cluster::urls(&[1, 2, 3]))
            .worker_amqp(cluster::urls(&[2, 3, 1]))
            .quorum_queues();
    }
    let mut system = builder
        .start()
        .await
        .context("cannot start the deployment (is RabbitMQ running?)")?;
    let addr = system.gateway_addr()?;
    let targets: Vec<(SocketAddr, String)> = (0..args.clients)
        .map(|i| (addr, format!("soak{i}-")))
        .collect();
    let spec = LoadSpec {
        reconnect: true,
        ..LoadSpec::default()
    };
    let started = Instant::now();
    let load = Load::start(&targets, &spec);

    let end = started + Duration::from_secs(args.seconds);
    let mut injected = Vec::new();
    let chaos = if args.chaos {
        chaos(
            &mut system,
            args.cluster,
            &mut Rng::new(seed),
            started,
            end,
            &stop,
            &mut injected,
        )
        .await
    } else {
        Ok(())
    };
    // Whatever happened to the chaos, run to the end (or the signal) so the counts mean
    // something, then settle.
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep_until(end) => {}
    }
    let ran_for = started.elapsed();
    println!(
        "load stopped after {:.1} s; waiting for the last answers",
        ran_for.as_secs_f64()
    );
    let tally = load.finish().await;
    let cleanup = system.try_cleanup().await;

    print_faults(&injected);
    let tally = tally.context("a load client failed")?;
    print_tally(&tally, ran_for);
    chaos.context("fault injection failed")?;
    if let Some(failed) = injected.iter().find(|i| i.recovered.is_err()) {
        bail!(
            "the deployment did not recover from {}",
            failed.fault.name()
        );
    }
    cleanup.context("cleanup failed")?;
    let clean =
        tally.lost == 0 && tally.duplicated == 0 && tally.misrouted == 0 && tally.closes == 0;
    println!("result: {}", if clean { "PASS" } else { "FAIL" });
    Ok(clean)
}

/// Injects faults until `end` (see the module docs). Stops early on `stop`; a fault in
/// progress is always completed (a stopped RabbitMQ is always started again).
async fn chaos(
    system: &mut System,
    on_cluster: bool,
    rng: &mut Rng,
    started: Instant,
    end: Instant,
    stop: &CancellationToken,
    injected: &mut Vec<Injected>,
) -> Result<()> {
    // Every kind once, in a random order, then again.
    let broker_fault = if on_cluster {
        Fault::KillNode
    } else {
        Fault::RestartRabbitmq
    };
    let mut kinds = [Fault::KillBridge, Fault::KillWorker, broker_fault];
    for i in (1..kinds.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        kinds.swap(i, j);
    }
    let mut next_at = started + Duration::from_secs(rng.between(FIRST_FAULT_S));
    for fault in kinds.iter().cycle().copied() {
        if next_at + QUIET_TAIL > end {
            return Ok(());
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep_until(next_at) => {}
        }
        let at = started.elapsed();
        let down_for = Duration::from_secs(rng.between(DOWN_FOR_S));
        println!(
            "t={:>6.1}s  {} (down {} s)",
            at.as_secs_f64(),
            fault.name(),
            down_for.as_secs()
        );
        let begun = Instant::now();
        let recovered = inject(system, rng, fault, down_for, at)
            .await
            .map(|()| begun.elapsed());
        if let Err(e) = &recovered {
            println!("           {}: {e:#}", fault.name());
        }
        let failed = recovered.is_err();
        injected.push(Injected {
            at,
            fault,
            down_for,
            recovered,
        });
        if failed {
            return Ok(());
        }
        next_at = begun + Duration::from_secs(rng.between(FAULT_GAP_S));
    }
    Ok(())
}

/// One fault, through to `/healthz` 200 (and, for a worker, the replacement consuming).
async fn inject(
    system: &mut System,
    rng: &mut Rng,
    fault: Fault,
    down_for: Duration,
    at: Duration,
) -> Result<()> {
    match fault {
        Fault::KillBridge => {
            system.kill_bridge().await?;
            tokio::time::sleep(down_for).await;
            system.start_bridge().await?;
        }
        Fault::KillWorker => {
            let count = system.worker_count();
            if count == 0 {
                bail!("no worker left to kill");
            }
            let index = (rng.next() % count as u64) as usize;
            system.kill_worker(index).await?;
            tokio::time::sleep(down_for).await;
            system.start_worker(WORKER_CONCURRENCY).await?;
        }
        Fault::RestartRabbitmq => {
            let outage = BrokerOutage::begin().await?;
            tokio::time::sleep(down_for).await;
            outage.end().await?;
        }
        Fault::KillNode => {
            let node = (rng.next() % cluster::NODES as u64) as usize + 1;
            println!(
                "t={:>6.1}s  node {node} ({}) killed",
                at.as_secs_f64(),
                cluster::address(node)
            );
            cluster::kill(node).await?;
            tokio::time::sleep(down_for).await;
            cluster::start(node).await?;
        }
    }
    system
        .wait_health_within(RECOVERY_LIMIT, "200", |status, _| status == 200)
        .await
        .map(drop)
}

/// Cancels `stop` on SIGINT or SIGTERM.
fn spawn_signal_watch(stop: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            eprintln!("wsmq-soak: cannot listen for signals; Ctrl-C will not clean up");
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        println!("signal received: ending the run early");
        stop.cancel();
    });
}

fn print_faults(injected: &[Injected]) {
    if injected.is_empty() {
        println!("faults injected: none");
        return;
    }
    println!("faults injected:");
    for i in injected {
        let recovered = match &i.recovered {
            Ok(took) => format!(
                "healthy again {:.1} s after the fault began",
                took.as_secs_f64()
            ),
            Err(e) => format!("NOT RECOVERED: {e:#}"),
        };
        println!(
            "  t={:>6.1}s  {:<17} down {} s, {recovered}",
            i.at.as_secs_f64(),
            i.fault.name(),
            i.down_for.as_secs()
        );
    }
}

fn print_tally(tally: &Tally, ran_for: Duration) {
    println!(
        "counts ({:.0} s, {:.0} calls/s):",
        ran_for.as_secs_f64(),
        tally.sent as f64 / ran_for.as_secs_f64().max(1.0)
    );
    println!("{tally}");
    for note in &tally.notes {
        println!("  note: {note}");
    }
}
