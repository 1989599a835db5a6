//! The fault matrix: end to end on the local control plane (`scripts/k8s.sh`) with the real
//! RabbitMQ, Kafka and Toxiproxy (`scripts/toxiproxy.sh`), each fault injected while an HPA
//! holds a Deployment at 3 replicas from spillway's metric (a backlog of 30, target 10).
//!
//! Two `spillway run` replicas share a Lease (3 s, renew 2 s, retry 1 s): the leader on a port
//! of its own, the follower on the APIService's port, so the HPA reads the follower's metric
//! through the aggregator (both serve it). The RabbitMQ trigger reads the management API through
//! a Toxiproxy proxy, with its URL (a user of its own) in a Secret; a second ScaledObject reads a
//! Kafka group's lag. `fallback` is 2 failures, 5 replicas, so a served 50 means fallback and 30
//! the real figure.
//!
//! Each case samples, every 0.5 s from the injection until the metric is right again, the
//! Deployment's replicas, the metric through kube-apiserver (as the HPA reads it) and straight
//! from the replica, and the replica's failures in a row; it checks: replicas never below the 3
//! before the fault (no false zero, no scale-in), no served value but 30 and 50 (a broker that
//! fails is never read as a smaller backlog), fallback within `failureThreshold + 1` polls (each
//! poll its interval plus its timeout, + 3 s) and at the third failure in a row where the fault
//! breaks the broker's answers, no fallback where it does not, and recovery within 90 s of the
//! fault's end. The table of figures (`--nocapture`) is the README's "Fault matrix";
//! `SPILLWAY_FAULT_CASES=kill,reset` runs the cases whose names hold one of the words, and
//! `SPILLWAY_FAULT_TIMELINE=1` prints every sample.
//!
//! The cases run in one test, one after another: they share the brokers, the control plane and
//! the APIService. RabbitMQ is killed, stopped and restarted, Kafka restarted, and kube-apiserver
//! and etcd restarted, through the harness scripts; a guard brings every one of them back on a
//! panic.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::k8s::{self, LeaseTimings, SpillwayController};
use common::toxiproxy::Proxy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const EXTERNAL: &str = "v1beta1.external.metrics.k8s.io";
const LABEL: &str = "scaledobject.spillway.dev/name";
/// Every namespace this test creates starts with it; an earlier run's are deleted first.
const NAMESPACE_PREFIX: &str = "e2e-faults-";
/// The ServiceAccount spillway runs as (copies of `deploy/rbac.yaml`'s roles).
const ACCOUNT: &str = "spillway-e2e-faults";

/// The backlog and the trigger's target: the HPA settles on 30 / 10 = 3 replicas.
const MESSAGES: usize = 30;
const TARGET: f64 = 10.0;
const STEADY_REPLICAS: i32 = 3;
/// `fallback`: from the third failure in a row the metric serves 5 x 10 = 50.
const FAILURE_THRESHOLD: u32 = 2;
const FALLBACK_REPLICAS: i32 = 5;
const POLLING_INTERVAL: Duration = Duration::from_secs(1);
/// The trigger's `timeout`: a hung broker fails a poll after it.
const POLL_TIMEOUT: Duration = Duration::from_millis(1000);
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
const RECOVERY_LIMIT: Duration = Duration::from_secs(90);

fn served_steady() -> f64 {
    MESSAGES as f64
}

fn served_fallback() -> f64 {
    f64::from(FALLBACK_REPLICAS) * TARGET
}

/// The longest fallback may take: `failureThreshold + 1` polls, each as long as its interval
/// plus its timeout, and 3 s for the API answer and sampling.
fn fallback_bound() -> Duration {
    (POLLING_INTERVAL + POLL_TIMEOUT) * (FAILURE_THRESHOLD + 1) + Duration::from_secs(3)
}

fn secs(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs `scripts/<name> args...` (the test's environment carries the harness's ports); how
/// long it took.
async fn run_script(name: &str, args: &[&str]) -> Duration {
    let started = Instant::now();
    let status = tokio::process::Command::new("bash")
        .arg(script(name))
        .args(args)
        .status()
        .await
        .unwrap_or_else(|err| panic!("run scripts/{name}: {err}"));
    assert!(status.success(), "scripts/{name} {args:?} failed: {status}");
    started.elapsed()
}

/// A broker the harness runs, as the faults reach it: its script and its process.
#[derive(Debug, Clone, Copy)]
enum Broker {
    RabbitMq,
    Kafka,
}

impl Broker {
    fn script(self) -> &'static str {
        match self {
            Broker::RabbitMq => "rabbitmq.sh",
            Broker::Kafka => "kafka.sh",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Broker::RabbitMq => "RabbitMQ",
            Broker::Kafka => "Kafka",
        }
    }

    /// The pid file the script writes (RabbitMQ's BEAM, Kafka's JVM).
    fn pid_file(self) -> PathBuf {
        let services = k8s::k8s_dir();
        let services = services.parent().expect("services dir");
        match self {
            Broker::RabbitMq => services.join("rabbitmq/rabbitmq.pid"),
            Broker::Kafka => services.join("kafka/kafka.pid"),
        }
    }

    fn pid(self) -> String {
        let file = self.pid_file();
        std::fs::read_to_string(&file)
            .unwrap_or_else(|err| panic!("read {}: {err}", file.display()))
            .trim()
            .to_owned()
    }
}

