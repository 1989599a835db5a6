//! What any pod that reaches spillway's ports can make it do, bounded: connections over the cap
//! are closed at once, an HTTP/2 connection without streams is closed after the idle timeout,
//! `/metrics` cuts off a client that never finishes its headers, and a flood of random bearer
//! tokens costs kube-apiserver (the real one) at most the TokenReview rate, with concurrent
//! requests of one token sharing one review. Real sockets and the real control plane; reviews
//! are counted from spillway's own `/metrics`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::k8s;
use common::serve::Server;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts `spillway serve` with `server_extra` lines under `server:` (indented by 2), with auth
/// against the local control plane when `auth`; returns the process, API and metrics ports.
async fn start(name: &str, server_extra: &str, auth: bool) -> (Server, u16, u16) {
    let (port, metrics_port) = (common::free_port(), common::free_port());
    let config = std::env::temp_dir().join(format!("{}.yaml", common::unique_name(name)));
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: 127.0.0.1:{port}\n  metricsListen: 127.0.0.1:{metrics_port}\n{server_extra}pollingInterval: 1\nscaledObjects: []\n"
        ),
    )
    .unwrap();
    let server = if auth {
        let mut command = Command::new(env!("CARGO_BIN_EXE_spillway"));
        command
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--kubeconfig")
            .arg(k8s::k8s_dir().join("spillway-client.kubeconfig"))
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let server = Server(command.spawn().expect("start spillway serve"));
        common::eventually(
            "spillway to answer /healthz",
            Duration::from_secs(30),
            || async {
                let response = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
                    .await
                    .ok()?;
                response.status().is_success().then_some(())
            },
        )
        .await;
        server
    } else {
        common::serve::spawn(&config, port, None).await
    };
    (server, port, metrics_port)
}

/// The value of the sample whose name and labels are exactly `series`, 0 when absent.
async fn sample(metrics_port: u16, series: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A TCP connection to spillway on 127.0.0.1 from the loopback address `from`.
async fn connect_from(from: &str, port: u16) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(([127, 0, 0, 1], port).into()).await.unwrap()
}

#[tokio::test]
async fn connections_over_the_caps_are_closed_and_a_freed_place_serves_again() {
    let (_server, port, metrics_port) = start(
        "cap",
        "  maxConnections: 5\n  maxConnectionsPerClient: 3\n",
        false,
    )
    .await;
    let refused = |limit: &'static str| async move {
        sample(
            metrics_port,
            &format!("spillway_connections_refused_total{{server=\"api\",limit=\"{limit}\"}}"),
        )
        .await
    };
    // The start-up probe's connection is closed by the server after its answer; its place is
    // given back when that connection's task ends, a moment later on a busy machine.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Silent connections hold their places (each waits for its first byte): three from one
    // client fill its share; a fourth from it is accepted by the kernel and closed by spillway
    // before anything is read.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.1", port).await);
    }
    let mut fourth = connect_from("127.0.0.1", port).await;
    assert!(
        closed_within(&mut fourth, Duration::from_secs(5)).await,
        "a client over its cap kept a connection"
    );
    assert_eq!(refused("client").await, 1.0);
    // Another client takes the remaining two places; then the server is full for everyone.
    for _ in 0..2 {
        held.push(connect_from("127.0.0.2", port).await);
    }
    let mut sixth = connect_from("127.0.0.2", port).await;
    assert!(
        closed_within(&mut sixth, Duration::from_secs(5)).await,
        "a connection over the server's cap stayed open"
    );
    assert_eq!(refused("server").await, 1.0);
    held.truncate(2);
    let health = common::eventually(
        "a freed place to serve /healthz",
        Duration::from_secs(10),
        || async {
            let response = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
                .await
                .ok()?;
            response.text().await.ok()
        },
    )
    .await;
    assert_eq!(health, "ok");
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: a connection with no stream.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn an_http2_connection_without_streams_is_closed_after_the_idle_timeout() {
    let (_server, port, _) = start("idle", "  idleTimeoutSeconds: 2\n", false).await;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(H2_PREFACE).await.unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut stream, Duration::from_secs(15)).await,
        "an idle HTTP/2 connection stayed open for 15 s"
    );
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1900),
        "closed after {after:?}, before the idle timeout"
    );
    println!("idle HTTP/2 connection closed after {after:?} (idle timeout 2 s)");
}

