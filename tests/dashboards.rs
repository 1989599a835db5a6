//! The Grafana dashboards (`dashboards/*.json`) against spillway's real series: a
//! `spillway serve` polls triggers on the harness brokers (one of each kind, plus triggers on
//! unreachable brokers so error series exist), the harness Prometheus scrapes its /metrics
//! through file_sd, and every panel query runs there. Queries on spillway's own series must
//! return data; those on series only a cluster or the controller exports must still parse.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use serde_json::Value;

const DASHBOARDS: [&str; 2] = [
    "dashboards/spillway-overview.json",
    "dashboards/spillway-brokers.json",
];

/// The Brokers dashboard's rows, in order: title and the `broker` label value they filter on.
const BROKER_ROWS: [(&str, &str); 5] = [
    ("Kafka", "kafka"),
    ("RabbitMQ", "rabbitmq"),
    ("NATS JetStream", "nats-jetstream"),
    ("Prometheus", "prometheus"),
    ("Cron", "cron"),
];

/// Panels (dashboard uid, title) whose queries may return nothing against `spillway serve`
/// alone, and why. They must still parse.
const MAY_BE_EMPTY: [(&str, &str, &str); 9] = [
    ("spillway-overview", "In fallback", "controller series"),
    ("spillway-overview", "Paused", "controller series"),
    (
        "spillway-overview",
        "HPA replicas: desired vs current",
        "kube-state-metrics",
    ),
    ("spillway-overview", "Scaling actions", "controller series"),
    (
        "spillway-overview",
        "Fallback and pause",
        "controller series",
    ),
    (
        "spillway-overview",
        "APIService availability",
        "kube-apiserver's aggregator",
    ),
    (
        "spillway-overview",
        "Reconciles by result",
        "controller series",
    ),
    ("spillway-overview", "Leader", "controller series"),
    (
        "spillway-brokers",
        "Cron: scaler errors by reason",
        "a cron trigger reads the clock: it has nothing to fail",
    ),
];

/// Series the dashboards and alert rules name that `spillway serve` does not export: the
/// controller's, kube-state-metrics' and kube-apiserver's.
const CLUSTER_SERIES: [&str; 9] = [
    "spillway_controller_reconciles_total",
    "spillway_controller_scaling_actions_total",
    "spillway_scaled_object_fallback",
    "spillway_scaled_object_paused",
    "spillway_leader",
    "kube_horizontalpodautoscaler_status_desired_replicas",
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
    "aggregator_unavailable_apiservice",
];

/// The scaled objects the test's config defines, all in one namespace of the test's own.
const SCALED_OBJECTS: [&str; 6] = ["orders", "jobs", "streams", "query", "office", "broken"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn load(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path))
        .unwrap_or_else(|err| panic!("cannot read {path}: {err}"));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{path} is not JSON: {err}"))
}

/// Every panel of a dashboard, rows included, with collapsed rows' panels.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            all.extend(inner);
        }
    }
    all
}

/// One panel target: where it is and its PromQL.
#[derive(Debug, Clone)]
struct PanelQuery {
    dashboard: String,
    panel: String,
    ref_id: String,
    expr: String,
}

impl PanelQuery {
    fn may_be_empty(&self) -> bool {
        MAY_BE_EMPTY
            .iter()
            .any(|(uid, title, _)| *uid == self.dashboard && *title == self.panel)
    }
}

fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let uid = dashboard["uid"].as_str().expect("uid").to_owned();
    panels(dashboard)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            let uid = uid.clone();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| PanelQuery {
                    dashboard: uid.clone(),
                    panel: title.clone(),
                    ref_id: t["refId"].as_str().unwrap_or_default().to_owned(),
                    expr: t["expr"].as_str().unwrap_or_default().to_owned(),
                })
        })
        .collect()
}

/// The template variables of type `query`: name and Grafana query (`label_values(...)`).
fn variable_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let query = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .expect("variable query");
            (v["name"].as_str().unwrap().to_owned(), query.to_owned())
        })
        .collect()
}

/// The series names (`spillway_*`, `kube_*`, `aggregator_*`) an expression reads.
fn series_names(expr: &str) -> BTreeSet<String> {
    let names = regex::Regex::new(r"\b(?:spillway|kube|aggregator)_[a-z_]+\b").unwrap();
    names
        .find_iter(expr)
        .map(|m| m.as_str().to_owned())
        .collect()
}

