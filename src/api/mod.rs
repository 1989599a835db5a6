//! The metrics API server: discovery, `external.metrics.k8s.io/v1beta1` and
//! `custom.metrics.k8s.io/v1beta2` values from the metric cache and their OpenAPI documents,
//! over TLS (rustls), plus `/healthz`, `/livez`, `/readyz`. Bad input (unknown paths, malformed
//! names or selectors, oversized headers or bodies) is a metav1 Status with its code.
//!
//! Callers are authenticated and authorized as kube-apiserver's aggregator expects of an
//! aggregated API server (front-proxy certificate, client certificates, bearer tokens,
//! SubjectAccessReview; see [`auth`]). Only an explicit `--no-auth` serves without.
//!
//! One port speaks both TLS and plain HTTP: a connection whose first byte is not a TLS
//! handshake gets only the health endpoints, so kubelet probes and `curl` work without
//! certificates while metrics stay behind TLS.

pub mod auth;
pub mod custom;
pub mod discovery;
pub mod external;
pub mod limits;
pub mod lru;
pub mod metrics_access;
pub mod openapi;
pub mod selector;
pub mod serving_cert;
pub mod status;
pub mod token_reviews;
pub mod value_route;
pub mod values;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Method, Uri};
use axum::routing::get;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::cache::{MetricCache, PollRequests};
use crate::config::{Config, TlsFiles};
use crate::connections::{ConnectionLimits, Connections};
use crate::metrics::Metrics;
use crate::registry::{CompositeSource, MetricSource, Registry, ScaleTarget};
use status::Status;

/// The first byte of a TLS ClientHello record (content type "handshake").
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a client may take to send its first byte and finish the handshake; bounds the
/// tasks a silent or slow client can hold.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's headers may take; generous, since it also bounds an idle keep-alive
/// connection and the aggregator reuses its connections.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an HTTP/2 connection is pinged to find a peer that went away.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long open connections get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of setting up or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A PEM file of `server.tls` could not be read.
    #[error("cannot read {path}: {source}")]
    ReadTls {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A PEM file holds no certificate or key.
    #[error("{path}: {message}")]
    BadTlsFile { path: PathBuf, message: String },
    /// rcgen refused to make the fallback certificate.
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    /// rustls refused the certificate and key (mismatched pair, unsupported key).
    #[error("invalid TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the handlers read: the cache and the metrics it serves. Cheap to clone. Built by
/// [`AppState::new`] alone, so a new field has one place to be filled.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Where every answer comes from; the poller fills it.
    pub cache: Arc<MetricCache>,
    /// The scaled objects served: metric names, the workloads custom metrics describe,
    /// fallback values. Fixed in standalone mode, kept by the controller in cluster mode.
    pub registry: Arc<Registry>,
    /// spillway's own Prometheus metrics, shared with the poller and `/metrics`.
    pub own_metrics: Arc<Metrics>,
    /// Where a cold miss asks for a first poll; without it (no poller running) a trigger not
    /// polled yet is a 503 at once.
    pub poll_requests: Option<PollRequests>,
}

impl AppState {
    /// The state serving `triggers` and the custom metrics of `targets` from `cache`, with a
    /// fresh registry of spillway's own metrics and no poll requests.
    pub fn new(cache: Arc<MetricCache>, registry: Arc<Registry>) -> Self {
        Self {
            own_metrics: Arc::new(Metrics::new(Arc::clone(&cache))),
            registry,
            poll_requests: None,
            cache,
        }
    }

    /// The state serving a config file's scaled objects (standalone mode).
    pub fn from_config(config: &Config, cache: Arc<MetricCache>) -> Self {
        Self::new(cache, Arc::new(Registry::from_config(config)))
    }

    /// Every trigger's served metric, as registered now.
    pub fn metrics(&self) -> Arc<[MetricSource]> {
        Arc::clone(&self.registry.served().metrics)
    }

    /// The composite metrics (`advanced.scalingModifiers`), as registered now.
    pub fn composites(&self) -> Arc<[CompositeSource]> {
        Arc::clone(&self.registry.served().composites)
    }

    /// The workloads the scaled objects scale, as registered now.
    pub fn targets(&self) -> Arc<[ScaleTarget]> {
        Arc::clone(&self.registry.served().targets)
    }

    /// Lets cold misses ask the poller for a first poll.
    pub fn with_poll_requests(mut self, requests: PollRequests) -> Self {
        self.poll_requests = Some(requests);
        self
    }
}

