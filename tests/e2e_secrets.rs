//! End to end for the credentials of ScaledObjects (`spillway run` on the real control plane,
//! with the real RabbitMQ): Secrets come from a watch, so a rotated Secret is picked up without
//! a restart, a deleted one unregisters its object at once with a condition saying why, and an
//! API server that goes away (a relay in front of it cut: connections dropped, new ones
//! refused, as in a restart) leaves every registration and its values in place.
//!
//! spillway acts as a ServiceAccount of its own with copies of `deploy/rbac.yaml`'s roles, so
//! the shipped RBAC is what is tested. Values are read from spillway's own `/metrics`
//! (`spillway_trigger_value`), which shows exactly what is registered and polled. The objects
//! are paused, so no HPA exists and nothing but their Secrets, their own changes and their
//! requeue reconciles them. Each test starts its own `spillway run` (one at a time: each leads
//! its own Lease and reconciles every ScaledObject) and deletes its namespace at the end.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::k8s::{self, SpillwayController};
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use spillway::controller::crd::ScaledObject;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::{JoinHandle, JoinSet};

static SERIAL: Mutex<()> = Mutex::const_new(());

/// The ServiceAccount these tests run spillway as.
const ACCOUNT: &str = "spillway-e2e-secrets";
/// The messages every test queue holds.
const MESSAGES: usize = 7;
/// Every namespace these tests create starts with it.
const NAMESPACE_PREFIX: &str = "e2e-sec-";

/// A namespace with a queue of [`MESSAGES`] messages, a Deployment to scale and a Secret
/// `rabbit` whose key `url` is the queue's AMQP URL with `password`; deleted when dropped.
struct Fixture {
    admin: kube::Client,
    ns: String,
    queue: String,
    _connection: lapin::Connection,
    channel: lapin::Channel,
}

impl Fixture {
    async fn new(admin: &kube::Client, prefix: &str, password: &str) -> Self {
        k8s::delete_namespaces_starting_with(admin, NAMESPACE_PREFIX).await;
        let ns = k8s::namespace(admin, &format!("{NAMESPACE_PREFIX}{prefix}")).await;
        let (connection, channel, queue) =
            common::rabbitmq::queue_with_messages(prefix, MESSAGES).await;
        k8s::apply(
            admin,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "worker", "namespace": ns},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "worker"}},
                    "template": {"metadata": {"labels": {"app": "worker"}},
                        "spec": {"containers": [{"name": "worker", "image": "registry.k8s.io/pause:3.10"}]}}}}),
        )
        .await;
        let fixture = Self {
            admin: admin.clone(),
            ns,
            queue,
            _connection: connection,
            channel,
        };
        fixture.set_password(password).await;
        fixture
    }

    /// Writes (or rotates) the Secret `rabbit` with `password` in its URL.
    async fn set_password(&self, password: &str) {
        let url = format!(
            "amqp://guest:{password}@127.0.0.1:{}/%2f",
            common::rabbitmq::amqp_port()
        );
        k8s::apply(
            &self.admin,
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "rabbit", "namespace": self.ns},
                "stringData": {"url": url}}),
        )
        .await;
    }

    async fn delete_secret(&self) {
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), &self.ns);
        secrets
            .delete("rabbit", &DeleteParams::default())
            .await
            .expect("delete the Secret");
    }

    /// A paused ScaledObject `worker` on the queue, its URL from the Secret `rabbit`.
    async fn scaled_object(&self, polling_interval: u32) {
        k8s::apply(
            &self.admin,
            json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ScaledObject",
                "metadata": {"name": "worker", "namespace": self.ns},
                "spec": {"scaleTargetRef": {"name": "worker"}, "minReplicaCount": 1,
                    "maxReplicaCount": 5, "pollingInterval": polling_interval, "paused": true,
                    "triggers": [{"rabbitmq": {
                        "hostFromSecret": {"secretKeyRef": {"name": "rabbit", "key": "url"}},
                        "protocol": "amqp", "queueName": self.queue,
                        "mode": "QueueLength", "value": 5}}]}}),
        )
        .await;
    }

    /// The namespace goes with everything in it, so no later controller reconciles it.
    async fn delete(self) {
        let namespaces: Api<Namespace> = Api::all(self.admin.clone());
        let _ = namespaces.delete(&self.ns, &DeleteParams::default()).await;
    }

    fn scaled_objects(&self) -> Api<ScaledObject> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// The Ready condition of `worker`: (status, reason, message).
    async fn ready(&self) -> Option<(String, String, String)> {
        let so = self.scaled_objects().get_opt("worker").await.ok()??;
        so.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status, c.reason, c.message))
    }

    /// The Events about `worker`, as "reason: message".
    async fn events(&self) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.admin.clone(), &self.ns);
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=worker"))
            .await
            .expect("list events");
        list.items
            .into_iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                )
            })
            .collect()
    }
}