async fn signal(pid: &str, signal: &str) {
    let status = tokio::process::Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .await
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Brings RabbitMQ and the control plane back when the test ends, on a panic too: a stopped
/// node is continued, a dead one started, a stopped control-plane process started.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        // No panic here (it may run during one): a broker with no pid file is started below.
        for broker in [Broker::RabbitMq, Broker::Kafka] {
            if let Ok(pid) = std::fs::read_to_string(broker.pid_file()) {
                let _ = std::process::Command::new("kill")
                    .args(["-CONT", pid.trim()])
                    .status();
            }
        }
        for (name, args) in [
            ("rabbitmq.sh", "start"),
            ("kafka.sh", "start"),
            ("k8s.sh", "start"),
        ] {
            let started = std::process::Command::new("bash")
                .arg(script(name))
                .arg(args)
                .status();
            if !started.as_ref().is_ok_and(|s| s.success()) {
                eprintln!("scripts/{name} {args} failed: start it by hand ({started:?})");
            }
        }
    }
}

/// The management API of the harness's RabbitMQ: `(http://127.0.0.1:PORT, user, password)`.
fn management() -> (String, String, String) {
    let url = reqwest::Url::parse(&common::endpoint("SPILLWAY_RABBITMQ_HTTP")).expect("URL");
    (
        format!(
            "http://{}:{}",
            url.host_str().expect("host"),
            url.port().expect("port")
        ),
        url.username().to_owned(),
        url.password().unwrap_or_default().to_owned(),
    )
}

/// One call to the management API as its admin; panics on a refusal.
async fn management_put(path: &str, body: Value) {
    management_call(reqwest::Method::PUT, path, body).await;
}

async fn management_call(method: reqwest::Method, path: &str, body: Value) {
    let (base, user, password) = management();
    let response = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .basic_auth(user, Some(password))
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|err| panic!("{path}: {err}"));
    let status = response.status();
    assert!(
        status.is_success(),
        "{path}: HTTP {status}: {}",
        response.text().await.unwrap_or_default()
    );
}

/// A vhost of its own (so a poll's listing holds one queue, whatever else the broker has) with
/// a durable queue of [`MESSAGES`] persistent messages, which a killed node keeps, and a
/// monitoring user `user` with `password` that may read it.
async fn rabbitmq_backlog(vhost: &str, queue: &str, user: &str, password: &str) {
    let encoded = vhost.replace('/', "%2F");
    management_put(&format!("/api/vhosts/{encoded}"), json!({})).await;
    let (_, admin, _) = management();
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    management_put(&format!("/api/permissions/{encoded}/{admin}"), all.clone()).await;
    management_put(
        &format!("/api/users/{user}"),
        json!({"password": password, "tags": "monitoring"}),
    )
    .await;
    management_put(&format!("/api/permissions/{encoded}/{user}"), all).await;

    let amqp = common::endpoint("SPILLWAY_RABBITMQ_AMQP");
    let base = amqp.rsplit_once('/').expect("vhost in the AMQP URL").0;
    let (connection, channel) =
        common::rabbitmq::confirmed_channel(&format!("{base}/{encoded}")).await;
    common::rabbitmq::declare_with_messages(&channel, queue, true, MESSAGES).await;
    let _ = connection.close(200, "backlog published").await;
}

/// What the aggregator answers for the metric: its value, or why there is none.
#[derive(Debug, Clone, PartialEq)]
enum Served {
    Value(f64),
    Unavailable(String),
}

