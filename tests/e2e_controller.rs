//! End to end for the ScaledObject controller (`spillway run`) on a real control plane
//! (etcd, kube-apiserver with its aggregator, kube-controller-manager with its HPA controller
//! syncing every 2 s and a 10 s downscale stabilization; `scripts/k8s.sh`) and a real Kafka.
//!
//! spillway is installed from `deploy/` and acts as its ServiceAccount, so the shipped RBAC
//! is what is tested. The tests share the APIService and spillway's port, so they run one at
//! a time; the fallback test stops the shared Kafka broker and starts it again.
//!
//! Measured times (backlog to replicas, cooldown, fallback, handover) are printed: run with
//! `--nocapture`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::k8s::{self, LeaseTimings, SpillwayController};
use common::replicas::{ReplicaRecorder, replicas};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use spillway::controller::crd::ScaledObject;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// One test at a time: they share the APIService, spillway's port and the Kafka broker.
static SERIAL: Mutex<()> = Mutex::const_new(());

const EXTERNAL: &str = "v1beta1.external.metrics.k8s.io";
const LABEL: &str = "scaledobject.spillway.dev/name";
/// Every namespace these tests create starts with it; ScaledObjects left there by an earlier,
/// failed run are deleted so this run's controller does not reconcile them.
const NAMESPACE_PREFIX: &str = "e2e-ctl-";

/// The admin client and the kubeconfig of spillway's ServiceAccount.
struct Cluster {
    admin: kube::Client,
    kubeconfig: PathBuf,
}

/// Installs spillway from `deploy/` and removes what earlier runs of this file left behind.
async fn install() -> Cluster {
    let admin = k8s::admin().await;
    let kubeconfig = k8s::install_spillway(&admin).await;
    delete_leftover_scaled_objects(&admin).await;
    Cluster { admin, kubeconfig }
}

async fn delete_leftover_scaled_objects(admin: &kube::Client) {
    let all = k8s::dynamic_api(
        admin,
        "spillway.dev",
        "v1alpha1",
        "ScaledObject",
        "scaledobjects",
        None,
    );
    for so in all.list(&ListParams::default()).await.expect("list").items {
        let (Some(ns), Some(name)) = (so.metadata.namespace, so.metadata.name) else {
            continue;
        };
        if ns.starts_with(NAMESPACE_PREFIX) {
            let api = k8s::dynamic_api(
                admin,
                "spillway.dev",
                "v1alpha1",
                "ScaledObject",
                "scaledobjects",
                Some(&ns),
            );
            let _ = api.delete(&name, &DeleteParams::default()).await;
        }
    }
}

/// `spillway run` on the registered port with the APIService Available, leading a Lease of
/// its own (no earlier run's Lease has to expire first).
async fn start_controller(cluster: &Cluster) -> SpillwayController {
    let lease = common::unique_name("e2e-ctl-lease");
    let controller = SpillwayController::start(
        &cluster.kubeconfig,
        k8s::spillway_port(),
        &lease,
        &format!("{lease}-a"),
        None,
    )
    .await;
    k8s::register_api_service(&cluster.admin, "external.metrics.k8s.io", "v1beta1").await;
    k8s::wait_available(&cluster.admin, EXTERNAL, Duration::from_secs(60)).await;
    wait_holder(
        &cluster.admin,
        &lease,
        &controller.identity,
        Duration::from_secs(30),
    )
    .await;
    controller
}

fn leases(admin: &kube::Client) -> Api<Lease> {
    Api::namespaced(admin.clone(), k8s::SPILLWAY_NAMESPACE)
}

async fn lease_holder(admin: &kube::Client, name: &str) -> Option<String> {
    leases(admin)
        .get_opt(name)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

async fn wait_holder(admin: &kube::Client, lease: &str, identity: &str, timeout: Duration) {
    common::eventually(
        &format!("Lease {lease} to name {identity} as holder"),
        timeout,
        || async { (lease_holder(admin, lease).await.as_deref() == Some(identity)).then_some(()) },
    )
    .await;
}

async fn delete_lease(admin: &kube::Client, name: &str) {
    let _ = leases(admin).delete(name, &DeleteParams::default()).await;
}

/// A topic with `counts[p]` records in partition p and a group committed at 0 on each.
async fn kafka_backlog(counts: &[i64]) -> (String, String) {
    let topic = common::kafka::create_topic(counts.len() as i32).await;
    common::kafka::produce(&topic, counts, Duration::ZERO).await;
    let group = common::unique_name("e2e-ctl-group");
    commit(&group, &topic, &vec![0; counts.len()]);
    (topic, group)
}

/// Commits `offsets[p]` for partition p of `topic`.
fn commit(group: &str, topic: &str, offsets: &[i64]) {
    let offsets: Vec<(&str, i32, i64)> = offsets
        .iter()
        .enumerate()
        .map(|(p, offset)| (topic, p as i32, *offset))
        .collect();
    common::kafka::commit(group, &offsets);
}

/// A kafka trigger on the harness broker: target 10 per replica, and no cap of one replica
/// per partition (allowIdleConsumers), so the HPA asks for ceil(lag / 10).
fn kafka_trigger(bootstrap: &str, group: &str, topic: &str) -> Value {
    json!({"kafka": {"bootstrapServers": bootstrap, "consumerGroup": group, "topic": topic,
        "lagThreshold": 10, "allowIdleConsumers": true, "timeout": 1000}})
}

fn scaled_object(ns: &str, name: &str, target: &str, mut spec: Value) -> Value {
    spec["scaleTargetRef"] = json!({"name": target});
    json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A Deployment of pause containers (Pending for ever without a kubelet; the ReplicaSet still
/// reports them, which is all the HPA needs).
async fn deployment(admin: &kube::Client, ns: &str, name: &str, replicas: i32) -> Api<Deployment> {
    k8s::apply(
        admin,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "consumer", "image": "registry.k8s.io/pause:3.10"}]}}}}),
    )
    .await;
    Api::namespaced(admin.clone(), ns)
}

/// Waits until the Deployment's replicas satisfy `wanted`; the count seen. On a timeout the
/// panic shows the HPAs, ScaledObjects and APIService of the moment.
async fn wait_replicas(
    deployments: &Api<Deployment>,
    name: &str,
    what: &str,
    timeout: Duration,
    wanted: impl Fn(i32) -> bool,
) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        let now = replicas(deployments, name).await;
        if wanted(now) {
            return now;
        }
        if Instant::now() >= deadline {
            let client = deployments.clone().into_client();
            let ns = deployments.namespace().unwrap_or_default();
            panic!(
                "timed out after {timeout:?} waiting for Deployment {name} {what}: it has {now} replicas\n{}",
                diagnose(&client, ns).await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the HPAs, ScaledObjects and the APIService report, for a failure message.
async fn diagnose(client: &kube::Client, ns: &str) -> String {
    let mut lines = Vec::new();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    for hpa in hpas
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let status = hpa.status.unwrap_or_default();
        lines.push(format!(
            "HPA {}: current {:?}, desired {}, metrics {:?}",
            hpa.metadata.name.unwrap_or_default(),
            status.current_replicas,
            status.desired_replicas,
            status.current_metrics
        ));
        for c in status.conditions.unwrap_or_default() {
            lines.push(format!(
                "  {}={} {}: {}",
                c.type_,
                c.status,
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default()
            ));
        }
    }
    let sos: Api<ScaledObject> = Api::namespaced(client.clone(), ns);
    for so in sos
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let status = so.status.unwrap_or_default();
        lines.push(format!(
            "ScaledObject {}: triggers {:?}",
            so.metadata.name.unwrap_or_default(),
            status.triggers
        ));
        for c in status.conditions {
            lines.push(format!(
                "  {}={} {}: {}",
                c.type_, c.status, c.reason, c.message
            ));
        }
    }
    lines.push(format!(
        "APIService {EXTERNAL}: {:?}",
        k8s::api_service_available(client, EXTERNAL).await
    ));
    lines.join("\n")
}

async fn condition(sos: &Api<ScaledObject>, name: &str, kind: &str) -> Option<Condition> {
    let so = sos.get_opt(name).await.ok().flatten()?;
    so.status?.conditions.into_iter().find(|c| c.type_ == kind)
}

