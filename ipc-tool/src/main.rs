//! `wsmq-ipc`: the socket-level debugging tool for the gateway <-> bridge link.
//!
//! The gateway and the bridge talk over a Unix socket in length-framed postcard, which neither
//! `socat` nor a packet capture can read. This tool speaks it: `ping` does the gateway's
//! handshake against a bridge, `tap` sits in the link and prints every frame as JSON, and
//! `decode` reads captured bytes. Thin on purpose: parse the command line, run the command,
//! turn its outcome into an exit status scripts can test.

#![forbid(unsafe_code)]

mod decode;
mod frame;
mod ping;
mod render;
mod tap;

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::render::Direction;

/// Exit status of `tap` and `decode` when they fail.
const EXIT_FAILURE: u8 = 1;

const PING_HELP: &str = "\
Exit status:
  0   welcomed, and the bridge's broker (RabbitMQ) is up
  1   welcomed, but the broker is down or blocking publishers (memory/disk alarm)
  2   refused: another gateway is connected (the bridge serves one at a time, so this is the
      normal answer on a production host; also for a moment after a gateway or another ping
      disconnects, until the bridge has ended that session), or the bridge speaks another
      protocol version
  3   no answer: cannot connect, timed out, the bridge closed, or the answer is not the protocol
  64  bad command line

While ping is connected it holds the bridge's single gateway slot, for one round trip.

Examples:
  wsmq-ipc ping --ipc /run/wsmq/bridge.sock
  wsmq-ipc ping --json --timeout 500ms";

const TAP_HELP: &str = "\
Usage: start the bridge on --ipc /run/wsmq/bridge.sock, then
  wsmq-ipc tap --listen /tmp/tap.sock --connect /run/wsmq/bridge.sock
and start (or restart) the gateway with --ipc /tmp/tap.sock.

Each frame prints as one line, flushed at once:
  {\"time\":\"2025-01-01T12:00:00.123456Z\",\"conn\":1,\"dir\":\"gateway->bridge\",\"len\":42,\"msg\":{\"Submit\":{...}}}
`msg` is the message in serde's JSON shape, job ids as hyphenated UUIDs. A frame that does not
decode prints with \"error\" and \"hex\" (its bytes, length prefix included) and is still relayed.
Connection events and warnings go to stderr.

Bytes are relayed unchanged and never wait for printing: if stdout cannot keep up, frames are
relayed but not printed; stderr says how many each second, and the next printed line carries
\"skipped_before\":N. If stdout closes, the tap stops.

Exit status: 0 stopped by SIGINT/SIGTERM; 1 cannot listen, or stdout failed; 64 bad command line.";

const DECODE_HELP: &str = "\
Input: the raw bytes one side wrote, from the start of a connection. To capture a live link,
put socat where tap would go (it serves one connection, then exits):
  socat -r to-bridge.bin -R to-gateway.bin \\
      UNIX-LISTEN:/tmp/capture.sock UNIX-CONNECT:/run/wsmq/bridge.sock
point the gateway's --ipc at /tmp/capture.sock, then: wsmq-ipc decode to-bridge.bin

Each frame prints as one line: {\"offset\":0,\"dir\":\"gateway->bridge\",\"len\":16,\"msg\":{...}}.
Without --dir each frame is tried both ways, and the first one that decodes only one way fixes
the direction for the rest (before that, a short frame that decodes both ways is shown as
gateway->bridge with \"ambiguous\":true). A frame that does not decode prints with \"error\" and
\"hex\" (its bytes, length prefix included), and decoding goes on with the next frame; a length
over the 16 MiB limit stops it, since nothing after it can be trusted to be a frame boundary.

Exit status: 0 every frame decoded; 1 a frame did not decode, the input ends inside a frame
(its offset is printed), or the input cannot be read; 64 bad command line.";

/// Debug the Unix socket between wsmq-gateway and wsmq-bridge.
///
/// Frames on the socket are a 4-byte big-endian length, then a postcard-encoded message
/// (wsmq-ipc-proto). `ping` does the gateway's handshake against a bridge, `tap` relays a live
/// link and prints every frame as JSON, `decode` prints the frames in captured bytes.
/// `wsmq-ipc help <COMMAND>` gives each command's output and exit status.
#[derive(Debug, Parser)]
#[command(name = "wsmq-ipc", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Say hello to a bridge like a gateway would: is it there, which instance, is RabbitMQ up.
    #[command(after_help = PING_HELP)]
    Ping(PingArgs),
    /// Relay a gateway's connection to the bridge unchanged, printing every frame as JSON.
    #[command(after_help = TAP_HELP)]
    Tap(TapArgs),
    /// Print the frames in raw bytes captured from one direction of the socket.
    #[command(after_help = DECODE_HELP)]
    Decode(DecodeArgs),
}

#[derive(Debug, Args)]
struct PingArgs {
    /// The bridge's socket (the bridge's and the gateway's --ipc).
    #[arg(
        long,
        env = "WSMQ_IPC",
        default_value = "/run/wsmq/bridge.sock",
        value_name = "PATH"
    )]
    ipc: PathBuf,
    /// Give up after this long, connecting and answering together (e.g. 500ms, 5s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print one JSON object (path, result, version, instance, broker, rtt_ms, exit_code, and
    /// reason or error) instead of a sentence; always on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct TapArgs {
    /// Socket to listen on; point the gateway's --ipc here. A stale socket file is removed; a
    /// live listener there is an error.
    #[arg(long, value_name = "PATH_A")]
    listen: PathBuf,
    /// The bridge's socket, where each connection is relayed to.
    #[arg(long, value_name = "PATH_B")]
    connect: PathBuf,
}

