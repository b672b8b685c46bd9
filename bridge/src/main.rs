//! `wsmq-bridge`: the RabbitMQ side of wsmq. Thin on purpose: read the configuration, set up
//! logging, run.

use std::ops::ControlFlow;
use std::process::ExitCode;

use wsmq_bridge::{Cli, Config, run};

// One thread: lapin already runs its own I/O thread, and every job crosses from it to the
// gateway link and back; with tokio's worker threads on top, the hand-offs between threads cost more
// than the work (wsmq-bench, 256 in flight: 198 -> 150 µs of bridge CPU per call).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // A bad command line exits 64 like a bad configuration (systemd does not restart it);
    // --help and --version print on stdout and exit 0.
    let cli = match wsmq_service::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let config = match wsmq_service::startup("wsmq-bridge", &cli.file, cli.config(), Config::render)
    {
        ControlFlow::Continue(config) => config,
        ControlFlow::Break(code) => return code,
    };
    config.log_format.init();
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "bridge failed");
            ExitCode::FAILURE
        }
    }
}
