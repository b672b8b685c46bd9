//! `wsmq-gateway`: the websocket side of wsmq. Thin on purpose: read the configuration, set up
//! logging, run.

use std::ops::ControlFlow;
use std::process::ExitCode;

use clap::Parser;
use wsmq_gateway::{Cli, Config, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
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