#[tokio::test]
async fn metrics_cuts_off_a_client_that_never_finishes_its_headers() {
    let (_server, _, metrics_port) = start("slow-metrics", "", false).await;
    let mut stream = TcpStream::connect(("127.0.0.1", metrics_port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut stream, Duration::from_secs(20)).await,
        "/metrics kept a half-sent request open for 20 s"
    );
    println!(
        "/metrics closed a stalled request after {:?}",
        started.elapsed()
    );
    // Still serving others.
    assert!(sample(metrics_port, "spillway_leader").await >= 0.0);
}

/// `count` GETs with distinct random bearer tokens (or `same` for all), at most 50 at a
/// time; the HTTP codes answered.
async fn send_tokens(port: u16, count: usize, same: Option<&str>) -> Vec<u16> {
    let client = k8s::direct_client(None);
    let url = format!(
        "https://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/s0-nothing"
    );
    futures::stream::iter(0..count)
        .map(|i| {
            let token =
                same.map_or_else(|| common::unique_name(&format!("token{i}")), str::to_owned);
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("an answer")
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(50)
        .collect()
        .await
}

#[tokio::test]
async fn random_bearer_tokens_cost_kube_apiserver_at_most_the_review_rate() {
    let admin = k8s::admin().await;
    k8s::install_spillway_access(&admin).await;
    let tls = format!(
        "  tls: {{certFile: {}, keyFile: {}}}\n",
        k8s::pki("spillway-serving.crt").display(),
        k8s::pki("spillway-serving.key").display()
    );
    let (_server, port, metrics_port) = start("tokens", &tls, true).await;
    let reviews = |result: &'static str| async move {
        sample(
            metrics_port,
            &format!("spillway_token_reviews_total{{result=\"{result}\"}}"),
        )
        .await
    };

    let started = Instant::now();
    let codes = send_tokens(port, 1000, None).await;
    let took = started.elapsed().as_secs_f64();
    let reviewed = reviews("unauthenticated").await + reviews("error").await;
    let (unauthorized, limited) = (
        codes.iter().filter(|c| **c == 401).count(),
        codes.iter().filter(|c| **c == 429).count(),
    );
    println!(
        "1,000 random tokens in {took:.2} s: {reviewed} TokenReviews, {unauthorized} answered 401, {limited} answered 429"
    );
    assert_eq!(unauthorized + limited, 1000, "{codes:?}");
    // A burst of 40, then 20 a second.
    let bound = 40.0 + 20.0 * took + 1.0;
    assert!(
        reviewed >= 1.0 && reviewed <= bound,
        "{reviewed} reviews in {took:.2} s (bound {bound:.0})"
    );
    assert_eq!(reviewed as usize, unauthorized);
    let refused = sample(
        metrics_port,
        "spillway_token_reviews_refused_total{reason=\"rate\"}",
    )
    .await
        + sample(
            metrics_port,
            "spillway_token_reviews_refused_total{reason=\"concurrency\"}",
        )
        .await;
    assert_eq!(refused as usize, limited);

    // Once the bucket has refilled, 300 concurrent requests with one token make one review.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = reviews("unauthenticated").await;
    let token = common::unique_name("shared-token");
    let codes = send_tokens(port, 300, Some(&token)).await;
    assert!(codes.iter().all(|c| *c == 401), "{codes:?}");
    assert_eq!(reviews("unauthenticated").await - before, 1.0);

    // A real token is still reviewed and known (then refused by authorization, not 401).
    let account = common::unique_name("reader");
    let ns = k8s::SPILLWAY_NAMESPACE;
    k8s::apply(
        &admin,
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": ns}}),
    )
    .await;
    let kubeconfig: PathBuf = k8s::service_account_kubeconfig(&admin, ns, &account).await;
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let real: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let real = real["users"][0]["user"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let codes = send_tokens(port, 1, Some(&real)).await;
    assert_eq!(
        codes,
        [403],
        "a valid token is authenticated, then authorized"
    );
    assert_eq!(reviews("authenticated").await, 1.0);
}
