//! spillway's own Prometheus metrics: every `spillway_*` series in one place, and the
//! plain-HTTP server that exposes them on `server.metricsListen` (`GET /metrics`, OpenMetrics
//! text format).
//!
//! Events are counted where they happen: poll durations and errors where the poller records
//! into the cache, API requests in a router middleware. Per-trigger state (value, active,
//! failures in a row, cache age) is read from the cache at scrape time instead, so it is
//! exactly what the API serves and a removed trigger's series disappear with its cache entry.
//!
//! The backlog behind each trigger's value is exported the same way, for teams that graph and
//! alert in Prometheus without an HPA: `spillway_kafka_consumer_lag{,_seconds}` per partition,
//! `spillway_rabbitmq_queue_*` per queue, `spillway_nats_jetstream_consumer_{pending,ack_pending}`
//! per consumer. Their cardinality is bounded per trigger by [`MAX_BACKLOG_SAMPLES`] (1,000)
//! partitions or queues, those with the most backlog; `spillway_backlog_series_truncated` counts
//! the ones left out. A trigger whose latest poll failed exports no backlog at all, never a
//! stale or zero one.
//!
//! With `server.metricsAuth: namespaces`, `/metrics` answers each caller only the series it
//! may read ([`scope`]).

pub mod scope;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::cache::{MetricCache, TriggerId};
use crate::connections::{ConnectionLimits, Connections};
use crate::scalers::{
    Backlog, BacklogSample, MAX_BACKLOG_SAMPLES, ScalerError, Trigger, served_metric_name,
};

/// The content type of the OpenMetrics text format, which `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `route` label of requests no route matched: one value, whatever the path.
const UNMATCHED_ROUTE: &str = "unmatched";

/// The labels of `spillway_kafka_requests_total`: the Kafka API (`OffsetFetch`, `ListOffsets`...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KafkaApiLabels {
    api: &'static str,
}

