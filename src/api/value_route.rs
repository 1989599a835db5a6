//! The HPA's hot path: `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}`,
//! which every HPA asks through the aggregator for every external metric on every sync,
//! answered without the Router: no route matching, boxed middleware or extractors per request.
//!
//! It runs the same checks as the Router's route, in the same order, and answers the same
//! bytes: size limits, authentication and authorization ([`auth::Authenticator::admit`]), the
//! handler ([`external::answer`]), and the request series under the same route template.
//! A request it does not take whole goes to the Router instead, which refuses or decodes it:
//! another method or path, a body, headers over the limit, a percent-encoded path.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use tower::ServiceExt;

use super::AppState;
use super::auth::{Authenticator, ClientCertificates};
use super::external;
use super::limits::{MAX_HEADER_BYTES, header_bytes};
use crate::metrics::RequestSeries;

/// The route template the value route counts its requests under: the Router's own.
pub const ROUTE: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}";
/// The path before `{namespace}`.
const PREFIX: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/";

/// The value route: what it answers from, who checks callers, and the series of its
/// answered requests.
#[derive(Debug)]
pub struct ValueRoute {
    state: AppState,
    auth: Option<Arc<Authenticator>>,
    /// Requests answered 200, held so a served value costs no label lookup.
    served: RequestSeries,
}

impl ValueRoute {
    /// The value route over `state`, authenticating with `auth` when given.
    pub fn new(state: AppState, auth: Option<Arc<Authenticator>>) -> Self {
        let served = state.own_metrics.request_series(ROUTE, StatusCode::OK);
        Self {
            state,
            auth,
            served,
        }
    }

    /// The namespace and metric of `request` when the value route takes it whole.
    fn takes(request: &Request) -> Option<(&str, &str)> {
        if request.method() != Method::GET {
            return None;
        }
        let rest = request.uri().path().strip_prefix(PREFIX)?;
        let (namespace, metric) = rest.split_once('/')?;
        let plain = !namespace.is_empty()
            && !metric.is_empty()
            && !metric.contains('/')
            && !rest.contains('%');
        let headers = request.headers();
        let bare = request.body().size_hint().exact() == Some(0)
            && headers
                .get(CONTENT_LENGTH)
                .is_none_or(|length| length == "0")
            && !headers.contains_key(TRANSFER_ENCODING)
            && header_bytes(request) <= MAX_HEADER_BYTES;
        (plain && bare).then_some((namespace, metric))
    }

    /// The answer to `request` (which [`Self::takes`]), counted.
    async fn answer(&self, request: Request, certs: Option<&ClientCertificates>) -> Response {
        let started = Instant::now();
        let Some((namespace, metric)) = Self::takes(&request) else {
            unreachable!("only requests the value route takes are answered by it")
        };
        let admitted = match &self.auth {
            Some(auth) => {
                auth.admit(
                    certs,
                    request.method(),
                    request.uri().path(),
                    request.headers(),
                )
                .await
            }
            None => Ok(()),
        };
        let response = match admitted {
            Ok(()) => external::answer(&self.state, namespace, metric, request.uri().query())
                .await
                .into_response(),
            Err(status) => status.into_response(),
        };
        let took = started.elapsed();
        match response.status() {
            StatusCode::OK => self.served.observe(took),
            code => self.state.own_metrics.observe_request(ROUTE, code, took),
        }
        response
    }
}

/// What one connection is served: the value route for what it takes, the Router for the
/// rest, each given the certificates the client presented.
#[derive(Clone)]
pub struct ApiService {
    values: Arc<ValueRoute>,
    router: Router,
    certs: ClientCertificates,
}

impl ApiService {
    /// One connection's service, whose client presented `certs`.
    pub fn new(values: Arc<ValueRoute>, router: Router, certs: ClientCertificates) -> Self {
        Self {
            values,
            router,
            certs,
        }
    }
}

impl tower::Service<Request> for ApiService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        if ValueRoute::takes(&request).is_some() {
            let (values, certs) = (Arc::clone(&self.values), self.certs.clone());
            return Box::pin(async move { Ok(values.answer(request, Some(&certs)).await) });
        }
        // Per connection, since a front proxy keeps its connection for many users' requests.
        request.extensions_mut().insert(self.certs.clone());
        Box::pin(self.router.clone().oneshot(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &'static str) -> Request {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::from(body)).unwrap()
    }

    const VALUES: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/s0-kafka-orders";

    #[test]
    fn takes_plain_value_gets_and_leaves_the_rest_to_the_router() {
        let takes = |r: &Request| ValueRoute::takes(r).map(|(n, m)| (n.to_owned(), m.to_owned()));
        let plain = request("GET", &format!("{VALUES}?labelSelector=a%3Db"), &[], "");
        assert_eq!(
            takes(&plain),
            Some(("shop".to_owned(), "s0-kafka-orders".to_owned()))
        );
        let zero = request("GET", VALUES, &[("content-length", "0")], "");
        assert!(takes(&zero).is_some());
        let long = "x".repeat(MAX_HEADER_BYTES);
        for (why, refused) in [
            ("HEAD", request("HEAD", VALUES, &[], "")),
            ("POST", request("POST", VALUES, &[], "")),
            ("a body", request("GET", VALUES, &[], "{}")),
            (
                "a declared body",
                request("GET", VALUES, &[("content-length", "5")], ""),
            ),
            (
                "a chunked body",
                request("GET", VALUES, &[("transfer-encoding", "chunked")], ""),
            ),
            (
                "headers over the limit",
                request("GET", VALUES, &[("x-padding", long.as_str())], ""),
            ),
            (
                "a percent-encoded path",
                request("GET", &VALUES.replace("orders", "ord%65rs"), &[], ""),
            ),
            (
                "a trailing slash",
                request("GET", &format!("{VALUES}/"), &[], ""),
            ),
            (
                "an empty namespace",
                request(
                    "GET",
                    "/apis/external.metrics.k8s.io/v1beta1/namespaces//s0",
                    &[],
                    "",
                ),
            ),
            (
                "no metric",
                request(
                    "GET",
                    "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop",
                    &[],
                    "",
                ),
            ),
            (
                "another API",
                request(
                    "GET",
                    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/p/m",
                    &[],
                    "",
                ),
            ),
        ] {
            assert_eq!(takes(&refused), None, "{why}");
        }
    }
}
