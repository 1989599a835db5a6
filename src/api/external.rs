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
use crate::composite::COMPOSITE_METRIC;
use crate::registry::{CompositeSource, SCALED_OBJECT_LABEL};

/// The API group and version this module serves.
pub const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";

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
    answer(&state, &namespace, &metric, query.as_deref()).await
}

/// [`metric_values`] as the answer to a request, logged: what both the Router's route and
/// the value route ([`super::value_route`]) send.
pub async fn answer(
    state: &AppState,
    namespace: &str,
    metric: &str,
    query: Option<&str>,
) -> Result<Json<ExternalMetricValueList>, Status> {
    let answer = metric_values(state, namespace, metric, query).await;
    values::log_answer(
        format_args!("{GROUP_VERSION}/namespaces/{namespace}/{metric}"),
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
    let found = if metric == COMPOSITE_METRIC {
        let served = state.composites();
        let composites: Vec<&CompositeSource> =
            served.iter().filter(|c| c.namespace == namespace).collect();
        values::lookup_composite(state, &composites, &selector).await
    } else {
        let served = state.registry.served();
        let object = selector.pinned(SCALED_OBJECT_LABEL);
        let sources = served.metric_sources(namespace, metric, object);
        values::lookup(state, &sources, metric, &selector).await
    };
    let found = found.map_err(|miss| match miss {
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
