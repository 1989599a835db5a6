//! The `spillway` binary: parse the CLI, set up logging, run one subcommand.

use std::process::ExitCode;

use clap::Parser;
use spillway::cli::{Cli, Command, LoadTarget};
use std::io::{IsTerminal, Write};
use std::sync::Arc;

use spillway::api;
use spillway::cache::MetricCache;
use spillway::config::Config;
use spillway::live::render_table;
use spillway::loadgen;
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
        Command::Loadgen { load, target } => {
            let target = match target {
                LoadTarget::Kafka {
                    bootstrap_servers,
                    topic,
                    partitions,
                    group,
                } => loadgen::Target::Kafka {
                    bootstrap: bootstrap_servers,
                    topic,
                    partitions,
                    group,
                },
                LoadTarget::Rabbitmq { url, queue } => loadgen::Target::RabbitMq { url, queue },
                LoadTarget::Nats {
                    url,
                    stream,
                    consumer,
                } => loadgen::Target::Nats {
                    url,
                    stream,
                    consumer,
                },
            };
            let load = loadgen::Load {
                shape: load.shape,
                rate: load.rate,
                consume_rate: load.consume_rate,
                period: std::time::Duration::from_secs(load.period),
                duration: load.duration.map(std::time::Duration::from_secs),
            };
            tokio::runtime::Runtime::new()?.block_on(loadgen::run(target, load))
        }
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
        Command::Serve { config } => {
            let loaded = Config::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(serve(loaded))
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

/// `spillway serve`: the metrics API from the first moment, the poller behind it in its own
/// task, both until Ctrl-C or SIGTERM.
async fn serve(config: Config) -> anyhow::Result<()> {
    let cache = Arc::new(MetricCache::new());
    let triggers = config.triggers();
    let state = api::AppState {
        cache: Arc::clone(&cache),
        metrics: api::external::catalog(&triggers).into(),
    };
    let tls = api::tls_config(config.server.tls.as_ref())?;
    let listener = api::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    tracing::warn!(%addr, "the metrics API is unauthenticated: anyone who can reach this address can read every metric");
    tracing::info!(%addr, metrics = state.metrics.len(), interval = %config.polling_interval, "serving the external metrics API");
    let interval = config.polling_interval.as_duration();
    let poller = tokio::spawn(async move {
        let mut poller = Poller::new(cache);
        // Ticks start every interval; a slow round delays the next instead of bunching up.
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            poller.tick(&triggers).await;
        }
    });
    api::serve(listener, tls, state, shutdown_signal()).await;
    // The poller holds no state worth finishing: a reading cut short is simply not recorded.
    poller.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or, on Unix, SIGTERM (what Kubernetes sends to stop a pod).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}
