//! OpenAPI documents of the served groups. kube-apiserver's aggregator downloads them from
//! every APIService backend and merges them into the cluster's own (what `kubectl explain` and
//! schema-validating clients read): Swagger 2.0 at `/openapi/v2`, OpenAPI 3.0 at `/openapi/v3`
//! (a discovery document) and `/openapi/v3/apis/<group>/<version>`.
//!
//! Static JSON, built once. Types carry the names kube-openapi gives the Go types
//! (`io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValueList`) and the
//! `x-kubernetes-group-version-kind` extensions clients find kinds by, so the merge dedupes the
//! shared apimachinery types instead of renaming them. Every answer has an ETag; the v3
//! discovery document points at each group version with `?hash=<etag>` and a stale hash is
//! redirected, as kube-openapi's own handler does.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Map, Value, json};

use super::discovery::{CUSTOM, EXTERNAL, ServedGroup};
use super::status::Status;
use super::values;

/// What the documents call the server.
const TITLE: &str = "spillway";

const EXTERNAL_LIST: &str =
    "io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValueList";
const EXTERNAL_VALUE: &str = "io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValue";
const CUSTOM_LIST: &str = "io.k8s.metrics.pkg.apis.custom_metrics.v1beta2.MetricValueList";
const CUSTOM_VALUE: &str = "io.k8s.metrics.pkg.apis.custom_metrics.v1beta2.MetricValue";
const METRIC_IDENTIFIER: &str = "io.k8s.metrics.pkg.apis.custom_metrics.v1beta2.MetricIdentifier";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const LABEL_SELECTOR: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector";
const LABEL_SELECTOR_REQUIREMENT: &str =
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelectorRequirement";
const OBJECT_REFERENCE: &str = "io.k8s.api.core.v1.ObjectReference";
const RESOURCE_LIST: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList";
const RESOURCE: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.APIResource";

const API_VERSION_DOC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DOC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// One served document: its bytes and their ETag.
struct Document {
    json: Vec<u8>,
    /// Unquoted; the `ETag` header quotes it.
    etag: String,
}

impl Document {
    fn new(value: &Value) -> Self {
        let json = serde_json::to_vec(value).expect("a JSON value always serializes");
        // A cache validator, not a security measure: any hash that changes with the bytes will
        // do, and std's is stable for the life of the process.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        json.hash(&mut hasher);
        let etag = format!("{:016X}", hasher.finish());
        Self { json, etag }
    }

    /// 200 with the document, or 304 when the client's `If-None-Match` has it already.
    fn answer(&self, headers: &HeaderMap, immutable: bool) -> Response {
        if !accepts_json(headers) {
            return Status::not_acceptable(
                "the OpenAPI documents are served as application/json only",
            )
            .into_response();
        }
        let etag = format!("\"{}\"", self.etag);
        let mut response = if headers.get_all(header::IF_NONE_MATCH).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim() == etag))
        }) {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            (
                [(header::CONTENT_TYPE, "application/json")],
                self.json.clone(),
            )
                .into_response()
        };
        let headers = response.headers_mut();
        headers.insert(
            header::ETAG,
            HeaderValue::from_str(&etag).expect("hex is a valid header value"),
        );
        if immutable {
            // The URL names the content by its hash: a new document gets a new URL.
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, immutable"),
            );
        }
        response
    }
}

/// Every document, built on first use.
struct Documents {
    v2: Document,
    v3_discovery: Document,
    /// By path below `/openapi/v3/`: `apis/<group>/<version>`.
    v3: BTreeMap<String, Document>,
}

static DOCUMENTS: LazyLock<Documents> = LazyLock::new(|| {
    let groups = [EXTERNAL, CUSTOM];
    let v3: BTreeMap<String, Document> = groups
        .iter()
        .map(|&served| {
            let path = format!("apis/{}", served.group_version);
            (path, Document::new(&v3_document(served)))
        })
        .collect();
    // Only our group versions: the aggregator merges every backend's discovery paths into
    // one map, so listing `apis` or `version` here would hijack kube-apiserver's own.
    let paths: Map<String, Value> = v3
        .iter()
        .map(|(path, doc)| {
            let url = format!("/openapi/v3/{path}?hash={}", doc.etag);
            (path.clone(), json!({ "serverRelativeURL": url }))
        })
        .collect();
    Documents {
        v2: Document::new(&v2_document(&groups)),
        v3_discovery: Document::new(&json!({ "paths": paths })),
        v3,
    }
});

