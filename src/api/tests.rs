//! Router tests: requests through the real router, no socket.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{AppState, router};
use crate::cache::{MetricCache, TriggerId};
use crate::config::ScaleTargetRef;
use crate::registry::{MetricSource, ScaleTarget};
use crate::scalers::{Reading, ScalerError};

fn id(scaled_object: &str, index: usize) -> TriggerId {
    TriggerId {
        namespace: "default".into(),
        scaled_object: scaled_object.into(),
        index,
    }
}

fn source(scaled_object: &str, index: usize, metric: &str) -> MetricSource {
    MetricSource {
        id: id(scaled_object, index),
        metric: metric.into(),
        fallback: None,
        spec_version: 0,
    }
}

fn down() -> ScalerError {
    ScalerError::Unreachable {
        broker: "rabbitmq",
        target: "127.0.0.1:1".into(),
        cause: "connection refused".into(),
    }
}

/// Two objects on the same queue (same metric name), one with lag-seconds, one broken, one
/// never polled.
fn state() -> AppState {
    let cache = Arc::new(MetricCache::new());
    let metrics: Vec<MetricSource> = vec![
        source("orders", 0, "s0-kafka-orders"),
        source("jobs", 0, "s0-rabbitmq-jobs"),
        source("jobs-eu", 0, "s0-rabbitmq-jobs"),
        source("broken", 0, "s0-rabbitmq-gone"),
        source("fresh", 0, "s0-nats-work"),
        source("fresh-eu", 0, "s0-nats-work-eu"),
    ];
    cache.record(
        id("orders", 0),
        Ok(Reading::new(1.5, true).with_extra("lag-seconds", 12.0)),
        Default::default(),
    );
    cache.record(
        id("jobs", 0),
        Ok(Reading::new(45.0, true)),
        Default::default(),
    );
    cache.record(
        id("jobs-eu", 0),
        Ok(Reading::new(0.0, false)),
        Default::default(),
    );
    cache.record(
        id("broken", 0),
        Ok(Reading::new(7.0, true)),
        Default::default(),
    );
    cache.record(id("broken", 0), Err(down()), Default::default());
    cache.record(
        id("fresh-eu", 0),
        Ok(Reading::new(3.0, true)),
        Default::default(),
    );
    // Custom metrics: orders and broken scale Deployments, jobs a StatefulSet.
    let target = |scaled_object: &str, kind: &str, name: &str| ScaleTarget {
        namespace: "default".into(),
        scaled_object: scaled_object.into(),
        target: ScaleTargetRef {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
        },
    };
    let targets = vec![
        target("orders", "Deployment", "orders-consumer"),
        target("jobs", "StatefulSet", "jobs-worker"),
        target("broken", "Deployment", "broken"),
        target("fresh", "Deployment", "fresh"),
    ];
    AppState::new(
        cache,
        Arc::new(crate::registry::Registry::with_catalog(metrics, targets)),
    )
}

async fn send(method: &str, uri: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let (code, _, body) = call(&state(), request).await;
    (code, body)
}

/// One request through the router of `state`: code, headers and the body as JSON (or as a
/// JSON string when it is not JSON).
///
/// Every request goes both through what a connection is served (the value route, then the
/// Router) and through the Router alone, and both answers must be the same bytes.
async fn call(
    state: &AppState,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let again = || {
        let mut request = Request::new(Body::from(body.clone()));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
        request
    };
    let answer = |response: axum::response::Response| async move {
        let (parts, body) = response.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    };
    let values = Arc::new(super::value_route::ValueRoute::new(state.clone(), None));
    let service =
        super::value_route::ApiService::new(values, router(state.clone()), Default::default());
    let (served, bytes) = answer(service.oneshot(again()).await.unwrap()).await;
    // Counted apart, so the state's series count each request once.
    let apart = AppState {
        own_metrics: Arc::new(crate::metrics::Metrics::new(Arc::clone(&state.cache))),
        ..state.clone()
    };
    let (routed, routed_bytes) = answer(router(apart).oneshot(again()).await.unwrap()).await;
    assert_eq!(served.status, routed.status, "{parts:?}");
    // The Router writes content-length itself; hyper writes it for the value route's answer
    // from the body's exact length, so it is the same on the wire.
    let without_length = |headers: &axum::http::HeaderMap| {
        let mut headers = headers.clone();
        headers.remove(axum::http::header::CONTENT_LENGTH);
        headers
    };
    assert_eq!(
        without_length(&served.headers),
        without_length(&routed.headers),
        "{parts:?}"
    );
    assert_eq!(bytes, routed_bytes, "{parts:?}");
    let (code, headers) = (served.status, served.headers);
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (code, headers, body)
}