async fn wait_condition(
    sos: &Api<ScaledObject>,
    name: &str,
    kind: &str,
    status: &str,
    timeout: Duration,
) -> Condition {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = condition(sos, name, kind)
            .await
            .filter(|c| c.status == status)
        {
            return found;
        }
        if Instant::now() >= deadline {
            let client = sos.clone().into_client();
            let ns = sos.namespace().unwrap_or_default();
            panic!(
                "timed out after {timeout:?} waiting for ScaledObject {name}'s condition {kind}={status}\n{}",
                diagnose(&client, ns).await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_hpa(
    hpas: &Api<HorizontalPodAutoscaler>,
    name: &str,
    timeout: Duration,
) -> HorizontalPodAutoscaler {
    common::eventually(&format!("HPA {name} to exist"), timeout, || async {
        hpas.get_opt(name).await.ok().flatten()
    })
    .await
}

async fn wait_hpa_gone(hpas: &Api<HorizontalPodAutoscaler>, name: &str, timeout: Duration) {
    common::eventually(&format!("HPA {name} to be gone"), timeout, || async {
        matches!(hpas.get_opt(name).await, Ok(None)).then_some(())
    })
    .await;
}

/// The Events about object `name` in `ns`, as "reason: message".
async fn events_about(admin: &kube::Client, ns: &str, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
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

async fn delete_scaled_object(sos: &Api<ScaledObject>, name: &str) {
    let _ = sos.delete(name, &DeleteParams::default()).await;
}

fn secs(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[tokio::test]
async fn scales_a_deployment_from_zero_with_kafka_lag_and_back_to_zero_after_the_cooldown() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-scale").await;
    // 45 records behind: ceil(45 / 10) = 5 replicas.
    let (topic, group) = kafka_backlog(&[20, 15, 10]).await;
    let deployments = deployment(admin, &ns, "orders-consumer", 0).await;
    let controller = start_controller(&cluster).await;
    let recorder = ReplicaRecorder::start(deployments.clone(), "orders-consumer");
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);

    let created = Instant::now();
    k8s::apply(
        admin,
        scaled_object(
            &ns,
            "orders",
            "orders-consumer",
            json!({"minReplicaCount": 0, "maxReplicaCount": 10, "cooldownPeriod": 10,
                "pollingInterval": 1,
                "triggers": [kafka_trigger(&common::kafka::bootstrap(), &group, &topic)]}),
        ),
    )
    .await;
    wait_replicas(
        &deployments,
        "orders-consumer",
        "to leave 0 replicas (activation)",
        Duration::from_secs(60),
        |r| r >= 1,
    )
    .await;
    let activated = created.elapsed();
    wait_replicas(
        &deployments,
        "orders-consumer",
        "to reach ceil(45/10) = 5 replicas",
        Duration::from_secs(120),
        |r| r == 5,
    )
    .await;
    let scaled = created.elapsed();
    println!(
        "backlog of 45 (existing) -> ScaledObject created -> replicas >= 1 after {}, 5 after {}",
        secs(activated),
        secs(scaled)
    );

    // The HPA spillway owns, removed with its owner by the garbage collector.
    let so = sos.get("orders").await.expect("ScaledObject orders");
    let hpa = wait_hpa(&hpas, "spillway-orders", Duration::from_secs(30)).await;
    let owners = hpa.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owners
            .iter()
            .any(|o| o.api_version == "spillway.dev/v1alpha1"
                && o.kind == "ScaledObject"
                && o.name == "orders"
                && Some(&o.uid) == so.metadata.uid.as_ref()
                && o.controller == Some(true)),
        "HPA spillway-orders must be controlled by ScaledObject orders: {owners:?}"
    );
    let spec = hpa.spec.expect("HPA spec");
    assert_eq!(
        spec.min_replicas,
        Some(1),
        "HPA min = max(1, minReplicaCount)"
    );
    assert_eq!(spec.max_replicas, 10);
    assert_eq!(spec.scale_target_ref.name, "orders-consumer");

    // A hand edit of a field spillway owns is put back.
    hpas.patch(
        "spillway-orders",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"spec": {"maxReplicas": 99}})),
    )
    .await
    .expect("edit the HPA by hand");
    common::eventually(
        "spillway to restore the hand-edited HPA's maxReplicas",
        Duration::from_secs(30),
        || async {
            let hpa = hpas.get("spillway-orders").await.ok()?;
            (hpa.spec?.max_replicas == 10).then_some(())
        },
    )
    .await;

    wait_condition(&sos, "orders", "Ready", "True", Duration::from_secs(30)).await;
    wait_condition(&sos, "orders", "Active", "True", Duration::from_secs(30)).await;
    let status = common::eventually(
        "ScaledObject orders' status to name its HPA, last active time and trigger",
        Duration::from_secs(30),
        || async {
            let status = sos.get("orders").await.ok()?.status?;
            (status.hpa_name.as_deref() == Some("spillway-orders")
                && status.last_active_time.is_some()
                && status
                    .triggers
                    .first()
                    .is_some_and(|t| t.metric.starts_with("s0-")))
            .then_some(status)
        },
    )
    .await;
    println!(
        "status while active: triggers[0] = {:?}",
        status.triggers.first()
    );
    let events = common::eventually(
        "an Event about ScaledObject orders",
        Duration::from_secs(30),
        || async { Some(events_about(admin, &ns, "orders").await).filter(|e| !e.is_empty()) },
    )
    .await;
    println!("events about orders: {events:?}");

    // Drained: the HPA goes down to its minimum of 1, and spillway to 0 once no trigger has
    // been active for the cooldown (the two race: both are about 10 s).
    commit(&group, &topic, &[20, 15, 10]);
    let drained = Instant::now();
    let low = wait_replicas(
        &deployments,
        "orders-consumer",
        "to scale down to the HPA's minimum 1 (or 0) after the drain",
        Duration::from_secs(90),
        |r| r <= 1,
    )
    .await;
    let to_low = drained.elapsed();
    wait_replicas(
        &deployments,
        "orders-consumer",
        "to scale to 0 after the 10 s cooldown",
        Duration::from_secs(90),
        |r| r == 0,
    )
    .await;
    let to_zero = drained.elapsed();
    println!(
        "drained -> replicas {low} after {}, 0 after {} (cooldown 10 s, HPA stabilization 10 s)",
        secs(to_low),
        secs(to_zero)
    );
    // The last active poll is at most one polling interval before the drain, and
    // lastActiveTime has whole seconds.
    assert!(
        to_zero >= Duration::from_secs(8),
        "scaled to 0 {} after the drain, before the 10 s cooldown",
        secs(to_zero)
    );
    wait_condition(&sos, "orders", "Active", "False", Duration::from_secs(30)).await;

    // A new backlog on an idle target: the time from its appearing to the new replica count.
    common::kafka::produce(&topic, &[10, 10, 10], Duration::ZERO).await;
    let appeared = Instant::now();
    wait_replicas(
        &deployments,
        "orders-consumer",
        "to leave 0 replicas for the new backlog of 30",
        Duration::from_secs(60),
        |r| r >= 1,
    )
    .await;
    let reactivated = appeared.elapsed();
    wait_replicas(
        &deployments,
        "orders-consumer",
        "to reach ceil(30/10) = 3 replicas",
        Duration::from_secs(120),
        |r| r == 3,
    )
    .await;
    println!(
        "new backlog of 30 appeared -> replicas >= 1 after {}, 3 after {}",
        secs(reactivated),
        secs(appeared.elapsed())
    );
    wait_condition(&sos, "orders", "Active", "True", Duration::from_secs(30)).await;

    recorder.catch_up().await;
    println!(
        "replicas over {}: {}",
        secs(recorder.elapsed()),
        recorder.describe()
    );

    // With spillway stopped, only the garbage collector can remove the HPA: its owner
    // reference is what does it.
    let lease = controller.lease_name.clone();
    drop(controller);
    delete_scaled_object(&sos, "orders").await;
    let deleted = Instant::now();
    wait_hpa_gone(&hpas, "spillway-orders", Duration::from_secs(60)).await;
    println!(
        "ScaledObject deleted (spillway stopped) -> HPA removed by the garbage collector after {}",
        secs(deleted.elapsed())
    );
    common::kafka::delete_topic(&topic).await;
    delete_lease(admin, &lease).await;
}

/// Kafka stopped with `scripts/kafka.sh`; started again when this ends, on a panic too.
struct KafkaOutage {
    over: bool,
}

fn kafka_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
}

impl KafkaOutage {
    async fn begin() -> Self {
        // Armed before the stop, so a stop that fails half way is undone too.
        let outage = Self { over: false };
        let status = tokio::process::Command::new("bash")
            .arg(kafka_script())
            .arg("stop")
            .status()
            .await
            .expect("run scripts/kafka.sh stop");
        assert!(status.success(), "scripts/kafka.sh stop failed");
        outage
    }

    async fn end(mut self) {
        self.over = true;
        let status = tokio::process::Command::new("bash")
            .arg(kafka_script())
            .arg("start")
            .status()
            .await
            .expect("run scripts/kafka.sh start");
        assert!(status.success(), "Kafka did not come back");
    }
}

impl Drop for KafkaOutage {
    fn drop(&mut self) {
        if self.over {
            return;
        }
        let started = std::process::Command::new("bash")
            .arg(kafka_script())
            .arg("start")
            .status();
        if !started.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("scripts/kafka.sh start failed: start Kafka by hand ({started:?})");
        }
    }
}

