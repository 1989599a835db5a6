//! Issue 16: `/metrics` per caller (`server.metricsAuth: namespaces`) against the real
//! kube-apiserver. Service-account tokens are reviewed by TokenReview and rights by
//! SubjectAccessReview: a tenant allowed to list ScaledObjects in its namespace reads that
//! namespace's series only, a caller with `get` on the non-resource URL `/metrics` reads the
//! process-wide series, an identity with no rights reads no series, and a caller without a
//! token is refused.

mod common;

use std::sync::Arc;

use common::k8s;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use spillway::api::auth::{AuthenticationConfig, Authenticator};
use spillway::api::metrics_access::MetricsAccess;
use spillway::cache::MetricCache;
use spillway::metrics::Metrics;
use spillway::metrics::scope::ScrapeAccess;

/// A service account `name` in `namespace` and a fresh token of it.
async fn account_token(admin: &kube::Client, namespace: &str, name: &str) -> String {
    k8s::apply(
        admin,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace}}),
    )
    .await;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer: TokenRequest = accounts
        .create_subresource("token", name, &Default::default(), &request)
        .await
        .unwrap_or_else(|err| panic!("TokenRequest for {namespace}/{name}: {err}"));
    answer.status.expect("TokenRequest status").token
}

/// `GET /metrics` with `token`: the code and the body.
async fn scrape(url: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("scrape");
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_tenant_reads_only_its_namespace_and_a_caller_without_a_token_is_refused() {
    let admin = k8s::admin().await;
    let shop = k8s::namespace(&admin, "metrics-shop").await;
    let bank = k8s::namespace(&admin, "metrics-bank").await;
    // The tenant may list ScaledObjects in its namespace (and nothing else).
    k8s::apply(
        &admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "scaledobject-reader", "namespace": shop},
            "rules": [{"apiGroups": ["spillway.dev"], "resources": ["scaledobjects"],
                "verbs": ["get", "list", "watch"]}]}),
    )
    .await;
    k8s::apply(
        &admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "tenant-reads-scaledobjects", "namespace": shop},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                "name": "scaledobject-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": shop}]}),
    )
    .await;
    // The scraper may `get /metrics`, as Prometheus is allowed for kube components.
    let cluster_role = common::unique_name("metrics-reader").replace('_', "-");
    k8s::apply(
        &admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": cluster_role},
            "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}),
    )
    .await;
    k8s::apply(
        &admin,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": cluster_role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": cluster_role},
            "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": bank}]}),
    )
    .await;
    let tenant = account_token(&admin, &shop, "tenant").await;
    let scraper = account_token(&admin, &bank, "scraper").await;
    let stranger = account_token(&admin, &bank, "stranger").await;

    // Series of both namespaces, and process-wide ones.
    let metrics = Arc::new(Metrics::new(Arc::new(MetricCache::new())));
    metrics.set_scaled_object_state(&shop, "orders", false, true);
    metrics.set_scaled_object_state(&bank, "ledger", true, false);
    metrics.set_leader(true);
    // spillway's own client may review tokens and access: the admin stands in for it.
    let auth = Authenticator::with_config(
        admin.clone(),
        AuthenticationConfig::default(),
        Arc::clone(&metrics),
    )
    .unwrap();
    let access = Arc::new(MetricsAccess::new(auth)) as Arc<dyn ScrapeAccess>;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(spillway::metrics::serve_metrics(
        listener,
        Arc::clone(&metrics),
        Some(access),
        std::future::pending(),
    ));
    let shop_series =
        format!(r#"spillway_scaled_object_paused{{namespace="{shop}",scaled_object="orders"}} 1"#);
    let bank_label = format!(r#"namespace="{bank}""#);

    // RBAC answers are eventually consistent with the objects just written.
    common::eventually(
        "the tenant's Role to take effect",
        std::time::Duration::from_secs(30),
        || async {
            scrape(&url, Some(&tenant))
                .await
                .1
                .contains(&shop_series)
                .then_some(())
        },
    )
    .await;
    let (code, body) = scrape(&url, Some(&tenant)).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&shop_series), "{body}");
    assert!(
        !body.contains(&bank_label),
        "another tenant's namespace leaked:\n{body}"
    );
    assert!(
        !body.contains("spillway_leader"),
        "process-wide series need /metrics rights:\n{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    // No rights anywhere: an answer without series, not an error.
    let (code, body) = scrape(&url, Some(&stranger)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "# EOF\n");

    // `get /metrics`: the process-wide series, and still no namespace it may not list.
    common::eventually(
        "the scraper's ClusterRole to take effect",
        std::time::Duration::from_secs(30),
        || async {
            scrape(&url, Some(&scraper))
                .await
                .1
                .contains("spillway_leader 1")
                .then_some(())
        },
    )
    .await;
    let (_, body) = scrape(&url, Some(&scraper)).await;
    assert!(
        !body.contains(&bank_label) && !body.contains(&shop),
        "{body}"
    );

    // No token, or one kube-apiserver does not know: refused before any series is read.
    for token in [None, Some("not-a-token")] {
        let (code, body) = scrape(&url, token).await;
        assert_eq!(code, 401, "{token:?}: {body}");
        assert!(!body.contains("spillway_"), "{body}");
    }

    // Cluster-scoped objects and the namespaces go.
    let _ = Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .delete(&cluster_role, &DeleteParams::default())
        .await;
    let _ = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone())
        .delete(&cluster_role, &DeleteParams::default())
        .await;
    for namespace in [&shop, &bank] {
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
            .delete(namespace, &DeleteParams::default())
            .await;
    }
}
