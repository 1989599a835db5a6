//! Authentication and authorization of an aggregated API server, delegated to kube-apiserver
//! the way `k8s.io/apiserver` does it for metrics-server and prometheus-adapter:
//!
//! - **Front proxy**: kube-apiserver's aggregator calls with its proxy client certificate.
//!   A certificate that chains to the request-header CA (and, when the list is not empty,
//!   whose common name is an allowed name) makes the `X-Remote-User`, `X-Remote-Group` and
//!   `X-Remote-Extra-*` headers the caller's identity. The CA, the allowed names and the
//!   header names come from the `kube-system/extension-apiserver-authentication` ConfigMap,
//!   re-read every minute so a rotated CA is picked up without a restart.
//! - **Client certificates** that chain to the cluster's client CA (same ConfigMap): the
//!   common name is the user, the organizations the groups.
//! - **Bearer tokens**: a TokenReview, cached briefly under a keyed hash, one per token at a
//!   time, within a rate and a concurrency limit (see [`super::token_reviews`]).
//!
//! Every request but the health endpoints is then authorized with a SubjectAccessReview
//! built from the path exactly as kube-apiserver would (`list` on resource `<metric>` in
//! group `external.metrics.k8s.io`, the verb the HPA controller's role grants), with short
//! allow/deny caches, so an HPA asking every 15 s costs kube-apiserver almost nothing.
//! `system:masters` is always allowed, as in kube-apiserver.
//!
//! X-Remote-* headers from anyone but a verified front proxy are ignored: they would let any
//! client claim any identity.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use tokio_rustls::rustls;
use tokio_rustls::rustls::DistinguishedName;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;

use super::serving_cert::ServingCertificate;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

use super::lru::ExpiringLru;
use super::status::Status;
use super::token_reviews::{ReviewAnswer, TokenRefusal, TokenReviews};
use crate::metrics::Metrics;

/// Where kube-apiserver publishes how aggregated servers must authenticate callers.
pub const AUTHENTICATION_CONFIG_MAP: (&str, &str) =
    ("kube-system", "extension-apiserver-authentication");
