//! Latency of one external-metrics GET, on the local control plane (`make services-up`):
//! through kube-apiserver's aggregator as the HPA reads it, straight to spillway with the
//! front proxy's certificate, and, as the baseline, kube-apiserver serving one of its own
//! objects (a ConfigMap GET from etcd's watch cache).
//!
//! `cargo bench --bench metrics_api` prints percentiles; nothing is asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::k8s::{self, Spillway};
use serde_json::json;

const REQUESTS: usize = 500;

fn summary(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<58} n={:<4} p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms",
        samples.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    );
    at(0.5)
}

async fn time<F, Fut>(mut request: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Warm connections and caches (TokenReview/SAR) first; they are not what is measured.
    for _ in 0..20 {
        request().await;
    }
    let mut samples = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let start = Instant::now();
        request().await;
        samples.push(start.elapsed());
    }
    samples
}

#[tokio::main]
async fn main() {
    let admin = k8s::admin().await;
    k8s::install_spillway_access(&admin).await;
    let ns = k8s::namespace(&admin, "bench").await;
    let spillway = Spillway::start(&format!(
        "  - name: nightly\n    namespace: {ns}\n    triggers:\n      - cron: {{timezone: UTC, start: \"0 0 * * *\", end: \"0 23 * * *\", desiredReplicas: 3}}\n"
    ))
    .await;
    k8s::register_api_service(&admin, "external.metrics.k8s.io", "v1beta1").await;
    k8s::wait_available(
        &admin,
        "v1beta1.external.metrics.k8s.io",
        Duration::from_secs(60),
    )
    .await;
    let config = spillway::config::Config::load(&spillway.config).unwrap();
    let metric = spillway::registry::catalog(&config.triggers())[0]
        .metric
        .clone();
    let path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}");
    k8s::apply(
        &admin,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "baseline", "namespace": ns}, "data": {"a": "b"}}),
    )
    .await;
    let baseline_path = format!("/api/v1/namespaces/{ns}/configmaps/baseline");

    println!(
        "one GET, sequential, {REQUESTS} requests after 20 warm-up, local control plane and spillway on loopback"
    );
    let baseline = summary(
        "kube-apiserver, its own ConfigMap (baseline)",
        time(|| async {
            let (code, _) = k8s::get_raw(&admin, &baseline_path).await;
            assert_eq!(code, 200);
        })
        .await,
    );
    let aggregated = summary(
        "kube-apiserver -> aggregator -> spillway (external metric)",
        time(|| async {
            let (code, body) = k8s::get_raw(&admin, &path).await;
            assert_eq!(code, 200, "{body}");
        })
        .await,
    );
    let url = format!("https://127.0.0.1:{}{path}", k8s::spillway_port());
    let proxy = k8s::direct_client(Some("front-proxy-client"));
    // A user outside system:masters, so spillway's SubjectAccessReview cache is on the path.
    k8s::apply(
        &admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "bench-metrics-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:controller:horizontal-pod-autoscaler"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bench-hpa"}]}),
    )
    .await;
    let direct = summary(
        "spillway direct, front-proxy cert, SAR cached (user bench-hpa)",
        time(|| async {
            let response = proxy
                .get(&url)
                .header("X-Remote-User", "bench-hpa")
                .header("X-Remote-Group", "system:authenticated")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        })
        .await,
    );
    println!(
        "aggregated metric GET / baseline GET at p50: {:.2}x; spillway's own share at p50: {:.2} ms",
        aggregated.as_secs_f64() / baseline.as_secs_f64(),
        direct.as_secs_f64() * 1e3
    );
    drop(spillway);
}