/// `GET /openapi/v2`.
pub async fn v2(headers: HeaderMap) -> Response {
    DOCUMENTS.v2.answer(&headers, false)
}

/// `GET /openapi/v3`.
pub async fn v3_discovery(headers: HeaderMap) -> Response {
    DOCUMENTS.v3_discovery.answer(&headers, false)
}

/// `GET /openapi/v3/apis/{group}/{version}`; with `?hash=`, the current hash is served as
/// immutable and a stale one is redirected to the current URL.
pub async fn v3_group_version(
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Path((group, version)) = match path {
        Ok(path) => path,
        Err(rejection) => return values::bad_path(rejection).into_response(),
    };
    let key = format!("apis/{group}/{version}");
    let Some(document) = DOCUMENTS.v3.get(&key) else {
        return Status::not_found(format!("no OpenAPI document for {group}/{version}"))
            .into_response();
    };
    let hash = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "hash")
        .map(|(_, v)| v.into_owned());
    match hash {
        Some(hash) if hash != document.etag => {
            Redirect::permanent(&format!("/openapi/v3/{key}?hash={}", document.etag))
                .into_response()
        }
        Some(_) => document.answer(&headers, true),
        None => document.answer(&headers, false),
    }
}

/// Whether `Accept` (absent means anything) admits JSON.
fn accepts_json(headers: &HeaderMap) -> bool {
    let mut accepts = headers.get_all(header::ACCEPT).iter().peekable();
    if accepts.peek().is_none() {
        return true;
    }
    accepts
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|clause| {
            clause
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .any(|media| matches!(media.as_str(), "application/json" | "application/*" | "*/*"))
}

/// The Swagger 2.0 document of `groups`: one document with every group's paths, since the
/// aggregator keeps, per APIService, only the paths under that APIService's group version.
fn v2_document(groups: &[ServedGroup]) -> Value {
    let mut paths = Map::new();
    for &served in groups {
        paths.extend(group_paths(served, Flavor::V2));
    }
    let definitions = reachable(&Value::Object(paths.clone()), &schemas(Flavor::V2));
    json!({
        "swagger": "2.0",
        "info": { "title": TITLE, "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {
            "BearerToken": {
                "type": "apiKey", "name": "authorization", "in": "header",
                "description": "Bearer Token authentication"
            }
        },
        "security": [{ "BearerToken": [] }]
    })
}

/// The OpenAPI 3.0 document of one group version.
fn v3_document(served: ServedGroup) -> Value {
    let paths = Value::Object(group_paths(served, Flavor::V3));
    let schemas = reachable(&paths, &schemas(Flavor::V3));
    json!({
        "openapi": "3.0.0",
        "info": { "title": TITLE, "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "BearerToken": {
                    "type": "apiKey", "name": "authorization", "in": "header",
                    "description": "Bearer Token authentication"
                }
            }
        },
        "security": [{ "BearerToken": [] }]
    })
}

/// The two dialects: where references point, and how parameters and responses hold a schema.
#[derive(Debug, Clone, Copy)]
enum Flavor {
    V2,
    V3,
}

impl Flavor {
    fn schema_ref(self, name: &str) -> Value {
        let prefix = match self {
            Self::V2 => "#/definitions/",
            Self::V3 => "#/components/schemas/",
        };
        json!({ "$ref": format!("{prefix}{name}") })
    }

    fn parameter(self, name: &str, location: &str, description: &str) -> Value {
        let mut parameter = json!({
            "name": name, "in": location, "description": description, "uniqueItems": true
        });
        let fields = parameter.as_object_mut().expect("an object");
        if location == "path" {
            fields.insert("required".into(), true.into());
        }
        match self {
            Self::V2 => {
                fields.insert("type".into(), "string".into());
            }
            Self::V3 => {
                fields.remove("uniqueItems");
                fields.insert(
                    "schema".into(),
                    json!({ "type": "string", "uniqueItems": true }),
                );
            }
        }
        parameter
    }

    fn responses(self, schema: &str) -> Value {
        let ok = match self {
            Self::V2 => json!({ "description": "OK", "schema": self.schema_ref(schema) }),
            Self::V3 => json!({
                "description": "OK",
                "content": { "application/json": { "schema": self.schema_ref(schema) } }
            }),
        };
        json!({ "200": ok, "401": { "description": "Unauthorized" } })
    }

