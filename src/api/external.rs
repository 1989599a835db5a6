//! `external.metrics.k8s.io/v1beta1` values: `GET .../namespaces/{ns}/{metric}?labelSelector=`
//! answered from the metric cache, so a slow broker never slows the HPA (a trigger not polled
//! since start waits, bounded, for its first poll: see [`super::values`]).
//!
//! A metric whose trigger has no current reading (its first poll not done in time, or its
//! latest poll failed) is a 503, never a zero: the HPA then holds its replicas instead of
//! scaling a backlog away.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use serde::Serialize;

use super::AppState;
use super::status::Status;
use super::values::{self, Miss};
use crate::cache::TriggerId;
use crate::scalers::{Trigger, TriggerParams};

/// The API group and version this module serves.
pub const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";

/// The metric label that ties a value to its scaled object; the HPA of that object selects
/// its own trigger with `scaledobject.spillway.dev/name=<name>`.
pub const SCALED_OBJECT_LABEL: &str = "scaledobject.spillway.dev/name";

/// One trigger's main metric, as served: `s<index>-<metric_name>` in the scaled object's namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSource {
    /// The trigger whose cache entry holds the value.
    pub id: TriggerId,
    /// The served name of the main metric; extras are `<metric>-<suffix>`.
    pub metric: String,
    /// What the main metric serves once the trigger has failed often enough (the scaled
    /// object's `fallback`); without it a failing trigger is a 503.
    pub fallback: Option<crate::registry::FallbackValue>,
}

/// The served metrics of `triggers`, in order (the names `spillway watch` shows).
pub fn catalog(triggers: &[(TriggerId, Trigger)]) -> Vec<MetricSource> {
    triggers
        .iter()
        .map(|(id, trigger)| MetricSource {
            id: id.clone(),
            metric: served_metric_name(id, trigger),
            fallback: None,
        })
        .collect()
}

/// The name a trigger's main metric is served under: `s<index>-<metric_name>`, so two triggers
/// of one scaled object on the same queue stay apart.
pub fn served_metric_name(id: &TriggerId, trigger: &Trigger) -> String {
    format!("s{}-{}", id.index, trigger.metric_name())
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

/// `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}`.
pub async fn get_metric(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<ExternalMetricValueList>, Status> {
    let Path((namespace, metric)) = path.map_err(values::bad_path)?;
    let answer = metric_values(&state, &namespace, &metric, query.as_deref()).await;
    values::log_answer(
        &format!("{GROUP_VERSION}/namespaces/{namespace}/{metric}"),
        answer.as_ref().map(|list| list.items.len()),
    );
    answer.map(Json)
}

/// The values of `metric` in `namespace` whose labels the `labelSelector` of `query` matches.
///
/// 400 for a malformed namespace, metric name or selector; 404 when no trigger serves that name
/// there, or the selector leaves none; 503 when any selected trigger has no current reading.
pub async fn metric_values(
    state: &AppState,
    namespace: &str,
    metric: &str,
    query: Option<&str>,
) -> Result<ExternalMetricValueList, Status> {
    values::check_namespace(namespace)?;
    values::check_metric_name(metric)?;
    let selector = values::selector_param(query, "labelSelector")?;
    let metrics = state.metrics();
    let sources: Vec<&MetricSource> = metrics
        .iter()
        .filter(|s| s.id.namespace == namespace)
        .collect();
    let found = values::lookup(state, &sources, metric, &selector)
        .await
        .map_err(|miss| match miss {
            Miss::Unknown => Status::not_found(format!(
                "the server could not find the metric {metric} for namespaces {namespace}"
            )),
            Miss::NoneSelected => Status::not_found(format!(
                "no value of the metric {metric} in namespace {namespace} matches the label selector"
            )),
            Miss::Failed(status) => status,
        })?;
    Ok(ExternalMetricValueList {
        kind: "ExternalMetricValueList",
        api_version: GROUP_VERSION,
        metadata: serde_json::Map::new(),
        items: found
            .into_iter()
            .map(|value| ExternalMetricValue {
                metric_name: metric.to_owned(),
                metric_labels: value.labels,
                timestamp: value.timestamp,
                value: value.value,
            })
            .collect(),
    })
}
