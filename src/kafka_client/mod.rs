//! A small async, read-only Kafka client on tokio: exactly the APIs an autoscaler needs to read
//! consumer-group lag (ApiVersions, Metadata, FindCoordinator, OffsetFetch, ListOffsets) plus
//! OffsetCommit for fixtures and benches, over TLS (rustls) and SASL
//! PLAIN / SCRAM-SHA-256/512. Message types come from the `kafka-protocol` crate, generated from
//! Kafka's own JSON schemas.
//!
//! Why not librdkafka: its consumer API needs one client (threads, sockets, buffers) per consumer
//! group, so cost grew with groups; its admin API aborts the process when a coordinator request
//! is outstanding across a broker restart. Here a cluster is one [`ClusterClient`]: one
//! connection per broker shared by every group, many requests in flight on it (matched by
//! correlation id), a timeout per request, and a reconnect on the next request after an error.
//!
//! Layering: this module knows Kafka, not scalers; `scalers::kafka` turns its answers into lag.

mod cluster;
mod connection;
mod requests;
mod sasl;
mod tls;

pub use cluster::{
    ClusterClient, CommittedOffsets, ConnectOptions, EARLIEST, ItemError, LATEST, PartitionMap,
    RequestCounts,
};
pub use connection::requests_sent_by_process;
pub use requests::ReadRequest;
pub use sasl::{SaslCredentials, ScramMechanism};
pub use tls::TlsOptions;

use std::time::Duration;

pub use kafka_protocol::error::ResponseError;
pub use kafka_protocol::messages;

/// What went wrong talking to a broker. Errors Kafka puts in an answer (per partition, per
/// group) are [`ResponseError`]s in that answer, not this type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// The settings cannot make a connection (bad certificate, bad address).
    #[error("invalid connection settings: {0}")]
    Config(String),
    /// No connection could be made.
    #[error("cannot connect to {broker}: {cause}")]
    Connect { broker: String, cause: String },
    /// The connection broke with the request in flight (broker restart, reset).
    #[error("connection to {broker} lost: {cause}")]
    Disconnected { broker: String, cause: String },
    /// The broker did not answer within the request timeout.
    #[error("{broker} did not answer {api} within {after:?}")]
    Timeout {
        broker: String,
        api: &'static str,
        after: Duration,
    },
    /// SASL was refused (bad credentials, mechanism not enabled).
    #[error("SASL authentication with {broker} failed: {cause}")]
    Authentication { broker: String, cause: String },
    /// The broker supports no version of an API this client speaks.
    #[error("{broker} supports no version of {api} this client speaks")]
    Unsupported { broker: String, api: &'static str },
    /// An answer that cannot be decoded.
    #[error("{broker} sent an unreadable {api} answer: {cause}")]
    Protocol {
        broker: String,
        api: &'static str,
        cause: String,
    },
    /// A request-level error code (the whole request failed on it).
    #[error("{broker} answered {api} with {code}")]
    Kafka {
        broker: String,
        api: &'static str,
        code: ResponseError,
    },
}

/// Reads a Kafka error code: `None` for success.
pub fn error_of(code: i16) -> Option<ResponseError> {
    ResponseError::try_from_code(code)
}
