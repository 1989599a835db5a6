//! `deploy/helm/spillway` is the kustomization in `deploy/` as a Helm chart, checked with a real
//! `helm` (built by scripts/helm.sh): `helm lint --strict` passes, `helm template` with the
//! default values renders the kustomization's objects field by field, values change what
//! values.yaml says, bad values are refused by values.schema.json with the value named, and a
//! release installs into the local control plane and `helm uninstall` removes it.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::helm::{ValuesFile, helm, helm_ok};
use common::k8s::{self, kubectl};
use kube::api::DeleteParams;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("deploy/helm/spillway")
}

/// `helm template` of release `spillway` in spillway-system (deploy/'s names) with `values`
/// over the defaults, CRDs included: its output or helm's refusal.
fn try_template(values: &Value) -> Result<Vec<Value>, String> {
    let file = ValuesFile::new(values);
    let chart = chart();
    let output = helm(&[
        "template",
        "spillway",
        chart.to_str().unwrap(),
        "--namespace",
        "spillway-system",
        "--include-crds",
        "--values",
        file.path(),
    ]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    if output.status.success() {
        Ok(k8s::yaml_documents(&stdout, "helm template"))
    } else {
        assert!(
            stdout.is_empty(),
            "a refused render printed objects: {stdout}"
        );
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn template(values: &Value) -> Vec<Value> {
    try_template(values).unwrap_or_else(|err| panic!("helm template with {values}: {err}"))
}

/// kind, namespace ("" when cluster-scoped) and name: how objects are matched up.
type Key = (String, String, String);

fn key(object: &Value) -> Key {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        text(&object["kind"]),
        text(&object["metadata"]["namespace"]),
        text(&object["metadata"]["name"]),
    )
}

fn by_key(objects: Vec<Value>) -> BTreeMap<Key, Value> {
    let mut map = BTreeMap::new();
    for object in objects {
        let key = key(&object);
        assert!(map.insert(key.clone(), object).is_none(), "{key:?} twice");
    }
    map
}

/// The label deploy/ puts on its objects and selects its pods by.
const NAME_LABEL: &str = "app.kubernetes.io/name";

/// Labels Helm charts add for their own bookkeeping (which release, which chart version);
/// deploy/ has none of them, and nothing selects on them.
const HELM_LABELS: [&str; 4] = [
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
];

/// An object as compared: Helm's bookkeeping labels and the pods' config checksum (which
/// rolls them when the config changes, a Helm idiom) left out, the config file parsed (its
/// comments and layout differ, its meaning must not).
fn comparable(mut object: Value) -> Value {
    fn drop_keys(map: &mut Value, keys: &[&str]) {
        if let Some(entries) = map.as_object_mut() {
            for key in keys {
                entries.remove(*key);
            }
        }
    }
    if let Some(labels) = object["metadata"].get_mut("labels") {
        drop_keys(labels, &HELM_LABELS);
        if *labels == json!({}) {
            drop_keys(&mut object["metadata"], &["labels"]);
        }
    }
    if object["kind"] == "Deployment" {
        let template = &mut object["spec"]["template"]["metadata"];
        if let Some(annotations) = template.get_mut("annotations") {
            drop_keys(annotations, &["checksum/config"]);
            if *annotations == json!({}) {
                drop_keys(template, &["annotations"]);
            }
        }
    }
    if object["kind"] == "ConfigMap" {
        let parsed: Value =
            serde_norway::from_str(object["data"]["config.yaml"].as_str().unwrap()).unwrap();
        object["data"]["config.yaml"] = parsed;
    }
    object
}

/// Equal, numbers by value: kustomize writes the CRD's `minimum: 0.0` as `0`, Helm passes
/// crds/ through as written.
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Where the kustomization's `a` and the chart's `b` first differ, as a path, or None when
/// they are equal.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            // Each key once: a key of both is visited from x only.
            x.keys()
                .chain(y.keys().filter(|k| !x.contains_key(*k)))
                .find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(a), Some(b)) => first_difference(a, b, &format!("{path}.{k}")),
                    (Some(_), None) => Some(format!("{path}.{k}: only in kustomize")),
                    (None, _) => Some(format!("{path}.{k}: only in the chart")),
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]"))),
        _ if same(a, b) => None,
        _ => Some(format!("{path}: {a} != {b}")),
    }
}

