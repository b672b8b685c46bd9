//! `wsmq-gateway`: the websocket side of wsmq. Thin on purpose: read the configuration, set up
//! logging, run.

use std::ops::ControlFlow;
use std::process::ExitCode;

use wsmq_gateway::{Cli, Config, run};

#[tokio::main]
async fn main() -> ExitCode {
    // A bad command line exits 64 like a bad configuration (systemd does not restart it);
    // --help and --version print on stdout and exit 0.
    let cli = match wsmq_service::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let config =
        match wsmq_service::startup("wsmq-gateway", &cli.file, cli.config(), Config::render) {
            ControlFlow::Continue(config) => config,
            ControlFlow::Break(code) => return code,
        };
    config.log_format.init();
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            ExitCode::FAILURE
        }
    }
}
