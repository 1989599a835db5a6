//! The `spillway` binary: parse the CLI, set up logging, run one subcommand.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use spillway::api;
use spillway::cache::MetricCache;
use spillway::cache::PollRequests;
use spillway::cli::{Cli, Command, LoadTarget};
use spillway::config::Config;
use spillway::destination::{self, DestinationClass, DestinationPolicy};
use spillway::live::LiveTable;
use spillway::loadgen;
use spillway::poller::Poller;
use spillway::telemetry;

fn main() -> ExitCode {
    spillway::memory::configure_allocator();
    let cli = Cli::parse();
    if let Err(err) = telemetry::init_logging(cli.log_format, &cli.log_level) {
        eprintln!("spillway: {err}");
        return ExitCode::from(2);
    }
    match run(cli.command, &cli.allow_destinations, cli.metrics_listen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "spillway failed");
            ExitCode::FAILURE
        }
    }
}

/// Installs the destination policy before anything connects: the classes `--allow-destinations`
/// and the config's `server.allowDestinations` allow, and the API server's address.
fn install_destination_policy(flags: &[DestinationClass], config: &Config) {
    let allowed = flags
        .iter()
        .chain(&config.server.allow_destinations)
        .copied();
    destination::install(
        DestinationPolicy::strict()
            .allowing(allowed)
            .with_api_server(destination::api_server_addresses()),
    );
}

