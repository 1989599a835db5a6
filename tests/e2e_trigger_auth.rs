//! End to end for credentials through references a namespace owns (`spillway run` on the real
//! control plane, with the real RabbitMQ): a trigger's `authenticationRef` names a
//! TriggerAuthentication of its own namespace, whose Secret is read from that namespace, or a
//! ClusterTriggerAuthentication, whose Secret is read from spillway's namespace. A tenant naming
//! a TriggerAuthentication that exists only in another namespace is refused and never served
//! with the other's credentials; a rotated Secret is used on the next poll; with
//! `--secret-label-selector` an unlabelled Secret is refused with the reason, and labelling it
//! lets it in. The API server refuses KEDA's unsupported sources and other kinds by name, and
//! `deploy/rbac.yaml`'s role for namespace owners creates TriggerAuthentications in their
//! namespace only, never a ClusterTriggerAuthentication.
//!
//! As in `e2e_secrets`, spillway acts as a ServiceAccount of its own bound to copies of
//! `deploy/rbac.yaml`'s roles, values are read from its own `/metrics` (what is registered and
//! polled), and the objects are paused so nothing but their references, their Secrets and their
//! requeue reconciles them.

mod common;

use std::time::{Duration, Instant};

use common::k8s::{self, SpillwayController};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use spillway::controller::crd::ScaledObject;
use spillway::scalers::normalize_metric_name;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// The ServiceAccount these tests run spillway as.
const ACCOUNT: &str = "spillway-e2e-trigger-auth";
/// The messages every test queue holds.
const MESSAGES: usize = 7;
/// Every namespace these tests create starts with it.
const NAMESPACE_PREFIX: &str = "e2e-ta-";
const LABEL: &str = "spillway.dev/credentials";

/// The AMQP URL of the test broker with `password`.
fn amqp_url(password: &str) -> String {
    format!(
        "amqp://guest:{password}@127.0.0.1:{}/%2f",
        common::rabbitmq::amqp_port()
    )
}

/// A namespace with a Deployment `worker` to scale; deleted by [`Tenant::delete`].
struct Tenant {
    admin: kube::Client,
    ns: String,
}

impl Tenant {
    async fn new(admin: &kube::Client, prefix: &str) -> Self {
        let ns = k8s::namespace(admin, &format!("{NAMESPACE_PREFIX}{prefix}")).await;
        k8s::apply(
            admin,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "worker", "namespace": ns},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "worker"}},
                    "template": {"metadata": {"labels": {"app": "worker"}},
                        "spec": {"containers": [{"name": "worker", "image": "registry.k8s.io/pause:3.10"}]}}}}),
        )
        .await;
        Self {
            admin: admin.clone(),
            ns,
        }
    }

    /// Writes the Secret `name` in `namespace` with key `url` holding the queue's URL with
    /// `password`, labelled for `--secret-label-selector` when `labelled`.
    async fn secret(&self, namespace: &str, name: &str, password: &str, labelled: bool) {
        let labels = if labelled {
            json!({LABEL: "true"})
        } else {
            json!({})
        };
        k8s::apply(
            &self.admin,
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "stringData": {"url": amqp_url(password)}}),
        )
        .await;
    }

    /// A TriggerAuthentication `name` here mapping KEDA's `host` to Secret `secret`, key `url`.
    async fn trigger_authentication(&self, name: &str, secret: &str) {
        k8s::apply(
            &self.admin,
            json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "TriggerAuthentication",
                "metadata": {"name": name, "namespace": self.ns},
                "spec": {"secretTargetRef": [{"parameter": "host", "name": secret, "key": "url"}]}}),
        )
        .await;
    }

    /// A paused ScaledObject `worker` on `queue`, its URL through `reference`.
    async fn scaled_object(&self, queue: &str, reference: serde_json::Value, polling: u32) {
        k8s::apply(
            &self.admin,
            json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ScaledObject",
                "metadata": {"name": "worker", "namespace": self.ns},
                "spec": {"scaleTargetRef": {"name": "worker"}, "minReplicaCount": 1,
                    "maxReplicaCount": 5, "pollingInterval": polling, "paused": true,
                    "triggers": [{
                        "rabbitmq": {"protocol": "amqp", "queueName": queue,
                            "mode": "QueueLength", "value": 5},
                        "authenticationRef": reference}]}}),
        )
        .await;
    }

    /// The Ready condition of `worker`: (status, reason, message).
    async fn ready(&self) -> Option<(String, String, String)> {
        let objects: Api<ScaledObject> = Api::namespaced(self.admin.clone(), &self.ns);
        let so = objects.get_opt("worker").await.ok()??;
        so.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status, c.reason, c.message))
    }

    async fn wait_ready(&self, status: &str, timeout: Duration) -> (String, String, String) {
        common::eventually(
            &format!("{}/worker to be Ready={status}", self.ns),
            timeout,
            || async { self.ready().await.filter(|(s, _, _)| s == status) },
        )
        .await
    }

    async fn delete(self) {
        let namespaces: Api<Namespace> = Api::all(self.admin.clone());
        let _ = namespaces.delete(&self.ns, &DeleteParams::default()).await;
    }
}

