//! Scalers read the backlog from one kind of broker. One [`Scaler`] serves every trigger that
//! shares a connection (same servers, same credentials) and answers them all in one batched
//! round per tick, so broker load grows with brokers and groups, not with triggers.
//!
//! A scaler never turns a failure into a number: an unreachable broker, a missing queue or a
//! bad answer is a [`ScalerError`], which the poller records (and the controller may map to a
//! configured fallback). Reading zero means the broker said the backlog is zero.
//!
//! Beside its value a reading carries the backlog it was made of ([`Backlog`]: per Kafka
//! partition, RabbitMQ queue or JetStream consumer), from the answers the scaler already had,
//! for spillway's own `/metrics`. It is bounded: at most [`MAX_BACKLOG_SAMPLES`] per trigger,
//! those with the most backlog, and the count of the others.

pub mod cron;
pub mod http;
pub mod kafka;
pub mod nats;
pub mod prometheus;
pub mod rabbitmq;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::secret::SecretSource;

/// What one trigger reported at one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The value the HPA scales on, in the trigger's unit (messages, seconds, replicas).
    /// Already shaped by the trigger's rules (caps, persistent-lag exclusion).
    pub value: f64,
    /// True when the trigger wants at least one replica, as its activation rule
    /// ([`TriggerParams::is_active`]) decides.
    pub active: bool,
    /// Further metrics of the same trigger, by suffix, e.g. `("lag-seconds", 12.5)`.
    pub extra: Vec<(&'static str, f64)>,
    /// The partitions, queues or consumers behind `value`, for spillway's own `/metrics`;
    /// empty for brokers without such detail.
    pub backlog: Backlog,
    /// When the broker was read.
    pub timestamp: SystemTime,
}

impl Reading {
    pub fn new(value: f64, active: bool) -> Self {
        Self {
            value,
            active,
            extra: Vec::new(),
            backlog: Backlog::default(),
            timestamp: SystemTime::now(),
        }
    }

    /// Adds a further metric; `suffix` must be one of [`EXTRA_SUFFIXES`] (a replica that
    /// receives the reading from another names it from there).
    pub fn with_extra(mut self, suffix: &'static str, value: f64) -> Self {
        debug_assert!(
            EXTRA_SUFFIXES.contains(&suffix),
            "{suffix} is missing from EXTRA_SUFFIXES"
        );
        self.extra.push((suffix, value));
        self
    }

    /// Attaches the backlog detail, keeping at most [`MAX_BACKLOG_SAMPLES`] samples (see
    /// [`Backlog::bounded`]).
    pub fn with_backlog(mut self, samples: Vec<BacklogSample>) -> Self {
        self.backlog = Backlog::bounded(samples);
        self
    }
}

/// Every suffix of a further metric ([`Reading::extra`]) any scaler reports: a reading another
/// replica sends names its extras by these.
pub const EXTRA_SUFFIXES: [&str; 7] = [
    "lag-seconds",
    "pending",
    "ack-pending",
    "publish-rate",
    "messages",
    "deliver-rate",
    "series",
];

/// The most backlog samples (partitions, queues) one trigger exports. Each sample is a few
/// series on `/metrics`, so this bounds what one trigger on a huge topic, or a queue regex
/// matching thousands of queues, can add to every scrape.
pub const MAX_BACKLOG_SAMPLES: usize = 1_000;

/// One partition, queue or consumer a trigger read, with the figures its scaler had.
#[derive(Debug, Clone, PartialEq)]
pub enum BacklogSample {
    /// A partition a Kafka trigger counts.
    KafkaPartition {
        consumer_group: String,
        topic: String,
        partition: i32,
        /// Records behind, by KEDA's per-partition rules, before the caps on the total; a
        /// stuck consumer's lag is included even with `excludePersistentLag`.
        lag: i64,
        /// Age of the record at the committed offset (0 without lag); `None` when unknown.
        lag_seconds: Option<f64>,
    },
    /// A queue a RabbitMQ trigger reads (each of those its regex matched).
    RabbitMqQueue {
        vhost: String,
        queue: String,
        /// Ready plus unacknowledged; `None` over AMQP, which counts ready messages only.
        messages: Option<f64>,
        messages_ready: f64,
        /// `None` over AMQP.
        messages_unacknowledged: Option<f64>,
        /// Messages per second, from the management API; `None` over AMQP.
        publish_rate: Option<f64>,
        deliver_rate: Option<f64>,
    },
    /// The JetStream consumer a NATS trigger reads.
    NatsConsumer {
        stream: String,
        consumer: String,
        /// Messages not yet delivered.
        pending: u64,
        /// Messages delivered and not yet acknowledged.
        ack_pending: u64,
    },
}