fn run(
    command: Command,
    allow_destinations: &[DestinationClass],
    metrics_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    // `--metrics-listen` (the pod's IP in the default install) over `server.metricsListen`.
    let with_metrics_listen = |mut config: Config| -> anyhow::Result<Config> {
        if let Some(address) = metrics_listen {
            config
                .server
                .override_metrics_listen(address)
                .map_err(anyhow::Error::msg)?;
        }
        Ok(config)
    };
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
            install_destination_policy(allow_destinations, &loaded);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(watch(loaded, once))
        }
        Command::Serve {
            config,
            kubeconfig,
            no_auth,
        } => {
            let loaded = with_metrics_listen(Config::load(&config)?)?;
            install_destination_policy(allow_destinations, &loaded);
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
        Command::ImportKeda(args) => import_keda(args),
        Command::Plan(args) => {
            install_destination_policy(allow_destinations, &Config::default());
            plan_command(args)
        }
        Command::Run {
            config,
            kubeconfig,
            election,
            credentials,
            reconcile,
            sharing,
        } => {
            let loaded = match &config {
                Some(path) => {
                    let loaded = Config::load(path)?;
                    anyhow::ensure!(
                        loaded.scaled_objects.is_empty(),
                        "{}: scaledObjects are not read by `spillway run`; create ScaledObject resources instead",
                        path.display()
                    );
                    loaded
                }
                None => Config::default(),
            };
            let loaded = with_metrics_listen(loaded)?;
            install_destination_policy(allow_destinations, &loaded);
            tokio::runtime::Runtime::new()?.block_on(run_in_cluster(
                loaded,
                kubeconfig,
                election,
                credentials,
                reconcile,
                sharing,
            ))
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
    // Keeps each trigger's previous reading, for the rate column.
    let mut live = LiveTable::new();
    tracing::info!(triggers = triggers.len(), interval = %config.polling_interval, "watching");
    loop {
        poller.tick(&triggers).await;
        let table = live.render(&config, &cache);
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

/// `spillway import-keda`: read KEDA's objects, import them, and print the YAML (or write
/// one file each), the refusals, or with `--check` what differs. Nothing is written when an
/// object is refused, unless `--skip-refused`.
fn import_keda(args: spillway::cli::ImportKedaArgs) -> anyhow::Result<()> {
    use spillway::import_keda::{self, Completeness, ImportError, cluster, input};
    let (documents, completeness) = if args.from_cluster {
        let documents = tokio::runtime::Runtime::new()?.block_on(async {
            let client = spillway::kube_client::client(args.kubeconfig.as_deref()).await?;
            let documents =
                cluster::read(&client, args.namespace.as_deref(), &args.keda_namespace).await?;
            anyhow::Ok(documents)
        })?;
        (documents, Completeness::Complete)
    } else {
        (input::read_paths(&args.filename)?, Completeness::Partial)
    };
    if documents.objects.is_empty() {
        for ignored in &documents.ignored {
            eprintln!("ignored {ignored}");
        }
        return Err(ImportError::Empty.into());
    }
    let report = import_keda::import(&documents.objects, documents.ignored, completeness);
    if args.check {
        print!("{}", report.check());
    } else {
        eprint!("{}", report.refusals());
    }
    let refused = report.refused();
    anyhow::ensure!(
        refused == 0 || args.skip_refused,
        "{refused} of {} objects refused (reasons above){}",
        report.outcomes.len(),
        if args.check {
            ""
        } else {
            ": nothing written; --skip-refused writes the others"
        }
    );
    if args.check {
        return Ok(());
    }
    match &args.output_dir {
        Some(dir) => {
            for path in report.write_dir(dir)? {
                eprintln!("wrote {}", path.display());
            }
        }
        None => print!("{}", report.yaml()),
    }
    Ok(())
}

/// `spillway plan`: the scaled objects of a ScaledObject manifest or a config file, their
/// values as given (or polled once), and the HPA's decision for each, printed.
fn plan_command(args: spillway::cli::PlanArgs) -> anyhow::Result<()> {
    use spillway::plan::{PlanSource, parse_scaled_objects, plan};
    anyhow::ensure!(
        args.live || args.kubeconfig.is_none(),
        "--kubeconfig is read with --live only: given values need no Secrets"
    );
    let mut sources = match (&args.filename, &args.config) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            parse_scaled_objects(path, &text)?
                .iter()
                .map(PlanSource::from_scaled_object)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| path.display().to_string())?
        }
        (None, Some(path)) => Config::load(path)?
            .scaled_objects
            .iter()
            .map(PlanSource::from_config)
            .collect::<Result<Vec<_>, _>>()?,
        (None, None) => anyhow::bail!("give a ScaledObject manifest (-f) or a config file (-c)"),
    };
    if let Some(name) = &args.name {
        sources.retain(|s| s.input.object == *name || s.config.name == *name);
        anyhow::ensure!(!sources.is_empty(), "no scaled object named {name}");
    }
    anyhow::ensure!(!sources.is_empty(), "no scaled objects to plan");
    if args.live {
        tokio::runtime::Runtime::new()?.block_on(async {
            if let Some(kubeconfig) = &args.kubeconfig {
                let client = spillway::kube_client::client(Some(kubeconfig)).await?;
                let cluster_namespace = std::env::var("SPILLWAY_CLUSTER_TRIGGER_AUTH_NAMESPACE")
                    .unwrap_or_else(|_| {
                        spillway::controller::reconcile::DEFAULT_CLUSTER_AUTH_NAMESPACE.into()
                    });
                for source in &mut sources {
                    spillway::controller::triggers::resolve_authentication(
                        &mut source.config,
                        &client,
                        &cluster_namespace,
                    )
                    .await?;
                    spillway::controller::triggers::resolve_secrets(&mut source.config, &client)
                        .await?;
                }
            }
            let cache = Arc::new(MetricCache::new());
            let mut poller = Poller::new(Arc::clone(&cache));
            let mut triggers = Vec::new();
            for source in &sources {
                triggers.extend(source.triggers()?);
            }
            poller.tick(&triggers).await;
            for source in &mut sources {
                let states: Vec<_> = source
                    .triggers()?
                    .iter()
                    .map(|(id, _)| cache.get(id))
                    .collect();
                source.set_states(&states);
            }
            anyhow::Ok(())
        })?;
    } else {
        let names: Vec<&str> = sources.iter().map(|s| s.input.object.as_str()).collect();
        anyhow::ensure!(
            sources.len() == 1,
            "--value names the triggers of one scaled object; pick one of {} with --name",
            names.join(", ")
        );
        sources[0].set_values(&args.values)?;
    }
    let plans: Vec<String> = sources
        .iter_mut()
        .map(|source| {
            source.input.current_replicas = args.current_replicas;
            plan(&source.input).to_string()
        })
        .collect();
    print!("{}", plans.join("\n"));
    Ok(())
}

