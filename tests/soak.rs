//! Soak: `spillway run` as a user runs it (installed from `deploy/`, acting as its
//! ServiceAccount, on the local control plane) with ScaledObjects created, edited and deleted
//! continuously (1,000 alive), both brokers restarted twice and the metrics API under steady
//! load, for `SPILLWAY_SOAK_SECS` seconds (180 in `make test`, 1,800 in `make soak`).
//!
//! What it measures, after a warm-up and at the end: the process's RSS, open fds and threads
//! (from `/proc`), its tokio tasks, the series on its `/metrics` and its cache and registry
//! sizes (the `spillway_runtime_tasks`, `spillway_cache_entries` and `spillway_registered_*`
//! gauges). It fails when any of RSS, fds, tasks, series per live object or cache entries per
//! live trigger grows by 10 % or more, when a deleted object still has a series on `/metrics`
//! after [`SERIES_GRACE`], and when deleting every object leaves anything behind.
//!
//! The objects are cheap and real: RabbitMQ queues (management API), Kafka consumer groups
//! on one topic, Prometheus queries and cron windows, every `pollingInterval` seconds (10 by
//! default). Each namespace has one Deployment every object targets, so spillway's leader
//! creates and keeps an HPA per object while kube-controller-manager's HPA controller, seeing
//! several HPAs on one target, leaves them alone: the API load is the test's own, not 1,000
//! HPAs'. Knobs: `SPILLWAY_SOAK_OBJECTS` (1,000), `SPILLWAY_SOAK_CHURN` (create, edit and
//! delete steps per second, 2), `SPILLWAY_SOAK_POLLING_INTERVAL` (10),
//! `SPILLWAY_SOAK_WARMUP_SECS` (60).
//!
//! It restarts the brokers, registers the external metrics APIService and deletes every
//! namespace named `soak-*`: run it on services of its own, or alone (cargo runs test binaries
//! one after another). Run with `--nocapture` for the table.

mod common;

use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::k8s::{self, SpillwayController};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use spillway::config::TriggerConfig;
use spillway::scalers::served_metric_name;
use tokio::task::JoinHandle;

/// Every namespace this test creates starts with it; an earlier run's are deleted first.
const NAMESPACE_PREFIX: &str = "soak-";
/// Objects are spread over this many namespaces.
const NAMESPACES: usize = 4;
/// The Deployment every object of a namespace scales.
const TARGET: &str = "target";
const EXTERNAL: &str = "v1beta1.external.metrics.k8s.io";
const LABEL: &str = "scaledobject.spillway.dev/name";
/// Growth allowed between the start and end figures.
const MAX_DRIFT: f64 = 0.10;
/// How long a deleted object's series may outlive spillway's unregistration of it (and how
/// long after its delete it is first looked for): the controller's sweep (every 2 s) and the
/// poller's sync (every 1 s), with room for a loaded machine.
const SERIES_GRACE: Duration = Duration::from_secs(10);
/// Concurrent creates while filling the fleet.
const FILL_CONCURRENCY: usize = 8;
/// Clients reading the metrics API straight (front-proxy certificate), and their rate each.
const DIRECT_CLIENTS: usize = 4;
const DIRECT_PERIOD: Duration = Duration::from_millis(200);
/// One client reading through kube-apiserver's aggregator, at this period.
const AGGREGATED_PERIOD: Duration = Duration::from_millis(500);
/// Queues and consumer groups the triggers choose from.
const QUEUES: usize = 12;
const GROUPS: usize = 12;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
        Err(_) => default,
    }
}

/// The run's knobs, from the environment.
#[derive(Debug, Clone, Copy)]
struct Settings {
    run: Duration,
    warm_up: Duration,
    objects: usize,
    churn_per_second: u64,
    polling_interval: u32,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            run: Duration::from_secs(env_number("SPILLWAY_SOAK_SECS", 180)),
            warm_up: Duration::from_secs(env_number("SPILLWAY_SOAK_WARMUP_SECS", 60)),
            objects: env_number("SPILLWAY_SOAK_OBJECTS", 1_000) as usize,
            churn_per_second: env_number("SPILLWAY_SOAK_CHURN", 2).max(1),
            polling_interval: env_number("SPILLWAY_SOAK_POLLING_INTERVAL", 10).max(1) as u32,
        }
    }
}

/// A small deterministic generator (xorshift64*): the run is the same for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// What the triggers read: queues, consumer groups with committed offsets on one topic, and
/// Prometheus.
struct Brokers {
    queues: Vec<String>,
    bootstrap: String,
    topic: String,
    groups: Vec<String>,
    prometheus: String,
}

impl Brokers {
    async fn create() -> Self {
        let queues = durable_queues(QUEUES).await;
        let bootstrap = common::kafka::bootstrap();
        let topic = common::kafka::create_topic(3).await;
        common::kafka::produce(&topic, &[50, 50, 50], Duration::ZERO).await;
        let groups: Vec<String> = (0..GROUPS)
            .map(|_| common::unique_name("soak-group"))
            .collect();
        // librdkafka's commit waits for the group coordinator, which a broker started a moment
        // ago may not have yet.
        let (commit_topic, commit_groups) = (topic.clone(), groups.clone());
        tokio::task::spawn_blocking(move || {
            let offsets: Vec<(&str, i32, i64)> =
                (0..3).map(|p| (commit_topic.as_str(), p, 10)).collect();
            for group in &commit_groups {
                common::kafka::commit(group, &offsets);
            }
        })
        .await
        .expect("commits");
        Self {
            queues,
            bootstrap,
            topic,
            groups,
            prometheus: common::endpoint("SPILLWAY_PROMETHEUS_URL"),
        }
    }
}