async fn get(uri: &str) -> (StatusCode, Value) {
    send("GET", uri).await
}

const METRICS: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default";

/// The `name` of each element of a JSON list.
fn names_in(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect()
}

/// The resource names of an `APIResourceList`.
fn resource_names(body: &Value) -> Vec<&str> {
    names_in(&body["resources"])
}

fn assert_status(body: &Value, code: u16, reason: &str) {
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["apiVersion"], "v1", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
}

#[tokio::test]
async fn discovery_documents() {
    let (code, body) = get("/apis").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["kind"], "APIGroupList");
    assert_eq!(body["groups"][0]["name"], "external.metrics.k8s.io");
    assert_eq!(
        body["groups"][0]["preferredVersion"]["groupVersion"],
        "external.metrics.k8s.io/v1beta1"
    );

    let (code, body) = get("/apis/external.metrics.k8s.io").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["kind"], "APIGroup");
    assert_eq!(body["versions"][0]["version"], "v1beta1");

    let (code, body) = get("/apis/external.metrics.k8s.io/v1beta1").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["kind"], "APIResourceList");
    assert_eq!(body["groupVersion"], "external.metrics.k8s.io/v1beta1");
    assert_eq!(
        resource_names(&body),
        [
            "s0-kafka-orders",
            "s0-kafka-orders-lag-seconds",
            "s0-nats-work",
            "s0-nats-work-eu",
            "s0-rabbitmq-gone",
            "s0-rabbitmq-jobs"
        ]
    );
    assert_eq!(
        body["resources"][0],
        json!({"name": "s0-kafka-orders", "singularName": "", "namespaced": true,
               "kind": "ExternalMetricValueList", "verbs": ["get"]})
    );
}

#[tokio::test]
async fn values_come_from_the_cache_as_quantities() {
    let (code, body) = get(&format!("{METRICS}/s0-kafka-orders")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["kind"], "ExternalMetricValueList");
    assert_eq!(body["apiVersion"], "external.metrics.k8s.io/v1beta1");
    let item = &body["items"][0];
    assert_eq!(item["metricName"], "s0-kafka-orders");
    assert_eq!(item["value"], "1500m");
    assert_eq!(
        item["metricLabels"],
        json!({"scaledobject.spillway.dev/name": "orders"})
    );
    assert!(item["timestamp"].as_str().unwrap().ends_with('Z'), "{item}");

    let (code, body) = get(&format!("{METRICS}/s0-kafka-orders-lag-seconds")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0]["value"], "12");
    assert_eq!(
        body["items"][0]["metricName"],
        "s0-kafka-orders-lag-seconds"
    );
}