    /// A GET operation; v2 names its media types and schemes, v3 has them in `content`.
    fn get(self, mut operation: Value, response: &str) -> Value {
        let fields = operation.as_object_mut().expect("an object");
        fields.insert("responses".into(), self.responses(response));
        if let Self::V2 = self {
            fields.insert("consumes".into(), json!(["*/*"]));
            fields.insert("produces".into(), json!(["application/json"]));
            fields.insert("schemes".into(), json!(["https"]));
        }
        operation
    }
}

/// The paths of one group version: its discovery document and its metric values.
fn group_paths(served: ServedGroup, flavor: Flavor) -> Map<String, Value> {
    let base = format!("/apis/{}", served.group_version);
    // kube-openapi's operation ids and tags: `externalMetricsV1beta1`, `customMetrics_v1beta2`.
    let (prefix, id_prefix) = match served.name {
        "custom.metrics.k8s.io" => ("customMetrics", "CustomMetrics"),
        _ => ("externalMetrics", "ExternalMetrics"),
    };
    let version_title = {
        let mut chars = served.version.chars();
        chars.next().map_or(String::new(), |c| {
            c.to_ascii_uppercase().to_string() + chars.as_str()
        })
    };
    let tag = format!("{prefix}_{}", served.version);
    let namespace = flavor.parameter(
        "namespace",
        "path",
        "object name and auth scope, such as for teams and projects",
    );
    let resources = flavor.get(
        json!({
            "description": "get available resources",
            "operationId": format!("get{id_prefix}{version_title}APIResources"),
            "tags": [tag],
        }),
        RESOURCE_LIST,
    );
    let mut paths = Map::new();
    paths.insert(format!("{base}/"), json!({ "get": resources }));
    if served.name == EXTERNAL.name {
        let list = flavor.get(
            json!({
                "description": "list the values of an external metric in a namespace; a trigger's value is served as s<index>-<broker>-<name>",
                "operationId": format!("list{id_prefix}{version_title}NamespacedMetricValue"),
                "tags": [tag],
                "parameters": [flavor.parameter(
                    "labelSelector",
                    "query",
                    "A selector on the metric labels (scaledobject.spillway.dev/name=<scaled object>). Defaults to everything.",
                )],
                "x-kubernetes-action": "list",
                "x-kubernetes-group-version-kind": {
                    "group": served.name, "version": served.version, "kind": "ExternalMetricValueList"
                },
            }),
            EXTERNAL_LIST,
        );
        paths.insert(
            format!("{base}/namespaces/{{namespace}}/{{metric}}"),
            json!({
                "get": list,
                "parameters": [
                    flavor.parameter("metric", "path", "the name of the metric"),
                    namespace,
                ],
            }),
        );
    } else {
        let object = flavor.get(
            json!({
                "description": "read the value of a metric of a scaled object's workload",
                "operationId": format!("read{id_prefix}{version_title}NamespacedObjectMetricValue"),
                "tags": [tag],
                "parameters": [flavor.parameter(
                    "metricLabelSelector",
                    "query",
                    "A selector on the metric labels (scaledobject.spillway.dev/name=<scaled object>). Defaults to everything.",
                )],
                "x-kubernetes-action": "get",
                "x-kubernetes-group-version-kind": {
                    "group": served.name, "version": served.version, "kind": "MetricValueList"
                },
            }),
            CUSTOM_LIST,
        );
        paths.insert(
            format!("{base}/namespaces/{{namespace}}/{{resource}}/{{name}}/{{metric}}"),
            json!({
                "get": object,
                "parameters": [
                    flavor.parameter("metric", "path", "the name of the metric"),
                    flavor.parameter("name", "path", "the name of the described object"),
                    namespace,
                    flavor.parameter(
                        "resource",
                        "path",
                        "the resource of the described object, with its group: deployments.apps",
                    ),
                ],
            }),
        );
    }
    paths
}

