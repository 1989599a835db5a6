//! Replicas sharing the polling (`spillway run --share-polling`, issue #20 item 5): what the
//! brokers see, what each replica holds, how fast copies travel and how long a group goes
//! unpolled when its owner dies or stops. Real `spillway run` processes on the local control
//! plane, real brokers; nothing is asserted beyond sanity, figures are printed.
//!
//! 1. Broker requests per polling interval with 1, 2 and 3 replicas sharing, and 2 without
//!    (today's behaviour), on the same objects: `SPILLWAY_SHARING_KAFKA` (200) Kafka objects,
//!    each its own consumer group on one topic, 10 RabbitMQ queues (management API, URL with
//!    credentials from a Secret, through a counting proxy) and 4 Prometheus servers (counting
//!    proxies) x 5 queries, `pollingInterval: 5`. Kafka: the increase of every replica's
//!    `spillway_kafka_requests_total` over the window; HTTP: the proxies' counts.
//! 2. Copies: metrics GET latency p50/p99 from one replica for a trigger it polls and for one
//!    whose value is copied from its owner (sequential direct HTTPS GETs), and the delay from
//!    a change at the broker (records produced to the topic) until the owner serves it and
//!    until a non-owner does.
//! 3. Failover: SIGKILL of the replica polling the RabbitMQ group until another replica polls
//!    it, with the default member Lease (10 s) and with 4 s; SIGTERM: the gap between the old
//!    owner's last poll and the successor's first.
//! 4. RSS per replica with `SPILLWAY_SHARING_FLEET` (5,000) more Kafka objects, over 1 and
//!    over 3 replicas, once every replica serves them. The fleet is created once.
//!
//! Knobs: `SPILLWAY_SHARING_KAFKA`, `SPILLWAY_SHARING_FLEET`, `SPILLWAY_SHARING_WINDOW` (30 s),
//! `SPILLWAY_SHARING_GETS` (2,000); `SPILLWAY_SHARING_ONLY=requests` stops after part 1. `make bench-sharing`, or `cargo bench --bench sharing`
//! with the services up. Deletes the namespaces named `bench-share-*` of earlier runs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::http_proxy::CountingProxy;
use common::k8s::{self, SpillwayController};
use futures::StreamExt;
use serde_json::{Value, json};
use spillway::config::TriggerConfig;
use spillway::scalers::served_metric_name;

const LABEL: &str = "scaledobject.spillway.dev/name";
const POLLING_INTERVAL: u64 = 5;
const PARTITIONS: i32 = 4;
const RECORDS: i64 = 100;
const COMMITTED: i64 = 10;
const QUEUES: usize = 10;
const PROMETHEUS_SERVERS: usize = 4;
const QUERIES_PER_SERVER: usize = 5;
const FLEET_NAMESPACES: usize = 4;
const CREATE_CONCURRENCY: usize = 16;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One scaled object the bench reads back: where, and under which metric name.
#[derive(Clone, Debug)]
struct Object {
    ns: String,
    name: String,
    metric: String,
}

fn metric_of(trigger: &Value) -> String {
    let config: TriggerConfig = serde_json::from_value(trigger.clone()).expect("a trigger");
    served_metric_name(0, &config.trigger().expect("one trigger"))
}

async fn create_objects(admin: &kube::Client, objects: Vec<(Object, Value)>) -> Vec<Object> {
    let created = futures::stream::iter(objects)
        .map(|(object, trigger)| {
            let admin = admin.clone();
            async move {
                k8s::apply(
                    &admin,
                    json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ScaledObject",
                        "metadata": {"name": object.name, "namespace": object.ns},
                        "spec": {"scaleTargetRef": {"name": "idle"}, "minReplicaCount": 1,
                            "maxReplicaCount": 5, "pollingInterval": POLLING_INTERVAL,
                            "triggers": [trigger]}}),
                )
                .await;
                object
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY);
    created.collect().await
}

