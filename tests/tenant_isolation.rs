//! Issue 16: what one tenant's ScaledObject can and cannot reach of another's, against real
//! servers. Connections that carry credentials are keyed by namespace and by a keyed hash of the
//! Secret's value: a Secret of the same name in another namespace never rides on another
//! tenant's session, and a changed value gets a new client on the next poll.
//!
//! Triggers are built as the controller registers them: `secretKeyRef`s resolved from a
//! namespace, then polled through [`Poller::tick`], which groups them as the server does.

mod common;

use std::sync::{Arc, Mutex};

use spillway::cache::{MetricCache, TriggerId};
use spillway::poller::Poller;
use spillway::scalers::{ScalerError, Trigger, TriggerParams};
use spillway::secret::{SecretError, SecretReader, SecretString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every key of every Secret reads `value`, as one namespace's Secret would.
struct SecretValue(String);

impl SecretReader for SecretValue {
    async fn read_key(&self, _: &str, _: &str, _: &str) -> Result<SecretString, SecretError> {
        Ok(SecretString::new(self.0.clone()))
    }
}

/// `trigger` (JSON of one trigger config, e.g. `{"prometheus": {...}}`) registered in
/// `namespace`, its Secrets holding `value`.
async fn registered(
    namespace: &str,
    trigger: serde_json::Value,
    value: &str,
) -> (TriggerId, Trigger) {
    let config: spillway::config::TriggerConfig =
        serde_json::from_value(trigger).expect("trigger config");
    let mut trigger = config.trigger().expect("one trigger");
    for (_, source) in trigger.secret_sources() {
        source
            .resolve(&SecretValue(value.to_owned()), namespace)
            .await
            .expect("resolve");
    }
    let id = TriggerId {
        namespace: namespace.to_owned(),
        scaled_object: "consumer".into(),
        index: 0,
    };
    (id, trigger)
}

/// A Prometheus-shaped HTTP server on loopback that answers every query with the value 7 and
/// records each request's `Authorization` header.
async fn recording_prometheus() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let recorded = Arc::clone(&recorded);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .unwrap_or("none")
                    .to_owned();
                recorded.lock().unwrap().push(auth);
                let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"7"]}]}}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (address, seen)
}

#[tokio::test]
async fn a_same_named_secret_in_another_namespace_never_shares_a_session() {
    common::allow_loopback_destinations();
    let (address, seen) = recording_prometheus().await;
    let prometheus = serde_json::json!({"prometheus": {
        "serverAddress": format!("http://{address}"), "query": "up", "threshold": 1,
        "bearerToken": {"secretKeyRef": {"name": "prometheus", "key": "token"}},
    }});
    let cache = Arc::new(MetricCache::new());
    let mut poller = Poller::new(Arc::clone(&cache));
    let tenant_a = registered("tenant-a", prometheus.clone(), "token-alpha").await;
    let tenant_b = registered("tenant-b", prometheus.clone(), "token-bravo").await;
    poller.tick(&[tenant_a.clone(), tenant_b.clone()]).await;
    for (id, _) in [&tenant_a, &tenant_b] {
        let state = cache.get(id).expect("polled");
        assert_eq!(
            state.last_reading.map(|r| r.value),
            Some(7.0),
            "{id}: {:?}",
            state.error
        );
    }
    let mut tokens = seen.lock().unwrap().clone();
    tokens.sort();
    // Each tenant's request went out with its own token, on a client of its own: the same query
    // and the same Secret name are not one request.
    assert_eq!(tokens, ["Bearer token-alpha", "Bearer token-bravo"]);
    assert_eq!(poller.connections(), 2);

    // The same value in both namespaces: still two sessions.
    let same = registered("tenant-b", prometheus.clone(), "token-alpha").await;
    poller.tick(&[tenant_a.clone(), same]).await;
    assert_eq!(poller.connections(), 2);

    // Tenant A's Secret changes: the next poll sends the new value.
    seen.lock().unwrap().clear();
    let rotated = registered("tenant-a", prometheus.clone(), "token-charlie").await;
    poller.tick(&[rotated]).await;
    assert_eq!(*seen.lock().unwrap(), ["Bearer token-charlie"]);
    assert_eq!(poller.connections(), 1, "the old clients are closed");

    // Without credentials one client serves every namespace.
    let open = serde_json::json!({"prometheus": {
        "serverAddress": format!("http://{address}"), "query": "up", "threshold": 1,
    }});
    let (a, b) = (
        registered("tenant-a", open.clone(), "").await,
        registered("tenant-b", open, "").await,
    );
    poller.tick(&[a, b]).await;
    assert_eq!(poller.connections(), 1);
    println!("prometheus: two tenants, one Secret name: tokens {tokens:?} on 2 clients");
}

/// The RabbitMQ management API with the harness's user and `password`, as a `hostFromSecret`
/// value.
fn management_url(password: Option<&str>) -> String {
    let mut url = url::Url::parse(&common::endpoint("SPILLWAY_RABBITMQ_HTTP")).unwrap();
    if let Some(password) = password {
        url.set_password(Some(password)).unwrap();
    }
    format!("{}/%2F", url.as_str().trim_end_matches('/'))
}

#[tokio::test]
async fn a_tenant_with_a_wrong_password_is_refused_until_its_secret_is_fixed() {
    let (_connection, _channel, queue) = common::rabbitmq::queue_with_messages("tenant", 3).await;
    let rabbitmq = serde_json::json!({"rabbitmq": {
        "hostFromSecret": {"secretKeyRef": {"name": "rabbitmq", "key": "url"}},
        "queueName": queue, "value": 1,
    }});
    let cache = Arc::new(MetricCache::new());
    let mut poller = Poller::new(Arc::clone(&cache));
    let good = registered("tenant-a", rabbitmq.clone(), &management_url(None)).await;
    let wrong = registered(
        "tenant-b",
        rabbitmq.clone(),
        &management_url(Some("not-the-password")),
    )
    .await;
    let (a, b) = (good.0.clone(), wrong.0.clone());
    let depth = |id: &TriggerId| cache.get(id).and_then(|s| s.last_reading).map(|r| r.value);
    // The management plugin shows a new queue's depth after a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while depth(&a) != Some(3.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue's depth never read: {:?}",
            cache.get(&a).and_then(|s| s.error)
        );
        poller.tick(&[good.clone(), wrong.clone()]).await;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // Same server, same user, same Secret name: tenant B never reads through A's session.
    match cache.get(&b).and_then(|s| s.error) {
        Some(ScalerError::Unauthorized { cause, .. }) => {
            assert!(!cause.contains("not-the-password"), "{cause}")
        }
        other => panic!("a wrong password must be refused, got {other:?}"),
    }
    assert_eq!(depth(&b), None);

    // B's Secret is fixed: the next poll builds a new client with it.
    let fixed = registered("tenant-b", rabbitmq, &management_url(None)).await;
    poller.tick(&[good, fixed]).await;
    assert_eq!(
        depth(&b),
        Some(3.0),
        "{:?}",
        cache.get(&b).and_then(|s| s.error)
    );
}