/// Durable queues (a broker restart keeps them) holding 0, 3, 6, ... persistent messages.
async fn durable_queues(count: usize) -> Vec<String> {
    let (connection, channel) =
        common::rabbitmq::confirmed_channel(&common::endpoint("SPILLWAY_RABBITMQ_AMQP")).await;
    let mut queues = Vec::new();
    for q in 0..count {
        let queue = common::unique_name("soak-queue");
        common::rabbitmq::declare_with_messages(&channel, &queue, true, q * 3).await;
        queues.push(queue);
    }
    let _ = connection.close(200, "done").await;
    queues
}

/// The broker kinds of the fleet, chosen 30 % RabbitMQ, 30 % Kafka, 25 % Prometheus, 15 % cron.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RabbitMq,
    Kafka,
    Prometheus,
    Cron,
}

impl Kind {
    fn of(n: u64) -> Self {
        match n % 20 {
            0..=5 => Self::RabbitMq,
            6..=11 => Self::Kafka,
            12..=16 => Self::Prometheus,
            _ => Self::Cron,
        }
    }
}

/// One live ScaledObject as the test made it.
#[derive(Debug, Clone)]
struct Alive {
    namespace: String,
    name: String,
    kind: Kind,
    /// The served metric name of its one trigger (an edit of a queue changes it).
    metric: String,
    created: Instant,
}

#[derive(Debug, Default)]
struct FleetState {
    alive: Vec<Alive>,
    /// Deleted objects and when the API server confirmed the delete.
    deleted: Vec<(String, String, Instant)>,
    next: u64,
    created: u64,
    edited: u64,
    removed: u64,
    /// API server errors of the churn (each a create, edit or delete not done).
    failures: Vec<String>,
}

/// The ScaledObjects of the run, made and changed through the API server.
struct Fleet {
    admin: kube::Client,
    brokers: Brokers,
    namespaces: Vec<String>,
    polling_interval: u32,
    state: Mutex<FleetState>,
    rng: Mutex<Rng>,
}

impl Fleet {
    fn api(&self, namespace: &str) -> Api<DynamicObject> {
        k8s::scaled_objects(&self.admin, Some(namespace))
    }

    /// The trigger of `kind` in its `variant`: which queue, group or query, and the threshold.
    fn trigger(&self, kind: Kind, variant: usize) -> (Value, String) {
        let b = &self.brokers;
        let trigger = match kind {
            Kind::RabbitMq => json!({"rabbitmq": {
                "hostFromSecret": {"secretKeyRef": {"name": "rabbitmq", "key": "url"}},
                "queueName": b.queues[variant % b.queues.len()], "mode": "QueueLength",
                "value": 5 + variant % 20}}),
            Kind::Kafka => json!({"kafka": {
                "bootstrapServers": b.bootstrap, "topic": b.topic,
                "consumerGroup": b.groups[variant % b.groups.len()],
                "lagThreshold": 10 + variant % 50, "timeout": 2000}}),
            Kind::Prometheus => json!({"prometheus": {
                "serverAddress": b.prometheus, "query": format!("vector({})", variant % 100),
                "threshold": 10 + variant % 5}}),
            Kind::Cron => json!({"cron": {
                "timezone": "UTC", "start": "0 0 * * *", "end": "59 23 * * *",
                "desiredReplicas": 1 + variant % 5}}),
        };
        let config: TriggerConfig =
            serde_json::from_value(trigger.clone()).expect("a trigger entry");
        let parsed = config.trigger().expect("one trigger");
        (trigger, served_metric_name(0, &parsed))
    }