/// Fails unless everything `rendered` sets is in `stored` with the same value (the API server
/// adds defaults and status; it must not have dropped or changed anything).
fn assert_stored_as_rendered(stored: &Value, rendered: &Value, path: &str) {
    match (stored, rendered) {
        (Value::Object(s), Value::Object(r)) => {
            for (k, r) in r {
                let s = s
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} was rendered but is not stored"));
                assert_stored_as_rendered(s, r, &format!("{path}.{k}"));
            }
        }
        (Value::Array(s), Value::Array(r)) => {
            assert_eq!(
                s.len(),
                r.len(),
                "{path}: stored {stored}, rendered {rendered}"
            );
            for (i, (s, r)) in s.iter().zip(r).enumerate() {
                assert_stored_as_rendered(s, r, &format!("{path}[{i}]"));
            }
        }
        _ => assert!(
            same(stored, rendered),
            "{path}: stored {stored}, rendered {rendered}"
        ),
    }
}

#[test]
fn helm_lint_passes_strictly_for_both_certificate_sources() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let out = helm_ok(&["lint", "--strict", chart]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let secret = ValuesFile::new(&json!({"servingCert": {
        "source": "secret", "secretName": "spillway-tls", "caBundle": "Y2E="}}));
    let out = helm_ok(&["lint", "--strict", chart, "--values", secret.path()]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

/// The chart's CRDs are deploy/crd.yaml itself (generated by `spillway crd`, checked by
/// tests/crd.rs), never an edited copy.
#[test]
fn the_chart_ships_deploy_crds_unchanged() {
    let shipped = std::fs::read_to_string(repo().join("deploy/crd.yaml")).unwrap();
    let in_chart = std::fs::read_to_string(chart().join("crds/crd.yaml")).unwrap();
    assert!(
        shipped == in_chart,
        "deploy/helm/spillway/crds/crd.yaml differs from deploy/crd.yaml: cp deploy/crd.yaml deploy/helm/spillway/crds/"
    );
}

#[test]
fn the_default_values_render_the_kustomization_object_by_object() {
    let kustomized = by_key(k8s::yaml_documents(
        &kubectl(&["kustomize", "deploy/"]),
        "kubectl kustomize deploy/",
    ));
    let mut charted = by_key(template(&json!({})));
    // Helm keeps its release in the namespace, so the chart cannot create it: `helm install
    // --create-namespace` does. Every other object must be there.
    let namespace = (
        "Namespace".to_owned(),
        String::new(),
        "spillway-system".to_owned(),
    );
    assert!(kustomized.contains_key(&namespace));
    assert!(!charted.contains_key(&namespace));
    let missing: Vec<&Key> = kustomized
        .keys()
        .filter(|k| **k != namespace && !charted.contains_key(*k))
        .collect();
    let extra: Vec<&Key> = charted
        .keys()
        .filter(|k| !kustomized.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the chart lacks {missing:?} and adds {extra:?}"
    );
    assert!(kustomized.len() >= 25, "{:?}", kustomized.keys());

    for (key, expected) in kustomized.into_iter().filter(|(k, _)| *k != namespace) {
        let rendered = charted.remove(&key).unwrap();
        // What the chart labels its objects with, beyond deploy/'s label.
        if key.0 != "CustomResourceDefinition" {
            for label in HELM_LABELS {
                assert!(
                    rendered["metadata"]["labels"][label].is_string(),
                    "{key:?} lacks {label}"
                );
            }
        }
        // The chart labels cert-manager's objects as it does every other (deploy/'s component
        // leaves them unlabelled); every label deploy/ sets must be there.
        let mut rendered = rendered;
        if expected["metadata"]["labels"][NAME_LABEL].is_null()
            && let Some(labels) = rendered["metadata"]
                .get_mut("labels")
                .and_then(Value::as_object_mut)
        {
            labels.remove(NAME_LABEL);
        }
        let (expected, rendered) = (comparable(expected), comparable(rendered));
        if let Some(difference) = first_difference(&expected, &rendered, "") {
            panic!(
                "{key:?} differs at {difference}\nkustomize: {}\nhelm: {}",
                serde_json::to_string_pretty(&expected).unwrap(),
                serde_json::to_string_pretty(&rendered).unwrap()
            );
        }
    }
}

/// The first object of `kind`, or a panic listing what was rendered.
fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} in {:?}",
                objects.iter().map(key).collect::<Vec<_>>()
            )
        })
}

