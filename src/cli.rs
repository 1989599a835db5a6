//! Command-line interface: global logging flags and one subcommand per job.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// spillway scales Kubernetes workloads with the backlog waiting in Kafka, RabbitMQ and NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "spillway", version, about, propagate_version = true)]
pub struct Cli {
    /// Log output: `text` for people, `json` for log shippers (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SPILLWAY_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter in RUST_LOG syntax, e.g. `info` or `spillway=debug,rdkafka=warn`. rustls is
    /// held to errors unless the filter names it (its warnings are about what peers send).
    #[arg(
        long,
        global = true,
        default_value = "info,lapin=off,pinky_swear=off",
        env = "RUST_LOG"
    )]
    pub log_level: String,
    /// Destination classes triggers may reach, comma-separated: `loopback` (spillway's own
    /// host or pod), `link-local` (169.254.0.0/16, fe80::/10: cloud metadata services),
    /// `api-server` (the kube-apiserver's addresses). None by default: a ScaledObject's hosts
    /// are checked after DNS resolution at every connection. Local brokers need `loopback`.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        env = "SPILLWAY_ALLOW_DESTINATIONS"
    )]
    pub allow_destinations: Vec<crate::destination::DestinationClass>,
    /// Where spillway's own `/metrics` listens, over the config's `server.metricsListen`:
    /// `IP:PORT`. The default install passes the pod's IP (`$(POD_IP):9090`), so `/metrics`
    /// is not on every interface.
    #[arg(
        long,
        global = true,
        env = "SPILLWAY_METRICS_LISTEN",
        value_parser = crate::config::parse_listen_address
    )]
    pub metrics_listen: Option<std::net::SocketAddr>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the external metrics API (HTTPS) from a config file's scaled objects, polling
    /// every trigger each pollingInterval, until Ctrl-C or SIGTERM.
    ///
    /// Callers are authenticated and authorized through the cluster (the aggregator's
    /// front-proxy certificate, client certificates, bearer tokens, SubjectAccessReview),
    /// found in-cluster, from --kubeconfig or from KUBECONFIG.
    Serve {
        /// The YAML configuration file with `server` and `scaledObjects`.
        #[arg(long, short)]
        config: PathBuf,
        /// The kubeconfig of the cluster that authenticates and authorizes callers
        /// (default: in-cluster, then KUBECONFIG, then ~/.kube/config).
        #[arg(long, env = "SPILLWAY_KUBECONFIG_PATH")]
        kubeconfig: Option<PathBuf>,
        /// Serve without authentication or authorization: anyone who can reach the listen
        /// address reads every metric. For a laptop with no cluster, never for production.
        #[arg(long)]
        no_auth: bool,
    },
    /// Poll every trigger of a config file each pollingInterval and show the backlog and the
    /// replicas each scaled object would get, live, until Ctrl-C.
    Watch {
        /// The YAML configuration file with `scaledObjects`.
        #[arg(long, short)]
        config: PathBuf,
        /// Poll once, print the table and exit (for scripts).
        #[arg(long)]
        once: bool,
    },
    /// Produce to and consume from a broker at set rates, for a real, changing backlog.
    Loadgen {
        #[command(flatten)]
        load: LoadArgs,
        #[command(subcommand)]
        target: LoadTarget,
    },
    /// Validate a configuration file and print it as spillway reads it, defaults filled in.
    Check {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the CustomResourceDefinitions (ScaledObject, TriggerAuthentication,
    /// ClusterTriggerAuthentication) as YAML, for `kubectl apply -f -`.
    Crd,
    /// Show the replicas an HPA would choose for a scaled object at a given backlog, and why:
    /// each trigger's proposal ceil(value / target) and tolerance test, the maximum, min/max,
    /// scaling to zero, and the behavior's stabilization and rate limits for one step.
    Plan(PlanArgs),
    /// Read KEDA's ScaledObjects, TriggerAuthentications and ClusterTriggerAuthentications
    /// (files, stdin or a cluster) and write spillway's that behave the same, KEDA's defaults
    /// written out. An object that cannot be carried over is refused with the reasons on
    /// stderr, and then nothing is written unless --skip-refused.
    ImportKeda(ImportKedaArgs),
    /// Run in a cluster: watch ScaledObjects in every namespace, serve their metrics to the
    /// aggregator (authenticated and authorized through the cluster), and, while holding the
    /// leader Lease, keep their HPAs, scale to and from zero, and write their status.
    Run {
        /// A config file with `server` settings (listen, metricsListen, tls); scaled objects
        /// come from ScaledObject resources. Defaults apply without it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The cluster's kubeconfig (default: in-cluster, then KUBECONFIG, then ~/.kube/config).
        #[arg(long, env = "SPILLWAY_KUBECONFIG_PATH")]
        kubeconfig: Option<PathBuf>,
        #[command(flatten)]
        election: ElectionArgs,
        #[command(flatten)]
        credentials: CredentialArgs,
        #[command(flatten)]
        reconcile: ReconcileArgs,
        #[command(flatten)]
        sharing: SharingArgs,
    },
}

/// Whether `spillway run`'s replicas share the polling (see `crate::sharing`).
#[derive(Debug, clap::Args)]
pub struct SharingArgs {
    /// Replicas split the connection groups between them (one member Lease each, named after
    /// `--lease-name`) instead of each polling everything, and copy each other's readings.
    /// Needs `server.tls`: replicas authenticate each other with that certificate.
    #[arg(long, env = "SPILLWAY_SHARE_POLLING")]
    pub share_polling: bool,
    /// `host:port` other replicas reach this one's metrics API at (default: POD_IP with the
    /// listen port, or the listen address when it names a host).
    #[arg(long, env = "SPILLWAY_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,
    /// A replica whose member Lease is not renewed for this long is dead to the others, which
    /// take its groups over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub member_lease_duration_seconds: u64,
}

/// How hard `spillway run`'s controller may work the API server.
#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// ScaledObjects reconciled at once; 0 (the default) sets no bound. Each API call in
    /// flight holds a connection to kube-apiserver: unbounded, 1,000 objects reconciled
    /// together (a start, a Secret they share changing) held 850 connections. Not yet a
    /// default: with a bound of 16 or 256, the 1,000 objects of the soak test stopped being
    /// registered part way (a third of them never were) while unbounded they all were in
    /// seconds; issue 18 follows it.
    #[arg(
        long,
        env = "SPILLWAY_MAX_CONCURRENT_RECONCILES",
        default_value_t = crate::controller::reconcile::DEFAULT_MAX_CONCURRENT_RECONCILES,
        value_parser = clap::value_parser!(u16).range(0..=1024)
    )]
    pub max_concurrent_reconciles: u16,
}

