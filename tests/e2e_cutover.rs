//! The cutover from KEDA (README, "Coming from KEDA: cutover") on the real control plane and a
//! real Kafka backlog. KEDA cannot run here, so a Helm release `keda` stands in for what a KEDA
//! install leaves in a cluster: the APIService v1beta1.external.metrics.k8s.io, owned by that
//! release and pointing at keda-operator-metrics-apiserver (which does not exist), and an HPA
//! `keda-hpa-<name>` on each of two targets. `orders` moves over the pause way (KEDA's HPA
//! deleted), `payments` the hand-over way (KEDA's HPA annotated `spillway.dev/transfer-to` and
//! adopted by the imported object, which names it).
//!
//! The APIService is one per cluster and the other e2e binaries register it for their own
//! spillway; cargo runs test binaries one after another, and this file puts back the
//! APIService it found (e2e tests of another checkout on the same control plane at the same
//! time would see the switch). Times (switch to the HPA's first read, to the new replica count) are
//! printed: run with `--nocapture`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::helm::{ValuesFile, helm, helm_ok};
use common::k8s::{self, SpillwayController};
use common::replicas::{ReplicaRecorder, replicas};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

const EXTERNAL: &str = "v1beta1.external.metrics.k8s.io";

fn kubeconfig() -> String {
    k8s::k8s_dir()
        .join("admin.kubeconfig")
        .to_str()
        .unwrap()
        .to_owned()
}

/// kubectl as the admin, `stdin` piped in; its output whatever the exit status.
fn kubectl_with(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(k8s::k8s_dir().join("bin/kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A chart holding only what KEDA's chart installs that matters to a cutover: the external
/// metrics APIService, pointing at KEDA's metrics server Service in the release's namespace.
fn fake_keda_chart() -> PathBuf {
    let dir = std::env::temp_dir().join(common::unique_name("fake-keda-chart"));
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: keda\nversion: 2.20.0\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("templates/apiservice.yaml"),
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata:\n  name: v1beta1.external.metrics.k8s.io\n  labels:\n    app.kubernetes.io/name: keda-operator-metrics-apiserver\nspec:\n  service:\n    name: keda-operator-metrics-apiserver\n    namespace: {{ .Release.Namespace }}\n    port: 443\n  group: external.metrics.k8s.io\n  version: v1beta1\n  groupPriorityMinimum: 100\n  versionPriority: 100\n  insecureSkipTLSVerify: true\n",
    )
    .unwrap();
    dir
}

/// `helm upgrade --install keda` of the fake chart: installs KEDA's APIService, or puts it
/// back when it was deleted (a rollback's first step).
fn install_fake_keda(chart: &std::path::Path, namespace: &str) {
    helm_ok(&[
        "upgrade",
        "--install",
        "keda",
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--create-namespace",
        "--kubeconfig",
        &kubeconfig(),
    ]);
}

/// The external metrics APIService as stored, or None.
fn external_api_service() -> Option<Value> {
    let output = kubectl_with(
        &[
            "get",
            "apiservice",
            EXTERNAL,
            "-o",
            "json",
            "--ignore-not-found",
        ],
        "",
    );
    let text = String::from_utf8_lossy(&output.stdout);
    (!text.trim().is_empty()).then(|| serde_json::from_str(&text).unwrap())
}

/// `namespace/name` of the Service the external metrics APIService routes to.
fn external_points_at() -> Option<String> {
    let service = external_api_service()?;
    let at = &service["spec"]["service"];
    Some(format!(
        "{}/{}",
        at["namespace"].as_str()?,
        at["name"].as_str()?
    ))
}

/// Everything the test creates, removed when dropped (also when it fails), and the external
/// metrics APIService put back as it was found.
struct Cutover {
    found: Option<Value>,
    keda_namespace: String,
    spillway_release: String,
    spillway_namespace: String,
    chart: PathBuf,
    namespaces: Vec<String>,
}

impl Drop for Cutover {
    fn drop(&mut self) {
        let kubeconfig = kubeconfig();
        for (release, namespace) in [
            (
                self.spillway_release.as_str(),
                self.spillway_namespace.as_str(),
            ),
            ("keda", self.keda_namespace.as_str()),
        ] {
            helm(&[
                "uninstall",
                release,
                "--namespace",
                namespace,
                "--ignore-not-found",
                "--kubeconfig",
                &kubeconfig,
            ]);
        }
        kubectl_with(
            &["delete", "apiservice", EXTERNAL, "--ignore-not-found"],
            "",
        );
        if let Some(found) = &self.found {
            let mut object = found.clone();
            let metadata = object["metadata"].as_object_mut().unwrap();
            for key in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "managedFields",
                "generation",
            ] {
                metadata.remove(key);
            }
            object.as_object_mut().unwrap().remove("status");
            let restored = kubectl_with(&["create", "-f", "-"], &object.to_string());
            if !restored.status.success() {
                eprintln!(
                    "could not restore APIService {EXTERNAL}: {}",
                    String::from_utf8_lossy(&restored.stderr)
                );
            }
        }
        let mut delete = vec!["delete", "namespace", "--ignore-not-found", "--wait=false"];
        let all: Vec<&str> = self
            .namespaces
            .iter()
            .map(String::as_str)
            .chain([
                self.keda_namespace.as_str(),
                self.spillway_namespace.as_str(),
            ])
            .collect();
        delete.extend(all);
        kubectl_with(&delete, "");
        std::fs::remove_dir_all(&self.chart).ok();
    }
}

/// The HPA's ScalingActive condition as (status, reason, message).
async fn scaling_active(
    hpas: &Api<HorizontalPodAutoscaler>,
    name: &str,
) -> Option<(String, String, String)> {
    let hpa = hpas.get_opt(name).await.ok()??;
    hpa.status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == "ScalingActive")
        .map(|c| {
            (
                c.status,
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default(),
            )
        })
}