impl BacklogSample {
    /// What the bound ranks samples by: the work waiting there.
    fn size(&self) -> f64 {
        match self {
            Self::KafkaPartition { lag, .. } => *lag as f64,
            Self::RabbitMqQueue {
                messages,
                messages_ready,
                ..
            } => messages.unwrap_or(*messages_ready),
            Self::NatsConsumer {
                pending,
                ack_pending,
                ..
            } => pending.saturating_add(*ack_pending) as f64,
        }
    }
}

/// A reading's backlog samples, at most [`MAX_BACKLOG_SAMPLES`]. Shared (`Arc`): every cache
/// read clones the reading, and the samples of a large topic should not be copied each time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Backlog {
    samples: Arc<[BacklogSample]>,
    left_out: usize,
}

impl Backlog {
    /// Keeps the [`MAX_BACKLOG_SAMPLES`] samples with the most backlog (the first ones among
    /// equals), in their original order, and counts the rest.
    pub fn bounded(samples: Vec<BacklogSample>) -> Self {
        Self::bounded_to(samples, MAX_BACKLOG_SAMPLES)
    }

    fn bounded_to(mut samples: Vec<BacklogSample>, bound: usize) -> Self {
        let left_out = samples.len().saturating_sub(bound);
        if left_out > 0 {
            let mut ranked: Vec<(usize, BacklogSample)> = samples.into_iter().enumerate().collect();
            ranked.sort_by(|(i, a), (j, b)| b.size().total_cmp(&a.size()).then(i.cmp(j)));
            ranked.truncate(bound);
            ranked.sort_by_key(|(i, _)| *i);
            samples = ranked.into_iter().map(|(_, sample)| sample).collect();
        }
        Self {
            samples: samples.into(),
            left_out,
        }
    }

    pub fn samples(&self) -> &[BacklogSample] {
        &self.samples
    }

    /// Samples dropped by the bound (the ones with the least backlog).
    pub fn left_out(&self) -> usize {
        self.left_out
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
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
    /// No poll finished within the freshness bound (the broker round still runs, or waits):
    /// the last reading is too old to serve.
    #[error(
        "{broker} {target}: no reading newer than {bound_seconds} s (the last poll finished {age_seconds} s ago)"
    )]
    Stale {
        broker: &'static str,
        target: String,
        age_seconds: u64,
        bound_seconds: u64,
    },
}

impl ScalerError {
    /// [`ScalerError::InvalidTrigger`]: `field` of a `broker` trigger is wrong, and `message`
    /// says how.
    pub fn invalid(
        broker: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::InvalidTrigger {
            broker,
            field: field.into(),
            message: message.into(),
        }
    }

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
            Self::Stale { .. } => "stale",
        }
    }
}

/// What a trigger's activation rule weighs: the value served to the HPA and, for a trigger
/// whose activity is not its value alone, the backlog behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationInput {
    /// The value served to the HPA.
    pub value: f64,
    /// The work waiting behind `value`, where the trigger's rule weighs it: a RabbitMQ
    /// trigger's queue depth (in `MessageRate` mode the value is the publish rate), a Kafka
    /// trigger's lag with persistent lag and before the caps on the total.
    ///
    /// `None` where only the value is known, as for `spillway plan --value`: the rule then
    /// decides on the value alone. That answer can differ from the scaler's, which has the
    /// backlog, in two cases: a `MessageRate` trigger whose rate is at or below its activation
    /// value while its queue depth is above it (the scaler says active), and a Kafka trigger
    /// whose value left out persistent lag or was capped.
    pub backlog: Option<f64>,
}