/// `spillway serve`: the metrics API from the first moment, the poller behind it in its own
/// task, both until Ctrl-C or SIGTERM.
async fn serve(
    config: Config,
    kubeconfig: Option<std::path::PathBuf>,
    no_auth: bool,
) -> anyhow::Result<()> {
    let cache = Arc::new(MetricCache::new());
    let (poll_requests, poll_asks) = PollRequests::channel();
    let state =
        api::AppState::from_config(&config, Arc::clone(&cache)).with_poll_requests(poll_requests);
    let (auth, kube_client) = if no_auth {
        (None, None)
    } else {
        let client = spillway::kube_client::client(kubeconfig.as_deref())
            .await
            .context("authentication needs a cluster to ask (pass --no-auth to serve without, on a trusted machine only)")?;
        let auth =
            api::auth::Authenticator::new(client.clone(), Arc::clone(&state.own_metrics)).await?;
        (Some(auth), Some(client))
    };
    let poller = Poller::new(cache).with_metrics(Arc::clone(&state.own_metrics));
    let poller = tokio::spawn(poller.run_registry(Arc::clone(&state.registry), poll_asks));
    tracing::info!(metrics = state.metrics().len(), interval = %config.polling_interval, "polling");
    // Connected to a cluster, `serve` answers the ScaledObject admission webhook too.
    let webhook = kube_client.map(spillway::controller::admission::router);
    serve_api(&config, state, auth, webhook, None, shutdown_signal()).await?;
    // The poller holds no state worth finishing: a reading cut short is simply not recorded.
    poller.abort();
    tracing::info!("stopped");
    Ok(())
}

