//! Router tests: requests through the real router, no socket.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::external::MetricSource;
use super::{AppState, router};
use crate::cache::{MetricCache, TriggerId};
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
    AppState {
        cache,
        metrics: metrics.into(),
    }
}

async fn send(method: &str, uri: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let response = router(state()).oneshot(request).await.unwrap();
    let code = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (code, body)
}

async fn get(uri: &str) -> (StatusCode, Value) {
    send("GET", uri).await
}

const METRICS: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default";

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
    let names: Vec<&str> = body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
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
        "/apis/custom.metrics.k8s.io/v1beta2".to_owned(),
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

    tls_config(Some(&files(&cert, &key))).expect("PEM files load");
    tls_config(None).expect("a self-signed certificate is made");
    let swapped = tls_config(Some(&files(&key, &cert))).unwrap_err();
    assert!(matches!(swapped, ApiError::BadTlsFile { .. }), "{swapped}");
    let missing = tls_config(Some(&files(&dir.join("nope.crt"), &key))).unwrap_err();
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