/// The config file a rendered ConfigMap holds, loaded by spillway itself.
fn loaded_config(objects: &[Value]) -> spillway::config::Config {
    let text = find(objects, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("helm-config")));
    std::fs::write(&file, &text).unwrap();
    let loaded = spillway::config::Config::load(&file);
    std::fs::remove_file(&file).ok();
    loaded.unwrap_or_else(|err| panic!("the chart's config.yaml does not load: {err}\n{text}"))
}

#[test]
fn values_change_what_values_yaml_says() {
    let default = template(&json!({}));
    let config = loaded_config(&default);
    assert_eq!(config.server.listen.port(), 6443);
    assert!(config.server.tls.is_some());
    assert_eq!(
        config.server.metrics_auth,
        spillway::config::MetricsAuth::None
    );

    let objects = template(&json!({
        "fullnameOverride": "autoscaler",
        "image": {"repository": "registry.example/spillway", "tag": "0.2.0", "pullPolicy": "Always"},
        "imagePullSecrets": ["pull"],
        "replicas": 3,
        "sharePolling": false,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "logFormat": "text",
        "logLevel": "spillway=debug,info",
        "secretLabelSelector": "spillway.dev/credentials=true",
        "clusterTriggerAuthNamespace": "platform-credentials",
        "metrics": {"listenHost": "0.0.0.0", "port": 9100, "auth": "namespaces"},
        "config": {"pollingInterval": 15, "server": {"maxConnections": 500, "allowDestinations": ["link-local"]}},
        "servingCert": {"source": "secret", "secretName": "autoscaler-tls", "caBundle": "Q0E="},
        "podDisruptionBudget": {"minAvailable": 2},
        "nodeSelector": {"node-role.kubernetes.io/infra": "true"},
        "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "podAnnotations": {"prometheus.io/scrape": "true"},
        "podLabels": {"team": "platform"},
    }));
    // Every object is named after fullnameOverride, nothing after `spillway`.
    for object in &objects {
        let (kind, _, name) = key(object);
        if kind != "CustomResourceDefinition" && kind != "APIService" {
            assert!(name.starts_with("autoscaler"), "{kind} {name}");
        }
    }
    let deployment = find(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], "autoscaler");
    assert_eq!(pod["spec"]["imagePullSecrets"], json!([{"name": "pull"}]));
    assert_eq!(
        pod["spec"]["nodeSelector"]["node-role.kubernetes.io/infra"],
        "true"
    );
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "infra");
    assert!(
        pod["spec"]["affinity"]["podAntiAffinity"].is_null(),
        "affinity replaces the default"
    );
    assert!(pod["spec"]["affinity"]["nodeAffinity"].is_object());
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    // Extra pod labels, but the selector stays deploy/'s (a Deployment's cannot change).
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        json!({NAME_LABEL: "spillway"})
    );
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/spillway:0.2.0");
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(container["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(
        container["args"],
        json!([
            "run",
            "--config",
            "/etc/spillway/config.yaml",
            "--log-format",
            "text",
            "--log-level",
            "spillway=debug,info"
        ])
    );
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(
        env["SPILLWAY_SECRET_LABEL_SELECTOR"]["value"],
        "spillway.dev/credentials=true"
    );
    assert_eq!(
        env["SPILLWAY_CLUSTER_TRIGGER_AUTH_NAMESPACE"]["value"],
        "platform-credentials"
    );
    assert_eq!(env["SPILLWAY_METRICS_LISTEN"]["value"], "0.0.0.0:9100");
    assert!(
        !env.contains_key("SPILLWAY_SHARE_POLLING"),
        "sharePolling: false: every replica polls everything"
    );
    assert_eq!(
        container["ports"][1],
        json!({"name": "metrics", "containerPort": 9100, "protocol": "TCP"})
    );
    let tls = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .unwrap();
    assert_eq!(tls["secret"]["secretName"], "autoscaler-tls");
    assert_eq!(find(&objects, "Service")["spec"]["ports"][1]["port"], 9100);
    assert_eq!(
        find(&objects, "PodDisruptionBudget")["spec"]["minAvailable"],
        2
    );
    let binding = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRoleBinding" && o["metadata"]["name"] == "autoscaler")
        .unwrap();
    assert_eq!(binding["roleRef"]["name"], "autoscaler");
    assert_eq!(binding["subjects"][0]["name"], "autoscaler");

    // An existing Secret: no cert-manager object, the given CA trusted, nothing injected.
    assert!(!objects.iter().any(|o| {
        o["apiVersion"]
            .as_str()
            .unwrap()
            .starts_with("cert-manager.io/")
    }));
    let apiservices: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "APIService")
        .collect();
    assert_eq!(apiservices.len(), 2);
    for service in apiservices {
        assert_eq!(service["spec"]["caBundle"], "Q0E=");
        assert_eq!(service["spec"]["service"]["name"], "autoscaler");
        assert!(service["metadata"]["annotations"].is_null(), "{service}");
    }
    let webhook = find(&objects, "ValidatingWebhookConfiguration");
    assert_eq!(webhook["webhooks"][0]["clientConfig"]["caBundle"], "Q0E=");
    assert!(webhook["metadata"]["annotations"].is_null(), "{webhook}");

    // The config file is one spillway accepts, with the values in it.
    let config = loaded_config(&objects);
    assert_eq!(
        config.server.metrics_auth,
        spillway::config::MetricsAuth::Namespaces
    );
    assert_eq!(config.server.metrics_listen.port(), 9100);
    assert_eq!(config.server.max_connections, 500);
    assert_eq!(
        config.server.allow_destinations,
        [spillway::destination::DestinationClass::LinkLocal]
    );
    assert_eq!(
        config.polling_interval.as_duration(),
        Duration::from_secs(15)
    );
    assert_eq!(config.server.listen.port(), 6443);

    // cert-manager's certificate follows the names: the Service's DNS names, the CA injected.
    let objects = template(&json!({"fullnameOverride": "autoscaler"}));
    let serving = objects
        .iter()
        .find(|o| o["kind"] == "Certificate" && o["metadata"]["name"] == "autoscaler-serving")
        .unwrap();
    assert_eq!(
        serving["spec"]["dnsNames"],
        json!([
            "autoscaler.spillway-system.svc",
            "autoscaler.spillway-system.svc.cluster.local"
        ])
    );
    assert_eq!(serving["spec"]["issuerRef"]["name"], "autoscaler-ca");
    let webhook = find(&objects, "ValidatingWebhookConfiguration");
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "spillway-system/autoscaler-ca"
    );
    assert_eq!(
        webhook["webhooks"][0]["clientConfig"]["service"]["name"],
        "autoscaler"
    );

    // A second copy beside the cluster's: no APIService, the webhook on chosen namespaces.
    let objects = template(&json!({
        "apiService": {"enabled": false},
        "webhook": {"namespaceSelector": {"matchLabels": {"team": "a"}}},
        "podDisruptionBudget": {"enabled": false},
    }));
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "APIService" || o["kind"] == "PodDisruptionBudget")
    );
    assert_eq!(
        find(&objects, "ValidatingWebhookConfiguration")["webhooks"][0]["namespaceSelector"],
        json!({"matchLabels": {"team": "a"}})
    );
    let objects = template(&json!({"webhook": {"enabled": false}}));
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "ValidatingWebhookConfiguration")
    );
}

