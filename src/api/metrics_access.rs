//! Who reads which series of spillway's own `/metrics` (`server.metricsAuth: namespaces`),
//! decided the way kube-apiserver decides for its own resources, with the metrics API's
//! [`Authenticator`] (the same TokenReview limits and caches, the same SubjectAccessReview
//! cache):
//!
//! - a bearer token is required (`/metrics` is plain HTTP: no client certificates); none, or
//!   one kube-apiserver does not accept, is 401; over the TokenReview limits, 429;
//! - a namespace's series (those with its `namespace` label) go to a caller who may `list`
//!   `scaledobjects.spillway.dev` there: whoever can see the ScaledObjects can see what
//!   spillway reads for them;
//! - the process-wide series go to a caller allowed `get` on the non-resource URL `/metrics`,
//!   the right Prometheus is given for kube components and kube-rbac-proxy;
//! - a caller allowed nothing gets an answer without series, not an error;
//! - a review kube-apiserver does not answer fails the scrape (500), never widens it.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::IntoResponse;
use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{NonResourceAttributes, ResourceAttributes};

use super::auth::{Authenticator, RequestAttributes, UserInfo};
use super::status::Status;
use crate::metrics::scope::{ScopeFuture, ScrapeAccess, ScrapeScope};

/// Namespace reviews of one scrape sent at once; answers are cached, so a steady scraper
/// costs kube-apiserver about one review per namespace per cache lifetime.
const NAMESPACE_REVIEWS_AT_ONCE: usize = 8;

/// What [`Authenticator::decide`] answers: allowed, denied with a reason, or no answer.
type Decision = Result<Result<(), String>, Status>;

/// The resource whose `list` right opens a namespace's series.
pub const SCALED_OBJECTS: (&str, &str) = ("spillway.dev", "scaledobjects");

/// The access policy of `server.metricsAuth: namespaces`.
pub struct MetricsAccess {
    auth: Arc<Authenticator>,
}

impl MetricsAccess {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }

    async fn scope_of(
        &self,
        headers: &HeaderMap,
        namespaces: Vec<String>,
    ) -> Result<ScrapeScope, Status> {
        let user = self.auth.authenticate(None, headers).await?;
        let process_wide = self
            .auth
            .decide(&user, &process_wide_attributes())
            .await?
            .is_ok();
        let answers: Vec<(String, Decision)> = futures::stream::iter(namespaces)
            .map(|namespace| self.namespace_decision(&user, namespace))
            .buffer_unordered(NAMESPACE_REVIEWS_AT_ONCE)
            .collect()
            .await;
        let mut scope = ScrapeScope {
            process_wide,
            ..ScrapeScope::default()
        };
        for (namespace, answer) in answers {
            if answer?.is_ok() {
                scope.namespaces.insert(namespace);
            }
        }
        tracing::debug!(user = %user.name, process_wide, namespaces = scope.namespaces.len(), "/metrics scope");
        Ok(scope)
    }

    async fn namespace_decision(&self, user: &UserInfo, namespace: String) -> (String, Decision) {
        let answer = self
            .auth
            .decide(user, &namespace_attributes(&namespace))
            .await;
        (namespace, answer)
    }
}

impl ScrapeAccess for MetricsAccess {
    fn scope<'a>(&'a self, headers: &'a HeaderMap, namespaces: Vec<String>) -> ScopeFuture<'a> {
        Box::pin(async move {
            self.scope_of(headers, namespaces)
                .await
                .map_err(IntoResponse::into_response)
        })
    }
}

/// `get` on the non-resource URL `/metrics`.
fn process_wide_attributes() -> RequestAttributes {
    RequestAttributes {
        resource: None,
        non_resource: Some(NonResourceAttributes {
            path: Some("/metrics".into()),
            verb: Some("get".into()),
        }),
    }
}

/// `list` on `scaledobjects.spillway.dev` in `namespace`.
fn namespace_attributes(namespace: &str) -> RequestAttributes {
    RequestAttributes {
        resource: Some(ResourceAttributes {
            group: Some(SCALED_OBJECTS.0.into()),
            resource: Some(SCALED_OBJECTS.1.into()),
            namespace: Some(namespace.into()),
            verb: Some("list".into()),
            ..Default::default()
        }),
        non_resource: None,
    }
}