/// The definitions in `all` that `root` refers to, directly or through other definitions:
/// each document carries what it uses and no dangling reference.
fn reachable(root: &Value, all: &Map<String, Value>) -> Map<String, Value> {
    fn refs(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                for (key, field) in fields {
                    match (key.as_str(), field) {
                        ("$ref", Value::String(target)) => {
                            found.push(target.rsplit('/').next().unwrap_or("").to_owned());
                        }
                        _ => refs(field, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| refs(item, found)),
            _ => {}
        }
    }
    let mut pending = Vec::new();
    refs(root, &mut pending);
    let mut seen = BTreeSet::new();
    while let Some(name) = pending.pop() {
        if seen.insert(name.clone()) {
            if let Some(schema) = all.get(&name) {
                refs(schema, &mut pending);
            }
        }
    }
    all.iter()
        .filter(|(name, _)| seen.contains(*name))
        .map(|(name, schema)| (name.clone(), schema.clone()))
        .collect()
}

/// Every schema the documents may use, with references in `flavor`'s form. Descriptions
/// follow the Go types' doc comments, so `kubectl explain` reads like for built-in types.
fn schemas(flavor: Flavor) -> Map<String, Value> {
    let r = |name: &str| flavor.schema_ref(name);
    let string = |description: &str| json!({ "type": "string", "description": description });
    let strings = json!({ "type": "array", "items": { "type": "string", "default": "" } });
    let string_map = json!({
        "type": "object", "additionalProperties": { "type": "string", "default": "" }
    });
    let gvk = |group: &str, version: &str, kind: &str| json!([{ "group": group, "version": version, "kind": kind }]);
    let list = |description: &str, item: &str, gvk: Value| {
        json!({
            "description": description,
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": string(API_VERSION_DOC),
                "kind": string(KIND_DOC),
                "metadata": r(LIST_META),
                "items": { "type": "array", "description": "value of the metric matching a given set of labels", "items": r(item) },
            },
            "x-kubernetes-group-version-kind": gvk,
        })
    };
    let entries = [
        (
            EXTERNAL_LIST,
            list(
                "ExternalMetricValueList is a list of values for a given metric for some set labels",
                EXTERNAL_VALUE,
                gvk(EXTERNAL.name, EXTERNAL.version, "ExternalMetricValueList"),
            ),
        ),
        (
            EXTERNAL_VALUE,
            json!({
                "description": "ExternalMetricValue is a metric value for external metric A single metric value is identified by metric name and a set of string labels. For one metric there can be multiple values with different sets of labels.",
                "type": "object",
                "required": ["metricName", "metricLabels", "timestamp", "value"],
                "properties": {
                    "apiVersion": string(API_VERSION_DOC),
                    "kind": string(KIND_DOC),
                    "metricName": string("the name of the metric"),
                    "metricLabels": string_map.clone(),
                    "timestamp": r(TIME),
                    "window": { "type": "integer", "format": "int64", "description": "the window ([Timestamp-Window, Timestamp]) from which these metrics were calculated, when returning rate metrics calculated from cumulative metrics (or zero for non-calculated instantaneous metrics)." },
                    "value": r(QUANTITY),
                },
            }),
        ),
        (
            CUSTOM_LIST,
            list(
                "MetricValueList is a list of values for a given metric for some set of objects",
                CUSTOM_VALUE,
                gvk(CUSTOM.name, CUSTOM.version, "MetricValueList"),
            ),
        ),
        (
            CUSTOM_VALUE,
            json!({
                "description": "MetricValue is the metric value for some object",
                "type": "object",
                "required": ["describedObject", "metric", "timestamp", "value"],
                "properties": {
                    "apiVersion": string(API_VERSION_DOC),
                    "kind": string(KIND_DOC),
                    "describedObject": r(OBJECT_REFERENCE),
                    "metric": r(METRIC_IDENTIFIER),
                    "timestamp": r(TIME),
                    "windowSeconds": { "type": "integer", "format": "int64", "description": "indicates the window ([Timestamp-Window, Timestamp]) from which these metrics were calculated, when returning rate metrics calculated from cumulative metrics (or zero for non-calculated instantaneous metrics)." },
                    "value": r(QUANTITY),
                },
            }),
        ),
        (
            METRIC_IDENTIFIER,
            json!({
                "description": "MetricIdentifier identifies a metric by name and, optionally, selector",
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": string("name is the name of the given metric"),
                    "selector": r(LABEL_SELECTOR),
                },
            }),
        ),
        (
            LIST_META,
            json!({
                "description": "ListMeta describes metadata that synthetic resources must have, including lists and various status objects. A resource may have only one of {ObjectMeta, ListMeta}.",
                "type": "object",
                "properties": {
                    "continue": string("continue may be set if the user set a limit on the number of items returned."),
                    "remainingItemCount": { "type": "integer", "format": "int64", "description": "remainingItemCount is the number of subsequent items in the list which are not included in this list response." },
                    "resourceVersion": string("String that identifies the server's internal version of this object that can be used by clients to determine when objects have changed."),
                    "selfLink": string("Deprecated: selfLink is a legacy read-only field that is no longer populated by the system."),
                },
            }),
        ),
        (
            TIME,
            json!({
                "description": "Time is a wrapper around time.Time which supports correct marshaling to YAML and JSON.  Wrappers are provided for many of the factory methods that the time package offers.",
                "type": "string",
                "format": "date-time",
            }),
        ),
        (
            QUANTITY,
            json!({
                "description": "Quantity is a fixed-point representation of a number. It provides convenient marshaling/unmarshaling in JSON and YAML, in addition to String() and AsInt64() accessors.",
                "type": "string",
            }),
        ),
        (
            LABEL_SELECTOR,
            json!({
                "description": "A label selector is a label query over a set of resources. The result of matchLabels and matchExpressions are ANDed. An empty label selector matches all objects. A null label selector matches no objects.",
                "type": "object",
                "properties": {
                    "matchExpressions": { "type": "array", "description": "matchExpressions is a list of label selector requirements. The requirements are ANDed.", "items": r(LABEL_SELECTOR_REQUIREMENT), "x-kubernetes-list-type": "atomic" },
                    "matchLabels": string_map.clone(),
                },
                "x-kubernetes-map-type": "atomic",
            }),
        ),
        (
            LABEL_SELECTOR_REQUIREMENT,
            json!({
                "description": "A label selector requirement is a selector that contains values, a key, and an operator that relates the key and values.",
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": string("key is the label key that the selector applies to."),
                    "operator": string("operator represents a key's relationship to a set of values. Valid operators are In, NotIn, Exists and DoesNotExist."),
                    "values": { "type": "array", "description": "values is an array of string values.", "items": { "type": "string", "default": "" }, "x-kubernetes-list-type": "atomic" },
                },
            }),
        ),
        (
            OBJECT_REFERENCE,
            json!({
                "description": "ObjectReference contains enough information to let you inspect or modify the referred object.",
                "type": "object",
                "properties": {
                    "apiVersion": string("API version of the referent."),
                    "fieldPath": string("If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement."),
                    "kind": string("Kind of the referent."),
                    "name": string("Name of the referent."),
                    "namespace": string("Namespace of the referent."),
                    "resourceVersion": string("Specific resourceVersion to which this reference is made, if any."),
                    "uid": string("UID of the referent."),
                },
                "x-kubernetes-map-type": "atomic",
            }),
        ),
        (
            RESOURCE_LIST,
            json!({
                "description": "APIResourceList is a list of APIResource, it is used to expose the name of the resources supported in a specific group and version, and if the resource is namespaced.",
                "type": "object",
                "required": ["groupVersion", "resources"],
                "properties": {
                    "apiVersion": string(API_VERSION_DOC),
                    "kind": string(KIND_DOC),
                    "groupVersion": string("groupVersion is the group and version this APIResourceList is for."),
                    "resources": { "type": "array", "description": "resources contains the name of the resources and if they are namespaced.", "items": r(RESOURCE), "x-kubernetes-list-type": "atomic" },
                },
                "x-kubernetes-group-version-kind": gvk("", "v1", "APIResourceList"),
            }),
        ),
        (
            RESOURCE,
            json!({
                "description": "APIResource specifies the name of a resource and whether it is namespaced.",
                "type": "object",
                "required": ["name", "singularName", "namespaced", "kind", "verbs"],
                "properties": {
                    "categories": strings.clone(),
                    "group": string("group is the preferred group of the resource."),
                    "kind": string("kind is the kind for the resource (e.g. 'Foo' is the kind for a resource 'foo')"),
                    "name": string("name is the plural name of the resource."),
                    "namespaced": { "type": "boolean", "default": false, "description": "namespaced indicates if a resource is namespaced or not." },
                    "shortNames": strings.clone(),
                    "singularName": string("singularName is the singular name of the resource."),
                    "storageVersionHash": string("The hash value of the storage version."),
                    "verbs": strings,
                    "version": string("version is the preferred version of the resource."),
                },
            }),
        ),
    ];
    entries
        .into_iter()
        .map(|(name, schema)| (name.to_owned(), schema))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` of `document` names a schema under `defs` (`/definitions`, `/components/schemas`).
    fn assert_refs_resolve(document: &Value, defs: &str) {
        let schemas = document.pointer(defs).and_then(Value::as_object).unwrap();
        let mut found = Vec::new();
        fn walk(value: &Value, found: &mut Vec<String>) {
            match value {
                Value::Object(fields) => fields.iter().for_each(|(k, v)| match (k.as_str(), v) {
                    ("$ref", Value::String(target)) => found.push(target.clone()),
                    _ => walk(v, found),
                }),
                Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
                _ => {}
            }
        }
        walk(document, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let name = target
                .strip_prefix(&format!("#{defs}/"))
                .unwrap_or_else(|| panic!("{target} is not under {defs}"));
            assert!(schemas.contains_key(name), "{target} does not resolve");
        }
    }

    #[test]
    fn v2_has_both_groups_under_their_prefixes_and_resolves() {
        let doc: Value = serde_json::from_slice(&DOCUMENTS.v2.json).unwrap();
        assert_eq!(doc["swagger"], "2.0");
        let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        // The aggregator keeps per APIService only the paths below `/apis/<group>/<version>/`.
        for path in &paths {
            assert!(
                path.starts_with("/apis/external.metrics.k8s.io/v1beta1/")
                    || path.starts_with("/apis/custom.metrics.k8s.io/v1beta2/"),
                "{path}"
            );
        }
        assert_eq!(paths.len(), 4, "{paths:?}");
        assert_refs_resolve(&doc, "/definitions");
        assert_eq!(
            doc["definitions"][EXTERNAL_LIST]["x-kubernetes-group-version-kind"],
            json!([{"group": "external.metrics.k8s.io", "version": "v1beta1", "kind": "ExternalMetricValueList"}])
        );
        assert_eq!(
            doc["definitions"][CUSTOM_LIST]["x-kubernetes-group-version-kind"],
            json!([{"group": "custom.metrics.k8s.io", "version": "v1beta2", "kind": "MetricValueList"}])
        );
        let get = &doc["paths"]["/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}"]
            ["get"];
        assert_eq!(get["x-kubernetes-action"], "list");
        assert_eq!(
            get["responses"]["200"]["schema"]["$ref"],
            format!("#/definitions/{EXTERNAL_LIST}")
        );
    }

    #[test]
    fn v3_discovery_points_at_each_group_version_by_hash() {
        let discovery: Value = serde_json::from_slice(&DOCUMENTS.v3_discovery.json).unwrap();
        let paths = discovery["paths"].as_object().unwrap();
        assert_eq!(
            paths.keys().collect::<Vec<_>>(),
            [
                "apis/custom.metrics.k8s.io/v1beta2",
                "apis/external.metrics.k8s.io/v1beta1"
            ]
        );
        for (path, entry) in paths {
            let document = &DOCUMENTS.v3[path];
            assert_eq!(
                entry["serverRelativeURL"],
                format!("/openapi/v3/{path}?hash={}", document.etag)
            );
            let doc: Value = serde_json::from_slice(&document.json).unwrap();
            assert_eq!(doc["openapi"], "3.0.0");
            assert_refs_resolve(&doc, "/components/schemas");
        }
        let custom: Value =
            serde_json::from_slice(&DOCUMENTS.v3["apis/custom.metrics.k8s.io/v1beta2"].json)
                .unwrap();
        assert!(
            custom["components"]["schemas"].get(EXTERNAL_LIST).is_none(),
            "each document holds its own group's types only"
        );
        let get = &custom["paths"]["/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/{resource}/{name}/{metric}"]
            ["get"];
        assert_eq!(
            get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{CUSTOM_LIST}")
        );
    }

    #[test]
    fn accept_headers() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
            accepts_json(&headers)
        };
        assert!(accepts_json(&HeaderMap::new()));
        assert!(with("application/json"));
        assert!(with(
            "application/com.github.proto-openapi.spec.v3.v1.0+protobuf, */*;q=0.5"
        ));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        ));
    }
}
