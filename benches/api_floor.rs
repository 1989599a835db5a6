//! The metrics API against its floor: `spillway serve` (release) answering one cached cron
//! trigger, next to a bare axum + hyper + rustls server built in the same run (this bench's
//! own binary, started again as a child process) that answers one fixed
//! `ExternalMetricValueList` with the same rustls server config (spillway's `tls_config`:
//! same certificate, versions, ciphers, ALPN). Both get the same load from the same lean
//! load generator (`support/http_load.rs`, one thread, HTTP/1.1 keep-alive, raw requests):
//!
//! - saturation: 16 connections each sending as soon as its last answer is in, 10 s per
//!   server, run as floor, spillway, spillway, floor for 5 s each so drift weighs on both;
//! - a fixed 10,000 requests per second, open loop, 16 connections, 10 s: p50/p99;
//!
//! first without authentication (`--no-auth`; the floor asks for no certificate), then with
//! the aggregator's front-proxy authentication: the client presents the front-proxy client
//! certificate and sends `X-Remote-User`/`X-Remote-Group`; spillway authenticates it against
//! the control plane's `extension-apiserver-authentication` and authorizes the user by
//! (cached) SubjectAccessReview; the floor's TLS verifies the certificate against the
//! front-proxy CA and its handler only checks that `X-Remote-User` is there. Each measurement
//! runs `SPILLWAY_FLOOR_ROUNDS` times (default 2), floor and spillway alternating. When `wrk`
//! is installed, its saturation figure (1 thread, 16 connections, no client certificate)
//! is printed beside ours for the runs without authentication. Figures only.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/floor.rs"]
mod floor;
#[path = "support/http_load.rs"]
mod http_load;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::k8s;
use serde_json::json;

const CONNECTIONS: usize = 16;
const RATE: u64 = 10_000;
const LENGTH: Duration = Duration::from_secs(10);
const NAMESPACE: &str = "bench-floor";
const USER: &str = "bench-hpa";

fn main() {
    if floor::serve_from_env() {
        return;
    }
    let rounds: usize = std::env::var("SPILLWAY_FLOOR_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Spillway's kube client (authentication) may ask for SubjectAccessReviews; bench-hpa is
    // a user outside system:masters, bound to the HPA controller's role.
    runtime.block_on(async {
        let admin = k8s::admin().await;
        k8s::install_spillway_access(&admin).await;
        k8s::apply(
            &admin,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "bench-metrics-reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:controller:horizontal-pod-autoscaler"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]}),
        )
        .await;
    });
    println!(
        "metrics API against its floor: one cached trigger, {CONNECTIONS} HTTP/1.1 keep-alive connections from one load thread, {} s per run, {rounds} rounds",
        LENGTH.as_secs()
    );
    let mut table = Vec::new();
    for auth in [false, true] {
        let mode = if auth { "front-proxy auth" } else { "no auth" };
        let floor_port = common::free_port();
        let spillway_port = common::free_port();
        let config = spillway_config(spillway_port);
        let _floor = Server::floor(floor_port, auth);
        let _spillway = Server::spillway(&config, auth);
        let metric = spillway::registry::catalog(
            &spillway::config::Config::load(&config).unwrap().triggers(),
        )[0]
        .metric
        .clone();
        let path = format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/{metric}?labelSelector=scaledobject.spillway.dev%2Fname%3Dso-0"
        );
        let pki = |name: &str| k8s::pki(name);
        let tls = http_load::client_config(
            &pki("ca.crt"),
            auth.then(|| (pki("front-proxy-client.crt"), pki("front-proxy-client.key")))
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
        );
        let headers: &[(&str, &str)] = if auth {
            &[
                ("X-Remote-User", USER),
                ("X-Remote-Group", "system:authenticated"),
            ]
        } else {
            &[]
        };
        let target = |port: u16| {
            http_load::Target::new(
                SocketAddr::from(([127, 0, 0, 1], port)),
                Arc::clone(&tls),
                std::slice::from_ref(&path),
                headers,
            )
        };
        let (floor_target, spillway_target) = (target(floor_port), target(spillway_port));
        runtime.block_on(async {
            http_load::wait_ready(&floor_target, Duration::from_secs(30)).await;
            http_load::wait_ready(&spillway_target, Duration::from_secs(60)).await;
        });
        // Warm both (SubjectAccessReview cache, allocator, CPU frequency).
        http_load::run(&floor_target, CONNECTIONS, None, Duration::from_secs(2), 1);
        http_load::run(
            &spillway_target,
            CONNECTIONS,
            None,
            Duration::from_secs(2),
            1,
        );
        println!("-- {mode}");
        let mut saturation = (Vec::new(), Vec::new());
        let mut fixed = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            println!("   load: {}", load_average());
            // Floor, spillway, spillway, floor, half a run each: a machine that speeds up or
            // slows down during the round (CPU frequency, neighbours) weighs on both alike.
            let mut rates = [0.0, 0.0];
            for (side, name, target) in [
                (0, "floor", &floor_target),
                (1, "spillway", &spillway_target),
                (1, "spillway", &spillway_target),
                (0, "floor", &floor_target),
            ] {
                let summary = http_load::run(target, CONNECTIONS, None, LENGTH / 2, 1);
                println!(
                    "{}",
                    summary.line(&format!("{mode}, {name}, saturation, round {round}"))
                );
                rates[side] += summary.rate() / 2.0;
            }
            saturation.0.push(rates[0]);
            saturation.1.push(rates[1]);
            for (name, target, p99s) in [
                ("floor", &floor_target, &mut fixed.0),
                ("spillway", &spillway_target, &mut fixed.1),
            ] {
                let summary = http_load::run(target, CONNECTIONS, Some(RATE), LENGTH, 1);
                println!(
                    "{}",
                    summary.line(&format!("{mode}, {name}, 10,000 req/s, round {round}"))
                );
                p99s.push((
                    summary.quantile_ms(0.5),
                    summary.quantile_ms(0.99),
                    summary.errors,
                ));
            }
            if !auth
                && let Some((floor, spillway)) =
                    wrk_floor_then_spillway(floor_port, spillway_port, &path)
            {
                println!(
                    "{mode}, wrk -t1 -c{CONNECTIONS}, {} s each, round {round}: floor {floor:.0} req/s, spillway {spillway:.0} req/s, {:.2}x",
                    LENGTH.as_secs(),
                    spillway / floor
                );
            }
        }
        table.push((mode, saturation, fixed));
        let _ = std::fs::remove_file(&config);
    }
    println!();
    println!(
        "| authentication | round | floor req/s | spillway req/s | spillway/floor | floor p50/p99 at 10k req/s | spillway p50/p99 at 10k req/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (mode, saturation, fixed) in table {
        for round in 0..saturation.0.len() {
            let (f, s) = (saturation.0[round], saturation.1[round]);
            let (fp, sp) = (fixed.0[round], fixed.1[round]);
            println!(
                "| {mode} | {} | {f:.0} | {s:.0} | {:.2}x | {:.2} / {:.2} ms ({} errors) | {:.2} / {:.2} ms ({} errors) |",
                round + 1,
                s / f,
                fp.0,
                fp.1,
                fp.2,
                sp.0,
                sp.1,
                sp.2
            );
        }
    }
}

