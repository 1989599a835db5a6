//! Discovery documents: what the aggregator reads to mark the APIService available and what
//! `kubectl get --raw /apis/external.metrics.k8s.io/v1beta1` lists. The types serve both
//! groups; the custom metrics group's documents are built in [`super::custom`].

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::AppState;
use crate::cache::MetricCache;
use crate::composite::COMPOSITE_METRIC;
use crate::registry::MetricSource;

/// An API group spillway serves, in its one version.
#[derive(Debug, Clone, Copy)]
pub struct ServedGroup {
    pub name: &'static str,
    pub version: &'static str,
    /// `<name>/<version>`.
    pub group_version: &'static str,
}

/// `external.metrics.k8s.io/v1beta1`, for External metrics.
pub const EXTERNAL: ServedGroup = ServedGroup {
    name: "external.metrics.k8s.io",
    version: "v1beta1",
    group_version: super::external::GROUP_VERSION,
};

/// `custom.metrics.k8s.io/v1beta2`, for Object metrics; the HPA's custom metrics client picks
/// the preferred version from discovery and works in v1beta2.
pub const CUSTOM: ServedGroup = ServedGroup {
    name: "custom.metrics.k8s.io",
    version: "v1beta2",
    group_version: super::custom::GROUP_VERSION,
};

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

/// The `APIGroup` document of `served`; `typed` for the group's own document, untyped inside
/// the `/apis` list.
pub fn group(served: ServedGroup, typed: bool) -> ApiGroup {
    let version = || GroupVersion {
        group_version: served.group_version,
        version: served.version,
    };
    ApiGroup {
        kind: typed.then_some("APIGroup"),
        api_version: typed.then_some("v1"),
        name: served.name,
        versions: vec![version()],
        preferred_version: version(),
    }
}

/// An `APIResourceList` of `served` with one namespaced, get-only resource per name.
pub fn resource_list(
    served: ServedGroup,
    kind: &'static str,
    names: impl IntoIterator<Item = String>,
) -> ApiResourceList {
    ApiResourceList {
        kind: "APIResourceList",
        api_version: "v1",
        group_version: served.group_version,
        resources: names
            .into_iter()
            .map(|name| ApiResource {
                name,
                singular_name: "",
                namespaced: true,
                kind,
                verbs: vec!["get"],
            })
            .collect(),
    }
}

/// `GET /apis`.
pub async fn api_groups() -> Json<ApiGroupList> {
    Json(ApiGroupList {
        kind: "APIGroupList",
        api_version: "v1",
        groups: vec![group(EXTERNAL, false), group(CUSTOM, false)],
    })
}

/// `GET /apis/external.metrics.k8s.io`.
pub async fn api_group() -> Json<ApiGroup> {
    Json(group(EXTERNAL, true))
}

/// `GET /apis/external.metrics.k8s.io/v1beta1`.
pub async fn api_resources(State(state): State<AppState>) -> Json<ApiResourceList> {
    let mut names = metric_names(state.metrics().iter(), &state.cache);
    if !state.composites().is_empty() {
        names.insert(COMPOSITE_METRIC.to_owned());
    }
    Json(resource_list(EXTERNAL, "ExternalMetricValueList", names))
}

/// The served names of `sources`, sorted and deduplicated (one name may serve several scaled
/// objects): the main metrics, and the extras readings have shown so far.
pub fn metric_names<'a>(
    sources: impl IntoIterator<Item = &'a MetricSource>,
    cache: &MetricCache,
) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for source in sources {
        names.insert(source.metric.clone());
        if let Some(reading) = cache
            .get_for_spec(&source.id, source.spec_version)
            .and_then(|s| s.last_reading)
        {
            for (suffix, _) in &reading.extra {
                names.insert(format!("{}-{suffix}", source.metric));
            }
        }
    }
    names
}