#[derive(Debug, Args)]
struct DecodeArgs {
    /// Capture of one direction's bytes; `-` or nothing reads stdin.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// Which way the bytes went: to-bridge (sent by the gateway) or to-gateway (sent by the
    /// bridge). Default: detect it.
    #[arg(long, value_enum)]
    dir: Option<Direction>,
}

fn main() -> ExitCode {
    // Help and version go to stdout with 0; anything else is a usage error (64, EX_USAGE, as
    // the other wsmq binaries have it: clap's own 2 would read as "refused" to a script calling
    // `ping`).
    let cli = match wsmq_service::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Command::Ping(args) => run_ping(&args),
        Command::Tap(args) => run_tap(args),
        Command::Decode(args) => run_decode(&args),
    }
}

fn run_ping(args: &PingArgs) -> ExitCode {
    let outcome = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(ping::ping(&args.ipc, args.timeout)),
        Err(e) => {
            eprintln!("wsmq-ipc ping: cannot start the async runtime: {e}");
            return ExitCode::from(ping::EXIT_UNREACHABLE);
        }
    };
    let code = outcome.exit_code();
    if args.json {
        println!("{}", outcome.json(&args.ipc));
    } else if matches!(outcome, ping::Outcome::Failed(_)) {
        eprintln!("wsmq-ipc ping: {}", outcome.human(&args.ipc));
    } else {
        println!("{}", outcome.human(&args.ipc));
    }
    ExitCode::from(code)
}

fn run_tap(args: TapArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(async {
                let shutdown = CancellationToken::new();
                spawn_signal_handler(shutdown.clone())?;
                let config = tap::TapConfig {
                    listen: args.listen,
                    connect: args.connect,
                };
                tap::run(config, shutdown).await
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsmq-ipc tap: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        shutdown.cancel();
    });
    Ok(())
}

fn run_decode(args: &DecodeArgs) -> ExitCode {
    match decode_input(args) {
        Ok(summary) if summary.clean() => ExitCode::SUCCESS,
        Ok(summary) => {
            eprintln!("wsmq-ipc decode: {}", summary.describe());
            ExitCode::from(EXIT_FAILURE)
        }
        Err(e) => {
            eprintln!("wsmq-ipc decode: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn decode_input(args: &DecodeArgs) -> anyhow::Result<decode::Summary> {
    let input: Box<dyn Read> = match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            Box::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?)
        }
        _ => Box::new(io::stdin().lock()),
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let summary = decode::decode_stream(input, args.dir, &mut out)?;
    out.flush().context("cannot write to stdout")?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dir_values_are_named_as_documented() {
        let cli = Cli::try_parse_from(["wsmq-ipc", "decode", "--dir", "to-gateway", "-"])
            .expect("parses");
        match cli.command {
            Command::Decode(args) => assert_eq!(args.dir, Some(Direction::ToGateway)),
            other => panic!("parsed as {other:?}"),
        }
    }
}
