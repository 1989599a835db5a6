//! Fixtures on the local control plane (`scripts/k8s.sh`): clients with the generated
//! identities, server-side apply of plain JSON manifests, a `spillway serve` registered
//! with the aggregator through an ExternalName Service `localhost` and an APIService, and
//! spillway installed from `deploy/` with `spillway run` acting as its ServiceAccount.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::json;

/// The port the e2e spillway listens on; the APIService points at it, so one control plane
/// has one. `SPILLWAY_E2E_PORT` moves it, for a second control plane on the same machine.
/// Below Linux's ephemeral range (32768-60999): a port in it is now and then the local end of
/// some outgoing connection (kube-apiserver's to etcd) when a test binds it.
pub fn spillway_port() -> u16 {
    match std::env::var("SPILLWAY_E2E_PORT") {
        Ok(port) => port
            .parse()
            .unwrap_or_else(|_| panic!("SPILLWAY_E2E_PORT={port:?} is not a port")),
        Err(_) => 31450,
    }
}
/// Where the aggregator looks for spillway (the serving certificate names this Service).
pub const SPILLWAY_NAMESPACE: &str = "spillway-system";
pub const SPILLWAY_SERVICE: &str = "spillway";

/// Files of the generated PKI and kubeconfigs.
pub fn k8s_dir() -> PathBuf {
    PathBuf::from(super::endpoint("SPILLWAY_K8S_DIR"))
}

pub fn pki(name: &str) -> PathBuf {
    k8s_dir().join("pki").join(name)
}

/// A client acting as the user of `<identity>.kubeconfig` (admin, nobody, spillway-client).
pub async fn client_as(identity: &str) -> kube::Client {
    let path = k8s_dir().join(format!("{identity}.kubeconfig"));
    let file = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
    kube::Client::try_from(config).expect("client")
}

pub async fn admin() -> kube::Client {
    client_as("admin").await
}

/// A Deployment `name` of one pause container at 1 replica: Pending for ever without a
/// kubelet, but its ReplicaSet reports the count, which is all an HPA needs.
pub async fn pause_deployment(client: &kube::Client, ns: &str, name: &str) {
    apply(
        client,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "worker", "image": "registry.k8s.io/pause:3.10"}]}}}}),
    )
    .await;
}

/// Server-side applies one object given as JSON (apiVersion, kind, metadata.name and, when
/// namespaced, metadata.namespace set) and returns what the API server stored.
pub async fn apply(client: &kube::Client, object: serde_json::Value) -> DynamicObject {
    let kind = object["kind"].as_str().expect("kind").to_owned();
    let name = object["metadata"]["name"]
        .as_str()
        .expect("metadata.name")
        .to_owned();
    try_apply(client, object)
        .await
        .unwrap_or_else(|err| panic!("apply {kind} {name}: {err}"))
}

/// [`apply`], with the API server's refusal returned instead of a panic.
pub async fn try_apply(
    client: &kube::Client,
    object: serde_json::Value,
) -> Result<DynamicObject, kube::Error> {
    let api = api_for(client, &object).await;
    let name = object["metadata"]["name"].as_str().expect("metadata.name");
    api.patch(
        name,
        &PatchParams::apply("spillway-tests").force(),
        &Patch::Apply(&object),
    )
    .await
}

/// An `Api` for the kind of `object` (apiVersion and kind set), found by discovery, in its
/// `metadata.namespace` when the kind is namespaced.
pub async fn api_for(client: &kube::Client, object: &serde_json::Value) -> Api<DynamicObject> {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let kind = object["kind"].as_str().expect("kind");
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|err| panic!("discover {api_version} {kind}: {err}"));
    match object["metadata"]["namespace"].as_str() {
        Some(ns) if capabilities.scope == kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        _ => Api::all_with(client.clone(), &resource),
    }
}