/// A Kubernetes quantity as the metrics API writes it (`30`, `50`, `1500m`, `2k`).
fn quantity(text: &str) -> Option<f64> {
    let (number, scale) = match text.strip_suffix('m') {
        Some(n) => (n, 1e-3),
        None => match text.strip_suffix('k') {
            Some(n) => (n, 1e3),
            None => (text, 1.0),
        },
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// A metrics API answer: the value of its first item, or why there is none.
fn served_from(body: &str) -> Served {
    let list: Value = match serde_json::from_str(body) {
        Ok(list) => list,
        Err(err) => return Served::Unavailable(format!("not JSON: {err}")),
    };
    match list["items"][0]["value"].as_str().and_then(quantity) {
        Some(value) => Served::Value(value),
        None => Served::Unavailable(format!("no value in {body}")),
    }
}

/// Reads what the HPA reads: the Deployment's replicas and the metric through kube-apiserver's
/// aggregator, and the metric from the replica the aggregator calls (to tell spillway's delays
/// from the aggregator's), each bounded by 2 s (the API server may be the fault).
#[derive(Clone)]
struct Probe {
    deployments: Api<Deployment>,
    target: String,
    metric_path: String,
    direct: reqwest::Client,
    /// `/metrics` of the replica on the APIService's port (it moves when replicas restart).
    replica_metrics: Arc<Mutex<String>>,
    /// A Deployment scaled by a twin ScaledObject without `fallback`: its HPA must hold.
    holder: Option<String>,
}

impl Probe {
    async fn replicas(&self) -> Option<i32> {
        self.replicas_of(&self.target).await
    }

    async fn replicas_of(&self, deployment: &str) -> Option<i32> {
        let found = tokio::time::timeout(Duration::from_secs(2), self.deployments.get(deployment))
            .await
            .ok()?
            .ok()?;
        found.spec?.replicas
    }

    /// The replicas of the twin without `fallback`, where there is one (3 when there is none).
    async fn holder_replicas(&self) -> Option<i32> {
        match &self.holder {
            Some(name) => self.replicas_of(name).await,
            None => Some(STEADY_REPLICAS),
        }
    }

    /// The metric through kube-apiserver's aggregator, as the admin, over a plain HTTPS client:
    /// kube's client retries a 503 with backoff, which would hide the answer the HPA gets.
    async fn served(&self) -> Served {
        let url = format!(
            "{}{}",
            common::endpoint("SPILLWAY_K8S_APISERVER"),
            self.metric_path
        );
        self.get(&url).await
    }

    async fn get(&self, url: &str) -> Served {
        let answer = tokio::time::timeout(Duration::from_secs(2), async {
            let response = self.direct.get(url).send().await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        })
        .await;
        match answer {
            Err(_) => Served::Unavailable("no answer in 2 s".into()),
            Ok(Err(err)) => Served::Unavailable(err.to_string()),
            Ok(Ok((status, body))) if !status.is_success() => {
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|s| s["message"].as_str().map(str::to_owned))
                    .unwrap_or(body);
                Served::Unavailable(format!("{status}: {message}"))
            }
            Ok(Ok((_, body))) => served_from(&body),
        }
    }

    /// The metric as the replica on the APIService's port answers it, asked directly.
    async fn served_direct(&self) -> Served {
        let url = format!(
            "https://127.0.0.1:{}{}",
            k8s::spillway_port(),
            self.metric_path
        );
        self.get(&url).await
    }

    /// The trigger's failures in a row as the replica the HPA reads reports them.
    async fn failures(&self) -> Option<u32> {
        let url = self.replica_metrics.lock().unwrap().clone();
        let text = tokio::time::timeout(Duration::from_secs(2), async {
            reqwest::get(&url).await?.text().await
        })
        .await
        .ok()?
        .ok()?;
        let ours = format!(
            r#"namespace="{}",scaled_object="{}",trigger="0""#,
            self.deployments.namespace().unwrap_or_default(),
            self.target
        );
        text.lines()
            .filter(|line| line.starts_with("spillway_trigger_consecutive_failures{"))
            .filter(|line| line.contains(&ours))
            .find_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .map(|n| n as u32)
    }

    /// One sample: all four reads at once.
    async fn sample(&self) -> Sample {
        let at = Instant::now();
        let timed = async {
            let served = self.served().await;
            (served, at.elapsed())
        };
        let (replicas, (served, served_took), direct, failures, holder) = tokio::join!(
            self.replicas(),
            timed,
            self.served_direct(),
            self.failures(),
            self.holder_replicas()
        );
        Sample {
            at,
            replicas,
            holder,
            served,
            served_took,
            direct,
            failures,
        }
    }
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    replicas: Option<i32>,
    /// The twin without `fallback` (3 when there is none).
    holder: Option<i32>,
    /// Through the aggregator, as the HPA reads it, and how long that took.
    served: Served,
    served_took: Duration,
    /// From the replica directly.
    direct: Served,
    /// The trigger's failures in a row on that replica's `/metrics`.
    failures: Option<u32>,
}

/// Samples the probe every [`SAMPLE_EVERY`] on a task of its own until dropped.
struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: JoinHandle<()>,
}