/// Paths anyone may call, as kube-apiserver's `--authorization-always-allow-paths` default.
const ALWAYS_ALLOWED_PATHS: [&str; 3] = ["/healthz", "/livez", "/readyz"];
/// Groups allowed without asking, as kube-apiserver does for its superusers.
const ALWAYS_ALLOWED_GROUPS: [&str; 1] = ["system:masters"];
/// The group every authenticated caller belongs to.
const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// How long a SubjectAccessReview answer is reused (k8s.io/apiserver's delegating default is
/// 10 s for both outcomes).
const REVIEW_TTL: Duration = Duration::from_secs(10);
/// A review kube-apiserver has not answered by then fails the request instead of holding it.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// How long before a cached decision expires a request for it has it reviewed again in the
/// background.
const REFRESH_AHEAD: Duration = Duration::from_secs(3);
/// Decisions kept; beyond that the least recently used is dropped. Only authenticated callers
/// reach it, so nobody can flood it with made-up identities.
const CACHE_CAPACITY: usize = 4096;
/// How often the ConfigMap is re-read.
const RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// Errors of setting up delegated authentication.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read ConfigMap {}/{}: {source}", AUTHENTICATION_CONFIG_MAP.0, AUTHENTICATION_CONFIG_MAP.1)]
    ReadConfigMap { source: kube::Error },
    #[error("ConfigMap {}/{}: {key}: {message}", AUTHENTICATION_CONFIG_MAP.0, AUTHENTICATION_CONFIG_MAP.1)]
    BadConfigMap { key: &'static str, message: String },
    #[error("invalid client CA {what}: {message}")]
    BadCa { what: &'static str, message: String },
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserInfo {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The verified certificate chain a TLS client presented, as a request extension: one per
/// connection, shared by its requests, with what checking it against the CAs found, so a
/// keep-alive connection pays for the chain's signature checks and the certificate's parse
/// once every [`CERTIFICATE_RECHECK`] rather than on every request.
#[derive(Debug, Clone, Default)]
pub struct ClientCertificates {
    chain: Arc<Vec<CertificateDer<'static>>>,
    checked: Arc<Mutex<Option<CertificateCheck>>>,
}

impl ClientCertificates {
    /// The chain the client presented, leaf first (empty when it presented none).
    pub fn new(chain: Vec<CertificateDer<'static>>) -> Self {
        Self {
            chain: Arc::new(chain),
            checked: Arc::default(),
        }
    }

    /// The certificate the client presented (its chain's leaf), if any.
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.chain.first()
    }

    /// Which CA the chain verifies against under `verifiers`, with the leaf's subject: from
    /// the last check when it was made under the same verifiers less than
    /// [`CERTIFICATE_RECHECK`] ago (a swapped CA or an expiring certificate is seen within
    /// that), checked again otherwise.
    fn verdict(&self, verifiers: &Arc<Verifiers>) -> Option<Verdict> {
        let (leaf, intermediates) = self.chain.split_first()?;
        let now = Instant::now();
        let mut checked = self.checked.lock().expect("certificate check lock");
        if let Some(check) = checked.as_ref()
            && Arc::ptr_eq(&check.verifiers, verifiers)
            && now < check.until
        {
            return check.verdict.clone();
        }
        let verified_by = |v: &Option<Arc<dyn ClientCertVerifier>>| {
            v.as_ref().is_some_and(|v| {
                v.verify_client_cert(leaf, intermediates, UnixTime::now())
                    .is_ok()
            })
        };
        let verdict = if verified_by(&verifiers.requestheader) {
            Some(Verdict::FrontProxy(Subject::of(leaf).map(Arc::new)))
        } else if verified_by(&verifiers.client) {
            Some(Verdict::Client(Subject::of(leaf).map(Arc::new)))
        } else {
            None
        };
        *checked = Some(CertificateCheck {
            verifiers: Arc::clone(verifiers),
            until: now + CERTIFICATE_RECHECK,
            verdict: verdict.clone(),
        });
        verdict
    }
}

/// How long one check of a connection's client certificate holds.
pub const CERTIFICATE_RECHECK: Duration = Duration::from_secs(10);

/// One check of a connection's chain.
#[derive(Debug)]
struct CertificateCheck {
    /// The verifiers it was checked under; a reloaded ConfigMap makes new ones.
    verifiers: Arc<Verifiers>,
    until: Instant,
    verdict: Option<Verdict>,
}

/// Which CA a chain verified against, and the leaf's subject (or why it is unreadable).
#[derive(Debug, Clone)]
enum Verdict {
    FrontProxy(Result<Arc<Subject>, Status>),
    Client(Result<Arc<Subject>, Status>),
}

/// How callers are authenticated, as published in the ConfigMap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthenticationConfig {
    /// PEM of the CA that signs users' client certificates (`client-ca-file`).
    pub client_ca: Option<String>,
    /// PEM of the CA that signs the front proxy's certificate.
    pub requestheader_ca: Option<String>,
    /// Common names a front proxy may have; empty means any the CA signed.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub uid_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_headers_prefixes: Vec<String>,
}

impl AuthenticationConfig {
    /// Parses the ConfigMap's data (list values are JSON arrays of strings).
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, AuthError> {
        let list = |key: &'static str| -> Result<Vec<String>, AuthError> {
            match data.get(key) {
                None => Ok(Vec::new()),
                Some(text) if text.trim().is_empty() => Ok(Vec::new()),
                Some(text) => serde_json::from_str(text).map_err(|err| AuthError::BadConfigMap {
                    key,
                    message: format!("not a JSON list of strings: {err}"),
                }),
            }
        };
        let pem = |key: &str| data.get(key).filter(|v| !v.trim().is_empty()).cloned();
        Ok(Self {
            client_ca: pem("client-ca-file"),
            requestheader_ca: pem("requestheader-client-ca-file"),
            allowed_names: list("requestheader-allowed-names")?,
            username_headers: list("requestheader-username-headers")?,
            uid_headers: list("requestheader-uid-headers")?,
            group_headers: list("requestheader-group-headers")?,
            extra_headers_prefixes: list("requestheader-extra-headers-prefix")?,
        })
    }
}

/// The certificate verifiers built from one [`AuthenticationConfig`].
#[derive(Debug)]
struct Verifiers {
    config: AuthenticationConfig,
    requestheader: Option<Arc<dyn ClientCertVerifier>>,
    client: Option<Arc<dyn ClientCertVerifier>>,
    /// Accepts a chain to either CA: what the TLS handshake checks.
    either: Option<Arc<dyn ClientCertVerifier>>,
}

impl Verifiers {
    fn new(config: AuthenticationConfig) -> Result<Self, AuthError> {
        let requestheader = config
            .requestheader_ca
            .as_deref()
            .map(|pem| verifier("requestheader-client-ca-file", &[pem]))
            .transpose()?;
        let client = config
            .client_ca
            .as_deref()
            .map(|pem| verifier("client-ca-file", &[pem]))
            .transpose()?;
        let pems: Vec<&str> = [&config.requestheader_ca, &config.client_ca]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        let either = if pems.is_empty() {
            None
        } else {
            Some(verifier("client CAs", &pems)?)
        };
        Ok(Self {
            config,
            requestheader,
            client,
            either,
        })
    }
}