/// Publishes `count` more messages to `queue`, each confirmed.
async fn publish(channel: &lapin::Channel, queue: &str, count: usize) {
    for _ in 0..count {
        let confirm = channel
            .basic_publish(
                "",
                queue,
                lapin::options::BasicPublishOptions::default(),
                b"job",
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish");
        assert!(confirm.await.expect("confirm").is_ack());
    }
}

/// How often spillway's log says it read `ns`'s Secret (one line per reconcile).
fn secret_reads(controller: &SpillwayController, ns: &str) -> usize {
    std::fs::read_to_string(&controller.log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("read secret key") && line.contains(ns))
        .count()
}

/// What spillway's `/metrics` says about `ns/worker`'s trigger 0: its main metric's value
/// when it has one, and its failures in a row; `None` when the trigger is not registered.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Served {
    value: Option<f64>,
    consecutive_failures: f64,
}

async fn served(controller: &SpillwayController, ns: &str) -> Option<Served> {
    let text = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        controller.metrics_port
    ))
    .await
    .ok()?
    .text()
    .await
    .ok()?;
    let ours = format!(r#"namespace="{ns}",scaled_object="worker",trigger="0""#);
    let sample = |name: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(&ours))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    };
    let failures = sample("spillway_trigger_consecutive_failures");
    let (_, consecutive_failures) = failures.first()?.clone();
    // The main metric has the shortest name; extras are `<metric>-<suffix>`.
    let value = sample("spillway_trigger_value")
        .into_iter()
        .min_by_key(|(series, _)| series.len())
        .map(|(_, value)| value);
    Some(Served {
        value,
        consecutive_failures,
    })
}

/// Waits until what `/metrics` says about `ns/worker` satisfies `wanted`; how long it took.
async fn wait_served(
    controller: &SpillwayController,
    ns: &str,
    what: &str,
    timeout: Duration,
    wanted: impl Fn(Option<Served>) -> bool,
) -> Duration {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < timeout {
        last = served(controller, ns).await;
        if wanted(last) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "timed out after {timeout:?} waiting for {ns}/worker {what}; last seen {last:?}\n{}",
        controller.log_tail(30)
    );
}

async fn wait_ready(
    fixture: &Fixture,
    status: &str,
    timeout: Duration,
) -> (String, String, String) {
    common::eventually(
        &format!("{}/worker to be Ready={status}", fixture.ns),
        timeout,
        || async { fixture.ready().await.filter(|(s, _, _)| s == status) },
    )
    .await
}

/// `spillway run` as [`ACCOUNT`] through `kubeconfig`, leading a Lease of its own.
async fn start_controller(kubeconfig: &Path) -> SpillwayController {
    let lease = common::unique_name("e2e-secrets-lease");
    SpillwayController::start(
        kubeconfig,
        common::free_port(),
        &lease,
        &format!("{lease}-a"),
        None,
    )
    .await
}