/// An `Api` for any kind, namespaced when `namespace` is given.
pub fn dynamic_api(
    client: &kube::Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// spillway's ScaledObjects in `namespace`, or in every namespace.
pub fn scaled_objects(client: &kube::Client, namespace: Option<&str>) -> Api<DynamicObject> {
    dynamic_api(
        client,
        "spillway.dev",
        "v1alpha1",
        "ScaledObject",
        "scaledobjects",
        namespace,
    )
}

/// A fresh namespace for one test.
pub async fn namespace(client: &kube::Client, prefix: &str) -> String {
    let name = super::unique_name(prefix).replace('_', "-");
    apply(
        client,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .await;
    name
}

/// Deletes the namespaces whose name starts with `prefix` and are not being deleted already:
/// what earlier runs of a test file left (a failed test leaves its own), so no controller
/// keeps reconciling what is in them.
pub async fn delete_namespaces_starting_with(client: &kube::Client, prefix: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for namespace in namespaces
        .list(&kube::api::ListParams::default())
        .await
        .expect("list namespaces")
        .items
    {
        let name = namespace.metadata.name.unwrap_or_default();
        if name.starts_with(prefix) && namespace.metadata.deletion_timestamp.is_none() {
            let _ = namespaces
                .delete(&name, &kube::api::DeleteParams::default())
                .await;
        }
    }
}

/// What spillway needs from the cluster to serve as an aggregated API server: its user
/// (`spillway`, from the generated client certificate) may create TokenReviews and
/// SubjectAccessReviews and read the authentication ConfigMap, and the ExternalName Service
/// `localhost` the APIService points at.
pub async fn install_spillway_access(client: &kube::Client) {
    apply(
        client,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "spillway-e2e:system:auth-delegator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "spillway"}]}),
    )
    .await;
    apply(
        client,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "spillway-e2e-auth-reader", "namespace": "kube-system"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "spillway"}]}),
    )
    .await;
    apply(
        client,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SPILLWAY_NAMESPACE}}),
    )
    .await;
    install_spillway_service(client).await;
}

/// The ExternalName Service `localhost` the APIService points at (its namespace must exist).
pub async fn install_spillway_service(client: &kube::Client) {
    // Endpoints refuse loopback addresses; an ExternalName Service does not need any, and the
    // aggregator resolves it to https://localhost:<APIService port>.
    apply(
        client,
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": SPILLWAY_SERVICE, "namespace": SPILLWAY_NAMESPACE},
            "spec": {"type": "ExternalName", "externalName": "localhost",
                     "ports": [{"name": "https", "port": spillway_port(), "protocol": "TCP"}]}}),
    )
    .await;
}

/// Registers `group/version` as served by spillway on [`spillway_port`], trusting the
/// cluster CA that signed spillway's serving certificate.
pub async fn register_api_service(client: &kube::Client, group: &str, version: &str) {
    use base64::Engine;
    let ca = std::fs::read(pki("ca.crt")).expect("ca.crt");
    apply(
        client,
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": format!("{version}.{group}")},
            "spec": {"group": group, "version": version,
                     "service": {"namespace": SPILLWAY_NAMESPACE, "name": SPILLWAY_SERVICE, "port": spillway_port()},
                     "caBundle": base64::engine::general_purpose::STANDARD.encode(ca),
                     "groupPriorityMinimum": 100, "versionPriority": 100}}),
    )
    .await;
}

/// The APIService's Available condition: (status, reason, message).
pub async fn api_service_available(
    client: &kube::Client,
    name: &str,
) -> Option<(String, String, String)> {
    let api = dynamic_api(
        client,
        "apiregistration.k8s.io",
        "v1",
        "APIService",
        "apiservices",
        None,
    );
    let service = api.get(name).await.ok()?;
    let conditions = service.data["status"]["conditions"].as_array()?.clone();
    conditions
        .iter()
        .find(|c| c["type"] == "Available")
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (text("status"), text("reason"), text("message"))
        })
}