#[tokio::test]
async fn a_stopped_kafka_broker_puts_the_target_on_fallback_replicas_and_never_zero() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-fallback").await;
    // 5 behind: the HPA asks for its minimum of 1; fallback asks for 3.
    let (topic, group) = kafka_backlog(&[5]).await;
    let deployments = deployment(admin, &ns, "worker", 1).await;
    let recorder = ReplicaRecorder::start(deployments.clone(), "worker");
    let controller = start_controller(&cluster).await;
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);
    k8s::apply(
        admin,
        scaled_object(
            &ns,
            "worker",
            "worker",
            json!({"minReplicaCount": 1, "maxReplicaCount": 10, "cooldownPeriod": 10,
                "pollingInterval": 1, "fallback": {"failureThreshold": 2, "replicas": 3},
                "triggers": [kafka_trigger(&common::kafka::bootstrap(), &group, &topic)]}),
        ),
    )
    .await;
    wait_hpa(&hpas, "spillway-worker", Duration::from_secs(30)).await;
    wait_condition(&sos, "worker", "Ready", "True", Duration::from_secs(30)).await;
    wait_condition(&sos, "worker", "Active", "True", Duration::from_secs(30)).await;
    // Several HPA syncs on the real metric: it stays at 1.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(replicas(&deployments, "worker").await, 1);
    assert_ne!(
        condition(&sos, "worker", "Fallback")
            .await
            .map(|c| c.status)
            .as_deref(),
        Some("True"),
        "no fallback while Kafka answers"
    );

    // Timed from the start of the stop: the script waits for the broker's ports to close, and
    // polls fail from the moment it stops answering.
    let stopping = Instant::now();
    let outage = KafkaOutage::begin().await;
    let stop_took = stopping.elapsed();
    let fallback =
        wait_condition(&sos, "worker", "Fallback", "True", Duration::from_secs(60)).await;
    let to_condition = stopping.elapsed();
    wait_replicas(
        &deployments,
        "worker",
        "to reach the fallback's 3 replicas",
        Duration::from_secs(90),
        |r| r == 3,
    )
    .await;
    let to_fallback = stopping.elapsed();
    println!(
        "Kafka stop (script took {}) -> Fallback=True after {} ({}: {}), 3 replicas after {}",
        secs(stop_took),
        secs(to_condition),
        fallback.reason,
        fallback.message,
        secs(to_fallback)
    );
    assert!(!fallback.reason.is_empty(), "{fallback:?}");
    let message = fallback.message.to_lowercase();
    assert!(
        message.contains("kafka") || message.contains("s0-") || message.contains("19092"),
        "the Fallback condition must name the failing trigger: {fallback:?}"
    );
    if let Some(status) = sos.get("worker").await.ok().and_then(|so| so.status) {
        println!("trigger status on fallback: {:?}", status.triggers.first());
    }
    // It settles there.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        replicas(&deployments, "worker").await,
        3,
        "fallback replicas must hold while Kafka is down ({})",
        recorder.describe()
    );

    let restarting = Instant::now();
    outage.end().await;
    let restarted = restarting.elapsed();
    wait_condition(&sos, "worker", "Fallback", "False", Duration::from_secs(90)).await;
    let recovered = restarting.elapsed();
    wait_replicas(
        &deployments,
        "worker",
        "to return to 1 replica for the lag of 5",
        Duration::from_secs(90),
        |r| r == 1,
    )
    .await;
    println!(
        "Kafka started again in {}; Fallback=False {} after the restart began, 1 replica after {}",
        secs(restarted),
        secs(recovered),
        secs(restarting.elapsed())
    );
    recorder.catch_up().await;
    println!(
        "replicas over {}: {}",
        secs(recorder.elapsed()),
        recorder.describe()
    );
    assert!(
        recorder.lowest().is_some_and(|low| low >= 1),
        "a failing broker must never give 0 replicas: {}",
        recorder.describe()
    );

    delete_scaled_object(&sos, "worker").await;
    common::kafka::delete_topic(&topic).await;
    delete_lease(admin, &controller.lease_name).await;
}

#[tokio::test]
async fn an_unreachable_broker_puts_the_target_on_fallback_replicas() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-unreachable").await;
    let deployments = deployment(admin, &ns, "worker", 1).await;
    let controller = start_controller(&cluster).await;
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let recorder = ReplicaRecorder::start(deployments.clone(), "worker");
    let created = Instant::now();
    k8s::apply(
        admin,
        scaled_object(
            &ns,
            "worker",
            "worker",
            json!({"minReplicaCount": 1, "maxReplicaCount": 10, "pollingInterval": 1,
                "fallback": {"failureThreshold": 2, "replicas": 3},
                "triggers": [kafka_trigger("127.0.0.1:1", "nobody", "nothing")]}),
        ),
    )
    .await;
    let fallback =
        wait_condition(&sos, "worker", "Fallback", "True", Duration::from_secs(60)).await;
    let to_condition = created.elapsed();
    wait_replicas(
        &deployments,
        "worker",
        "to reach the fallback's 3 replicas",
        Duration::from_secs(90),
        |r| r == 3,
    )
    .await;
    println!(
        "broker 127.0.0.1:1 -> Fallback=True after {} ({}: {}), 3 replicas after {}",
        secs(to_condition),
        fallback.reason,
        fallback.message,
        secs(created.elapsed())
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(replicas(&deployments, "worker").await, 3);
    recorder.catch_up().await;
    assert!(
        recorder.lowest().is_some_and(|low| low >= 1),
        "an unreachable broker must never give 0 replicas: {}",
        recorder.describe()
    );
    delete_scaled_object(&sos, "worker").await;
    delete_lease(admin, &controller.lease_name).await;
}

#[tokio::test]
async fn pausing_holds_the_replicas_and_removes_the_hpa_until_unpaused() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-pause").await;
    // 30 behind: 3 replicas.
    let (topic, group) = kafka_backlog(&[10, 10, 10]).await;
    let deployments = deployment(admin, &ns, "worker", 1).await;
    let controller = start_controller(&cluster).await;
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);
    let bootstrap = common::kafka::bootstrap();
    let worker = |pause: Value| {
        let mut spec = json!({"minReplicaCount": 1, "maxReplicaCount": 10, "pollingInterval": 1,
            "triggers": [kafka_trigger(&bootstrap, &group, &topic)]});
        for (key, value) in pause.as_object().unwrap() {
            spec[key] = value.clone();
        }
        scaled_object(&ns, "worker", "worker", spec)
    };

    k8s::apply(admin, worker(json!({}))).await;
    wait_hpa(&hpas, "spillway-worker", Duration::from_secs(30)).await;
    wait_replicas(
        &deployments,
        "worker",
        "to reach ceil(30/10) = 3 replicas",
        Duration::from_secs(120),
        |r| r == 3,
    )
    .await;

    // paused: the HPA goes, the replicas stay while the backlog doubles.
    k8s::apply(admin, worker(json!({"paused": true}))).await;
    let paused = Instant::now();
    wait_hpa_gone(&hpas, "spillway-worker", Duration::from_secs(30)).await;
    wait_condition(&sos, "worker", "Paused", "True", Duration::from_secs(30)).await;
    println!(
        "paused: true -> HPA gone and Paused=True after {}",
        secs(paused.elapsed())
    );
    let recorder = ReplicaRecorder::start(deployments.clone(), "worker");
    common::kafka::produce(&topic, &[10, 10, 10], Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        replicas(&deployments, "worker").await,
        3,
        "paused: the replicas must stay while the backlog changes ({})",
        recorder.describe()
    );
    assert!(matches!(hpas.get_opt("spillway-worker").await, Ok(None)));

    // pausedReplicas pauses on its own and holds the target at that count.
    k8s::apply(admin, worker(json!({"pausedReplicas": 2}))).await;
    let held = Instant::now();
    wait_replicas(
        &deployments,
        "worker",
        "to be set to pausedReplicas 2",
        Duration::from_secs(30),
        |r| r == 2,
    )
    .await;
    println!(
        "pausedReplicas: 2 -> 2 replicas after {}",
        secs(held.elapsed())
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        replicas(&deployments, "worker").await,
        2,
        "pausedReplicas must hold ({})",
        recorder.describe()
    );
    assert!(matches!(hpas.get_opt("spillway-worker").await, Ok(None)));
    assert_eq!(
        condition(&sos, "worker", "Paused").await.map(|c| c.status),
        Some("True".to_owned())
    );

    // Unpaused: the HPA is back and scales on the doubled backlog.
    k8s::apply(admin, worker(json!({}))).await;
    let resumed = Instant::now();
    wait_hpa(&hpas, "spillway-worker", Duration::from_secs(30)).await;
    wait_condition(&sos, "worker", "Paused", "False", Duration::from_secs(30)).await;
    wait_replicas(
        &deployments,
        "worker",
        "to reach ceil(60/10) = 6 replicas after unpausing",
        Duration::from_secs(120),
        |r| r == 6,
    )
    .await;
    recorder.catch_up().await;
    println!(
        "unpaused -> 6 replicas after {}; replicas since the pause: {}",
        secs(resumed.elapsed()),
        recorder.describe()
    );

    delete_scaled_object(&sos, "worker").await;
    common::kafka::delete_topic(&topic).await;
    delete_lease(admin, &controller.lease_name).await;
}