fn secs(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[tokio::test]
async fn a_rotated_secret_is_picked_up_without_restarting_spillway() {
    let _serial = SERIAL.lock().await;
    let admin = k8s::admin().await;
    let kubeconfig = k8s::install_spillway_as(&admin, ACCOUNT).await;
    let fixture = Fixture::new(&admin, "rotate", "wrong").await;
    let controller = start_controller(&kubeconfig).await;
    fixture.scaled_object(2).await;

    // Registered with the wrong password: polled, and failing.
    wait_served(
        &controller,
        &fixture.ns,
        "to fail with the wrong password",
        Duration::from_secs(20),
        |s| s.is_some_and(|s| s.value.is_none() && s.consecutive_failures >= 1.0),
    )
    .await;

    fixture.set_password("guest").await;
    let took = wait_served(
        &controller,
        &fixture.ns,
        "to read the queue with the rotated password",
        Duration::from_secs(20),
        |s| s.is_some_and(|s| s.value == Some(MESSAGES as f64)),
    )
    .await;
    println!("rotated Secret to a value read: {}", secs(took));
    let (_, reason, message) = wait_ready(&fixture, "True", Duration::from_secs(10)).await;
    assert_eq!(reason, "ScaledObjectReady", "{message}");
    fixture.delete().await;
}

#[tokio::test]
async fn a_deleted_secret_unregisters_its_object_at_once_and_says_why() {
    let _serial = SERIAL.lock().await;
    let admin = k8s::admin().await;
    let kubeconfig = k8s::install_spillway_as(&admin, ACCOUNT).await;
    let fixture = Fixture::new(&admin, "delete", "guest").await;
    let controller = start_controller(&kubeconfig).await;
    // Requeued every 60 s: anything sooner is the Secret's watch.
    fixture.scaled_object(60).await;
    wait_served(
        &controller,
        &fixture.ns,
        "to be served",
        Duration::from_secs(20),
        |s| s.is_some_and(|s| s.value == Some(MESSAGES as f64)),
    )
    .await;
    wait_ready(&fixture, "True", Duration::from_secs(10)).await;

    fixture.delete_secret().await;
    let deleted = Instant::now();
    let (_, reason, message) = wait_ready(&fixture, "False", Duration::from_secs(15)).await;
    let to_condition = deleted.elapsed();
    assert_eq!(reason, "SecretNotFound", "{message}");
    assert_eq!(
        message,
        format!(
            "spec.triggers[0].rabbitmq.hostFromSecret: secret {}/rabbit (key url) does not exist",
            fixture.ns
        )
    );
    wait_served(
        &controller,
        &fixture.ns,
        "to be unregistered",
        Duration::from_secs(10),
        |s| s.is_none(),
    )
    .await;
    let to_unregistered = deleted.elapsed();
    let events = fixture.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("SecretNotFound: Ready=False: ")),
        "{events:?}"
    );

    // Created again: registered again, as promptly.
    fixture.set_password("guest").await;
    let created = Instant::now();
    wait_ready(&fixture, "True", Duration::from_secs(15)).await;
    wait_served(
        &controller,
        &fixture.ns,
        "to be served again",
        Duration::from_secs(15),
        |s| s.is_some_and(|s| s.value == Some(MESSAGES as f64)),
    )
    .await;
    println!(
        "Secret deleted to Ready=False: {}, to unregistered: {}; created again to served: {}",
        secs(to_condition),
        secs(to_unregistered),
        secs(created.elapsed())
    );
    fixture.delete().await;
}

