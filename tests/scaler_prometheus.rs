//! The Prometheus scaler against the harness's real Prometheus: PromQL over series it really
//! scraped (a small exposition target registered through file_sd, so the values are known),
//! empty, NaN and malformed queries, and the scrape mode on Prometheus's own `/metrics` and on
//! the test target (credentials and headers on the wire, one request per URL), and a round of
//! many queries keeping a bounded few in flight.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http_proxy::CountingProxy;
use spillway::scalers::prometheus::{
    Aggregation, KeyValues, PrometheusScaler, PrometheusTrigger, REQUESTS_IN_FLIGHT,
};
use spillway::scalers::{Reading, Scaler, ScalerError, TriggerParams};
use spillway::secret::SecretSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A text-exposition endpoint on loopback whose body the test sets; it records requests.
struct ExpositionTarget {
    address: String,
    body: Arc<Mutex<String>>,
    requests: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
}

impl ExpositionTarget {
    async fn start(body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let body = Arc::new(Mutex::new(body.to_owned()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let (served, seen, counter) = (body.clone(), requests.clone(), count.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (served, seen, counter) = (served.clone(), seen.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&request).into_owned());
                    let body = served.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            address,
            body,
            requests,
            count,
        }
    }

    fn set_body(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_owned();
    }

    fn url(&self) -> String {
        format!("http://{}/metrics", self.address)
    }
}

/// A file_sd target file; Prometheus picks it up within about a second and drops it on removal.
struct ScrapeRegistration(PathBuf);

impl ScrapeRegistration {
    fn add(address: &str, id: &str) -> Self {
        let dir = std::env::var_os("SPILLWAY_SERVICES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/services"))
            .join("prometheus/targets");
        std::fs::create_dir_all(&dir).expect("targets dir");
        let path = dir.join(format!("{id}.json"));
        let json = serde_json::json!([{"targets": [address], "labels": {"spillway_test": id}}]);
        // Written aside and renamed so Prometheus never reads half a file.
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, json.to_string()).expect("write target");
        std::fs::rename(&partial, &path).expect("publish target");
        Self(path)
    }
}

impl Drop for ScrapeRegistration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn prometheus_url() -> String {
    common::endpoint("SPILLWAY_PROMETHEUS_URL")
}

fn query_trigger(query: &str) -> PrometheusTrigger {
    serde_json::from_value(serde_json::json!({
        "serverAddress": prometheus_url(),
        "query": query,
        "threshold": 10,
    }))
    .expect("trigger")
}

fn scrape_trigger(url: &str, metric: &str, labels: &[(&str, &str)]) -> PrometheusTrigger {
    let mut t: PrometheusTrigger = serde_json::from_value(serde_json::json!({
        "scrapeUrl": url,
        "metricName": metric,
        "threshold": 10,
    }))
    .expect("trigger");
    t.labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect::<BTreeMap<_, _>>();
    t
}

async fn poll_one(trigger: &PrometheusTrigger) -> Result<Reading, ScalerError> {
    let scaler = PrometheusScaler::connect(trigger).expect("connect");
    scaler
        .poll(std::slice::from_ref(trigger))
        .await
        .pop()
        .unwrap()
}

/// Label values may not hold `-` in a PromQL-friendly id; unique_name's dashes become `_`.
fn test_id() -> String {
    common::unique_name("spillway_test").replace('-', "_")
}