/// Waits until the HPA's ScalingActive condition has `status`; the condition.
async fn wait_scaling_active(
    hpas: &Api<HorizontalPodAutoscaler>,
    name: &str,
    status: &str,
    timeout: Duration,
) -> (String, String, String) {
    common::eventually(
        &format!("HPA {name} ScalingActive={status}"),
        timeout,
        || async {
            scaling_active(hpas, name)
                .await
                .filter(|(s, _, _)| s == status)
        },
    )
    .await
}

/// A KEDA ScaledObject as a KEDA user has it, on the harness's Kafka.
/// KEDA's ScaledObject `name` for the Deployment `<name>-consumer`; with `handed_over`, it
/// keeps KEDA's HPA (`keda-hpa-<name>`), as KEDA's `transfer-hpa-ownership` does.
fn keda_scaled_object(ns: &str, name: &str, topic: &str, group: &str, handed_over: bool) -> String {
    let (annotations, advanced) = if handed_over {
        (
            "\n  annotations:\n    scaledobject.keda.sh/transfer-hpa-ownership: 'true'".to_owned(),
            format!(
                "\n  advanced:\n    horizontalPodAutoscalerConfig:\n      name: keda-hpa-{name}"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        "apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {name}
  namespace: {ns}{annotations}
spec:
  scaleTargetRef:
    name: {name}-consumer{advanced}
  pollingInterval: 1
  maxReplicaCount: 10
  triggers:
  - type: kafka
    metadata:
      bootstrapServers: {bootstrap}
      consumerGroup: {group}
      topic: {topic}
      lagThreshold: '10'
      allowIdleConsumers: 'true'
",
        bootstrap = common::kafka::bootstrap()
    )
}

/// With KEDA's APIService in place, `helm install` of spillway's APIService is refused and a
/// server-side `kubectl apply` of deploy/'s conflicts, both leaving it as it was; beside
/// KEDA (`apiService.enabled=false`) spillway installs, and a ScaledObject imported from KEDA's
/// holds the target's replicas while the APIService still routes to KEDA. Switched to
/// spillway (KEDA's deleted, `helm upgrade --set apiService.enabled=true`), the HPA reads
/// spillway's metric and scales; rolled back (`apiService.enabled=false`, KEDA's release
/// upgraded again), the replicas hold while the backlog drains.
#[tokio::test]
async fn a_cutover_from_keda_never_drops_replicas_and_rolls_back() {
    let admin = k8s::admin().await;
    let kubeconfig = kubeconfig();
    let sa_kubeconfig = k8s::install_spillway(&admin).await;
    let mut guard = Cutover {
        found: external_api_service(),
        keda_namespace: common::unique_name("e2e-cutover-keda"),
        spillway_release: common::unique_name("spillway-cutover"),
        spillway_namespace: common::unique_name("e2e-cutover-spillway"),
        chart: fake_keda_chart(),
        namespaces: Vec::new(),
    };
    let keda_service = format!("{}/keda-operator-metrics-apiserver", guard.keda_namespace);

    // KEDA as a cluster has it: its APIService (the e2e one this test found is put back at
    // the end) ...
    kubectl_with(
        &["delete", "apiservice", EXTERNAL, "--ignore-not-found"],
        "",
    );
    install_fake_keda(&guard.chart, &guard.keda_namespace);
    let keda_api = external_api_service().expect("KEDA's APIService");
    assert_eq!(
        keda_api["metadata"]["annotations"]["meta.helm.sh/release-name"],
        "keda"
    );
    assert_eq!(external_points_at().as_deref(), Some(keda_service.as_str()));

    // ... and its HPA on a consumer at 3 replicas over a backlog of 60 (6 replicas' worth).
    let ns = k8s::namespace(&admin, "e2e-cutover").await;
    guard.namespaces.push(ns.clone());
    let topic = common::kafka::create_topic(3).await;
    common::kafka::produce(&topic, &[20, 20, 20], Duration::ZERO).await;
    let group = common::unique_name("e2e-cutover-group");
    common::kafka::commit(&group, &[(&topic, 0, 0), (&topic, 1, 0), (&topic, 2, 0)]);
    // Two consumers on that backlog: `orders` moves over with KEDA paused (KEDA deletes its
    // HPA), `payments` with its HPA handed over to spillway (KEDA's object deleted with
    // `--cascade=orphan`, the HPA annotated `spillway.dev/transfer-to`).
    let keda_hpa_of = |name: &str| {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": format!("keda-hpa-{name}"), "namespace": ns,
                "labels": {"app.kubernetes.io/managed-by": "keda-operator", "scaledobject.keda.sh/name": name}},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("{name}-consumer")},
                "minReplicas": 1, "maxReplicas": 10,
                "metrics": [{"type": "External", "external": {
                    "metric": {"name": format!("s0-kafka-{topic}"),
                        "selector": {"matchLabels": {"scaledobject.keda.sh/name": name}}},
                    "target": {"type": "AverageValue", "averageValue": "10"}}}]}})
    };
    for name in ["orders", "payments"] {
        let consumer = format!("{name}-consumer");
        k8s::apply(
            &admin,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": consumer, "namespace": ns},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": consumer}},
                    "template": {"metadata": {"labels": {"app": consumer}},
                        "spec": {"containers": [{"name": "consumer", "image": "registry.k8s.io/pause:3.10"}]}}}}),
        )
        .await;
        k8s::apply(&admin, keda_hpa_of(name)).await;
    }
    let keda_hpa = keda_hpa_of("orders");
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);
    let recorder = ReplicaRecorder::start(deployments.clone(), "orders-consumer");
    let handed_recorder = ReplicaRecorder::start(deployments.clone(), "payments-consumer");
    let (status, reason, _) =
        wait_scaling_active(&hpas, "keda-hpa-orders", "False", Duration::from_secs(30)).await;
    println!("KEDA's HPA with KEDA's metrics server gone: ScalingActive={status} {reason}");

    // 1. Refused: spillway's chart with its APIService ...
    let ca = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(k8s::pki("ca.crt")).unwrap())
    };
    let values = |api_service: bool| {
        ValuesFile::new(&json!({
            "apiService": {"enabled": api_service},
            "webhook": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": guard.spillway_namespace}}},
            "servingCert": {"source": "secret", "secretName": "spillway-serving", "caBundle": ca},
        }))
    };
    let install = |values: &ValuesFile| {
        helm(&[
            "install",
            &guard.spillway_release,
            "deploy/helm/spillway",
            "--namespace",
            &guard.spillway_namespace,
            "--create-namespace",
            "--force-conflicts",
            "--values",
            values.path(),
            "--kubeconfig",
            &kubeconfig,
        ])
    };
    let with_api_service = values(true);
    let refused = install(&with_api_service);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    println!("helm install with apiService.enabled=true: {}", said.trim());
    assert!(!refused.status.success(), "{refused:?}");
    assert!(said.contains("invalid ownership metadata"), "{said}");
    assert!(said.contains(EXTERNAL), "{said}");
    assert!(
        !helm(&[
            "status",
            &guard.spillway_release,
            "--namespace",
            &guard.spillway_namespace,
            "--kubeconfig",
            &kubeconfig
        ])
        .status
        .success(),
        "a refused install left a release"
    );
    assert_eq!(external_points_at().as_deref(), Some(keda_service.as_str()));
    // ... and deploy/'s APIService applied server-side: the fields are Helm's (KEDA's).
    let kustomized = k8s::kubectl(&["kustomize", "deploy/"]);
    let deploy_api_service = k8s::yaml_documents(&kustomized, "kubectl kustomize deploy/")
        .into_iter()
        .find(|o| o["kind"] == "APIService" && o["metadata"]["name"] == EXTERNAL)
        .expect("deploy/ has the external metrics APIService");
    let conflict = kubectl_with(
        &["apply", "--server-side", "-f", "-"],
        &deploy_api_service.to_string(),
    );
    let said = String::from_utf8_lossy(&conflict.stderr).into_owned();
    println!(
        "kubectl apply --server-side of deploy/'s APIService: {}",
        said.trim()
    );
    assert!(!conflict.status.success(), "{conflict:?}");
    assert!(said.contains("conflict"), "{said}");
    assert_eq!(external_points_at().as_deref(), Some(keda_service.as_str()));

    // 2. Beside KEDA: installed without the APIService.
    let beside = values(false);
    let installed = install(&beside);
    assert!(installed.status.success(), "helm install: {installed:?}");
    let upgrade_api_service = |enabled: bool| {
        helm_ok(&[
            "upgrade",
            &guard.spillway_release,
            "deploy/helm/spillway",
            "--namespace",
            &guard.spillway_namespace,
            "--reuse-values",
            "--set",
            &format!("apiService.enabled={enabled}"),
            "--kubeconfig",
            &kubeconfig,
        ])
    };
    assert_eq!(external_points_at().as_deref(), Some(keda_service.as_str()));

    // 3. Imported from KEDA's ScaledObject; KEDA's paused (it deletes its HPA, as here).
    let keda_file = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("keda-so")));
    let keda_objects = [
        keda_scaled_object(&ns, "orders", &topic, &group, false),
        keda_scaled_object(&ns, "payments", &topic, &group, true),
    ]
    .join("---\n");
    std::fs::write(&keda_file, keda_objects).unwrap();
    let imported = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["import-keda", "-f"])
        .arg(&keda_file)
        .output()
        .expect("run spillway import-keda");
    std::fs::remove_file(&keda_file).ok();
    assert!(imported.status.success(), "import-keda: {imported:?}");
    let imported = String::from_utf8(imported.stdout).unwrap();
    let objects = k8s::yaml_documents(&imported, "import-keda");
    assert_eq!(objects.len(), 2, "{imported}");
    assert_eq!(objects[0]["spec"]["minReplicaCount"], 0, "{imported}");
    assert_eq!(
        objects[1]["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"],
        "keda-hpa-payments",
        "{imported}"
    );
    hpas.delete("keda-hpa-orders", &DeleteParams::default())
        .await
        .expect("delete KEDA's HPA");
    // The hand-over: whoever may edit the HPA gives it to spillway's object of that name.
    k8s::kubectl(&[
        "annotate",
        "hpa",
        "keda-hpa-payments",
        "-n",
        &ns,
        "spillway.dev/transfer-to=payments",
    ]);
    let controller = SpillwayController::start(
        &sa_kubeconfig,
        k8s::spillway_port(),
        &common::unique_name("e2e-cutover-lease"),
        "e2e-cutover",
        None,
    )
    .await;
    k8s::apply(&admin, objects[0].clone()).await;
    k8s::apply(&admin, objects[1].clone()).await;
    // spillway takes KEDA's HPA over: owned by its object, reading spillway's metric (which
    // nothing serves yet, so it holds).
    let adopted = common::eventually(
        "spillway to adopt keda-hpa-payments",
        Duration::from_secs(60),
        || async {
            let hpa = hpas.get("keda-hpa-payments").await.ok()?;
            let owned = hpa
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "ScaledObject" && o.name == "payments");
            let metric = hpa
                .spec
                .as_ref()?
                .metrics
                .as_ref()?
                .first()?
                .external
                .as_ref()?;
            let selects_spillway = metric
                .metric
                .selector
                .as_ref()?
                .match_labels
                .as_ref()?
                .get("scaledobject.spillway.dev/name")
                .is_some_and(|v| v == "payments");
            (owned && selects_spillway).then_some(hpa)
        },
    )
    .await;
    println!(
        "keda-hpa-payments handed over: owned by ScaledObject payments, labels {:?}",
        adopted.metadata.labels.unwrap_or_default()
    );

    // While the APIService routes to KEDA, spillway's HPA reads nothing and holds; spillway
    // itself sees the backlog (Active), so nothing goes to zero.
    let (_, reason, message) =
        wait_scaling_active(&hpas, "spillway-orders", "False", Duration::from_secs(60)).await;
    println!("spillway's HPA before the switch: ScalingActive=False {reason}: {message}");
    let sos = k8s::dynamic_api(
        &admin,
        "spillway.dev",
        "v1alpha1",
        "ScaledObject",
        "scaledobjects",
        Some(&ns),
    );
    common::eventually(
        "the ScaledObject to be Active",
        Duration::from_secs(30),
        || async {
            let so = sos.get("orders").await.ok()?;
            so.data["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Active" && c["status"] == "True")
                .then_some(())
        },
    )
    .await;
    // Several HPA syncs (every 2 s here) and spillway polls (every 1 s).
    tokio::time::sleep(Duration::from_secs(10)).await;
    for (consumer, recorded) in [
        ("orders-consumer", &recorder),
        ("payments-consumer", &handed_recorder),
    ] {
        assert_eq!(replicas(&deployments, consumer).await, 3, "{consumer}");
        assert_eq!(
            recorded.lowest_since(Duration::ZERO).await,
            Some(3),
            "{}",
            recorded.describe()
        );
    }

    // 4. The switch: KEDA's APIService out, spillway's in (the release's points at its
    // Service, which has no pods without a kubelet: repointed at the loopback spillway).
    let switch = Instant::now();
    k8s::kubectl(&["delete", "apiservice", EXTERNAL]);
    upgrade_api_service(true);
    let owned = external_api_service().expect("spillway's APIService");
    assert_eq!(
        owned["metadata"]["annotations"]["meta.helm.sh/release-name"],
        guard.spillway_release.as_str()
    );
    k8s::register_api_service(&admin, "external.metrics.k8s.io", "v1beta1").await;
    let (_, reason, _) =
        wait_scaling_active(&hpas, "spillway-orders", "True", Duration::from_secs(60)).await;
    let first_read = switch.elapsed();
    common::eventually(
        "the target to reach ceil(60 / 10) = 6 replicas",
        Duration::from_secs(60),
        || async { (replicas(&deployments, "orders-consumer").await == 6).then_some(()) },
    )
    .await;
    let scaled = switch.elapsed();
    println!(
        "switch -> HPA's first read ({reason}) {:.1} s, -> 6 replicas {:.1} s",
        first_read.as_secs_f64(),
        scaled.as_secs_f64()
    );
    common::eventually(
        "the handed-over HPA to take payments to 6 replicas",
        Duration::from_secs(60),
        || async { (replicas(&deployments, "payments-consumer").await == 6).then_some(()) },
    )
    .await;
    println!(
        "switch -> handed-over keda-hpa-payments at 6 replicas {:.1} s",
        switch.elapsed().as_secs_f64()
    );

    // 5. Rollback: spillway's APIService out, KEDA's back. The backlog is consumed meanwhile
    // (the HPA would want 1), yet the replicas hold at 6.
    let rollback = Instant::now();
    let rolled_back_at = recorder.elapsed();
    upgrade_api_service(false);
    assert_eq!(external_points_at(), None);
    install_fake_keda(&guard.chart, &guard.keda_namespace);
    assert_eq!(external_points_at().as_deref(), Some(keda_service.as_str()));
    common::kafka::commit(&group, &[(&topic, 0, 20), (&topic, 1, 20), (&topic, 2, 20)]);
    let (_, reason, _) =
        wait_scaling_active(&hpas, "spillway-orders", "False", Duration::from_secs(60)).await;
    println!(
        "rollback -> spillway's HPA stops reading ({reason}) {:.1} s",
        rollback.elapsed().as_secs_f64()
    );
    // Past the 10 s downscale stabilization.
    tokio::time::sleep(Duration::from_secs(15)).await;
    for recorded in [&recorder, &handed_recorder] {
        assert_eq!(
            recorded.lowest_since(rolled_back_at).await,
            Some(6),
            "{}",
            recorded.describe()
        );
    }
    sos.delete("payments", &DeleteParams::default()).await.ok();
    // KEDA unpaused takes over with its own HPA once spillway's object is gone.
    sos.delete("orders", &DeleteParams::default()).await.ok();
    common::eventually("spillway's HPA to go", Duration::from_secs(30), || async {
        matches!(hpas.get_opt("spillway-orders").await, Ok(None)).then_some(())
    })
    .await;
    k8s::apply(&admin, keda_hpa).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&deployments, "orders-consumer").await, 6);
    println!("replicas: {}", recorder.describe());

    drop(controller);
    common::kafka::delete_topic(&topic).await;
    drop(guard);
}