/// `spillway run`: ScaledObjects from the cluster, their metrics served to the aggregator by
/// every replica, reconciled by the one holding the Lease.
async fn run_in_cluster(
    config: Config,
    kubeconfig: Option<std::path::PathBuf>,
    election: spillway::cli::ElectionArgs,
    credentials: spillway::cli::CredentialArgs,
    reconcile_args: spillway::cli::ReconcileArgs,
    sharing_args: spillway::cli::SharingArgs,
) -> anyhow::Result<()> {
    use spillway::controller::{leader, reconcile};
    anyhow::ensure!(
        credentials
            .secret_label_selector
            .as_deref()
            .is_none_or(|s| !s.trim().is_empty()),
        "--secret-label-selector is empty: give a selector such as spillway.dev/credentials=true, or leave it out"
    );
    let client = spillway::kube_client::client(kubeconfig.as_deref()).await?;
    // Before any trigger connects: kube-apiserver's real addresses join the Service's.
    match spillway::kube_client::api_server_endpoint_addresses(&client).await {
        Ok(addresses) => {
            let learned = destination::learn_api_server_addresses(addresses);
            tracing::info!(
                learned,
                "destination policy: kube-apiserver endpoint addresses"
            );
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot list the kubernetes Service's EndpointSlices in default; the destination policy knows kube-apiserver by its Service address only")
        }
    }
    let cache = Arc::new(MetricCache::new());
    let registry = Arc::new(spillway::registry::Registry::new());
    let (poll_requests, poll_asks) = PollRequests::channel();
    let state = api::AppState::new(Arc::clone(&cache), Arc::clone(&registry))
        .with_poll_requests(poll_requests);
    let auth =
        api::auth::Authenticator::new(client.clone(), Arc::clone(&state.own_metrics)).await?;
    let identity = election
        .identity
        .clone()
        .unwrap_or_else(leader::default_identity);
    let poller = Poller::new(Arc::clone(&cache)).with_metrics(Arc::clone(&state.own_metrics));
    // Shared polling: this replica's member Lease, the live set, the peer routes and client.
    let (poller, sharing) = if sharing_args.share_polling {
        let tls = config.server.tls.as_ref().context(
            "--share-polling needs server.tls: replicas authenticate each other with the install's serving certificate",
        )?;
        let serving = Arc::new(api::serving_cert::ServingCertificate::load(
            Some(tls),
            Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()),
        )?);
        let address = advertise_address(&sharing_args, &config)?;
        let sharing = spillway::sharing::Sharing::join(
            client.clone(),
            spillway::sharing::membership::MembershipConfig {
                namespace: election.lease_namespace.clone(),
                group: election.lease_name.clone(),
                me: spillway::poller::shard::Member {
                    identity: identity.clone(),
                    address: address.clone(),
                },
                lease_duration: std::time::Duration::from_secs(
                    sharing_args.member_lease_duration_seconds,
                ),
            },
            Arc::clone(&cache),
            state
                .poll_requests
                .clone()
                .expect("poll requests are set above"),
            Arc::clone(&serving),
            &state.own_metrics,
        )
        .await?;
        tracing::info!(%address, lease = %sharing.membership.lease_name(), "sharing the polling with the other replicas");
        let spillway::sharing::Sharing {
            shard,
            router,
            membership,
            followers,
        } = sharing;
        let poller =
            tokio::spawn(poller.run_registry_shared(Arc::clone(&registry), poll_asks, shard));
        (
            poller,
            Some((serving, router, membership, tokio::spawn(followers))),
        )
    } else {
        (
            tokio::spawn(poller.run_registry(Arc::clone(&registry), poll_asks)),
            None,
        )
    };

    let elector = leader::LeaderElector::new(
        client.clone(),
        &election.lease_namespace,
        &election.lease_name,
        identity.clone(),
        leader::LeaderElectionConfig {
            lease_duration: std::time::Duration::from_secs(election.lease_duration_seconds),
            renew_deadline: std::time::Duration::from_secs(election.renew_deadline_seconds),
            retry_period: std::time::Duration::from_secs(election.retry_period_seconds),
        },
    )?;
    let leading = elector.subscribe();
    // One stop signal for the API server, the controller and the elector.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let elector = tokio::spawn(elector.run(until_stopped()));
    let own_metrics = Arc::clone(&state.own_metrics);
    let mut leader_gauge = leading.clone();
    tokio::spawn(async move {
        loop {
            own_metrics.set_leader(*leader_gauge.borrow_and_update());
            if leader_gauge.changed().await.is_err() {
                return;
            }
        }
    });
    let mut webhook = spillway::controller::admission::router(client.clone());
    let mut serving = None;
    let mut membership = None;
    let mut followers = None;
    if let Some((cert, router, member, follow)) = sharing {
        webhook = webhook.merge(router);
        serving = Some(cert);
        membership = Some(member);
        followers = Some(follow);
    }
    tracing::info!(
        cluster_trigger_auth_namespace = %credentials.cluster_trigger_auth_namespace,
        secret_label_selector = credentials.secret_label_selector.as_deref().unwrap_or("(every Secret)"),
        "where credentials are read from"
    );
    tracing::info!(
        max_concurrent_reconciles = reconcile_args.max_concurrent_reconciles,
        "reconciles at once"
    );
    let context = Arc::new(
        reconcile::Context::new(
            client,
            registry,
            cache,
            leading,
            Arc::clone(&state.own_metrics),
            identity.clone(),
        )
        .with_secret_label_selector(credentials.secret_label_selector)
        .with_cluster_auth_namespace(credentials.cluster_trigger_auth_namespace)
        .with_max_concurrent_reconciles(reconcile_args.max_concurrent_reconciles),
    );
    // Unready (no Service traffic) until the objects that exist now are registered here.
    api::set_ready(false);
    let catching_up = Arc::clone(&context);
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let caught_up =
            reconcile::wait_caught_up(&catching_up, std::time::Duration::from_secs(30)).await;
        tracing::info!(caught_up, after = ?started.elapsed(), "ready: serving the metrics of the ScaledObjects registered here");
        api::set_ready(true);
    });
    let controller = tokio::spawn(reconcile::run(context, until_stopped()));
    tracing::info!(%identity, lease = %format!("{}/{}", election.lease_namespace, election.lease_name), "running the ScaledObject controller");
    // A member renews its Lease until the stop signal, then deletes it.
    let (leave, left) = tokio::sync::oneshot::channel::<()>();
    let membership = membership.map(|m| {
        tokio::spawn(m.run(async {
            let _ = left.await;
        }))
    });
    let stop_all = async move {
        shutdown_signal().await;
        if let Some(membership) = membership {
            // Hand the groups over first: the Lease goes, the peers start them, then we stop.
            let _ = leave.send(());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), membership).await;
            tracing::info!(handover = ?spillway::sharing::HANDOVER, "polling on while the other replicas take this one's groups over");
            tokio::time::sleep(spillway::sharing::HANDOVER).await;
        }
        let _ = stop.send(true);
    };
    serve_api(&config, state, Some(auth), Some(webhook), serving, stop_all).await?;
    if let Some(followers) = followers {
        followers.abort();
    }
    // The Lease is released so a successor leads at once; bounded like every other wait.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), elector).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), controller).await;
    poller.abort();
    tracing::info!("stopped");
    Ok(())
}

