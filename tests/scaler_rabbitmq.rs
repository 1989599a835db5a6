//! The RabbitMQ scaler against the real broker the harness runs: queue depth over AMQP and over
//! the management API, regexes, rates, and the failures that must be errors (missing queue,
//! missing vhost, unreachable or silent host, wrong password), never a number.
//!
//! Each test uses its own queues, and tests that count connections use their own vhost, so
//! they run in parallel with each other and with other test binaries.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use spillway::scalers::rabbitmq::{RabbitMqScaler, RabbitMqTrigger};
use spillway::scalers::{Reading, Scaler, ScalerError};

/// The management API's figures lag 2-3 s behind; give them ample room on a busy machine.
const SETTLE: Duration = Duration::from_secs(30);

/// A file holding a URL with credentials, for `hostFromSecret`; removed on drop.
struct SecretFile(PathBuf);

impl SecretFile {
    fn new(content: &str) -> Self {
        let path = std::env::temp_dir().join(common::unique_name("spillway-rabbitmq-url"));
        std::fs::write(&path, format!("{content}\n")).expect("write secret file");
        Self(path)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The harness's AMQP URL for `vhost` (credentials included).
fn amqp_url(vhost: &str) -> String {
    let mut url = url::Url::parse(&common::endpoint("SPILLWAY_RABBITMQ_AMQP")).unwrap();
    url.set_path(&format!("/{}", encode(vhost)));
    url.to_string()
}

/// The harness's management URL for `vhost` (credentials included).
fn http_url(vhost: &str) -> String {
    let base = common::endpoint("SPILLWAY_RABBITMQ_HTTP");
    format!("{}/{}", base.trim_end_matches('/'), encode(vhost))
}

fn encode(vhost: &str) -> String {
    percent_encoding::utf8_percent_encode(vhost, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A trigger on `secret`'s server; `extra` adds or overrides fields.
fn trigger(secret: &SecretFile, queue: &str, extra: Value) -> RabbitMqTrigger {
    let mut value = json!({
        "hostFromSecret": {"file": secret.0},
        "queueName": queue,
        "value": 5,
    });
    for (k, v) in extra.as_object().expect("extra is an object") {
        value[k] = v.clone();
    }
    serde_json::from_value(value).expect("trigger parses")
}

/// Builds one scaler for `triggers` (which must share a key, as the poller groups them) and
/// polls it once.
async fn poll_once(triggers: &[RabbitMqTrigger]) -> Vec<Result<Reading, ScalerError>> {
    let key = RabbitMqScaler::connection_key(&triggers[0]);
    for t in triggers {
        assert_eq!(
            RabbitMqScaler::connection_key(t),
            key,
            "triggers share one scaler"
        );
    }
    let scaler = RabbitMqScaler::connect(&triggers[0]).expect("connect builds the scaler");
    scaler.poll(triggers).await
}

fn values(results: &[Result<Reading, ScalerError>]) -> Option<Vec<f64>> {
    results
        .iter()
        .map(|r| r.as_ref().ok().map(|r| r.value))
        .collect()
}

/// The management API, with the harness's credentials.
struct Management {
    base: url::Url,
    user: String,
    password: String,
    client: reqwest::Client,
}

impl Management {
    fn new() -> Self {
        let mut base = url::Url::parse(&common::endpoint("SPILLWAY_RABBITMQ_HTTP")).unwrap();
        let user = base.username().to_owned();
        let password = base.password().unwrap_or_default().to_owned();
        base.set_username("").unwrap();
        base.set_password(None).unwrap();
        Self {
            base,
            user,
            password,
            client: reqwest::Client::new(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        let mut request = self
            .client
            .request(method.clone(), &url)
            .basic_auth(&self.user, Some(&self.password))
            .timeout(Duration::from_secs(10));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {url}: HTTP {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn get(&self, path: &str) -> Value {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// A fresh vhost the harness user may use fully.
    async fn create_vhost(&self, prefix: &str) -> String {
        let vhost = common::unique_name(prefix);
        self.send(reqwest::Method::PUT, &format!("/api/vhosts/{vhost}"), None)
            .await;
        let permissions = json!({"configure": ".*", "write": ".*", "read": ".*"});
        self.send(
            reqwest::Method::PUT,
            &format!("/api/permissions/{vhost}/{}", self.user),
            Some(permissions),
        )
        .await;
        vhost
    }

    /// Deletes a vhost with its queues and connections.
    async fn delete_vhost(&self, vhost: &str) {
        self.send(
            reqwest::Method::DELETE,
            &format!("/api/vhosts/{vhost}"),
            None,
        )
        .await;
    }

    /// The client connections open on `vhost`, by name.
    async fn connections(&self, vhost: &str) -> Vec<String> {
        self.get(&format!("/api/vhosts/{}/connections", encode(vhost)))
            .await
            .as_array()
            .expect("connections array")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn channel_count(&self, vhost: &str) -> usize {
        self.get(&format!("/api/vhosts/{}/channels", encode(vhost)))
            .await
            .as_array()
            .map_or(0, Vec::len)
    }
}

/// A plain AMQP client for setting queues up: declare, publish with confirms, consume.
struct Broker {
    connection: Connection,
    channel: Channel,
}

impl Broker {
    async fn connect(vhost: &str) -> Self {
        let connection = Connection::connect(&amqp_url(vhost), ConnectionProperties::default())
            .await
            .expect("AMQP connect");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Self {
            connection,
            channel,
        }
    }

    async fn declare(&self, queue: &str) {
        self.channel
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    auto_delete: false,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
    }

    async fn publish(&self, queue: &str, count: usize) {
        for i in 0..count {
            let confirm = self
                .channel
                .basic_publish(
                    "",
                    queue,
                    BasicPublishOptions::default(),
                    format!("job {i}").as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
            assert!(confirm.await.expect("confirm").is_ack(), "publish acked");
        }
    }

    async fn declare_with(&self, queue: &str, count: usize) {
        self.declare(queue).await;
        self.publish(queue, count).await;
    }

    async fn delete(&self, queue: &str) {
        let _ = self.channel.queue_delete(queue, Default::default()).await;
    }

    async fn close(self) {
        let _ = self.connection.close(200, "test done").await;
    }
}

#[tokio::test]
async fn depth_over_amqp_is_the_ready_count() {
    let broker = Broker::connect("/").await;
    let queue = common::unique_name("amqp-depth");
    broker.declare_with(&queue, 7).await;

    let secret = SecretFile::new(&amqp_url("/"));
    let triggers = [
        trigger(&secret, &queue, json!({})),
        trigger(&secret, &queue, json!({"activationValue": 10})),
    ];
    let results = poll_once(&triggers).await;
    let active = results[0].as_ref().expect("depth");
    let inactive = results[1].as_ref().expect("depth");
    assert_eq!((active.value, active.active), (7.0, true));
    assert_eq!((inactive.value, inactive.active), (7.0, false));
    assert!(active.extra.is_empty(), "AMQP has no extra figures");
    println!("amqp: {queue} reads {}", active.value);

    broker.delete(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn depth_over_http_counts_unacknowledged_unless_excluded() {
    let broker = Broker::connect("/").await;
    let queue = common::unique_name("http-unacked");
    broker.declare_with(&queue, 10).await;

    // A consumer that takes 4 deliveries (its prefetch) and never acknowledges them.
    let consumer_channel = broker.connection.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(4, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            &queue,
            "holder",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..4 {
        consumer
            .next()
            .await
            .expect("delivery")
            .expect("delivery ok");
    }

    let secret = SecretFile::new(&http_url("/"));
    let triggers = [
        trigger(&secret, &queue, json!({})),
        trigger(&secret, &queue, json!({"excludeUnacknowledged": true})),
    ];
    // The rates come with the queue's message_stats, which the management plugin may report a
    // sample after the counts: until then they are unknown and left out, never 0.
    let suffixes = |reading: &Reading| reading.extra.iter().map(|(s, _)| *s).collect::<Vec<_>>();
    let results = common::eventually(
        "management API to show 4 unacked, with rates",
        SETTLE,
        || async {
            let results = poll_once(&triggers).await;
            let rates = results[0].as_ref().is_ok_and(|r| suffixes(r).len() == 2);
            (values(&results)? == [10.0, 6.0] && rates).then_some(results)
        },
    )
    .await;
    let all = results[0].as_ref().unwrap();
    assert!(all.active);
    assert_eq!(suffixes(all), ["publish-rate", "deliver-rate"]);

    // Over AMQP the same queue reads its ready messages only, at once.
    let amqp_secret = SecretFile::new(&amqp_url("/"));
    let amqp = poll_once(&[trigger(&amqp_secret, &queue, json!({}))]).await;
    assert_eq!(amqp[0].as_ref().unwrap().value, 6.0);
    println!("http: {queue}: messages 10, ready 6 (4 unacked); amqp reads 6");

    drop(consumer);
    let _ = consumer_channel.close(200, "done").await;
    broker.delete(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn regex_combines_queues_with_sum_max_avg_across_pages() {
    let management = Management::new();
    let vhost = management.create_vhost("rx").await;
    let broker = Broker::connect(&vhost).await;
    let prefix = common::unique_name("orders");
    for (suffix, count) in [("a", 1), ("b", 2), ("c", 6)] {
        broker
            .declare_with(&format!("{prefix}-{suffix}"), count)
            .await;
    }
    // Does not match `^prefix-`, and lands between the matches in name order.
    broker.declare_with(&format!("{prefix}_x"), 50).await;

    let secret = SecretFile::new(&http_url(&vhost));
    let regex = format!("^{}-", regex::escape(&prefix));
    // Two queues per page: the four queues of the vhost take two pages.
    let with = |operation: &str| {
        trigger(
            &secret,
            &regex,
            json!({"useRegex": true, "operation": operation, "pageSize": 2}),
        )
    };
    let triggers = [with("sum"), with("max"), with("avg")];
    let results = common::eventually("sum 9, max 6, avg 3", SETTLE, || async {
        let results = poll_once(&triggers).await;
        (values(&results)? == [9.0, 6.0, 3.0]).then_some(results)
    })
    .await;
    println!("regex {regex}: {:?}", values(&results).unwrap());

    broker.close().await;
    management.delete_vhost(&vhost).await;
}

#[tokio::test]
async fn message_rate_after_a_burst_of_publishes() {
    let broker = Broker::connect("/").await;
    let queue = common::unique_name("rate");
    broker.declare(&queue).await;

    let secret = SecretFile::new(&http_url("/"));
    let rate = trigger(
        &secret,
        &queue,
        json!({"mode": "MessageRate", "value": 100}),
    );
    let reading = common::eventually("publish rate above 0", SETTLE, || async {
        broker.publish(&queue, 50).await;
        let results = poll_once(std::slice::from_ref(&rate)).await;
        match &results[0] {
            Ok(reading) if reading.value > 0.0 => Some(reading.clone()),
            _ => None,
        }
    })
    .await;
    assert!(reading.active);
    let extra: std::collections::HashMap<_, _> = reading.extra.iter().copied().collect();
    assert!(extra["messages"] >= 50.0, "{extra:?}");
    assert!(extra.contains_key("deliver-rate"), "{extra:?}");
    println!(
        "rate: {queue}: {:.1} msg/s published, extras {extra:?}",
        reading.value
    );

    broker.delete(&queue).await;
    broker.close().await;
}

/// Issue 15: a queue RabbitMQ reports no `message_stats` for (no traffic yet; the same answer
/// as a broker with statistics off) has no publish rate. MessageRate is an error then, never a
/// rate of 0 that would look like an idle queue; QueueLength still reads the depth.
#[tokio::test]
async fn message_rate_without_message_stats_is_an_error_not_zero() {
    let broker = Broker::connect("/").await;
    let queue = common::unique_name("no-stats");
    broker.declare(&queue).await;
    let secret = SecretFile::new(&http_url("/"));
    let rate = trigger(&secret, &queue, json!({"mode": "MessageRate"}));
    let depth = trigger(&secret, &queue, json!({}));
    // Once the management plugin has sampled the queue (its depth reads), the rate still fails.
    let results = common::eventually("the new queue's depth to read", SETTLE, || async {
        let results = poll_once(&[rate.clone(), depth.clone()]).await;
        results[1].is_ok().then_some(results)
    })
    .await;
    let reading = results[1].as_ref().unwrap();
    assert_eq!(reading.value, 0.0);
    assert!(
        reading
            .extra
            .iter()
            .all(|(name, _)| !name.ends_with("rate")),
        "no stats, no rate metrics: {:?}",
        reading.extra
    );
    match &results[0] {
        Err(ScalerError::BadResponse { cause, .. }) => {
            assert!(cause.contains("no publish rate"), "{cause}")
        }
        other => panic!("MessageRate without message_stats: expected an error, got {other:?}"),
    }
    println!("rate without stats: {}", results[0].as_ref().unwrap_err());
    broker.delete(&queue).await;
    broker.close().await;
}

#[tokio::test]
async fn missing_queue_over_amqp_is_not_found_and_the_connection_is_reused() {
    let management = Management::new();
    let vhost = management.create_vhost("amqp-missing").await;
    let broker = Broker::connect(&vhost).await;
    let queue = common::unique_name("present");
    broker.declare_with(&queue, 3).await;
    broker.close().await;
    common::eventually("setup connection gone", SETTLE, || async {
        management
            .connections(&vhost)
            .await
            .is_empty()
            .then_some(())
    })
    .await;

    let secret = SecretFile::new(&amqp_url(&vhost));
    let missing = common::unique_name("missing");
    let triggers = [
        trigger(&secret, &missing, json!({})),
        trigger(&secret, &queue, json!({})),
        trigger(&secret, &format!("{missing}-2"), json!({})),
        trigger(&secret, &queue, json!({"activationValue": 3})),
    ];
    let scaler = RabbitMqScaler::connect(&triggers[0]).unwrap();
    for round in 0..5 {
        let results = scaler.poll(&triggers).await;
        for index in [0, 2] {
            match &results[index] {
                Err(ScalerError::NotFound { what, target, .. }) => {
                    assert_eq!(what, "queue");
                    assert!(target.contains(&missing), "{target}");
                }
                other => panic!("round {round}: missing queue gave {other:?}"),
            }
        }
        let present = results[1]
            .as_ref()
            .expect("present queue after a missing one");
        assert_eq!((present.value, present.active), (3.0, true));
        assert!(!results[3].as_ref().unwrap().active);
    }
    let err = scaler.poll(&triggers[..1]).await.remove(0).unwrap_err();
    println!("amqp missing queue: {err}");
    assert_eq!(err.reason(), "not_found");
    // The same queue still reads on the same scaler after the channel was closed.
    assert_eq!(
        scaler.poll(&triggers[1..2]).await[0]
            .as_ref()
            .unwrap()
            .value,
        3.0
    );

    let connections = common::eventually("exactly one scaler connection", SETTLE, || async {
        let names = management.connections(&vhost).await;
        (names.len() == 1).then_some(names)
    })
    .await;
    // Still one after more missing queues: channels are reopened, connections never multiplied.
    for _ in 0..3 {
        scaler.poll(&triggers).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(management.connections(&vhost).await, connections);
    common::eventually("at most one open channel", SETTLE, || async {
        (management.channel_count(&vhost).await <= 1).then_some(())
    })
    .await;

    // A removed scaler closes its connection.
    drop(scaler);
    common::eventually("connection closed after drop", SETTLE, || async {
        management
            .connections(&vhost)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    management.delete_vhost(&vhost).await;
}

#[tokio::test]
async fn missing_vhost_over_amqp_is_not_found() {
    let secret = SecretFile::new(&amqp_url(&common::unique_name("no-such-vhost")));
    let results = poll_once(&[trigger(&secret, "jobs", json!({}))]).await;
    match &results[0] {
        Err(ScalerError::NotFound { what, .. }) => assert_eq!(what, "vhost"),
        other => panic!("missing vhost gave {other:?}"),
    }
    println!("amqp missing vhost: {}", results[0].as_ref().unwrap_err());
}

#[tokio::test]
async fn missing_queue_over_http_is_not_found() {
    let broker = Broker::connect("/").await;
    let queue = common::unique_name("http-present");
    broker.declare_with(&queue, 2).await;

    let secret = SecretFile::new(&http_url("/"));
    let missing = common::unique_name("http-missing");
    let no_vhost = common::unique_name("no-such-vhost");
    let triggers = [
        trigger(&secret, &missing, json!({})),
        trigger(&secret, &format!("^{missing}"), json!({"useRegex": true})),
        trigger(&secret, &queue, json!({"vhostName": no_vhost})),
        trigger(&secret, &queue, json!({})),
    ];
    // The management API samples queues every few seconds: wait for the 2 messages to show.
    let results = common::eventually("present queue sampled", SETTLE, || async {
        let results = poll_once(&triggers).await;
        results[3]
            .as_ref()
            .is_ok_and(|r| r.value == 2.0)
            .then_some(results)
    })
    .await;
    let whats: Vec<String> = results[..3]
        .iter()
        .map(|r| match r {
            Err(ScalerError::NotFound { what, .. }) => what.clone(),
            other => panic!("expected NotFound, got {other:?}"),
        })
        .collect();
    assert_eq!(whats, ["queue", "any queue matching the regex", "vhost"]);
    assert_eq!(results[3].as_ref().unwrap().value, 2.0);
    for r in &results[..3] {
        println!("http: {}", r.as_ref().unwrap_err());
    }

    broker.delete(&queue).await;
    broker.close().await;
}

/// Asserts that polling `host` fails within the trigger's timeout (plus scheduling slack) with
/// one of the `allowed` reasons.
async fn assert_fails_in_time(host: &str, timeout_ms: u64, allowed: &[&str]) {
    let t: RabbitMqTrigger = serde_json::from_value(json!({
        "host": host, "queueName": "jobs", "value": 5, "timeout": timeout_ms,
    }))
    .unwrap();
    let started = Instant::now();
    let results = poll_once(std::slice::from_ref(&t)).await;
    let elapsed = started.elapsed();
    let err = results[0]
        .as_ref()
        .expect_err("an unreachable host has no value");
    assert!(
        allowed.contains(&err.reason()),
        "{host}: {err} ({})",
        err.reason()
    );
    assert!(
        elapsed < Duration::from_millis(timeout_ms + 1500),
        "{host}: took {elapsed:?}"
    );
    println!("{host}: {err} after {elapsed:?}");
}

#[tokio::test]
async fn unreachable_host_is_an_error_within_the_timeout() {
    for host in ["amqp://127.0.0.1:1/", "http://127.0.0.1:1/"] {
        assert_fails_in_time(host, 2000, &["unreachable", "timeout"]).await;
    }
}

#[tokio::test]
async fn silent_host_times_out() {
    // Accepts connections and never answers: only the timeout can end the wait.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    for host in [
        format!("amqp://127.0.0.1:{port}/"),
        format!("http://127.0.0.1:{port}/"),
    ] {
        assert_fails_in_time(&host, 1000, &["timeout"]).await;
    }
    holder.abort();
}

#[tokio::test]
async fn wrong_password_is_unauthorized() {
    for url in [amqp_url("/"), http_url("/")] {
        let mut wrong = url::Url::parse(&url).unwrap();
        wrong.set_password(Some("not-the-password")).unwrap();
        let secret = SecretFile::new(wrong.as_str());
        let results = poll_once(&[trigger(&secret, "jobs", json!({}))]).await;
        let err = results[0].as_ref().expect_err("refused login has no value");
        assert_eq!(err.reason(), "unauthorized", "{err}");
        assert!(!err.to_string().contains("not-the-password"), "{err}");
        println!("{}: {err}", wrong.scheme());
    }
}

#[tokio::test]
async fn many_triggers_are_answered_by_one_poll() {
    let broker = Broker::connect("/").await;
    let queues: Vec<String> = (0..10).map(|_| common::unique_name("many")).collect();
    for (i, queue) in queues.iter().enumerate() {
        broker.declare_with(queue, i).await;
    }
    let expected: Vec<f64> = (0..30).map(|i| (i % 10) as f64).collect();

    let amqp_secret = SecretFile::new(&amqp_url("/"));
    let amqp: Vec<_> = (0..30)
        .map(|i| trigger(&amqp_secret, &queues[i % 10], json!({})))
        .collect();
    let started = Instant::now();
    let results = poll_once(&amqp).await;
    assert_eq!(values(&results).expect("all AMQP triggers read"), expected);
    println!(
        "amqp: 30 triggers over 10 queues in {:?}",
        started.elapsed()
    );

    let http_secret = SecretFile::new(&http_url("/"));
    let http: Vec<_> = (0..30)
        .map(|i| trigger(&http_secret, &queues[i % 10], json!({})))
        .collect();
    common::eventually("all 30 HTTP triggers read", SETTLE, || async {
        let started = Instant::now();
        let results = poll_once(&http).await;
        let read = values(&results)?;
        println!("http: 30 triggers in {:?}", started.elapsed());
        (read == expected).then_some(())
    })
    .await;

    for queue in &queues {
        broker.delete(queue).await;
    }
    broker.close().await;
}

#[tokio::test]
async fn reconnects_after_the_server_closes_the_connection() {
    let management = Management::new();
    let vhost = management.create_vhost("reconnect").await;
    let broker = Broker::connect(&vhost).await;
    let queue = common::unique_name("survivor");
    broker.declare_with(&queue, 4).await;
    broker.close().await;

    let secret = SecretFile::new(&amqp_url(&vhost));
    let triggers = [trigger(&secret, &queue, json!({}))];
    let scaler = RabbitMqScaler::connect(&triggers[0]).unwrap();
    assert_eq!(scaler.poll(&triggers).await[0].as_ref().unwrap().value, 4.0);

    let names = common::eventually("scaler connection listed", SETTLE, || async {
        let names = management.connections(&vhost).await;
        (names.len() == 1).then_some(names)
    })
    .await;
    let path = format!("/api/connections/{}", encode(&names[0]));
    management.send(reqwest::Method::DELETE, &path, None).await;

    // The poll right after the close may fail; a later one must read again.
    common::eventually("poll reads after reconnect", SETTLE, || async {
        let results = scaler.poll(&triggers).await;
        results[0].as_ref().ok().map(|r| r.value)
    })
    .await;
    let after = common::eventually("one new connection", SETTLE, || async {
        let now = management.connections(&vhost).await;
        (now.len() == 1 && now != names).then_some(now)
    })
    .await;
    println!("reconnected: {} -> {}", names[0], after[0]);

    drop(scaler);
    management.delete_vhost(&vhost).await;
}

/// Issue 13: over AMQP, every way one queue can fail a passive declare (missing, deleted since
/// the last tick, exclusive to another connection, a name RabbitMQ cannot hold) fails that
/// queue's triggers only; the queues declared after it in the same round still read.
#[tokio::test]
async fn one_failing_queue_over_amqp_fails_only_its_triggers() {
    let management = Management::new();
    let vhost = management.create_vhost("amqp-isolation").await;
    let broker = Broker::connect(&vhost).await;
    let first = common::unique_name("first");
    let second = common::unique_name("second");
    let deleted = common::unique_name("deleted");
    broker.declare_with(&first, 3).await;
    broker.declare_with(&second, 5).await;
    broker.declare_with(&deleted, 2).await;
    let exclusive = common::unique_name("exclusive");
    broker
        .channel
        .queue_declare(
            &exclusive,
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exclusive queue");
    // RabbitMQ names hold at most 255 bytes; a longer one must not break the shared connection.
    let too_long = format!("{first}-{}", "x".repeat(300));
    let missing = common::unique_name("missing");

    let secret = SecretFile::new(&amqp_url(&vhost));
    let triggers = [
        trigger(&secret, &too_long, json!({})),
        trigger(&secret, &first, json!({})),
        trigger(&secret, &missing, json!({})),
        trigger(&secret, &exclusive, json!({})),
        trigger(&secret, &deleted, json!({})),
        trigger(&secret, &second, json!({})),
    ];
    let scaler = RabbitMqScaler::connect(&triggers[1]).unwrap();
    let reasons = |results: &[Result<Reading, ScalerError>]| -> Vec<Result<f64, &'static str>> {
        results
            .iter()
            .map(|r| r.as_ref().map(|r| r.value).map_err(ScalerError::reason))
            .collect()
    };
    let before = scaler.poll(&triggers).await;
    assert_eq!(
        reasons(&before),
        [
            Err("invalid_trigger"),
            Ok(3.0),
            Err("not_found"),
            Err("broker_error"),
            Ok(2.0),
            Ok(5.0)
        ],
        "{before:?}"
    );

    broker.delete(&deleted).await;
    let after = scaler.poll(&triggers).await;
    assert_eq!(
        reasons(&after),
        [
            Err("invalid_trigger"),
            Ok(3.0),
            Err("not_found"),
            Err("broker_error"),
            Err("not_found"),
            Ok(5.0)
        ],
        "{after:?}"
    );
    println!(
        "amqp: locked queue reads as {}",
        after[3].as_ref().unwrap_err()
    );
    // One connection served both rounds: the failures closed channels, never the connection.
    let connections = common::eventually("the scaler's connection listed", SETTLE, || async {
        let names = management.connections(&vhost).await;
        (names.len() == 2).then_some(names)
    })
    .await;
    assert_eq!(connections.len(), 2, "the fixture's and the scaler's");

    drop(scaler);
    broker.close().await;
    management.delete_vhost(&vhost).await;
}

/// Issue 13: over HTTP, a queue or a vhost deleted between two ticks, a regex matching nothing
/// and an impossible queue name fail their own triggers only; the other triggers of the same
/// server read from the same round.
#[tokio::test]
async fn deleted_queue_or_vhost_over_http_fails_only_its_triggers() {
    let management = Management::new();
    let kept_vhost = management.create_vhost("http-kept").await;
    let gone_vhost = management.create_vhost("http-gone").await;
    let kept = Broker::connect(&kept_vhost).await;
    let gone = Broker::connect(&gone_vhost).await;
    let first = common::unique_name("first");
    let deleted = common::unique_name("deleted");
    let elsewhere = common::unique_name("elsewhere");
    kept.declare_with(&first, 3).await;
    kept.declare_with(&deleted, 2).await;
    gone.declare_with(&elsewhere, 5).await;
    gone.close().await;

    let secret = SecretFile::new(&http_url(&kept_vhost));
    let triggers = [
        trigger(&secret, &first, json!({})),
        trigger(&secret, &deleted, json!({})),
        trigger(&secret, &elsewhere, json!({"vhostName": gone_vhost})),
        trigger(
            &secret,
            &format!("^{first}-nothing"),
            json!({"useRegex": true}),
        ),
        trigger(&secret, &"q".repeat(256), json!({})),
        trigger(
            &secret,
            &format!("^({first}|{deleted})$"),
            json!({"useRegex": true}),
        ),
    ];
    let scaler = RabbitMqScaler::connect(&triggers[0]).unwrap();
    let reasons = |results: &[Result<Reading, ScalerError>]| -> Vec<Result<f64, &'static str>> {
        results
            .iter()
            .map(|r| r.as_ref().map(|r| r.value).map_err(ScalerError::reason))
            .collect()
    };
    let expected_before = [
        Ok(3.0),
        Ok(2.0),
        Ok(5.0),
        Err("not_found"),
        Err("invalid_trigger"),
        Ok(5.0),
    ];
    common::eventually("every queue sampled", SETTLE, || async {
        let results = reasons(&scaler.poll(&triggers).await);
        (results == expected_before).then_some(())
    })
    .await;

    kept.delete(&deleted).await;
    management.delete_vhost(&gone_vhost).await;
    let after = scaler.poll(&triggers).await;
    assert_eq!(
        reasons(&after),
        [
            Ok(3.0),
            Err("not_found"),
            Err("not_found"),
            Err("not_found"),
            Err("invalid_trigger"),
            Ok(3.0),
        ],
        "{after:?}"
    );
    match &after[2] {
        Err(ScalerError::NotFound { what, .. }) => assert_eq!(what, "vhost"),
        other => panic!("{other:?}"),
    }

    kept.close().await;
    management.delete_vhost(&kept_vhost).await;
}