/// Grafana's variable interpolation for the values the live test selects: `$name` and
/// `${name}`; `$1` (label_replace) is left alone. An unknown variable is an error.
fn substitute(expr: &str, values: &BTreeMap<&str, String>) -> Result<String, String> {
    let variable = regex::Regex::new(r"\$\{(\w+)\}|\$(\w+)").unwrap();
    let mut unknown = Vec::new();
    let out = variable.replace_all(expr, |c: &regex::Captures| {
        let name = c.get(1).or(c.get(2)).unwrap().as_str();
        if name.chars().all(|ch| ch.is_ascii_digit()) {
            return c[0].to_owned();
        }
        values.get(name).cloned().unwrap_or_else(|| {
            unknown.push(name.to_owned());
            c[0].to_owned()
        })
    });
    if unknown.is_empty() {
        Ok(out.into_owned())
    } else {
        Err(format!("unknown variables {unknown:?} in {expr}"))
    }
}

/// `label_values(selector, label)` as PromQL: `count by (label) (selector)`.
fn label_values_as_promql(query: &str) -> (String, String) {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values() query: {query}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("label_values() without a label: {query}"));
    let label = label.trim().to_owned();
    (format!("count by ({label}) ({})", selector.trim()), label)
}

#[test]
fn dashboards_are_well_formed_and_readable() {
    let mut titles_by_uid: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for path in DASHBOARDS {
        let dashboard = load(path);
        let uid = dashboard["uid"].as_str().expect("uid").to_owned();
        assert_eq!(dashboard["schemaVersion"], 39, "{path}");
        assert!(
            dashboard["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("spillway")),
            "{path}"
        );
        assert!(
            dashboard["tags"]
                .as_array()
                .unwrap()
                .contains(&"spillway".into())
        );
        assert!(
            dashboard["description"]
                .as_str()
                .is_some_and(|d| d.len() > 20)
        );

        let variables = dashboard["templating"]["list"]
            .as_array()
            .expect("templating");
        let variable = |name: &str| {
            variables
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{path}: no variable {name}"))
        };
        let datasource = variable("datasource");
        assert_eq!(
            (&datasource["type"], &datasource["query"]),
            (&"datasource".into(), &"prometheus".into()),
            "{path}"
        );
        for name in ["job", "namespace", "scaled_object"] {
            let v = variable(name);
            assert_eq!(v["type"], "query", "{path} {name}");
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{path} {name}");
            assert_eq!(
                (&v["multi"], &v["includeAll"]),
                (&true.into(), &true.into()),
                "{path} {name}: multi-value with All"
            );
        }
        for (name, query) in variable_queries(&dashboard) {
            assert!(
                query.starts_with("label_values(spillway_")
                    && query.ends_with(&format!(", {name})")),
                "{path} {name}: {query}"
            );
        }

        let mut ids = BTreeSet::new();
        let mut titles = Vec::new();
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            assert!(!title.is_empty(), "{path}: a panel without a title");
            assert!(
                ids.insert(panel["id"].as_u64().expect("id")),
                "{path}: id repeats"
            );
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
            assert!(
                w > 0 && x + w <= 24 && grid["h"].as_u64().unwrap() > 0,
                "{path} {title}"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert!(!titles.contains(&title), "{path}: title {title} repeats");
            titles.push(title.clone());
            assert!(
                panel["description"].as_str().is_some_and(|d| d.len() > 20),
                "{path} {title}: describe what it shows"
            );
            assert_eq!(
                panel["datasource"],
                serde_json::json!({"type": "prometheus", "uid": "${datasource}"}),
                "{path} {title}"
            );
            assert!(
                panel["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|u| !u.is_empty()),
                "{path} {title}: no unit"
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{path} {title}: no query");
            for target in targets {
                assert_eq!(
                    target["datasource"]["uid"], "${datasource}",
                    "{path} {title}"
                );
                assert!(target["refId"].is_string() && target["expr"].is_string());
            }
        }
        titles_by_uid.insert(uid, titles);
    }

    // Brokers: one row per broker kind, every panel under it filtered by its broker label.
    let brokers = load(DASHBOARDS[1]);
    let rows: Vec<&str> = panels(&brokers)
        .into_iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(rows, BROKER_ROWS.map(|(title, _)| title));
    let mut row = None;
    for panel in panels(&brokers) {
        let title = panel["title"].as_str().unwrap();
        if panel["type"] == "row" {
            row = BROKER_ROWS.iter().find(|(t, _)| *t == title);
            continue;
        }
        let (row_title, broker) = row.expect("a panel above the first row");
        assert!(
            title.starts_with(row_title),
            "{title} sits under {row_title}"
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains(&format!("broker=\"{broker}\"")),
                "{title}: {expr}"
            );
        }
    }

    // The overview covers what operators ask first.
    let overview: String = panel_queries(&load(DASHBOARDS[0]))
        .iter()
        .map(|q| q.expr.clone())
        .collect();
    for series in [
        "spillway_trigger_value",
        "spillway_trigger_active",
        "spillway_trigger_consecutive_failures",
        "spillway_cache_age_seconds",
        "spillway_poll_errors_total",
        "spillway_poll_duration_seconds_bucket",
        "spillway_api_requests_total",
        "spillway_api_request_duration_seconds_bucket",
    ]
    .into_iter()
    .chain(CLUSTER_SERIES)
    {
        assert!(
            overview.contains(series),
            "no overview panel reads {series}"
        );
    }

    for (uid, title, why) in MAY_BE_EMPTY {
        assert!(
            titles_by_uid[uid].iter().any(|t| t == title),
            "MAY_BE_EMPTY names {uid} / {title} ({why}), which does not exist"
        );
    }
}

#[test]
fn substitution_covers_grafana_forms_and_rejects_unknown_variables() {
    let values = BTreeMap::from([
        ("job", "j".to_owned()),
        ("__rate_interval", "1m".to_owned()),
    ]);
    assert_eq!(
        substitute(
            r#"label_replace(rate(x{job=~"$job"}[$__rate_interval]), "a", "$1", "b", "(.*)") + y{job="${job}"}"#,
            &values
        ),
        Ok(
            r#"label_replace(rate(x{job=~"j"}[1m]), "a", "$1", "b", "(.*)") + y{job="j"}"#
                .to_owned()
        )
    );
    assert!(substitute("x{a=\"$cluster\"}", &values).is_err());
    assert_eq!(
        label_values_as_promql("label_values(m{job=~\"$job\", a=\"b,c\"}, namespace)"),
        (
            "count by (namespace) (m{job=~\"$job\", a=\"b,c\"})".to_owned(),
            "namespace".to_owned()
        )
    );
}

use common::serve::Server;

/// Files the test wrote (config, secret, file_sd target); removed when the test ends, passed
/// or failed, so Prometheus stops scraping a server that is gone.
struct Written(Vec<PathBuf>);

impl Drop for Written {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

use common::free_port;

/// Registers `address` as a scrape target under `job` (file_sd labels override the scrape
/// config's job name `file`). Written aside and renamed, so Prometheus never reads half a file.
fn register_scrape_target(address: &str, job: &str) -> PathBuf {
    let dir = std::env::var_os("SPILLWAY_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("target/services"))
        .join("prometheus/targets");
    std::fs::create_dir_all(&dir).expect("targets dir");
    let path = dir.join(format!("{job}.json"));
    let partial = path.with_extension("json.partial");
    let json = serde_json::json!([{"targets": [address], "labels": {"job": job}}]);
    std::fs::write(&partial, json.to_string()).expect("write target");
    std::fs::rename(&partial, &path).expect("publish target");
    path
}

/// An instant query: the result list, or Prometheus's error (a query that does not parse).
async fn instant_query(client: &reqwest::Client, expr: &str) -> Result<Vec<Value>, String> {
    let url = format!(
        "{}/api/v1/query",
        common::endpoint("SPILLWAY_PROMETHEUS_URL")
    );
    let response = client
        .get(&url)
        .query(&[("query", expr)])
        .send()
        .await
        .map_err(|err| format!("GET {url}: {err}"))?;
    let body: Value = response
        .json()
        .await
        .map_err(|err| format!("not JSON: {err}"))?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// A result holds data when at least one sample is a number (a quantile over nothing is NaN).
fn has_number(result: &[Value]) -> bool {
    result
        .iter()
        .filter_map(|r| r["value"][1].as_str())
        .any(|v| v.parse::<f64>().is_ok_and(|v| !v.is_nan()))
}

/// A backlog on each harness broker: a Kafka topic with 40 messages per partition (two
/// minutes old) past the group's commits, a RabbitMQ queue of 12, a JetStream consumer 7 behind.
struct Backlogs {
    topic: String,
    group: String,
    _connection: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
    js: jetstream::Context,
    stream: String,
}

impl Backlogs {
    async fn create() -> Self {
        let topic = common::kafka::create_topic(2).await;
        let group = common::unique_name("dashboards-group");
        common::kafka::produce(&topic, &[50, 50], Duration::from_secs(120)).await;
        common::kafka::commit(&group, &[(topic.as_str(), 0, 10), (topic.as_str(), 1, 10)]);
        let (_connection, channel, queue) =
            common::rabbitmq::queue_with_messages("dashboards", 12).await;

        let client = async_nats::connect(common::endpoint("SPILLWAY_NATS_URL"))
            .await
            .expect("NATS connect");
        let js = jetstream::new(client);
        let stream = common::unique_name("dashboards");
        let subject = format!("{stream}.jobs");
        js.create_stream(stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .expect("create stream")
        .create_consumer(consumer::pull::Config {
            durable_name: Some("workers".into()),
            ..Default::default()
        })
        .await
        .expect("create consumer");
        for i in 0..7 {
            js.publish(subject.clone(), format!("job {i}").into())
                .await
                .expect("publish")
                .await
                .expect("publish ack");
        }
        Self {
            topic,
            group,
            _connection,
            channel,
            queue,
            js,
            stream,
        }
    }

    async fn delete(self) {
        self.channel
            .queue_delete(&self.queue, Default::default())
            .await
            .unwrap();
        self.js.delete_stream(&self.stream).await.unwrap();
        common::kafka::delete_topic(&self.topic).await;
    }
}

/// The config file: one scaled object per broker kind on `backlogs`, plus `broken`, with a
/// trigger on an unreachable server of each networked broker. `rabbitmq_url` is the file
/// holding the management URL with credentials.
fn config_yaml(
    (port, metrics_port): (u16, u16),
    namespace: &str,
    backlogs: &Backlogs,
    rabbitmq_url: &Path,
) -> String {
    let Backlogs {
        topic,
        group,
        queue,
        stream,
        ..
    } = backlogs;
    let bootstrap = common::kafka::bootstrap();
    let monitor = common::endpoint("SPILLWAY_NATS_MONITOR");
    let monitor = monitor.trim_start_matches("http://").trim_end_matches('/');
    let prometheus = common::endpoint("SPILLWAY_PROMETHEUS_URL");
    let rabbitmq_url = rabbitmq_url.display();
    let scaled_objects = [
        (
            "orders",
            format!(
                "kafka: {{bootstrapServers: \"{bootstrap}\", consumerGroup: {group}, topic: {topic}, lagThreshold: 10}}"
            ),
        ),
        (
            "jobs",
            format!(
                "rabbitmq: {{hostFromSecret: {{file: \"{rabbitmq_url}\"}}, queueName: {queue}, value: 5}}"
            ),
        ),
        (
            "streams",
            format!(
                "natsJetStream: {{natsServerMonitoringEndpoint: \"{monitor}\", stream: {stream}, consumer: workers, lagThreshold: 5}}"
            ),
        ),
        (
            "query",
            format!(
                "prometheus: {{serverAddress: \"{prometheus}\", query: 'sum(up{{job=\"prometheus\"}})', threshold: 1}}"
            ),
        ),
        (
            "office",
            "cron: {timezone: UTC, start: '0 0 * * *', end: '59 23 * * *', desiredReplicas: 3}"
                .to_owned(),
        ),
        (
            "broken",
            [
                "kafka: {bootstrapServers: \"127.0.0.1:1\", consumerGroup: g, topic: t, timeout: 500}",
                "rabbitmq: {host: \"amqp://127.0.0.1:1/\", queueName: gone, value: 5, timeout: 500}",
                "natsJetStream: {natsServerMonitoringEndpoint: \"127.0.0.1:1\", stream: s, consumer: c}",
                "prometheus: {serverAddress: \"http://127.0.0.1:1\", query: up, threshold: 1}",
            ]
            .join("\n      - "),
        ),
    ];
    assert_eq!(
        scaled_objects.each_ref().map(|(name, _)| *name),
        SCALED_OBJECTS
    );
    let mut yaml = format!(
        "server:\n  listen: 127.0.0.1:{port}\n  metricsListen: 127.0.0.1:{metrics_port}\npollingInterval: 1\nscaledObjects:\n"
    );
    for (name, triggers) in scaled_objects {
        yaml += &format!(
            "  - name: {name}\n    namespace: {namespace}\n    triggers:\n      - {triggers}\n"
        );
    }
    yaml
}

/// Starts `spillway serve --no-auth --config <config>` and waits for /healthz on `port`.
async fn start_serve(config: &Path, port: u16) -> Server {
    // The broken triggers fail every second by design: only errors are worth reading.
    common::serve::spawn(config, port, Some("error")).await
}

/// Metrics API requests (discovery, 200, and a missing metric, 404) every 100 ms until
/// aborted, so request rates and latency quantiles have data.
fn spawn_api_traffic(port: u16) -> tokio::task::JoinHandle<()> {
    let https = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1");
    tokio::spawn(async move {
        loop {
            let _ = https.get(&base).send().await;
            let _ = https
                .get(format!("{base}/namespaces/default/s0-nothing"))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Runs each template variable's query; its values must include `expected[name]`.
async fn check_variables(
    client: &reqwest::Client,
    dashboards: &[Value],
    values: &BTreeMap<&str, String>,
    expected: &BTreeMap<&str, Vec<String>>,
    deadline: Instant,
) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, query) in dashboards.iter().flat_map(variable_queries) {
        let want = expected
            .get(name.as_str())
            .unwrap_or_else(|| panic!("variable {name} has no expected values in this test"));
        let (promql, label) = label_values_as_promql(&query);
        let promql = substitute(&promql, values).unwrap_or_else(|e| panic!("{e}"));
        loop {
            let found: BTreeSet<String> = match instant_query(client, &promql).await {
                Ok(result) => result
                    .iter()
                    .filter_map(|r| r["metric"][&label].as_str().map(str::to_owned))
                    .collect(),
                Err(err) => {
                    failures.push(format!("variable {name}: {promql}: {err}"));
                    break;
                }
            };
            let missing: Vec<_> = want.iter().filter(|w| !found.contains(*w)).collect();
            if missing.is_empty() {
                println!("ok  variable {name}: {found:?}");
                break;
            }
            if Instant::now() > deadline {
                failures.push(format!("variable {name}: {promql} lacks {missing:?}"));
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    failures
}

/// Runs every panel query: each must parse, and those not in [`MAY_BE_EMPTY`] must return a
/// number by `deadline`. Returns how many ran and what failed.
async fn check_panels(
    client: &reqwest::Client,
    dashboards: &[Value],
    values: &BTreeMap<&str, String>,
    deadline: Instant,
) -> (usize, Vec<String>) {
    let (mut checked, mut failures) = (0, Vec::new());
    for query in dashboards.iter().flat_map(panel_queries) {
        checked += 1;
        let at = format!("{} / {} / {}", query.dashboard, query.panel, query.ref_id);
        let expr = match substitute(&query.expr, values) {
            Ok(expr) => expr,
            Err(err) => {
                failures.push(format!("{at}: {err}"));
                continue;
            }
        };
        loop {
            match instant_query(client, &expr).await {
                Err(err) => {
                    failures.push(format!("{at}: does not parse: {err}\n    {expr}"));
                    break;
                }
                Ok(result) if query.may_be_empty() || has_number(&result) => {
                    println!("ok  {at}: {} series", result.len());
                    break;
                }
                Ok(result) if Instant::now() > deadline => {
                    failures.push(format!(
                        "{at}: no data from spillway's own series\n    {expr}\n    -> {result:?}"
                    ));
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }
    (checked, failures)
}

/// Every series a dashboard or an alert rule names must be one `scraped` (spillway's
/// /metrics) holds or one of [`CLUSTER_SERIES`]: a misspelt name would otherwise pass as a
/// panel that may be empty.
fn check_series_names(scraped: &str, dashboards: &[Value]) -> Vec<String> {
    let exported: BTreeSet<&str> = scraped
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let rules: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(repo("deploy/prometheus/spillway-rules.yaml")).unwrap(),
    )
    .unwrap();
    let rule_exprs = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .map(|r| r["expr"].as_str().unwrap().to_owned());
    let exprs = dashboards
        .iter()
        .flat_map(|d| {
            panel_queries(d)
                .into_iter()
                .map(|q| q.expr)
                .chain(variable_queries(d).into_iter().map(|(_, q)| q))
        })
        .chain(rule_exprs);
    let mut failures = Vec::new();
    for expr in exprs {
        for name in series_names(&expr) {
            if !exported.contains(name.as_str()) && !CLUSTER_SERIES.contains(&name.as_str()) {
                failures.push(format!(
                    "{name} is neither exported by spillway nor a known cluster series: {expr}"
                ));
            }
        }
    }
    failures
}

#[tokio::test]
async fn every_panel_query_runs_on_spillways_real_series() {
    let backlogs = Backlogs::create().await;
    let namespace = common::unique_name("dash");
    let job = common::unique_name("spillway-dashboards");
    let (port, metrics_port) = (free_port(), free_port());

    // Removed when the test ends, passed or failed (declared first, so dropped last).
    let mut written = Written(Vec::new());
    let rabbitmq_url = std::env::temp_dir().join(common::unique_name("dashboards-rabbitmq-url"));
    written.0.push(rabbitmq_url.clone());
    let rabbitmq_http = common::endpoint("SPILLWAY_RABBITMQ_HTTP");
    std::fs::write(
        &rabbitmq_url,
        format!("{}/%2f\n", rabbitmq_http.trim_end_matches('/')),
    )
    .unwrap();
    let config = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("dashboards")));
    written.0.push(config.clone());
    std::fs::write(
        &config,
        config_yaml((port, metrics_port), &namespace, &backlogs, &rabbitmq_url),
    )
    .unwrap();

    let _server = start_serve(&config, port).await;
    written.0.push(register_scrape_target(
        &format!("127.0.0.1:{metrics_port}"),
        &job,
    ));
    let traffic = spawn_api_traffic(port);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    common::eventually(
        "Prometheus to scrape spillway (up == 1)",
        Duration::from_secs(60),
        || async {
            let result = instant_query(&client, &format!("up{{job=\"{job}\"}} == 1"))
                .await
                .ok()?;
            (!result.is_empty()).then_some(())
        },
    )
    .await;

    // Grafana's values for "All" of this test's job, namespace and scaled objects.
    let values = BTreeMap::from([
        ("job", job.clone()),
        ("namespace", namespace.clone()),
        ("scaled_object", format!("({})", SCALED_OBJECTS.join("|"))),
        ("__rate_interval", "1m".to_owned()),
        ("__interval", "15s".to_owned()),
        ("__range", "1h".to_owned()),
        ("datasource", "prometheus".to_owned()),
    ]);
    let expected = BTreeMap::from([
        ("job", vec![job.clone()]),
        ("namespace", vec![namespace.clone()]),
        ("scaled_object", SCALED_OBJECTS.map(str::to_owned).to_vec()),
    ]);
    // Rates need two scrapes, RabbitMQ's management figures a few seconds and Kafka's
    // lag-seconds a full round: queries that must have data are retried until this deadline.
    let deadline = Instant::now() + Duration::from_secs(120);
    let dashboards = DASHBOARDS.map(load);
    let mut failures = check_variables(&client, &dashboards, &values, &expected, deadline).await;
    let (checked, panel_failures) = check_panels(&client, &dashboards, &values, deadline).await;
    failures.extend(panel_failures);
    let scraped = client
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    failures.extend(check_series_names(&scraped, &dashboards));
    traffic.abort();

    assert!(checked > 40, "only {checked} panel queries found");
    assert!(
        failures.is_empty(),
        "{} failures over {checked} panel queries, the variables and the series names:\n{}",
        failures.len(),
        failures.join("\n")
    );
    backlogs.delete().await;
}