/// What `spillway import-keda` reads and where it writes.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["filename", "from_cluster"])))]
pub struct ImportKedaArgs {
    /// A manifest file (YAML documents or JSON), a directory of them, or `-` for stdin; repeat
    /// for more.
    #[arg(long, short = 'f', value_name = "PATH")]
    pub filename: Vec<PathBuf>,
    /// Read KEDA's objects from the cluster of the kubeconfig instead (and check that the
    /// Secrets their authentications name exist; their values are never read out).
    #[arg(long)]
    pub from_cluster: bool,
    /// With --from-cluster: this namespace only (default: every namespace).
    #[arg(long, short = 'n', conflicts_with = "filename")]
    pub namespace: Option<String>,
    /// With --from-cluster: the kubeconfig (default: in-cluster, then KUBECONFIG, then
    /// ~/.kube/config).
    #[arg(long, conflicts_with = "filename")]
    pub kubeconfig: Option<PathBuf>,
    /// With --from-cluster: the namespace KEDA reads ClusterTriggerAuthentications' Secrets
    /// from (its own).
    #[arg(long, default_value = "keda", conflicts_with = "filename")]
    pub keda_namespace: String,
    /// Write one file per object into this directory (created if missing) instead of stdout.
    #[arg(long, short = 'o', value_name = "DIR", conflicts_with = "check")]
    pub output_dir: Option<PathBuf>,
    /// Print, per object, what will differ or why it is refused; write nothing.
    #[arg(long)]
    pub check: bool,
    /// Write the objects that import although others are refused (the refusals are still
    /// listed on stderr, and the exit status is 0).
    #[arg(long)]
    pub skip_refused: bool,
}