#[tokio::test]
async fn query_reads_a_really_scraped_series() {
    let target = ExpositionTarget::start(
        "# TYPE spillway_test_backlog gauge\nspillway_test_backlog{queue=\"a\"} 30\nspillway_test_backlog{queue=\"b\"} 12\n",
    )
    .await;
    let id = test_id();
    let _registered = ScrapeRegistration::add(&target.address, &id);

    let mut backlog = query_trigger(&format!(
        "sum(spillway_test_backlog{{spillway_test=\"{id}\"}})"
    ));
    backlog.activation_threshold = 40.0;
    let up = query_trigger("sum(up{job=\"prometheus\"})");
    let many = query_trigger(&format!("spillway_test_backlog{{spillway_test=\"{id}\"}}"));
    assert_eq!(
        PrometheusScaler::connection_key(&backlog),
        PrometheusScaler::connection_key(&up),
        "queries to one server share a scaler"
    );
    let triggers = [backlog.clone(), up, many];
    let scaler = PrometheusScaler::connect(&backlog).expect("connect");

    let started = Instant::now();
    let readings = common::eventually(
        "Prometheus to scrape the test target (sum 42)",
        Duration::from_secs(60),
        || async {
            let readings = scaler.poll(&triggers).await;
            matches!(&readings[0], Ok(r) if r.value == 42.0).then_some(readings)
        },
    )
    .await;
    let first = readings[0].as_ref().unwrap();
    assert!(first.active, "42 > activation 40");
    assert_eq!(readings[1].as_ref().expect("up").value, 1.0);
    match &readings[2] {
        Err(ScalerError::BadResponse { cause, .. }) => {
            assert!(cause.contains("2 elements"), "{cause}")
        }
        other => panic!("a two-element vector must be an error (KEDA), got {other:?}"),
    }
    assert_eq!(backlog.metric_name(), "prometheus");
    assert_eq!(backlog.target_value(), 10.0);

    // The value follows the target.
    target.set_body("spillway_test_backlog{queue=\"a\"} 7\n");
    let seven = common::eventually(
        "the new value to be scraped",
        Duration::from_secs(30),
        || async {
            let reading = scaler.poll(&triggers[..1]).await.pop().unwrap();
            matches!(&reading, Ok(r) if r.value == 7.0).then_some(reading.unwrap())
        },
    )
    .await;
    assert!(!seven.active, "7 is below activation 40");
    println!(
        "prometheus: sum(spillway_test_backlog) read 42 after {:?}, then 7; a 2-element vector is an error",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_empty_result_is_an_error_unless_ignore_null_values_is_true() {
    let query = format!("up{{job=\"{}\"}}", test_id());
    let by_default = query_trigger(&query);
    let mut strict = query_trigger(&query);
    strict.ignore_null_values = Some(false);
    let mut lenient = query_trigger(&query);
    lenient.ignore_null_values = Some(true);
    let scaler = PrometheusScaler::connect(&strict).expect("connect");
    let readings = scaler.poll(&[by_default, strict, lenient]).await;
    for (reading, setting) in readings[..2].iter().zip(["unset", "false"]) {
        match reading {
            Err(ScalerError::BadResponse { cause, target, .. }) => {
                assert!(cause.contains("empty"), "{cause}");
                assert!(
                    target.contains("up{job="),
                    "the error names the query: {target}"
                );
            }
            other => panic!(
                "empty result with ignoreNullValues {setting}: expected an error, got {other:?}"
            ),
        }
    }
    let zero = readings[2]
        .as_ref()
        .expect("ignoreNullValues true reads 0, as KEDA's default");
    assert_eq!((zero.value, zero.active), (0.0, false));
    println!(
        "prometheus: empty result by default -> {}",
        readings[0].as_ref().unwrap_err()
    );
}

#[tokio::test]
async fn bad_queries_and_non_finite_results_are_errors() {
    let malformed = query_trigger("sum(up{");
    match poll_one(&malformed).await {
        Err(ScalerError::Broker { cause, .. }) => {
            assert!(
                cause.contains("400") && cause.contains("bad_data"),
                "{cause}"
            )
        }
        other => panic!("malformed PromQL: expected a broker error, got {other:?}"),
    }
    let range = query_trigger("up[1m]");
    assert!(
        matches!(poll_one(&range).await, Err(ScalerError::BadResponse { cause, .. }) if cause.contains("matrix")),
        "a range vector is not a value"
    );
    let mut nan = query_trigger("0/0");
    nan.ignore_null_values = Some(false);
    assert!(
        matches!(poll_one(&nan).await, Err(ScalerError::BadResponse { cause, .. }) if cause.contains("NaN"))
    );
    nan.ignore_null_values = None;
    assert!(
        matches!(poll_one(&nan).await, Err(ScalerError::BadResponse { cause, .. }) if cause.contains("NaN")),
        "NaN is an error by default"
    );
    nan.ignore_null_values = Some(true);
    assert_eq!(poll_one(&nan).await.expect("NaN is null").value, 0.0);
    let infinite = query_trigger("1/0");
    assert!(
        matches!(poll_one(&infinite).await, Err(ScalerError::BadResponse { cause, .. }) if cause.contains("inf")),
        "+Inf is an error even with ignoreNullValues"
    );
    let scalar = query_trigger("scalar(vector(2.5))");
    assert_eq!(poll_one(&scalar).await.expect("scalar").value, 2.5);
}

#[tokio::test]
async fn scrape_mode_reads_prometheus_own_metrics() {
    let metrics = format!("{}/metrics", prometheus_url());
    let head = scrape_trigger(&metrics, "prometheus_tsdb_head_series", &[]);
    let mut scrapes = scrape_trigger(
        &metrics,
        "prometheus_http_requests_total",
        &[("handler", "/metrics"), ("code", "200")],
    );
    scrapes.aggregation = Some(Aggregation::Max);
    let absent = scrape_trigger(
        &metrics,
        "prometheus_http_requests_total",
        &[("handler", "/nope")],
    );
    let scaler = PrometheusScaler::connect(&head).expect("connect");
    let readings = common::eventually(
        "Prometheus to have scraped itself",
        Duration::from_secs(30),
        || async {
            let readings = scaler
                .poll(&[head.clone(), scrapes.clone(), absent.clone()])
                .await;
            matches!(&readings[0], Ok(r) if r.value > 0.0).then_some(readings)
        },
    )
    .await;
    let scraped = readings[1].as_ref().expect("self-scrapes counted");
    assert!(scraped.value >= 1.0, "{scraped:?}");
    assert_eq!(scraped.extra, vec![("series", 1.0)]);
    match &readings[2] {
        Err(ScalerError::NotFound { what, .. }) => assert!(what.contains("/nope"), "{what}"),
        other => panic!("no matching sample: expected NotFound, got {other:?}"),
    }
    assert_eq!(head.metric_name(), "prometheus-prometheus-tsdb-head-series");
    println!(
        "prometheus: scrape of {metrics}: head series {}, /metrics requests {}",
        readings[0].as_ref().unwrap().value,
        scraped.value
    );
}

#[tokio::test]
async fn scrape_mode_sends_credentials_and_headers_once_per_url() {
    let target = ExpositionTarget::start(
        "# HELP queue_depth Messages waiting.\n# TYPE queue_depth gauge\nqueue_depth{queue=\"a\",vhost=\"/\"} 30\nqueue_depth{queue=\"b\",vhost=\"/\"} 12\n",
    )
    .await;
    let dir = std::env::temp_dir().join(common::unique_name("spillway-prom-secrets"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "t0ken-from-file\n").unwrap();
    std::fs::write(dir.join("password"), "s3cret-pw").unwrap();

    let mut by_queue = scrape_trigger(&target.url(), "queue_depth", &[("queue", "a")]);
    by_queue.bearer_token = Some(SecretSource::file(dir.join("token")));
    by_queue.custom_headers = KeyValues::parse("X-Scope-OrgID=tenant-a").unwrap();
    let mut total = by_queue.clone();
    total.labels.clear();
    let mut largest = total.clone();
    largest.aggregation = Some(Aggregation::Max);
    let triggers = [by_queue.clone(), total, largest];
    let scaler = PrometheusScaler::connect(&by_queue).expect("connect");
    let readings: Vec<f64> = scaler
        .poll(&triggers)
        .await
        .into_iter()
        .map(|r| r.expect("scrape").value)
        .collect();
    assert_eq!(readings, [30.0, 42.0, 30.0]);
    assert_eq!(
        target.count.load(Ordering::SeqCst),
        1,
        "one request for three triggers"
    );
    let request = target.requests.lock().unwrap()[0].to_ascii_lowercase();
    assert!(
        request.contains("authorization: bearer t0ken-from-file\r\n"),
        "{request}"
    );
    assert!(request.contains("x-scope-orgid: tenant-a\r\n"), "{request}");
    assert!(
        request.contains("accept: text/plain;version=0.0.4"),
        "{request}"
    );

    let mut basic = scrape_trigger(&target.url(), "queue_depth", &[]);
    basic.username = Some("spillway".into());
    basic.password = Some(SecretSource::file(dir.join("password")));
    assert_ne!(
        PrometheusScaler::connection_key(&basic),
        PrometheusScaler::connection_key(&by_queue),
        "other credentials, other scaler"
    );
    assert_eq!(poll_one(&basic).await.expect("basic").value, 42.0);
    let request = target.requests.lock().unwrap()[1].to_ascii_lowercase();
    assert!(
        request.contains("authorization: basic c3bpbgx3yxk6cznjcmv0lxb3\r\n"),
        "{request}"
    );

    // A secret that cannot be read is an error naming the field, not an anonymous request.
    std::fs::remove_dir_all(&dir).unwrap();
    match poll_one(&basic).await {
        Err(ScalerError::InvalidTrigger { field, message, .. }) => {
            assert_eq!(field, "password");
            assert!(!message.contains("s3cret"), "{message}");
        }
        other => panic!("unreadable secret: expected InvalidTrigger, got {other:?}"),
    }
    assert_eq!(target.count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unreachable_and_slow_servers_are_errors_quickly() {
    let mut down = query_trigger("up");
    down.server_address = Some("http://127.0.0.1:1".into());
    let started = Instant::now();
    let err = poll_one(&down).await.unwrap_err();
    assert!(matches!(err, ScalerError::Unreachable { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // A server that accepts and never answers: the trigger's timeout bounds the poll.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            holder.lock().unwrap().push(socket);
        }
    });
    let mut slow = scrape_trigger(&format!("http://{address}/metrics"), "x", &[]);
    slow.timeout = Some(300);
    let started = Instant::now();
    let err = poll_one(&slow).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, ScalerError::Timeout { after, .. } if *after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    println!(
        "prometheus: unreachable -> {}; silent server -> {err} in {took:?}",
        down.server_address.unwrap()
    );
}

/// Issue 13: triggers of one Prometheus server share a scaler; a bad query, a query the
/// server gives up on, a non-value result or a missing scrape path fails its own trigger only,
/// and the good queries and scrapes of the same poll read their values.
#[tokio::test]
async fn one_bad_query_fails_only_its_trigger() {
    let mut empty = query_trigger(&format!("up{{job=\"{}\"}}", test_id()));
    empty.ignore_null_values = Some(false);
    let mut gave_up = query_trigger("sum(rate(prometheus_http_requests_total[5m]))");
    // Prometheus's own per-query deadline, far too short: it answers 503 for this query only.
    gave_up.query_parameters = KeyValues::parse("timeout=0.000000001").expect("parameters");
    let triggers = [
        query_trigger("vector(3)"),
        query_trigger("sum(up{"),
        query_trigger("up[1m]"),
        query_trigger("1/0"),
        empty,
        gave_up,
        scrape_trigger(
            &format!("{}/no-such-path", prometheus_url()),
            "prometheus_build_info",
            &[],
        ),
        scrape_trigger(
            &format!("{}/metrics", prometheus_url()),
            "prometheus_build_info",
            &[],
        ),
        query_trigger("scalar(vector(2.5))"),
    ];
    let key = PrometheusScaler::connection_key(&triggers[0]);
    assert!(
        triggers
            .iter()
            .all(|t| PrometheusScaler::connection_key(t) == key),
        "one scaler serves them all"
    );
    let scaler = PrometheusScaler::connect(&triggers[0]).expect("connect");
    let readings = scaler.poll(&triggers).await;
    let outcomes: Vec<Result<f64, &str>> = readings
        .iter()
        .map(|r| r.as_ref().map(|r| r.value).map_err(ScalerError::reason))
        .collect();
    assert_eq!(
        outcomes,
        [
            Ok(3.0),
            Err("broker_error"),
            Err("bad_response"),
            Err("bad_response"),
            Err("bad_response"),
            Err("broker_error"),
            Err("not_found"),
            Ok(1.0),
            Ok(2.5),
        ],
        "{readings:?}"
    );
    println!(
        "prometheus: query past its deadline -> {}",
        readings[5].as_ref().unwrap_err()
    );
}

#[tokio::test]
async fn a_round_of_many_queries_keeps_a_bounded_few_in_flight() {
    // Through a proxy that counts what Prometheus is asked at once.
    let proxy = CountingProxy::start(&prometheus_url()).await;
    let triggers: Vec<PrometheusTrigger> = (0..100)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "serverAddress": format!("http://{}", proxy.address),
                "query": format!("vector({i})"),
                "threshold": 10,
            }))
            .expect("trigger")
        })
        .collect();
    let scaler = PrometheusScaler::connect(&triggers[0]).expect("connect");
    let values: Vec<f64> = scaler
        .poll(&triggers)
        .await
        .into_iter()
        .map(|r| r.expect("every query answers").value)
        .collect();
    assert_eq!(values, (0..100).map(f64::from).collect::<Vec<_>>());
    let most = proxy.most_in_flight();
    println!("prometheus: 100 queries in one round, at most {most} in flight");
    assert!(
        (1..=REQUESTS_IN_FLIGHT).contains(&most),
        "{most} requests in flight at once, more than {REQUESTS_IN_FLIGHT}"
    );
}
