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

    /// Log filter in RUST_LOG syntax, e.g. `info` or `spillway=debug,rdkafka=warn`.
    #[arg(
        long,
        global = true,
        default_value = "info,lapin=off,pinky_swear=off",
        env = "RUST_LOG"
    )]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Validate a configuration file and print it as spillway reads it, defaults filled in.
    Check {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
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
    fn unknown_log_format_is_rejected() {
        let err = Cli::try_parse_from(["spillway", "--log-format", "xml", "check", "-c", "f"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }
}
