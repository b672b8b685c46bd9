//! The command line: where the gateway is (started by the kit or given), the broker, and the
//! worker under test. Checked before anything starts, so a bad one exits 64 having touched nothing.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// The broker unless `--amqp` or `WSMQ_AMQP` says otherwise.
pub(crate) const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Jobs the worker under test runs at once unless `--concurrency` says otherwise.
pub(crate) const DEFAULT_CONCURRENCY: u16 = 4;

/// Checks a wsmq worker against the worker contract through a real gateway, bridge and RabbitMQ.
///
/// The worker serves the conf.* methods (docs/conformance.md). Prints one line per check
/// (PASS/FAIL/SKIP name: detail) and a summary; exits 0 only when every check passed, 1 when one
/// failed or was skipped, 2 when the kit could not run, 64 for a bad command line.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    /// Start a bridge and a gateway of the kit's own (else --gateway is required).
    #[arg(long, conflicts_with_all = ["gateway", "token", "caller"])]
    pub(crate) start: bool,

    /// The websocket URL of a running gateway, e.g. ws://127.0.0.1:8080/ws.
    #[arg(long, required_unless_present_any = ["start", "list"])]
    pub(crate) gateway: Option<String>,

    /// With --gateway: the bearer token to connect with.
    #[arg(long, requires = "gateway")]
    pub(crate) token: Option<String>,

    /// With --gateway and --token: the identity the gateway maps the token to (what
    /// conf.caller must answer).
    #[arg(long, requires = "token")]
    pub(crate) caller: Option<String>,

    /// With --start: the wsmq-bridge to run. [default: beside wsmq-conformance]
    #[arg(long, requires = "start")]
    pub(crate) bridge_bin: Option<PathBuf>,

    /// With --start: the wsmq-gateway to run. [default: beside wsmq-conformance]
    #[arg(long, requires = "start")]
    pub(crate) gateway_bin: Option<PathBuf>,

    /// AMQP URI of the broker.
    #[arg(long, env = "WSMQ_AMQP", default_value = DEFAULT_AMQP, hide_env_values = true)]
    pub(crate) amqp: String,

    /// The bridge's queue prefix. [default with --start: wsmq-conformance.<uuid>.; required
    /// with --gateway, '' for none]
    #[arg(long, required_unless_present_any = ["start", "list"])]
    pub(crate) queue_prefix: Option<String>,

    /// The worker under test, run with `sh -c` in a process group of its own, with WSMQ_AMQP,
    /// WSMQ_QUEUE_PREFIX and WSMQ_CONCURRENCY in its environment. Without it the worker must
    /// already run, and the redelivery check is skipped.
    #[arg(long)]
    pub(crate) worker_cmd: Option<String>,

    /// How many jobs the worker runs at once (passed to it as WSMQ_CONCURRENCY).
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) concurrency: u16,

    /// How the worker declares its queues, for the queue-arguments check.
    #[arg(long, value_enum, default_value_t = QueueKind::Classic)]
    pub(crate) queue_type: QueueKind,

    /// With --queue-type quorum: the worker's delivery limit.
    #[arg(long, default_value_t = 3)]
    pub(crate) delivery_limit: u32,

    /// Run only this check (repeatable); see --list.
    #[arg(long = "check", value_name = "NAME")]
    pub(crate) checks: Vec<String>,

    /// Print the checks' names and what each shows, then exit.
    #[arg(long)]
    pub(crate) list: bool,

    /// Also show the bridge's and the gateway's log lines on stderr.
    #[arg(long)]
    pub(crate) verbose: bool,
}

/// `--queue-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum QueueKind {
    Classic,
    Quorum,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("wsmq-conformance").chain(args.iter().copied()))
    }

    #[test]
    fn start_needs_nothing_else() {
        let cli = parse(&["--start"]).expect("parses");
        assert!(cli.start);
        assert_eq!(cli.queue_prefix, None);
        assert_eq!(cli.concurrency, DEFAULT_CONCURRENCY);
    }

    #[test]
    fn a_given_gateway_needs_the_queue_prefix() {
        assert!(parse(&["--gateway", "ws://127.0.0.1:1/ws"]).is_err());
        let cli = parse(&["--gateway", "ws://127.0.0.1:1/ws", "--queue-prefix", ""]).expect("ok");
        assert_eq!(cli.queue_prefix.as_deref(), Some(""));
    }

    #[test]
    fn start_and_gateway_exclude_each_other() {
        assert!(parse(&["--start", "--gateway", "ws://x/ws"]).is_err());
        assert!(parse(&[]).is_err(), "one of them is required");
    }

    #[test]
    fn caller_needs_a_token() {
        let base = ["--gateway", "ws://x/ws", "--queue-prefix", ""];
        assert!(parse(&[&base[..], &["--caller", "alice"]].concat()).is_err());
        assert!(parse(&[&base[..], &["--token", "t", "--caller", "alice"]].concat()).is_ok());
    }

    #[test]
    fn concurrency_is_at_least_one() {
        assert!(parse(&["--start", "--concurrency", "0"]).is_err());
    }
}
