//! The `spillway` binary: parse the CLI, set up logging, run one subcommand.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use spillway::cli::{Cli, Command, LoadTarget};
use std::io::{IsTerminal, Write};
use std::sync::Arc;

use spillway::api;
use spillway::cache::MetricCache;
use spillway::config::Config;
use spillway::live::render_table;
use spillway::loadgen;
use spillway::poller::{PollRequests, Poller};
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
        Command::Serve {
            config,
            kubeconfig,
            no_auth,
        } => {
            let loaded = Config::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(serve(loaded, kubeconfig, no_auth))
        }
        Command::Check { config } => {
            let loaded = Config::load(&config)?;
            tracing::info!(file = %config.display(), polling_interval = %loaded.polling_interval, "configuration is valid");
            print!("{}", loaded.to_yaml());
            Ok(())
        }
        Command::Crd => {
            print!("{}", spillway::controller::crd::crd_yaml());
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
async fn serve(
    config: Config,
    kubeconfig: Option<std::path::PathBuf>,
    no_auth: bool,
) -> anyhow::Result<()> {
    let cache = Arc::new(MetricCache::new());
    let triggers = config.triggers();
    let (poll_requests, poll_asks) = PollRequests::channel();
    let state =
        api::AppState::from_config(&config, Arc::clone(&cache)).with_poll_requests(poll_requests);
    let auth = if no_auth {
        None
    } else {
        let client = spillway::kube_client::client(kubeconfig.as_deref())
            .await
            .context("authentication needs a cluster to ask (pass --no-auth to serve without, on a trusted machine only)")?;
        Some(api::auth::Authenticator::new(client).await?)
    };
    let verifier = auth.clone().map(|a| {
        Arc::new(api::auth::ClientCertPolicy::new(a))
            as Arc<dyn tokio_rustls::rustls::server::danger::ClientCertVerifier>
    });
    let tls = api::tls_config(config.server.tls.as_ref(), verifier)?;
    let listener = api::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    let reload = auth.clone().map(|a| tokio::spawn(a.reload_forever()));
    if auth.is_none() {
        tracing::warn!(%addr, "--no-auth: the metrics API is unauthenticated; anyone who can reach this address can read every metric");
    }
    tracing::info!(%addr, metrics = state.metrics.len(), interval = %config.polling_interval, "serving the external metrics API");
    let metrics_listener = api::bind(config.server.metrics_listen).await?;
    tracing::info!(addr = %metrics_listener.local_addr()?, "serving spillway's own metrics on /metrics (plain HTTP)");
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = tokio::spawn(spillway::metrics::serve_metrics(
        metrics_listener,
        Arc::clone(&state.own_metrics),
        async {
            let _ = metrics_stopped.await;
        },
    ));
    let interval = config.polling_interval.as_duration();
    let poller = Poller::new(cache).with_metrics(Arc::clone(&state.own_metrics));
    let poller = tokio::spawn(poller.run(triggers, interval, poll_asks));
    api::serve(listener, tls, state, auth, shutdown_signal()).await;
    let _ = stop_metrics.send(());
    // A scraper holding its connection open must not hold up the exit.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), metrics_server).await;
    if let Some(reload) = reload {
        reload.abort();
    }
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