impl ActivationInput {
    /// The served value alone, with no backlog known beside it.
    pub fn value_only(value: f64) -> Self {
        Self {
            value,
            backlog: None,
        }
    }
}

/// The longest any trigger's `timeout` may be, in the code and in the CRD schema: a broker
/// call waits at most this long.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// What every trigger's parameters provide, whatever the broker.
pub trait TriggerParams {
    /// The HPA's AverageValue target for the main metric (KEDA's lagThreshold, value, threshold).
    fn target_value(&self) -> f64;

    /// The value above which the trigger is active (KEDA's activationLagThreshold,
    /// activationValue, activationThreshold).
    fn activation_threshold(&self) -> f64;

    /// The activation rule: whether the trigger wants at least one replica. Its scaler asks
    /// when it makes a [`Reading`], `spillway plan --value` with the value alone, so both decide
    /// alike. By default the value must be above [`TriggerParams::activation_threshold`].
    fn is_active(&self, input: ActivationInput) -> bool {
        input.value > self.activation_threshold()
    }

    /// The metric name's broker part, normalised like KEDA's (`kafka-orders`, `rabbitmq-jobs`);
    /// the served name is `s<index>-<this>`.
    fn metric_name(&self) -> String;

    /// Checks the parameters without touching the network; the error names the field.
    fn validate(&self) -> Result<(), ScalerError>;

    /// The trigger's credentials by field path (`password`, `tls.clientPkcs12Password`), for
    /// the controller to fetch. Each trigger destructures itself without `..` here, so a new
    /// field does not compile until it is classed credential or not.
    fn secret_sources(&mut self) -> Vec<(&'static str, &mut SecretSource)>;

    /// The credential fields a TriggerAuthentication may fill, set or not, by the parameter
    /// name it uses (spillway's field name, and KEDA's where it differs). None by default: a
    /// trigger without credentials takes no parameter.
    fn credential_slots(&mut self) -> Vec<CredentialSlot<'_>> {
        Vec::new()
    }
}

/// One credential field of a trigger that a TriggerAuthentication's `secretTargetRef` may fill.
#[derive(Debug)]
pub struct CredentialSlot<'a> {
    /// spillway's field name (`password`, `hostFromSecret`), which a `parameter` may name.
    pub parameter: &'static str,
    /// KEDA's parameter name for the same field, where it differs (`host`).
    pub keda_parameter: Option<&'static str>,
    pub source: &'a mut Option<SecretSource>,
}

impl<'a> CredentialSlot<'a> {
    /// A slot whose parameter name is the same in spillway and KEDA.
    pub fn new(parameter: &'static str, source: &'a mut Option<SecretSource>) -> Self {
        Self {
            parameter,
            keda_parameter: None,
            source,
        }
    }

    /// True when `parameter` names this slot.
    pub fn is_named(&self, parameter: &str) -> bool {
        self.parameter == parameter || self.keda_parameter == Some(parameter)
    }
}