    async fn apply(&self, namespace: &str, name: &str, trigger: Value) -> Result<(), kube::Error> {
        let object = json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"scaleTargetRef": {"name": TARGET}, "minReplicaCount": 1,
                "maxReplicaCount": 5, "pollingInterval": self.polling_interval,
                "triggers": [trigger]}});
        self.api(namespace)
            .patch(
                name,
                &PatchParams::apply("spillway-soak").force(),
                &Patch::Apply(&object),
            )
            .await
            .map(|_| ())
    }

    fn variant(&self) -> usize {
        self.rng.lock().unwrap().below(1_000)
    }

    fn fail(&self, what: String) {
        let mut state = self.state.lock().unwrap();
        if state.failures.len() < 1_000 {
            state.failures.push(what);
        }
    }

    async fn create(&self) {
        let n = {
            let mut state = self.state.lock().unwrap();
            state.next += 1;
            state.next
        };
        let kind = Kind::of(n);
        let namespace = self.namespaces[n as usize % self.namespaces.len()].clone();
        let name = format!("so-{n}");
        let (trigger, metric) = self.trigger(kind, self.variant());
        match self.apply(&namespace, &name, trigger).await {
            Ok(()) => {
                let mut state = self.state.lock().unwrap();
                state.created += 1;
                state.alive.push(Alive {
                    namespace,
                    name,
                    kind,
                    metric,
                    created: Instant::now(),
                });
            }
            Err(err) => self.fail(format!("create {namespace}/{name}: {err}")),
        }
    }

    /// Changes one live object's queue, group, query or threshold. The churn runs one step at
    /// a time, so no delete races it (an apply after a delete would create the object again).
    async fn edit(&self) {
        let picked = {
            let state = self.state.lock().unwrap();
            let i = self.rng.lock().unwrap().below(state.alive.len());
            state.alive.get(i).cloned()
        };
        let Some(object) = picked else { return };
        let (trigger, metric) = self.trigger(object.kind, self.variant());
        match self.apply(&object.namespace, &object.name, trigger).await {
            Ok(()) => {
                let mut state = self.state.lock().unwrap();
                state.edited += 1;
                if let Some(alive) = state
                    .alive
                    .iter_mut()
                    .find(|a| a.name == object.name && a.namespace == object.namespace)
                {
                    alive.metric = metric;
                }
            }
            Err(err) => self.fail(format!("edit {}/{}: {err}", object.namespace, object.name)),
        }
    }

    async fn delete(&self) {
        let picked = {
            let mut state = self.state.lock().unwrap();
            let i = self.rng.lock().unwrap().below(state.alive.len());
            (i < state.alive.len()).then(|| state.alive.swap_remove(i))
        };
        let Some(object) = picked else { return };
        match self
            .api(&object.namespace)
            .delete(&object.name, &DeleteParams::default())
            .await
        {
            Ok(_) => {
                let mut state = self.state.lock().unwrap();
                state.removed += 1;
                state
                    .deleted
                    .push((object.namespace, object.name, Instant::now()));
            }
            Err(err) => {
                self.fail(format!(
                    "delete {}/{}: {err}",
                    object.namespace, object.name
                ));
                self.state.lock().unwrap().alive.push(object);
            }
        }
    }

    fn alive(&self) -> usize {
        self.state.lock().unwrap().alive.len()
    }

    /// A live object polled at least twice by now, for an API read.
    fn pick_read(&self) -> Option<Alive> {
        let settled = Duration::from_secs(2 * u64::from(self.polling_interval));
        let state = self.state.lock().unwrap();
        let mut rng = self.rng.lock().unwrap();
        for _ in 0..8 {
            let object = state.alive.get(rng.below(state.alive.len()))?;
            if object.created.elapsed() > settled {
                return Some(object.clone());
            }
        }
        None
    }

    /// Objects deleted more than `grace` before `at`.
    fn deleted_before(&self, at: Instant, grace: Duration) -> Vec<(String, String, Instant)> {
        self.state
            .lock()
            .unwrap()
            .deleted
            .iter()
            .filter(|(_, _, when)| *when + grace < at)
            .cloned()
            .collect()
    }
}

/// One look at spillway's footprint: `/proc/<pid>` and its `/metrics`.
#[derive(Debug, Clone)]
struct Footprint {
    rss_kib: f64,
    fds: f64,
    threads: f64,
    tasks: f64,
    series: f64,
    cache_entries: f64,
    tracked_specs: f64,
    registered_triggers: f64,
    registered_objects: f64,
    /// (namespace, scaled_object) of every series that names one.
    owners: HashSet<(String, String)>,
}

impl Footprint {
    async fn read(pid: u32, metrics_port: u16) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|err| panic!("spillway (pid {pid}) is gone: {err}"));
        let field = |name: &str| -> f64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/<pid>/fd")
            .count() as f64;
        let text = scrape(metrics_port).await;
        let mut gauges = HashMap::new();
        let mut series = 0.0;
        let mut owners = HashSet::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            series += 1.0;
            if let Some((name, value)) = line.split_once(' ')
                && !name.contains('{')
            {
                gauges.insert(name.to_owned(), value.trim().parse::<f64>().unwrap_or(-1.0));
            }
            if let (Some(ns), Some(so)) = (label(line, "namespace"), label(line, "scaled_object")) {
                owners.insert((ns.to_owned(), so.to_owned()));
            }
        }
        let gauge = |name: &str| {
            *gauges
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not on spillway's /metrics"))
        };
        Self {
            rss_kib: field("VmRSS:"),
            fds,
            threads: field("Threads:"),
            tasks: gauge("spillway_runtime_tasks"),
            series,
            cache_entries: gauge("spillway_cache_entries"),
            tracked_specs: gauge("spillway_cache_tracked_specs"),
            registered_triggers: gauge("spillway_registered_triggers"),
            registered_objects: gauge("spillway_registered_scaled_objects"),
            owners,
        }
    }

    /// The median of three looks 2 s apart, figure by figure (one poll burst or one request in
    /// flight does not make a figure).
    async fn settled(pid: u32, metrics_port: u16) -> Self {
        let mut looks = Vec::new();
        for i in 0..3 {
            if i > 0 {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            looks.push(Self::read(pid, metrics_port).await);
        }
        let median = |f: fn(&Self) -> f64| {
            let mut v: Vec<f64> = looks.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[1]
        };
        Self {
            rss_kib: median(|f| f.rss_kib),
            fds: median(|f| f.fds),
            threads: median(|f| f.threads),
            tasks: median(|f| f.tasks),
            series: median(|f| f.series),
            cache_entries: median(|f| f.cache_entries),
            tracked_specs: median(|f| f.tracked_specs),
            registered_triggers: median(|f| f.registered_triggers),
            registered_objects: median(|f| f.registered_objects),
            owners: looks.pop().unwrap().owners,
        }
    }

    fn series_per_object(&self) -> f64 {
        self.series / self.registered_objects.max(1.0)
    }

    fn cache_per_trigger(&self) -> f64 {
        self.cache_entries / self.registered_triggers.max(1.0)
    }
}