impl Sampler {
    fn start(probe: Probe) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let record = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let sample = probe.sample().await;
                record.lock().unwrap().push(sample);
            }
        });
        Self { samples, task }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Waits until a sample taken at or after `since` serves the steady value; when it was taken.
    async fn wait_recovered(&self, since: Instant, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let found = self
                .samples()
                .into_iter()
                .find(|s| s.at >= since && s.served == Served::Value(served_steady()));
            if let Some(sample) = found {
                return Some(sample.at);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a fault should do to the served metric.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The broker's answers fail: fallback within [`fallback_bound`].
    Fallback,
    /// spillway still reads the broker: the served value never switches to fallback.
    NoFallback,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// A toxic on the proxy between spillway and RabbitMQ, for `hold`.
    Toxic {
        kind: &'static str,
        stream: &'static str,
        attributes: &'static str,
        hold: Duration,
    },
    /// `kill -9` of the broker, down for `hold`, then started with its script.
    BrokerKilled { broker: Broker, hold: Duration },
    /// SIGSTOP of the broker (hung, sockets open) for `hold`, then SIGCONT.
    BrokerPaused { broker: Broker, hold: Duration },
    /// The broker's script's `stop`, then `start`.
    BrokerRestarted { broker: Broker },
    /// The monitoring user's password changed in RabbitMQ, then the Secret, `gap` later.
    SecretRotated { gap: Duration },
    /// The leading `spillway run` SIGKILLed; a new replica started once the other leads.
    LeaderKilled,
    /// Both `spillway run` replicas SIGKILLed, then both started again.
    BothReplicasRestarted,
    /// `scripts/k8s.sh restart <component>`.
    ControlPlaneRestarted { component: &'static str },
}

/// Which ScaledObject a case watches.
#[derive(Debug, Clone, Copy)]
enum Target {
    RabbitMq,
    Kafka,
}

struct Case {
    name: &'static str,
    target: Target,
    fault: Fault,
    expect: Expect,
}

/// One row of the table.
struct Row {
    name: &'static str,
    checked: String,
    fallback: String,
    recovery: String,
    lowest: String,
    note: String,
    failures: Vec<String>,
}

/// Everything the cases share: the namespace, the objects, the proxy, the two replicas.
struct Bench {
    admin: kube::Client,
    kubeconfig: PathBuf,
    lease: String,
    timings: LeaseTimings,
    ns: String,
    proxy: Proxy,
    user: String,
    password: String,
    vhost: String,
    topic: String,
    /// The replica the HPA reads (on the APIService's port) and the other one.
    registered: Option<SpillwayController>,
    other: Option<SpillwayController>,
    /// What the HPAs of the RabbitMQ and the Kafka ScaledObject read.
    rabbitmq: Option<Probe>,
    kafka: Option<Probe>,
    /// The probes' `/metrics` URL of the registered replica.
    replica_metrics: Arc<Mutex<String>>,
}

impl Bench {
    /// Writes the Secret `rabbit` with the trigger's URL: the proxy, as `user:password`.
    async fn write_secret(&self, password: &str) {
        let url = format!("http://{}:{password}@{}/", self.user, self.proxy.listen);
        k8s::apply(
            &self.admin,
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "rabbit", "namespace": self.ns},
                "stringData": {"url": url}}),
        )
        .await;
    }

    async fn start_replica(&self, port: u16, suffix: &str) -> SpillwayController {
        SpillwayController::start(
            &self.kubeconfig,
            port,
            &self.lease,
            &common::unique_name(&format!("{}-{suffix}", self.lease)),
            Some(self.timings),
        )
        .await
    }

    async fn lease_holder(&self) -> Option<String> {
        Api::<Lease>::namespaced(self.admin.clone(), k8s::SPILLWAY_NAMESPACE)
            .get_opt(&self.lease)
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity
    }

    async fn wait_holder(&self, identity: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.lease_holder().await.as_deref() == Some(identity) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!(
            "Lease {} not held by {identity} within {timeout:?} (holder {:?})",
            self.lease,
            self.lease_holder().await
        ))
    }

    fn set_registered(&mut self, replica: SpillwayController) {
        *self.replica_metrics.lock().unwrap() =
            format!("http://127.0.0.1:{}/metrics", replica.metrics_port);
        self.registered = Some(replica);
    }

    fn probe(&self, target: Target) -> &Probe {
        match target {
            Target::RabbitMq => self.rabbitmq.as_ref().expect("set up"),
            Target::Kafka => self.kafka.as_ref().expect("set up"),
        }
    }

    /// Waits for 3 replicas and the real figure served, several samples in a row.
    async fn wait_steady(&self, probe: &Probe, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut in_a_row = 0;
        let mut last = (None, Served::Unavailable("not sampled".into()));
        while Instant::now() < deadline {
            last = (probe.replicas().await, probe.served().await);
            let holder = probe.holder_replicas().await;
            if last == (Some(STEADY_REPLICAS), Served::Value(served_steady()))
                && holder == Some(STEADY_REPLICAS)
            {
                in_a_row += 1;
                if in_a_row == 3 {
                    return Ok(());
                }
            } else {
                in_a_row = 0;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        Err(format!(
            "not steady within {timeout:?}: replicas {:?}, served {:?}",
            last.0, last.1
        ))
    }

    /// Injects `fault`, holds it, ends it; a note for the table (how long the restart took...).
    /// The fault has ended when this returns.
    async fn inject(&mut self, fault: Fault) -> String {
        match fault {
            Fault::Toxic {
                kind,
                stream,
                attributes,
                hold,
            } => {
                let attributes: Value = serde_json::from_str(attributes).expect("toxic attributes");
                self.proxy
                    .add_toxic("fault", kind, stream, attributes)
                    .await;
                tokio::time::sleep(hold).await;
                self.proxy.remove_toxic("fault").await;
                format!("{kind} {stream} for {}", secs(hold))
            }
            Fault::BrokerKilled { broker, hold } => {
                signal(&broker.pid(), "KILL").await;
                tokio::time::sleep(hold).await;
                let took = run_script(broker.script(), &["start"]).await;
                format!("down {}, start took {}", secs(hold), secs(took))
            }
            Fault::BrokerPaused { broker, hold } => {
                let pid = broker.pid();
                signal(&pid, "STOP").await;
                tokio::time::sleep(hold).await;
                signal(&pid, "CONT").await;
                format!("stopped for {}", secs(hold))
            }
            Fault::BrokerRestarted { broker } => {
                let stop = run_script(broker.script(), &["stop"]).await;
                let start = run_script(broker.script(), &["start"]).await;
                format!(
                    "{} stop took {}, start {}",
                    broker.name(),
                    secs(stop),
                    secs(start)
                )
            }
            Fault::SecretRotated { gap } => {
                let rotated = format!("{}-rotated", self.password);
                management_put(
                    &format!("/api/users/{}", self.user),
                    json!({"password": rotated, "tags": "monitoring"}),
                )
                .await;
                tokio::time::sleep(gap).await;
                self.write_secret(&rotated).await;
                self.password = rotated;
                format!("Secret updated {} after the password", secs(gap))
            }
            Fault::LeaderKilled => {
                let started = Instant::now();
                let holder = self.lease_holder().await;
                // Set up so that the replica off the APIService's port leads; should the Lease
                // have moved, the one the HPA reads is killed instead, and replaced on its port.
                let registered_leads = holder.is_some()
                    && holder.as_deref() == self.registered.as_ref().map(|r| r.identity.as_str());
                let (mut leader, successor) = if registered_leads {
                    (self.registered.take(), self.other.as_ref())
                } else {
                    (self.other.take(), self.registered.as_ref())
                };
                let successor = successor.expect("two replicas").identity.clone();
                leader.as_mut().expect("two replicas").kill();
                let handover = match self.wait_holder(&successor, Duration::from_secs(20)).await {
                    Ok(()) => format!("Lease handed over after {}", secs(started.elapsed())),
                    Err(err) => err,
                };
                if registered_leads {
                    drop(leader);
                    let replacement = self.start_replica(k8s::spillway_port(), "a").await;
                    self.set_registered(replacement);
                    format!("{handover} (the replica the HPA reads led, and was replaced)")
                } else {
                    // A new replica, off the APIService's port, follows.
                    self.other = Some(self.start_replica(k8s::free_port(), "b").await);
                    handover
                }
            }
            Fault::BothReplicasRestarted => {
                let started = Instant::now();
                drop(self.registered.take());
                drop(self.other.take());
                // The one off the APIService's port starts first and leads (its Lease expired).
                let other = self.start_replica(k8s::free_port(), "b").await;
                let registered = self.start_replica(k8s::spillway_port(), "a").await;
                let ours = [other.identity.clone(), registered.identity.clone()];
                self.other = Some(other);
                self.set_registered(registered);
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let holder = self.lease_holder().await;
                    if holder.as_ref().is_some_and(|h| ours.contains(h)) {
                        break format!("both up and one leading after {}", secs(started.elapsed()));
                    }
                    if Instant::now() >= deadline {
                        break format!("no new replica led within 20 s (holder {holder:?})");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            Fault::ControlPlaneRestarted { component } => {
                let took = run_script("k8s.sh", &["restart", component]).await;
                format!("restart took {}", secs(took))
            }
        }
    }

    async fn run(&mut self, case: &Case) -> Row {
        let mut failures = Vec::new();
        let probe = self.probe(case.target).clone();
        let has_holder = probe.holder.is_some();
        if let Err(err) = self.wait_steady(&probe, Duration::from_secs(60)).await {
            failures.push(format!("before the fault: {err}"));
        }
        let sampler = Sampler::start(probe);
        let injected = Instant::now();
        let note = self.inject(case.fault).await;
        let ended = Instant::now();
        let recovered = sampler.wait_recovered(ended, RECOVERY_LIMIT).await;
        let samples: Vec<Sample> = sampler
            .samples()
            .into_iter()
            .filter(|s| recovered.is_none_or(|at| s.at <= at))
            .collect();
        drop(sampler);

        let lowest = samples.iter().filter_map(|s| s.replicas).min();
        if lowest.is_some_and(|low| low < STEADY_REPLICAS) {
            failures.push(format!(
                "replicas dropped to {} (from {STEADY_REPLICAS})",
                lowest.unwrap()
            ));
        }
        // Without fallback the HPA gets 503s and holds: exactly 3, never fewer, never more.
        let holder_seen: Vec<i32> = samples.iter().filter_map(|s| s.holder).collect();
        if holder_seen.iter().any(|r| *r != STEADY_REPLICAS) {
            failures.push(format!(
                "the twin without fallback moved: replicas {holder_seen:?}"
            ));
        }
        let wrong: Vec<f64> = samples
            .iter()
            .filter_map(|s| match s.served {
                Served::Value(v) if v != served_steady() && v != served_fallback() => Some(v),
                _ => None,
            })
            .collect();
        if !wrong.is_empty() {
            failures.push(format!("served values other than 30 and 50: {wrong:?}"));
        }
        let fallback_sample = samples
            .iter()
            .find(|s| s.served == Served::Value(served_fallback()));
        let fallback = fallback_sample.map(|s| s.at.duration_since(injected));
        // What the replica counted when the fallback was first seen (read at the same moment).
        let failures_at_fallback = fallback_sample.and_then(|s| s.failures);
        let failures_seen: Vec<u32> = samples.iter().filter_map(|s| s.failures).collect();
        // The fallback is served from the failure after `failureThreshold`: the replica's count
        // read with it is threshold + 1 (one less or more when the two reads straddle a poll).
        if let Some(count) = failures_at_fallback
            && !(FAILURE_THRESHOLD..=FAILURE_THRESHOLD + 2).contains(&count)
        {
            failures.push(format!(
                "fallback served at {count} failures in a row (failureThreshold {FAILURE_THRESHOLD})"
            ));
        }
        match (case.expect, fallback) {
            (Expect::Fallback, None) => failures.push("no fallback".into()),
            (Expect::Fallback, Some(after)) if after > fallback_bound() => failures.push(format!(
                "fallback after {}, over {}",
                secs(after),
                secs(fallback_bound())
            )),
            (Expect::NoFallback, Some(after)) => failures.push(format!(
                "fallback after {} though the broker answered",
                secs(after)
            )),
            _ => {}
        }
        let recovery = match recovered {
            Some(at) => secs(at.duration_since(ended)),
            None => {
                failures.push(format!(
                    "served value not back to 30 within {RECOVERY_LIMIT:?}"
                ));
                "never".into()
            }
        };
        let unavailable = samples
            .iter()
            .filter(|s| matches!(s.served, Served::Unavailable(_)))
            .count();
        // SPILLWAY_FAULT_TIMELINE=1 prints every sample.
        if std::env::var_os("SPILLWAY_FAULT_TIMELINE").is_some() {
            for s in &samples {
                println!(
                    "    {:>6.2} s  replicas {:?}  failures {:?}  served {:?} in {}  direct {:?}",
                    s.at.duration_since(injected).as_secs_f64(),
                    s.replicas,
                    s.failures,
                    s.served,
                    secs(s.served_took),
                    s.direct
                );
            }
        }
        let replicas_unread = samples.iter().filter(|s| s.replicas.is_none()).count();
        let highest = samples.iter().filter_map(|s| s.replicas).max();
        let slowest = samples
            .iter()
            .map(|s| s.served_took)
            .max()
            .unwrap_or_default();
        let direct_unavailable = samples
            .iter()
            .filter(|s| matches!(s.direct, Served::Unavailable(_)))
            .count();
        let first_error = samples.iter().find_map(|s| match &s.served {
            Served::Unavailable(why) => Some(why.clone()),
            Served::Value(_) => None,
        });
        println!(
            "  {}: failures in a row {failures_seen:?}, {failures_at_fallback:?} at the fallback; {} samples; metric unavailable through the aggregator in {unavailable} \
             (first: {first_error:?}), from the replica directly in {direct_unavailable}; slowest \
             answer through the aggregator {}; replicas unreadable in {replicas_unread}, \
             highest {highest:?}",
            case.name,
            samples.len(),
            secs(slowest)
        );
        let mut checked = match case.expect {
            Expect::Fallback => format!("replicas >= 3, fallback <= {}", secs(fallback_bound())),
            Expect::NoFallback => "replicas >= 3, no fallback".to_owned(),
        };
        if has_holder {
            checked.push_str(", twin without fallback holds 3");
        }
        Row {
            name: case.name,
            checked,
            fallback: match (fallback, failures_at_fallback) {
                (Some(after), Some(count)) => format!("{} ({count})", secs(after)),
                (Some(after), None) => secs(after),
                (None, _) => "none".to_owned(),
            },
            recovery,
            lowest: match (lowest, highest) {
                (Some(low), Some(high)) if low != high => format!("{low} (up to {high})"),
                (Some(low), _) => low.to_string(),
                (None, _) => "?".to_owned(),
            },
            note: format!(
                "{note}; no metric in {unavailable} of {} samples",
                samples.len()
            ),
            failures,
        }
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            target: Target::RabbitMq,
            name: "latency 200 ms (under the 1 s timeout)",
            fault: Fault::Toxic {
                kind: "latency",
                stream: "downstream",
                attributes: r#"{"latency": 200, "jitter": 0}"#,
                hold: Duration::from_secs(8),
            },
            expect: Expect::NoFallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "latency 3 s (over the 1 s timeout)",
            fault: Fault::Toxic {
                kind: "latency",
                stream: "downstream",
                attributes: r#"{"latency": 3000, "jitter": 0}"#,
                hold: Duration::from_secs(12),
            },
            expect: Expect::Fallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "bandwidth 1 KB/s (an answer of under 1 KB still fits the timeout)",
            fault: Fault::Toxic {
                kind: "bandwidth",
                stream: "downstream",
                attributes: r#"{"rate": 1}"#,
                hold: Duration::from_secs(8),
            },
            expect: Expect::NoFallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "answers cut after 200 bytes (limit_data)",
            fault: Fault::Toxic {
                kind: "limit_data",
                stream: "downstream",
                attributes: r#"{"bytes": 200}"#,
                hold: Duration::from_secs(10),
            },
            expect: Expect::Fallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "connection resets (reset_peer)",
            fault: Fault::Toxic {
                kind: "reset_peer",
                stream: "downstream",
                attributes: r#"{"timeout": 0}"#,
                hold: Duration::from_secs(10),
            },
            expect: Expect::Fallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "blackhole (timeout toxic: data dropped, sockets open)",
            fault: Fault::Toxic {
                kind: "timeout",
                stream: "downstream",
                attributes: r#"{"timeout": 0}"#,
                hold: Duration::from_secs(12),
            },
            expect: Expect::Fallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "RabbitMQ SIGSTOP (hung, sockets open)",
            fault: Fault::BrokerPaused {
                broker: Broker::RabbitMq,
                hold: Duration::from_secs(12),
            },
            expect: Expect::Fallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "RabbitMQ kill -9",
            fault: Fault::BrokerKilled {
                broker: Broker::RabbitMq,
                hold: Duration::from_secs(5),
            },
            expect: Expect::Fallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "RabbitMQ restart (stop, start)",
            fault: Fault::BrokerRestarted {
                broker: Broker::RabbitMq,
            },
            expect: Expect::Fallback,
        },
        Case {
            target: Target::Kafka,
            name: "Kafka SIGSTOP (hung, sockets open)",
            fault: Fault::BrokerPaused {
                broker: Broker::Kafka,
                hold: Duration::from_secs(12),
            },
            expect: Expect::Fallback,
        },
        Case {
            target: Target::Kafka,
            name: "Kafka kill -9",
            fault: Fault::BrokerKilled {
                broker: Broker::Kafka,
                hold: Duration::from_secs(5),
            },
            expect: Expect::Fallback,
        },
        Case {
            target: Target::Kafka,
            name: "Kafka restart (stop, start)",
            fault: Fault::BrokerRestarted {
                broker: Broker::Kafka,
            },
            expect: Expect::Fallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "Secret rotated (password changed, Secret 6 s later)",
            fault: Fault::SecretRotated {
                gap: Duration::from_secs(6),
            },
            expect: Expect::Fallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "spillway leader SIGKILLed",
            fault: Fault::LeaderKilled,
            expect: Expect::NoFallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "both spillway replicas restarted",
            fault: Fault::BothReplicasRestarted,
            expect: Expect::NoFallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "kube-apiserver restart",
            fault: Fault::ControlPlaneRestarted {
                component: "kube-apiserver",
            },
            expect: Expect::NoFallback,
        },
        Case {
            target: Target::RabbitMq,
            name: "etcd restart",
            fault: Fault::ControlPlaneRestarted { component: "etcd" },
            expect: Expect::NoFallback,
        },
    ]
}

/// The Markdown table of the rows, as the README shows it.
fn table(rows: &[Row]) -> String {
    let mut text = String::from(
        "| fault | checked | fallback after (failures in a row then) | metric right again after the fault ended | replicas | result | notes |\n|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let result = if row.failures.is_empty() {
            "pass".to_owned()
        } else {
            format!("FAIL: {}", row.failures.join("; "))
        };
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            row.name, row.checked, row.fallback, row.recovery, row.lowest, result, row.note
        ));
    }
    text
}