/// A namespace with the one Deployment its objects all target (several HPAs on one target:
/// the HPA controller leaves them alone, so the only metrics reads are the bench's).
async fn prepare_namespace(admin: &kube::Client, prefix: &str) -> String {
    let ns = k8s::namespace(admin, prefix).await;
    k8s::apply(
        admin,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "idle", "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "idle"}},
                "template": {"metadata": {"labels": {"app": "idle"}},
                    "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}}}),
    )
    .await;
    ns
}

async fn value_from(client: &reqwest::Client, port: u16, object: &Object) -> Option<f64> {
    let url = format!(
        "https://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/{}?labelSelector={LABEL}%3D{}",
        object.ns, object.metric, object.name
    );
    let response = client.get(&url).send().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    let text = body["items"][0]["value"].as_str()?.to_owned();
    text.parse::<f64>().ok().or_else(|| {
        text.strip_suffix('m')
            .and_then(|m| m.parse::<f64>().ok())
            .map(|m| m / 1000.0)
    })
}

async fn scrape(metrics_port: u16) -> String {
    match reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The sum of every sample of `name` (all label sets).
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `spillway_kafka_requests_total` by its `api` label.
fn by_api(text: &str) -> BTreeMap<String, f64> {
    let mut apis = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("spillway_kafka_requests_total{") else {
            continue;
        };
        let api = rest
            .split("api=\"")
            .nth(1)
            .and_then(|a| a.split('"').next())
            .unwrap_or("?")
            .to_owned();
        if let Some(n) = line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) {
            *apis.entry(api).or_default() += n;
        }
    }
    apis
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn start_replicas(
    kubeconfig: &std::path::Path,
    count: usize,
    sharing: bool,
    lease_seconds: Option<u64>,
) -> Vec<SpillwayController> {
    let lease = common::unique_name("bench-share");
    let lease_text = lease_seconds.map(|s| s.to_string());
    let mut args: Vec<&str> = Vec::new();
    if sharing {
        args.push("--share-polling");
        if let Some(s) = &lease_text {
            args.extend(["--member-lease-duration-seconds", s.as_str()]);
        }
    }
    let mut replicas = Vec::new();
    for i in 0..count {
        replicas.push(
            SpillwayController::start_with(
                kubeconfig,
                common::free_port(),
                &lease,
                &format!("{lease}-{i}"),
                None,
                &args,
                "info,lapin=off,pinky_swear=off",
            )
            .await,
        );
    }
    if sharing {
        for r in &replicas {
            common::eventually(
                &format!("{} to see {count} replicas", r.identity),
                Duration::from_secs(60),
                || async {
                    (sum_of(&scrape(r.metrics_port).await, "spillway_sharing_members")
                        == count as f64)
                        .then_some(())
                },
            )
            .await;
        }
    }
    replicas
}

/// Waits until every replica serves each of `sample`.
async fn wait_served(
    client: &reqwest::Client,
    replicas: &[SpillwayController],
    sample: &[Object],
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    for r in replicas {
        for object in sample {
            common::eventually(
                &format!("{} to serve {}/{}", r.identity, object.ns, object.name),
                timeout,
                || value_from(client, r.port, object),
            )
            .await;
        }
    }
    started.elapsed()
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn get_latencies(
    client: &reqwest::Client,
    port: u16,
    object: &Object,
    n: usize,
) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let started = Instant::now();
        if value_from(client, port, object).await.is_none() {
            failed += 1;
        }
        times.push(started.elapsed());
    }
    times.sort();
    (quantile(&times, 0.5), quantile(&times, 0.99), failed)
}