/// The value of label `name` in one exposition line.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let labels = &line[line.find('{')? + 1..line.rfind('}')?];
    labels.split("\",").find_map(|pair| {
        let (key, value) = pair.split_once("=\"")?;
        (key.trim_start_matches(',') == name).then(|| value.trim_end_matches('"'))
    })
}

async fn scrape(metrics_port: u16) -> String {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    client
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .expect("scrape spillway's /metrics")
        .text()
        .await
        .expect("/metrics body")
}

/// Answers of the API load, by HTTP code (`error`: no answer).
#[derive(Debug, Default)]
struct ApiStats {
    direct: Mutex<BTreeMap<String, u64>>,
    aggregated: Mutex<BTreeMap<String, u64>>,
}

fn count(map: &Mutex<BTreeMap<String, u64>>, code: String) {
    *map.lock().unwrap().entry(code).or_default() += 1;
}

fn external_path(object: &Alive) -> String {
    format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/{}?labelSelector={LABEL}%3D{}",
        object.namespace, object.metric, object.name
    )
}

/// The steady API load: [`DIRECT_CLIENTS`] clients reading spillway straight, with the front
/// proxy's certificate as kube-apiserver's aggregator does, and one through kube-apiserver.
fn api_load(
    fleet: &Arc<Fleet>,
    port: u16,
    stop: &Arc<AtomicBool>,
    stats: &Arc<ApiStats>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for c in 0..DIRECT_CLIENTS {
        let (fleet, stop, stats) = (Arc::clone(fleet), Arc::clone(stop), Arc::clone(stats));
        tasks.push(tokio::spawn(async move {
            let client = k8s::direct_client(Some("front-proxy-client"));
            let mut ticks = tokio::time::interval(DIRECT_PERIOD);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                let Some(object) = fleet.pick_read() else {
                    continue;
                };
                let code = match client
                    .get(format!(
                        "https://127.0.0.1:{port}{}",
                        external_path(&object)
                    ))
                    .header("X-Remote-User", format!("soak-reader-{c}"))
                    .header("X-Remote-Group", "system:masters")
                    .send()
                    .await
                {
                    Ok(response) => {
                        let code = response.status().as_u16().to_string();
                        let _ = response.bytes().await;
                        code
                    }
                    Err(_) => "error".to_owned(),
                };
                count(&stats.direct, code);
            }
        }));
    }
    let (fleet, stop, stats) = (Arc::clone(fleet), Arc::clone(stop), Arc::clone(stats));
    tasks.push(tokio::spawn(async move {
        let admin = fleet.admin.clone();
        let mut ticks = tokio::time::interval(AGGREGATED_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            ticks.tick().await;
            let Some(object) = fleet.pick_read() else {
                continue;
            };
            let request = axum::http::Request::get(external_path(&object))
                .body(Vec::new())
                .unwrap();
            let code =
                match tokio::time::timeout(Duration::from_secs(10), admin.request_text(request))
                    .await
                {
                    Ok(Ok(_)) => "200".to_owned(),
                    Ok(Err(kube::Error::Api(status))) => status.code.to_string(),
                    Ok(Err(_)) | Err(_) => "error".to_owned(),
                };
            count(&stats.aggregated, code);
        }
    }));
    tasks
}

/// Creates, edits and deletes one object per step, `per_second` steps a second, keeping the
/// number alive where it is.
fn churn(fleet: &Arc<Fleet>, per_second: u64, stop: &Arc<AtomicBool>) -> JoinHandle<()> {
    let (fleet, stop) = (Arc::clone(fleet), Arc::clone(stop));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(1) / per_second as u32);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            ticks.tick().await;
            fleet.create().await;
            fleet.edit().await;
            fleet.delete().await;
        }
    })
}

/// Series of deleted objects on `/metrics`, told apart by when spillway learnt of the delete
/// (its log's "unregistered a deleted ScaledObject" line): `late` outlived [`SERIES_GRACE`]
/// after the delete because the delete reached spillway late (a loaded API server's watch),
/// `found` outlived spillway's own unregistration by more than [`SERIES_GRACE`]: leaks (the
/// first 20).
#[derive(Debug, Default)]
struct Leaks {
    scrapes: u64,
    late: HashSet<(String, String)>,
    /// The longest a delete took to reach spillway (delete to its unregistration).
    slowest_delete: Duration,
    found: Vec<String>,
}