/// A ScaledObject `name` on the Deployment `name` with `trigger`, the fallback, and no
/// downscale stabilization (back from fallback at the next HPA sync, so the cases stay
/// short); the probe of what its HPA reads, once the HPA exists.
async fn scaled_object(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    trigger: Value,
    replica_metrics: &Arc<Mutex<String>>,
) -> Probe {
    twin(admin, ns, name, trigger, true).await;
    probe(admin, ns, name, replica_metrics).await
}

/// Applies ScaledObject `name` for the Deployment `name`, with the fallback or without it.
async fn twin(admin: &kube::Client, ns: &str, name: &str, trigger: Value, fallback: bool) {
    let mut spec = json!({"scaleTargetRef": {"name": name}, "minReplicaCount": 1,
        "maxReplicaCount": 10, "pollingInterval": POLLING_INTERVAL.as_secs(),
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
            "scaleDown": {"stabilizationWindowSeconds": 0}}}},
        "triggers": [trigger]});
    if fallback {
        spec["fallback"] =
            json!({"failureThreshold": FAILURE_THRESHOLD, "replicas": FALLBACK_REPLICAS});
    }
    k8s::apply(
        admin,
        json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .await;
}

/// What the HPA of ScaledObject `name` reads, once the HPA exists.
async fn probe(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    replica_metrics: &Arc<Mutex<String>>,
) -> Probe {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), ns);
    let hpa_name = format!("spillway-{name}");
    let hpa = common::eventually(
        &format!("the HPA {hpa_name}"),
        Duration::from_secs(30),
        || async { hpas.get_opt(&hpa_name).await.ok().flatten() },
    )
    .await;
    let metric = hpa
        .spec
        .and_then(|s| s.metrics)
        .and_then(|m| m.into_iter().next())
        .and_then(|m| m.external)
        .map(|e| e.metric.name)
        .expect("the HPA's external metric");
    Probe {
        deployments: Api::namespaced(admin.clone(), ns),
        target: name.to_owned(),
        metric_path: format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector={LABEL}%3D{name}"
        ),
        direct: k8s::direct_client(Some("admin")),
        replica_metrics: replica_metrics.clone(),
        holder: None,
    }
}