#[test]
fn bad_values_are_refused_naming_the_value() {
    for (values, named) in [
        (json!({"replicas": -1}), "/replicas"),
        (json!({"replicas": "two"}), "/replicas"),
        (json!({"metrics": {"auth": "all"}}), "/metrics/auth"),
        (json!({"metrics": {"port": 6443}}), "/metrics/port"),
        (json!({"logFormat": "yaml"}), "/logFormat"),
        (json!({"replica": 3}), "replica"),
        (
            json!({"servingCert": {"source": "vault"}}),
            "/servingCert/source",
        ),
        // An existing Secret needs the CA that signed it.
        (
            json!({"servingCert": {"source": "secret", "secretName": "tls"}}),
            "/servingCert/caBundle",
        ),
        (
            json!({"servingCert": {"source": "secret", "secretName": "tls", "caBundle": "-----BEGIN CERTIFICATE-----"}}),
            "/servingCert/caBundle",
        ),
        // The chart's own keys of the config file, and what `spillway run` does not read.
        (
            json!({"config": {"server": {"listen": "0.0.0.0:8443"}}}),
            "listen",
        ),
        (
            json!({"config": {"server": {"metricsAuth": "namespaces"}}}),
            "metricsAuth",
        ),
        (json!({"config": {"scaledObjects": []}}), "scaledObjects"),
        (
            json!({"config": {"pollingInterval": 0}}),
            "/config/pollingInterval",
        ),
        (
            json!({"config": {"server": {"allowDestinations": ["everywhere"]}}}),
            "/config/server/allowDestinations",
        ),
        (
            json!({"fullnameOverride": "Spillway_1"}),
            "/fullnameOverride",
        ),
    ] {
        let refusal = try_template(&values)
            .err()
            .unwrap_or_else(|| panic!("{values} was accepted"));
        assert!(
            refusal.contains("values don't meet the specifications of the schema"),
            "{values}: {refusal}"
        );
        assert!(
            refusal.contains(named),
            "{values}: {refusal} does not name {named}"
        );
    }
}