/// The labels of a per-trigger series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    namespace: String,
    scaled_object: String,
    /// The trigger's index in its scaled object's list.
    trigger: String,
    broker: &'static str,
    /// The served metric name (`s0-kafka-orders`, or an extra: `s0-kafka-orders-lag-seconds`).
    metric: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabels {
    broker: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PollErrorLabels {
    namespace: String,
    scaled_object: String,
    trigger: String,
    broker: &'static str,
    /// [`ScalerError::reason`]: `unreachable`, `timeout`, `not_found`, ...
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route template (`/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}`),
    /// never the raw path: a path is chosen by the caller and would make series without bound.
    route: String,
    code: u16,
}

/// One route and code's request series: `spillway_api_request_duration_seconds` and
/// `spillway_api_requests_total`, shared with the registry.
#[derive(Debug, Clone)]
pub struct RequestSeries {
    duration: Histogram,
    count: Counter,
}

impl RequestSeries {
    /// Counts one request that took `took`.
    pub fn observe(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
        self.count.inc();
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    /// `ok` or `error`.
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileErrorLabels {
    /// The error's stable name (`ReconcileError::reason`): `spec`, `hpa`, `kube`, `target`.
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionRefusalLabels {
    /// `api` (the metrics API) or `metrics` (this `/metrics` server).
    server: &'static str,
    /// `server` (the server's cap) or `client` (one client address's cap).
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenReviewLabels {
    /// `authenticated`, `unauthenticated` (kube-apiserver said no), `error` (no answer).
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenReviewRefusalLabels {
    /// `rate` (over the review rate) or `concurrency` (no review slot in time).
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScaledObjectLabels {
    namespace: String,
    scaled_object: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScalingLabels {
    namespace: String,
    scaled_object: String,
    /// The Event reason of the action: `ScaledFromIdle`, `ScaledToIdle`, `PausedReplicas`,
    /// `FallbackFromZero`.
    action: String,
}

/// Whose backlog a backlog series shows: the first labels of each.
#[derive(Debug, Clone, EncodeLabelSet)]
struct BacklogOwnerLabels {
    namespace: String,
    scaled_object: String,
    trigger: String,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct KafkaPartitionLabels {
    #[prometheus(flatten)]
    owner: BacklogOwnerLabels,
    consumer_group: String,
    topic: String,
    partition: i32,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct RabbitMqQueueLabels {
    #[prometheus(flatten)]
    owner: BacklogOwnerLabels,
    vhost: String,
    queue: String,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct NatsConsumerLabels {
    #[prometheus(flatten)]
    owner: BacklogOwnerLabels,
    stream: String,
    consumer: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Labels that belong to one scaled object, so its series can be dropped with it.
trait OfScaledObject {
    fn scaled_object(&self) -> (&str, &str);
}

impl OfScaledObject for PollErrorLabels {
    fn scaled_object(&self) -> (&str, &str) {
        (&self.namespace, &self.scaled_object)
    }
}

impl OfScaledObject for ScalingLabels {
    fn scaled_object(&self) -> (&str, &str) {
        (&self.namespace, &self.scaled_object)
    }
}

/// A counter family whose series end with their scaled object or trigger. prometheus-client's
/// `Family` removes one label set at a time and cannot list them, so the label sets created
/// are kept beside it.
#[derive(Debug)]
struct ScaledObjectCounters<L> {
    family: Family<L, Counter>,
    created: Mutex<HashSet<L>>,
}

impl<L> ScaledObjectCounters<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + OfScaledObject + std::fmt::Debug,
{
    fn new() -> Self {
        Self {
            family: Family::default(),
            created: Mutex::new(HashSet::new()),
        }
    }

    fn inc(&self, labels: L) {
        self.family.get_or_create(&labels).inc();
        self.created.lock().expect("metrics lock").insert(labels);
    }

    /// Drops the series `keep` says no to.
    fn retain(&self, keep: impl Fn(&L) -> bool) {
        self.created.lock().expect("metrics lock").retain(|labels| {
            let kept = keep(labels);
            if !kept {
                self.family.remove(labels);
            }
            kept
        });
    }
}

/// One trigger as the poller last listed it: what its series are labelled with.
#[derive(Debug, Clone)]
struct TrackedTrigger {
    id: TriggerId,
    broker: &'static str,
    metric: String,
}

/// Every series spillway exports, and the registry that encodes them. Shared (`Arc`) by the
/// API server, the poller and the `/metrics` server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    poll_duration: HistogramFamily<BrokerLabels>,
    poll_errors: ScaledObjectCounters<PollErrorLabels>,
    api_request_duration: HistogramFamily<RequestLabels>,
    api_requests: Family<RequestLabels, Counter>,
    triggers: Arc<RwLock<Vec<TrackedTrigger>>>,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_errors: Family<ReconcileErrorLabels, Counter>,
    reconcile_duration: Histogram,
    scaling_actions: ScaledObjectCounters<ScalingLabels>,
    fallback: Family<ScaledObjectLabels, Gauge>,
    paused: Family<ScaledObjectLabels, Gauge>,
    /// The label sets of `fallback` and `paused` (a `Family` cannot list them).
    scaled_object_gauges: Mutex<HashSet<ScaledObjectLabels>>,
    leader: Gauge,
    connections_refused: Family<ConnectionRefusalLabels, Counter>,
    token_reviews: Family<TokenReviewLabels, Counter>,
    token_reviews_refused: Family<TokenReviewRefusalLabels, Counter>,
    token_reviews_in_flight: Gauge,
    sharing: SharingMetrics,
}

/// The figures of polling shared between replicas (`--share-polling`).
#[derive(Debug, Clone, Default)]
pub struct SharingMetrics {
    /// Live replicas this one knows of, itself included.
    pub members: Gauge,
    /// Connection groups this replica polls, and in all.
    pub owned_groups: Gauge,
    pub groups: Gauge,
    /// Trigger states copied from their owners.
    pub states_received: Counter,
    /// States a peer sent that were not taken (another owner, another spec, garbage).
    pub states_refused: Counter,
    /// Requests to peers that failed (connection, TLS, status, body).
    pub peer_errors: Counter,
    /// Cold misses sent to the trigger's owner.
    pub asks_forwarded: Counter,
}

impl Metrics {
    /// A registry whose per-trigger gauges read `cache` at each scrape.
    pub fn new(cache: Arc<MetricCache>) -> Self {
        let mut registry = Registry::with_prefix("spillway");
        // 5 ms to 41 s: a cron read to a broker at its timeout.
        let poll_duration: HistogramFamily<BrokerLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 14)));
        registry.register_with_unit(
            "poll_duration",
            "How long the batched broker round that read a trigger took, one observation per trigger polled",
            Unit::Seconds,
            poll_duration.clone(),
        );
        let poll_errors = ScaledObjectCounters::<PollErrorLabels>::new();
        registry.register(
            "poll_errors",
            "Polls of a trigger that failed, by reason",
            poll_errors.family.clone(),
        );
        // 0.5 ms to 8 s: a cache answer up to a cold miss waiting for its first poll.
        let api_request_duration: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 15)));
        registry.register_with_unit(
            "api_request_duration",
            "Time to answer a metrics API request, by route template and HTTP code",
            Unit::Seconds,
            api_request_duration.clone(),
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Metrics API requests answered, by route template and HTTP code",
            api_requests.clone(),
        );
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "controller_reconciles",
            "ScaledObject reconciles by the leader, by result",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ReconcileErrorLabels, Counter>::default();
        registry.register(
            "controller_reconcile_errors",
            "Failed ScaledObject reconciles by the leader, by error",
            reconcile_errors.clone(),
        );
        // 1 ms to 16 s: a reconcile that only reads the cache up to one waiting on a slow API server.
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register_with_unit(
            "controller_reconcile_duration",
            "How long one ScaledObject reconcile by the leader took, failed ones included",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let scaling_actions = ScaledObjectCounters::<ScalingLabels>::new();
        registry.register(
            "controller_scaling_actions",
            "Replica changes spillway made itself through the scale subresource (to and from idle, paused replicas, fallback from zero)",
            scaling_actions.family.clone(),
        );
        let fallback = Family::<ScaledObjectLabels, Gauge>::default();
        registry.register(
            "scaled_object_fallback",
            "1 while a ScaledObject serves fallback replicas",
            fallback.clone(),
        );
        let paused = Family::<ScaledObjectLabels, Gauge>::default();
        registry.register(
            "scaled_object_paused",
            "1 while a ScaledObject is paused",
            paused.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the controller's leader Lease",
            leader.clone(),
        );
        let connections_refused = Family::<ConnectionRefusalLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed on accept because the server, or the client's address, had its maximum open",
            connections_refused.clone(),
        );
        let token_reviews = Family::<TokenReviewLabels, Counter>::default();
        registry.register(
            "token_reviews",
            "TokenReviews sent to kube-apiserver to authenticate bearer tokens, by result",
            token_reviews.clone(),
        );
        let token_reviews_refused = Family::<TokenReviewRefusalLabels, Counter>::default();
        registry.register(
            "token_reviews_refused",
            "Bearer-token requests answered 429 without a TokenReview, by the limit they hit",
            token_reviews_refused.clone(),
        );
        let token_reviews_in_flight = Gauge::default();
        registry.register(
            "token_reviews_in_flight",
            "TokenReviews sent and not answered yet",
            token_reviews_in_flight.clone(),
        );
        let sharing = SharingMetrics::default();
        registry.register(
            "sharing_members",
            "Live replicas sharing the polling, this one included (0 when replicas do not share it)",
            sharing.members.clone(),
        );
        registry.register(
            "sharing_owned_groups",
            "Connection groups this replica polls",
            sharing.owned_groups.clone(),
        );
        registry.register(
            "sharing_groups",
            "Connection groups of every registered trigger, whoever polls them",
            sharing.groups.clone(),
        );
        registry.register(
            "sharing_states_received",
            "Trigger states copied from the replica that polls them",
            sharing.states_received.clone(),
        );
        registry.register(
            "sharing_states_refused",
            "Trigger states a peer sent that were not taken: not its trigger by this replica's live set, another spec, or unreadable",
            sharing.states_refused.clone(),
        );
        registry.register(
            "sharing_peer_errors",
            "Requests to another replica that failed",
            sharing.peer_errors.clone(),
        );
        registry.register(
            "sharing_asks_forwarded",
            "Cold misses sent to the replica that polls the trigger",
            sharing.asks_forwarded.clone(),
        );
        let triggers = Arc::new(RwLock::new(Vec::new()));
        registry.register_collector(Box::new(FootprintCollector {
            cache: Arc::clone(&cache),
            triggers: Arc::clone(&triggers),
        }));
        registry.register_collector(Box::new(TriggerCollector {
            cache,
            triggers: Arc::clone(&triggers),
        }));
        Self {
            registry,
            poll_duration,
            poll_errors,
            api_request_duration,
            api_requests,
            triggers,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            scaling_actions,
            fallback,
            paused,
            scaled_object_gauges: Mutex::new(HashSet::new()),
            leader,
            connections_refused,
            token_reviews,
            token_reviews_refused,
            token_reviews_in_flight,
            sharing,
        }
    }

    /// The figures of shared polling.
    pub fn sharing(&self) -> &SharingMetrics {
        &self.sharing
    }

    /// The counter of connections `server` (`api`, `metrics`) closed at `limit` (`server`:
    /// its cap, `client`: a client address's cap).
    pub fn connections_refused(&self, server: &'static str, limit: &'static str) -> Counter {
        self.connections_refused
            .get_or_create(&ConnectionRefusalLabels { server, limit })
            .clone()
    }

    /// Counts one TokenReview answered (or failed) by kube-apiserver.
    pub fn observe_token_review(&self, result: &'static str) {
        self.token_reviews
            .get_or_create(&TokenReviewLabels { result })
            .inc();
    }

    /// Counts one bearer-token request refused before a review, by the limit it hit.
    pub fn observe_token_review_refused(&self, reason: &'static str) {
        self.token_reviews_refused
            .get_or_create(&TokenReviewRefusalLabels { reason })
            .inc();
    }

    /// The gauge of TokenReviews in flight.
    pub fn token_reviews_in_flight(&self) -> Gauge {
        self.token_reviews_in_flight.clone()
    }

    /// Counts one reconcile of the leader and how long it took; a failed one by its error's
    /// stable name.
    pub fn observe_reconcile(&self, outcome: Result<(), &'static str>, took: Duration) {
        let result = if outcome.is_ok() { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { result })
            .inc();
        if let Err(reason) = outcome {
            self.reconcile_errors
                .get_or_create(&ReconcileErrorLabels { reason })
                .inc();
        }
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Counts one replica change spillway made, by its Event reason.
    pub fn observe_scaling(&self, namespace: &str, scaled_object: &str, action: &str) {
        self.scaling_actions.inc(ScalingLabels {
            namespace: namespace.to_owned(),
            scaled_object: scaled_object.to_owned(),
            action: action.to_owned(),
        });
    }

    /// Sets a ScaledObject's fallback and pause gauges.
    pub fn set_scaled_object_state(
        &self,
        namespace: &str,
        scaled_object: &str,
        fallback: bool,
        paused: bool,
    ) {
        let labels = ScaledObjectLabels {
            namespace: namespace.to_owned(),
            scaled_object: scaled_object.to_owned(),
        };
        self.fallback
            .get_or_create(&labels)
            .set(i64::from(fallback));
        self.paused.get_or_create(&labels).set(i64::from(paused));
        self.scaled_object_gauges
            .lock()
            .expect("metrics lock")
            .insert(labels);
    }

    /// The (namespace, name) of every ScaledObject with a fallback or pause gauge.
    pub fn scaled_objects(&self) -> Vec<(String, String)> {
        self.scaled_object_gauges
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|l| (l.namespace.clone(), l.scaled_object.clone()))
            .collect()
    }

    /// Drops a deleted ScaledObject's gauges and counters, so its series end with it.
    pub fn forget_scaled_object(&self, namespace: &str, scaled_object: &str) {
        let labels = ScaledObjectLabels {
            namespace: namespace.to_owned(),
            scaled_object: scaled_object.to_owned(),
        };
        self.scaled_object_gauges
            .lock()
            .expect("metrics lock")
            .remove(&labels);
        self.fallback.remove(&labels);
        self.paused.remove(&labels);
        self.scaling_actions
            .retain(|l| l.scaled_object() != (namespace, scaled_object));
        self.poll_errors
            .retain(|l| l.scaled_object() != (namespace, scaled_object));
    }

    /// Sets whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Sets the triggers whose state is exported (the poller's current list); the poll error
    /// counts of triggers no longer listed end with them.
    /// Takes an iterator, not a list, so the poller need not clone every trigger to call it.
    pub fn track_triggers<'a>(
        &self,
        triggers: impl IntoIterator<Item = &'a (TriggerId, Trigger)> + Clone,
    ) {
        let live: HashSet<(&str, &str, String)> = triggers
            .clone()
            .into_iter()
            .map(|(id, _)| {
                (
                    id.namespace.as_str(),
                    id.scaled_object.as_str(),
                    id.index.to_string(),
                )
            })
            .collect();
        self.poll_errors.retain(|l| {
            live.contains(&(
                l.namespace.as_str(),
                l.scaled_object.as_str(),
                l.trigger.clone(),
            ))
        });
        let tracked = triggers
            .into_iter()
            .map(|(id, trigger)| TrackedTrigger {
                id: id.clone(),
                broker: trigger.kind(),
                metric: served_metric_name(id.index, trigger),
            })
            .collect();
        *self.triggers.write().expect("metrics lock") = tracked;
    }

    /// Counts one poll outcome of `id`: its round's duration and, if it failed, why.
    pub fn observe_poll(
        &self,
        id: &TriggerId,
        broker: &'static str,
        outcome: Result<(), &ScalerError>,
        took: Duration,
    ) {
        self.poll_duration
            .get_or_create(&BrokerLabels { broker })
            .observe(took.as_secs_f64());
        if let Err(err) = outcome {
            self.poll_errors.inc(PollErrorLabels {
                namespace: id.namespace.clone(),
                scaled_object: id.scaled_object.clone(),
                trigger: id.index.to_string(),
                broker,
                reason: err.reason(),
            });
        }
    }

    /// Counts a stale mark of `id` (no poll finished within its freshness bound) as a poll
    /// error of reason `stale`; it took no broker time.
    pub fn observe_stale(&self, id: &TriggerId, broker: &'static str) {
        self.poll_errors.inc(PollErrorLabels {
            namespace: id.namespace.clone(),
            scaled_object: id.scaled_object.clone(),
            trigger: id.index.to_string(),
            broker,
            reason: "stale",
        });
    }

    /// Counts one answered API request.
    pub fn observe_request(&self, route: &str, code: StatusCode, took: Duration) {
        self.request_series(route, code).observe(took);
    }

    /// The series of requests to `route` answered `code`, held by a caller that counts many
    /// (the value route), so each request costs no label lookup.
    pub fn request_series(&self, route: &str, code: StatusCode) -> RequestSeries {
        let labels = RequestLabels {
            route: route.to_owned(),
            code: code.as_u16(),
        };
        RequestSeries {
            duration: self.api_request_duration.get_or_create(&labels).clone(),
            count: self.api_requests.get_or_create(&labels).clone(),
        }
    }

    /// Every series in the OpenMetrics text format, ending in `# EOF`.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// What the process holds, read at each scrape: cache entries, the triggers and scaled
/// objects the poller follows, and the tokio tasks alive. Each should follow the number of
/// scaled objects and nothing else; the soak test (`tests/soak.rs`) watches them for leaks.
#[derive(Debug)]
struct FootprintCollector {
    cache: Arc<MetricCache>,
    triggers: Arc<RwLock<Vec<TrackedTrigger>>>,
}

impl FootprintCollector {
    fn encode_gauge(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: usize,
    ) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
    }
}

impl Collector for FootprintCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sizes = self.cache.sizes();
        let (triggers, scaled_objects) = {
            let tracked = self.triggers.read().expect("metrics lock");
            let objects: HashSet<(&str, &str)> = tracked
                .iter()
                .map(|t| (t.id.namespace.as_str(), t.id.scaled_object.as_str()))
                .collect();
            (tracked.len(), objects.len())
        };
        Self::encode_gauge(
            &mut encoder,
            "cache_entries",
            "Trigger states held by the metric cache (one per trigger polled at least once)",
            sizes.states,
        )?;
        Self::encode_gauge(
            &mut encoder,
            "cache_tracked_specs",
            "Trigger specs the metric cache records readings for (one per registered trigger)",
            sizes.specs,
        )?;
        Self::encode_gauge(
            &mut encoder,
            "registered_triggers",
            "Triggers the poller follows",
            triggers,
        )?;
        Self::encode_gauge(
            &mut encoder,
            "registered_scaled_objects",
            "Scaled objects whose triggers the poller follows",
            scaled_objects,
        )?;
        // Scraped outside a runtime (a unit test encoding directly) there is none to count.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            Self::encode_gauge(
                &mut encoder,
                "runtime_tasks",
                "Tokio tasks alive in the process (spawned and not finished)",
                runtime.metrics().num_alive_tasks(),
            )?;
        }
        Ok(())
    }
}

