//! `external.metrics.k8s.io/v1beta1` values: `GET .../namespaces/{ns}/{metric}?labelSelector=`
//! answered from the metric cache alone, so a slow broker never slows the HPA.
//!
//! A metric whose trigger has no current reading (never polled, or its latest poll failed) is a
//! 503, never a zero: the HPA then holds its replicas instead of scaling a backlog away.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde::Serialize;

use super::AppState;
use super::quantity::format_quantity;
use super::selector::Selector;
use super::status::Status;
use crate::cache::{MetricCache, TriggerId};
use crate::scalers::{Trigger, TriggerParams};

/// The API group and version this module serves.
pub const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";

/// The metric label that ties a value to its scaled object; the HPA of that object selects
/// its own trigger with `scaledobject.spillway.dev/name=<name>`.
pub const SCALED_OBJECT_LABEL: &str = "scaledobject.spillway.dev/name";

/// One trigger's main metric, as served: `s<index>-<metric_name>` in the scaled object's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSource {
    /// The trigger whose cache entry holds the value.
    pub id: TriggerId,
    /// The served name of the main metric; extras are `<metric>-<suffix>`.
    pub metric: String,
}

/// The served metrics of `triggers`, in order (the names `spillway watch` shows).
pub fn catalog(triggers: &[(TriggerId, Trigger)]) -> Vec<MetricSource> {
    triggers
        .iter()
        .map(|(id, trigger)| MetricSource {
            id: id.clone(),
            metric: format!("s{}-{}", id.index, trigger.metric_name()),
        })
        .collect()
}

/// `ExternalMetricValueList`; fields carry the Go type's JSON names.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValueList {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub items: Vec<ExternalMetricValue>,
}

/// `ExternalMetricValue`: one trigger's value at one poll.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValue {
    pub metric_name: String,
    pub metric_labels: BTreeMap<String, String>,
    /// RFC 3339, UTC, whole seconds: when the broker was read.
    pub timestamp: String,
    /// A canonical quantity string.
    pub value: String,
}

/// Which value of a trigger a metric name asks for.
enum Part<'a> {
    Main,
    Extra(&'a str),
}

/// `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}`.
pub async fn get_metric(
    State(state): State<AppState>,
    Path((namespace, metric)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<ExternalMetricValueList>, Status> {
    let selector = label_selector(query.as_deref())?;
    let answer = metric_values(&state.metrics, &state.cache, &namespace, &metric, &selector);
    match &answer {
        Ok(list) => tracing::debug!(%namespace, %metric, items = list.items.len(), "served metric"),
        Err(status) => tracing::info!(
            %namespace, %metric, code = status.code.as_u16(), reason = status.reason,
            message = %status.message, "metric not served"
        ),
    }
    answer.map(Json)
}

/// The `labelSelector` query parameter, parsed; absent means everything.
fn label_selector(query: Option<&str>) -> Result<Selector, Status> {
    let text = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    Selector::parse(&text).map_err(|err| Status::bad_request(err.to_string()))
}

/// The values of `metric` in `namespace` whose labels `selector` matches.
///
/// 404 when no trigger serves that name there (or the selector leaves none: an empty list is an
/// error to the HPA anyway, and this one says why); 503 when any selected trigger has no
/// current reading, since a partial sum would under-scale.
pub fn metric_values(
    metrics: &[MetricSource],
    cache: &MetricCache,
    namespace: &str,
    metric: &str,
    selector: &Selector,
) -> Result<ExternalMetricValueList, Status> {
    let mut known = false;
    let mut items = Vec::new();
    let in_namespace = || metrics.iter().filter(|s| s.id.namespace == namespace);
    // A main metric wins over an extra spelled the same (queue `jobs-eu` vs `jobs` + `-eu`).
    let main = in_namespace().any(|s| s.metric == metric);
    for source in in_namespace() {
        let state = cache.get(&source.id);
        let part = if source.metric == metric {
            Part::Main
        } else if main {
            continue;
        } else if let Some(suffix) = metric
            .strip_prefix(source.metric.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
        {
            // Extras are known from readings; before the first one, any suffix of a
            // not-yet-polled trigger may be real, so it waits like the main metric.
            let seen = state
                .as_ref()
                .and_then(|s| s.last_reading.as_ref())
                .map(|r| r.extra.iter().any(|(n, _)| *n == suffix));
            match seen {
                Some(true) | None => Part::Extra(suffix),
                Some(false) => continue,
            }
        } else {
            continue;
        };
        known = true;
        let labels = metric_labels(&source.id);
        if !selector.matches(&labels) {
            continue;
        }
        let Some(state) = state else {
            return Err(Status::service_unavailable(format!(
                "metric {metric} of {}: no reading yet (the first poll has not finished)",
                source.id
            )));
        };
        let reading = match (state.current(), &state.error) {
            (Some(reading), _) => reading,
            (None, Some(err)) => {
                return Err(Status::service_unavailable(format!(
                    "metric {metric} of {}: the latest poll failed ({} in a row): {err}",
                    source.id, state.consecutive_failures
                )));
            }
            (None, None) => {
                return Err(Status::service_unavailable(format!(
                    "metric {metric} of {}: no reading yet",
                    source.id
                )));
            }
        };
        let value = match part {
            Part::Main => reading.value,
            Part::Extra(suffix) => match reading.extra.iter().find(|(n, _)| *n == suffix) {
                Some((_, v)) => *v,
                None => {
                    return Err(Status::service_unavailable(format!(
                        "metric {metric} of {}: the latest reading has no {suffix}",
                        source.id
                    )));
                }
            },
        };
        let quantity = format_quantity(value)
            .map_err(|err| Status::internal(format!("metric {metric} of {}: {err}", source.id)))?;
        if quantity.capped {
            tracing::warn!(trigger = %source.id, %metric, value, served = %quantity.text, "value capped to what the HPA can read");
        }
        items.push(ExternalMetricValue {
            metric_name: metric.to_owned(),
            metric_labels: labels,
            timestamp: chrono::DateTime::<chrono::Utc>::from(reading.timestamp)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            value: quantity.text,
        });
    }
    if !known {
        return Err(Status::not_found(format!(
            "the server could not find the metric {metric} for namespaces {namespace}"
        )));
    }
    if items.is_empty() {
        return Err(Status::not_found(format!(
            "no value of the metric {metric} in namespace {namespace} matches the label selector"
        )));
    }
    Ok(ExternalMetricValueList {
        kind: "ExternalMetricValueList",
        api_version: GROUP_VERSION,
        metadata: serde_json::Map::new(),
        items,
    })
}

/// The labels every value of `id` carries.
fn metric_labels(id: &TriggerId) -> BTreeMap<String, String> {
    BTreeMap::from([(SCALED_OBJECT_LABEL.to_owned(), id.scaled_object.clone())])
}
