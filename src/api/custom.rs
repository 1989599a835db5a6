//! `custom.metrics.k8s.io/v1beta2` Object metrics: an HPA whose metric is `type: Object`
//! asks for a metric of a workload (`GET .../namespaces/{ns}/{resource}/{name}/{metric}`,
//! e.g. `deployments.apps/orders/s0-kafka-orders`), and the triggers of the scaled object that
//! scales that workload answer, from the same cache and by the same rules as external metrics:
//! a trigger without a current reading is a 503, never a zero.
//!
//! Only named objects are served: the `pods/*` form (Pods metrics) and cluster-scoped objects
//! describe nothing a scaled object scales, so they are 404s.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use serde::Serialize;

use super::AppState;
use super::discovery::{self, ApiGroup, ApiResourceList, CUSTOM};
use super::selector::{Requirement, Selector};
use super::status::Status;
use super::values::{self, Miss};
use crate::names;
use crate::registry::{MetricSource, ScaleTarget};

/// The API group and version this module serves.
pub const GROUP_VERSION: &str = "custom.metrics.k8s.io/v1beta2";

/// `MetricValueList`; fields carry the Go type's JSON names.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueList {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub items: Vec<MetricValue>,
}

/// `MetricValue`: one trigger's value at one poll, for the object it describes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    pub described_object: ObjectReference,
    pub metric: MetricIdentifier,
    /// RFC 3339, UTC, whole seconds: when the broker was read.
    pub timestamp: String,
    /// A canonical quantity string.
    pub value: String,
}

/// `ObjectReference`, the fields a described object carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub api_version: String,
}

/// `MetricIdentifier`: the metric name and the metric label selector asked for; the Go field
/// has no omitempty, so no selector is `null`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricIdentifier {
    pub name: String,
    pub selector: Option<LabelSelector>,
}

/// `metav1.LabelSelector`, as `metav1.ParseToLabelSelector` builds it from a selector string.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// `metav1.LabelSelectorRequirement`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The structured form of `selector`, `None` when it selects everything. `a=b` becomes a match
/// label, `a!=b` a `NotIn` of one value (as current apimachinery maps it).
pub fn label_selector(selector: &Selector) -> Option<LabelSelector> {
    if selector.requirements.is_empty() {
        return None;
    }
    let mut structured = LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: Vec::new(),
    };
    let expression = |key: &str, operator, values: &[String]| LabelSelectorRequirement {
        key: key.to_owned(),
        operator,
        values: values.to_vec(),
    };
    for requirement in &selector.requirements {
        let converted = match requirement {
            Requirement::Equals(key, value) => {
                structured.match_labels.insert(key.clone(), value.clone());
                continue;
            }
            Requirement::NotEquals(key, value) => {
                expression(key, "NotIn", std::slice::from_ref(value))
            }
            Requirement::In(key, set) => expression(key, "In", set),
            Requirement::NotIn(key, set) => expression(key, "NotIn", set),
            Requirement::Exists(key) => expression(key, "Exists", &[]),
            Requirement::DoesNotExist(key) => expression(key, "DoesNotExist", &[]),
        };
        structured.match_expressions.push(converted);
    }
    Some(structured)
}

/// `GET /apis/custom.metrics.k8s.io`.
pub async fn api_group() -> Json<ApiGroup> {
    Json(discovery::group(CUSTOM, true))
}

/// `GET /apis/custom.metrics.k8s.io/v1beta2`: one resource per workload kind and metric,
/// named `<resource>/<metric>` (`deployments.apps/s0-kafka-orders`).
pub async fn api_resources(State(state): State<AppState>) -> Json<ApiResourceList> {
    let mut names = BTreeSet::new();
    let metrics = state.metrics();
    for target in state.targets().iter() {
        let resource = target.target.group_resource();
        let sources = sources_of(&metrics, &target.namespace, &[target]);
        for metric in discovery::metric_names(sources, &state.cache) {
            names.insert(format!("{resource}/{metric}"));
        }
    }
    Json(discovery::resource_list(CUSTOM, "MetricValueList", names))
}