/// Reads the per-trigger gauges from the cache at each scrape.
#[derive(Debug)]
struct TriggerCollector {
    cache: Arc<MetricCache>,
    triggers: Arc<RwLock<Vec<TrackedTrigger>>>,
}

impl TriggerCollector {
    /// One family of constant samples: a descriptor, then one sample per `(labels, value)`
    /// made into a metric by `metric`; nothing at all without samples.
    fn encode_family<L: EncodeLabelSet, V: Copy, M: EncodeMetric>(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        samples: &[(L, V)],
        metric: impl Fn(V) -> M,
    ) -> Result<(), std::fmt::Error> {
        let Some((_, first)) = samples.first() else {
            return Ok(());
        };
        let mut family =
            encoder.encode_descriptor(name, help, unit, metric(*first).metric_type())?;
        for (labels, value) in samples {
            metric(*value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }

    /// One gauge family; see [`TriggerCollector::encode_family`].
    fn encode_gauges<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        samples: &[(L, V)],
    ) -> Result<(), std::fmt::Error> {
        Self::encode_family(encoder, name, help, unit, samples, ConstGauge::new)
    }
}

impl Collector for TriggerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tracked = self.triggers.read().expect("metrics lock").clone();
        let mut values = Vec::new();
        let mut active = Vec::new();
        let mut failures = Vec::new();
        let mut ages = Vec::new();
        let mut polls = Vec::new();
        let mut backlog = BacklogSeries::default();
        for trigger in &tracked {
            let Some(state) = self.cache.get(&trigger.id) else {
                continue;
            };
            let labels = |metric: String| TriggerLabels {
                namespace: trigger.id.namespace.clone(),
                scaled_object: trigger.id.scaled_object.clone(),
                trigger: trigger.id.index.to_string(),
                broker: trigger.broker,
                metric,
            };
            failures.push((
                labels(trigger.metric.clone()),
                i64::from(state.consecutive_failures),
            ));
            ages.push((
                labels(trigger.metric.clone()),
                state.polled_at.elapsed().as_secs_f64(),
            ));
            polls.push((labels(trigger.metric.clone()), state.polls));
            // A failed latest poll exports no value: an error never turns into a number.
            if let Some(reading) = state.current() {
                values.push((labels(trigger.metric.clone()), reading.value));
                for (suffix, value) in &reading.extra {
                    values.push((labels(format!("{}-{suffix}", trigger.metric)), *value));
                }
                active.push((labels(trigger.metric.clone()), i64::from(reading.active)));
                backlog.add(&trigger.id, &reading.backlog);
            }
        }
        Self::encode_gauges(
            &mut encoder,
            "trigger_value",
            "The latest value of a trigger's metric, as served to the HPA (absent while its latest poll failed)",
            None,
            &values,
        )?;
        Self::encode_gauges(
            &mut encoder,
            "trigger_active",
            "1 when the trigger's latest reading is above its activation value, else 0",
            None,
            &active,
        )?;
        Self::encode_gauges(
            &mut encoder,
            "trigger_consecutive_failures",
            "Polls of the trigger that failed in a row (0 after a good one)",
            None,
            &failures,
        )?;
        Self::encode_gauges(
            &mut encoder,
            "cache_age",
            "Time since the trigger's latest poll finished, at scrape",
            Some(&Unit::Seconds),
            &ages,
        )?;
        Self::encode_family(
            &mut encoder,
            "trigger_polls",
            "Polls of the trigger recorded since its spec last changed (stale marks are not polls)",
            None,
            &polls,
            ConstCounter::new,
        )?;
        let kafka_requests: Vec<(KafkaApiLabels, u64)> =
            crate::kafka_client::requests_sent_by_process()
                .into_iter()
                .map(|(api, n)| (KafkaApiLabels { api }, n))
                .collect();
        Self::encode_family(
            &mut encoder,
            "kafka_requests",
            "Kafka requests sent by spillway's wire client, by Kafka API (all clusters)",
            None,
            &kafka_requests,
            ConstCounter::new,
        )?;
        backlog.encode(&mut encoder)
    }
}