/// Installs spillway's manifests and waits for the authentication kinds to be served.
async fn install(admin: &kube::Client) -> std::path::PathBuf {
    let kubeconfig = k8s::install_spillway_as(admin, ACCOUNT).await;
    for crd in [
        "triggerauthentications.spillway.dev",
        "clustertriggerauthentications.spillway.dev",
    ] {
        k8s::wait_crd_established(admin, crd, Duration::from_secs(30)).await;
    }
    kubeconfig
}

/// What spillway's `/metrics` says about `ns/worker`'s trigger 0: its value when it has one,
/// and its failures in a row; `None` when the trigger is not registered.
async fn served(controller: &SpillwayController, ns: &str) -> Option<(Option<f64>, f64)> {
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
    let (_, failures) = sample("spillway_trigger_consecutive_failures")
        .first()?
        .clone();
    let value = sample("spillway_trigger_value")
        .into_iter()
        .min_by_key(|(series, _)| series.len())
        .map(|(_, value)| value);
    Some((value, failures))
}

async fn wait_served(
    controller: &SpillwayController,
    ns: &str,
    what: &str,
    timeout: Duration,
    wanted: impl Fn(Option<(Option<f64>, f64)>) -> bool,
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

/// `spillway run` with `extra_args`, once it leads its own Lease: objects created after that
/// are first reconciled by a leader, which writes their status at once (a replica that starts
/// leading later looks at an object again only at its next requeue).
async fn start_controller(kubeconfig: &std::path::Path, extra_args: &[&str]) -> SpillwayController {
    let lease = common::unique_name("e2e-trigger-auth-lease");
    let controller = SpillwayController::start_with_args(
        kubeconfig,
        common::free_port(),
        &lease,
        &format!("{lease}-a"),
        None,
        extra_args,
    )
    .await;
    let url = format!("http://127.0.0.1:{}/metrics", controller.metrics_port);
    common::eventually(
        "spillway to lead its Lease",
        Duration::from_secs(20),
        || async {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            text.lines()
                .any(|line| line == "spillway_leader 1")
                .then_some(())
        },
    )
    .await;
    controller
}

fn secs(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[tokio::test]
async fn credentials_come_only_through_references_the_namespace_owns() {
    let _serial = SERIAL.lock().await;
    let admin = k8s::admin().await;
    k8s::delete_namespaces_starting_with(&admin, NAMESPACE_PREFIX).await;
    let kubeconfig = install(&admin).await;
    let (_connection, _channel, queue) =
        common::rabbitmq::queue_with_messages("ta-owned", MESSAGES).await;
    let controller = start_controller(&kubeconfig, &[]).await;

    // Tenant A: its own TriggerAuthentication over its own Secret, first with a wrong password.
    let a = Tenant::new(&admin, "a").await;
    a.secret(&a.ns, "rabbit", "wrong", false).await;
    a.trigger_authentication("rabbit-auth", "rabbit").await;
    a.scaled_object(&queue, json!({"name": "rabbit-auth"}), 2)
        .await;
    // Tenant B copies everything of A's but the credentials, and names A's
    // TriggerAuthentication.
    let b = Tenant::new(&admin, "b").await;
    b.scaled_object(&queue, json!({"name": "rabbit-auth"}), 2)
        .await;
    // Tenant C: a ClusterTriggerAuthentication whose Secret lives in spillway's namespace.
    let c = Tenant::new(&admin, "c").await;
    let shared = common::unique_name("e2e-ta-shared").replace('_', "-");
    c.secret(k8s::SPILLWAY_NAMESPACE, &shared, "guest", false)
        .await;
    k8s::apply(
        &admin,
        json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ClusterTriggerAuthentication",
            "metadata": {"name": shared},
            "spec": {"secretTargetRef": [{"parameter": "host", "name": shared, "key": "url"}]}}),
    )
    .await;
    // Requeued every 60 s: a reaction sooner is the ClusterTriggerAuthentication's watch.
    c.scaled_object(
        &queue,
        json!({"name": shared, "kind": "ClusterTriggerAuthentication"}),
        60,
    )
    .await;

    // (a, e) A is polled with its Secret's credentials: failing with the wrong password, read
    // on the next poll once the Secret is rotated.
    wait_served(
        &controller,
        &a.ns,
        "to fail with the wrong password",
        Duration::from_secs(20),
        |s| s.is_some_and(|(value, failures)| value.is_none() && failures >= 1.0),
    )
    .await;
    a.secret(&a.ns, "rabbit", "guest", false).await;
    let rotated = wait_served(
        &controller,
        &a.ns,
        "to read the queue with the rotated password",
        Duration::from_secs(20),
        |s| s.is_some_and(|(value, _)| value == Some(MESSAGES as f64)),
    )
    .await;
    let (_, reason, message) = a.wait_ready("True", Duration::from_secs(10)).await;
    assert_eq!(reason, "ScaledObjectReady", "{message}");
    // What an HPA reads: the external metrics API serves A's value, and nothing for B.
    let metric = format!("s0-{}", normalize_metric_name(&format!("rabbitmq-{queue}")));
    let external = |ns: &str| {
        format!(
            "https://127.0.0.1:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector=scaledobject.spillway.dev%2Fname%3Dworker",
            controller.port
        )
    };
    let direct = k8s::direct_client(Some("admin"));
    let answer = direct
        .get(external(&a.ns))
        .send()
        .await
        .expect("metrics API");
    assert_eq!(answer.status(), 200);
    let list: serde_json::Value = answer.json().await.expect("a metric value list");
    assert_eq!(list["items"][0]["value"], MESSAGES.to_string(), "{list}");

    // (b) B's reference finds nothing in B: refused with the reason, never served.
    let (_, reason, message) = b.wait_ready("False", Duration::from_secs(15)).await;
    assert_eq!(reason, "TriggerAuthenticationNotFound", "{message}");
    assert_eq!(
        message,
        format!(
            "spec.triggers[0].authenticationRef: TriggerAuthentication {}/rabbit-auth does not exist (a TriggerAuthentication is read from the ScaledObject's own namespace only)",
            b.ns
        )
    );
    assert_eq!(
        served(&controller, &b.ns).await,
        None,
        "B is never registered"
    );
    let answer = direct
        .get(external(&b.ns))
        .send()
        .await
        .expect("metrics API");
    assert_eq!(answer.status(), 404, "B's metric is not served");

    // (c) C reads the Secret of spillway's namespace through the ClusterTriggerAuthentication.
    wait_served(
        &controller,
        &c.ns,
        "to read the queue through the ClusterTriggerAuthentication",
        Duration::from_secs(20),
        |s| s.is_some_and(|(value, _)| value == Some(MESSAGES as f64)),
    )
    .await;
    c.wait_ready("True", Duration::from_secs(10)).await;
    // Deleting it reconciles C at once (its requeue is a minute away) and unregisters it.
    let ctas = k8s::dynamic_api(
        &admin,
        "spillway.dev",
        "v1alpha1",
        "ClusterTriggerAuthentication",
        "clustertriggerauthentications",
        None,
    );
    ctas.delete(&shared, &DeleteParams::default())
        .await
        .expect("delete the ClusterTriggerAuthentication");
    let deleted = Instant::now();
    let (_, reason, message) = c.wait_ready("False", Duration::from_secs(15)).await;
    assert_eq!(reason, "TriggerAuthenticationNotFound", "{message}");
    wait_served(
        &controller,
        &c.ns,
        "to be unregistered",
        Duration::from_secs(10),
        |s| s.is_none(),
    )
    .await;
    let to_unregistered = deleted.elapsed();
    // B was never served at any point, A's value notwithstanding.
    assert_eq!(served(&controller, &b.ns).await, None);
    println!(
        "rotated Secret to a value read: {}; ClusterTriggerAuthentication deleted to unregistered: {}",
        secs(rotated),
        secs(to_unregistered)
    );

    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(admin.clone(), k8s::SPILLWAY_NAMESPACE);
    let _ = secrets.delete(&shared, &DeleteParams::default()).await;
    for tenant in [a, b, c] {
        tenant.delete().await;
    }
}