/// `GET /apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/{resource}/{name}/{metric}`.
pub async fn get_metric(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<MetricValueList>, Status> {
    let Path((namespace, resource, name, metric)) = path.map_err(values::bad_path)?;
    let answer = object_metric(
        &state,
        &namespace,
        &resource,
        &name,
        &metric,
        query.as_deref(),
    )
    .await;
    values::log_answer(
        format_args!("{GROUP_VERSION}/namespaces/{namespace}/{resource}/{name}/{metric}"),
        answer.as_ref().map(|list| list.items.len()),
    );
    answer.map(Json)
}

/// The values of `metric` of the object `resource`/`name` in `namespace` whose labels the
/// `metricLabelSelector` of `query` matches: 400 for malformed input, 404 when no scaled object
/// scales that object or none of its triggers serves the metric, 503 when a selected trigger
/// has no current reading.
pub async fn object_metric(
    state: &AppState,
    namespace: &str,
    resource: &str,
    name: &str,
    metric: &str,
    query: Option<&str>,
) -> Result<MetricValueList, Status> {
    values::check_namespace(namespace)?;
    if name == "*" {
        return Err(Status::not_found(format!(
            "spillway serves metrics of named objects only, not of all {resource} (Pods metrics)"
        )));
    }
    names::check_path_segment(resource)
        .map_err(|m| Status::bad_request(format!("invalid resource in the path: {m}")))?;
    names::check_dns1123_subdomain(name)
        .map_err(|m| Status::bad_request(format!("invalid object name in the path: {m}")))?;
    values::check_metric_name(metric)?;
    let selector = values::selector_param(query, "metricLabelSelector")?;
    let not_found = || {
        Status::not_found(format!(
            "the server could not find the metric {metric} for {resource} {name}"
        ))
    };
    let all_targets = state.targets();
    let targets: Vec<&ScaleTarget> = all_targets
        .iter()
        .filter(|t| {
            t.namespace == namespace
                && t.target.name == name
                && t.target.group_resource() == resource
        })
        .collect();
    if targets.is_empty() {
        return Err(not_found());
    }
    let metrics = state.metrics();
    let sources = sources_of(&metrics, namespace, &targets);
    let found = values::lookup(state, &sources, metric, &selector)
        .await
        .map_err(|miss| match miss {
            Miss::Unknown => not_found(),
            Miss::NoneSelected => Status::not_found(format!(
                "no value of the metric {metric} for {resource} {name} matches the metric label selector"
            )),
            Miss::Failed(status) => status,
        })?;
    let identifier = MetricIdentifier {
        name: metric.to_owned(),
        selector: label_selector(&selector),
    };
    let items = found
        .into_iter()
        .filter_map(|value| {
            let target = targets
                .iter()
                .find(|t| t.scaled_object == value.id.scaled_object)?;
            Some(MetricValue {
                described_object: ObjectReference {
                    kind: target.target.kind.clone(),
                    namespace: namespace.to_owned(),
                    name: target.target.name.clone(),
                    api_version: target.target.api_version.clone(),
                },
                metric: identifier.clone(),
                timestamp: value.timestamp,
                value: value.value,
            })
        })
        .collect();
    Ok(MetricValueList {
        kind: "MetricValueList",
        api_version: GROUP_VERSION,
        metadata: serde_json::Map::new(),
        items,
    })
}

/// The served metrics of the scaled objects behind `targets` in `namespace`.
fn sources_of<'a>(
    metrics: &'a [MetricSource],
    namespace: &str,
    targets: &[&ScaleTarget],
) -> Vec<&'a MetricSource> {
    metrics
        .iter()
        .filter(|s| {
            s.id.namespace == namespace
                && targets
                    .iter()
                    .any(|t| t.scaled_object == s.id.scaled_object)
        })
        .collect()
}