async fn setup(_restore: &Restore) -> Bench {
    let admin = k8s::admin().await;
    k8s::delete_namespaces_starting_with(&admin, NAMESPACE_PREFIX).await;
    let kubeconfig = k8s::install_spillway_as(&admin, ACCOUNT).await;
    let ns = k8s::namespace(&admin, &format!("{NAMESPACE_PREFIX}matrix")).await;

    let vhost = common::unique_name("faults");
    let queue = common::unique_name("faults-jobs");
    let user = common::unique_name("faults-user");
    let password = "first-password".to_owned();
    rabbitmq_backlog(&vhost, &queue, &user, &password).await;
    let (management_url, _, _) = management();
    let upstream = management_url.trim_start_matches("http://").to_owned();
    let proxy = Proxy::create("faults-rabbitmq", &upstream).await;
    println!(
        "Toxiproxy {} proxy {} -> {upstream}",
        common::toxiproxy::version().await,
        proxy.listen
    );
    // 30 records behind on 3 partitions, the group committed at 0.
    let topic = common::kafka::create_topic(3).await;
    common::kafka::produce(&topic, &[10, 10, 10], Duration::ZERO).await;
    let group = common::unique_name("faults-group");
    common::kafka::commit(
        &group,
        &[
            (topic.as_str(), 0, 0),
            (topic.as_str(), 1, 0),
            (topic.as_str(), 2, 0),
        ],
    );

    k8s::pause_deployment(&admin, &ns, "rabbitmq-worker").await;
    k8s::pause_deployment(&admin, &ns, "rabbitmq-holder").await;
    k8s::pause_deployment(&admin, &ns, "kafka-worker").await;
    let lease = common::unique_name("e2e-faults-lease");
    let timings = LeaseTimings {
        lease_duration: 3,
        renew_deadline: 2,
        retry_period: 1,
    };
    let mut bench = Bench {
        admin: admin.clone(),
        kubeconfig,
        lease,
        timings,
        ns: ns.clone(),
        proxy,
        user,
        password: password.clone(),
        vhost: vhost.clone(),
        topic: topic.clone(),
        registered: None,
        other: None,
        rabbitmq: None,
        kafka: None,
        replica_metrics: Arc::new(Mutex::new(String::new())),
    };
    bench.write_secret(&password).await;

    // The leader first, off the APIService's port; then the one the HPA reads.
    let other = bench.start_replica(k8s::free_port(), "b").await;
    bench
        .wait_holder(&other.identity, Duration::from_secs(20))
        .await
        .expect("the first replica leads");
    bench.other = Some(other);
    bench.set_registered(bench.start_replica(k8s::spillway_port(), "a").await);
    k8s::register_api_service(&admin, "external.metrics.k8s.io", "v1beta1").await;
    k8s::wait_available(&admin, EXTERNAL, Duration::from_secs(60)).await;

    let poll_timeout = POLL_TIMEOUT.as_millis() as u64;
    let rabbitmq_trigger = json!({"rabbitmq": {
        "hostFromSecret": {"secretKeyRef": {"name": "rabbit", "key": "url"}},
        "protocol": "http", "vhostName": vhost, "queueName": queue,
        "mode": "QueueLength", "value": TARGET, "timeout": poll_timeout}});
    // The same trigger without fallback: through every RabbitMQ fault its HPA must hold at 3.
    twin(
        &admin,
        &ns,
        "rabbitmq-holder",
        rabbitmq_trigger.clone(),
        false,
    )
    .await;
    let mut rabbitmq = scaled_object(
        &admin,
        &ns,
        "rabbitmq-worker",
        rabbitmq_trigger,
        &bench.replica_metrics,
    )
    .await;
    rabbitmq.holder = Some("rabbitmq-holder".into());
    bench.rabbitmq = Some(rabbitmq);
    // No cap of one replica per partition (allowIdleConsumers): the HPA asks for ceil(lag / 10).
    bench.kafka = Some(
        scaled_object(
            &admin,
            &ns,
            "kafka-worker",
            json!({"kafka": {"bootstrapServers": common::kafka::bootstrap(),
                "consumerGroup": group, "topic": topic, "lagThreshold": TARGET as u64,
                "allowIdleConsumers": true, "timeout": poll_timeout}}),
            &bench.replica_metrics,
        )
        .await,
    );
    bench
}