/// A release on the shared control plane, uninstalled and its namespace deleted when dropped
/// (also when the test fails).
struct Release {
    name: String,
    namespace: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let kubeconfig = k8s::k8s_dir().join("admin.kubeconfig");
        helm(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--ignore-not-found",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ]);
        let _ = Command::new(k8s::k8s_dir().join("bin/kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.namespace,
                "--ignore-not-found",
                "--wait=false",
            ])
            .output();
    }
}

/// The install runs on the control plane every e2e test shares, in parallel with them, so it
/// must not touch what they rely on. What is cluster-wide by nature is kept out or fenced:
/// - the APIServices are per API group, one per cluster: the e2e tests point them at their
///   own spillway on loopback, so `apiService.enabled=false` (they are compared field by
///   field by `helm template` above);
/// - the webhook (fail-closed, on every ScaledObject) is limited by `webhook.namespaceSelector`
///   to this release's namespace, where nothing else writes ScaledObjects (as
///   tests/e2e_admission.rs limits its own);
/// - the CRDs are deploy/crd.yaml, which the e2e tests apply too: Helm's crds/ applies them
///   (server-side, taking over the fields the e2e tests' manager set) and never deletes them;
/// - this control plane has no cert-manager, so the serving certificate is an existing
///   Secret trusted through the cluster CA.
///
/// Everything else (ClusterRoles and their bindings, the Roles in kube-system and default) is
/// named after the release, unique per run. A private control plane with moved ports would
/// allow the singletons too, but `make test` has one control plane, and an install of deploy/'s
/// exact APIServices there would break the e2e tests running beside this one.
#[tokio::test]
async fn a_release_installs_into_the_control_plane_and_uninstalls_without_a_trace() {
    let admin = k8s::admin().await;
    let kubeconfig = k8s::k8s_dir().join("admin.kubeconfig");
    let kubeconfig = kubeconfig.to_str().unwrap().to_owned();
    let release = Release {
        name: common::unique_name("spillway-helm"),
        namespace: common::unique_name("spillway-helm"),
    };
    let ca = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(k8s::pki("ca.crt")).unwrap());
    let values = json!({
        "apiService": {"enabled": false},
        "webhook": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": release.namespace}}},
        "servingCert": {"source": "secret", "secretName": "spillway-serving", "caBundle": ca},
        "secretLabelSelector": "spillway.dev/credentials=true",
    });
    let file = ValuesFile::new(&values);
    let chart = chart();
    let install = |name: &str, values: &str| {
        helm(&[
            "install",
            name,
            chart.to_str().unwrap(),
            "--namespace",
            &release.namespace,
            "--create-namespace",
            // The e2e tests applied the same CRDs before, server-side under their own field
            // manager, and Helm 4 applies crds/ server-side too: without this it refuses to
            // co-own `.spec.versions` (CI saw exactly that), as it would for a user whose CRDs
            // came from `kubectl apply --server-side`.
            "--force-conflicts",
            "--values",
            values,
            "--kubeconfig",
            &kubeconfig,
        ])
    };

    // Bad values: refused before anything reaches the cluster, not even the namespace.
    let bad = ValuesFile::new(&json!({"replicas": -1}));
    let refused = install(&release.name, bad.path());
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("/replicas"),
        "{refused:?}"
    );
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(admin.clone());
    assert!(
        namespaces
            .get_opt(&release.namespace)
            .await
            .unwrap()
            .is_none(),
        "a refused install created the namespace"
    );

    let installed = install(&release.name, file.path());
    assert!(installed.status.success(), "helm install: {installed:?}");
    let status = helm_ok(&[
        "status",
        &release.name,
        "--namespace",
        &release.namespace,
        "--kubeconfig",
        &kubeconfig,
        "-o",
        "json",
    ]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["info"]["status"], "deployed", "{status}");

    // Every object of the release is stored as rendered, owned by the release.
    let manifest = helm_ok(&[
        "get",
        "manifest",
        &release.name,
        "--namespace",
        &release.namespace,
        "--kubeconfig",
        &kubeconfig,
    ]);
    let objects = k8s::yaml_documents(&manifest, "helm get manifest");
    let kinds: Vec<String> = objects.iter().map(|o| key(o).0).collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ValidatingWebhookConfiguration",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "the release has no {kind}: {kinds:?}"
        );
    }
    assert!(!kinds.iter().any(|k| k == "APIService"), "{kinds:?}");
    for rendered in &objects {
        let (kind, _, name) = key(rendered);
        let api = k8s::api_for(&admin, rendered).await;
        let stored = api
            .get_opt(&name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{kind} {name} was not installed"));
        let stored = serde_json::to_value(&stored).unwrap();
        assert_stored_as_rendered(&stored, rendered, &format!("{kind} {name}"));
        assert_eq!(
            stored["metadata"]["annotations"]["meta.helm.sh/release-name"],
            release.name.as_str()
        );
    }
    for crd in [
        "scaledobjects.spillway.dev",
        "triggerauthentications.spillway.dev",
        "clustertriggerauthentications.spillway.dev",
    ] {
        k8s::wait_crd_established(&admin, crd, Duration::from_secs(30)).await;
    }

    // Live, not only stored: kube-controller-manager makes the Deployment's two pods (they
    // stay Pending without a kubelet) as the release's ServiceAccount ...
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(admin.clone(), &release.namespace);
    let fullname = release.name.clone();
    common::eventually(
        "the Deployment's 2 pods",
        Duration::from_secs(60),
        || async {
            let deployment = deployments.get(&fullname).await.ok()?;
            (deployment.status?.replicas? == 2).then_some(())
        },
    )
    .await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(admin.clone(), &release.namespace);
    for pod in pods.list(&Default::default()).await.unwrap() {
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some(fullname.as_str())
        );
        let env = spec.containers[0].env.clone().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "SPILLWAY_SECRET_LABEL_SELECTOR"
                    && e.value.as_deref() == Some("spillway.dev/credentials=true"))
        );
    }
    // ... and the webhook is in force in the release's namespace: with no spillway answering,
    // a ScaledObject there is refused (fail closed), naming the webhook.
    let scaled_object = json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": "web", "namespace": release.namespace},
        "spec": {"scaleTargetRef": {"name": "web"}, "minReplicaCount": 0,
            "triggers": [{"cron": {"timezone": "UTC", "start": "0 6 * * *", "end": "0 20 * * *", "desiredReplicas": 3}}]}});
    // A dry run: the webhook is called (it declares no side effects), nothing is stored.
    let scaled_objects = k8s::api_for(&admin, &scaled_object).await;
    let dry_run = kube::api::PatchParams::apply("spillway-tests")
        .force()
        .dry_run();
    let refusal = common::eventually(
        "the webhook to refuse a ScaledObject",
        Duration::from_secs(30),
        || async {
            scaled_objects
                .patch("web", &dry_run, &kube::api::Patch::Apply(&scaled_object))
                .await
                .err()
        },
    )
    .await;
    assert!(
        refusal.to_string().contains("scaledobjects.spillway.dev"),
        "{refusal}"
    );

    let uninstalled = helm_ok(&[
        "uninstall",
        &release.name,
        "--namespace",
        &release.namespace,
        "--kubeconfig",
        &kubeconfig,
    ]);
    assert!(uninstalled.contains("uninstalled"), "{uninstalled}");
    for rendered in &objects {
        let (kind, _, name) = key(rendered);
        let api = k8s::api_for(&admin, rendered).await;
        common::eventually(
            &format!("{kind} {name} to be deleted"),
            Duration::from_secs(30),
            || async { api.get_opt(&name).await.ok()?.is_none().then_some(()) },
        )
        .await;
    }
    // The CRDs stay: deleting one would delete every ScaledObject in the cluster.
    let crds: kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        kube::Api::all(admin.clone());
    assert!(
        crds.get_opt(k8s::SCALED_OBJECT_CRD)
            .await
            .unwrap()
            .is_some()
    );
    let _ = namespaces
        .delete(&release.namespace, &DeleteParams::default())
        .await;
}
