//! End to end on a real control plane (etcd, kube-apiserver with its aggregator,
//! kube-controller-manager with its HPA controller; `scripts/k8s.sh`) and a real Kafka:
//! spillway registered through an APIService serves a backlog's lag, an autoscaling/v2 HPA
//! scales a Deployment from it, callers without rights are refused, and a restart of
//! spillway is survived.
//!
//! The tests share one APIService and one port, so they run one at a time.

mod common;

use std::time::Duration;

use common::k8s::{self, Spillway};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::json;
use tokio::sync::Mutex;

/// One test at a time: they share the APIService and spillway's port.
static SERIAL: Mutex<()> = Mutex::const_new(());

const EXTERNAL: &str = "v1beta1.external.metrics.k8s.io";
const LABEL: &str = "scaledobject.spillway.dev/name";

/// The served name of trigger 0 of the first scaled object in spillway's config.
fn metric_name(spillway: &Spillway) -> String {
    let config = spillway::config::Config::load(&spillway.config).expect("config");
    spillway::registry::catalog(&config.triggers())[0]
        .metric
        .clone()
}

/// A topic of 3 partitions holding `counts` records, and a group committed at 0 on each.
async fn kafka_backlog(counts: &[i64]) -> (String, String) {
    let topic = common::kafka::create_topic(counts.len() as i32).await;
    common::kafka::produce(&topic, counts, Duration::ZERO).await;
    let group = common::unique_name("e2e-group");
    let offsets: Vec<(&str, i32, i64)> = (0..counts.len() as i32)
        .map(|p| (topic.as_str(), p, 0))
        .collect();
    common::kafka::commit(&group, &offsets);
    (topic, group)
}

async fn start_registered(scaled_objects: &str) -> (kube::Client, Spillway) {
    let admin = k8s::admin().await;
    k8s::install_spillway_access(&admin).await;
    let spillway = Spillway::start(scaled_objects).await;
    k8s::register_api_service(&admin, "external.metrics.k8s.io", "v1beta1").await;
    k8s::wait_available(&admin, EXTERNAL, Duration::from_secs(60)).await;
    (admin, spillway)
}