/// Where `spillway run` reads triggers' credentials from.
#[derive(Debug, clap::Args)]
pub struct CredentialArgs {
    /// The namespace a ClusterTriggerAuthentication's Secrets are read from (KEDA's
    /// ClusterObjectNamespace): spillway's own (deploy/deployment.yaml sets it from the pod's
    /// namespace).
    #[arg(
        long,
        env = "SPILLWAY_CLUSTER_TRIGGER_AUTH_NAMESPACE",
        default_value = crate::controller::reconcile::DEFAULT_CLUSTER_AUTH_NAMESPACE
    )]
    pub cluster_trigger_auth_namespace: String,
    /// Watch and read only the Secrets matching this label selector (e.g.
    /// `spillway.dev/credentials=true`): spillway then never holds any other Secret, and a
    /// trigger naming an unlabelled one is told the label is missing. Default: every Secret.
    #[arg(long, env = "SPILLWAY_SECRET_LABEL_SELECTOR")]
    pub secret_label_selector: Option<String>,
}

/// Leader election on a coordination.k8s.io Lease (client-go's defaults).
#[derive(Debug, clap::Args)]
pub struct ElectionArgs {
    /// Namespace of the Lease (default: the pod's, from POD_NAMESPACE, else spillway-system).
    #[arg(long, env = "POD_NAMESPACE", default_value = "spillway-system")]
    pub lease_namespace: String,
    #[arg(long, default_value = "spillway-controller")]
    pub lease_name: String,
    /// How long a leader's Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// A leader that cannot renew within this steps down.
    #[arg(long, default_value_t = 10)]
    pub renew_deadline_seconds: u64,
    /// How often candidates retry and the leader renews.
    #[arg(long, default_value_t = 2)]
    pub retry_period_seconds: u64,
    /// This replica's name in the Lease (default: POD_NAME, else hostname and a random suffix).
    #[arg(long)]
    pub identity: Option<String>,
}

/// What `spillway plan` plans for, and with which values.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["filename", "config"])))]
#[command(group(clap::ArgGroup::new("readings").required(true).args(["values", "live"])))]
pub struct PlanArgs {
    /// A ScaledObject manifest (spillway.dev/v1alpha1), as written for `kubectl apply -f`.
    #[arg(long, short = 'f')]
    pub filename: Option<PathBuf>,
    /// A configuration file: plans each of its scaledObjects.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Only the scaled object with this name (`name` or `namespace/name`).
    #[arg(long)]
    pub name: Option<String>,
    /// A trigger's value by its index in `triggers`, e.g. `s0=450`; once per trigger. Whether
    /// it is active is the trigger's own rule on this value alone: the backlog a scaler also
    /// weighs (a Kafka trigger's lag left out by excludePersistentLag or cut by the caps, a
    /// MessageRate trigger's queue depth) is not known here; `--live` reads it.
    #[arg(long = "value", value_name = "sINDEX=VALUE")]
    pub values: Vec<crate::plan::TriggerValue>,
    /// Read every trigger's value from its broker instead: one poll, as `watch --once` does.
    #[arg(long, conflicts_with = "values")]
    pub live: bool,
    /// The target's replicas now: adds the tolerance test and the HPA's next step from there.
    #[arg(long)]
    pub current_replicas: Option<u32>,
    /// With --live: the cluster to read a ScaledObject's secretKeyRefs from (without it they
    /// stay unread and their triggers fail).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// How much load `spillway loadgen` makes.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// How the production rate changes: constant, ramp (0 to --rate each --period), burst.
    #[arg(long, value_enum, default_value_t = crate::loadgen::Shape::Constant, global = true)]
    pub shape: crate::loadgen::Shape,
    /// Peak messages produced per second.
    #[arg(long, default_value_t = 50.0, global = true)]
    pub rate: f64,
    /// Messages consumed per second (0: produce only).
    #[arg(long, default_value_t = 0.0, global = true)]
    pub consume_rate: f64,
    /// Seconds per ramp or burst cycle.
    #[arg(long, default_value_t = 30, global = true)]
    pub period: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, global = true)]
    pub duration: Option<u64>,
}

