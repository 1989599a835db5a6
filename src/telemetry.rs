//! Logging setup: readable text on a terminal, or JSON lines (one object per event) for
//! log shippers such as Loki, Vector or Filebeat.
//!
//! Logs go to stderr so a command's own output on stdout stays machine-readable.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured when stderr is a terminal.
    Text,
    /// One JSON object per line with `timestamp`, `level`, `target`, `message` and the event's fields.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax (`info`, `spillway=debug,rdkafka=warn`).
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    let env_filter = EnvFilter::try_new(with_peer_noise_quieted(filter)).map_err(|source| {
        TelemetryError::Filter {
            filter: filter.to_owned(),
            source,
        }
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|_| TelemetryError::AlreadyInstalled)
}

/// `filter` with rustls held to errors unless the filter names rustls itself. rustls warns
/// once per handshake about what the peer sent (an IP address as SNI, for one, which curl and
/// wrk send): any client could otherwise write a warning per connection into spillway's log.
/// Failed handshakes are still logged (at debug) by the metrics API itself.
fn with_peer_noise_quieted(filter: &str) -> String {
    if filter.contains("rustls") {
        filter.to_owned()
    } else if filter.trim().is_empty() {
        "rustls=error".to_owned()
    } else {
        format!("{filter},rustls=error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_is_quieted_unless_the_filter_names_it() {
        assert_eq!(with_peer_noise_quieted("info"), "info,rustls=error");
        assert_eq!(with_peer_noise_quieted(""), "rustls=error");
        assert_eq!(
            with_peer_noise_quieted("warn,rustls=debug"),
            "warn,rustls=debug"
        );
        assert!(EnvFilter::try_new(with_peer_noise_quieted("info,lapin=off")).is_ok());
    }
}