/// The backlog series of the triggers' current readings, one list per family.
#[derive(Default)]
struct BacklogSeries {
    kafka_lag: Vec<(KafkaPartitionLabels, i64)>,
    kafka_lag_seconds: Vec<(KafkaPartitionLabels, f64)>,
    rabbitmq_messages: Vec<(RabbitMqQueueLabels, f64)>,
    rabbitmq_ready: Vec<(RabbitMqQueueLabels, f64)>,
    rabbitmq_unacked: Vec<(RabbitMqQueueLabels, f64)>,
    rabbitmq_publish_rate: Vec<(RabbitMqQueueLabels, f64)>,
    rabbitmq_deliver_rate: Vec<(RabbitMqQueueLabels, f64)>,
    nats_pending: Vec<(NatsConsumerLabels, u64)>,
    nats_ack_pending: Vec<(NatsConsumerLabels, u64)>,
    truncated: Vec<(BacklogOwnerLabels, usize)>,
}

impl BacklogSeries {
    /// Adds one trigger's backlog samples; a trigger without any adds nothing.
    fn add(&mut self, id: &TriggerId, backlog: &Backlog) {
        if backlog.is_empty() && backlog.left_out() == 0 {
            return;
        }
        let owner = BacklogOwnerLabels {
            namespace: id.namespace.clone(),
            scaled_object: id.scaled_object.clone(),
            trigger: id.index.to_string(),
        };
        self.truncated.push((owner.clone(), backlog.left_out()));
        for sample in backlog.samples() {
            match sample {
                BacklogSample::KafkaPartition {
                    consumer_group,
                    topic,
                    partition,
                    lag,
                    lag_seconds,
                } => {
                    let labels = KafkaPartitionLabels {
                        owner: owner.clone(),
                        consumer_group: consumer_group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                    };
                    if let Some(seconds) = lag_seconds {
                        self.kafka_lag_seconds.push((labels.clone(), *seconds));
                    }
                    self.kafka_lag.push((labels, *lag));
                }
                BacklogSample::RabbitMqQueue {
                    vhost,
                    queue,
                    messages,
                    messages_ready,
                    messages_unacknowledged,
                    publish_rate,
                    deliver_rate,
                } => {
                    let labels = RabbitMqQueueLabels {
                        owner: owner.clone(),
                        vhost: vhost.clone(),
                        queue: queue.clone(),
                    };
                    for (series, value) in [
                        (&mut self.rabbitmq_messages, *messages),
                        (&mut self.rabbitmq_unacked, *messages_unacknowledged),
                        (&mut self.rabbitmq_publish_rate, *publish_rate),
                        (&mut self.rabbitmq_deliver_rate, *deliver_rate),
                    ] {
                        if let Some(value) = value {
                            series.push((labels.clone(), value));
                        }
                    }
                    self.rabbitmq_ready.push((labels, *messages_ready));
                }
                BacklogSample::NatsConsumer {
                    stream,
                    consumer,
                    pending,
                    ack_pending,
                } => {
                    let labels = NatsConsumerLabels {
                        owner: owner.clone(),
                        stream: stream.clone(),
                        consumer: consumer.clone(),
                    };
                    self.nats_pending.push((labels.clone(), *pending));
                    self.nats_ack_pending.push((labels, *ack_pending));
                }
            }
        }
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use TriggerCollector as C;
        C::encode_gauges(
            encoder,
            "kafka_consumer_lag",
            "Records the consumer group is behind, per partition the trigger counts (before the caps on the total; persistent lag included)",
            None,
            &self.kafka_lag,
        )?;
        C::encode_gauges(
            encoder,
            "kafka_consumer_lag",
            "Age of the record at the group's committed offset, per partition the trigger counts (0 without lag; absent while unknown)",
            Some(&Unit::Seconds),
            &self.kafka_lag_seconds,
        )?;
        C::encode_gauges(
            encoder,
            "rabbitmq_queue_messages",
            "Messages in the queue, ready plus unacknowledged (management API triggers)",
            None,
            &self.rabbitmq_messages,
        )?;
        C::encode_gauges(
            encoder,
            "rabbitmq_queue_messages_ready",
            "Messages ready for delivery in the queue",
            None,
            &self.rabbitmq_ready,
        )?;
        C::encode_gauges(
            encoder,
            "rabbitmq_queue_messages_unacked",
            "Messages delivered and not yet acknowledged (management API triggers)",
            None,
            &self.rabbitmq_unacked,
        )?;
        C::encode_gauges(
            encoder,
            "rabbitmq_queue_publish_rate",
            "Messages published to the queue per second, as the management API reports (management API triggers)",
            None,
            &self.rabbitmq_publish_rate,
        )?;
        C::encode_gauges(
            encoder,
            "rabbitmq_queue_deliver_rate",
            "Messages delivered or fetched from the queue per second, as the management API reports (management API triggers)",
            None,
            &self.rabbitmq_deliver_rate,
        )?;
        C::encode_gauges(
            encoder,
            "nats_jetstream_consumer_pending",
            "Messages of the stream not yet delivered to the consumer",
            None,
            &self.nats_pending,
        )?;
        C::encode_gauges(
            encoder,
            "nats_jetstream_consumer_ack_pending",
            "Messages delivered to the consumer and not yet acknowledged",
            None,
            &self.nats_ack_pending,
        )?;
        C::encode_gauges(
            encoder,
            "backlog_series_truncated",
            &format!(
                "Partitions or queues of the trigger left out of the backlog series, beyond the {MAX_BACKLOG_SAMPLES} with the most backlog"
            ),
            None,
            &self.truncated,
        )
    }
}