/// When spillway unregistered each deleted object, read from its log as it grows.
struct Unregistrations {
    log: PathBuf,
    read: u64,
    partial: String,
    at: HashMap<(String, String), chrono::DateTime<chrono::Utc>>,
}

impl Unregistrations {
    fn new(log: PathBuf) -> Self {
        Self {
            log,
            read: 0,
            partial: String::new(),
            at: HashMap::new(),
        }
    }

    /// Reads what the log gained since the last call.
    fn update(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.log) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut added = String::new();
        let Ok(n) = file.read_to_string(&mut added) else {
            return;
        };
        self.read += n as u64;
        self.partial.push_str(&added);
        let complete = self.partial.rfind('\n').map_or(0, |i| i + 1);
        let lines: String = self.partial.drain(..complete).collect();
        for line in lines
            .lines()
            .filter(|l| l.contains("unregistered a deleted ScaledObject"))
        {
            let (Some(when), Some(ns), Some(name)) = (
                line.split_whitespace()
                    .next()
                    .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok()),
                log_field(line, "namespace"),
                log_field(line, "name"),
            ) else {
                continue;
            };
            self.at.insert((ns.to_owned(), name.to_owned()), when);
        }
    }
}

/// `key=value` of a log line (tracing's plain format).
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!(" {key}=");
    let start = line.find(&prefix)? + prefix.len();
    line[start..].split_whitespace().next()
}

/// Every 10 s, looks for series of objects deleted more than [`SERIES_GRACE`] ago and tells
/// leaks (at two scrapes in a row after spillway unregistered the object, the second more
/// than [`SERIES_GRACE`] after it) from late deletes (spillway had not unregistered it yet).
fn watch_deleted_series(
    fleet: &Arc<Fleet>,
    metrics_port: u16,
    log: PathBuf,
    stop: &Arc<AtomicBool>,
    leaks: &Arc<Mutex<Leaks>>,
) -> JoinHandle<()> {
    let (fleet, stop, leaks) = (Arc::clone(fleet), Arc::clone(stop), Arc::clone(leaks));
    tokio::spawn(async move {
        let mut unregistrations = Unregistrations::new(log);
        let mut reported: HashSet<(String, String)> = HashSet::new();
        // Deleted objects with a series at the last scrape, past their unregistration.
        let mut suspects: HashSet<(String, String)> = HashSet::new();
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let (at, wall) = (Instant::now(), chrono::Utc::now());
            let text = scrape(metrics_port).await;
            unregistrations.update();
            let present: HashSet<(String, String)> = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| Some((label(l, "namespace")?, label(l, "scaled_object")?)))
                .map(|(ns, so)| (ns.to_owned(), so.to_owned()))
                .collect();
            let mut leaks = leaks.lock().unwrap();
            leaks.scrapes += 1;
            for (ns, name, deleted) in fleet.deleted_before(at, SERIES_GRACE) {
                let key = (ns, name);
                let unregistered = unregistrations.at.get(&key).copied();
                if let Some(unregistered) = unregistered {
                    let took = (unregistered
                        - (wall - chrono::Duration::from_std(at - deleted).unwrap_or_default()))
                    .to_std()
                    .unwrap_or_default();
                    leaks.slowest_delete = leaks.slowest_delete.max(took);
                }
                if !present.contains(&key) {
                    suspects.remove(&key);
                    continue;
                }
                let outlived = unregistered.and_then(|u| (wall - u).to_std().ok());
                match outlived {
                    // A reconcile in flight when the delete arrived may set the object's
                    // gauges once more, for the sweep (every 2 s) to end again: a leak is a
                    // series there at two scrapes in a row.
                    Some(_) if suspects.insert(key.clone()) => {}
                    Some(outlived) if outlived > SERIES_GRACE => {
                        if leaks.found.len() < 20 && reported.insert(key.clone()) {
                            let (ns, name) = &key;
                            let series: Vec<&str> = text
                                .lines()
                                .filter(|l| {
                                    label(l, "namespace") == Some(ns)
                                        && label(l, "scaled_object") == Some(name)
                                })
                                .map(|l| l.split('{').next().unwrap_or(l))
                                .collect();
                            leaks.found.push(format!(
                                "{ns}/{name}, deleted {:.0} s and unregistered {:.0} s ago: {}",
                                (at - deleted).as_secs_f64(),
                                outlived.as_secs_f64(),
                                series.join(", ")
                            ));
                        }
                    }
                    _ => {
                        leaks.late.insert(key);
                    }
                }
            }
        }
    })
}

/// Stops and starts one broker with its script (the environment names the instance).
async fn restart_broker(service: &'static str) -> Duration {
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("scripts/{service}.sh"));
        // RabbitMQ restarts its application inside the running node (every connection and
        // listener goes, durable queues come back): a full stop and start of its Erlang VM
        // takes minutes on a loaded 2-core machine. Kafka's JVM stops and starts.
        let actions: &[&str] = if service == "rabbitmq" {
            &["restart-app"]
        } else {
            &["stop", "start"]
        };
        for action in actions {
            // A loaded machine boots a JVM or a BEAM slowly: wait longer than the default.
            let status = std::process::Command::new("bash")
                .arg(&script)
                .arg(action)
                .env("SPILLWAY_START_TIMEOUT", "300")
                .stdout(std::process::Stdio::null())
                .status()
                .expect("run a broker script");
            assert!(status.success(), "scripts/{service}.sh {action} failed");
        }
    })
    .await
    .expect("broker restart");
    started.elapsed()
}

