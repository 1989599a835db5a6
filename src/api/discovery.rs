//! Discovery documents: what the aggregator reads to mark the APIService available and what
//! `kubectl get --raw /apis/external.metrics.k8s.io/v1beta1` lists.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::AppState;
use super::external::{GROUP_VERSION, MetricSource};
use crate::cache::MetricCache;

const GROUP: &str = "external.metrics.k8s.io";
const VERSION: &str = "v1beta1";

/// `GroupVersionForDiscovery`. All types here carry the Go types' JSON field names.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupVersion {
    pub group_version: &'static str,
    pub version: &'static str,
}

/// `APIGroup`; `kind` and `apiVersion` are left out inside a list, as the apiserver does.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<&'static str>,
    pub name: &'static str,
    pub versions: Vec<GroupVersion>,
    pub preferred_version: GroupVersion,
}

/// `APIGroupList`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiGroupList {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub groups: Vec<ApiGroup>,
}

/// `APIResource`: one per served metric name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiResource {
    pub name: String,
    /// Required by the Go type (no omitempty), so sent empty.
    pub singular_name: &'static str,
    pub namespaced: bool,
    pub kind: &'static str,
    pub verbs: Vec<&'static str>,
}

/// `APIResourceList`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiResourceList {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub group_version: &'static str,
    pub resources: Vec<ApiResource>,
}

fn group(typed: bool) -> ApiGroup {
    let version = || GroupVersion {
        group_version: GROUP_VERSION,
        version: VERSION,
    };
    ApiGroup {
        kind: typed.then_some("APIGroup"),
        api_version: typed.then_some("v1"),
        name: GROUP,
        versions: vec![version()],
        preferred_version: version(),
    }
}

/// `GET /apis`.
pub async fn api_groups() -> Json<ApiGroupList> {
    Json(ApiGroupList {
        kind: "APIGroupList",
        api_version: "v1",
        groups: vec![group(false)],
    })
}

/// `GET /apis/external.metrics.k8s.io`.
pub async fn api_group() -> Json<ApiGroup> {
    Json(group(true))
}

/// `GET /apis/external.metrics.k8s.io/v1beta1`.
pub async fn api_resources(State(state): State<AppState>) -> Json<ApiResourceList> {
    Json(resource_list(&state.metrics, &state.cache))
}

/// Every served metric name, sorted and deduplicated (one name may serve several scaled
/// objects): the main metrics, and the extras readings have shown so far.
pub fn resource_list(metrics: &[MetricSource], cache: &MetricCache) -> ApiResourceList {
    let mut names = BTreeSet::new();
    for source in metrics {
        names.insert(source.metric.clone());
        if let Some(reading) = cache.get(&source.id).and_then(|s| s.last_reading) {
            for (suffix, _) in &reading.extra {
                names.insert(format!("{}-{suffix}", source.metric));
            }
        }
    }
    ApiResourceList {
        kind: "APIResourceList",
        api_version: "v1",
        group_version: GROUP_VERSION,
        resources: names
            .into_iter()
            .map(|name| ApiResource {
                name,
                singular_name: "",
                namespaced: true,
                kind: "ExternalMetricValueList",
                verbs: vec!["get"],
            })
            .collect(),
    }
}