async fn replicas(deployments: &Api<Deployment>, name: &str) -> i32 {
    deployments
        .get(name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas
        .unwrap_or(1)
}

#[tokio::test]
async fn an_hpa_scales_a_deployment_from_kafka_lag_served_through_the_aggregator() {
    let _serial = SERIAL.lock().await;
    // 45 records behind the group: with a target of 10 per replica the HPA's formula gives
    // ceil(45 / 10) = 5 replicas. allowIdleConsumers lifts KEDA's cap of one replica per
    // partition (3 here), which would otherwise serve 30.
    let (topic, group) = kafka_backlog(&[20, 15, 10]).await;
    let admin = k8s::admin().await;
    let ns = k8s::namespace(&admin, "e2e-hpa").await;
    let bootstrap = common::kafka::bootstrap();
    let (admin, spillway) = start_registered(&format!(
        "  - name: orders\n    namespace: {ns}\n    triggers:\n      - kafka: {{bootstrapServers: \"{bootstrap}\", consumerGroup: {group}, topic: {topic}, lagThreshold: 10, allowIdleConsumers: true}}\n"
    ))
    .await;
    let metric = metric_name(&spillway);
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector={LABEL}%3Dorders"
    );

    // Through kube-apiserver, as the HPA controller reads it.
    let (code, body) = k8s::get_raw(&admin, &path).await;
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "ExternalMetricValueList", "{body}");
    assert_eq!(list["items"][0]["value"], "45", "{body}");
    assert_eq!(list["items"][0]["metricLabels"][LABEL], "orders", "{body}");

    // The same with the kubectl built from the same release.
    let kubectl = k8s::k8s_dir().join("bin/kubectl");
    let output = std::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(k8s::k8s_dir().join("admin.kubeconfig"))
        .args(["get", "--raw", &path])
        .output()
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl get --raw: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(list["items"][0]["value"], "45");

    // kube-controller-manager's own HPA controller scales a Deployment from it. Without a
    // kubelet the pods stay Pending, but the ReplicaSet reports them, which is all the
    // AverageValue formula needs.
    k8s::apply(
        &admin,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "orders-consumer", "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "orders-consumer"}},
                "template": {"metadata": {"labels": {"app": "orders-consumer"}},
                    "spec": {"containers": [{"name": "consumer", "image": "registry.k8s.io/pause:3.10"}]}}}}),
    )
    .await;
    k8s::apply(
        &admin,
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "orders-consumer", "namespace": ns},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders-consumer"},
                "minReplicas": 1, "maxReplicas": 10,
                "metrics": [{"type": "External", "external": {
                    "metric": {"name": metric, "selector": {"matchLabels": {LABEL: "orders"}}},
                    "target": {"type": "AverageValue", "averageValue": "10"}}}]}}),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    common::eventually(
        "the HPA to scale orders-consumer to ceil(45/10) = 5",
        Duration::from_secs(90),
        || async { (replicas(&deployments, "orders-consumer").await == 5).then_some(()) },
    )
    .await;

    // spillway goes away: the APIService turns unavailable and the HPA holds (a missing
    // metric never scales down).
    let config = spillway.kill();
    common::eventually(
        "the APIService to notice spillway is gone",
        Duration::from_secs(60),
        || async {
            let condition = k8s::api_service_available(&admin, EXTERNAL).await?;
            (condition.0 == "False").then_some(())
        },
    )
    .await;
    // More backlog while spillway is down: 75 behind, so 8 replicas once it is back.
    common::kafka::produce(&topic, &[10, 10, 10], Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        replicas(&deployments, "orders-consumer").await,
        5,
        "the HPA must hold while the metric is unavailable"
    );

    let _spillway = Spillway::start_with(config).await;
    k8s::wait_available(&admin, EXTERNAL, Duration::from_secs(60)).await;
    common::eventually(
        "the HPA to recover and scale to ceil(75/10) = 8",
        Duration::from_secs(90),
        || async { (replicas(&deployments, "orders-consumer").await == 8).then_some(()) },
    )
    .await;
    common::kafka::delete_topic(&topic).await;
}