fn verifier(what: &'static str, pems: &[&str]) -> Result<Arc<dyn ClientCertVerifier>, AuthError> {
    let bad = |message: String| AuthError::BadCa { what, message };
    let mut roots = rustls::RootCertStore::empty();
    for pem in pems {
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            let cert = cert.map_err(|err| bad(err.to_string()))?;
            roots.add(cert).map_err(|err| bad(err.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate found".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|err| bad(err.to_string()))
}

/// The TLS side: asks for a client certificate and accepts one that chains to the current
/// request-header or client CA; clients without one (token bearers) are let through to be
/// authenticated per request. Swapped in place when the ConfigMap changes.
#[derive(Debug)]
pub struct ClientCertPolicy {
    authenticator: Arc<Authenticator>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// With polling shared between replicas: the serving certificate, which a peer replica
    /// presents as its client certificate (checked again by the peer routes).
    peer: Option<Arc<ServingCertificate>>,
}

impl ClientCertPolicy {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self {
            authenticator,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            peer: None,
        }
    }

    /// Also accepts `serving` itself as a client certificate: other replicas of the install.
    pub fn with_peer_certificate(mut self, serving: Arc<ServingCertificate>) -> Self {
        self.peer = Some(serving);
        self
    }
}

impl ClientCertVerifier for ClientCertPolicy {
    fn offer_client_auth(&self) -> bool {
        self.peer.is_some() || self.authenticator.verifiers().either.is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: Go clients then send their certificate whatever CA it has, and the
        // hints could not follow a CA swapped after the handshake config was built.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Some(serving) = &self.peer
            && serving.current().cert.first() == Some(end_entity)
        {
            // Its signature over the handshake is checked as any client's: the peer holds
            // the serving key.
            return Ok(ClientCertVerified::assertion());
        }
        match &self.authenticator.verifiers().either {
            Some(verifier) => verifier.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "no client CA is configured; use a bearer token".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Authenticates and authorizes requests against a kube-apiserver.
pub struct Authenticator {
    client: kube::Client,
    verifiers: RwLock<Arc<Verifiers>>,
    tokens: TokenReviews,
    decisions: Arc<Mutex<Decisions>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.verifiers().config)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Reads the ConfigMap once; fails when it cannot (without it no front proxy can be
    /// trusted, so serving would answer every aggregated request with 401).
    /// Token reviews are counted in `metrics`.
    pub async fn new(client: kube::Client, metrics: Arc<Metrics>) -> Result<Arc<Self>, AuthError> {
        let config = load_config(&client).await?;
        Self::with_config(client, config, metrics)
    }

    /// An authenticator with a fixed configuration (tests, or a config given in files).
    pub fn with_config(
        client: kube::Client,
        config: AuthenticationConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, AuthError> {
        tracing::info!(
            requestheader_ca = config.requestheader_ca.is_some(),
            client_ca = config.client_ca.is_some(),
            allowed_names = ?config.allowed_names,
            "delegated authentication configured"
        );
        Ok(Arc::new(Self {
            client,
            verifiers: RwLock::new(Arc::new(Verifiers::new(config)?)),
            tokens: TokenReviews::new(metrics),
            decisions: Arc::new(Mutex::new(Decisions {
                cached: ExpiringLru::new(CACHE_CAPACITY),
                refreshing: HashSet::new(),
            })),
        }))
    }

    fn verifiers(&self) -> Arc<Verifiers> {
        Arc::clone(&self.verifiers.read().expect("verifier lock"))
    }

    /// Re-reads the ConfigMap every minute until the task is dropped; a bad or unreadable
    /// ConfigMap keeps the previous configuration.
    pub async fn reload_forever(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            match load_config(&self.client).await.and_then(Verifiers::new) {
                Ok(new) if new.config != self.verifiers().config => {
                    tracing::info!("extension-apiserver-authentication changed; reloaded");
                    *self.verifiers.write().expect("verifier lock") = Arc::new(new);
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "keeping the previous authentication configuration")
                }
            }
        }
    }

    /// Who made the request, or why nobody can tell. Every identity found is in
    /// `system:authenticated`, as kube-apiserver adds it (RBAC's discovery and openapi rights
    /// are granted to that group; the aggregator's own requests carry no groups).
    pub async fn authenticate(
        &self,
        certs: Option<&ClientCertificates>,
        headers: &HeaderMap,
    ) -> Result<UserInfo, Status> {
        let mut user = self.identify(certs, headers).await?;
        if !user.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            user.groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        Ok(user)
    }

    async fn identify(
        &self,
        certs: Option<&ClientCertificates>,
        headers: &HeaderMap,
    ) -> Result<UserInfo, Status> {
        let verifiers = self.verifiers();
        match certs.and_then(|certs| certs.verdict(&verifiers)) {
            Some(Verdict::FrontProxy(subject)) => {
                let subject: Arc<Subject> = subject?;
                return front_proxy_user(&verifiers.config, &subject, headers);
            }
            Some(Verdict::Client(subject)) => {
                let subject: Arc<Subject> = subject?;
                return certificate_user(&subject);
            }
            None => {}
        }
        if let Some(token) = bearer_token(headers)? {
            return self.review_token(token).await;
        }
        Err(Status::unauthorized(
            "no credentials: present a client certificate or a bearer token",
        ))
    }

    async fn review_token(&self, token: &str) -> Result<UserInfo, Status> {
        let client = self.client.clone();
        let outcome = self
            .tokens
            .authenticate(token, |token| token_review(client, token))
            .await;
        outcome.map_err(|refusal| match refusal {
            TokenRefusal::Invalid(message) | TokenRefusal::Failed(message) => {
                Status::unauthorized(message)
            }
            TokenRefusal::Limited(message) => Status::too_many_requests(message),
        })
    }

    /// Whether `user` may make this request.
    pub async fn authorize(
        &self,
        user: &UserInfo,
        method: &Method,
        path: &str,
    ) -> Result<(), Status> {
        if ALWAYS_ALLOWED_PATHS.contains(&path) {
            return Ok(());
        }
        let attributes = RequestAttributes::from_request(method, path);
        self.decide(user, &attributes).await?.map_err(|reason| {
            let mut message = format!("{}: {}", attributes.describe(), user_phrase(user));
            if !reason.is_empty() {
                message.push_str(&format!(": {reason}"));
            }
            Status::forbidden(message)
        })
    }

    /// Whether `user` may do what `attributes` describe, by SubjectAccessReview (cached
    /// [`REVIEW_TTL`]): `Ok(Ok(()))` allowed, `Ok(Err(reason))` denied, `Err` when
    /// kube-apiserver gave no answer (the caller fails closed).
    pub async fn decide(
        &self,
        user: &UserInfo,
        attributes: &RequestAttributes,
    ) -> Result<Result<(), String>, Status> {
        if user
            .groups
            .iter()
            .any(|g| ALWAYS_ALLOWED_GROUPS.contains(&g.as_str()))
        {
            return Ok(Ok(()));
        }
        let key = decision_key(user, attributes);
        let spec = || SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: user.uid.clone(),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone().into_iter().collect()),
            resource_attributes: attributes.resource.clone(),
            non_resource_attributes: attributes.non_resource.clone(),
        };
        let now = Instant::now();
        let cached = {
            let mut decisions = self.decisions.lock().expect("decision cache lock");
            let cached = decisions
                .cached
                .get_until(&key, now)
                .map(|(decision, until)| (decision.clone(), until));
            // Asked again near its expiry: reviewed again in the background while the cached
            // decision still holds, so a steady caller never waits on a review. Never served
            // past its expiry: a revoked permission still ends within REVIEW_TTL.
            if let Some((_, until)) = &cached
                && *until - now < REFRESH_AHEAD
                && decisions.refreshing.insert(key)
            {
                let (client, decisions, spec) =
                    (self.client.clone(), Arc::clone(&self.decisions), spec());
                tokio::spawn(async move {
                    let reviewed = review(client, spec).await;
                    let mut decisions = decisions.lock().expect("decision cache lock");
                    decisions.refreshing.remove(&key);
                    match reviewed {
                        Ok(decision) => {
                            decisions
                                .cached
                                .put(key, decision, Instant::now() + REVIEW_TTL)
                        }
                        Err(status) => tracing::debug!(
                            message = %status.message,
                            "a SubjectAccessReview ahead of expiry failed; the cached decision expires as due"
                        ),
                    }
                });
            }
            cached
        };
        if let Some((decision, _)) = cached {
            return Ok(decision);
        }
        let decision = review(self.client.clone(), spec()).await?;
        self.decisions
            .lock()
            .expect("decision cache lock")
            .cached
            .put(key, decision.clone(), Instant::now() + REVIEW_TTL);
        Ok(decision)
    }
}

/// Cached SubjectAccessReview decisions by [`decision_key`], and the keys being reviewed again
/// ahead of their expiry.
#[derive(Debug)]
struct Decisions {
    cached: ExpiringLru<DecisionKey, Result<(), String>>,
    refreshing: HashSet<DecisionKey>,
}

/// One SubjectAccessReview: `Ok(Ok(()))` allowed, `Ok(Err(reason))` denied, `Err` when
/// kube-apiserver gave no answer.
async fn review(
    client: kube::Client,
    spec: SubjectAccessReviewSpec,
) -> Result<Result<(), String>, Status> {
    let review = SubjectAccessReview {
        spec,
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client);
    let answer =
        tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review)).await;
    let status = match answer {
        Ok(Ok(review)) => review.status.unwrap_or_default(),
        Ok(Err(err)) => {
            return Err(Status::internal(format!(
                "cannot authorize: SubjectAccessReview failed: {err}"
            )));
        }
        Err(_) => {
            return Err(Status::internal(format!(
                "cannot authorize: SubjectAccessReview did not answer within {REVIEW_TIMEOUT:?}"
            )));
        }
    };
    Ok(if status.allowed && !status.denied.unwrap_or(false) {
        Ok(())
    } else {
        Err(status.reason.unwrap_or_default())
    })
}

