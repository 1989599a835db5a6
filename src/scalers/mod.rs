//! Scalers read the backlog from one kind of broker. One [`Scaler`] serves every trigger that
//! shares a connection (same servers, same credentials) and answers them all in one batched
//! round per tick, so broker load grows with brokers and groups, not with triggers.
//!
//! A scaler never turns a failure into a number: an unreachable broker, a missing queue or a
//! bad answer is a [`ScalerError`], which the poller records (and the controller may map to a
//! configured fallback). Reading zero means the broker said the backlog is zero.

pub mod cron;
pub mod http;
pub mod kafka;
pub mod nats;
pub mod prometheus;
pub mod rabbitmq;

use std::future::Future;
use std::time::{Duration, SystemTime};

/// What one trigger reported at one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The value the HPA scales on, in the trigger's unit (messages, seconds, replicas).
    /// Already shaped by the trigger's rules (caps, persistent-lag exclusion).
    pub value: f64,
    /// True when the trigger wants at least one replica: its activation value is exceeded.
    pub active: bool,
    /// Further metrics of the same trigger, by suffix, e.g. `("lag-seconds", 12.5)`.
    pub extra: Vec<(&'static str, f64)>,
    /// When the broker was read.
    pub timestamp: SystemTime,
}

impl Reading {
    pub fn new(value: f64, active: bool) -> Self {
        Self {
            value,
            active,
            extra: Vec::new(),
            timestamp: SystemTime::now(),
        }
    }

    pub fn with_extra(mut self, suffix: &'static str, value: f64) -> Self {
        self.extra.push((suffix, value));
        self
    }
}

/// Why a trigger has no reading. Each variant names the broker kind and the target (cluster,
/// queue, stream...) so a log line or a status condition says what to look at.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScalerError {
    /// The trigger's own parameters are wrong (caught before any broker is asked).
    #[error("{broker} trigger is invalid: {field}: {message}")]
    InvalidTrigger {
        broker: &'static str,
        field: String,
        message: String,
    },
    /// No connection could be made or kept.
    #[error("{broker} {target} is unreachable: {cause}")]
    Unreachable {
        broker: &'static str,
        target: String,
        cause: String,
    },
    /// The broker did not answer within the bound.
    #[error("{broker} {target} did not answer within {after:?}")]
    Timeout {
        broker: &'static str,
        target: String,
        after: Duration,
    },
    /// A topic, group, queue, stream or consumer the trigger names does not exist.
    #[error("{broker} {target}: {what} not found")]
    NotFound {
        broker: &'static str,
        target: String,
        what: String,
    },
    /// The credentials were refused or lack a permission.
    #[error("{broker} {target}: not authorized: {cause}")]
    Unauthorized {
        broker: &'static str,
        target: String,
        cause: String,
    },
    /// The broker answered with an error of its own.
    #[error("{broker} {target}: broker error: {cause}")]
    Broker {
        broker: &'static str,
        target: String,
        cause: String,
    },
    /// The answer could not be understood, or held no usable value (garbage, NaN, empty).
    #[error("{broker} {target}: bad response: {cause}")]
    BadResponse {
        broker: &'static str,
        target: String,
        cause: String,
    },
}

impl ScalerError {
    /// A short stable name for metrics labels and status reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidTrigger { .. } => "invalid_trigger",
            Self::Unreachable { .. } => "unreachable",
            Self::Timeout { .. } => "timeout",
            Self::NotFound { .. } => "not_found",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Broker { .. } => "broker_error",
            Self::BadResponse { .. } => "bad_response",
        }
    }
}

/// What every trigger's parameters provide, whatever the broker.
pub trait TriggerParams {
    /// The HPA's AverageValue target for the main metric (KEDA's lagThreshold, value, threshold).
    fn target_value(&self) -> f64;

    /// The metric name's broker part, normalised like KEDA's (`kafka-orders`, `rabbitmq-jobs`);
    /// the served name is `s<index>-<this>`.
    fn metric_name(&self) -> String;