/// Every route of the TLS side: discovery, values, OpenAPI, health; Status JSON for anything
/// else. Requests are size-checked and counted in spillway's own metrics by route template.
/// Nobody is authenticated: see [`authenticated_router`].
pub fn router(state: AppState) -> Router {
    routes_with(state, None)
}

/// [`router`] with every request but health authenticated and authorized by `auth`. Size
/// limits run first (an oversized request never costs a TokenReview), and refusals are
/// counted like every other answer.
pub fn authenticated_router(state: AppState, auth: Arc<auth::Authenticator>) -> Router {
    routes_with(state, Some(auth))
}

fn routes_with(state: AppState, auth: Option<Arc<auth::Authenticator>>) -> Router {
    let own_metrics = Arc::clone(&state.own_metrics);
    let routes = Router::new()
        .route("/apis", get(discovery::api_groups))
        .route("/apis/external.metrics.k8s.io", get(discovery::api_group))
        // With and without the slash: the OpenAPI paths end in one, as kube-openapi's do.
        .route(
            "/apis/external.metrics.k8s.io/v1beta1",
            get(discovery::api_resources),
        )
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/",
            get(discovery::api_resources),
        )
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
            get(external::get_metric),
        )
        .route("/apis/custom.metrics.k8s.io", get(custom::api_group))
        .route(
            "/apis/custom.metrics.k8s.io/v1beta2",
            get(custom::api_resources),
        )
        .route(
            "/apis/custom.metrics.k8s.io/v1beta2/",
            get(custom::api_resources),
        )
        .route(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/{resource}/{name}/{metric}",
            get(custom::get_metric),
        )
        .route("/openapi/v2", get(openapi::v2))
        .route("/openapi/v3", get(openapi::v3_discovery))
        .route(
            "/openapi/v3/apis/{group}/{version}",
            get(openapi::v3_group_version),
        )
        .merge(health_routes())
        // Set on the merged router: fallbacks of a merged-in router do not carry over.
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let routes = match auth {
        Some(auth) => routes.layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_authorization,
        )),
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn(limits::limit_requests))
        // Outermost, so refusals for size count too.
        .layer(axum::middleware::from_fn_with_state(
            own_metrics,
            crate::metrics::track_requests,
        ))
        .with_state(state)
}

/// The health endpoints alone, with the same Status fallbacks and size limits; served to
/// plain-HTTP clients.
pub fn health_router() -> Router {
    health_routes()
        .fallback(not_found_without_tls)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(limits::limit_requests))
}

fn health_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    // Always ok once serving: a metric without a reading answers 503 by itself, while an
    // unready server would make the aggregator fail every metric, including healthy ones.
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

/// Whether `/readyz` answers ok; see [`set_ready`].
static READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Marks the process ready or not for `/readyz`. Ready unless told otherwise; `spillway run`
/// is unready until it has registered the ScaledObjects that existed at its start, so a new
/// replica gets no aggregator traffic it would answer 404.
pub fn set_ready(ready: bool) {
    READY.store(ready, std::sync::atomic::Ordering::Relaxed);
}

async fn readyz() -> axum::response::Response {
    use axum::response::IntoResponse;
    if READY.load(std::sync::atomic::Ordering::Relaxed) {
        "ok".into_response()
    } else {
        Status::service_unavailable(
            "not ready: registering the ScaledObjects that existed at start",
        )
        .into_response()
    }
}

async fn not_found(uri: Uri) -> Status {
    Status::not_found(format!(
        "the server could not find the requested resource {}",
        uri.path()
    ))
}