#[tokio::test]
async fn invalid_scaled_objects_are_refused_by_the_api_server() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-invalid").await;
    let kafka = kafka_trigger("127.0.0.1:19092", "group", "topic");
    let mut named_kafka = kafka.clone();
    named_kafka["name"] = json!("lag");
    let cron =
        json!({"timezone": "UTC", "start": "0 0 * * *", "end": "0 1 * * *", "desiredReplicas": 2});

    // The schema's CEL rules and enums: 422 Invalid, naming the rule.
    let cel_cases = [
        (
            "min-above-max",
            json!({"minReplicaCount": 5, "maxReplicaCount": 2, "triggers": [kafka]}),
            "minReplicaCount must not be above maxReplicaCount",
        ),
        (
            "two-brokers",
            json!({"triggers": [{"kafka": kafka["kafka"], "cron": cron}]}),
            "a trigger names exactly one of kafka, rabbitmq, natsJetStream, prometheus, cron",
        ),
        (
            "idle-not-below-min",
            json!({"minReplicaCount": 1, "idleReplicaCount": 1, "triggers": [kafka]}),
            "idleReplicaCount must be less than minReplicaCount",
        ),
        // scalingModifiers: the relations the schema can check (the formula itself is the
        // webhook's and the controller's to compile).
        (
            "fallback-scaling-modifiers",
            json!({"fallback": {"failureThreshold": 3, "replicas": 2, "behavior": "scalingModifiers"},
                "triggers": [kafka]}),
            "fallback.behavior scalingModifiers needs advanced.scalingModifiers",
        ),
        (
            "scaling-modifiers-unnamed",
            json!({"advanced": {"scalingModifiers": {"formula": "1", "target": 1}},
                "triggers": [kafka]}),
            "advanced.scalingModifiers.formula names triggers: give a trigger other than cpu and memory a name",
        ),
        (
            "scaling-modifiers-target-0",
            json!({"advanced": {"scalingModifiers": {"formula": "lag", "target": 0}},
                "triggers": [named_kafka]}),
            "target must be above 0",
        ),
    ];
    for (name, spec, rule) in cel_cases {
        match k8s::try_apply(admin, scaled_object(&ns, name, "worker", spec)).await {
            Err(kube::Error::Api(status)) => {
                println!(
                    "{name}: {} {}: {}",
                    status.code, status.reason, status.message
                );
                assert_eq!(status.code, 422, "{name}: {status:?}");
                assert_eq!(status.reason, "Invalid", "{name}: {status:?}");
                assert!(status.message.contains(rule), "{name}: {status:?}");
            }
            other => panic!("{name} must be refused with 422, got {other:?}"),
        }
    }

    // A misspelt field. Server-side apply refuses fields the schema does not declare, though
    // not as 422: kube-apiserver reports the failed typed conversion of the patch as 500.
    let mut misspelt = kafka.clone();
    misspelt["kafka"]["lagThreshhold"] = json!(5);
    let unknown = scaled_object(
        &ns,
        "unknown-field",
        "worker",
        json!({"triggers": [misspelt]}),
    );
    match k8s::try_apply(admin, unknown.clone()).await {
        Err(kube::Error::Api(status)) => {
            println!(
                "unknown-field (apply): {} {}: {}",
                status.code, status.reason, status.message
            );
            assert!(
                matches!(status.code, 400 | 422 | 500),
                "unknown-field: {status:?}"
            );
            assert!(
                status.message.contains("lagThreshhold"),
                "the refusal must name the field: {status:?}"
            );
        }
        other => panic!("an unknown field must be refused, got {other:?}"),
    }
    // A create with strict field validation (kubectl create's default) names it as well.
    let request = axum::http::Request::post(format!(
        "/apis/spillway.dev/v1alpha1/namespaces/{ns}/scaledobjects?fieldValidation=Strict"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&unknown).unwrap())
    .unwrap();
    match admin.request_text(request).await {
        Err(kube::Error::Api(status)) => {
            println!(
                "unknown-field (strict create): {} {}: {}",
                status.code, status.reason, status.message
            );
            assert!(
                matches!(status.code, 400 | 422),
                "unknown-field: {status:?}"
            );
            assert!(
                status.message.contains("lagThreshhold"),
                "the refusal must name the field: {status:?}"
            );
        }
        other => panic!("an unknown field must be refused, got {other:?}"),
    }

    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let stored = sos.list(&ListParams::default()).await.expect("list");
    assert!(
        stored.items.is_empty(),
        "nothing may be created: {:?}",
        stored
            .items
            .iter()
            .map(|so| so.metadata.name.clone())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_killed_leader_is_replaced_within_the_lease_and_its_successor_reconciles() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let lease = common::unique_name("e2e-ctl-lease");
    let timings = LeaseTimings {
        lease_duration: 3,
        renew_deadline: 2,
        retry_period: 1,
    };
    // The first to start leads, on a port the aggregator does not use; the follower is the
    // registered one, so the successor also serves the HPAs through the aggregator.
    let mut leader = SpillwayController::start(
        &cluster.kubeconfig,
        k8s::free_port(),
        &lease,
        &format!("{lease}-b"),
        Some(timings),
    )
    .await;
    wait_holder(admin, &lease, &leader.identity, Duration::from_secs(20)).await;
    let follower = SpillwayController::start(
        &cluster.kubeconfig,
        k8s::spillway_port(),
        &lease,
        &format!("{lease}-a"),
        Some(timings),
    )
    .await;
    k8s::register_api_service(admin, "external.metrics.k8s.io", "v1beta1").await;
    k8s::wait_available(admin, EXTERNAL, Duration::from_secs(60)).await;
    // Several renewals later the Lease still names the first one only.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let spec = leases(admin)
        .get(&lease)
        .await
        .expect("Lease")
        .spec
        .expect("Lease spec");
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(leader.identity.as_str())
    );
    assert_eq!(spec.lease_duration_seconds, Some(3));

    // Before the kill: the leader reconciles, and both serve the metric (the HPA reads the
    // follower's through the aggregator).
    let ns = k8s::namespace(admin, "e2e-ctl-failover").await;
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);
    let bootstrap = common::kafka::bootstrap();
    let (topic_before, group_before) = kafka_backlog(&[20, 15, 10]).await;
    let deployments = deployment(admin, &ns, "before", 1).await;
    k8s::apply(
        admin,
        scaled_object(
            &ns,
            "before",
            "before",
            json!({"minReplicaCount": 1, "maxReplicaCount": 10, "pollingInterval": 1,
                "triggers": [kafka_trigger(&bootstrap, &group_before, &topic_before)]}),
        ),
    )
    .await;
    let hpa = wait_hpa(&hpas, "spillway-before", Duration::from_secs(30)).await;
    wait_replicas(
        &deployments,
        "before",
        "to reach ceil(45/10) = 5 replicas",
        Duration::from_secs(120),
        |r| r == 5,
    )
    .await;
    let metric = hpa
        .spec
        .and_then(|s| s.metrics)
        .and_then(|m| m.into_iter().next())
        .and_then(|m| m.external)
        .map(|e| e.metric.name)
        .expect("the HPA's external metric");
    let direct = k8s::direct_client(Some("admin"));
    for instance in [&leader, &follower] {
        let url = format!(
            "https://127.0.0.1:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector={LABEL}%3Dbefore",
            instance.port
        );
        let direct = &direct;
        common::eventually(
            &format!("{} to serve {metric} = 45", instance.identity),
            Duration::from_secs(30),
            || async {
                let list: Value = direct.get(&url).send().await.ok()?.json().await.ok()?;
                (list["items"][0]["value"] == "45").then_some(())
            },
        )
        .await;
    }

    // A crash: the Lease is not released, the follower waits it out.
    let killed = Instant::now();
    leader.kill();
    wait_holder(admin, &lease, &follower.identity, Duration::from_secs(20)).await;
    let handover = killed.elapsed();
    println!(
        "leader SIGKILLed -> Lease held by the other instance after {} (lease 3 s, renew 2 s, retry 1 s)",
        secs(handover)
    );
    assert!(
        handover < Duration::from_secs(3 + 5),
        "handover must take at most the lease + 5 s: {}",
        secs(handover)
    );
    let spec = leases(admin)
        .get(&lease)
        .await
        .expect("Lease")
        .spec
        .expect("spec");
    println!(
        "Lease after the handover: transitions {:?}",
        spec.lease_transitions
    );

    // The successor acts: a ScaledObject created after the kill gets its HPA and replicas.
    let (topic_after, group_after) = kafka_backlog(&[10, 10, 10]).await;
    let after = deployment(admin, &ns, "after", 0).await;
    let created = Instant::now();
    k8s::apply(
        admin,
        scaled_object(
            &ns,
            "after",
            "after",
            json!({"minReplicaCount": 0, "maxReplicaCount": 10, "pollingInterval": 1,
                "triggers": [kafka_trigger(&bootstrap, &group_after, &topic_after)]}),
        ),
    )
    .await;
    wait_hpa(&hpas, "spillway-after", Duration::from_secs(30)).await;
    let to_hpa = created.elapsed();
    wait_replicas(
        &after,
        "after",
        "to reach ceil(30/10) = 3 replicas under the new leader",
        Duration::from_secs(120),
        |r| r == 3,
    )
    .await;
    println!(
        "new ScaledObject under the new leader: HPA after {}, 3 replicas after {} ({} after the kill)",
        secs(to_hpa),
        secs(created.elapsed()),
        secs(killed.elapsed())
    );

    delete_scaled_object(&sos, "before").await;
    delete_scaled_object(&sos, "after").await;
    common::kafka::delete_topic(&topic_before).await;
    common::kafka::delete_topic(&topic_after).await;
    drop(follower);
    delete_lease(admin, &lease).await;
}