/// What a cached decision is found by: the SHA-256 of everything a SubjectAccessReview asks
/// (user, uid, groups, extra, attributes) in JSON, an unambiguous encoding. Computed without
/// building the review, since every authorized request looks its decision up.
type DecisionKey = [u8; 32];

fn decision_key(user: &UserInfo, attributes: &RequestAttributes) -> DecisionKey {
    #[derive(serde::Serialize)]
    struct Asked<'a> {
        user: &'a str,
        uid: &'a Option<String>,
        groups: &'a [String],
        extra: &'a BTreeMap<String, Vec<String>>,
        resource: &'a Option<ResourceAttributes>,
        non_resource: &'a Option<NonResourceAttributes>,
    }
    /// Feeds what is written into the digest.
    struct Digesting(ring::digest::Context);
    impl std::io::Write for Digesting {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.update(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let asked = Asked {
        user: &user.name,
        uid: &user.uid,
        groups: &user.groups,
        extra: &user.extra,
        resource: &attributes.resource,
        non_resource: &attributes.non_resource,
    };
    let mut digesting = Digesting(ring::digest::Context::new(&ring::digest::SHA256));
    serde_json::to_writer(&mut digesting, &asked).expect("review attributes serialize");
    let mut key = [0; 32];
    key.copy_from_slice(digesting.0.finish().as_ref());
    key
}

/// One TokenReview: the user, or why the token is not valid; `Err` without an answer.
async fn token_review(client: kube::Client, token: String) -> ReviewAnswer {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token),
            audiences: None,
        },
        ..Default::default()
    };
    let api: Api<TokenReview> = Api::all(client);
    let status = tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
        .await
        .map_err(|_| format!("TokenReview did not answer within {REVIEW_TIMEOUT:?}"))?
        .map_err(|err| format!("TokenReview failed: {err}"))?
        .status
        .unwrap_or_default();
    Ok(match (status.authenticated, status.user) {
        (Some(true), Some(user)) => Ok(UserInfo {
            name: user.username.unwrap_or_default(),
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default().into_iter().collect(),
        }),
        _ => Err(format!(
            "the bearer token is not valid{}",
            status.error.map(|e| format!(": {e}")).unwrap_or_default()
        )),
    })
}