/// When `port` first serves a value for `object` other than `before`.
async fn changed_at(client: &reqwest::Client, port: u16, object: &Object, before: f64) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = value_from(client, port, object).await
            && v != before
        {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "no change served on {port}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first request to `proxy` at or after `from` by one of `replicas` (other processes on the
/// control plane may poll the same objects).
fn first_by(
    proxy: &CountingProxy,
    replicas: &[SpillwayController],
    from: Instant,
) -> Option<(u32, Instant)> {
    replicas
        .iter()
        .filter_map(|r| Some((r.pid(), proxy.first_from(r.pid(), from)?)))
        .min_by_key(|(_, at)| *at)
}

struct Brokers {
    prometheus: Vec<CountingProxy>,
    rabbitmq: CountingProxy,
    topic: String,
}

impl Brokers {
    fn http(&self) -> Vec<&CountingProxy> {
        self.prometheus
            .iter()
            .chain(std::iter::once(&self.rabbitmq))
            .collect()
    }
}

/// One row of the request table.
struct RequestRow {
    replicas: usize,
    sharing: bool,
    kafka: f64,
    http: f64,
    pollers: String,
    /// HTTP requests per interval by processes other than the replicas (not counted).
    foreign: f64,
    /// Kafka requests per interval by API.
    kafka_apis: String,
}

async fn measure_requests(
    replicas: &[SpillwayController],
    brokers: &Brokers,
    window: Duration,
) -> (RequestRow, Vec<f64>) {
    let pids: Vec<u32> = replicas.iter().map(|r| r.pid()).collect();
    let mut before = Vec::new();
    let mut apis_before = Vec::new();
    for r in replicas {
        let text = scrape(r.metrics_port).await;
        before.push(sum_of(&text, "spillway_kafka_requests_total"));
        apis_before.push(by_api(&text));
    }
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let mut kafka_by_replica = Vec::new();
    let mut apis: BTreeMap<String, f64> = BTreeMap::new();
    for ((r, b), apis_b) in replicas.iter().zip(&before).zip(&apis_before) {
        let text = scrape(r.metrics_port).await;
        kafka_by_replica.push(sum_of(&text, "spillway_kafka_requests_total") - b);
        for (api, n) in by_api(&text) {
            *apis.entry(api.clone()).or_default() += n - apis_b.get(&api).copied().unwrap_or(0.0);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let intervals = elapsed / POLLING_INTERVAL as f64;
    // The replicas' requests in the window. Another spillway on the same control plane (a
    // test run beside the bench) polls these objects too: its requests are shown, not counted.
    let mut foreign = 0;
    let mut http = 0;
    for proxy in brokers.http() {
        for (pid, n) in proxy.by_pid_since(start) {
            if pids.contains(&pid) {
                http += n;
            } else {
                foreign += n;
            }
        }
    }
    let pollers: Vec<String> = brokers
        .http()
        .iter()
        .map(|p| {
            let by = p.by_pid_since(start);
            let ours = by.keys().filter(|pid| pids.contains(pid)).count();
            let other: Vec<String> = by
                .iter()
                .filter(|(pid, _)| !pids.contains(pid))
                .map(|(pid, n)| format!("{n} by pid {pid}"))
                .collect();
            if !other.is_empty() {
                format!("{ours}(+{})", other.join(" "))
            } else {
                ours.to_string()
            }
        })
        .collect();
    let kafka_pollers = kafka_by_replica.iter().filter(|k| **k > 0.0).count();
    (
        RequestRow {
            replicas: replicas.len(),
            sharing: false,
            kafka: kafka_by_replica.iter().sum::<f64>() / intervals,
            http: http as f64 / intervals,
            foreign: foreign as f64 / intervals,
            pollers: format!("kafka {kafka_pollers}, http {}", pollers.join("/")),
            kafka_apis: apis
                .iter()
                .filter(|(_, n)| **n > 0.0)
                .map(|(api, n)| format!("{api} {:.1}", n / intervals))
                .collect::<Vec<_>>()
                .join(", "),
        },
        kafka_by_replica,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let kafka_objects = env_number("SPILLWAY_SHARING_KAFKA", 200) as usize;
    let fleet_size = env_number("SPILLWAY_SHARING_FLEET", 5_000) as usize;
    let window = Duration::from_secs(env_number("SPILLWAY_SHARING_WINDOW", 30));
    let gets = env_number("SPILLWAY_SHARING_GETS", 2_000) as usize;
    let interval = Duration::from_secs(POLLING_INTERVAL);

    // The machine and the brokers.
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kafka_version = std::env::var("SPILLWAY_KAFKA_CLASSPATH")
        .ok()
        .or_else(|| std::panic::catch_unwind(|| common::endpoint("SPILLWAY_KAFKA_CLASSPATH")).ok())
        .and_then(|c| {
            c.split('/')
                .find(|s| s.starts_with("kafka-"))
                .map(|s| s.trim_start_matches("kafka-").to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let management = common::endpoint("SPILLWAY_RABBITMQ_HTTP");
    let management_origin = management
        .rsplit('@')
        .next()
        .map(|host| format!("http://{host}"))
        .unwrap();
    let rabbitmq_version = {
        let credentials = management["http://".len()..]
            .split_once('@')
            .map_or("guest:guest", |(c, _)| c);
        let (user, password) = credentials.split_once(':').unwrap_or(("guest", "guest"));
        let overview: Option<Value> = match reqwest::Client::new()
            .get(format!("{management_origin}/api/overview"))
            .basic_auth(user, Some(password))
            .send()
            .await
        {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        overview
            .and_then(|v| v["rabbitmq_version"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into())
    };
    let profile = if cfg!(debug_assertions) {
        "dev (debug)"
    } else {
        "release"
    };
    println!("# spillway shared polling bench");
    println!(
        "date {date}; nproc {nproc}; memory {memory:.1} GiB; Kafka {kafka_version}; RabbitMQ {rabbitmq_version}; build {profile}"
    );
    println!(
        "objects: {kafka_objects} Kafka (a consumer group each, one topic of {PARTITIONS} partitions), {QUEUES} RabbitMQ queues (one management API, credentials from a Secret), {PROMETHEUS_SERVERS} Prometheus servers x {QUERIES_PER_SERVER} queries; pollingInterval {POLLING_INTERVAL} s; window {} s; fleet {fleet_size}",
        window.as_secs()
    );

    let admin = k8s::admin().await;
    let kubeconfig = k8s::install_spillway(&admin).await;
    k8s::delete_namespaces_starting_with(&admin, "bench-share-").await;
    let direct = k8s::direct_client(Some("admin"));

    // The brokers' side.
    let mut prometheus = Vec::new();
    for _ in 0..PROMETHEUS_SERVERS {
        prometheus.push(CountingProxy::start(&common::endpoint("SPILLWAY_PROMETHEUS_URL")).await);
    }
    let brokers = Brokers {
        prometheus,
        rabbitmq: CountingProxy::start(&management_origin).await,
        topic: common::kafka::create_topic(PARTITIONS).await,
    };
    common::kafka::produce(
        &brokers.topic,
        &[RECORDS; PARTITIONS as usize],
        Duration::ZERO,
    )
    .await;
    let (_amqp, channel) =
        common::rabbitmq::confirmed_channel(&common::endpoint("SPILLWAY_RABBITMQ_AMQP")).await;
    let mut queues = Vec::new();
    for j in 0..QUEUES {
        let queue = common::unique_name("bench-share");
        common::rabbitmq::declare_with_messages(&channel, &queue, false, j + 1).await;
        queues.push(queue);
    }
    let bootstrap = common::kafka::bootstrap();

    // The objects of parts 1 to 3.
    let ns = prepare_namespace(&admin, "bench-share").await;
    let with_password = management.replacen(
        &management_origin["http://".len()..],
        &brokers.rabbitmq.address.to_string(),
        1,
    );
    k8s::apply(
        &admin,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rabbit", "namespace": ns},
            "stringData": {"url": with_password}}),
    )
    .await;
    let mut specs = Vec::new();
    let mut groups = Vec::new();
    for i in 0..kafka_objects {
        let group = common::unique_name("bench-share-g");
        let trigger = json!({"kafka": {"bootstrapServers": bootstrap, "topic": brokers.topic,
            "consumerGroup": group, "lagThreshold": 1000}});
        groups.push(group);
        let object = Object {
            ns: ns.clone(),
            name: format!("kafka-{i}"),
            metric: metric_of(&trigger),
        };
        specs.push((object, trigger));
    }
    for (j, queue) in queues.iter().enumerate() {
        let trigger = json!({"rabbitmq": {"hostFromSecret": {"secretKeyRef": {"name": "rabbit", "key": "url"}},
            "protocol": "http", "queueName": queue, "mode": "QueueLength", "value": 10}});
        let object = Object {
            ns: ns.clone(),
            name: format!("rabbit-{j}"),
            metric: metric_of(&trigger),
        };
        specs.push((object, trigger));
    }
    for (s, proxy) in brokers.prometheus.iter().enumerate() {
        for q in 0..QUERIES_PER_SERVER {
            let trigger = json!({"prometheus": {"serverAddress": format!("http://{}", proxy.address),
                "query": format!("vector({})", 10 * s + q + 1), "threshold": 1000}});
            let object = Object {
                ns: ns.clone(),
                name: format!("prom-{s}-{q}"),
                metric: metric_of(&trigger),
            };
            specs.push((object, trigger));
        }
    }
    let offsets: Vec<(&str, i32, i64)> = (0..PARTITIONS)
        .map(|p| (brokers.topic.as_str(), p, COMMITTED))
        .collect();
    common::kafka::commit_many(&groups, &offsets).await;
    let creating = Instant::now();
    let objects = create_objects(&admin, specs).await;
    println!(
        "created {} objects in {:.1?}",
        objects.len(),
        creating.elapsed()
    );
    let find = |name: &str| objects.iter().find(|o| o.name == name).unwrap().clone();
    let kafka_sample = vec![
        find("kafka-0"),
        find(&format!("kafka-{}", kafka_objects - 1)),
    ];
    let mut sample = kafka_sample.clone();
    sample.push(find("rabbit-0"));
    sample.push(find(&format!("rabbit-{}", QUEUES - 1)));
    for s in 0..PROMETHEUS_SERVERS {
        sample.push(find(&format!("prom-{s}-0")));
    }

    // 1. Requests per interval.
    println!("\n## 1. Broker requests per polling interval");
    let mut rows = Vec::new();
    let mut kept = None;
    for (count, sharing) in [(1, true), (2, true), (2, false), (3, true)] {
        let replicas = start_replicas(&kubeconfig, count, sharing, None).await;
        let ready = wait_served(&direct, &replicas, &sample, Duration::from_secs(120)).await;
        // A full interval after the last first value, so every round is a steady one.
        tokio::time::sleep(interval + Duration::from_secs(1)).await;
        let (mut row, kafka_by_replica) = measure_requests(&replicas, &brokers, window).await;
        row.sharing = sharing;
        println!(
            "{count} replica(s), sharing {}: served after {ready:.1?}; Kafka {:.1}/interval (by replica {:?}), HTTP {:.1}/interval (+{:.1} by other processes, not counted); pollers per group: {}; Kafka by API: {}",
            if sharing { "on" } else { "off" },
            row.kafka,
            kafka_by_replica,
            row.http,
            row.foreign,
            row.pollers,
            row.kafka_apis
        );
        rows.push(row);
        if count == 3 {
            kept = Some((replicas, kafka_by_replica));
        }
    }
    let base = (rows[0].kafka, rows[0].http);
    println!(
        "\n| replicas | sharing | Kafka requests/interval | HTTP requests/interval | ratio to 1 replica (Kafka / HTTP) | replicas polling each group |"
    );
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.3} / {:.3} | {} |",
            row.replicas,
            if row.sharing { "on" } else { "off" },
            row.kafka,
            row.http,
            row.kafka / base.0,
            row.http / base.1,
            row.pollers
        );
    }

    if std::env::var("SPILLWAY_SHARING_ONLY").as_deref() == Ok("requests") {
        return;
    }

    // 2. Copies: latency and delay, on the three sharing replicas.
    println!("\n## 2. Served from a replica's own polling vs copied from the owner");
    let (replicas, kafka_by_replica) = kept.expect("the 3-replica run");
    let pids: Vec<u32> = replicas.iter().map(|r| r.pid()).collect();
    let since = Instant::now() - window;
    let kafka_owner = kafka_by_replica
        .iter()
        .position(|k| *k > 0.0)
        .expect("a replica polls Kafka");
    let mut owned_by: Vec<(usize, Object)> = vec![(kafka_owner, kafka_sample[0].clone())];
    let rabbit_by = brokers.rabbitmq.by_pid_since(since);
    if let Some(i) = pids.iter().position(|p| rabbit_by.contains_key(p)) {
        owned_by.push((i, find("rabbit-0")));
    }
    for (s, proxy) in brokers.prometheus.iter().enumerate() {
        let by = proxy.by_pid_since(since);
        if let Some(i) = pids.iter().position(|p| by.contains_key(p)) {
            owned_by.push((i, find(&format!("prom-{s}-0"))));
        }
    }
    let pick = (0..replicas.len()).find_map(|r| {
        let own = owned_by.iter().find(|(o, _)| *o == r)?;
        let copied = owned_by.iter().find(|(o, _)| *o != r)?;
        Some((r, own.1.clone(), copied.1.clone()))
    });
    let mut latency_rows = Vec::new();
    if let Some((r, own, copied)) = pick {
        let port = replicas[r].port;
        for (what, object) in [
            ("polled by itself", &own),
            ("copied from its owner", &copied),
        ] {
            let (p50, p99, failed) = get_latencies(&direct, port, object, gets).await;
            println!(
                "{}: {what} ({}): {gets} sequential GETs, p50 {p50:.2?}, p99 {p99:.2?}, {failed} failed",
                replicas[r].identity, object.name
            );
            latency_rows.push((what, p50, p99));
        }
    } else {
        println!("no replica had both an own and a copied trigger: latency not measured");
    }
    let watched = kafka_sample[0].clone();
    let owner_port = replicas[kafka_owner].port;
    let other_port = replicas[(kafka_owner + 1) % replicas.len()].port;
    let mut delays = Vec::new();
    for round in 0..3 {
        let before = value_from(&direct, owner_port, &watched)
            .await
            .unwrap_or(-1.0);
        common::kafka::produce(&brokers.topic, &[2; PARTITIONS as usize], Duration::ZERO).await;
        let produced = Instant::now();
        let (at_owner, at_other) = tokio::join!(
            changed_at(&direct, owner_port, &watched, before),
            changed_at(&direct, other_port, &watched, before)
        );
        let (o, c) = (at_owner - produced, at_other - produced);
        println!(
            "change {round}: owner serves it after {o:.2?}, a non-owner after {c:.2?} (copy {:.2?})",
            c.saturating_sub(o)
        );
        delays.push((o, c));
        // The next change in another phase of the polling round.
        tokio::time::sleep(Duration::from_millis(1_700)).await;
    }

    // 3. Failover.
    println!("\n## 3. Failover of the RabbitMQ group");
    let mut failover_rows = Vec::new();
    let rabbit_owner = |replicas: &[SpillwayController], from: Instant| -> Option<usize> {
        let by = brokers.rabbitmq.by_pid_since(from);
        (0..replicas.len()).max_by_key(|i| by.get(&replicas[*i].pid()).copied().unwrap_or(0))
    };
    let mut replicas = replicas;
    for lease_seconds in [None, Some(4)] {
        if lease_seconds.is_some() {
            drop(std::mem::take(&mut replicas));
            replicas = start_replicas(&kubeconfig, 3, true, lease_seconds).await;
            wait_served(&direct, &replicas, &sample, Duration::from_secs(120)).await;
            tokio::time::sleep(interval * 2).await;
        }
        let lease_label = format!("{} s", lease_seconds.unwrap_or(10));
        let owner = rabbit_owner(&replicas, Instant::now() - interval * 2).expect("an owner");
        let mut victim = replicas.remove(owner);
        let pid = victim.pid();
        let killed_at = Instant::now();
        victim.kill();
        let (_, again) = common::eventually(
            "another replica to poll the group",
            Duration::from_secs(90),
            || async { first_by(&brokers.rabbitmq, &replicas, killed_at) },
        )
        .await;
        let since_last = again
            - brokers
                .rabbitmq
                .last_by(&[pid], killed_at)
                .unwrap_or(killed_at);
        println!(
            "SIGKILL, member Lease {lease_label}: polled again {:.1?} after the kill ({since_last:.1?} after the victim's last poll)",
            again - killed_at
        );
        failover_rows.push((
            format!("SIGKILL, member Lease {lease_label}"),
            again - killed_at,
            since_last,
        ));
    }
    // Graceful: the survivors of the 4 s run.
    tokio::time::sleep(interval * 2).await;
    let owner = rabbit_owner(&replicas, Instant::now() - interval).expect("an owner");
    let stopping = replicas.remove(owner);
    let pid = stopping.pid();
    let stop_at = Instant::now();
    let stopped = stopping.terminate_in_background(Duration::from_secs(30));
    let (_, first) = common::eventually(
        "another replica to poll the group after SIGTERM",
        Duration::from_secs(60),
        || async { first_by(&brokers.rabbitmq, &replicas, stop_at) },
    )
    .await;
    let (stopping, exited) = stopped.await.unwrap();
    let last = brokers.rabbitmq.last_by(&[pid], first).unwrap_or(stop_at);
    let gap = first.saturating_duration_since(last);
    println!(
        "SIGTERM: successor's first poll {:.1?} after the signal; gap after the old owner's last poll {gap:.1?} (exited: {exited})",
        first - stop_at
    );
    failover_rows.push(("SIGTERM (graceful)".into(), first - stop_at, gap));
    drop(stopping);
    drop(replicas);

    // 4. RSS with the fleet.
    println!("\n## 4. RSS per replica with {fleet_size} more Kafka objects");
    let mut fleet_namespaces = Vec::new();
    for _ in 0..FLEET_NAMESPACES {
        fleet_namespaces.push(prepare_namespace(&admin, "bench-share-fleet").await);
    }
    let mut fleet_groups = Vec::new();
    let mut fleet_specs = Vec::new();
    for i in 0..fleet_size {
        let group = common::unique_name("bench-share-f");
        let trigger = json!({"kafka": {"bootstrapServers": bootstrap, "topic": brokers.topic,
            "consumerGroup": group, "lagThreshold": 1000}});
        fleet_groups.push(group);
        let object = Object {
            ns: fleet_namespaces[i % FLEET_NAMESPACES].clone(),
            name: format!("fleet-{i}"),
            metric: metric_of(&trigger),
        };
        fleet_specs.push((object, trigger));
    }
    common::kafka::commit_many(&fleet_groups, &offsets).await;
    let creating = Instant::now();
    let fleet = create_objects(&admin, fleet_specs).await;
    println!(
        "created {} objects in {:.1?}",
        fleet.len(),
        creating.elapsed()
    );
    let step = (fleet.len() / 16).max(1);
    let mut fleet_sample: Vec<Object> = fleet.iter().step_by(step).cloned().collect();
    fleet_sample.extend(fleet.last().cloned());
    fleet_sample.extend(sample.iter().cloned());
    let mut rss_rows = Vec::new();
    for count in [1, 3] {
        let replicas = start_replicas(&kubeconfig, count, true, None).await;
        let ready = wait_served(&direct, &replicas, &fleet_sample, Duration::from_secs(900)).await;
        tokio::time::sleep(interval * 2).await;
        let mut figures = Vec::new();
        for r in &replicas {
            let text = scrape(r.metrics_port).await;
            figures.push(format!(
                "{:.0} MiB (owns {}/{} groups, {} states received)",
                rss_mib(r.pid()),
                sum_of(&text, "spillway_sharing_owned_groups"),
                sum_of(&text, "spillway_sharing_groups"),
                sum_of(&text, "spillway_sharing_states_received_total"),
            ));
        }
        println!(
            "{count} replica(s): every replica serves the sample after {ready:.1?}; RSS {}",
            figures.join("; ")
        );
        rss_rows.push((count, figures));
    }

    // The README's table.
    let objects_total =
        fleet_size + kafka_objects + QUEUES + PROMETHEUS_SERVERS * QUERIES_PER_SERVER;
    println!(
        "\n## Summary ({date}, {nproc} cores, {memory:.1} GiB, Kafka {kafka_version}, RabbitMQ {rabbitmq_version}, build {profile})\n"
    );
    println!("| figure | value |");
    println!("|---|---|");
    for row in &rows {
        println!(
            "| broker requests/interval, {} replica(s), sharing {} | Kafka {:.1} ({:.2}x), HTTP {:.1} ({:.2}x) |",
            row.replicas,
            if row.sharing { "on" } else { "off" },
            row.kafka,
            row.kafka / base.0,
            row.http,
            row.http / base.1
        );
    }
    for (what, p50, p99) in &latency_rows {
        println!("| metrics GET, trigger {what} | p50 {p50:.2?}, p99 {p99:.2?} |");
    }
    for (i, (o, c)) in delays.iter().enumerate() {
        println!(
            "| broker change {i} served by owner / non-owner | {o:.2?} / {c:.2?} (copy {:.2?}) |",
            c.saturating_sub(*o)
        );
    }
    for (what, after, gap) in &failover_rows {
        println!("| {what}: polled again after / gap since last poll | {after:.1?} / {gap:.1?} |");
    }
    for (count, figures) in &rss_rows {
        println!(
            "| RSS per replica, {objects_total} objects over {count} | {} |",
            figures.join("; ")
        );
    }
    k8s::delete_namespaces_starting_with(&admin, "bench-share-").await;
}