#[tokio::test]
async fn the_label_selector_picks_the_scaled_object() {
    let (code, body) = get(&format!("{METRICS}/s0-rabbitmq-jobs")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body["items"].as_array().unwrap().len(),
        2,
        "no selector: all"
    );

    let selector = "scaledobject.spillway.dev%2Fname%3Djobs";
    let (code, body) = get(&format!(
        "{METRICS}/s0-rabbitmq-jobs?labelSelector={selector}"
    ))
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    assert_eq!(body["items"][0]["value"], "45");

    let selector = "scaledobject.spillway.dev%2Fname+in+%28jobs-eu%29";
    let (_, body) = get(&format!(
        "{METRICS}/s0-rabbitmq-jobs?labelSelector={selector}"
    ))
    .await;
    assert_eq!(
        body["items"][0]["value"], "0",
        "zero backlog is one item of 0"
    );
    assert_eq!(body["items"].as_array().unwrap().len(), 1);

    // Nothing selected is never an empty list.
    let selector = "scaledobject.spillway.dev%2Fname%3Dother";
    let (code, body) = get(&format!(
        "{METRICS}/s0-rabbitmq-jobs?labelSelector={selector}"
    ))
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_status(&body, 404, "NotFound");
}

#[tokio::test]
async fn a_bad_selector_is_a_bad_request() {
    let (code, body) = get(&format!(
        "{METRICS}/s0-rabbitmq-jobs?labelSelector=a+in+%28x"
    ))
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_status(&body, 400, "BadRequest");
    assert!(
        body["message"].as_str().unwrap().contains("label selector"),
        "{body}"
    );
}

#[tokio::test]
async fn a_failed_poll_is_503_never_zero() {
    let (code, body) = get(&format!("{METRICS}/s0-rabbitmq-gone")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_status(&body, 503, "ServiceUnavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{body}"
    );
}

#[tokio::test]
async fn a_reading_of_the_previous_spec_is_never_served_for_the_new_one() {
    // The queue of `jobs` was edited: the registry serves spec 2 under the new name, the cache
    // still holds the reading of spec 1 (the old queue) until the poller catches up.
    let cache = Arc::new(MetricCache::new());
    let mut jobs = source("jobs", 0, "s0-rabbitmq-new-queue");
    jobs.spec_version = 2;
    cache.track_spec(&jobs.id, 1);
    cache.record_for_spec(
        jobs.id.clone(),
        1,
        Ok(Reading::new(40.0, true)),
        Default::default(),
    );
    let state = AppState::new(
        Arc::clone(&cache),
        Arc::new(crate::registry::Registry::with_catalog(
            vec![jobs.clone()],
            Vec::new(),
        )),
    );
    let (code, _, body) = call(
        &state,
        get_request(&format!("{METRICS}/s0-rabbitmq-new-queue")),
    )
    .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("no reading yet"),
        "{body}"
    );

    // The new spec's first poll lands: its value is served.
    cache.track_spec(&jobs.id, 2);
    cache.record_for_spec(
        jobs.id.clone(),
        2,
        Ok(Reading::new(7.0, true)),
        Default::default(),
    );
    let (code, _, body) = call(
        &state,
        get_request(&format!("{METRICS}/s0-rabbitmq-new-queue")),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0]["value"], "7");
}