#[tokio::test]
async fn a_scaled_object_whose_broker_hangs_never_moves_another_ones_hpa_or_replicas() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-hung").await;
    // 45 records behind: ceil(45 / 10) = 5 replicas for the steady consumer.
    let (topic, group) = kafka_backlog(&[20, 15, 10]).await;
    let steady = deployment(admin, &ns, "steady", 1).await;
    let hung = deployment(admin, &ns, "hung", 1).await;
    let (address, tarpit_task) = common::tarpit().await;
    let controller = start_controller(&cluster).await;
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    k8s::apply(
        admin,
        scaled_object(
            &ns,
            "steady",
            "steady",
            json!({"minReplicaCount": 1, "maxReplicaCount": 10, "pollingInterval": 1,
                "triggers": [kafka_trigger(&common::kafka::bootstrap(), &group, &topic)]}),
        ),
    )
    .await;
    wait_replicas(
        &steady,
        "steady",
        "to reach ceil(45/10) = 5 replicas",
        Duration::from_secs(120),
        |r| r == 5,
    )
    .await;

    // Now a ScaledObject whose Prometheus accepts and never answers, with a 60 s timeout.
    let recorder = ReplicaRecorder::start(steady.clone(), "steady");
    let hung_recorder = ReplicaRecorder::start(hung.clone(), "hung");
    let created = Instant::now();
    k8s::apply(
        admin,
        scaled_object(
            &ns,
            "hung",
            "hung",
            json!({"minReplicaCount": 0, "maxReplicaCount": 10, "pollingInterval": 1,
                "cooldownPeriod": 5, "fallback": {"failureThreshold": 2, "replicas": 3},
                "triggers": [{"prometheus": {"serverAddress": format!("http://{address}"),
                    "query": "up", "threshold": 1, "timeout": 60000}}]}),
        ),
    )
    .await;
    // Stale after 15 s, fallback after more than two stale marks (KEDA's rule): 3 replicas,
    // never 0.
    let fallback = wait_condition(&sos, "hung", "Fallback", "True", Duration::from_secs(60)).await;
    let to_fallback = created.elapsed();
    wait_replicas(
        &hung,
        "hung",
        "to reach the fallback's 3 replicas",
        Duration::from_secs(60),
        |r| r == 3,
    )
    .await;
    println!(
        "hung broker -> Fallback=True after {} ({}: {})",
        secs(to_fallback),
        fallback.reason,
        fallback.message
    );
    assert!(
        fallback.message.contains("no reading newer than"),
        "{}",
        fallback.message
    );
    // The steady consumer's metric stays fresh meanwhile.
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/s0-kafka-{topic}?labelSelector={LABEL}%3Dsteady"
    );
    let (code, body) = k8s::get_raw(admin, &path).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""value":"45""#), "{body}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    recorder.catch_up().await;
    hung_recorder.catch_up().await;
    // One entry, at 5: the count the watch saw first and never another.
    assert!(
        recorder.lowest() == Some(5) && !recorder.describe().contains(','),
        "the steady consumer never moves while another object's broker hangs: {}",
        recorder.describe()
    );
    assert!(
        hung_recorder.lowest().is_some_and(|low| low >= 1),
        "a hung broker never scales to 0: {}",
        hung_recorder.describe()
    );
    assert_eq!(replicas(&steady, "steady").await, 5);
    delete_scaled_object(&sos, "hung").await;
    delete_scaled_object(&sos, "steady").await;
    delete_lease(admin, &controller.lease_name).await;
    tarpit_task.abort();
}

#[tokio::test]
async fn editing_a_triggers_queue_never_serves_the_old_queues_value() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-edit").await;
    let (_old_connection, _old_channel, old_queue) =
        common::rabbitmq::queue_with_messages("edit-old", 40).await;
    let (_new_connection, _new_channel, new_queue) =
        common::rabbitmq::queue_with_messages("edit-new", 7).await;
    let amqp_port = common::rabbitmq::amqp_port();
    deployment(admin, &ns, "worker", 1).await;
    let controller = start_controller(&cluster).await;
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let spec = |queue: &str| {
        json!({"minReplicaCount": 1, "maxReplicaCount": 10, "pollingInterval": 1,
            "triggers": [{"rabbitmq": {"host": format!("amqp://127.0.0.1:{amqp_port}/"),
                "queueName": queue, "value": 10}}]})
    };
    let metric_path = |queue: &str| {
        format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/s0-rabbitmq-{}?labelSelector={LABEL}%3Dworker",
            queue.to_lowercase().replace(['.', '_'], "-")
        )
    };
    k8s::apply(
        admin,
        scaled_object(&ns, "worker", "worker", spec(&old_queue)),
    )
    .await;
    common::eventually(
        "the old queue's 40 messages served",
        Duration::from_secs(60),
        || async {
            let (code, body) = k8s::get_raw(admin, &metric_path(&old_queue)).await;
            (code == 200 && body.contains(r#""value":"40""#)).then_some(())
        },
    )
    .await;

    // Edit the queue and read the new metric at once and often: never 40.
    k8s::apply(
        admin,
        scaled_object(&ns, "worker", "worker", spec(&new_queue)),
    )
    .await;
    let edited = Instant::now();
    let mut answers = Vec::new();
    while edited.elapsed() < Duration::from_secs(8) {
        let (code, body) = k8s::get_raw(admin, &metric_path(&new_queue)).await;
        if code == 200 {
            assert!(
                body.contains(r#""value":"7""#),
                "the new queue's metric served another value {:.1} s after the edit: {body}",
                edited.elapsed().as_secs_f64()
            );
        }
        answers.push((edited.elapsed().as_secs_f64(), code));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_value = answers
        .iter()
        .find(|(_, code)| *code == 200)
        .map(|(at, _)| *at);
    assert!(
        answers.iter().filter(|(_, c)| *c == 200).count() >= 10,
        "the new queue is served soon after the edit: {answers:?}"
    );
    let codes: std::collections::BTreeMap<u16, usize> =
        answers
            .iter()
            .fold(Default::default(), |mut count, (_, code)| {
                *count.entry(*code).or_default() += 1;
                count
            });
    println!(
        "queue edit: answers in the 8 s after it by code {codes:?}, the first value (7, never 40) after {:.1} s",
        first_value.unwrap_or_default()
    );
    delete_scaled_object(&sos, "worker").await;
    delete_lease(admin, &controller.lease_name).await;
}

#[tokio::test]
async fn a_scaled_object_takes_over_an_hpa_it_does_not_own_only_when_handed_over() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-hpa-owner").await;
    let deployments = deployment(admin, &ns, "web", 2).await;
    // A team's own HPA, which the ScaledObject below names as its HPA.
    let victim = || {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "victim", "namespace": ns},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2, "maxReplicas": 5,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 50}}}]}})
    };
    k8s::apply(admin, victim()).await;
    let controller = start_controller(&cluster).await;
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);
    k8s::apply(
        admin,
        scaled_object(
            &ns,
            "takeover",
            "web",
            json!({"minReplicaCount": 1, "maxReplicaCount": 1, "pollingInterval": 1,
                "advanced": {"horizontalPodAutoscalerConfig": {"name": "victim"}},
                "triggers": [{"cron": {"timezone": "UTC", "start": "0 6 * * *", "end": "0 20 * * *", "desiredReplicas": 1}}]}),
        ),
    )
    .await;

    let refused = wait_condition(&sos, "takeover", "Ready", "False", Duration::from_secs(30)).await;
    println!("refused: {}: {}", refused.reason, refused.message);
    assert_eq!(refused.reason, "HPANotOwned");
    assert!(
        refused
            .message
            .contains("annotate it spillway.dev/transfer-to=takeover"),
        "{}",
        refused.message
    );
    // Several reconciles later, the HPA and the target are as their team left them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let untouched = hpas.get("victim").await.unwrap();
    assert_eq!(untouched.spec.as_ref().unwrap().max_replicas, 5);
    assert!(
        untouched
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    assert_eq!(replicas(&deployments, "web").await, 2);
    let events = events_about(admin, &ns, "takeover").await;
    assert!(
        events.iter().any(|e| e.starts_with("HPANotOwned:")),
        "{events:?}"
    );

    // Handed over by someone who may edit the HPA: adopted.
    let mut handed_over = victim();
    handed_over["metadata"]["annotations"] = json!({"spillway.dev/transfer-to": "takeover"});
    k8s::apply(admin, handed_over).await;
    wait_condition(&sos, "takeover", "Ready", "True", Duration::from_secs(30)).await;
    let uid = sos.get("takeover").await.unwrap().metadata.uid.unwrap();
    let adopted = common::eventually("the HPA to be adopted", Duration::from_secs(30), || async {
        let hpa = hpas.get("victim").await.ok()?;
        hpa.metadata
            .owner_references
            .as_ref()?
            .iter()
            .any(|o| o.uid == uid)
            .then_some(hpa)
    })
    .await;
    assert_eq!(adopted.spec.unwrap().max_replicas, 1);
    let events = events_about(admin, &ns, "takeover").await;
    assert!(
        events.iter().any(|e| e.starts_with("HPAAdopted:")),
        "{events:?}"
    );
    delete_scaled_object(&sos, "takeover").await;
    drop(controller);
}