/// Waits until the APIService is Available=True.
pub async fn wait_available(client: &kube::Client, name: &str, timeout: Duration) {
    let mut last = None;
    let found = tokio::time::timeout(timeout, async {
        loop {
            let now = api_service_available(client, name).await;
            if now.as_ref().is_some_and(|(s, _, _)| s == "True") {
                return;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "APIService {name} not Available after {timeout:?}; last condition: {last:?}"
    );
}

/// GET `path` through kube-apiserver as `client`; the HTTP status and body.
pub async fn get_raw(client: &kube::Client, path: &str) -> (u16, String) {
    let request = axum::http::Request::get(path).body(Vec::new()).unwrap();
    match client.request_text(request).await {
        Ok(body) => (200, body),
        Err(kube::Error::Api(status)) => (status.code, status.message),
        Err(err) => panic!("GET {path}: {err}"),
    }
}

/// A `spillway serve` process with the generated serving certificate and the `spillway`
/// client identity; killed when dropped.
pub struct Spillway {
    child: Child,
    pub config: PathBuf,
}

impl Spillway {
    /// Starts spillway with `scaled_objects` (YAML list items, indented by 2) on
    /// [`spillway_port`], and waits for its health endpoint.
    pub async fn start(scaled_objects: &str) -> Self {
        let config = std::env::temp_dir().join(format!("{}.yaml", super::unique_name("e2e")));
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            &config,
            format!(
                "server:\n  listen: 127.0.0.1:{spillway_port}\n  metricsListen: 127.0.0.1:{metrics_port}\n  tls:\n    certFile: {}\n    keyFile: {}\npollingInterval: 1\nscaledObjects:\n{scaled_objects}",
                pki("spillway-serving.crt").display(),
                pki("spillway-serving.key").display(),
                spillway_port = spillway_port(),
            ),
        )
        .unwrap();
        Self::start_with(config).await
    }

    /// Starts spillway on an existing config file (a restart keeps the same file).
    pub async fn start_with(config: PathBuf) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_spillway"))
            .env(super::ALLOW_LOOPBACK.0, super::ALLOW_LOOPBACK.1)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--kubeconfig")
            .arg(k8s_dir().join("spillway-client.kubeconfig"))
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start spillway serve");
        let spillway = Self { child, config };
        super::eventually(
            "spillway to answer /healthz",
            Duration::from_secs(30),
            || async {
                let response =
                    reqwest::get(format!("http://127.0.0.1:{}/healthz", spillway_port()))
                        .await
                        .ok()?;
                response.status().is_success().then_some(())
            },
        )
        .await;
        spillway
    }

    /// Stops the process (SIGKILL: the aggregator must cope with a vanished backend).
    pub fn kill(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.config)
    }
}

impl Drop for Spillway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reqwest client that trusts the cluster CA and presents `<identity>.crt/.key` from the
/// generated PKI (none for `None`), for calling spillway directly.
pub fn direct_client(identity: Option<&str>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki("ca.crt")).unwrap()).unwrap();
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(ca)
        .use_rustls_tls()
        .timeout(Duration::from_secs(10));
    if let Some(identity) = identity {
        let mut pem = std::fs::read(pki(&format!("{identity}.crt"))).unwrap();
        pem.extend(std::fs::read(pki(&format!("{identity}.key"))).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    builder.build().unwrap()
}

/// The files under `deploy/` that install spillway, in the order they apply (the namespace
/// before what lives in it).
pub const DEPLOY_MANIFESTS: [&str; 4] = [
    "namespace.yaml",
    "serviceaccount.yaml",
    "rbac.yaml",
    "crd.yaml",
];
/// The ServiceAccount `deploy/serviceaccount.yaml` creates and `deploy/rbac.yaml` grants.
pub const SPILLWAY_SERVICE_ACCOUNT: &str = "spillway";
pub const SCALED_OBJECT_CRD: &str = "scaledobjects.spillway.dev";

/// The objects of one multi-document YAML file under `deploy/`, as JSON (empty documents
/// skipped).
pub fn deploy_manifest(file: &str) -> Vec<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    yaml_documents(&text, &path.display().to_string())
}