/// Both brokers restarted together, at each of `at` (from `start`); how long each took.
fn broker_restarts(
    start: Instant,
    at: Vec<Duration>,
) -> JoinHandle<Vec<(Duration, Duration, Duration)>> {
    tokio::spawn(async move {
        let mut took = Vec::new();
        for offset in at {
            tokio::time::sleep_until((start + offset).into()).await;
            let (rabbitmq, kafka) =
                tokio::join!(restart_broker("rabbitmq"), restart_broker("kafka"));
            println!(
                "soak: brokers restarted at {:.0} s (RabbitMQ down and back in {:.1} s, Kafka {:.1} s)",
                offset.as_secs_f64(),
                rabbitmq.as_secs_f64(),
                kafka.as_secs_f64()
            );
            took.push((offset, rabbitmq, kafka));
        }
        took
    })
}

/// Deletes every ScaledObject of the namespaces `matching` names, one DELETE per object, 16 at
/// a time (a collection delete of 500 objects is one long request a busy API server may drop,
/// with no progress kept), then the namespaces themselves without waiting: the namespace
/// controller takes minutes over the HPAs and Events of a thousand objects, and nothing of
/// them reaches spillway once the objects are gone.
async fn delete_fleet_namespaces(admin: &kube::Client, matching: impl Fn(&str) -> bool) {
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .expect("list namespaces")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .filter(|n| matching(n))
        .collect();
    for name in &names {
        let objects = k8s::scaled_objects(admin, Some(name));
        let listed = objects
            .list_metadata(&ListParams::default())
            .await
            .unwrap_or_else(|err| panic!("list the ScaledObjects of {name}: {err}"));
        let objects = &objects;
        futures::stream::iter(listed.items.into_iter().filter_map(|o| o.metadata.name))
            .for_each_concurrent(16, |object| async move {
                // A busy API server may drop a connection: ask again; 404 is done.
                for attempt in 1.. {
                    match objects.delete(&object, &DeleteParams::default()).await {
                        Ok(_) => return,
                        Err(kube::Error::Api(e)) if e.code == 404 => return,
                        Err(err) => {
                            assert!(attempt < 15, "delete ScaledObject {name}/{object}: {err}");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                    }
                }
            })
            .await;
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
    }
}

/// The ScaledObjects outside the soak's namespaces: other tests' objects in the same cluster,
/// which spillway registers too.
async fn objects_of_other_tests(admin: &kube::Client) -> usize {
    let objects = k8s::scaled_objects(admin, None);
    objects
        .list_metadata(&ListParams::default())
        .await
        .expect("list every ScaledObject")
        .items
        .iter()
        .filter(|o| {
            !o.metadata
                .namespace
                .as_deref()
                .is_some_and(|ns| ns.starts_with(NAMESPACE_PREFIX))
        })
        .count()
}

/// What an earlier, failed run left: the ScaledObjects of its namespaces (this run's
/// controller would reconcile them) and the namespaces, and the APIService of its dead
/// spillway, which holds up the deletion of namespaces (kube-apiserver finishes one only when
/// every API group answers discovery).
async fn delete_leftovers(admin: &kube::Client) {
    let api_services = k8s::dynamic_api(
        admin,
        "apiregistration.k8s.io",
        "v1",
        "APIService",
        "apiservices",
        None,
    );
    let _ = api_services
        .delete(EXTERNAL, &DeleteParams::default())
        .await;
    delete_fleet_namespaces(admin, |n| n.starts_with(NAMESPACE_PREFIX)).await;
}

/// A namespace with the Deployment its objects scale and the Secret with RabbitMQ's URL.
async fn prepare_namespace(admin: &kube::Client) -> String {
    let ns = k8s::namespace(admin, "soak").await;
    k8s::apply(
        admin,
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "rabbitmq", "namespace": ns},
            "stringData": {"url": format!("{}/", common::endpoint("SPILLWAY_RABBITMQ_HTTP").trim_end_matches('/'))}}),
    )
    .await;
    k8s::apply(
        admin,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": TARGET, "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": TARGET}},
                "template": {"metadata": {"labels": {"app": TARGET}},
                    "spec": {"containers": [{"name": "consumer", "image": "registry.k8s.io/pause:3.10"}]}}}}),
    )
    .await;
    ns
}

