//! `wsmq-gateway`: the websocket side of wsmq. Thin on purpose: parse flags, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use wsmq_gateway::{Config, run};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    config.log_format.init();
    if let Err(e) = config.validate() {
        tracing::error!(error = %e, "invalid configuration");
        // EX_USAGE, as sysexits(3) has it: systemd won't restart-loop on a bad flag.
        return ExitCode::from(64);
    }
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            ExitCode::FAILURE
        }
    }
}