#[tokio::test]
async fn fault_matrix_never_drops_replicas_and_recovers() {
    let restore = Restore;
    let started = Instant::now();
    let mut bench = setup(&restore).await;
    let scaled = Instant::now();
    for target in [Target::RabbitMq, Target::Kafka] {
        bench
            .wait_steady(bench.probe(target), Duration::from_secs(120))
            .await
            .unwrap_or_else(|err| {
                panic!("{target:?}: the HPA reaches 3 replicas from the backlog of 30: {err}")
            });
    }
    println!(
        "set up in {}, 3 replicas from the metric {} later",
        secs(scaled.duration_since(started)),
        secs(scaled.elapsed())
    );

    // SPILLWAY_FAULT_CASES=kill,reset runs the cases whose names contain one of the words.
    let only: Vec<String> = std::env::var("SPILLWAY_FAULT_CASES")
        .map(|words| words.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut rows = Vec::new();
    for case in cases()
        .into_iter()
        .filter(|c| only.is_empty() || only.iter().any(|w| c.name.contains(w.as_str())))
    {
        let case_started = Instant::now();
        let row = bench.run(&case).await;
        println!(
            "{}: fallback {}, recovered {} after the fault, lowest replicas {}, {} ({}) [{}]",
            row.name,
            row.fallback,
            row.recovery,
            row.lowest,
            if row.failures.is_empty() {
                "pass".to_owned()
            } else {
                row.failures.join("; ")
            },
            row.note,
            secs(case_started.elapsed())
        );
        rows.push(row);
    }
    println!(
        "\nfault matrix ({} in all):\n{}",
        secs(started.elapsed()),
        table(&rows)
    );

    let namespaces: Api<Namespace> = Api::all(bench.admin.clone());
    let _ = namespaces.delete(&bench.ns, &DeleteParams::default()).await;
    let vhost = bench.vhost.replace('/', "%2F");
    management_call(
        reqwest::Method::DELETE,
        &format!("/api/vhosts/{vhost}"),
        json!({}),
    )
    .await;
    management_call(
        reqwest::Method::DELETE,
        &format!("/api/users/{}", bench.user),
        json!({}),
    )
    .await;
    common::kafka::delete_topic(&bench.topic).await;
    let _ = Api::<Lease>::namespaced(bench.admin.clone(), k8s::SPILLWAY_NAMESPACE)
        .delete(&bench.lease, &DeleteParams::default())
        .await;
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| format!("{}: {}", r.name, r.failures.join("; ")))
        .collect();
    assert!(
        failed.is_empty(),
        "faults that failed their checks:\n{}",
        failed.join("\n")
    );
}
