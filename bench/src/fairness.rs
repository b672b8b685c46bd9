//! `fairness` mode: what one caller's flood costs everybody else, with fair share on and off.
//!
//! One flooding caller (its connections all from 127.0.0.1, so one caller to a gateway without
//! authentication) keeps `--flood-in-flight` long calls in flight; each light caller (one
//! connection from its own loopback address, 127.0.0.2, .3, …) makes one call at a time. The
//! light callers' latency minus the job's own duration is how long they waited for a worker.
//! The same runs go, round by round, to a gateway with fair share on (`--url`) and one with it
//! off (`--url-off`, started with `--max-queued-per-caller 0`), both in front of the same queue
//! and workers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::future::{join, join_all, try_join_all};
use serde::Serialize;

use crate::gateway::{self, Target};
use crate::stats::{LaneStats, ModeSummary, RunResult, Window};

/// The shape of the experiment.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) url_on: String,
    pub(crate) url_off: String,
    pub(crate) method: String,
    /// How long each job takes (the demo worker's `sleep`).
    pub(crate) job_ms: u64,
    pub(crate) flood_connections: usize,
    pub(crate) flood_in_flight: usize,
    pub(crate) light_callers: u8,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) rounds: usize,
}

/// The light callers' and the flood's medians, one side.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Side {
    pub(crate) light: ModeSummary,
    pub(crate) flood: ModeSummary,
}

/// Runs every round, on then off, and prints each run and the table.
pub(crate) async fn run(setup: &Setup) -> Result<(Side, Side)> {
    let params = format!(r#"{{"ms":{}}}"#, setup.job_ms);
    let on = Target::new(&setup.url_on, &setup.method, params.clone()).await?;
    let off = Target::new(&setup.url_off, &setup.method, params).await?;
    let mut runs: [(Vec<RunResult>, Vec<RunResult>); 2] = Default::default();
    for round in 1..=setup.rounds {
        for (side, (label, target)) in [("on", &on), ("off", &off)].into_iter().enumerate() {
            let (light, flood) = run_once(setup, target).await?;
            println!(
                "fair share {label:<3} round {round}: light p50 wait {:>7.0} ms  p99 {:>7.0} ms  ({} calls)  flood {:>6.1} calls/s  errors {}",
                wait_ms(light.p50_us, setup.job_ms),
                wait_ms(light.p99_us, setup.job_ms),
                light.calls,
                flood.calls_per_s,
                light.errors + flood.errors,
            );
            runs[side].0.push(light);
            runs[side].1.push(flood);
        }
    }
    let [(light_on, flood_on), (light_off, flood_off)] = runs;
    let on = Side {
        light: ModeSummary::of(light_on),
        flood: ModeSummary::of(flood_on),
    };
    let off = Side {
        light: ModeSummary::of(light_off),
        flood: ModeSummary::of(flood_off),
    };
    print_table(setup, &on, &off);
    Ok((on, off))
}

/// Waiting time: latency less the job's own duration.
fn wait_ms(latency_us: u64, job_ms: u64) -> f64 {
    (latency_us as f64 / 1000.0 - job_ms as f64).max(0.0)
}

/// The markdown table for docs/performance.md.
fn print_table(setup: &Setup, on: &Side, off: &Side) {
    println!(
        "\nOne caller keeps {} `{}` calls of {} ms in flight; {} light callers make one call at a time.\n",
        setup.flood_in_flight, setup.method, setup.job_ms, setup.light_callers
    );
    println!("| fair share | light callers' wait p50 | p99 | light calls | flood calls/s |");
    println!("|---|---|---|---|---|");
    for (label, side) in [("on", on), ("off", off)] {
        println!(
            "| {label} | {:.0} ms | {:.0} ms | {} | {:.1} |",
            wait_ms(side.light.p50_us, setup.job_ms),
            wait_ms(side.light.p99_us, setup.job_ms),
            side.light.calls,
            side.flood.calls_per_s,
        );
    }
}

/// One run against one gateway: the flood and the light callers over the same window; the
/// flood's calls still in flight are awaited, so the next run starts with an empty queue.
async fn run_once(setup: &Setup, target: &Target) -> Result<(RunResult, RunResult)> {
    let flood_conns = try_join_all(
        (0..setup.flood_connections.max(1))
            .map(|_| gateway::connect(&target.url, target.addr, None, None)),
    )
    .await
    .context("cannot connect the flooding caller")?;
    let light_conns = try_join_all((0..setup.light_callers).map(|i| {
        // 127.0.0.2 and up: each light caller is a caller of its own.
        let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)), 0);
        gateway::connect(&target.url, target.addr, Some(source), None)
    }))
    .await
    .context("cannot connect the light callers (from 127.0.0.2 and up)")?;
    let window = Window::new(setup.warmup, setup.duration);
    let lanes = flood_conns.len();
    let flood = join_all(flood_conns.into_iter().enumerate().map(|(i, ws)| {
        let share = setup.flood_in_flight / lanes + usize::from(i < setup.flood_in_flight % lanes);
        gateway::drive(ws, share, target, window)
    }));
    let light = join_all(
        light_conns
            .into_iter()
            .map(|ws| gateway::drive(ws, 1, target, window)),
    );
    let (flood, light): (Vec<LaneStats>, Vec<LaneStats>) = join(flood, light).await;
    Ok((
        RunResult::from_lanes(&light, setup.duration),
        RunResult::from_lanes(&flood, setup.duration),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_latency_less_the_job_and_never_negative() {
        assert_eq!(wait_ms(250_000, 100), 150.0);
        assert_eq!(wait_ms(90_000, 100), 0.0);
    }
}