fn user_phrase(user: &UserInfo) -> String {
    format!("User \"{}\" is not allowed", user.name)
}

async fn load_config(client: &kube::Client) -> Result<AuthenticationConfig, AuthError> {
    let (namespace, name) = AUTHENTICATION_CONFIG_MAP;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let map = api
        .get(name)
        .await
        .map_err(|source| AuthError::ReadConfigMap { source })?;
    AuthenticationConfig::from_data(&map.data.unwrap_or_default())
}

/// The identity a verified front proxy passes in its headers.
fn front_proxy_user(
    config: &AuthenticationConfig,
    subject: &Subject,
    headers: &HeaderMap,
) -> Result<UserInfo, Status> {
    if !config.allowed_names.is_empty() && !config.allowed_names.contains(&subject.common_name) {
        return Err(Status::unauthorized(format!(
            "the front-proxy certificate's common name {:?} is not one of requestheader-allowed-names {:?}",
            subject.common_name, config.allowed_names
        )));
    }
    let first = |names: &[String]| {
        names.iter().find_map(|name| {
            headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| !v.is_empty())
                .map(str::to_owned)
        })
    };
    let Some(name) = first(&config.username_headers) else {
        return Err(Status::unauthorized(format!(
            "the front proxy sent no user in {:?}",
            config.username_headers
        )));
    };
    let groups = config
        .group_headers
        .iter()
        .flat_map(|h| headers.get_all(h.as_str()).iter())
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (header, value) in headers {
        let header = header.as_str();
        // Header names are lowercase; the prefixes are compared without case.
        let key = config.extra_headers_prefixes.iter().find_map(|prefix| {
            header
                .get(..prefix.len())
                .filter(|start| start.eq_ignore_ascii_case(prefix))
                .map(|_| &header[prefix.len()..])
        });
        if let (Some(key), Ok(value)) = (key, value.to_str()) {
            // Extra keys are percent-encoded by the proxy (they may hold '/' and ':').
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .to_lowercase();
            extra.entry(key).or_default().push(value.to_owned());
        }
    }
    Ok(UserInfo {
        name,
        uid: first(&config.uid_headers),
        groups,
        extra,
    })
}

