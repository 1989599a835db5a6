//! spillway: an event-driven autoscaler for Kubernetes.
//!
//! Data flows one way: the controller (or a config file) hands triggers to the poller, which
//! reads each broker once per tick for all triggers that share it and writes the readings to
//! the metric cache; the external metrics API serves the cache to the HPA. This crate holds
//! every part; `main.rs` only wires the CLI to them.

pub mod api;
pub mod cache;
pub mod cli;
pub mod config;
pub mod controller;
pub mod kube_client;
pub mod live;
pub mod loadgen;
pub mod metrics;
pub mod names;
pub mod plan;
pub mod poller;
pub mod registry;
pub mod scalers;
pub mod secret;
pub mod telemetry;

/// Errors at the top of the crate; each layer below has its own enum.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
