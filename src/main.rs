//! The `spillway` binary: parse the CLI, set up logging, run one subcommand.

use std::process::ExitCode;

use clap::Parser;
use spillway::cli::{Cli, Command};
use spillway::config::Config;
use spillway::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = telemetry::init_logging(cli.log_format, &cli.log_level) {
        eprintln!("spillway: {err}");
        return ExitCode::from(2);
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "spillway failed");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check { config } => {
            let loaded = Config::load(&config)?;
            tracing::info!(file = %config.display(), polling_interval = %loaded.polling_interval, "configuration is valid");
            print!("{}", loaded.to_yaml());
            Ok(())
        }
    }
}