#[tokio::test]
async fn callers_without_rights_are_refused_and_front_proxy_headers_need_the_proxy_cert() {
    let _serial = SERIAL.lock().await;
    let admin = k8s::admin().await;
    let ns = k8s::namespace(&admin, "e2e-auth").await;
    // A cron trigger always has a value: a metric to be allowed or refused.
    let (admin, spillway) = start_registered(&format!(
        "  - name: nightly\n    namespace: {ns}\n    triggers:\n      - cron: {{timezone: UTC, start: \"0 0 * * *\", end: \"0 23 * * *\", desiredReplicas: 3}}\n"
    ))
    .await;
    let metric = metric_name(&spillway);
    let path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}");

    // Through kube-apiserver: a user with no rights is refused before the request is proxied.
    let nobody = k8s::client_as("nobody").await;
    let (code, message) = k8s::get_raw(&nobody, &path).await;
    assert_eq!(code, 403, "{message}");
    let (code, body) = k8s::get_raw(&admin, &path).await;
    assert_eq!(code, 200, "{body}");

    // Directly: spillway authenticates and authorizes by itself.
    let url = format!("https://127.0.0.1:{}{path}", k8s::spillway_port());
    let anonymous = k8s::direct_client(None).get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let status: serde_json::Value = anonymous.json().await.unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");

    // The front proxy's certificate makes X-Remote-User the identity, which SAR then checks.
    let proxy = k8s::direct_client(Some("front-proxy-client"));
    let refused = proxy
        .get(&url)
        .header("X-Remote-User", "spillway-test-nobody")
        .header("X-Remote-Group", "system:authenticated")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let status: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(status["reason"], "Forbidden");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains(&metric) && message.contains("spillway-test-nobody"),
        "{message}"
    );
    let allowed = proxy
        .get(&url)
        .header("X-Remote-User", "spillway-test-admin")
        .header("X-Remote-Group", "system:masters")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);

    // A client-CA certificate is its own identity: the same headers change nothing.
    let impostor = k8s::direct_client(Some("nobody"))
        .get(&url)
        .header("X-Remote-User", "spillway-test-admin")
        .header("X-Remote-Group", "system:masters")
        .send()
        .await
        .unwrap();
    assert_eq!(impostor.status(), 403);

    // A certificate from a CA nobody configured does not get through the handshake.
    let stranger = k8s::direct_client(Some("stranger")).get(&url).send().await;
    assert!(
        stranger.is_err(),
        "a stranger CA's certificate must be refused: {stranger:?}"
    );

    // Bearer tokens go through TokenReview: a service account without rights is refused, one
    // granted `list` on the metric is served.
    let token = |sa: &'static str| {
        let admin = admin.clone();
        let ns = ns.clone();
        async move {
            k8s::apply(
                &admin,
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}}),
            )
            .await;
            let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                Api::namespaced(admin.clone(), &ns);
            let request = k8s_openapi::api::authentication::v1::TokenRequest {
                spec: k8s_openapi::api::authentication::v1::TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(600),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer: k8s_openapi::api::authentication::v1::TokenRequest = api
                .create_subresource("token", sa, &Default::default(), &request)
                .await
                .expect("TokenRequest");
            answer.status.unwrap().token
        }
    };
    let no_rights = token("reader-without-rights").await;
    let direct = k8s::direct_client(None);
    let refused = direct
        .get(&url)
        .bearer_auth(&no_rights)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let bad = direct
        .get(&url)
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);

    let reader = token("metrics-reader").await;
    k8s::apply(
        &admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "metrics-reader", "namespace": ns},
            "rules": [{"apiGroups": ["external.metrics.k8s.io"], "resources": ["*"], "verbs": ["list"]}]}),
    )
    .await;
    k8s::apply(
        &admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "metrics-reader", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "metrics-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "metrics-reader", "namespace": ns}]}),
    )
    .await;
    let served = direct.get(&url).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(served.status(), 200);
    let list: serde_json::Value = served.json().await.unwrap();
    assert_eq!(list["items"][0]["metricName"], metric.as_str());

    // The aggregator merges spillway's OpenAPI documents into kube-apiserver's.
    // On a kube-apiserver started moments ago the aggregator merges it a little later.
    let url = common::eventually(
        "kube-apiserver's /openapi/v3 to list external.metrics.k8s.io",
        Duration::from_secs(90),
        || async {
            let v3: serde_json::Value =
                serde_json::from_str(&k8s::get_raw(&admin, "/openapi/v3").await.1).ok()?;
            v3["paths"]["apis/external.metrics.k8s.io/v1beta1"]["serverRelativeURL"]
                .as_str()
                .map(str::to_owned)
        },
    )
    .await;
    let (code, document) = k8s::get_raw(&admin, &url).await;
    assert_eq!(code, 200, "{document}");
    assert!(document.contains("ExternalMetricValueList"), "{document}");
    common::eventually(
        "kube-apiserver's /openapi/v2 to include spillway's paths",
        Duration::from_secs(90),
        || async {
            let (_, v2) = k8s::get_raw(&admin, "/openapi/v2").await;
            v2.contains("/apis/external.metrics.k8s.io/v1beta1/namespaces/")
                .then_some(())
        },
    )
    .await;

    // Health stays open to probes without credentials.
    let health = direct
        .get(format!(
            "https://127.0.0.1:{}/healthz",
            k8s::spillway_port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