/// Router middleware: times and counts every request by route template and code.
pub async fn track_requests(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe_request(&route, response.status(), started.elapsed());
    response
}

/// What `/metrics` serves from: the series, and who may read which (`None`: everyone all).
#[derive(Clone)]
struct ScrapeState {
    metrics: Arc<Metrics>,
    access: Option<Arc<dyn scope::ScrapeAccess>>,
}

/// `GET /metrics`: every series, or with an access policy the caller's (401 without
/// credentials; an authenticated caller allowed nothing gets no series, not an error).
async fn scrape(State(state): State<ScrapeState>, headers: axum::http::HeaderMap) -> Response {
    let text = match state.metrics.encode() {
        Ok(text) => text,
        Err(err) => {
            tracing::error!(error = %err, "cannot encode metrics");
            return (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response();
        }
    };
    let text = match &state.access {
        None => text,
        Some(access) => {
            let namespaces = scope::namespaces_in(&text).into_iter().collect();
            match access.scope(&headers, namespaces).await {
                Ok(allowed) => scope::filter(&text, &allowed),
                Err(refused) => return refused,
            }
        }
    };
    ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
}

/// The `/metrics` server's routes: every series to anyone, or with `access` each caller's.
pub fn metrics_router(
    metrics: Arc<Metrics>,
    access: Option<Arc<dyn scope::ScrapeAccess>>,
) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") })
        .with_state(ScrapeState { metrics, access })
}