#[tokio::test]
async fn a_trigger_failing_past_its_threshold_serves_the_fallback_value() {
    let cache = Arc::new(MetricCache::new());
    let mut broken = source("broken", 0, "s0-rabbitmq-gone");
    broken.fallback = Some(crate::registry::FallbackValue {
        failure_threshold: 2,
        replicas: 3,
        value: 60.0,
    });
    let state = AppState::new(
        Arc::clone(&cache),
        Arc::new(crate::registry::Registry::with_catalog(
            vec![broken],
            Vec::new(),
        )),
    );
    let request = || {
        Request::builder()
            .uri(format!("{METRICS}/s0-rabbitmq-gone"))
            .body(Body::empty())
            .unwrap()
    };
    // KEDA's rule: fallback after MORE than failureThreshold (2) failures in a row.
    for failures in 1..=2 {
        cache.record(id("broken", 0), Err(down()), Default::default());
        let (code, _, _) = call(&state, request()).await;
        assert_eq!(
            code,
            StatusCode::SERVICE_UNAVAILABLE,
            "{failures} failures are not more than the threshold"
        );
    }
    cache.record(id("broken", 0), Err(down()), Default::default());
    let (code, _, body) = call(&state, request()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // 3 replicas of a target of 20: the HPA settles on ceil(60 / 20) = 3.
    assert_eq!(body["items"][0]["value"], "60", "{body}");
    cache.record(
        id("broken", 0),
        Ok(Reading::new(5.0, true)),
        Default::default(),
    );
    let (_, _, body) = call(&state, request()).await;
    assert_eq!(
        body["items"][0]["value"], "5",
        "the first good poll ends the fallback"
    );
}

#[tokio::test]
async fn before_the_first_poll_a_known_metric_is_503() {
    let (code, body) = get(&format!("{METRICS}/s0-nats-work")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["message"].as_str().unwrap().contains("no reading yet"),
        "{body}"
    );
}

#[tokio::test]
async fn a_main_metric_is_not_taken_for_an_extra_of_another() {
    // `s0-nats-work` is not polled yet; `s0-nats-work-eu` is its own trigger's main metric.
    let (code, body) = get(&format!("{METRICS}/s0-nats-work-eu")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    assert_eq!(body["items"][0]["value"], "3");
    // An extra of a trigger not polled yet may exist: it waits like the main metric.
    let (code, _) = get(&format!("{METRICS}/s0-nats-work-pending")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn unknown_metric_namespace_or_path_is_404() {
    for uri in [
        format!("{METRICS}/s9-nothing"),
        format!("{METRICS}/s0-kafka-orders-nope"),
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/other/s0-kafka-orders".to_owned(),
        "/nowhere".to_owned(),
        "/apis/custom.metrics.k8s.io/v1beta1".to_owned(),
    ] {
        let (code, body) = get(&uri).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{uri}");
        assert_status(&body, 404, "NotFound");
    }
}

#[tokio::test]
async fn wrong_method_is_405_status() {
    let (code, body) = send("POST", &format!("{METRICS}/s0-kafka-orders")).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    assert_status(&body, 405, "MethodNotAllowed");
    let (code, _) = send("DELETE", "/healthz").await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn health_endpoints_answer_ok() {
    for path in ["/healthz", "/livez", "/readyz"] {
        let (code, body) = get(path).await;
        assert_eq!(
            (code, body),
            (StatusCode::OK, Value::String("ok".into())),
            "{path}"
        );
    }
}

#[test]
fn tls_config_reads_pem_files_or_makes_its_own() {
    use super::{ApiError, tls_config};
    use crate::config::TlsFiles;

    let dir = std::env::temp_dir().join(format!(
        "spillway-tls-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["spillway.test".into()]).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let files = |cert_file: &std::path::Path, key_file: &std::path::Path| TlsFiles {
        cert_file: cert_file.to_owned(),
        key_file: key_file.to_owned(),
    };

    tls_config(Some(&files(&cert, &key)), None).expect("PEM files load");
    tls_config(None, None).expect("a self-signed certificate is made");
    let swapped = tls_config(Some(&files(&key, &cert)), None).unwrap_err();
    assert!(matches!(swapped, ApiError::BadTlsFile { .. }), "{swapped}");
    let missing = tls_config(Some(&files(&dir.join("nope.crt"), &key)), None).unwrap_err();
    assert!(matches!(missing, ApiError::ReadTls { .. }), "{missing}");
    assert!(missing.to_string().contains("nope.crt"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn plain_http_gets_health_only() {
    let request = |uri: &str| Request::builder().uri(uri).body(Body::empty()).unwrap();
    let ok = super::health_router()
        .oneshot(request("/readyz"))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let metrics = super::health_router()
        .oneshot(request("/apis"))
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::NOT_FOUND);
    let bytes = metrics.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_status(&body, 404, "NotFound");
    assert!(
        body["message"].as_str().unwrap().contains("HTTPS"),
        "{body}"
    );
}

fn get_request(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

const CUSTOM: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default";

#[tokio::test]
async fn custom_metrics_discovery() {
    let (_, body) = get("/apis").await;
    assert_eq!(
        names_in(&body["groups"]),
        ["external.metrics.k8s.io", "custom.metrics.k8s.io"]
    );

    let (code, body) = get("/apis/custom.metrics.k8s.io").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["kind"], "APIGroup");
    assert_eq!(
        body["preferredVersion"],
        json!({"groupVersion": "custom.metrics.k8s.io/v1beta2", "version": "v1beta2"})
    );

    for path in [
        "/apis/custom.metrics.k8s.io/v1beta2",
        "/apis/custom.metrics.k8s.io/v1beta2/",
    ] {
        let (code, body) = get(path).await;
        assert_eq!(code, StatusCode::OK, "{path}");
        assert_eq!(body["groupVersion"], "custom.metrics.k8s.io/v1beta2");
        assert_eq!(
            resource_names(&body),
            [
                "deployments.apps/s0-kafka-orders",
                "deployments.apps/s0-kafka-orders-lag-seconds",
                "deployments.apps/s0-nats-work",
                "deployments.apps/s0-rabbitmq-gone",
                "statefulsets.apps/s0-rabbitmq-jobs",
            ]
        );
        assert_eq!(body["resources"][0]["kind"], "MetricValueList");
        assert_eq!(body["resources"][0]["namespaced"], true);
    }
}

#[tokio::test]
async fn an_object_metric_describes_the_scale_target() {
    let (code, body) = get(&format!(
        "{CUSTOM}/deployments.apps/orders-consumer/s0-kafka-orders"
    ))
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["kind"], "MetricValueList");
    assert_eq!(body["apiVersion"], "custom.metrics.k8s.io/v1beta2");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0]["describedObject"],
        json!({"kind": "Deployment", "namespace": "default", "name": "orders-consumer", "apiVersion": "apps/v1"})
    );
    assert_eq!(
        items[0]["metric"],
        json!({"name": "s0-kafka-orders", "selector": null})
    );
    assert_eq!(items[0]["value"], "1500m");
    assert!(items[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(items[0].get("windowSeconds").is_none());

    // An extra, and a metric label selector echoed in structured form.
    let selector = "scaledobject.spillway.dev%2Fname%3Dorders%2Cteam+notin+%28b%29%2C%21gone";
    let (code, body) = get(&format!(
        "{CUSTOM}/deployments.apps/orders-consumer/s0-kafka-orders-lag-seconds?metricLabelSelector={selector}"
    ))
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0]["value"], "12");
    assert_eq!(
        body["items"][0]["metric"]["selector"],
        json!({
            "matchLabels": {"scaledobject.spillway.dev/name": "orders"},
            "matchExpressions": [
                {"key": "team", "operator": "NotIn", "values": ["b"]},
                {"key": "gone", "operator": "DoesNotExist"}
            ]
        })
    );

    let (code, body) = get(&format!(
        "{CUSTOM}/statefulsets.apps/jobs-worker/s0-rabbitmq-jobs"
    ))
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0]["value"], "45", "jobs only, not jobs-eu");
    assert_eq!(body["items"][0]["describedObject"]["kind"], "StatefulSet");
}

#[tokio::test]
async fn object_metrics_keep_the_404_and_503_rules() {
    let (code, body) = get(&format!(
        "{CUSTOM}/deployments.apps/broken/s0-rabbitmq-gone"
    ))
    .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_status(&body, 503, "ServiceUnavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("latest poll failed"),
        "{body}"
    );
    let (code, _) = get(&format!("{CUSTOM}/deployments.apps/fresh/s0-nats-work")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "not polled yet");

    for path in [
        // Another scaled object's metric on this workload.
        "deployments.apps/orders-consumer/s0-rabbitmq-jobs",
        // The group is part of the resource.
        "deployments/orders-consumer/s0-kafka-orders",
        "statefulsets.apps/orders-consumer/s0-kafka-orders",
        "deployments.apps/nobody/s0-kafka-orders",
        "deployments.apps/orders-consumer/s0-kafka-orders-nope",
        // Pods metrics are not served.
        "pods/*/s0-kafka-orders",
    ] {
        let (code, body) = get(&format!("{CUSTOM}/{path}")).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_status(&body, 404, "NotFound");
    }
    let selector = "scaledobject.spillway.dev%2Fname%3Dother";
    let (code, body) = get(&format!(
        "{CUSTOM}/deployments.apps/orders-consumer/s0-kafka-orders?metricLabelSelector={selector}"
    ))
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("metric label selector"),
        "{body}"
    );
}

#[tokio::test]
async fn malformed_names_and_selectors_are_400_status() {
    let long = "m".repeat(300);
    for uri in [
        format!("{METRICS}/s0-kafka-orders?labelSelector=a+in+%28x"),
        format!("{METRICS}/{long}"),
        format!("{METRICS}/a%2Fb"),
        format!("{METRICS}/.."),
        format!("{METRICS}/bad%FFutf8"),
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/Default/s0-kafka-orders".to_owned(),
        format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/s0-kafka-orders",
            "n".repeat(64)
        ),
        format!(
            "{CUSTOM}/deployments.apps/orders-consumer/s0-kafka-orders?metricLabelSelector=%3D%3D"
        ),
        format!("{CUSTOM}/deployments.apps/Orders/s0-kafka-orders"),
        format!("{CUSTOM}/deployments.apps/orders-consumer/{long}"),
    ] {
        let (code, body) = get(&uri).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_status(&body, 400, "BadRequest");
    }
}

#[tokio::test]
async fn oversized_headers_and_bodies_are_refused_with_status() {
    let state = state();
    let request = Request::builder()
        .uri(format!("{METRICS}/s0-kafka-orders"))
        .header("x-padding", "p".repeat(super::limits::MAX_HEADER_BYTES))
        .body(Body::empty())
        .unwrap();
    let (code, _, body) = call(&state, request).await;
    assert_eq!(code, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_status(&body, 431, "BadRequest");

    let declared = Request::builder()
        .uri(format!("{METRICS}/s0-kafka-orders"))
        .header("content-length", (2 << 20).to_string())
        .body(Body::empty())
        .unwrap();
    let (code, _, body) = call(&state, declared).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert_status(&body, 413, "RequestEntityTooLarge");

    // A streamed body without a length is counted as it arrives.
    let chunks =
        futures::stream::iter((0..3).map(|_| Ok::<_, std::io::Error>(vec![0u8; 512 * 1024])));
    let streamed = Request::builder()
        .uri(format!("{METRICS}/s0-kafka-orders"))
        .body(Body::from_stream(chunks))
        .unwrap();
    let (code, _, _) = call(&state, streamed).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);

    // A small body is drained and ignored; bad Content-Length is a 400.
    let small = Request::builder()
        .uri(format!("{METRICS}/s0-kafka-orders"))
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(call(&state, small).await.0, StatusCode::OK);
    let bad = Request::builder()
        .uri("/healthz")
        .header("content-length", "lots")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&state, bad).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn openapi_documents_are_served_with_etags() {
    let state = state();
    let (code, headers, v2) = call(&state, get_request("/openapi/v2")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(v2["swagger"], "2.0");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let again = Request::builder()
        .uri("/openapi/v2")
        .header("if-none-match", &etag)
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&state, again).await.0, StatusCode::NOT_MODIFIED);

    let (code, _, discovery) = call(&state, get_request("/openapi/v3")).await;
    assert_eq!(code, StatusCode::OK);
    for group_version in [
        "apis/external.metrics.k8s.io/v1beta1",
        "apis/custom.metrics.k8s.io/v1beta2",
    ] {
        let url = discovery["paths"][group_version]["serverRelativeURL"]
            .as_str()
            .unwrap();
        let (code, headers, doc) = call(&state, get_request(url)).await;
        assert_eq!(code, StatusCode::OK, "{url}");
        assert_eq!(doc["openapi"], "3.0.0");
        assert_eq!(headers["cache-control"], "public, immutable");
        let stale = format!("/openapi/v3/{group_version}?hash=0");
        let (code, headers, _) = call(&state, get_request(&stale)).await;
        assert_eq!(code, StatusCode::PERMANENT_REDIRECT, "{stale}");
        assert_eq!(headers["location"], url);
    }
    let (code, _, body) = call(&state, get_request("/openapi/v3/apis/apps/v1")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_status(&body, 404, "NotFound");
    let protobuf = Request::builder()
        .uri("/openapi/v2")
        .header(
            "accept",
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        )
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&state, protobuf).await.0, StatusCode::NOT_ACCEPTABLE);
}

