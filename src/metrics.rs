//! spillway's own Prometheus metrics: every `spillway_*` series in one place, and the
//! plain-HTTP server that exposes them on `server.metricsListen` (`GET /metrics`, OpenMetrics
//! text format).
//!
//! Events are counted where they happen: poll durations and errors where the poller records
//! into the cache, API requests in a router middleware. Per-trigger state (value, active,
//! failures in a row, cache age) is read from the cache at scrape time instead, so it is
//! exactly what the API serves and a removed trigger's series disappear with its cache entry.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::api::external::served_metric_name;
use crate::cache::{MetricCache, TriggerId};
use crate::scalers::{ScalerError, Trigger};

/// The content type of the OpenMetrics text format, which `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `route` label of requests no route matched: one value, whatever the path.
const UNMATCHED_ROUTE: &str = "unmatched";

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

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

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
    poll_errors: Family<PollErrorLabels, Counter>,
    api_request_duration: HistogramFamily<RequestLabels>,
    api_requests: Family<RequestLabels, Counter>,
    triggers: Arc<RwLock<Vec<TrackedTrigger>>>,
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
        let poll_errors = Family::<PollErrorLabels, Counter>::default();
        registry.register(
            "poll_errors",
            "Polls of a trigger that failed, by reason",
            poll_errors.clone(),
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
        let triggers = Arc::new(RwLock::new(Vec::new()));
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
        }
    }

    /// Sets the triggers whose state is exported (the poller's current list).
    pub fn track_triggers(&self, triggers: &[(TriggerId, Trigger)]) {
        let tracked = triggers
            .iter()
            .map(|(id, trigger)| TrackedTrigger {
                id: id.clone(),
                broker: trigger.kind(),
                metric: served_metric_name(id, trigger),
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
            self.poll_errors
                .get_or_create(&PollErrorLabels {
                    namespace: id.namespace.clone(),
                    scaled_object: id.scaled_object.clone(),
                    trigger: id.index.to_string(),
                    broker,
                    reason: err.reason(),
                })
                .inc();
        }
    }

    /// Counts one answered API request.
    pub fn observe_request(&self, route: &str, code: StatusCode, took: Duration) {
        let labels = RequestLabels {
            route: route.to_owned(),
            code: code.as_u16(),
        };
        self.api_request_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.api_requests.get_or_create(&labels).inc();
    }

    /// Every series in the OpenMetrics text format, ending in `# EOF`.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Reads the per-trigger gauges from the cache at each scrape.
#[derive(Debug)]
struct TriggerCollector {
    cache: Arc<MetricCache>,
    triggers: Arc<RwLock<Vec<TrackedTrigger>>>,
}

impl TriggerCollector {
    /// One gauge family: a descriptor, then one sample per `(labels, value)`.
    fn encode_gauges<V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        samples: &[(TriggerLabels, V)],
    ) -> Result<(), std::fmt::Error> {
        if samples.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            name,
            help,
            unit,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, value) in samples {
            ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

impl Collector for TriggerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tracked = self.triggers.read().expect("metrics lock").clone();
        let mut values = Vec::new();
        let mut active = Vec::new();
        let mut failures = Vec::new();
        let mut ages = Vec::new();
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
            // A failed latest poll exports no value: an error never turns into a number.
            if let Some(reading) = state.current() {
                values.push((labels(trigger.metric.clone()), reading.value));
                for (suffix, value) in &reading.extra {
                    values.push((labels(format!("{}-{suffix}", trigger.metric)), *value));
                }
                active.push((labels(trigger.metric.clone()), i64::from(reading.active)));
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

/// `GET /metrics`.
async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

/// The `/metrics` server's routes.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") })
        .with_state(metrics)
}

/// Serves `GET /metrics` over plain HTTP on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(err) = axum::serve(listener, metrics_router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %err, "the /metrics server stopped");
    }
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
        let response = metrics_router(Arc::clone(&metrics))
            .oneshot(request("/metrics"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], OPENMETRICS);
        let missing = metrics_router(metrics)
            .oneshot(request("/other"))
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}
