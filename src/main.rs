//! The `spillway` binary: parse the CLI, set up logging, run one subcommand.

use std::process::ExitCode;

use clap::Parser;
use spillway::cli::{Cli, Command};
use std::io::{IsTerminal, Write};
use std::sync::Arc;

use spillway::cache::MetricCache;
use spillway::config::Config;
use spillway::live::render_table;
use spillway::poller::Poller;
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
        Command::Watch { config, once } => {
            let loaded = Config::load(&config)?;
            anyhow::ensure!(
                !loaded.scaled_objects.is_empty(),
                "{} defines no scaledObjects to watch",
                config.display()
            );
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(watch(loaded, once))
        }
        Command::Check { config } => {
            let loaded = Config::load(&config)?;
            tracing::info!(file = %config.display(), polling_interval = %loaded.polling_interval, "configuration is valid");
            print!("{}", loaded.to_yaml());
            Ok(())
        }
    }
}

/// `spillway watch`: tick, redraw, until Ctrl-C (or once).
async fn watch(config: Config, once: bool) -> anyhow::Result<()> {
    let cache = Arc::new(MetricCache::new());
    let mut poller = Poller::new(Arc::clone(&cache));
    let triggers = config.triggers();
    let interval = config.polling_interval.as_duration();
    let redraw = std::io::stdout().is_terminal() && !once;
    tracing::info!(triggers = triggers.len(), interval = %config.polling_interval, "watching");
    loop {
        poller.tick(&triggers).await;
        let table = render_table(&config, &cache);
        let mut stdout = std::io::stdout().lock();
        if redraw {
            // Clear the screen and home the cursor: a refreshing table, not a scrolling log.
            write!(stdout, "\x1b[2J\x1b[H")?;
        }
        writeln!(
            stdout,
            "{}  (every {}, {} connections; Ctrl-C stops)\n{table}",
            chrono::Local::now().format("%H:%M:%S"),
            config.polling_interval,
            poller.connections()
        )?;
        stdout.flush()?;
        drop(stdout);
        if once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
