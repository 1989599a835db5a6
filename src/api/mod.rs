//! The external metrics API server: discovery and `external.metrics.k8s.io/v1beta1` values
//! from the metric cache, over TLS (rustls), plus `/healthz`, `/livez`, `/readyz`.
//!
//! **Unauthenticated for now**: this standalone server checks no client certificate, token or
//! SubjectAccessReview (the aggregator's front-proxy authentication is a later issue), so anyone
//! who can reach `server.listen` (default `127.0.0.1:6443`, loopback only) can read every
//! metric. Bind it to a non-loopback address only on a network you trust.
//!
//! One port speaks both TLS and plain HTTP: a connection whose first byte is not a TLS
//! handshake gets only the health endpoints, so kubelet probes and `curl` work without
//! certificates while metrics stay behind TLS.

pub mod discovery;
pub mod external;
pub mod quantity;
pub mod selector;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Method, Uri};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::cache::MetricCache;
use crate::config::TlsFiles;
use external::MetricSource;
use status::Status;

/// The first byte of a TLS ClientHello record (content type "handshake").
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a client may take to send its first byte and finish the handshake; bounds the
/// tasks a silent or slow client can hold.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's headers may take; generous, since it also bounds an idle keep-alive
/// connection and the aggregator reuses its connections.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
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

/// What the handlers read: the cache and the metrics it serves. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Where every answer comes from; the poller fills it.
    pub cache: Arc<MetricCache>,
    /// Every trigger's served metric name, fixed at start (standalone mode).
    pub metrics: Arc<[MetricSource]>,
}

/// Every route of the TLS side: discovery, values, health; Status JSON for anything else.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/apis", get(discovery::api_groups))
        .route("/apis/external.metrics.k8s.io", get(discovery::api_group))
        .route(
            "/apis/external.metrics.k8s.io/v1beta1",
            get(discovery::api_resources),
        )
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
            get(external::get_metric),
        )
        .merge(health_routes())
        // Set on the merged router: fallbacks of a merged-in router do not carry over.
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The health endpoints alone, with the same Status fallbacks; served to plain-HTTP clients.
pub fn health_router() -> Router {
    health_routes()
        .fallback(not_found_without_tls)
        .method_not_allowed_fallback(method_not_allowed)
}

fn health_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    // Always ok once serving: a metric without a reading answers 503 by itself, while an
    // unready server would make the aggregator fail every metric, including healthy ones.
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
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

/// The rustls server config: the PEM files of `files`, or a fresh self-signed certificate for
/// localhost, 127.0.0.1 and ::1 when there are none.
pub fn tls_config(files: Option<&TlsFiles>) -> Result<rustls::ServerConfig, ApiError> {
    let (certs, key) = match files {
        Some(files) => (read_certs(&files.cert_file)?, read_key(&files.key_file)?),
        None => self_signed()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
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
/// (up to ten seconds).
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let app = router(state);
    let health = health_router();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (acceptor, app, health) = (acceptor.clone(), app.clone(), health.clone());
        let watcher = graceful.watcher();
        // The handshake runs in the connection's task so one slow client never stalls accept.
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            // A client that opens a connection and never finishes its headers is cut off.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let served = match tokio::time::timeout(HANDSHAKE_TIMEOUT, first_byte(&tcp)).await {
                Ok(Some(TLS_HANDSHAKE)) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let service = TowerToHyperService::new(app);
                            watcher
                                .watch(builder.serve_connection(TokioIo::new(stream), service))
                                .await
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                Ok(Some(_)) => {
                    let service = TowerToHyperService::new(health);
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(tcp), service))
                        .await
                }
                Ok(None) | Err(_) => return,
            };
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down: no new connections, draining open ones");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
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
