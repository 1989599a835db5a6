//! The metrics API under load, as a cluster's HPAs and dashboards read it: `spillway serve`
//! (release) with 1,000 triggers polled every 5 s (500 Prometheus queries against the harness
//! Prometheus, 500 cron windows), read straight over TLS with the front proxy's client
//! certificate and `X-Remote-User` headers (what kube-apiserver's aggregator sends), by 200
//! concurrent clients, each on its own HTTP/1.1 keep-alive connection, each GET naming one
//! ScaledObject by label selector as the HPA does. All clients come from 127.0.0.1, so the
//! per-client connection cap is raised to 250 for the run (kube-apiserver, the real client,
//! multiplexes over HTTP/2).
//!
//! The clients are the lean load generator of `support/http_load.rs` on one thread (raw
//! requests over tokio-rustls; reqwest, used here before, took more CPU than the server and
//! capped the figures at about 6,000 requests per second). Two runs, each twice: a fixed rate
//! of 10,000 requests per second for 20 s, open loop (latency counted from when each request
//! was due, so a stall is not hidden by the clients waiting on it), then saturation (every
//! client sends as fast as answers come, 10 s). Each run goes first to the floor
//! (`support/floor.rs`: a bare axum + rustls server with the same TLS setup and front-proxy
//! certificate check, answering a fixed list), started beside spillway while spillway polls,
//! so the table shows what this machine allows any server under the same load. Figures only.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/floor.rs"]
mod floor;
#[path = "support/http_load.rs"]
mod http_load;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::k8s;
use serde_json::json;

const SCALED_OBJECTS: usize = 1_000;
const CLIENTS: usize = 200;
const RATE: u64 = 10_000;
const FIXED_RATE_FOR: Duration = Duration::from_secs(20);
const SATURATION_FOR: Duration = Duration::from_secs(10);

fn config(ns: &str, prometheus: &str, port: u16, metrics_port: u16) -> String {
    let mut text = format!(
        "server:\n  listen: 127.0.0.1:{port}\n  metricsListen: 127.0.0.1:{metrics_port}\n  maxConnectionsPerClient: 250\n  tls:\n    certFile: {}\n    keyFile: {}\npollingInterval: 5\nscaledObjects:\n",
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

fn main() {
    if floor::serve_from_env() {
        return;
    }
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run_bench());
}

async fn run_bench() {
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
    let (port, metrics_port) = (common::free_port(), common::free_port());
    let path = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("bench-load")));
    std::fs::write(
        &path,
        config(
            &ns,
            &common::endpoint("SPILLWAY_PROMETHEUS_URL"),
            port,
            metrics_port,
        ),
    )
    .unwrap();
    let mut spillway = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .env(common::ALLOW_LOOPBACK.0, common::ALLOW_LOOPBACK.1)
        .env("RUST_LOG", "warn")
        .args(["serve", "--config"])
        .arg(&path)
        .arg("--kubeconfig")
        .arg(k8s::k8s_dir().join("spillway-client.kubeconfig"))
        .spawn()
        .expect("start spillway serve");
    let config = spillway::config::Config::load(&path).unwrap();
    let paths: Vec<String> = spillway::registry::catalog(&config.triggers())
        .into_iter()
        .map(|source| {
            format!(
                "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{}?labelSelector=scaledobject.spillway.dev%2Fname%3D{}",
                source.metric, source.id.scaled_object
            )
        })
        .collect();
    let tls = http_load::client_config(
        &k8s::pki("ca.crt"),
        Some((
            &k8s::pki("front-proxy-client.crt"),
            &k8s::pki("front-proxy-client.key"),
        )),
    );
    let headers = [
        ("X-Remote-User", "bench-hpa"),
        ("X-Remote-Group", "system:authenticated"),
    ];
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Every trigger polled once: each path answers 200.
    for path in &paths {
        let one =
            http_load::Target::new(addr, Arc::clone(&tls), std::slice::from_ref(path), &headers);
        http_load::wait_ready(&one, Duration::from_secs(60)).await;
    }
    // The floor under the same load, while spillway runs and polls beside it: what this
    // machine allows any server.
    let floor_port = common::free_port();
    let mut floor_server = floor::start(floor_port, true);
    let floor_target = http_load::Target::new(
        SocketAddr::from(([127, 0, 0, 1], floor_port)),
        Arc::clone(&tls),
        &paths,
        &headers,
    );
    http_load::wait_ready(&floor_target, Duration::from_secs(30)).await;
    let target = http_load::Target::new(addr, tls, &paths, &headers);
    let run = |target: &http_load::Target, rate, length| {
        let target = target.clone();
        tokio::task::spawn_blocking(move || http_load::run(&target, CLIENTS, rate, length, 1))
    };
    // Connections, the SubjectAccessReview cache and the allocator warm.
    run(&floor_target, Some(1_000), Duration::from_secs(2))
        .await
        .unwrap();
    run(&target, Some(1_000), Duration::from_secs(2))
        .await
        .unwrap();

    println!(
        "metrics API under load: {SCALED_OBJECTS} triggers polled every 5 s, {CLIENTS} clients with the front-proxy certificate, one keep-alive connection each, one load thread"
    );
    let mut table = Vec::new();
    for round in 1..=2 {
        println!("load average: {}", load_average());
        let mut row = Vec::new();
        for (name, server) in [("floor", &floor_target), ("spillway", &target)] {
            let fixed = run(server, Some(RATE), FIXED_RATE_FOR).await.unwrap();
            println!(
                "{}",
                fixed.line(&format!(
                    "{name}, fixed rate 10,000 req/s, 20 s, round {round}"
                ))
            );
            row.push((
                fixed.quantile_ms(0.5),
                fixed.quantile_ms(0.99),
                fixed.errors,
            ));
        }
        for (name, server) in [("floor", &floor_target), ("spillway", &target)] {
            let saturation = run(server, None, SATURATION_FOR).await.unwrap();
            println!(
                "{}",
                saturation.line(&format!("{name}, saturation, 10 s, round {round}"))
            );
            row.push((
                saturation.rate(),
                saturation.quantile_ms(0.99),
                saturation.errors,
            ));
        }
        table.push(row);
    }
    println!();
    println!(
        "| round | 10,000 req/s p50 / p99, floor | spillway | errors | saturation req/s, floor | spillway |"
    );
    println!("|---|---|---|---|---|---|");
    for (round, row) in table.iter().enumerate() {
        println!(
            "| {} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {} / {} | {:.0} | {:.0} |",
            round + 1,
            row[0].0,
            row[0].1,
            row[1].0,
            row[1].1,
            row[0].2,
            row[1].2,
            row[2].0,
            row[3].0
        );
    }
    let _ = floor_server.kill();
    let _ = floor_server.wait();
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
    // A sum of no lines is -0.
    println!("poll errors during the run: {}", failed_polls + 0.0);
    let _ = spillway.kill();
    let _ = spillway.wait();
    let _ = std::fs::remove_file(&path);
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
