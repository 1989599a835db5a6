//! What integration tests share: the endpoints of the services `make` started, and unique names.
//!
//! Nothing here starts a server. `scripts/services.sh up` writes `target/services/endpoints.env`;
//! a variable set in the environment wins over the file.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod helm;
pub mod http_proxy;
pub mod k8s;
pub mod kafka;
pub mod nats;
pub mod rabbitmq;
pub mod replicas;
pub mod serve;
pub mod service_proxy;
pub mod toxiproxy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn endpoints() -> &'static HashMap<String, String> {
    static ENDPOINTS: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENDPOINTS.get_or_init(|| {
        let file = std::env::var_os("SPILLWAY_SERVICES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/services"))
            .join("endpoints.env");
        let text = std::fs::read_to_string(&file).unwrap_or_else(|err| {
            panic!(
                "cannot read {}: {err}; start the services with `make services-up`",
                file.display()
            )
        });
        text.lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    })
}

/// Lets scalers in this test process reach loopback, where the harness runs every broker (the
/// destination policy refuses loopback by default, as `spillway` does without
/// `--allow-destinations loopback`). Called wherever a test learns a loopback address.
pub fn allow_loopback_destinations() {
    use spillway::destination::{self, DestinationClass, DestinationPolicy};
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        destination::install(DestinationPolicy::strict().allowing([DestinationClass::Loopback]))
    });
}

/// What spawned `spillway` processes are given so they reach the harness's loopback brokers.
pub const ALLOW_LOOPBACK: (&str, &str) = ("SPILLWAY_ALLOW_DESTINATIONS", "loopback");

/// An endpoint by its variable name, e.g. `SPILLWAY_KAFKA_BOOTSTRAP`.
pub fn endpoint(name: &str) -> String {
    allow_loopback_destinations();
    std::env::var(name)
        .ok()
        .or_else(|| endpoints().get(name).cloned())
        .unwrap_or_else(|| {
            panic!("{name} is not in endpoints.env; start the services with `make services-up`")
        })
}

/// A port nothing listens on right now (the OS picks it; a race with another process is
/// possible but harmless in tests: the bind fails loudly).
pub fn free_port() -> u16 {
    allow_loopback_destinations();
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A name no other test (or earlier run) uses: `prefix-<pid>-<nanos>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Polls `probe` every 250 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A listener on a free loopback port that accepts every connection, reads nothing and never
/// answers (a hung broker); connections stay open until the returned task is aborted.
pub async fn tarpit() -> (String, tokio::task::JoinHandle<()>) {
    allow_loopback_destinations();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a tarpit");
    let address = listener.local_addr().expect("tarpit address").to_string();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    (address, held)
}

/// An HTTPS client that accepts spillway's self-signed certificate: for tests that talk to
/// `spillway serve` directly and have no CA to trust.
pub fn https_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTPS client")
}

/// GET a URL (credentials in the URL become basic auth) and parse the JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    let mut parsed = reqwest::Url::parse(url).unwrap_or_else(|err| panic!("bad url {url}: {err}"));
    let (user, password) = (
        parsed.username().to_owned(),
        parsed.password().map(str::to_owned),
    );
    // Credentials travel as a header; RabbitMQ answers 400 when they also stay in the URL.
    parsed
        .set_username("")
        .and_then(|()| parsed.set_password(None))
        .expect("http URL");
    let mut request = reqwest::Client::new()
        .get(parsed)
        .timeout(Duration::from_secs(10));
    if !user.is_empty() {
        request = request.basic_auth(user, password);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    let status = response.status();
    assert!(status.is_success(), "GET {url}: HTTP {status}");
    response
        .json()
        .await
        .unwrap_or_else(|err| panic!("GET {url}: body is not JSON: {err}"))
}