/// The normal first deploy: a consumer Deployment at 0 whose consumer group has never existed,
/// on a topic that already holds records. The group behaves as one without commits (KEDA's
/// rule), so the target starts from zero and reaches the HPA's count with no fallback set.
#[tokio::test]
async fn a_brand_new_consumer_group_scales_its_target_from_zero_without_fallback() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-newgroup").await;
    // 45 records and a group nobody ever used: under `earliest` the whole backlog is lag.
    let topic = common::kafka::create_topic(3).await;
    common::kafka::produce(&topic, &[20, 15, 10], Duration::ZERO).await;
    let group = common::unique_name("e2e-ctl-never-seen");
    let deployments = deployment(admin, &ns, "first-consumer", 0).await;
    let controller = start_controller(&cluster).await;
    let recorder = ReplicaRecorder::start(deployments.clone(), "first-consumer");
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);

    let mut trigger = kafka_trigger(&common::kafka::bootstrap(), &group, &topic);
    trigger["kafka"]["offsetResetPolicy"] = json!("earliest");
    let created = Instant::now();
    k8s::apply(
        admin,
        scaled_object(
            &ns,
            "first",
            "first-consumer",
            json!({"minReplicaCount": 0, "maxReplicaCount": 10, "cooldownPeriod": 300,
                "pollingInterval": 1, "triggers": [trigger]}),
        ),
    )
    .await;
    wait_replicas(
        &deployments,
        "first-consumer",
        "to leave 0 replicas for a group that never committed",
        Duration::from_secs(60),
        |r| r >= 1,
    )
    .await;
    let activated = created.elapsed();
    wait_replicas(
        &deployments,
        "first-consumer",
        "to reach ceil(45/10) = 5 replicas",
        Duration::from_secs(120),
        |r| r == 5,
    )
    .await;
    println!(
        "new group over a backlog of 45 -> replicas >= 1 after {}, 5 after {}",
        secs(activated),
        secs(created.elapsed())
    );
    let status = sos
        .get("first")
        .await
        .expect("ScaledObject first")
        .status
        .expect("status");
    let trigger = status.triggers.first().expect("trigger status");
    assert!(
        trigger.last_error.is_none() && trigger.consecutive_failures.unwrap_or(0) == 0,
        "a group without commits is not a failure: {trigger:?}"
    );
    assert_ne!(
        condition(&sos, "first", "Fallback").await.map(|c| c.status),
        Some("True".to_owned()),
        "no fallback was set, none may engage"
    );
    recorder.catch_up().await;
    println!("replicas: {}", recorder.describe());

    let lease = controller.lease_name.clone();
    drop(controller);
    delete_scaled_object(&sos, "first").await;
    common::kafka::delete_topic(&topic).await;
    delete_lease(admin, &lease).await;
}

/// Marks every Pod of the namespace Running and Ready, as a kubelet would: the HPA counts ready
/// Pods for a Value target, and the harness has no kubelet. Runs until dropped.
struct PodsReady(JoinHandle<()>);

impl PodsReady {
    fn start(admin: &kube::Client, ns: &str) -> Self {
        use k8s_openapi::api::core::v1::Pod;
        use kube::api::{Patch, PatchParams};
        let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
        Self(tokio::spawn(async move {
            loop {
                for pod in pods
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                {
                    let ready = pod.status.as_ref().is_some_and(|s| {
                        s.phase.as_deref() == Some("Running")
                            && s.conditions
                                .iter()
                                .flatten()
                                .any(|c| c.type_ == "Ready" && c.status == "True")
                    });
                    let Some(name) = pod.metadata.name.as_deref() else {
                        continue;
                    };
                    if !ready {
                        let status = json!({"status": {"phase": "Running", "conditions": [
                            {"type": "Ready", "status": "True"}]}});
                        let _ = pods
                            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }))
    }
}

impl Drop for PodsReady {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test]
async fn keda_fields_reach_the_hpa_a_value_target_a_named_trigger_labels_and_a_scale_in_pause() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-keda").await;
    // 30 behind, target 10 as a Value: the HPA multiplies the ready replicas by 30 / 10 = 3 at
    // each sync (1 -> 3 -> 9), up to maxReplicaCount 8; as an AverageValue it would stop at 3.
    let (topic, group) = kafka_backlog(&[10, 10, 10]).await;
    let deployments = deployment(admin, &ns, "worker", 1).await;
    let _ready = PodsReady::start(admin, &ns);
    let controller = start_controller(&cluster).await;
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);
    let bootstrap = common::kafka::bootstrap();
    let worker = |extra: Value| {
        let mut trigger = kafka_trigger(&bootstrap, &group, &topic);
        trigger["name"] = "lag".into();
        trigger["metricType"] = "Value".into();
        let mut spec = json!({"minReplicaCount": 1, "maxReplicaCount": 8, "pollingInterval": 1,
            "cooldownPeriod": 5, "triggers": [trigger]});
        for (key, value) in extra.as_object().unwrap() {
            spec[key] = value.clone();
        }
        let mut so = scaled_object(&ns, "worker", "worker", spec);
        so["metadata"]["labels"] = json!({"team": "payments", "build": "4711"});
        so["metadata"]["annotations"] = json!({"spillway.dev/hpa-excluded-labels": "build"});
        so
    };

    let created = Instant::now();
    k8s::apply(admin, worker(json!({}))).await;
    let hpa = wait_hpa(&hpas, "spillway-worker", Duration::from_secs(30)).await;
    let labels = hpa.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("team").map(String::as_str),
        Some("payments"),
        "{labels:?}"
    );
    assert!(
        !labels.contains_key("build"),
        "an excluded label reached the HPA: {labels:?}"
    );
    let target = &hpa.spec.as_ref().unwrap().metrics.as_ref().unwrap()[0]
        .external
        .as_ref()
        .unwrap()
        .target;
    assert_eq!(
        (
            target.type_.as_str(),
            target.value.as_ref().map(|q| q.0.as_str())
        ),
        ("Value", Some("10"))
    );
    wait_replicas(
        &deployments,
        "worker",
        "to reach maxReplicaCount 8 on a Value target (30 / 10 times the ready replicas)",
        Duration::from_secs(120),
        |r| r == 8,
    )
    .await;
    println!(
        "Value target, value 30, target 10: 1 -> 8 replicas (max) after {}",
        secs(created.elapsed())
    );
    let status = sos.get("worker").await.unwrap().status.unwrap_or_default();
    assert_eq!(status.triggers[0].name.as_deref(), Some("lag"));
    assert_eq!(
        status.triggers[0].value.as_ref().map(|q| q.0.as_str()),
        Some("30")
    );

