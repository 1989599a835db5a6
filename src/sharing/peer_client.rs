//! The client side of the peer protocol: one follower task per live peer that long-polls its
//! readings and copies into the cache the states of the triggers that peer owns, and the
//! forwarding of cold misses to their owner.
//!
//! Peers are reached over TLS with the install's serving certificate in both directions: the
//! client presents it as its client certificate, and accepts a server only if it presents the
//! same one (pinned; the peer is reached by its pod IP, which the certificate does not name).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::peer_api::COALESCE;
use super::wire::{AskList, AskedTrigger, ReadingsPage, check_page, fingerprint_text};
use crate::api::serving_cert::ServingCertificate;
use crate::cache::MetricCache;
use crate::metrics::SharingMetrics;
use crate::poller::shard::{ForwardedAsk, Member, Owners, Placement};

/// How long a readings request asks the peer to wait for a change.
const LONG_POLL: Duration = Duration::from_secs(10);
/// A peer request (a long poll included) fails after this long: a hung peer is noticed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A failed follow is retried after this long.
const RETRY: Duration = Duration::from_secs(1);
/// The largest readings page taken, in bytes.
const MAX_PAGE_BYTES: usize = 64 << 20;

/// Errors of setting up the peer client.
#[derive(Debug, thiserror::Error)]
pub enum PeerClientError {
    #[error("invalid TLS setup for peers: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot build the peer HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The HTTPS client replicas call each other with; see the module doc.
pub fn peer_http_client(
    serving: Arc<ServingCertificate>,
) -> Result<reqwest::Client, PeerClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedToServing {
            serving: Arc::clone(&serving),
            provider,
        }))
        .with_client_cert_resolver(Arc::new(ServingAsClient(serving)));
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()?)
}

/// Accepts a server presenting exactly this install's serving certificate.
#[derive(Debug)]
struct PinnedToServing {
    serving: Arc<ServingCertificate>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedToServing {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.serving.current().cert.first() == Some(end_entity) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the peer does not present this install's serving certificate".into(),
            ))
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

/// Presents the serving certificate (as reloaded) as the client certificate.
#[derive(Debug)]
struct ServingAsClient(Arc<ServingCertificate>);

