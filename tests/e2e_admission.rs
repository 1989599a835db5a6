//! The ScaledObject admission webhook on the real control plane: `deploy/webhook.yaml`'s rules,
//! pointed at a `spillway serve` on loopback and limited to one fresh namespace, refuse a
//! tenant who may write ScaledObjects but not scale a StatefulSet, and let the same tenant
//! scale a Deployment it may scale.

mod common;

use std::time::Duration;

use base64::Engine;
use common::k8s;
use common::serve::Server;
use kube::api::DeleteParams;
use serde_json::{Value, json};

/// `spillway serve` connected to the control plane, serving the cluster CA's certificate for
/// localhost on a free port.
async fn start_spillway() -> (Server, u16) {
    let (port, metrics_port) = (common::free_port(), common::free_port());
    let config = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("admission")));
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: 127.0.0.1:{port}\n  metricsListen: 127.0.0.1:{metrics_port}\n  tls: {{certFile: {}, keyFile: {}}}\nscaledObjects: []\n",
            k8s::pki("spillway-serving.crt").display(),
            k8s::pki("spillway-serving.key").display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--kubeconfig")
        .arg(k8s::k8s_dir().join("spillway-client.kubeconfig"))
        .spawn()
        .expect("start spillway serve");
    let server = Server(child);
    common::eventually(
        "spillway to answer /healthz",
        Duration::from_secs(30),
        || async {
            let response = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
                .await
                .ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await;
    (server, port)
}

/// A client acting with the kubeconfig at `path`.
async fn client_from(path: &std::path::Path) -> kube::Client {
    let file = kube::config::Kubeconfig::read_from(path).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn scaled_object(ns: &str, name: &str, target: Value) -> Value {
    json!({"apiVersion": "spillway.dev/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"scaleTargetRef": target, "minReplicaCount": 0,
            "triggers": [{"cron": {"timezone": "UTC", "start": "0 6 * * *", "end": "0 20 * * *", "desiredReplicas": 3}}]}})
}

#[tokio::test]
async fn a_tenant_may_write_a_scaled_object_only_for_a_target_it_may_scale() {
    let admin = k8s::admin().await;
    k8s::install_spillway_access(&admin).await;
    for object in k8s::deploy_manifest("crd.yaml") {
        k8s::apply(&admin, object).await;
    }
    k8s::wait_crd_established(&admin, k8s::SCALED_OBJECT_CRD, Duration::from_secs(30)).await;
    let ns = k8s::namespace(&admin, "admission").await;
    let (_spillway, port) = start_spillway().await;

    // deploy/'s webhook, pointed at this spillway and limited to this test's namespace.
    let mut webhook = k8s::deploy_manifest("webhook.yaml").remove(0);
    let name = common::unique_name("spillway-admission");
    webhook["metadata"]["name"] = json!(name);
    let ca = std::fs::read(k8s::pki("ca.crt")).unwrap();
    webhook["webhooks"][0]["clientConfig"] = json!({
        "url": format!("https://localhost:{port}/validate/scaledobjects"),
        "caBundle": base64::engine::general_purpose::STANDARD.encode(ca),
    });
    webhook["webhooks"][0]["namespaceSelector"] =
        json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
    k8s::apply(&admin, webhook).await;

    // A tenant who may write ScaledObjects and scale Deployments, not StatefulSets.
    let tenant = "tenant";
    k8s::apply(
        &admin,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": tenant, "namespace": ns}}),
    )
    .await;
    k8s::apply(
        &admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": tenant, "namespace": ns},
            "rules": [
                {"apiGroups": ["spillway.dev"], "resources": ["scaledobjects"], "verbs": ["get", "create", "update", "patch"]},
                {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["update"]},
            ]}),
    )
    .await;
    k8s::apply(
        &admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": tenant, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": tenant},
            "subjects": [{"kind": "ServiceAccount", "name": tenant, "namespace": ns}]}),
    )
    .await;
    let as_tenant = client_from(&k8s::service_account_kubeconfig(&admin, &ns, tenant).await).await;
    let sos = k8s::dynamic_api(
        &admin,
        "spillway.dev",
        "v1alpha1",
        "ScaledObject",
        "scaledobjects",
        Some(&ns),
    );

    // Refused: the StatefulSet's scale is not the tenant's to set. Until kube-apiserver has
    // seen the webhook, the write goes through; it is removed and tried again.
    let statefulset = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db"});
    let refusal = common::eventually(
        "the webhook to refuse a StatefulSet target",
        Duration::from_secs(30),
        || async {
            match k8s::try_apply(&as_tenant, scaled_object(&ns, "db", statefulset.clone())).await {
                Err(kube::Error::Api(err)) => Some(err),
                Err(other) => panic!("unexpected error: {other}"),
                Ok(_) => {
                    let _ = sos.delete("db", &DeleteParams::default()).await;
                    None
                }
            }
        },
    )
    .await;
    println!("refused: {} {}", refusal.code, refusal.message);
    assert_eq!(refusal.code, 403, "{refusal:?}");
    let expected = format!(
        "User \"system:serviceaccount:{ns}:{tenant}\" may not update statefulsets.apps/scale \"db\" in namespace \"{ns}\""
    );
    assert!(refusal.message.contains(&expected), "{}", refusal.message);
    assert!(
        sos.get_opt("db").await.unwrap().is_none(),
        "the refused object was stored"
    );

    // Allowed: a Deployment it may scale (spillway asked, so the webhook is in force).
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"});
    k8s::try_apply(&as_tenant, scaled_object(&ns, "web", deployment))
        .await
        .expect("a ScaledObject for a Deployment the tenant may scale is accepted");
    // A scalingModifiers formula spillway cannot run is refused at the write, with the reason.
    let mut formula = scaled_object(&ns, "formula", json!({"name": "web"}));
    formula["spec"]["triggers"][0]["name"] = json!("office");
    formula["spec"]["advanced"] =
        json!({"scalingModifiers": {"formula": "office * hours", "target": 1}});
    let err = k8s::try_apply(&as_tenant, formula)
        .await
        .expect_err("a formula over an unknown name is refused");
    assert!(
        err.to_string()
            .contains("spec.advanced.scalingModifiers.formula: unknown name \"hours\""),
        "{err}"
    );
    assert!(sos.get_opt("formula").await.unwrap().is_none());
    // Switching the allowed object's target to the StatefulSet is refused too.
    let err = k8s::try_apply(&as_tenant, scaled_object(&ns, "web", statefulset))
        .await
        .expect_err("retargeting to a StatefulSet is refused");
    assert!(err.to_string().contains("statefulsets.apps/scale"), "{err}");

    let webhooks = k8s::dynamic_api(
        &admin,
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        None,
    );
    let _ = webhooks.delete(&name, &DeleteParams::default()).await;
}
