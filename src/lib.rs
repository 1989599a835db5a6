//! spillway: an event-driven autoscaler for Kubernetes.
//!
//! Modules depend on each other one way, lowest first (`tests/module_graph.rs` checks it):
//! `scalers` (one per broker) and `config` describe triggers; `cache` holds each trigger's
//! latest reading and the cold-miss handshake; `registry` holds what is served (scaled
//! objects, their metric names and scale targets); above it the `poller` (reads brokers into
//! the cache), the `api` (serves the cache to the HPA through the aggregator) and the
//! `controller` (fills the registry from ScaledObjects, owns HPAs, scales to and from zero)
//! each read the layers below and never each other. `import_keda` (the `import-keda` command)
//! sits above the controller and `plan`: it maps KEDA's objects onto their types and checks.
//! `main.rs` only wires the CLI to them.

pub mod api;
pub mod cache;
pub mod cli;
pub mod composite;
pub mod config;
pub mod connections;
pub mod controller;
pub mod destination;
pub mod formula;
pub mod import_keda;
pub mod kafka_client;
pub mod kube_client;
pub mod live;
pub mod loadgen;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod plan;
pub mod poller;
pub mod quantity;
pub mod registry;
pub mod scalers;
pub mod secret;
pub mod sharing;
pub mod telemetry;