/// The objects of a multi-document YAML stream (a file, `kubectl kustomize`'s or `helm
/// template`'s output), as JSON, empty documents skipped; `origin` names it in a panic.
pub fn yaml_documents(text: &str, origin: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|document| {
            serde_json::Value::deserialize(document).unwrap_or_else(|err| panic!("{origin}: {err}"))
        })
        .filter(|object| !object.is_null())
        .collect()
}

/// Runs the control plane's own kubectl as the admin, in the repository; stdout, or a panic
/// with stderr.
pub fn kubectl(args: &[&str]) -> String {
    let output = Command::new(k8s_dir().join("bin/kubectl"))
        .arg("--kubeconfig")
        .arg(k8s_dir().join("admin.kubeconfig"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
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

/// Installs spillway as `deploy/` ships it (namespace, ServiceAccount, RBAC, CRD) plus the
/// ExternalName Service the APIService needs, waits for the CRD to be Established, and
/// returns a kubeconfig acting as the ServiceAccount, so `spillway run` has exactly
/// `deploy/rbac.yaml`'s rights.
pub async fn install_spillway(client: &kube::Client) -> PathBuf {
    for file in DEPLOY_MANIFESTS {
        for object in deploy_manifest(file) {
            apply(client, object).await;
        }
    }
    install_spillway_service(client).await;
    wait_crd_established(client, SCALED_OBJECT_CRD, Duration::from_secs(30)).await;
    service_account_kubeconfig(client, SPILLWAY_NAMESPACE, SPILLWAY_SERVICE_ACCOUNT).await
}

/// [`install_spillway`], acting as a ServiceAccount `account` of its own, bound to copies of
/// `deploy/rbac.yaml`'s roles named `<role>-<account>`: the rights this checkout ships, kept
/// while another checkout installs its own `deploy/` on the same control plane.
pub async fn install_spillway_as(client: &kube::Client, account: &str) -> PathBuf {
    for file in DEPLOY_MANIFESTS.into_iter().filter(|f| *f != "rbac.yaml") {
        for object in deploy_manifest(file) {
            apply(client, object).await;
        }
    }
    apply(
        client,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": SPILLWAY_NAMESPACE}}),
    )
    .await;
    let rbac = deploy_manifest("rbac.yaml");
    let names_spillway = |binding: &serde_json::Value| {
        binding["subjects"].as_array().is_some_and(|subjects| {
            subjects
                .iter()
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == SPILLWAY_SERVICE_ACCOUNT)
        })
    };
    let bindings: Vec<serde_json::Value> = rbac
        .iter()
        .filter(|o| o["kind"].as_str().is_some_and(|k| k.ends_with("Binding")) && names_spillway(o))
        .cloned()
        .collect();
    let shipped_roles: Vec<serde_json::Value> = rbac
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("ClusterRole" | "Role")))
        .filter(|role| {
            bindings.iter().any(|b| {
                b["roleRef"]["kind"] == role["kind"]
                    && b["roleRef"]["name"] == role["metadata"]["name"]
            })
        })
        .cloned()
        .collect();
    let renamed = |name: &serde_json::Value| json!(format!("{}-{account}", name.as_str().unwrap()));
    for mut role in shipped_roles.clone() {
        role["metadata"]["name"] = renamed(&role["metadata"]["name"]);
        apply(client, role).await;
    }
    for mut binding in bindings {
        binding["metadata"]["name"] = renamed(&binding["metadata"]["name"]);
        binding["subjects"] =
            json!([{"kind": "ServiceAccount", "name": account, "namespace": SPILLWAY_NAMESPACE}]);
        if shipped_roles
            .iter()
            .any(|r| r["metadata"]["name"] == binding["roleRef"]["name"])
        {
            binding["roleRef"]["name"] = renamed(&binding["roleRef"]["name"]);
        }
        apply(client, binding).await;
    }
    install_spillway_service(client).await;
    wait_crd_established(client, SCALED_OBJECT_CRD, Duration::from_secs(30)).await;
    service_account_kubeconfig(client, SPILLWAY_NAMESPACE, account).await
}