#[tokio::test]
async fn requests_are_counted_by_route_template() {
    let state = state();
    call(&state, get_request(&format!("{METRICS}/s0-kafka-orders"))).await;
    call(&state, get_request(&format!("{METRICS}/s0-rabbitmq-gone"))).await;
    call(&state, get_request("/some/random/path/1")).await;
    call(&state, get_request("/some/random/path/2")).await;
    let text = state.own_metrics.encode().unwrap();
    let route = "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}";
    for line in [
        format!(r#"spillway_api_requests_total{{route="{route}",code="200"}} 1"#),
        format!(r#"spillway_api_requests_total{{route="{route}",code="503"}} 1"#),
        r#"spillway_api_requests_total{route="unmatched",code="404"} 2"#.to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    assert!(
        !text.contains("/some/random"),
        "raw paths never become labels"
    );
}

/// A cold trigger's state, a poller stand-in that counts the polls it is asked for and
/// records `outcome` after a short while, and the state serving with those requests.
fn cold_start(
    outcome: Result<Reading, ScalerError>,
) -> (AppState, Arc<std::sync::atomic::AtomicUsize>) {
    let (requests, mut asks) = crate::cache::PollRequests::channel();
    let state = state().with_poll_requests(requests);
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (cache, counter) = (Arc::clone(&state.cache), Arc::clone(&polls));
    tokio::spawn(async move {
        while let Some(id) = asks.recv().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            cache.record(id, outcome.clone(), Default::default());
        }
    });
    (state, polls)
}

#[tokio::test]
async fn concurrent_cold_misses_cause_one_poll() {
    let (state, polls) = cold_start(Ok(Reading::new(8.0, true)));
    let asks = (0..20).map(|_| {
        let state = state.clone();
        async move { call(&state, get_request(&format!("{METRICS}/s0-nats-work"))).await }
    });
    for (code, _, body) in futures::future::join_all(asks).await {
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["items"][0]["value"], "8");
    }
    assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Object metrics take the same path.
    let (code, body) = {
        let (code, _, body) = call(
            &state,
            get_request(&format!("{CUSTOM}/deployments.apps/fresh/s0-nats-work")),
        )
        .await;
        (code, body)
    };
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        polls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "warm now"
    );
}

#[tokio::test]
async fn a_failed_first_poll_is_still_503() {
    let (state, polls) = cold_start(Err(down()));
    let (code, _, body) = call(&state, get_request(&format!("{METRICS}/s0-nats-work"))).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("latest poll failed"),
        "{body}"
    );
    assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_wait_for_a_first_poll_is_bounded() {
    // A poller that takes the ask and never polls.
    let (requests, _asks) = crate::cache::PollRequests::channel();
    let cache = MetricCache::new();
    let started = std::time::Instant::now();
    super::values::await_first_polls(
        &cache,
        &requests,
        &[(id("fresh", 0), 0)],
        std::time::Duration::from_millis(100),
    )
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(100)
            && waited < std::time::Duration::from_secs(2),
        "{waited:?}"
    );

    // No poller listening: nothing to wait for, a 503 at once.
    let (requests, asks) = crate::cache::PollRequests::channel();
    drop(asks);
    let state = state().with_poll_requests(requests);
    let started = std::time::Instant::now();
    let (code, _, _) = call(&state, get_request(&format!("{METRICS}/s0-nats-work"))).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}