/// A spillway config serving one cron trigger (always active, so always a cached value).
fn spillway_config(port: u16) -> PathBuf {
    let text = format!(
        "server:\n  listen: 127.0.0.1:{port}\n  metricsListen: 127.0.0.1:{}\n  tls:\n    certFile: {}\n    keyFile: {}\npollingInterval: 5\nscaledObjects:\n  - name: so-0\n    namespace: {NAMESPACE}\n    triggers:\n      - cron: {{timezone: UTC, start: \"0 0 * * *\", end: \"59 23 * * *\", desiredReplicas: 3}}\n",
        common::free_port(),
        k8s::pki("spillway-serving.crt").display(),
        k8s::pki("spillway-serving.key").display(),
    );
    let path = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("bench-floor")));
    std::fs::write(&path, text).unwrap();
    path
}

/// A server process, killed when dropped.
struct Server(Child);

impl Server {
    fn floor(port: u16, auth: bool) -> Self {
        Self(floor::start(port, auth))
    }

    fn spillway(config: &std::path::Path, auth: bool) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_spillway"));
        command
            .env(common::ALLOW_LOOPBACK.0, common::ALLOW_LOOPBACK.1)
            .env("RUST_LOG", "warn")
            .args(["serve", "--config"])
            .arg(config)
            .stdin(Stdio::null());
        if auth {
            command
                .arg("--kubeconfig")
                .arg(k8s::k8s_dir().join("spillway-client.kubeconfig"));
        } else {
            command.arg("--no-auth");
        }
        Self(command.spawn().expect("start spillway serve"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `wrk`'s requests per second at saturation against the floor and spillway, when wrk is
/// installed, in the same floor, spillway, spillway, floor order as our own load.
fn wrk_floor_then_spillway(floor_port: u16, spillway_port: u16, path: &str) -> Option<(f64, f64)> {
    let floor = wrk(floor_port, path)?;
    let spillway = wrk(spillway_port, path)? + wrk(spillway_port, path)?;
    Some(((floor + wrk(floor_port, path)?) / 2.0, spillway / 2.0))
}

/// `wrk`'s requests per second at saturation against `port` for half a run.
fn wrk(port: u16, path: &str) -> Option<f64> {
    let output = Command::new("wrk")
        .args([
            "-t1".to_owned(),
            format!("-c{CONNECTIONS}"),
            format!("-d{}s", (LENGTH / 2).as_secs()),
            format!("https://127.0.0.1:{port}{path}"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") {
        println!("wrk got errors from port {port}:\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