/// A client certificate's user: CN is the name, O the groups (kube-apiserver's rule).
fn certificate_user(subject: &Subject) -> Result<UserInfo, Status> {
    if subject.common_name.is_empty() {
        return Err(Status::unauthorized(
            "the client certificate has no common name",
        ));
    }
    Ok(UserInfo {
        name: subject.common_name.clone(),
        uid: None,
        groups: subject.organizations.clone(),
        extra: BTreeMap::new(),
    })
}

#[derive(Debug, Clone)]
struct Subject {
    common_name: String,
    organizations: Vec<String>,
}

impl Subject {
    fn of(cert: &CertificateDer<'_>) -> Result<Self, Status> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|err| Status::unauthorized(format!("unreadable client certificate: {err}")))?;
        let subject = parsed.subject();
        let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            attr.as_str().map(str::to_owned).unwrap_or_default()
        };
        Ok(Self {
            common_name: subject
                .iter_common_name()
                .next()
                .map(text)
                .unwrap_or_default(),
            organizations: subject.iter_organization().map(text).collect(),
        })
    }
}

/// `Authorization: Bearer <token>`, if present; any other scheme is an error, not ignored.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, Status> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthorized("the Authorization header is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(Status::unauthorized(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// What a request asks to do, in RBAC's terms (kube-apiserver's RequestInfo rules).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAttributes {
    pub resource: Option<ResourceAttributes>,
    pub non_resource: Option<NonResourceAttributes>,
}

impl RequestAttributes {
    /// `/apis/<group>/<version>/[namespaces/<ns>/]<resource>[/<name>[/<subresource>]]` is a
    /// resource request (`list` without a name, `get` with one); everything else
    /// (discovery, openapi) is a non-resource URL.
    pub fn from_request(method: &Method, path: &str) -> Self {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let resource_request = parts.len() >= 4 && parts[0] == "apis";
        if !resource_request {
            return Self {
                resource: None,
                non_resource: Some(NonResourceAttributes {
                    path: Some(path.to_owned()),
                    verb: Some(http_verb(method).to_owned()),
                }),
            };
        }
        let (group, version) = (parts[1], parts[2]);
        let mut rest = &parts[3..];
        let mut namespace = None;
        if rest.len() >= 3 && rest[0] == "namespaces" {
            namespace = Some(rest[1].to_owned());
            rest = &rest[2..];
        }
        let name = rest.get(1).map(|s| (*s).to_owned());
        let subresource = (rest.len() > 2).then(|| rest[2..].join("/"));
        let verb = match (method.as_str(), &name) {
            ("GET" | "HEAD", None) => "list",
            ("GET" | "HEAD", Some(_)) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", None) => "deletecollection",
            ("DELETE", Some(_)) => "delete",
            _ => http_verb(method),
        };
        Self {
            resource: Some(ResourceAttributes {
                group: Some(group.to_owned()),
                version: Some(version.to_owned()),
                namespace,
                resource: rest.first().map(|s| (*s).to_owned()),
                name,
                subresource,
                verb: Some(verb.to_owned()),
                ..Default::default()
            }),
            non_resource: None,
        }
    }

    /// The request in the words of kube-apiserver's 403 messages.
    fn describe(&self) -> String {
        if let Some(r) = &self.resource {
            let mut text = format!(
                "forbidden: cannot {} resource {:?}",
                r.verb.as_deref().unwrap_or(""),
                r.resource.as_deref().unwrap_or("")
            );
            if let Some(sub) = &r.subresource {
                text.push_str(&format!(" (subresource {sub:?})"));
            }
            text.push_str(&format!(
                " in API group {:?}",
                r.group.as_deref().unwrap_or("")
            ));
            if let Some(ns) = &r.namespace {
                text.push_str(&format!(" in the namespace {ns:?}"));
            }
            text
        } else if let Some(n) = &self.non_resource {
            format!(
                "forbidden: cannot {} path {:?}",
                n.verb.as_deref().unwrap_or(""),
                n.path.as_deref().unwrap_or("")
            )
        } else {
            "forbidden".into()
        }
    }
}

fn http_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::OPTIONS => "options",
        _ => "unknown",
    }
}

/// The middleware: authenticate, authorize, then run the handler; 401/403 Status otherwise.
pub async fn require_authorization(
    State(auth): State<Arc<Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    let certs = request.extensions().get::<ClientCertificates>();
    match auth
        .admit(
            certs,
            request.method(),
            request.uri().path(),
            request.headers(),
        )
        .await
    {
        Ok(()) => next.run(request).await,
        Err(status) => status.into_response(),
    }
}