/// The metrics API on `server.listen` and spillway's own `/metrics` on `server.metricsListen`,
/// until `shutdown` completes.
async fn serve_api(
    config: &Config,
    state: api::AppState,
    auth: Option<Arc<api::auth::Authenticator>>,
    webhook: Option<axum::Router>,
    serving: Option<Arc<api::serving_cert::ServingCertificate>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let verifier = auth.clone().map(|a| {
        let policy = api::auth::ClientCertPolicy::new(a);
        let policy = match &serving {
            // Other replicas present the serving certificate itself.
            Some(serving) => policy.with_peer_certificate(Arc::clone(serving)),
            None => policy,
        };
        Arc::new(policy) as Arc<dyn tokio_rustls::rustls::server::danger::ClientCertVerifier>
    });
    let tls = match serving {
        Some(serving) => api::tls_config_serving(serving, verifier)?,
        None => api::tls_config(config.server.tls.as_ref(), verifier)?,
    };
    let listener = api::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    let reload = auth.clone().map(|a| tokio::spawn(a.reload_forever()));
    let trim = tokio::spawn(spillway::memory::release_freed_memory_forever());
    if auth.is_none() {
        tracing::warn!(%addr, "--no-auth: the metrics API is unauthenticated; anyone who can reach this address can read every metric");
    }
    tracing::info!(%addr, "serving the external metrics API");
    let metrics_listener = api::bind(config.server.metrics_listen).await?;
    tracing::info!(addr = %metrics_listener.local_addr()?, "serving spillway's own metrics on /metrics (plain HTTP)");
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let access = match (config.server.metrics_auth, &auth) {
        (spillway::config::MetricsAuth::None, _) => None,
        (spillway::config::MetricsAuth::Namespaces, Some(auth)) => Some(Arc::new(
            api::metrics_access::MetricsAccess::new(Arc::clone(auth)),
        )
            as Arc<dyn spillway::metrics::scope::ScrapeAccess>),
        (spillway::config::MetricsAuth::Namespaces, None) => anyhow::bail!(
            "server.metricsAuth: namespaces needs the cluster to authorize callers; it cannot be used with --no-auth"
        ),
    };
    let metrics_server = tokio::spawn(spillway::metrics::serve_metrics(
        metrics_listener,
        Arc::clone(&state.own_metrics),
        access,
        async {
            let _ = metrics_stopped.await;
        },
    ));
    let limits = spillway::connections::ConnectionLimits {
        max_connections: config.server.max_connections as usize,
        max_connections_per_client: config.server.max_connections_per_client as usize,
        idle_timeout: std::time::Duration::from_secs(config.server.idle_timeout_seconds.into()),
        header_read_timeout: api::HEADER_READ_TIMEOUT,
        keep_alive_interval: api::KEEP_ALIVE_INTERVAL,
    };
    api::serve(listener, tls, state, auth, webhook, limits, shutdown).await;
    let _ = stop_metrics.send(());
    // A scraper holding its connection open must not hold up the exit.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), metrics_server).await;
    if let Some(reload) = reload {
        reload.abort();
    }
    trim.abort();
    Ok(())
}

/// Where the other replicas reach this one: `--advertise-address`, else POD_IP with the
/// listen port, else the listen address when it names a host.
fn advertise_address(args: &spillway::cli::SharingArgs, config: &Config) -> anyhow::Result<String> {
    if let Some(address) = &args.advertise_address {
        return Ok(address.clone());
    }
    let port = config.server.listen.port();
    if let Ok(ip) = std::env::var("POD_IP")
        && let Ok(ip) = ip.parse::<std::net::IpAddr>()
    {
        return Ok(std::net::SocketAddr::new(ip, port).to_string());
    }
    anyhow::ensure!(
        !config.server.listen.ip().is_unspecified(),
        "--share-polling: give --advertise-address (or POD_IP): the listen address {} names no host the other replicas can reach",
        config.server.listen
    );
    Ok(config.server.listen.to_string())
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