/// One figure of the table: its name, how it is read, and whether its growth is asserted.
type Row = (&'static str, fn(&Footprint) -> f64, bool);

/// `(end - start) / start`.
fn drift(start: f64, end: f64) -> f64 {
    (end - start) / start.max(f64::MIN_POSITIVE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spillway_holds_steady_under_churn_restarts_and_load() {
    let settings = Settings::from_env();
    println!("soak: {settings:?}");
    let admin = k8s::admin().await;
    delete_leftovers(&admin).await;

    let brokers = Brokers::create().await;
    let mut namespaces = Vec::new();
    for _ in 0..NAMESPACES {
        namespaces.push(prepare_namespace(&admin).await);
    }
    let kubeconfig = k8s::install_spillway(&admin).await;
    let fleet = Arc::new(Fleet {
        admin: admin.clone(),
        brokers,
        namespaces: namespaces.clone(),
        polling_interval: settings.polling_interval,
        state: Mutex::new(FleetState::default()),
        rng: Mutex::new(Rng(0x5eed_2026)),
    });

    // Fill before spillway starts, as a cluster it is installed on (or restarted in) has
    // them: the API server only takes creates, a few at a time.
    let filling = Instant::now();
    let mut creators = Vec::new();
    for c in 0..FILL_CONCURRENCY {
        let fleet = Arc::clone(&fleet);
        let share = settings.objects / FILL_CONCURRENCY
            + usize::from(c < settings.objects % FILL_CONCURRENCY);
        creators.push(tokio::spawn(async move {
            for _ in 0..share {
                fleet.create().await;
            }
        }));
    }
    for creator in creators {
        creator.await.expect("creator");
    }
    let filled = filling.elapsed();
    assert_eq!(
        fleet.alive(),
        settings.objects,
        "creates failed: {:?}",
        fleet.state.lock().unwrap().failures
    );

    let lease = common::unique_name("soak-lease");
    let controller = SpillwayController::start_logging(
        &kubeconfig,
        k8s::spillway_port(),
        &lease,
        &format!("{lease}-a"),
        None,
        "info,lapin=off,pinky_swear=off",
    )
    .await;
    let starting = Instant::now();
    let (pid, metrics_port) = (controller.pid(), controller.metrics_port);
    k8s::register_api_service(&admin, "external.metrics.k8s.io", "v1beta1").await;
    k8s::wait_available(&admin, EXTERNAL, Duration::from_secs(120)).await;
    common::eventually(
        "spillway to register every object",
        Duration::from_secs(600),
        || async move {
            let now = Footprint::read(pid, metrics_port).await;
            // At least: other tests' objects elsewhere in the cluster count too.
            (now.registered_objects as usize >= settings.objects).then_some(())
        },
    )
    .await;
    println!(
        "soak: {} objects created in {:.1} s ({:.0}/s); spillway started and registered them all in {:.1} s",
        settings.objects,
        filled.as_secs_f64(),
        settings.objects as f64 / filled.as_secs_f64(),
        starting.elapsed().as_secs_f64()
    );

    // Churn, load and the deleted-series watch run from here to the end.
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(ApiStats::default());
    let leaks = Arc::new(Mutex::new(Leaks::default()));
    let mut background = vec![churn(&fleet, settings.churn_per_second, &stop)];
    background.extend(api_load(&fleet, controller.port, &stop, &stats));
    background.push(watch_deleted_series(
        &fleet,
        metrics_port,
        controller.log.clone(),
        &stop,
        &leaks,
    ));
    tokio::time::sleep(settings.warm_up).await;

    let churned_before = {
        let s = fleet.state.lock().unwrap();
        (s.created, s.edited, s.removed)
    };
    let start = Footprint::settled(pid, metrics_port).await;
    let others_at_start = objects_of_other_tests(&admin).await;
    let run_started = Instant::now();
    let restarts = broker_restarts(run_started, vec![settings.run / 4, settings.run / 2]);
    tokio::time::sleep_until((run_started + settings.run).into()).await;
    let restarts = restarts.await.expect("broker restarts");
    let end = Footprint::settled(pid, metrics_port).await;
    let others_at_end = objects_of_other_tests(&admin).await;
    let alive_at_end = fleet.alive();

    stop.store(true, Ordering::Relaxed);
    for task in background {
        task.await.expect("background task");
    }
    let (created, edited, removed, failures) = {
        let s = fleet.state.lock().unwrap();
        (
            s.created - churned_before.0,
            s.edited - churned_before.1,
            s.removed - churned_before.2,
            s.failures.clone(),
        )
    };

    // The table.
    let rows: [Row; 10] = [
        ("RSS (MiB)", |f| f.rss_kib / 1024.0, true),
        ("open fds", |f| f.fds, true),
        ("threads", |f| f.threads, false),
        ("tokio tasks", |f| f.tasks, true),
        ("/metrics series", |f| f.series, false),
        ("series per live object", Footprint::series_per_object, true),
        ("cache entries", |f| f.cache_entries, false),
        (
            "cache entries per live trigger",
            Footprint::cache_per_trigger,
            true,
        ),
        ("registered scaled objects", |f| f.registered_objects, false),
        ("registered triggers", |f| f.registered_triggers, false),
    ];
    println!(
        "\nsoak: {:.0} s after a {:.0} s warm-up; {} objects alive ({} at the end); churn {created} created, {edited} edited, {removed} deleted ({} API errors); brokers restarted at {:?} s",
        settings.run.as_secs_f64(),
        settings.warm_up.as_secs_f64(),
        settings.objects,
        alive_at_end,
        failures.len(),
        restarts.iter().map(|r| r.0.as_secs()).collect::<Vec<_>>(),
    );
    println!(
        "{:<32} {:>12} {:>12} {:>9}",
        "figure", "start", "end", "drift"
    );
    let mut drifted = Vec::new();
    for (name, figure, asserted) in rows {
        let d = drift(figure(&start), figure(&end));
        println!(
            "{name:<32} {:>12.2} {:>12.2} {:>8.1}%{}",
            figure(&start),
            figure(&end),
            d * 100.0,
            if asserted { "" } else { "  (reported)" }
        );
        if asserted && d >= MAX_DRIFT {
            drifted.push(format!(
                "{name}: {:.2} -> {:.2} ({:+.1} %)",
                figure(&start),
                figure(&end),
                d * 100.0
            ));
        }
    }
    let direct = stats.direct.lock().unwrap().clone();
    let aggregated = stats.aggregated.lock().unwrap().clone();
    println!("API answers, direct: {direct:?}; through kube-apiserver: {aggregated:?}");
    let leaks = std::mem::take(&mut *leaks.lock().unwrap());
    println!(
        "deleted-series checks: {} scrapes, {} objects deleted by the churn; {} had series past {} s because the delete reached spillway late (the slowest delete took {:.0} s to reach it); {} leaks (series {} s past spillway's unregistration){}",
        leaks.scrapes,
        removed,
        leaks.late.len(),
        SERIES_GRACE.as_secs(),
        leaks.slowest_delete.as_secs_f64(),
        leaks.found.len(),
        SERIES_GRACE.as_secs(),
        leaks
            .found
            .iter()
            .take(5)
            .map(|l| format!("\n  {l}"))
            .collect::<String>()
    );
    if !failures.is_empty() {
        println!(
            "churn errors (first 5): {:?}",
            &failures[..failures.len().min(5)]
        );
    }

    // Everything deleted: nothing of the fleet may stay in spillway.
    let deleting = Instant::now();
    let fleet_namespaces: HashSet<String> = namespaces.iter().cloned().collect();
    delete_fleet_namespaces(&admin, |n| fleet_namespaces.contains(n)).await;
    // Deleting 1,000 objects, their HPAs and Events is etcd's slowest work here: 5 minutes.
    // What other tests left in the cluster (outside the fleet's namespaces) stays registered:
    // the fleet's share is what `start` held beyond the objects other than its own.
    // Each fleet object has one trigger; other tests' objects may have several, and cache
    // entries and specs are per trigger.
    let others = (start.registered_objects - settings.objects as f64).max(0.0);
    let others_triggers = (start.registered_triggers - settings.objects as f64).max(0.0);
    let emptied = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let now = Footprint::read(pid, metrics_port).await;
            if now.registered_objects <= others
                && now.cache_entries <= others_triggers
                && now.tracked_specs <= others_triggers
                && now
                    .owners
                    .iter()
                    .all(|(ns, _)| !fleet_namespaces.contains(ns))
            {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    tokio::time::sleep(SERIES_GRACE).await;
    let empty = Footprint::settled(pid, metrics_port).await;

    println!(
        "after deleting every object ({:.1} s): {} registered objects, {} cache entries, {} tracked specs, {} series, {:.1} MiB RSS, {} fds, {} tasks",
        deleting.elapsed().as_secs_f64(),
        empty.registered_objects,
        empty.cache_entries,
        empty.tracked_specs,
        empty.series,
        empty.rss_kib / 1024.0,
        empty.fds,
        empty.tasks,
    );

    assert!(
        leaks.found.is_empty(),
        "series of deleted objects still on /metrics {SERIES_GRACE:?} after spillway unregistered them: {:#?}",
        leaks.found
    );
    assert!(
        drifted.is_empty(),
        "grew by {MAX_DRIFT} or more: {drifted:#?}"
    );
    assert!(
        emptied.is_ok(),
        "after deleting every object spillway still holds {} objects, {} cache entries, {} specs, series of {:?}",
        empty.registered_objects,
        empty.cache_entries,
        empty.tracked_specs,
        empty
            .owners
            .iter()
            .filter(|(ns, _)| fleet_namespaces.contains(ns))
            .take(10)
            .collect::<Vec<_>>()
    );
    // spillway followed the cluster: what it registers is what is alive, the fleet's and
    // what other tests left in their own namespaces.
    for (when, footprint, others) in [
        ("start", &start, others_at_start),
        ("end", &end, others_at_end),
    ] {
        let registered = footprint.registered_objects;
        let alive = (settings.objects + others) as f64;
        assert!(
            (registered - alive).abs() <= (settings.objects as f64 * 0.01).max(3.0),
            "at the {when} spillway registered {registered} objects, {alive} are alive ({} of the soak, {others} of other tests)",
            settings.objects
        );
    }
    // The load was answered: a broker restart may fail reads for a while, never most of them.
    let answered = |codes: &BTreeMap<String, u64>| {
        let total: u64 = codes.values().sum();
        (codes.get("200").copied().unwrap_or(0), total)
    };
    for (path, codes) in [("direct", &direct), ("through kube-apiserver", &aggregated)] {
        let (ok, total) = answered(codes);
        assert!(
            total > 0 && ok * 2 > total,
            "{path}: {ok} of {total} reads answered 200: {codes:?}"
        );
    }
    assert!(
        failures.len() as u64 * 100 <= created + edited + removed,
        "more than 1 % of the churn failed at the API server: {:?}",
        &failures[..failures.len().min(10)]
    );
}
