//! A client of the harness's Toxiproxy (`scripts/toxiproxy.sh`) over its HTTP API: a proxy in
//! front of a broker, and toxics (latency, bandwidth, resets, blackholes) added and removed
//! while spillway polls through it.

use std::time::Duration;

use serde_json::{Value, json};

/// One proxy: `listen` forwards to `upstream` until a toxic says otherwise. Deleted when
/// dropped (a blocking `curl`, so a panicking test leaves no proxy behind).
pub struct Proxy {
    api: String,
    client: reqwest::Client,
    pub name: String,
    /// `127.0.0.1:<port>`: what spillway is pointed at.
    pub listen: String,
}

fn api() -> String {
    super::endpoint("SPILLWAY_TOXIPROXY_API")
}

fn client() -> reqwest::Client {
    // A connection per call: the API server closes idle ones, and a toxic held for seconds
    // would otherwise be removed over a pooled connection it has just closed.
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// Checks an answer of the Toxiproxy API, naming `what` and the body on a refusal.
async fn expect_success(what: &str, answer: reqwest::Result<reqwest::Response>) -> String {
    let response = answer.unwrap_or_else(|err| panic!("Toxiproxy {what}: {err}"));
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "Toxiproxy {what}: HTTP {status}: {body}"
    );
    body
}

/// The version Toxiproxy reports (the harness stamps the release it built).
pub async fn version() -> String {
    expect_success(
        "version",
        client().get(format!("{}/version", api())).send().await,
    )
    .await
}

impl Proxy {
    /// A proxy named after `prefix` on a free loopback port, forwarding to `upstream`
    /// (`host:port`).
    pub async fn create(prefix: &str, upstream: &str) -> Self {
        let name = super::unique_name(prefix);
        let listen = format!("127.0.0.1:{}", super::free_port());
        let client = client();
        let api = api();
        expect_success(
            &format!("create proxy {name}"),
            client
                .post(format!("{api}/proxies"))
                .json(
                    &json!({"name": name, "listen": listen, "upstream": upstream, "enabled": true}),
                )
                .send()
                .await,
        )
        .await;
        Self {
            api,
            client,
            name,
            listen,
        }
    }

    /// Adds toxic `name` of `kind` (`latency`, `bandwidth`, `reset_peer`, `timeout`, ...) on
    /// `stream` (`downstream`: broker to spillway; `upstream`: spillway to broker) to every
    /// connection, open ones included.
    pub async fn add_toxic(&self, name: &str, kind: &str, stream: &str, attributes: Value) {
        expect_success(
            &format!("add toxic {name} ({kind}) to {}", self.name),
            self.client
                .post(format!("{}/proxies/{}/toxics", self.api, self.name))
                .json(
                    &json!({"name": name, "type": kind, "stream": stream, "toxicity": 1.0,
                    "attributes": attributes}),
                )
                .send()
                .await,
        )
        .await;
    }

    pub async fn remove_toxic(&self, name: &str) {
        expect_success(
            &format!("remove toxic {name} from {}", self.name),
            self.client
                .delete(format!("{}/proxies/{}/toxics/{name}", self.api, self.name))
                .send()
                .await,
        )
        .await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = std::process::Command::new("curl")
            .args(["-fsS", "--max-time", "5", "-X", "DELETE"])
            .arg(format!("{}/proxies/{}", self.api, self.name))
            .stdout(std::process::Stdio::null())
            .status();
    }
}