/// How `/metrics` bounds its connections: a scraper sends one small request every few
/// seconds, so a few connections, short header and idle timeouts.
pub const METRICS_CONNECTION_LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 64,
    max_connections_per_client: 16,
    idle_timeout: Duration::from_secs(60),
    header_read_timeout: Duration::from_secs(10),
    keep_alive_interval: Duration::from_secs(30),
};

/// Serves `GET /metrics` over plain HTTP on `listener` until `shutdown` completes, within
/// [`METRICS_CONNECTION_LIMITS`]; open scrapes get five seconds to finish. With `access`,
/// each caller reads only the series it may.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    access: Option<Arc<dyn scope::ScrapeAccess>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let connections = Arc::new(Connections::new(
        METRICS_CONNECTION_LIMITS,
        metrics.connections_refused("metrics", "server"),
        metrics.connections_refused("metrics", "client"),
    ));
    let app = metrics_router(metrics, access);
    tokio::pin!(shutdown);
    while let Some((admitted, tcp, peer)) = connections
        .accept(&listener, shutdown.as_mut(), "/metrics")
        .await
    {
        let (connections, app) = (Arc::clone(&connections), app.clone());
        tokio::spawn(async move {
            let builder = connections.builder();
            if let Err(err) = connections.serve(admitted, &builder, tcp, app).await {
                tracing::debug!(%peer, error = %err, "/metrics connection ended with an error");
            }
        });
    }
    connections.drain(Duration::from_secs(5)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalers::Reading;

    fn id(scaled_object: &str, index: usize) -> TriggerId {
        TriggerId {
            namespace: "default".into(),
            scaled_object: scaled_object.into(),
            index,
        }
    }

    fn cron() -> Trigger {
        Trigger::Cron(
            serde_json::from_value(serde_json::json!({
                "timezone": "UTC", "start": "0 6 * * *", "end": "0 20 * * *", "desiredReplicas": 3
            }))
            .unwrap(),
        )
    }

    fn down() -> ScalerError {
        ScalerError::Unreachable {
            broker: "cron",
            target: "nowhere".into(),
            cause: "refused".into(),
        }
    }

    /// The sample lines of `text` whose name and labels start with `prefix`.
    fn samples<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn series_follow_prometheus_naming_and_the_cache() {
        let cache = Arc::new(MetricCache::new());
        let metrics = Metrics::new(Arc::clone(&cache));
        metrics.track_triggers(&[(id("office", 0), cron()), (id("broken", 0), cron())]);
        cache.record(
            id("office", 0),
            Ok(Reading::new(3.0, true).with_extra("lag-seconds", 1.5)),
            Duration::from_millis(20),
        );
        metrics.observe_poll(&id("office", 0), "cron", Ok(()), Duration::from_millis(20));
        cache.record(id("broken", 0), Err(down()), Duration::ZERO);
        metrics.observe_poll(&id("broken", 0), "cron", Err(&down()), Duration::ZERO);
        metrics.observe_request(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
            StatusCode::OK,
            Duration::from_millis(1),
        );
        let text = metrics.encode().unwrap();
        println!("{text}");
        assert!(text.ends_with("# EOF\n"));

        let office = r#"{namespace="default",scaled_object="office",trigger="0",broker="cron""#;
        assert_eq!(
            samples(&text, "spillway_trigger_value{"),
            [
                format!(
                    r#"spillway_trigger_value{office},metric="s0-cron-utc-06xxx-020xxx"}} 3.0"#
                ),
                format!(
                    r#"spillway_trigger_value{office},metric="s0-cron-utc-06xxx-020xxx-lag-seconds"}} 1.5"#
                ),
            ],
            "no value for the broken trigger"
        );
        assert_eq!(
            samples(&text, "spillway_trigger_active{"),
            [format!(
                r#"spillway_trigger_active{office},metric="s0-cron-utc-06xxx-020xxx"}} 1"#
            )]
        );
        let failures = samples(&text, "spillway_trigger_consecutive_failures{");
        assert!(
            failures
                .iter()
                .any(|l| l.contains(r#"scaled_object="broken""#) && l.ends_with(" 1")),
            "{failures:?}"
        );
        assert_eq!(samples(&text, "spillway_cache_age_seconds{").len(), 2);
        assert!(text.contains("# TYPE spillway_cache_age_seconds gauge"));
        assert!(text.contains("# UNIT spillway_cache_age_seconds seconds"));
        assert_eq!(
            samples(&text, "spillway_poll_errors_total{"),
            [
                r#"spillway_poll_errors_total{namespace="default",scaled_object="broken",trigger="0",broker="cron",reason="unreachable"} 1"#
            ]
        );
        assert_eq!(
            samples(&text, "spillway_poll_duration_seconds_count{"),
            [r#"spillway_poll_duration_seconds_count{broker="cron"} 2"#]
        );
        assert_eq!(
            samples(&text, "spillway_api_requests_total{"),
            [
                r#"spillway_api_requests_total{route="/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",code="200"} 1"#
            ]
        );
        assert_eq!(
            samples(&text, "spillway_api_request_duration_seconds_count{").len(),
            1
        );

        // A trigger no longer listed loses its series.
        metrics.track_triggers(&[(id("office", 0), cron())]);
        let text = metrics.encode().unwrap();
        assert!(!text.contains(r#"scaled_object="broken",trigger="0",broker="cron",metric"#));
    }

    #[test]
    fn counters_of_a_removed_trigger_or_object_end_with_it() {
        let metrics = Metrics::new(Arc::new(MetricCache::new()));
        let down = ScalerError::Unreachable {
            broker: "cron",
            target: "clock".into(),
            cause: "test".into(),
        };
        metrics.track_triggers(&[(id("a", 0), cron()), (id("b", 0), cron())]);
        for object in ["a", "b"] {
            metrics.observe_poll(&id(object, 0), "cron", Err(&down), Duration::ZERO);
            metrics.observe_scaling("default", object, "ScaledToIdle");
        }
        let errors = |text: &str| samples(text, "spillway_poll_errors_total{").len();
        let actions =
            |text: &str| samples(text, "spillway_controller_scaling_actions_total{").len();
        let text = metrics.encode().unwrap();
        assert_eq!((errors(&text), actions(&text)), (2, 2));

        // Trigger b/0 is gone from the poller's list: its error count ends.
        metrics.track_triggers(&[(id("a", 0), cron())]);
        let text = metrics.encode().unwrap();
        assert_eq!(errors(&text), 1);
        assert!(
            !text.contains(r#"spillway_poll_errors_total{namespace="default",scaled_object="b""#)
        );

        // Object a is deleted: its scaling actions and poll errors end.
        metrics.forget_scaled_object("default", "a");
        let text = metrics.encode().unwrap();
        assert_eq!((errors(&text), actions(&text)), (0, 1));
        assert!(text.contains(r#"spillway_controller_scaling_actions_total{namespace="default",scaled_object="b",action="ScaledToIdle"} 1"#));
    }

    #[test]
    fn reconciles_are_timed_and_errors_counted_by_reason() {
        let metrics = Metrics::new(Arc::new(MetricCache::new()));
        metrics.observe_reconcile(Ok(()), Duration::from_millis(3));
        metrics.observe_reconcile(Err("kube"), Duration::from_millis(20));
        metrics.observe_reconcile(Err("kube"), Duration::from_millis(20));
        let text = metrics.encode().unwrap();
        assert_eq!(
            samples(&text, "spillway_controller_reconcile_errors_total{"),
            vec![r#"spillway_controller_reconcile_errors_total{reason="kube"} 2"#]
        );
        assert!(text.contains("spillway_controller_reconcile_duration_seconds_count 3"));
        assert!(text.contains(r#"spillway_controller_reconciles_total{result="error"} 2"#));
    }

    #[test]
    fn scaled_object_gauges_are_listed_until_forgotten() {
        let metrics = Metrics::new(Arc::new(MetricCache::new()));
        metrics.set_scaled_object_state("shop", "orders", false, false);
        metrics.set_scaled_object_state("shop", "orders", true, false);
        metrics.set_scaled_object_state("shop", "jobs", false, true);
        let mut listed = metrics.scaled_objects();
        listed.sort();
        assert_eq!(
            listed,
            vec![
                ("shop".to_owned(), "jobs".to_owned()),
                ("shop".to_owned(), "orders".to_owned())
            ]
        );
        metrics.forget_scaled_object("shop", "orders");
        assert_eq!(
            metrics.scaled_objects(),
            vec![("shop".to_owned(), "jobs".to_owned())]
        );
        let text = metrics.encode().unwrap();
        assert!(
            samples(&text, "spillway_scaled_object_fallback{").len() == 1,
            "{text}"
        );
        assert!(!text.contains(r#"scaled_object="orders""#), "{text}");
    }

    #[test]
    fn footprint_gauges_follow_the_tracked_triggers_and_the_cache() {
        let cache = Arc::new(MetricCache::new());
        let metrics = Metrics::new(Arc::clone(&cache));
        metrics.track_triggers(&[
            (id("a", 0), cron()),
            (id("a", 1), cron()),
            (id("b", 0), cron()),
        ]);
        cache.track_spec(&id("a", 0), 1);
        cache.record_for_spec(id("a", 0), 1, Err(down()), Duration::ZERO);
        let text = metrics.encode().unwrap();
        for (series, value) in [
            ("spillway_registered_triggers", 3),
            ("spillway_registered_scaled_objects", 2),
            ("spillway_cache_entries", 1),
            ("spillway_cache_tracked_specs", 1),
        ] {
            assert!(
                text.contains(&format!("\n{series} {value}\n")),
                "{series} in {text}"
            );
        }
        // Outside a runtime there are no tasks to count, and no series claiming 0.
        assert!(!text.contains("spillway_runtime_tasks"), "{text}");
    }

    fn kafka_trigger() -> Trigger {
        Trigger::Kafka(crate::scalers::kafka::KafkaTrigger::new(
            "k:9092",
            "billing",
            Some("orders"),
        ))
    }

    fn partition(partition: i32, lag: i64, lag_seconds: Option<f64>) -> BacklogSample {
        BacklogSample::KafkaPartition {
            consumer_group: "billing".into(),
            topic: "orders".into(),
            partition,
            lag,
            lag_seconds,
        }
    }

    #[test]
    fn backlog_series_are_labelled_by_trigger_and_source() {
        let cache = Arc::new(MetricCache::new());
        let metrics = Metrics::new(Arc::clone(&cache));
        let (kafka_id, queues_id, nats_id, broken_id) = (
            id("orders", 0),
            id("jobs", 1),
            id("events", 0),
            id("broken", 0),
        );
        metrics.track_triggers(&[
            (kafka_id.clone(), kafka_trigger()),
            (queues_id.clone(), kafka_trigger()),
            (nats_id.clone(), kafka_trigger()),
            (broken_id.clone(), kafka_trigger()),
        ]);
        let record = |id: &TriggerId, backlog: Vec<BacklogSample>| {
            cache.record(
                id.clone(),
                Ok(Reading::new(1.0, true).with_backlog(backlog)),
                Duration::ZERO,
            )
        };
        record(
            &kafka_id,
            vec![
                partition(0, 40, Some(2.5)),
                partition(1, 0, Some(0.0)),
                partition(2, 7, None),
            ],
        );
        record(
            &queues_id,
            vec![
                BacklogSample::RabbitMqQueue {
                    vhost: "/".into(),
                    queue: "jobs".into(),
                    messages: Some(12.0),
                    messages_ready: 10.0,
                    messages_unacknowledged: Some(2.0),
                    publish_rate: Some(1.5),
                    deliver_rate: Some(0.0),
                },
                // Over AMQP only the ready count is known.
                BacklogSample::RabbitMqQueue {
                    vhost: "/".into(),
                    queue: "amqp".into(),
                    messages: None,
                    messages_ready: 3.0,
                    messages_unacknowledged: None,
                    publish_rate: None,
                    deliver_rate: None,
                },
            ],
        );
        record(
            &nats_id,
            vec![BacklogSample::NatsConsumer {
                stream: "events".into(),
                consumer: "worker".into(),
                pending: 5,
                ack_pending: 2,
            }],
        );
        // A good poll then a failed one: no backlog, not the stale one, not zero.
        record(&broken_id, vec![partition(0, 99, Some(1.0))]);
        cache.record(broken_id.clone(), Err(down()), Duration::ZERO);

        let text = metrics.encode().unwrap();
        println!("{text}");
        let owner = |so: &str, trigger: usize| {
            format!(r#"namespace="default",scaled_object="{so}",trigger="{trigger}""#)
        };
        let kafka = |p: i32| {
            format!(
                r#"{{{},consumer_group="billing",topic="orders",partition="{p}"}}"#,
                owner("orders", 0)
            )
        };
        assert_eq!(
            samples(&text, "spillway_kafka_consumer_lag{"),
            [0, 1, 2].map(|p| format!(
                "spillway_kafka_consumer_lag{} {}",
                kafka(p),
                [40, 0, 7][p as usize]
            ))
        );
        assert_eq!(
            samples(&text, "spillway_kafka_consumer_lag_seconds{"),
            [
                format!("spillway_kafka_consumer_lag_seconds{} 2.5", kafka(0)),
                format!("spillway_kafka_consumer_lag_seconds{} 0.0", kafka(1)),
            ],
            "partition 2's age is unknown"
        );
        assert!(text.contains("# TYPE spillway_kafka_consumer_lag gauge"));
        assert!(text.contains("# UNIT spillway_kafka_consumer_lag_seconds seconds"));
        let queue = |q: &str| format!(r#"{{{},vhost="/",queue="{q}"}}"#, owner("jobs", 1));
        for (family, want) in [
            ("messages", vec![format!("{} 12.0", queue("jobs"))]),
            (
                "messages_ready",
                vec![
                    format!("{} 10.0", queue("jobs")),
                    format!("{} 3.0", queue("amqp")),
                ],
            ),
            ("messages_unacked", vec![format!("{} 2.0", queue("jobs"))]),
            ("publish_rate", vec![format!("{} 1.5", queue("jobs"))]),
            ("deliver_rate", vec![format!("{} 0.0", queue("jobs"))]),
        ] {
            let name = format!("spillway_rabbitmq_queue_{family}");
            let want: Vec<String> = want.into_iter().map(|w| format!("{name}{w}")).collect();
            assert_eq!(samples(&text, &format!("{name}{{")), want);
        }
        let consumer = format!(
            r#"{{{},stream="events",consumer="worker"}}"#,
            owner("events", 0)
        );
        assert_eq!(
            samples(&text, "spillway_nats_jetstream_consumer_pending{"),
            [format!(
                "spillway_nats_jetstream_consumer_pending{consumer} 5"
            )]
        );
        assert_eq!(
            samples(&text, "spillway_nats_jetstream_consumer_ack_pending{"),
            [format!(
                "spillway_nats_jetstream_consumer_ack_pending{consumer} 2"
            )]
        );
        assert_eq!(
            samples(&text, "spillway_backlog_series_truncated{"),
            [
                format!(
                    "spillway_backlog_series_truncated{{{}}} 0",
                    owner("orders", 0)
                ),
                format!(
                    "spillway_backlog_series_truncated{{{}}} 0",
                    owner("jobs", 1)
                ),
                format!(
                    "spillway_backlog_series_truncated{{{}}} 0",
                    owner("events", 0)
                ),
            ]
        );
        assert!(!text.contains(r#"scaled_object="broken",trigger="0",consumer_group"#));

        // Past the bound: the most lagging partitions, and the count of the others.
        record(
            &kafka_id,
            (0..MAX_BACKLOG_SAMPLES as i32 + 3)
                .map(|p| partition(p, i64::from(p), None))
                .collect(),
        );
        // A trigger no longer listed loses its backlog series.
        metrics.track_triggers(&[(kafka_id.clone(), kafka_trigger())]);
        let text = metrics.encode().unwrap();
        assert_eq!(
            samples(&text, "spillway_kafka_consumer_lag{").len(),
            MAX_BACKLOG_SAMPLES
        );
        assert!(
            !text.contains(r#"partition="2"}"#),
            "the smallest lags left out"
        );
        assert_eq!(
            samples(&text, "spillway_backlog_series_truncated{"),
            [format!(
                "spillway_backlog_series_truncated{{{}}} 3",
                owner("orders", 0)
            )]
        );
        assert!(!text.contains("spillway_rabbitmq_queue"));
        assert!(!text.contains("spillway_nats_jetstream"));
    }

    #[test]
    fn backlog_label_values_are_escaped() {
        let cache = Arc::new(MetricCache::new());
        let metrics = Metrics::new(Arc::clone(&cache));
        metrics.track_triggers(&[(id("jobs", 0), kafka_trigger())]);
        let reading = Reading::new(1.0, true).with_backlog(vec![BacklogSample::RabbitMqQueue {
            vhost: "a\\b".into(),
            queue: "say \"hi\"\n".into(),
            messages: None,
            messages_ready: 1.0,
            messages_unacknowledged: None,
            publish_rate: None,
            deliver_rate: None,
        }]);
        cache.record(id("jobs", 0), Ok(reading), Duration::ZERO);
        let text = metrics.encode().unwrap();
        assert_eq!(
            samples(&text, "spillway_rabbitmq_queue_messages_ready{"),
            [
                r#"spillway_rabbitmq_queue_messages_ready{namespace="default",scaled_object="jobs",trigger="0",vhost="a\\b",queue="say \"hi\"\n"} 1.0"#
            ]
        );
    }

    #[tokio::test]
    async fn the_metrics_server_answers_openmetrics_text() {
        use tower::ServiceExt;
        let metrics = Arc::new(Metrics::new(Arc::new(MetricCache::new())));
        let request = |uri: &str| {
            axum::http::Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let response = metrics_router(Arc::clone(&metrics), None)
            .oneshot(request("/metrics"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], OPENMETRICS);
        let missing = metrics_router(metrics, None)
            .oneshot(request("/other"))
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}