#[tokio::test]
async fn with_a_label_selector_only_labelled_secrets_are_read() {
    let _serial = SERIAL.lock().await;
    let admin = k8s::admin().await;
    k8s::delete_namespaces_starting_with(&admin, NAMESPACE_PREFIX).await;
    let kubeconfig = install(&admin).await;
    let (_connection, _channel, queue) =
        common::rabbitmq::queue_with_messages("ta-label", MESSAGES).await;
    let d = Tenant::new(&admin, "d").await;
    d.secret(&d.ns, "rabbit", "guest", false).await;
    d.trigger_authentication("rabbit-auth", "rabbit").await;
    // The API server refuses what spillway would not read, by name, instead of pruning it.
    let refused = k8s::try_apply(
        &admin,
        json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "TriggerAuthentication",
            "metadata": {"name": "from-env", "namespace": d.ns},
            "spec": {"env": [{"parameter": "password", "name": "PASSWORD"}]}}),
    )
    .await
    .expect_err("a TriggerAuthentication reading env is refused");
    assert!(
        refused
            .to_string()
            .contains("env is not supported by spillway"),
        "{refused}"
    );
    let refused = k8s::try_apply(
        &admin,
        json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": "other-kind", "namespace": d.ns},
            "spec": {"scaleTargetRef": {"name": "worker"},
                "triggers": [{"rabbitmq": {"queueName": queue, "value": 5},
                    "authenticationRef": {"name": "rabbit", "kind": "Secret"}}]}}),
    )
    .await
    .expect_err("an authenticationRef to another kind is refused");
    assert!(
        refused
            .to_string()
            .contains("Unsupported value: \"Secret\""),
        "{refused}"
    );

    let selector = format!("{LABEL}=true");
    let controller =
        start_controller(&kubeconfig, &["--secret-label-selector", selector.as_str()]).await;
    // Requeued every 60 s: a reaction sooner is the Secret's watch.
    d.scaled_object(&queue, json!({"name": "rabbit-auth"}), 60)
        .await;

    // (d) The Secret exists but is not labelled: refused, saying so.
    let (_, reason, message) = d.wait_ready("False", Duration::from_secs(20)).await;
    assert_eq!(reason, "SecretNotLabelled", "{message}");
    assert_eq!(
        message,
        format!(
            "spec.triggers[0].rabbitmq.hostFromSecret: secret {}/rabbit (key url) lacks the label {selector}: spillway reads only Secrets matching --secret-label-selector; label it to let triggers use it",
            d.ns
        )
    );
    assert_eq!(served(&controller, &d.ns).await, None);

    // Labelled: the watch now holds it, and the object is served at once.
    d.secret(&d.ns, "rabbit", "guest", true).await;
    let took = wait_served(
        &controller,
        &d.ns,
        "to be served once its Secret is labelled",
        Duration::from_secs(15),
        |s| s.is_some_and(|(value, _)| value == Some(MESSAGES as f64)),
    )
    .await;
    d.wait_ready("True", Duration::from_secs(10)).await;
    println!("Secret labelled to a value read: {}", secs(took));
    d.delete().await;
}