/// Waits until a CustomResourceDefinition is Established (its API is served).
pub async fn wait_crd_established(client: &kube::Client, name: &str, timeout: Duration) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    super::eventually(
        &format!("CRD {name} to be Established"),
        timeout,
        || async {
            let crd = crds.get(name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await;
}

/// A kubeconfig file with a fresh token (TokenRequest, one hour) of `namespace/account`,
/// pointing at the API server of endpoints.env and trusting the cluster CA.
pub async fn service_account_kubeconfig(
    client: &kube::Client,
    namespace: &str,
    account: &str,
) -> PathBuf {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer: TokenRequest = accounts
        .create_subresource("token", account, &Default::default(), &request)
        .await
        .unwrap_or_else(|err| panic!("TokenRequest for {namespace}/{account}: {err}"));
    let token = answer.status.expect("TokenRequest status").token;
    let apiserver = super::endpoint("SPILLWAY_K8S_APISERVER");
    let port = reqwest::Url::parse(&apiserver)
        .ok()
        .and_then(|url| url.port())
        .unwrap_or_else(|| panic!("SPILLWAY_K8S_APISERVER={apiserver} names no port"));
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "spillway-e2e", "cluster": {
            "server": format!("https://127.0.0.1:{port}"),
            "certificate-authority": pki("ca.crt")}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {
            "cluster": "spillway-e2e", "user": account, "namespace": namespace}}],
        "current-context": account,
    });
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", super::unique_name(account)));
    std::fs::write(&path, serde_norway::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

/// Leader-election timings of `spillway run`, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimings {
    pub lease_duration: u32,
    pub renew_deadline: u32,
    pub retry_period: u32,
}