impl Authenticator {
    /// What [`require_authorization`] checks, for callers outside the Router (the value
    /// route): health paths pass; anyone else is authenticated and authorized, and a refusal
    /// is logged and returned as its Status.
    pub async fn admit(
        &self,
        certs: Option<&ClientCertificates>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), Status> {
        if ALWAYS_ALLOWED_PATHS.contains(&path) {
            return Ok(());
        }
        let user = self
            .authenticate(certs, headers)
            .await
            .inspect_err(|status| {
                tracing::info!(%path, message = %status.message, "unauthenticated request refused");
            })?;
        self.authorize(&user, method, path).await.inspect_err(|status| {
            tracing::info!(%path, user = %user.name, code = status.code.as_u16(), message = %status.message, "request refused");
        })?;
        tracing::trace!(%path, user = %user.name, "authorized");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_metric_reads_are_lists_of_the_metric_resource() {
        let a = RequestAttributes::from_request(
            &Method::GET,
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/s0-lag",
        );
        let r = a.resource.unwrap();
        assert_eq!(r.verb.as_deref(), Some("list"));
        assert_eq!(r.group.as_deref(), Some("external.metrics.k8s.io"));
        assert_eq!(r.version.as_deref(), Some("v1beta1"));
        assert_eq!(r.namespace.as_deref(), Some("shop"));
        assert_eq!(r.resource.as_deref(), Some("s0-lag"));
        assert_eq!(r.name, None);
    }

    #[test]
    fn object_metrics_are_gets_of_a_subresource() {
        let a = RequestAttributes::from_request(
            &Method::GET,
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/deployments.apps/orders/s0-lag",
        );
        let r = a.resource.unwrap();
        assert_eq!(r.verb.as_deref(), Some("get"));
        assert_eq!(r.resource.as_deref(), Some("deployments.apps"));
        assert_eq!(r.name.as_deref(), Some("orders"));
        assert_eq!(r.subresource.as_deref(), Some("s0-lag"));
    }

    #[test]
    fn discovery_and_openapi_are_non_resource_urls() {
        for path in [
            "/apis",
            "/apis/external.metrics.k8s.io",
            "/apis/external.metrics.k8s.io/v1beta1",
            "/openapi/v2",
        ] {
            let a = RequestAttributes::from_request(&Method::GET, path);
            assert!(a.resource.is_none(), "{path}");
            let n = a.non_resource.unwrap();
            assert_eq!(n.path.as_deref(), Some(path));
            assert_eq!(n.verb.as_deref(), Some("get"));
        }
    }

    #[test]
    fn config_map_lists_are_json() {
        let data = BTreeMap::from([
            (
                "requestheader-allowed-names".to_owned(),
                r#"["front-proxy-client"]"#.to_owned(),
            ),
            (
                "requestheader-username-headers".to_owned(),
                r#"["X-Remote-User"]"#.to_owned(),
            ),
            (
                "requestheader-group-headers".to_owned(),
                r#"["X-Remote-Group"]"#.to_owned(),
            ),
            (
                "requestheader-extra-headers-prefix".to_owned(),
                r#"["X-Remote-Extra-"]"#.to_owned(),
            ),
        ]);
        let config = AuthenticationConfig::from_data(&data).unwrap();
        assert_eq!(config.allowed_names, ["front-proxy-client"]);
        assert_eq!(config.username_headers, ["X-Remote-User"]);
        assert!(config.requestheader_ca.is_none());
        let bad = BTreeMap::from([(
            "requestheader-allowed-names".to_owned(),
            "front-proxy-client".to_owned(),
        )]);
        let err = AuthenticationConfig::from_data(&bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("requestheader-allowed-names: not a JSON list"),
            "{err}"
        );
    }

    #[test]
    fn decisions_are_keyed_by_everything_a_review_asks() {
        let user = |name: &str, groups: &[&str]| UserInfo {
            name: name.into(),
            uid: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            extra: BTreeMap::new(),
        };
        let path = |p: &str| RequestAttributes::from_request(&Method::GET, p);
        let values = "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/s0-lag";
        let hpa = user("hpa", &["system:authenticated"]);
        let key = decision_key(&hpa, &path(values));
        assert_eq!(key, decision_key(&hpa, &path(values)), "stable");
        let mut with_extra = hpa.clone();
        with_extra.extra.insert("scopes".into(), vec!["x".into()]);
        let mut with_uid = hpa.clone();
        with_uid.uid = Some("1".into());
        for (what, other) in [
            (
                "another user",
                decision_key(&user("hpb", &["system:authenticated"]), &path(values)),
            ),
            (
                "another group",
                decision_key(&user("hpa", &["system:masters"]), &path(values)),
            ),
            // Names that run together the same way must not collide.
            (
                "regrouped",
                decision_key(&user("hpa", &["system:", "authenticated"]), &path(values)),
            ),
            ("an extra", decision_key(&with_extra, &path(values))),
            ("a uid", decision_key(&with_uid, &path(values))),
            (
                "another namespace",
                decision_key(&hpa, &path(&values.replace("shop", "bank"))),
            ),
            (
                "another metric",
                decision_key(&hpa, &path(&values.replace("s0-lag", "s1-lag"))),
            ),
            ("a non-resource path", decision_key(&hpa, &path("/apis"))),
        ] {
            assert_ne!(key, other, "{what}");
        }
    }

    fn proxy_config() -> AuthenticationConfig {
        AuthenticationConfig {
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_headers_prefixes: vec!["X-Remote-Extra-".into()],
            ..Default::default()
        }
    }

    fn subject(cert: &CertificateDer<'_>) -> Subject {
        Subject::of(cert).unwrap()
    }

    fn cert(cn: &str, org: Option<&str>) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if let Some(org) = org {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, org);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn front_proxy_headers_become_the_identity() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-remote-user",
            "system:serviceaccount:kube-system:hpa".parse().unwrap(),
        );
        headers.append("x-remote-group", "system:serviceaccounts".parse().unwrap());
        headers.append("x-remote-group", "system:authenticated".parse().unwrap());
        headers.insert("x-remote-extra-scopes%2fone", "a".parse().unwrap());
        let user = front_proxy_user(
            &proxy_config(),
            &subject(&cert("front-proxy-client", None)),
            &headers,
        )
        .unwrap();
        assert_eq!(user.name, "system:serviceaccount:kube-system:hpa");
        assert_eq!(
            user.groups,
            ["system:serviceaccounts", "system:authenticated"]
        );
        assert_eq!(user.extra["scopes/one"], ["a"]);
    }

    #[test]
    fn a_front_proxy_with_another_name_or_no_user_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert("x-remote-user", "admin".parse().unwrap());
        let err = front_proxy_user(
            &proxy_config(),
            &subject(&cert("someone-else", None)),
            &headers,
        )
        .unwrap_err();
        assert_eq!(err.code, 401);
        assert!(
            err.message
                .contains("not one of requestheader-allowed-names"),
            "{}",
            err.message
        );
        let err = front_proxy_user(
            &proxy_config(),
            &subject(&cert("front-proxy-client", None)),
            &HeaderMap::new(),
        )
        .unwrap_err();
        assert!(err.message.contains("no user"), "{}", err.message);
    }

    /// A CA's PEM and a client certificate `cn` it signed.
    fn ca_and_client(cn: &str) -> (String, CertificateDer<'static>) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{cn}-ca"));
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, cn);
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap().der().clone();
        (ca_pem, leaf)
    }

    #[test]
    fn a_connections_certificate_check_is_reused_until_the_cas_change() {
        let (ca, leaf) = ca_and_client("front-proxy-client");
        let (other_ca, _) = ca_and_client("someone");
        let verifiers = |requestheader: Option<&str>, client: Option<&str>| {
            Arc::new(
                Verifiers::new(AuthenticationConfig {
                    requestheader_ca: requestheader.map(str::to_owned),
                    client_ca: client.map(str::to_owned),
                    ..proxy_config()
                })
                .unwrap(),
            )
        };
        let certs = ClientCertificates::new(vec![leaf]);
        let as_proxy = verifiers(Some(&ca), None);
        let front_proxy = |v: Option<Verdict>| matches!(v, Some(Verdict::FrontProxy(Ok(s))) if s.common_name == "front-proxy-client");
        assert!(front_proxy(certs.verdict(&as_proxy)));
        // Checked once: the same verifiers get the kept verdict.
        let kept = certs.checked.lock().unwrap().as_ref().unwrap().until;
        assert!(front_proxy(certs.verdict(&as_proxy)));
        assert_eq!(certs.checked.lock().unwrap().as_ref().unwrap().until, kept);
        // A reloaded ConfigMap (new verifiers) is checked again: the CA is now the client CA,
        // then another CA altogether.
        assert!(matches!(
            certs.verdict(&verifiers(None, Some(&ca))),
            Some(Verdict::Client(Ok(_)))
        ));
        assert!(certs.verdict(&verifiers(Some(&other_ca), None)).is_none());
        // No certificate, no verdict.
        assert!(ClientCertificates::default().verdict(&as_proxy).is_none());
    }

    #[test]
    fn a_client_certificate_names_user_and_groups() {
        let user = certificate_user(&subject(&cert("jane", Some("ops")))).unwrap();
        assert_eq!(user.name, "jane");
        assert_eq!(user.groups, ["ops"]);
    }

    #[test]
    fn only_bearer_authorization_is_accepted() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers).unwrap(), None);
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&headers).unwrap(), Some("abc"));
        headers.insert("authorization", "Basic YTpi".parse().unwrap());
        assert_eq!(bearer_token(&headers).unwrap_err().code, 401);
    }
}