async fn not_found_without_tls(uri: Uri) -> Status {
    Status::not_found(format!(
        "{} is not served over plain HTTP: only /healthz, /livez and /readyz are; use HTTPS",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Status {
    Status::method_not_allowed(format!("{method} is not supported on {}", uri.path()))
}

/// The rustls server config: the PEM files of `files`, re-read when they change (see
/// [`serving_cert`]), or a fresh self-signed certificate for localhost, 127.0.0.1 and ::1 when
/// there are none.
///
/// `client_certs` asks clients for a certificate and checks it (the front proxy's, a user's);
/// without it no certificate is asked for.
pub fn tls_config(
    files: Option<&TlsFiles>,
    client_certs: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, ApiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let serving = serving_cert::ServingCertificate::load(files, provider)?;
    tls_config_serving(Arc::new(serving), client_certs)
}

/// [`tls_config`] serving `serving`, which the caller shares (the peer routes and the peer
/// client use it too).
pub fn tls_config_serving(
    serving: Arc<serving_cert::ServingCertificate>,
    client_certs: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, ApiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    let builder = match client_certs {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

type CertAndKey = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

fn self_signed() -> Result<CertAndKey, ApiError> {
    let names = ["localhost", "127.0.0.1", "::1"]
        .map(str::to_owned)
        .to_vec();
    let generated = rcgen::generate_simple_self_signed(names)?;
    tracing::warn!("no server.tls configured: serving a self-signed certificate for localhost");
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
    Ok((vec![generated.cert.der().clone()], key.into()))
}

fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>, ApiError> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|source| ApiError::ReadTls {
            path: path.to_owned(),
            source,
        })
}

fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ApiError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ApiError::ReadTls {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ApiError::BadTlsFile {
            path: path.to_owned(),
            message: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, ApiError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|source| ApiError::ReadTls {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| ApiError::BadTlsFile {
            path: path.to_owned(),
            message: "no PEM private key found".into(),
        })
}

/// Binds `addr` (port 0 picks a free one; the bound address is logged and returned by
/// `local_addr`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })
}

/// Serves `state` on `listener` until `shutdown` completes, then lets open requests finish
/// (up to ten seconds). With `auth`, every request but the health endpoints is authenticated
/// and authorized first; without it (standalone `--no-auth`) none is. `extra` routes (the
/// admission webhook) are served beside the API without the aggregator's authentication:
/// kube-apiserver calls them with no client identity. Connections are bounded by `limits`.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    state: AppState,
    auth: Option<Arc<auth::Authenticator>>,
    extra: Option<Router>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let refused = (
        state.own_metrics.connections_refused("api", "server"),
        state.own_metrics.connections_refused("api", "client"),
    );
    let own_metrics = Arc::clone(&state.own_metrics);
    let values = Arc::new(value_route::ValueRoute::new(state.clone(), auth.clone()));
    let app = match auth {
        Some(auth) => authenticated_router(state, auth),
        None => router(state),
    };
    let app = match extra {
        // The same size limits and request counting as the API's own routes.
        Some(extra) => extra
            .layer(axum::middleware::from_fn(limits::limit_requests))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&own_metrics),
                crate::metrics::track_requests,
            ))
            .merge(app),
        None => app,
    };
    let health = health_router();
    let connections = Arc::new(Connections::new(limits, refused.0, refused.1));
    tokio::pin!(shutdown);
    while let Some((admitted, tcp, peer)) = connections
        .accept(&listener, shutdown.as_mut(), "metrics API")
        .await
    {
        let (acceptor, app, health) = (acceptor.clone(), app.clone(), health.clone());
        let values = Arc::clone(&values);
        let connections = Arc::clone(&connections);
        // The handshake runs in the connection's task so one slow client never stalls accept.
        tokio::spawn(async move {
            // Answers go out as soon as they are written, not held back for an ACK (Nagle):
            // a keep-alive client waits on each one.
            let _ = tcp.set_nodelay(true);
            let mut builder = connections.builder();
            limits::configure_connections(&mut builder);
            let served = match tokio::time::timeout(HANDSHAKE_TIMEOUT, first_byte(&tcp)).await {
                Ok(Some(TLS_HANDSHAKE)) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            // The verified chain, for the authenticator.
                            let certs = auth::ClientCertificates::new(
                                stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                                    .unwrap_or_default(),
                            );
                            let app = value_route::ApiService::new(values, app, certs);
                            connections.serve(admitted, &builder, stream, app).await
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                Ok(Some(_)) => connections.serve(admitted, &builder, tcp, health).await,
                Ok(None) | Err(_) => return,
            };
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down: no new connections, draining open ones");
    if !connections.drain(DRAIN_TIMEOUT).await {
        tracing::warn!(after = ?DRAIN_TIMEOUT, "connections still open at shutdown; closing them");
    }
}

/// The first byte a client sent, without consuming it; `None` when it closed first.
async fn first_byte(tcp: &TcpStream) -> Option<u8> {
    let mut byte = [0u8; 1];
    match tcp.peek(&mut byte).await {
        Ok(1) => Some(byte[0]),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
