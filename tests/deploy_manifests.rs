//! `deploy/` cannot rot: the real kube-apiserver of the local control plane accepts the
//! kustomization (every object but cert-manager's validated and admitted by a server-side dry
//! run, nothing stored), every example ScaledObject against the installed CRD, and the default
//! install verifies TLS through a CA chain from cert-manager.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::k8s::{self, kubectl};
use kube::api::{Api, DeleteParams};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
        "Issuer",
        "Certificate",
    ] {
        assert!(
            kinds.contains(&kind),
            "deploy/ renders no {kind}: {kinds:?}"
        );
    }
    // cert-manager's kinds need its CRDs, which this control plane does not have: they are
    // checked by shape in the test below; everything else goes to kube-apiserver.
    let documents: Vec<&str> = rendered
        .split("\n---\n")
        .filter(|d| !d.contains("apiVersion: cert-manager.io/"))
        .collect();
    let without_cert_manager = repo()
        .join("target")
        .join(format!("{}.yaml", common::unique_name("deploy")));
    std::fs::write(&without_cert_manager, documents.join("\n---\n")).unwrap();
    // A dry run stores nothing, so the namespaced objects would not find a namespace the
    // same dry run "created": the namespace itself is applied for real first.
    kubectl(&["apply", "-f", "deploy/namespace.yaml"]);
    let applied = kubectl(&[
        "apply",
        "-f",
        without_cert_manager.to_str().unwrap(),
        "--dry-run=server",
    ]);
    std::fs::remove_file(&without_cert_manager).ok();
    let accepted = applied
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    assert_eq!(accepted, documents.len(), "{applied}");

    // The examples need the CRD itself, which the dry run did not store.
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "deploy/crd.yaml",
    ]);
    for crd in [
        "scaledobjects.spillway.dev",
        "triggerauthentications.spillway.dev",
        "clustertriggerauthentications.spillway.dev",
    ] {
        k8s::wait_crd_established(&admin, crd, Duration::from_secs(30)).await;
    }
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
fn the_default_install_verifies_tls_through_a_ca_chain_from_cert_manager() {
    let rendered = kubectl(&["kustomize", "deploy/"]);
    let documents: Vec<serde_json::Value> = rendered
        .split("\n---\n")
        .map(|d| serde_norway::from_str(d).unwrap())
        .collect();
    let of_kind = |kind: &'static str| documents.iter().filter(move |d| d["kind"] == kind);
    let named = |kind: &'static str, name: &str| {
        of_kind(kind)
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    // Nothing skips verification.
    assert!(
        !rendered.contains("insecureSkipTLSVerify: true"),
        "{rendered}"
    );

    // self-signed bootstrap Issuer -> CA Certificate -> CA Issuer -> serving Certificate.
    let serving = named("Certificate", "spillway-serving");
    let ca_issuer_name = serving["spec"]["issuerRef"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(serving["spec"]["issuerRef"]["kind"], "Issuer");
    let ca_issuer = named("Issuer", &ca_issuer_name);
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"]
        .as_str()
        .unwrap_or_else(|| panic!("the serving certificate's issuer is no CA Issuer: {ca_issuer}"))
        .to_owned();
    let ca = of_kind("Certificate")
        .find(|c| c["spec"]["secretName"] == ca_secret.as_str())
        .unwrap_or_else(|| panic!("no Certificate makes the CA Secret {ca_secret}"));
    assert_eq!(ca["spec"]["isCA"], true, "{ca}");
    let bootstrap = named("Issuer", ca["spec"]["issuerRef"]["name"].as_str().unwrap());
    assert!(bootstrap["spec"]["selfSigned"].is_object(), "{bootstrap}");
    assert_ne!(
        serving["spec"]["issuerRef"]["name"], ca["spec"]["issuerRef"]["name"],
        "the serving certificate must not be signed by the self-signed Issuer"
    );
    assert!(
        serving["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("spillway.spillway-system.svc")),
        "{serving}"
    );

    // Everything kube-apiserver calls trusts that CA, injected by cainjector.
    let inject_from = format!(
        "{}/{}",
        ca["metadata"]["namespace"].as_str().unwrap(),
        ca["metadata"]["name"].as_str().unwrap()
    );
    let apiservices: Vec<_> = of_kind("APIService").collect();
    assert_eq!(apiservices.len(), 2);
    for service in apiservices {
        assert_eq!(service["spec"]["insecureSkipTLSVerify"], false, "{service}");
        assert_eq!(
            service["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            inject_from.as_str()
        );
    }
    let webhook = of_kind("ValidatingWebhookConfiguration").next().unwrap();
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        inject_from.as_str()
    );
    assert_eq!(
        webhook["webhooks"][0]["clientConfig"]["service"]["path"],
        "/validate/scaledobjects"
    );
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Fail");

    // The pods serve the serving certificate's Secret.
    let deployment = of_kind("Deployment").next().unwrap();
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == serving["spec"]["secretName"]),
        "{deployment}"
    );
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
fn the_operator_rbac_may_ask_subject_access_reviews() {
    let rbac = common::k8s::deploy_manifest("rbac.yaml");
    let role = rbac
        .iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "spillway")
        .unwrap();
    assert!(
        role["rules"].as_array().unwrap().iter().any(|r| {
            r["apiGroups"] == serde_json::json!(["authorization.k8s.io"])
                && r["resources"] == serde_json::json!(["subjectaccessreviews"])
                && r["verbs"] == serde_json::json!(["create"])
        }),
        "{role}"
    );
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

/// Issue 16: `/metrics` listens on the pod's IP in the default install, not on every
/// interface, and the probes do not depend on it.
#[test]
fn the_default_install_serves_metrics_on_the_pod_ip_only() {
    let deployment = common::k8s::deploy_manifest("deployment.yaml")
        .into_iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"].as_array().unwrap();
    let position = |name: &str| {
        env.iter()
            .position(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}: {env:?}"))
    };
    let (pod_ip, listen) = (position("POD_IP"), position("SPILLWAY_METRICS_LISTEN"));
    assert_eq!(
        env[pod_ip]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP",
        "{env:?}"
    );
    // Kubernetes expands $(VAR) only from variables defined earlier in the list.
    assert!(pod_ip < listen, "POD_IP must come first: {env:?}");
    let value = env[listen]["value"].as_str().unwrap();
    let metrics_port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .unwrap()["containerPort"]
        .as_u64()
        .unwrap();
    // What the kubelet gives spillway on an IPv4 and on an IPv6 cluster.
    for (ip, expected) in [
        ("10.244.1.7", "10.244.1.7"),
        ("fd00:10:244::7", "fd00:10:244::7"),
    ] {
        let address = spillway::config::parse_listen_address(&value.replace("$(POD_IP)", ip))
            .unwrap_or_else(|err| panic!("{value} with POD_IP={ip}: {err}"));
        assert_eq!(address.ip().to_string(), expected);
        assert_eq!(u64::from(address.port()), metrics_port);
    }
    // The probes ask the API port's plain-HTTP health paths, not /metrics.
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["port"], "https", "{probe}: {get}");
        assert!(
            ["/livez", "/readyz"].contains(&get["path"].as_str().unwrap()),
            "{probe}: {get}"
        );
    }
    // The ConfigMap no longer puts /metrics on every interface.
    let text = std::fs::read_to_string(repo().join("deploy/configmap.yaml")).unwrap();
    let map: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let config = map["data"]["config.yaml"].as_str().unwrap();
    let file = std::env::temp_dir().join(format!("{}.yaml", common::unique_name("cm")));
    std::fs::write(&file, config).unwrap();
    let loaded = spillway::config::Config::load(&file).unwrap();
    std::fs::remove_file(&file).ok();
    assert!(
        !loaded.server.metrics_listen.ip().is_unspecified(),
        "metricsListen {} listens on every interface",
        loaded.server.metrics_listen
    );
}