/// The broker `spillway loadgen` drives.
#[derive(Debug, Subcommand)]
pub enum LoadTarget {
    /// A Kafka topic (created if missing) and a consumer group committing as it goes.
    Kafka {
        #[arg(long, default_value = "127.0.0.1:19092")]
        bootstrap_servers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// The consumer group of the draining consumer.
        #[arg(long)]
        group: String,
    },
    /// A RabbitMQ queue (declared if missing) with an acking consumer.
    Rabbitmq {
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:35772/%2f")]
        url: String,
        #[arg(long)]
        queue: String,
    },
    /// A NATS JetStream stream and durable pull consumer (created if missing).
    Nats {
        #[arg(long, default_value = "nats://127.0.0.1:34222")]
        url: String,
        #[arg(long)]
        stream: String,
        #[arg(long, default_value = "worker")]
        consumer: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn crd_takes_no_arguments() {
        let cli = Cli::try_parse_from(["spillway", "crd"]).unwrap();
        assert!(matches!(cli.command, Command::Crd));
        assert!(Cli::try_parse_from(["spillway", "crd", "extra"]).is_err());
    }

    #[test]
    fn plan_takes_one_source_and_values_or_live() {
        let cli = Cli::try_parse_from([
            "spillway",
            "plan",
            "-f",
            "so.yaml",
            "--value",
            "s0=450",
            "--value",
            "1=3",
            "--current-replicas",
            "4",
        ])
        .unwrap();
        let Command::Plan(args) = cli.command else {
            panic!("not plan");
        };
        assert_eq!(args.values.len(), 2);
        assert_eq!((args.values[1].index, args.values[1].value), (1, 3.0));
        assert_eq!(args.current_replicas, Some(4));
        let refused = [
            vec!["spillway", "plan", "--value", "s0=1"],
            vec!["spillway", "plan", "-f", "a", "-c", "b", "--live"],
            vec!["spillway", "plan", "-f", "a"],
            vec!["spillway", "plan", "-f", "a", "--live", "--value", "s0=1"],
            vec!["spillway", "plan", "-f", "a", "--value", "s0=-1"],
        ];
        for args in refused {
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn metrics_listen_takes_the_pod_ip_as_the_downward_api_gives_it() {
        let cases = [
            ("10.244.1.7:9090", Some("10.244.1.7:9090")),
            ("fd00:10:244::7:9090", Some("[fd00:10:244::7]:9090")),
            ("0.0.0.0", None),
        ];
        for (flag, expected) in cases {
            let parsed = Cli::try_parse_from(["spillway", "--metrics-listen", flag, "crd"]);
            match expected {
                Some(address) => assert_eq!(
                    parsed.unwrap().metrics_listen,
                    Some(address.parse().unwrap()),
                    "{flag}"
                ),
                None => assert!(parsed.is_err(), "{flag}"),
            }
        }
        let default = Cli::try_parse_from(["spillway", "crd"]).unwrap();
        assert_eq!(default.metrics_listen, None);
    }

    #[test]
    fn import_keda_takes_files_or_a_cluster() {
        let cli = Cli::try_parse_from([
            "spillway",
            "import-keda",
            "-f",
            "a.yaml",
            "-f",
            "-",
            "--check",
        ])
        .unwrap();
        let Command::ImportKeda(args) = cli.command else {
            panic!("not import-keda");
        };
        assert_eq!(args.filename, [PathBuf::from("a.yaml"), PathBuf::from("-")]);
        assert!(args.check && !args.from_cluster);
        let cli = Cli::try_parse_from([
            "spillway",
            "import-keda",
            "--from-cluster",
            "-n",
            "shop",
            "-o",
            "out",
        ])
        .unwrap();
        let Command::ImportKeda(args) = cli.command else {
            panic!("not import-keda");
        };
        assert_eq!(args.namespace.as_deref(), Some("shop"));
        assert_eq!(args.keda_namespace, "keda");
        let refused = [
            vec!["spillway", "import-keda"],
            vec!["spillway", "import-keda", "-f", "a", "--from-cluster"],
            vec!["spillway", "import-keda", "-f", "a", "-n", "shop"],
            vec!["spillway", "import-keda", "-f", "a", "--check", "-o", "out"],
        ];
        for args in refused {
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn unknown_log_format_is_rejected() {
        let err = Cli::try_parse_from(["spillway", "--log-format", "xml", "check", "-c", "f"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }
}