/// A TCP relay to the API server that can be cut as a restart cuts it: open connections
/// dropped, new ones refused (the port closed), until it is restored on the same port.
struct ApiRelay {
    port: u16,
    upstream: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl ApiRelay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut relay = Self {
            port,
            upstream,
            task: None,
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = self.upstream;
        self.task = Some(tokio::spawn(async move {
            // Dropped with this task: every relayed connection ends with it.
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restore(&mut self) {
        let listener = common::eventually(
            "the relay's port to bind again",
            Duration::from_secs(10),
            || async { TcpListener::bind(("127.0.0.1", self.port)).await.ok() },
        )
        .await;
        self.serve(listener);
    }
}

impl Drop for ApiRelay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// `kubeconfig` with its server moved to 127.0.0.1:`port` (the API server's certificate names
/// 127.0.0.1 whatever the port).
fn kubeconfig_via(kubeconfig: &Path, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let mut config: Value = serde_norway::from_str(&text).unwrap();
    config["clusters"][0]["cluster"]["server"] = json!(format!("https://127.0.0.1:{port}"));
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", common::unique_name("relayed")));
    std::fs::write(&path, serde_norway::to_string(&config).unwrap()).unwrap();
    path
}

async fn api_server_addr() -> SocketAddr {
    let url = reqwest::Url::parse(&common::endpoint("SPILLWAY_K8S_APISERVER")).unwrap();
    SocketAddr::from(([127, 0, 0, 1], url.port().expect("port")))
}

#[tokio::test]
async fn an_api_server_outage_keeps_every_registration_and_its_values() {
    let _serial = SERIAL.lock().await;
    let admin = k8s::admin().await;
    let kubeconfig = k8s::install_spillway_as(&admin, ACCOUNT).await;
    let mut relay = ApiRelay::start(api_server_addr().await).await;
    let fixture = Fixture::new(&admin, "outage", "guest").await;
    let controller = start_controller(&kubeconfig_via(&kubeconfig, relay.port)).await;
    // Reconciled every second while leading: each reconcile during the outage reads the
    // Secret again.
    fixture.scaled_object(1).await;
    wait_served(
        &controller,
        &fixture.ns,
        "to be served",
        Duration::from_secs(20),
        |s| s.is_some_and(|s| s.value == Some(MESSAGES as f64)),
    )
    .await;
    wait_ready(&fixture, "True", Duration::from_secs(10)).await;

    relay.cut();
    let cut = Instant::now();
    let reads_before = secret_reads(&controller, &fixture.ns);
    // Longer than the non-leader requeue (5 s) and than the renew deadline (10 s): whether it
    // still leads or has stepped down, spillway reconciles the object during the outage.
    let outage = Duration::from_secs(12);
    let mut samples = 0;
    let mut published = false;
    while cut.elapsed() < outage {
        let now = served(&controller, &fixture.ns).await;
        assert!(
            now.is_some_and(|s| s.value.is_some()),
            "{}/worker lost its registration or value {} into the outage: {now:?}\n{}",
            fixture.ns,
            secs(cut.elapsed()),
            controller.log_tail(30)
        );
        samples += 1;
        if !published && cut.elapsed() > Duration::from_secs(3) {
            // The broker is still read during the outage: new messages show.
            publish(&fixture.channel, &fixture.queue, 3).await;
            published = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let during = served(&controller, &fixture.ns).await;
    assert_eq!(
        during.and_then(|s| s.value),
        Some(MESSAGES as f64 + 3.0),
        "polled during the outage"
    );
    // Reconciled during the outage (the first retry is due a second after it began), reading
    // the Secret from the cache where a GET would have been refused: spillway's only way to
    // the API server is the relay, and it did try and was refused. (Not which watch saw it
    // first: kube-runtime polls the Secret and TriggerAuthentication trigger streams lazily,
    // and CI saw their failures 4 s, 9 s and more than 12 s after the cut.)
    let reads_during = secret_reads(&controller, &fixture.ns) - reads_before;
    assert!(reads_during >= 1, "no reconcile during the outage");
    let log = std::fs::read_to_string(&controller.log).unwrap_or_default();
    assert!(
        log.contains("client error (Connect)"),
        "spillway never tried the API server during the outage\n{}",
        controller.log_tail(30)
    );

    relay.restore().await;
    let restored = Instant::now();
    // Back: still registered, and Ready once the leader writes again.
    wait_ready(&fixture, "True", Duration::from_secs(30)).await;
    while restored.elapsed() < Duration::from_secs(3) {
        let now = served(&controller, &fixture.ns).await;
        assert!(
            now.is_some_and(|s| s.value.is_some()),
            "unregistered after the API server came back: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "{samples} samples over a {} outage, every one registered with a value; {reads_during} reconciles read the Secret meanwhile",
        secs(outage)
    );
    fixture.delete().await;
}