impl rustls::client::ResolvesClientCert for ServingAsClient {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What the followers share.
#[derive(Clone)]
pub struct Followers {
    pub client: reqwest::Client,
    pub cache: Arc<MetricCache>,
    pub placement: watch::Receiver<Arc<Placement>>,
    pub metrics: SharingMetrics,
}

impl Followers {
    /// Follows every live peer of `owners` (started and stopped as the set changes) and sends
    /// each of `asks` to its owner, until the task is dropped.
    pub async fn run(
        self,
        mut owners: watch::Receiver<Arc<Owners>>,
        mut asks: mpsc::UnboundedReceiver<ForwardedAsk>,
    ) {
        let mut following: HashMap<Member, JoinHandle<()>> = HashMap::new();
        loop {
            {
                let current = Arc::clone(&owners.borrow_and_update());
                self.metrics
                    .members
                    .set(i64::try_from(current.members().len()).unwrap_or(i64::MAX));
                let peers: Vec<&Member> = current
                    .members()
                    .iter()
                    .filter(|m| m.identity != current.me().identity)
                    .collect();
                following.retain(|member, task| {
                    let keep = peers.contains(&member) && !task.is_finished();
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for peer in peers {
                    if !following.contains_key(peer) {
                        tracing::info!(peer = %peer.identity, address = %peer.address, "following a peer's readings");
                        let task = tokio::spawn(self.clone().follow(peer.clone()));
                        following.insert(peer.clone(), task);
                    }
                }
            }
            tokio::select! {
                changed = owners.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(ask) = asks.recv() => {
                    tokio::spawn(self.clone().forward(ask));
                }
            }
        }
        for task in following.into_values() {
            task.abort();
        }
    }

    /// Long-polls `peer`'s readings and copies in those of the triggers it owns.
    async fn follow(self, peer: Member) {
        let (mut epoch, mut since) = (0u64, 0u64);
        let mut failing = false;
        loop {
            match self.fetch(&peer, epoch, since).await {
                Ok(page) => {
                    if failing {
                        tracing::info!(peer = %peer.identity, "peer readings reachable again");
                        failing = false;
                    }
                    if page.epoch != epoch {
                        tracing::debug!(peer = %peer.identity, "peer epoch changed: reading all its states");
                    }
                    (epoch, since) = (page.epoch, page.change);
                    self.apply(&peer, page);
                }
                Err(err) => {
                    self.metrics.peer_errors.inc();
                    if !failing {
                        tracing::warn!(peer = %peer.identity, address = %peer.address, error = %err, "cannot read a peer's readings; retrying every second (its triggers turn stale here if this lasts)");
                        failing = true;
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    async fn fetch(&self, peer: &Member, epoch: u64, since: u64) -> Result<ReadingsPage, String> {
        let url = format!(
            "https://{}/peer/v1/readings?epoch={epoch}&since={since}&waitMs={}",
            peer.address,
            LONG_POLL.as_millis()
        );
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{e:#}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(format!(
                "{status}: {}",
                body.chars().take(300).collect::<String>()
            ));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_PAGE_BYTES as u64)
        {
            return Err(format!("a page over {MAX_PAGE_BYTES} bytes"));
        }
        let bytes = response.bytes().await.map_err(|e| format!("{e:#}"))?;
        if bytes.len() > MAX_PAGE_BYTES {
            return Err(format!("a page over {MAX_PAGE_BYTES} bytes"));
        }
        let page: ReadingsPage =
            serde_json::from_slice(&bytes).map_err(|e| format!("unreadable page: {e}"))?;
        check_page(&page).map_err(|e| e.to_string())?;
        Ok(page)
    }

    /// Copies the states of `page` that `peer` owns by this replica's live set and that were
    /// read with the spec registered here.
    fn apply(&self, peer: &Member, page: ReadingsPage) {
        let placement = Arc::clone(&self.placement.borrow());
        let (mut taken, mut refused) = (0u64, 0u64);
        for state in page.states {
            let id = state.id();
            let Some(placed) = placement.triggers.get(&id) else {
                tracing::debug!(peer = %peer.identity, trigger = %id, "a peer's state for a trigger not placed here");
                refused += 1;
                continue;
            };
            if placed.owner != peer.identity || fingerprint_text(placed.fingerprint) != state.spec {
                tracing::debug!(peer = %peer.identity, trigger = %id, owner = %placed.owner, spec = %state.spec, here = %fingerprint_text(placed.fingerprint), "a peer's state refused: another owner or another spec here");
                refused += 1;
                continue;
            }
            match state.into_state() {
                Ok(state) => {
                    if self.cache.replicate(id, placed.version, state) {
                        taken += 1;
                    } else {
                        refused += 1;
                    }
                }
                Err(err) => {
                    tracing::warn!(peer = %peer.identity, trigger = %id, error = %err, "refused a state from a peer");
                    refused += 1;
                }
            }
        }
        self.metrics.states_received.inc_by(taken);
        self.metrics.states_refused.inc_by(refused);
        tracing::trace!(peer = %peer.identity, taken, refused, "peer readings applied");
    }

    /// Asks the owner of `ask`'s triggers to poll them now.
    async fn forward(self, ask: ForwardedAsk) {
        let body = AskList {
            triggers: ask
                .triggers
                .iter()
                .map(|(id, fingerprint)| AskedTrigger {
                    namespace: id.namespace.clone(),
                    scaled_object: id.scaled_object.clone(),
                    index: id.index,
                    spec: fingerprint_text(*fingerprint),
                })
                .collect(),
        };
        let url = format!("https://{}/peer/v1/asks", ask.owner.address);
        let sent = self
            .client
            .post(&url)
            .timeout(COALESCE * 40)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                self.metrics
                    .asks_forwarded
                    .inc_by(ask.triggers.len() as u64);
            }
            Ok(response) => {
                self.metrics.peer_errors.inc();
                tracing::warn!(peer = %ask.owner.identity, status = %response.status(), "a peer refused a forwarded cold miss");
            }
            Err(err) => {
                self.metrics.peer_errors.inc();
                tracing::warn!(peer = %ask.owner.identity, error = %format!("{err:#}"), "cannot forward a cold miss to its owner");
            }
        }
    }
}