    /// Checks the parameters without touching the network; the error names the field.
    fn validate(&self) -> Result<(), ScalerError>;
}

/// The name a trigger's main metric is served under and its HPA asks for,
/// `s<index>-<metric_name>`, `index` being the trigger's position in its scaled object (KEDA's
/// `s0-kafka-orders`).
pub fn served_metric_name(index: usize, trigger: &impl TriggerParams) -> String {
    format!("s{index}-{}", trigger.metric_name())
}

/// Lower-cases and replaces every character outside `[a-z0-9-]` with `-`, as KEDA's
/// `NormalizeString` does for metric names (`orders.v1` -> `orders-v1`).
pub fn normalize_metric_name(name: &str) -> String {
    name.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect()
}

/// A client for one broker connection that answers every trigger sharing it in one round.
///
/// The poller groups triggers by [`Scaler::connection_key`], builds one scaler per key with
/// [`Scaler::connect`] and calls [`Scaler::poll`] once per tick with all of that key's triggers.
pub trait Scaler: Send + Sync + Sized + 'static {
    /// The trigger's parameters, as written in a ScaledObject or a config file.
    type Trigger: TriggerParams + Clone + Send + Sync + 'static;

    /// Short broker name for logs, errors and metric labels, e.g. `"kafka"`.
    const KIND: &'static str;

    /// Triggers with equal keys share one scaler (servers plus credentials identity).
    fn connection_key(trigger: &Self::Trigger) -> String;

    /// Builds the client for the connection `trigger` names. Must not block on the network:
    /// connecting happens lazily during `poll`, so a down broker is a poll error, not a crash.
    fn connect(trigger: &Self::Trigger) -> Result<Self, ScalerError>;

    /// Reads all `triggers` (which share this scaler's connection) in one batched round,
    /// bounded in time. Returns one result per trigger, in order.
    fn poll(
        &self,
        triggers: &[Self::Trigger],
    ) -> impl Future<Output = Vec<Result<Reading, ScalerError>>> + Send;
}

/// One trigger of any broker kind: what a ScaledObject's `triggers` list (or a config file)
/// holds. Adding a broker adds one variant here and one file beside this one.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Kafka(kafka::KafkaTrigger),
    RabbitMq(rabbitmq::RabbitMqTrigger),
    NatsJetStream(nats::NatsJetStreamTrigger),
    Prometheus(prometheus::PrometheusTrigger),
    Cron(cron::CronTrigger),
}

impl Trigger {
    /// The broker kind, as in metric labels: `kafka`, `rabbitmq`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kafka(_) => <kafka::KafkaScaler as Scaler>::KIND,
            Self::RabbitMq(_) => <rabbitmq::RabbitMqScaler as Scaler>::KIND,
            Self::NatsJetStream(_) => <nats::NatsJetStreamScaler as Scaler>::KIND,
            Self::Prometheus(_) => <prometheus::PrometheusScaler as Scaler>::KIND,
            Self::Cron(_) => <cron::CronScaler as Scaler>::KIND,
        }
    }

    fn params(&self) -> &dyn TriggerParams {
        match self {
            Self::Kafka(t) => t,
            Self::RabbitMq(t) => t,
            Self::NatsJetStream(t) => t,
            Self::Prometheus(t) => t,
            Self::Cron(t) => t,
        }
    }
}

impl TriggerParams for Trigger {
    fn target_value(&self) -> f64 {
        self.params().target_value()
    }

    fn metric_name(&self) -> String {
        self.params().metric_name()
    }

    fn validate(&self) -> Result<(), ScalerError> {
        self.params().validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_normalised() {
        assert_eq!(
            normalize_metric_name("kafka-Orders.v1_eu"),
            "kafka-orders-v1-eu"
        );
        assert_eq!(normalize_metric_name("rabbitmq-jobs"), "rabbitmq-jobs");
    }
}