    // pausedScaleIn: the backlog is consumed, the HPA's scale-down is disabled and the target
    // stays at 8 past the downscale stabilization (10 s) and the cooldown.
    k8s::apply(admin, worker(json!({"pausedScaleIn": true}))).await;
    let paused = wait_condition(&sos, "worker", "Paused", "True", Duration::from_secs(30)).await;
    assert_eq!(paused.reason, "ScaleInPaused");
    common::eventually(
        "the HPA's scale-down to be disabled",
        Duration::from_secs(30),
        || async {
            let hpa = hpas.get("spillway-worker").await.ok()?;
            let policy = hpa.spec?.behavior?.scale_down?.select_policy?;
            (policy == "Disabled").then_some(())
        },
    )
    .await;
    commit(&group, &topic, &[10, 10, 10]);
    let recorder = ReplicaRecorder::start(deployments.clone(), "worker");
    common::eventually("the trigger to read 0", Duration::from_secs(30), || async {
        let status = sos.get("worker").await.ok()?.status?;
        (status.triggers.first()?.value.as_ref()?.0 == "0").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    recorder.catch_up().await;
    assert_eq!(
        replicas(&deployments, "worker").await,
        8,
        "pausedScaleIn must hold the replicas with no backlog ({})",
        recorder.describe()
    );

    // Unpaused: down to minReplicaCount 1.
    k8s::apply(admin, worker(json!({}))).await;
    let resumed = Instant::now();
    wait_condition(&sos, "worker", "Paused", "False", Duration::from_secs(30)).await;
    wait_replicas(
        &deployments,
        "worker",
        "to scale in to minReplicaCount 1 once pausedScaleIn is gone",
        Duration::from_secs(120),
        |r| r == 1,
    )
    .await;
    println!(
        "pausedScaleIn held 8 replicas for 20 s at value 0 ({}); unpaused -> 1 after {}",
        recorder.describe(),
        secs(resumed.elapsed())
    );

    delete_scaled_object(&sos, "worker").await;
    common::kafka::delete_topic(&topic).await;
    delete_lease(admin, &controller.lease_name).await;
}

/// Issue 17: KEDA's cpu and memory triggers become Resource and ContainerResource metrics on the
/// HPA, which the real API server accepts; with no resource metrics in this cluster (no
/// metrics-server) the HPA still scales up on the Kafka metric beside them, as it does under KEDA.
#[tokio::test]
async fn cpu_and_memory_triggers_are_resource_metrics_beside_the_broker_s_on_the_hpa() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-cpu").await;
    // 30 behind at a target of 10 per replica: 3 replicas.
    let (topic, group) = kafka_backlog(&[10, 10, 10]).await;
    let deployments = deployment(admin, &ns, "worker", 1).await;
    let _ready = PodsReady::start(admin, &ns);
    let _controller = start_controller(&cluster).await;
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);
    let bootstrap = common::kafka::bootstrap();
    let spec = json!({"minReplicaCount": 1, "maxReplicaCount": 8, "pollingInterval": 1,
    "triggers": [
        {"cpu": {"utilization": 50}},
        kafka_trigger(&bootstrap, &group, &topic),
        {"memory": {"averageValue": "256Mi", "containerName": "worker"}},
    ]});
    let created = Instant::now();
    k8s::apply(admin, scaled_object(&ns, "worker", "worker", spec)).await;
    let hpa = wait_hpa(&hpas, "spillway-worker", Duration::from_secs(30)).await;
    let metrics = serde_json::to_value(hpa.spec.unwrap().metrics.unwrap()).unwrap();
    assert_eq!(
        metrics[0],
        json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}})
    );
    assert_eq!(metrics[1]["type"], "External");
    assert_eq!(
        metrics[2],
        json!({"type": "ContainerResource", "containerResource": {"name": "memory", "container": "worker", "target": {"type": "AverageValue", "averageValue": "256Mi"}}})
    );
    wait_replicas(
        &deployments,
        "worker",
        "to reach 3 on the Kafka metric while cpu and memory have no readings",
        Duration::from_secs(120),
        |r| r == 3,
    )
    .await;
    println!(
        "cpu, kafka and memory triggers: 1 -> 3 replicas on the Kafka metric after {}",
        secs(created.elapsed())
    );
    // Only the Kafka trigger is spillway's: one trigger status, at its own index.
    let status = sos.get("worker").await.unwrap().status.unwrap_or_default();
    let indices: Vec<i32> = status.triggers.iter().map(|t| t.index).collect();
    assert_eq!(indices, [1], "{:?}", status.triggers);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("True"));

    // Only cpu and memory at minReplicaCount 0: refused by the API server, as KEDA's webhook does.
    let refused = k8s::try_apply(
        admin,
        scaled_object(
            &ns,
            "cpu-only",
            "worker",
            json!({"minReplicaCount": 0,
            "triggers": [{"cpu": {"utilization": 50}}]}),
        ),
    )
    .await;
    match refused {
        Err(kube::Error::Api(status)) => assert!(
            status
                .message
                .contains("minReplicaCount 0 needs a trigger other than cpu and memory"),
            "{status:?}"
        ),
        other => panic!("a cpu-only object at minReplicaCount 0 was not refused: {other:?}"),
    }
}

/// KEDA's own documented example of a RabbitMQ ScaledObject with a TriggerAuthentication
/// (`tests/fixtures/keda/rabbitmq-http-host.yaml`, its placeholders filled: the host URL in the
/// Secret, a queue of this run), through `spillway import-keda` and onto the control plane: the
/// imported TriggerAuthentication supplies the host from the Secret, and the HPA scales the
/// Deployment from the real queue's depth.
#[tokio::test]
async fn keda_s_documented_example_with_a_trigger_authentication_imports_and_scales() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-keda-example").await;
    // 100 messages at KEDA's value 20 per replica: 5 replicas.
    let (_connection, _channel, queue) =
        common::rabbitmq::queue_with_messages("e2e-keda-example", 100).await;
    let host = common::endpoint("SPILLWAY_RABBITMQ_HTTP");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/keda/rabbitmq-http-host.yaml"
    ))
    .unwrap();
    let filled = example
        .replace("namespace: default", &format!("namespace: {ns}"))
        .replace("queueName: testqueue", &format!("queueName: {queue}"));
    let file = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("keda-example")));
    std::fs::write(&file, &filled).unwrap();
    let imported = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["import-keda", "-f"])
        .arg(&file)
        .output()
        .expect("run spillway import-keda");
    std::fs::remove_file(&file).ok();
    assert!(imported.status.success(), "import-keda: {imported:?}");
    let objects = k8s::yaml_documents(&String::from_utf8(imported.stdout).unwrap(), "import-keda");
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds, ["TriggerAuthentication", "ScaledObject"]);
    // The example's Secret, with the value its placeholder asks for.
    {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&host);
        k8s::apply(
            admin,
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "keda-rabbitmq-secret", "namespace": ns},
                "data": {"host": encoded}}),
        )
        .await;
    }
    let deployments = deployment(admin, &ns, "rabbitmq-deployment", 1).await;
    let _ready = PodsReady::start(admin, &ns);
    let _controller = start_controller(&cluster).await;
    let created = Instant::now();
    for object in objects {
        k8s::apply(admin, object).await;
    }
    wait_replicas(
        &deployments,
        "rabbitmq-deployment",
        "to reach ceil(100 / 20) = 5 on the imported example",
        Duration::from_secs(120),
        |r| r == 5,
    )
    .await;
    println!(
        "KEDA's rabbitmq-http-host example, imported: 1 -> 5 replicas after {}",
        secs(created.elapsed())
    );
}

/// `advanced.scalingModifiers`: the HPA reads one `composite-metric`, the formula over the
/// named Kafka and Prometheus triggers, through the real aggregator, and scales on it; the
/// composite decides activity against `activationTarget`; a formula spillway cannot run is
/// refused in the object's Ready condition, and nothing is registered for it.
#[tokio::test]
async fn scaling_modifiers_scale_on_the_formula_over_named_triggers() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-modifiers").await;
    // Kafka 30 behind and Prometheus 12: alone they ask for 3 and 2 replicas; the formula's
    // 42 at a target of 10 asks for 5.
    let (topic, group) = kafka_backlog(&[10, 10, 10]).await;
    let deployments = deployment(admin, &ns, "worker", 1).await;
    let _ready = PodsReady::start(admin, &ns);
    let _controller = start_controller(&cluster).await;
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);
    let bootstrap = common::kafka::bootstrap();
    let prometheus = common::endpoint("SPILLWAY_PROMETHEUS_URL");
    let mut kafka = kafka_trigger(&bootstrap, &group, &topic);
    kafka["name"] = json!("lag");
    let spec = json!({"minReplicaCount": 1, "maxReplicaCount": 8, "pollingInterval": 1,
    "advanced": {"scalingModifiers": {"formula": "lag + (queued ?? 0)", "target": 10,
        "activationTarget": 41}},
    "triggers": [
        kafka,
        {"name": "queued", "prometheus": {"serverAddress": prometheus, "query": "vector(12)",
            "threshold": 6}},
        {"cpu": {"utilization": 50}},
    ]});
    let created = Instant::now();
    k8s::apply(admin, scaled_object(&ns, "worker", "worker", spec)).await;
    let hpa = wait_hpa(&hpas, "spillway-worker", Duration::from_secs(30)).await;
    let metrics = serde_json::to_value(hpa.spec.unwrap().metrics.unwrap()).unwrap();
    assert_eq!(
        metrics,
        json!([
            {"type": "External", "external": {
                "metric": {"name": "composite-metric", "selector": {"matchLabels": {"scaledobject.spillway.dev/name": "worker"}}},
                "target": {"type": "AverageValue", "averageValue": "10"}}},
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}
        ])
    );
    wait_replicas(
        &deployments,
        "worker",
        "to reach 5 on the composite 42 at a target of 10",
        Duration::from_secs(120),
        |r| r == 5,
    )
    .await;
    println!(
        "scalingModifiers lag + queued = 42: 1 -> 5 replicas after {}",
        secs(created.elapsed())
    );
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/composite-metric?labelSelector={LABEL}%3Dworker"
    );
    let (code, body) = k8s::get_raw(admin, &path).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""value":"42""#), "{body}");
    let (code, body) = k8s::get_raw(admin, "/apis/external.metrics.k8s.io/v1beta1").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""name":"composite-metric""#), "{body}");
    // 42 is above activationTarget 41: the composite, not a trigger, is what is active.
    let active = wait_condition(&sos, "worker", "Active", "True", Duration::from_secs(30)).await;
    assert_eq!(active.reason, "CompositeActive", "{active:?}");
    assert!(active.message.contains("gives 42"), "{}", active.message);

    // A name the formula cannot resolve: refused with the reason, nothing served for it.
    let bad = json!({"minReplicaCount": 1, "maxReplicaCount": 8,
        "advanced": {"scalingModifiers": {"formula": "lag + missing", "target": 10}},
        "triggers": [{"name": "lag", "kafka": {"bootstrapServers": bootstrap,
            "consumerGroup": group, "topic": topic}}]});
    k8s::apply(admin, scaled_object(&ns, "bad-formula", "worker", bad)).await;
    let ready = wait_condition(
        &sos,
        "bad-formula",
        "Ready",
        "False",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(
        ready
            .message
            .contains("spec.advanced.scalingModifiers.formula: unknown name \"missing\""),
        "{}",
        ready.message
    );
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/composite-metric?labelSelector={LABEL}%3Dbad-formula"
    );
    let (code, body) = k8s::get_raw(admin, &path).await;
    assert_eq!(code, 404, "{body}");
}