#[tokio::test]
async fn namespace_editors_create_trigger_authentications_and_only_cluster_admins_cluster_ones() {
    let _serial = SERIAL.lock().await;
    let admin = k8s::admin().await;
    k8s::delete_namespaces_starting_with(&admin, NAMESPACE_PREFIX).await;
    install(&admin).await;
    // The roles for namespace owners of deploy/rbac.yaml (install_spillway_as copies only
    // spillway's own).
    for role in k8s::deploy_manifest("rbac.yaml").into_iter().filter(|o| {
        o["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("spillway-triggerauthentications-"))
    }) {
        k8s::apply(&admin, role).await;
    }
    let e = Tenant::new(&admin, "e").await;
    // A namespace owner, granted what the aggregation adds to the built-in edit and admin roles
    // (this control plane runs no clusterrole-aggregation controller, so the role is bound
    // directly; its aggregation labels are checked below), in its namespace only.
    let rbac = k8s::deploy_manifest("rbac.yaml");
    let edit = rbac
        .iter()
        .find(|o| o["metadata"]["name"] == "spillway-triggerauthentications-edit")
        .expect("the aggregated edit role");
    for aggregate in ["aggregate-to-edit", "aggregate-to-admin"] {
        assert_eq!(
            edit["metadata"]["labels"][format!("rbac.authorization.k8s.io/{aggregate}")],
            "true"
        );
    }
    k8s::apply(
        &admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "editor", "namespace": e.ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": "spillway-triggerauthentications-edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "spillway-test-nobody"}]}),
    )
    .await;
    let editor = k8s::client_as("nobody").await;
    let ta = json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "TriggerAuthentication",
        "metadata": {"name": "rabbit-auth", "namespace": e.ns},
        "spec": {"secretTargetRef": [{"parameter": "host", "name": "rabbit", "key": "url"}]}});
    // RBAC caches settle within moments of the binding.
    common::eventually(
        "the editor to create a TriggerAuthentication in its namespace",
        Duration::from_secs(20),
        || async { k8s::try_apply(&editor, ta.clone()).await.ok() },
    )
    .await;
    let cluster_wide = common::unique_name("e2e-ta-editor").replace('_', "-");
    let refused = k8s::try_apply(
        &editor,
        json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ClusterTriggerAuthentication",
            "metadata": {"name": cluster_wide},
            "spec": {"secretTargetRef": [{"parameter": "host", "name": "rabbit", "key": "url"}]}}),
    )
    .await
    .expect_err("a namespace editor creates no ClusterTriggerAuthentication");
    assert!(
        matches!(&refused, kube::Error::Api(status) if status.code == 403),
        "{refused}"
    );
    // Nor a TriggerAuthentication in a namespace it does not own.
    let mut elsewhere = ta.clone();
    elsewhere["metadata"]["namespace"] = json!(k8s::SPILLWAY_NAMESPACE);
    let refused = k8s::try_apply(&editor, elsewhere)
        .await
        .expect_err("no TriggerAuthentication outside its namespace");
    assert!(
        matches!(&refused, kube::Error::Api(status) if status.code == 403),
        "{refused}"
    );
    e.delete().await;
}
