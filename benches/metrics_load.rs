//! The metrics API under load, as a cluster's HPAs and dashboards read it: `spillway serve`
//! (release) with 1,000 triggers polled every 5 s (500 Prometheus queries against the harness
//! Prometheus, 500 cron windows), read straight over TLS with the front proxy's client
//! certificate and `X-Remote-User` headers (what kube-apiserver's aggregator sends), by 200
//! concurrent clients, each on its own connection, each GET naming one ScaledObject by label
//! selector as the HPA does. All clients come from 127.0.0.1, so the per-client connection cap
//! is raised to 250 for the run (kube-apiserver, the real client, multiplexes over HTTP/2).
//!
//! Two runs: a fixed rate of 10,000 requests per second for 20 s, open loop (latency counted
//! from when each request was due, so a stall is not hidden by the clients waiting on it),
//! then saturation (every client sends as fast as answers come, 10 s). Figures only.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::k8s::{self, Spillway};
use serde_json::json;

const SCALED_OBJECTS: usize = 1_000;
const CLIENTS: usize = 200;
const RATE: u64 = 10_000;
const FIXED_RATE_FOR: Duration = Duration::from_secs(20);
const SATURATION_FOR: Duration = Duration::from_secs(10);

fn config(ns: &str, prometheus: &str, metrics_port: u16) -> String {
    let mut text = format!(
        "server:\n  listen: 127.0.0.1:{}\n  metricsListen: 127.0.0.1:{metrics_port}\n  maxConnectionsPerClient: 250\n  tls:\n    certFile: {}\n    keyFile: {}\npollingInterval: 5\nscaledObjects:\n",
        k8s::spillway_port(),
        k8s::pki("spillway-serving.crt").display(),
        k8s::pki("spillway-serving.key").display(),
    );
    for i in 0..SCALED_OBJECTS {
        let trigger = if i % 2 == 0 {
            format!(
                "prometheus: {{serverAddress: \"{prometheus}\", query: \"vector({i})\", threshold: 10}}"
            )
        } else {
            "cron: {timezone: UTC, start: \"0 0 * * *\", end: \"59 23 * * *\", desiredReplicas: 3}"
                .to_owned()
        };
        text.push_str(&format!(
            "  - name: so-{i}\n    namespace: {ns}\n    triggers:\n      - {trigger}\n"
        ));
    }
    text
}

struct Summary {
    latencies: Vec<Duration>,
    errors: u64,
    elapsed: Duration,
}

impl Summary {
    fn print(mut self, name: &str) {
        self.latencies.sort();
        let n = self.latencies.len();
        let at = |q: f64| {
            self.latencies
                .get(((n as f64 - 1.0) * q).round() as usize)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
        };
        println!(
            "{name:<34} {:>8.0} req/s  n={n:<7} errors={:<5} p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms",
            n as f64 / self.elapsed.as_secs_f64(),
            self.errors,
            at(0.5),
            at(0.9),
            at(0.99),
            at(0.999),
            at(1.0),
        );
    }
}

/// Runs every client for `length`; `rate` per second over all clients, or as fast as answers
/// come when `None`.
async fn load(urls: Arc<Vec<String>>, rate: Option<u64>, length: Duration) -> Summary {
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = k8s::direct_client(Some("front-proxy-client"));
        let (urls, errors) = (urls.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            // Each client spreads its share of the rate evenly, offset from the others.
            let period = rate.map(|r| Duration::from_secs_f64(CLIENTS as f64 / r as f64));
            let offset = period.map_or(Duration::ZERO, |p| p.mul_f64(c as f64 / CLIENTS as f64));
            let mut k: u32 = 0;
            loop {
                let due = match period {
                    Some(period) => start + offset + period * k,
                    None => Instant::now().max(start),
                };
                if due >= start + length {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let url = &urls[(c * 7919 + k as usize * 31) % urls.len()];
                let ok = match client
                    .get(url)
                    .header("X-Remote-User", "bench-hpa")
                    .header("X-Remote-Group", "system:authenticated")
                    .send()
                    .await
                {
                    Ok(response) => {
                        response.status() == 200
                            && response.bytes().await.is_ok_and(|b| !b.is_empty())
                    }
                    Err(_) => false,
                };
                if ok {
                    latencies.push(due.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                k += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    // Answers per second as achieved: when the rate cannot be held, the last answers come
    // after `length`, and so does the end of the run.
    Summary {
        latencies,
        errors: errors.load(Ordering::Relaxed),
        elapsed: start.elapsed().max(length),
    }
}

#[tokio::main]
async fn main() {
    let admin = k8s::admin().await;
    k8s::install_spillway_access(&admin).await;
    let ns = k8s::namespace(&admin, "bench-load").await;
    // A user outside system:masters, so spillway's SubjectAccessReview cache is on the path.
    k8s::apply(
        &admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "bench-metrics-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:controller:horizontal-pod-autoscaler"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bench-hpa"}]}),
    )
    .await;
    let metrics_port = common::free_port();
    let path = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("bench-load")));
    std::fs::write(
        &path,
        config(
            &ns,
            &common::endpoint("SPILLWAY_PROMETHEUS_URL"),
            metrics_port,
        ),
    )
    .unwrap();
    let spillway = Spillway::start_with(path.clone()).await;
    let config = spillway::config::Config::load(&path).unwrap();
    let urls: Vec<String> = spillway::registry::catalog(&config.triggers())
        .into_iter()
        .map(|source| {
            format!(
                "https://127.0.0.1:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{}?labelSelector=scaledobject.spillway.dev%2Fname%3D{}",
                k8s::spillway_port(),
                source.metric,
                source.id.scaled_object
            )
        })
        .collect();
    let urls = Arc::new(urls);
    // Every trigger polled once, and every client's connection and the SAR cache warm.
    let probe = k8s::direct_client(Some("front-proxy-client"));
    common::eventually(
        "all 1,000 metrics to answer",
        Duration::from_secs(60),
        || async {
            for url in urls.iter() {
                let response = probe
                    .get(url)
                    .header("X-Remote-User", "bench-hpa")
                    .header("X-Remote-Group", "system:authenticated")
                    .send()
                    .await
                    .ok()?;
                if response.status() != 200 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    load(urls.clone(), Some(1_000), Duration::from_secs(2)).await;

    println!(
        "metrics API under load: {SCALED_OBJECTS} triggers polled every 5 s, {CLIENTS} clients with the front-proxy certificate, one connection each"
    );
    load(urls.clone(), Some(RATE), FIXED_RATE_FOR)
        .await
        .print("fixed rate 10,000 req/s, 20 s");
    load(urls.clone(), None, SATURATION_FOR)
        .await
        .print("saturation, 10 s");
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed_polls: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("spillway_poll_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!("poll errors during the run: {failed_polls}");
    drop(spillway);
    let _ = std::fs::remove_file(&path);
}