#[tokio::test]
async fn fallback_behavior_current_replicas_if_higher_keeps_a_higher_count_and_static_goes_to_fallback_replicas()
 {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-fallback-behavior").await;
    // Three targets, each with its own object on an unreachable broker and fallback.replicas
    // 3: static takes 5 to 3, currentReplicasIfHigher keeps 5 (above 3), currentReplicasIfLower
    // keeps 2 (below 3).
    let cases = [
        ("static", "static", 5, 3),
        ("higher", "currentReplicasIfHigher", 5, 5),
        ("lower", "currentReplicasIfLower", 2, 2),
    ];
    let mut recorders = Vec::new();
    for (name, _, start, _) in cases {
        let deployments = deployment(admin, &ns, name, start).await;
        recorders.push(ReplicaRecorder::start(deployments, name));
    }
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let controller = start_controller(&cluster).await;
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let created = Instant::now();
    for (name, behavior, _, _) in cases {
        k8s::apply(
            admin,
            scaled_object(
                &ns,
                name,
                name,
                json!({"minReplicaCount": 1, "maxReplicaCount": 10, "pollingInterval": 1,
                    "fallback": {"failureThreshold": 2, "replicas": 3, "behavior": behavior},
                    "triggers": [kafka_trigger("127.0.0.1:1", "nobody", "nothing")]}),
            ),
        )
        .await;
    }
    let mut conditions = Vec::new();
    for (name, _, _, _) in cases {
        conditions
            .push(wait_condition(&sos, name, "Fallback", "True", Duration::from_secs(60)).await);
    }
    let to_condition = created.elapsed();
    wait_replicas(
        &deployments,
        "static",
        "to reach fallback.replicas 3 (static)",
        Duration::from_secs(90),
        |r| r == 3,
    )
    .await;
    let static_at = created.elapsed();
    // Past the HPA's downscale stabilization (10 s) twice over: the others would have moved.
    tokio::time::sleep(Duration::from_secs(20)).await;
    for ((name, behavior, start, expected), recorder) in cases.iter().zip(&recorders) {
        recorder.catch_up().await;
        assert_eq!(
            replicas(&deployments, name).await,
            *expected,
            "{behavior}: {}\n{}",
            recorder.describe(),
            diagnose(admin, &ns).await
        );
        if name != &"static" {
            assert!(
                recorder.lowest() == Some(*start),
                "{behavior} must hold {start} all along: {}",
                recorder.describe()
            );
        }
        let so = sos.get(name).await.unwrap();
        assert_eq!(
            so.status.as_ref().and_then(|s| s.original_replica_count),
            Some(*start),
            "{behavior}: status.originalReplicaCount"
        );
        assert!(
            so.metadata.finalizers.unwrap_or_default().is_empty(),
            "an object without restoreToOriginalReplicaCount gets no finalizer"
        );
    }
    // The HPAs read a fallback value (not a 503, which would hold too): replicas × target,
    // so each reports an average of exactly the target, 10, at its count.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);
    for (name, behavior, _, _) in cases {
        common::eventually(
            &format!("the HPA of {behavior} to read the fallback value"),
            Duration::from_secs(30),
            || async {
                let hpa = hpas.get(&format!("spillway-{name}")).await.ok()?;
                let metric = hpa.status?.current_metrics?.into_iter().next()?;
                let average = metric.external?.current.average_value?;
                (average.0 == "10").then_some(())
            },
        )
        .await;
    }
    let higher = &conditions[1];
    assert!(
        higher.message.contains("serving fallback replicas 5")
            && higher.message.contains("currentReplicasIfHigher"),
        "{higher:?}"
    );
    println!(
        "broker 127.0.0.1:1 -> Fallback=True on all three after {}; static 5 -> 3 after {}; 20 s later: {}",
        secs(to_condition),
        secs(static_at),
        cases
            .iter()
            .zip(&recorders)
            .map(|((_, behavior, _, _), r)| format!("{behavior} [{}]", r.describe()))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!(
        "Fallback condition of currentReplicasIfHigher: {}",
        higher.message
    );
    for (name, _, _, _) in cases {
        delete_scaled_object(&sos, name).await;
    }
    delete_lease(admin, &controller.lease_name).await;
}

/// The object `name`'s finalizers, `None` once it is gone.
async fn finalizers(sos: &Api<ScaledObject>, name: &str) -> Option<Vec<String>> {
    let so = sos.get_opt(name).await.ok()??;
    Some(so.metadata.finalizers.unwrap_or_default())
}

#[tokio::test]
async fn deleting_a_scaled_object_that_restores_puts_its_target_back_at_its_original_replicas() {
    let _serial = SERIAL.lock().await;
    let cluster = install().await;
    let admin = &cluster.admin;
    let ns = k8s::namespace(admin, "e2e-ctl-restore").await;
    // No backlog: the trigger reads 0, and with minReplicaCount 0 and initialCooldownPeriod 0
    // the controller takes the target to 0 at once.
    let (topic, group) = kafka_backlog(&[0]).await;
    let deployments = deployment(admin, &ns, "worker", 3).await;
    deployment(admin, &ns, "doomed", 2).await;
    let controller = start_controller(&cluster).await;
    let sos: Api<ScaledObject> = Api::namespaced(admin.clone(), &ns);
    let bootstrap = common::kafka::bootstrap();
    let restoring = |name: &str| {
        scaled_object(
            &ns,
            name,
            name,
            json!({"minReplicaCount": 0, "maxReplicaCount": 10, "pollingInterval": 1,
                "initialCooldownPeriod": 0,
                "advanced": {"restoreToOriginalReplicaCount": true},
                "triggers": [kafka_trigger(&bootstrap, &group, &topic)]}),
        )
    };
    let recorder = ReplicaRecorder::start(deployments.clone(), "worker");
    k8s::apply(admin, restoring("worker")).await;
    k8s::apply(admin, restoring("doomed")).await;
    for name in ["worker", "doomed"] {
        common::eventually(
            &format!("{name} to carry the finalizer"),
            Duration::from_secs(30),
            || async {
                finalizers(&sos, name)
                    .await?
                    .contains(&"spillway.dev/restore-replicas".to_owned())
                    .then_some(())
            },
        )
        .await;
    }
    wait_replicas(
        &deployments,
        "worker",
        "to go to 0 (idle, minReplicaCount 0)",
        Duration::from_secs(60),
        |r| r == 0,
    )
    .await;
    let original = sos
        .get("worker")
        .await
        .unwrap()
        .status
        .and_then(|s| s.original_replica_count);
    assert_eq!(original, Some(3), "status.originalReplicaCount");

    let deleting = Instant::now();
    delete_scaled_object(&sos, "worker").await;
    wait_replicas(
        &deployments,
        "worker",
        "to be restored to its original 3",
        Duration::from_secs(30),
        |r| r == 3,
    )
    .await;
    let restored = deleting.elapsed();
    common::eventually("worker to be gone", Duration::from_secs(30), || async {
        finalizers(&sos, "worker").await.is_none().then_some(())
    })
    .await;
    let gone = deleting.elapsed();
    recorder.catch_up().await;
    let events = events_about(admin, &ns, "worker").await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("RestoredOriginalReplicas") && e.contains("0 -> 3")),
        "{events:?}"
    );
    // Nothing scales it after the restore: its HPA went first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(replicas(&deployments, "worker").await, 3);

    // A target deleted first does not hold the deletion: the finalizer goes, with a Warning.
    let doomed: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    doomed
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let deleting_doomed = Instant::now();
    delete_scaled_object(&sos, "doomed").await;
    common::eventually(
        "doomed (target gone) to be gone",
        Duration::from_secs(30),
        || async { finalizers(&sos, "doomed").await.is_none().then_some(()) },
    )
    .await;
    let doomed_gone = deleting_doomed.elapsed();
    let events = events_about(admin, &ns, "doomed").await;
    assert!(
        events.iter().any(|e| e.starts_with("RestoreSkipped")),
        "{events:?}"
    );
    println!(
        "worker: 3 -> 0 by spillway ({}); deleted: back at 3 after {}, object gone after {}; \
         doomed (target deleted first): object gone after {} ({})",
        recorder.describe(),
        secs(restored),
        secs(gone),
        secs(doomed_gone),
        events
            .iter()
            .find(|e| e.starts_with("RestoreSkipped"))
            .cloned()
            .unwrap_or_default()
    );
    common::kafka::delete_topic(&topic).await;
    delete_lease(admin, &controller.lease_name).await;
}
