//! The floor of the metrics API benches: a bare axum + hyper + rustls server answering one
//! fixed `ExternalMetricValueList` for any external metric path, with spillway's own rustls
//! server config (same certificate, versions, ciphers, ALPN). What serving an answer over
//! spillway's TLS setup costs, and nothing else. With `auth`, its TLS verifies the front-proxy
//! client certificate against the front-proxy CA and its handler only checks that
//! `X-Remote-User` is there.
//!
//! A bench starts it as a child process of its own binary: [`start`] runs the bench again with
//! [`FLOOR_ENV`] set, and the bench's `main` hands over to [`serve_from_env`] first thing.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use tokio_rustls::rustls;

use super::common::k8s;

/// Set in the child process that serves the floor: `<port>` or `<port>,auth`.
pub const FLOOR_ENV: &str = "SPILLWAY_API_FLOOR_SERVE";

/// Serves the floor forever when this process was started as one; returns otherwise.
pub fn serve_from_env() -> bool {
    match std::env::var(FLOOR_ENV) {
        Ok(spec) => {
            serve(&spec);
            true
        }
        Err(_) => false,
    }
}

/// The floor on `port` as a child process of this bench's binary (kill it when done).
pub fn start(port: u16, auth: bool) -> Child {
    let spec = if auth {
        format!("{port},auth")
    } else {
        port.to_string()
    };
    Command::new(std::env::current_exe().unwrap())
        .env(FLOOR_ENV, spec)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the floor server")
}

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use spillway::api::external::{ExternalMetricValue, ExternalMetricValueList};

fn serve(spec: &str) {
    let (port, auth) = match spec.split_once(',') {
        Some((port, _)) => (port, true),
        None => (spec, false),
    };
    let port: u16 = port.parse().expect("floor port");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run(port, auth));
}

async fn run(port: u16, auth: bool) {
    let files = spillway::config::TlsFiles {
        cert_file: k8s::pki("spillway-serving.crt"),
        key_file: k8s::pki("spillway-serving.key"),
    };
    let verifier = auth.then(|| {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(
            std::fs::File::open(k8s::pki("front-proxy-ca.crt")).unwrap(),
        )) {
            roots.add(cert.unwrap()).unwrap();
        }
        // As spillway's: asked for, checked when given, not mandatory at the TLS layer.
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .allow_unauthenticated()
        .build()
        .unwrap()
    });
    let tls = spillway::api::tls_config(Some(&files), verifier).expect("TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let answer = ExternalMetricValueList {
        kind: "ExternalMetricValueList",
        api_version: spillway::api::external::GROUP_VERSION,
        metadata: serde_json::Map::new(),
        items: vec![ExternalMetricValue {
            metric_name: "so-0".into(),
            metric_labels: [("scaledobject.spillway.dev/name".into(), "so-0".into())].into(),
            timestamp: "2026-12-04T00:00:00Z".into(),
            value: "3".into(),
        }],
    };
    let body = bytes::Bytes::from(serde_json::to_vec(&answer).unwrap());
    let app = Router::new().route(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
        get(move |headers: HeaderMap| {
            let body = body.clone();
            async move {
                if auth && !headers.contains_key("x-remote-user") {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the floor port");
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            if auth && stream.get_ref().1.peer_certificates().is_none() {
                return;
            }
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .await;
        });
    }
}