/// Whether `trigger` sends credentials: any of its [`TriggerParams::secret_sources`] is set
/// (each trigger destructures itself there, so a new credential field counts here too). The
/// poller keeps such a trigger's connection to its own namespace: a tenant's authenticated
/// session is never another tenant's.
pub fn carries_credentials<T: TriggerParams + Clone>(trigger: &T) -> bool {
    !trigger.clone().secret_sources().is_empty()
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

    /// The key a config file entry or a ScaledObject's trigger names the broker by, e.g.
    /// `"natsJetStream"`.
    const CONFIG_KEY: &'static str;

    /// This kind's trigger inside `trigger`, or `None` when it is another broker's.
    fn trigger_of(trigger: &Trigger) -> Option<&Self::Trigger>;

    /// Triggers with equal keys share one scaler: servers, client settings, and each credential
    /// by [`SecretSource::fingerprint`] (never by name alone). The poller adds the namespace
    /// for triggers that [carry credentials](carries_credentials).
    fn connection_key(trigger: &Self::Trigger) -> String;

    /// The broker endpoint `trigger` reads (servers, origin), without credentials: rounds in
    /// flight are bounded per endpoint, and a poll cut short names it.
    fn endpoint(trigger: &Self::Trigger) -> String {
        Self::connection_key(trigger)
    }

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

/// Something done once per broker kind, typed by the kind's scaler; see [`for_each_kind`].
pub trait KindVisitor {
    fn visit<S: Scaler>(&mut self);
}

/// Calls `visitor` once for every broker kind spillway reads, so the poller keeps one pool per
/// kind without naming any. Adding a broker adds one line here.
pub fn for_each_kind(visitor: &mut impl KindVisitor) {
    visitor.visit::<kafka::KafkaScaler>();
    visitor.visit::<rabbitmq::RabbitMqScaler>();
    visitor.visit::<nats::NatsJetStreamScaler>();
    visitor.visit::<prometheus::PrometheusScaler>();
    visitor.visit::<cron::CronScaler>();
}

/// One trigger of any broker kind: what a ScaledObject's `triggers` list (or a config file)
/// holds. Adding a broker adds one variant here, one line in [`for_each_kind`] and one file
/// beside this one.
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

    /// Every broker's config key, in the order of the variants.
    pub const CONFIG_KEYS: [&'static str; 5] = [
        <kafka::KafkaScaler as Scaler>::CONFIG_KEY,
        <rabbitmq::RabbitMqScaler as Scaler>::CONFIG_KEY,
        <nats::NatsJetStreamScaler as Scaler>::CONFIG_KEY,
        <prometheus::PrometheusScaler as Scaler>::CONFIG_KEY,
        <cron::CronScaler as Scaler>::CONFIG_KEY,
    ];

    /// The key a config entry names this trigger's broker by: `kafka`, `natsJetStream`, ...
    pub fn config_key(&self) -> &'static str {
        match self {
            Self::Kafka(_) => <kafka::KafkaScaler as Scaler>::CONFIG_KEY,
            Self::RabbitMq(_) => <rabbitmq::RabbitMqScaler as Scaler>::CONFIG_KEY,
            Self::NatsJetStream(_) => <nats::NatsJetStreamScaler as Scaler>::CONFIG_KEY,
            Self::Prometheus(_) => <prometheus::PrometheusScaler as Scaler>::CONFIG_KEY,
            Self::Cron(_) => <cron::CronScaler as Scaler>::CONFIG_KEY,
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

    fn params_mut(&mut self) -> &mut dyn TriggerParams {
        match self {
            Self::Kafka(t) => t,
            Self::RabbitMq(t) => t,
            Self::NatsJetStream(t) => t,
            Self::Prometheus(t) => t,
            Self::Cron(t) => t,
        }
    }
}

impl Trigger {
    /// A fingerprint of the trigger's spec as written (credentials by reference, never their
    /// values), equal in every process that registered the same spec: replicas name a reading
    /// by it, since each numbers spec versions on its own.
    pub fn spec_fingerprint(&self) -> u64 {
        let json = match self {
            Self::Kafka(t) => serde_json::to_vec(t),
            Self::RabbitMq(t) => serde_json::to_vec(t),
            Self::NatsJetStream(t) => serde_json::to_vec(t),
            Self::Prometheus(t) => serde_json::to_vec(t),
            Self::Cron(t) => serde_json::to_vec(t),
        }
        .unwrap_or_default();
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(self.config_key().as_bytes());
        context.update(&[0]);
        context.update(&json);
        let digest = context.finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        u64::from_be_bytes(first)
    }
}

/// The broker kind named `kind` (as [`Trigger::kind`] writes it), as the static name the
/// scalers use; `None` for a name no scaler has.
pub fn known_kind(kind: &str) -> Option<&'static str> {
    struct Find<'a>(&'a str, Option<&'static str>);
    impl KindVisitor for Find<'_> {
        fn visit<S: Scaler>(&mut self) {
            if S::KIND == self.0 {
                self.1 = Some(S::KIND);
            }
        }
    }
    let mut find = Find(kind, None);
    for_each_kind(&mut find);
    find.1
}

