//! `wsmq-bridge`: the RabbitMQ side of wsmq. Thin on purpose: read the configuration, set up
//! logging, run.

use std::process::ExitCode;

use clap::Parser;
use wsmq_bridge::{Cli, run};

/// EX_USAGE, as sysexits(3) has it: systemd won't restart-loop on a bad setting.
const EXIT_USAGE: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wsmq-bridge: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if cli.print_config {
        return match config.render() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wsmq-bridge: {e}");
                ExitCode::FAILURE
            }
        };
    }
    config.log_format.init();
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "bridge failed");
            ExitCode::FAILURE
        }
    }
}
