//! `deploy/` cannot rot: the real kube-apiserver of the local control plane accepts the
//! kustomization (`kubectl apply -k deploy/ --dry-run=server`, every object validated and
//! admitted, nothing stored), every example ScaledObject against the installed CRD, and the
//! cert-manager component renders the verified-TLS variant.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::k8s;
use kube::api::{Api, DeleteParams};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the control plane's own kubectl as the admin; stdout, or a panic with stderr.
fn kubectl(args: &[&str]) -> String {
    let output = Command::new(k8s::k8s_dir().join("bin/kubectl"))
        .arg("--kubeconfig")
        .arg(k8s::k8s_dir().join("admin.kubeconfig"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The end-to-end tests register spillway on loopback under the same names (an ExternalName
/// Service, APIServices with a caBundle); a dry run is judged against what is stored, so
/// those go first. Each e2e test registers them again itself.
async fn remove_loopback_registration(admin: &kube::Client) {
    let apiservices = k8s::dynamic_api(
        admin,
        "apiregistration.k8s.io",
        "v1",
        "APIService",
        "apiservices",
        None,
    );
    for name in [
        "v1beta1.external.metrics.k8s.io",
        "v1beta2.custom.metrics.k8s.io",
    ] {
        let _ = apiservices.delete(name, &DeleteParams::default()).await;
    }
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(admin.clone(), k8s::SPILLWAY_NAMESPACE);
    let _ = services
        .delete(k8s::SPILLWAY_SERVICE, &DeleteParams::default())
        .await;
    common::eventually(
        "the loopback registration to be gone",
        Duration::from_secs(30),
        || async {
            let gone = apiservices
                .get_opt("v1beta1.external.metrics.k8s.io")
                .await
                .ok()?
                .is_none()
                && services
                    .get_opt(k8s::SPILLWAY_SERVICE)
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_kustomization_and_the_examples_are_accepted_by_kube_apiserver() {
    let admin = k8s::admin().await;
    remove_loopback_registration(&admin).await;

    let rendered = kubectl(&["kustomize", "deploy/"]);
    let kinds: Vec<&str> = rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "APIService",
        "ValidatingWebhookConfiguration",
    ] {
        assert!(
            kinds.contains(&kind),
            "deploy/ renders no {kind}: {kinds:?}"
        );
    }
    // A dry run stores nothing, so the namespaced objects would not find a namespace the
    // same dry run "created": the namespace itself is applied for real first.
    kubectl(&["apply", "-f", "deploy/namespace.yaml"]);
    let applied = kubectl(&["apply", "-k", "deploy/", "--dry-run=server"]);
    let accepted = applied
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    assert_eq!(accepted, kinds.len(), "{applied}");

    // The examples need the CRD itself, which the dry run did not store.
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "deploy/crd.yaml",
    ]);
    k8s::wait_crd_established(
        &admin,
        "scaledobjects.spillway.dev",
        Duration::from_secs(30),
    )
    .await;
    let examples = kubectl(&["apply", "-f", "deploy/examples/", "--dry-run=server"]);
    let accepted = examples
        .lines()
        .filter(|l| l.contains("scaledobject.spillway.dev/") && l.ends_with("(server dry run)"))
        .count();
    let files = std::fs::read_dir(repo().join("deploy/examples"))
        .unwrap()
        .count();
    assert_eq!(accepted, files, "{examples}");
}

#[test]
fn the_cert_manager_component_verifies_the_serving_certificate() {
    // An overlay of the default install with the component, as the kustomization's comment
    // tells users to write it.
    // Kustomize wants relative paths: the overlay lives two levels under the repository.
    let overlay = repo().join("target").join(common::unique_name("overlay"));
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../deploy]\ncomponents: [../../deploy/cert-manager]\n",
    )
    .unwrap();
    let rendered = kubectl(&["kustomize", overlay.to_str().unwrap()]);
    std::fs::remove_dir_all(&overlay).ok();
    let documents: Vec<serde_json::Value> = rendered
        .split("\n---\n")
        .map(|d| serde_norway::from_str(d).unwrap())
        .collect();
    let of_kind = |kind: &'static str| documents.iter().filter(move |d| d["kind"] == kind);
    let apiservices: Vec<_> = of_kind("APIService").collect();
    assert_eq!(apiservices.len(), 2);
    for service in apiservices {
        assert_eq!(service["spec"]["insecureSkipTLSVerify"], false, "{service}");
        assert_eq!(
            service["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "spillway-system/spillway-serving"
        );
    }
    assert_eq!(of_kind("Certificate").count(), 1);
    let deployment = of_kind("Deployment").next().unwrap();
    let mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap();
    assert!(
        mounts.iter().any(|m| m["mountPath"] == "/etc/spillway/tls"),
        "{deployment}"
    );
    let config = of_kind("ConfigMap").next().unwrap()["data"]["config.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    // The served config is one spillway accepts.
    let file = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("tls-config")));
    std::fs::write(&file, &config).unwrap();
    let loaded =
        spillway::config::Config::load(Path::new(&file)).expect("the ConfigMap's config loads");
    assert!(loaded.server.tls.is_some(), "{config}");
}

#[test]
fn the_default_config_map_is_a_valid_spillway_config() {
    let text = std::fs::read_to_string(repo().join("deploy/configmap.yaml")).unwrap();
    let map: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let file = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("cm")));
    std::fs::write(&file, map["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let loaded =
        spillway::config::Config::load(&file).expect("deploy/configmap.yaml's config loads");
    assert!(loaded.scaled_objects.is_empty());
    assert_eq!(loaded.server.listen.port(), 6443);
}