impl TriggerParams for Trigger {
    fn target_value(&self) -> f64 {
        self.params().target_value()
    }

    fn activation_threshold(&self) -> f64 {
        self.params().activation_threshold()
    }

    fn is_active(&self, input: ActivationInput) -> bool {
        self.params().is_active(input)
    }

    fn metric_name(&self) -> String {
        self.params().metric_name()
    }

    fn validate(&self) -> Result<(), ScalerError> {
        self.params().validate()
    }

    fn secret_sources(&mut self) -> Vec<(&'static str, &mut SecretSource)> {
        self.params_mut().secret_sources()
    }

    fn credential_slots(&mut self) -> Vec<CredentialSlot<'_>> {
        self.params_mut().credential_slots()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(partition: i32, lag: i64) -> BacklogSample {
        BacklogSample::KafkaPartition {
            consumer_group: "g".into(),
            topic: "t".into(),
            partition,
            lag,
            lag_seconds: None,
        }
    }

    fn partitions(backlog: &Backlog) -> Vec<i32> {
        backlog
            .samples()
            .iter()
            .map(|s| match s {
                BacklogSample::KafkaPartition { partition, .. } => *partition,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn backlog_keeps_the_largest_in_order_and_counts_the_rest() {
        let lags = [5, 0, 9, 5, 1, 9];
        let samples = || {
            lags.iter()
                .enumerate()
                .map(|(p, lag)| partition(p as i32, *lag))
                .collect::<Vec<_>>()
        };
        let cases: [(usize, &[i32], usize); 5] = [
            (10, &[0, 1, 2, 3, 4, 5], 0),
            (6, &[0, 1, 2, 3, 4, 5], 0),
            // Among equal lags the first partitions stay.
            (3, &[0, 2, 5], 3),
            (2, &[2, 5], 4),
            (0, &[], 6),
        ];
        for (bound, kept, left_out) in cases {
            let backlog = Backlog::bounded_to(samples(), bound);
            assert_eq!(partitions(&backlog), kept, "bound {bound}");
            assert_eq!(backlog.left_out(), left_out, "bound {bound}");
        }
    }

    #[test]
    fn backlog_ranks_each_broker_by_its_waiting_work() {
        let queue = |queue: &str, messages: Option<f64>, ready: f64| BacklogSample::RabbitMqQueue {
            vhost: "/".into(),
            queue: queue.into(),
            messages,
            messages_ready: ready,
            messages_unacknowledged: None,
            publish_rate: None,
            deliver_rate: None,
        };
        assert_eq!(queue("http", Some(7.0), 2.0).size(), 7.0);
        assert_eq!(queue("amqp", None, 3.0).size(), 3.0);
        let consumer = BacklogSample::NatsConsumer {
            stream: "s".into(),
            consumer: "c".into(),
            pending: 4,
            ack_pending: u64::MAX,
        };
        assert_eq!(consumer.size(), u64::MAX as f64, "saturates");
    }

    #[test]
    fn a_reading_is_bounded_at_the_documented_limit() {
        let samples = (0..MAX_BACKLOG_SAMPLES as i32 + 5)
            .map(|p| partition(p, i64::from(p)))
            .collect();
        let reading = Reading::new(1.0, true).with_backlog(samples);
        assert_eq!(reading.backlog.samples().len(), MAX_BACKLOG_SAMPLES);
        assert_eq!(reading.backlog.left_out(), 5);
        assert_eq!(
            partitions(&reading.backlog)[0],
            5,
            "the five smallest lags left out"
        );
        assert!(Reading::new(1.0, true).backlog.is_empty());
    }

    #[test]
    fn metric_names_are_normalised() {
        assert_eq!(
            normalize_metric_name("kafka-Orders.v1_eu"),
            "kafka-orders-v1-eu"
        );
        assert_eq!(normalize_metric_name("rabbitmq-jobs"), "rabbitmq-jobs");
    }
}