/// A `spillway run` process (the ScaledObject controller and its metrics API), its output in
/// a log file; killed when dropped, and the log's tail printed if the test is failing.
pub struct SpillwayController {
    child: Child,
    pub identity: String,
    pub lease_name: String,
    /// The metrics API's port (only [`spillway_port`] is registered with the aggregator).
    pub port: u16,
    /// spillway's own `/metrics` (plain HTTP).
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl SpillwayController {
    /// Starts `spillway run` acting with `kubeconfig`, its metrics API on `port`, competing for
    /// the Lease `lease_name` in [`SPILLWAY_NAMESPACE`] as `identity`, and waits for its
    /// health endpoint.
    pub async fn start(
        kubeconfig: &std::path::Path,
        port: u16,
        lease_name: &str,
        identity: &str,
        timings: Option<LeaseTimings>,
    ) -> Self {
        Self::start_with_args(kubeconfig, port, lease_name, identity, timings, &[]).await
    }

    /// [`SpillwayController::start`] with more `spillway run` arguments (`extra_args`).
    pub async fn start_with_args(
        kubeconfig: &std::path::Path,
        port: u16,
        lease_name: &str,
        identity: &str,
        timings: Option<LeaseTimings>,
        extra_args: &[&str],
    ) -> Self {
        Self::start_with(
            kubeconfig,
            port,
            lease_name,
            identity,
            timings,
            extra_args,
            "info,spillway=debug,spillway::poller=info,spillway::scalers=info,lapin=off,pinky_swear=off",
        )
        .await
    }

    /// [`SpillwayController::start`] with `RUST_LOG` set to `log_filter` (a long run logs at
    /// info, not debug).
    pub async fn start_logging(
        kubeconfig: &std::path::Path,
        port: u16,
        lease_name: &str,
        identity: &str,
        timings: Option<LeaseTimings>,
        log_filter: &str,
    ) -> Self {
        Self::start_with(
            kubeconfig,
            port,
            lease_name,
            identity,
            timings,
            &[],
            log_filter,
        )
        .await
    }

    /// [`SpillwayController::start`] with more arguments and a `RUST_LOG` filter.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_with(
        kubeconfig: &std::path::Path,
        port: u16,
        lease_name: &str,
        identity: &str,
        timings: Option<LeaseTimings>,
        extra_args: &[&str],
        log_filter: &str,
    ) -> Self {
        let config = std::env::temp_dir().join(format!("{}.yaml", super::unique_name(identity)));
        let metrics_port = free_port();
        std::fs::write(
            &config,
            format!(
                "server:\n  listen: 127.0.0.1:{port}\n  metricsListen: 127.0.0.1:{metrics_port}\n  tls:\n    certFile: {}\n    keyFile: {}\n",
                pki("spillway-serving.crt").display(),
                pki("spillway-serving.key").display(),
            ),
        )
        .unwrap();
        let log = std::env::temp_dir().join(format!("{}.log", super::unique_name(identity)));
        let output = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_spillway"));
        command
            .env(super::ALLOW_LOOPBACK.0, super::ALLOW_LOOPBACK.1)
            .args(["run", "--config"])
            .arg(&config)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--lease-namespace", SPILLWAY_NAMESPACE])
            .args(["--lease-name", lease_name])
            .args(["--identity", identity])
            .args(extra_args);
        if let Some(t) = timings {
            command
                .args(["--lease-duration-seconds", &t.lease_duration.to_string()])
                .args(["--renew-deadline-seconds", &t.renew_deadline.to_string()])
                .args(["--retry-period-seconds", &t.retry_period.to_string()]);
        }
        let child = command
            .env("RUST_LOG", log_filter)
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .expect("start spillway run");
        println!(
            "spillway run as {identity} on 127.0.0.1:{port}, log {}",
            log.display()
        );
        let mut controller = Self {
            child,
            identity: identity.to_owned(),
            lease_name: lease_name.to_owned(),
            port,
            metrics_port,
            log,
        };
        controller.wait_healthy(Duration::from_secs(30)).await;
        controller
    }

    async fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!(
                    "spillway run ({}) exited with {status} before answering /healthz:\n{}",
                    self.identity,
                    self.log_tail(40)
                );
            }
            if let Ok(response) = reqwest::get(&url).await
                && response.status().is_success()
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "spillway run ({}) did not answer {url} within {timeout:?}:\n{}",
                self.identity,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until `/readyz` answers ok, as a Service would before sending it traffic.
    pub async fn wait_ready(&self, timeout: Duration) -> Duration {
        let started = std::time::Instant::now();
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        super::eventually(
            &format!("{} to be ready", self.identity),
            timeout,
            || async {
                let response = reqwest::get(&url).await.ok()?;
                response.status().is_success().then_some(())
            },
        )
        .await;
        started.elapsed()
    }

    /// The process id, to read its footprint under `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, as Kubernetes stops a pod, and waits up to `timeout` for the exit; true when
    /// it exited in time.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// [`Self::terminate`] on a blocking thread, so the caller can watch the hand-over while
    /// the replica stops; the replica and whether it exited in time come back.
    pub fn terminate_in_background(
        mut self,
        timeout: Duration,
    ) -> tokio::task::JoinHandle<(Self, bool)> {
        tokio::task::spawn_blocking(move || {
            let exited = self.terminate(timeout);
            (self, exited)
        })
    }

    /// SIGKILL: no graceful release of the Lease, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last `lines` lines of the process's output.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for SpillwayController {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of spillway run ({}), {} ---\n{}",
                self.identity,
                self.log.display(),
                self.log_tail(60)
            );
        }
    }
}

pub use super::free_port;
