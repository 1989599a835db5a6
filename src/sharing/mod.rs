//! Replicas that share the polling instead of repeating it, on Kubernetes' own coordination.
//!
//! - [`membership`]: each replica holds a Lease of its own naming its address; the live set
//!   is read back from the API server.
//! - Ownership ([`crate::poller::shard`]): each connection group is polled by one live replica,
//!   chosen by rendezvous hashing over the live set, so a replica coming or going moves only
//!   its own groups and a broker's batched round stays in one process.
//! - Serving: every replica answers every metric from its own cache. The owner's states reach
//!   the others over the [`peer_api`] (a long poll per peer, mTLS with the install's serving
//!   certificate, [`peer_client`]); a cold miss on a trigger another replica polls is sent to
//!   that replica. The controller leader reads values from its cache the same way, so neither
//!   the aggregator nor the HPA nor the controller sees a difference.
//! - Failover: a dead replica's Lease expires and its groups start on their new owners (within
//!   the Lease duration and a [`membership::REFRESH`]; a new group polls at once). Meanwhile
//!   its triggers keep the last copies, which age and turn stale like any reading: 503 or the
//!   fallback, never 0. A replica stopping on purpose deletes its Lease first and keeps polling
//!   for [`HANDOVER`], so its groups move without a gap.

pub mod membership;
pub mod peer_api;
pub mod peer_client;
pub mod wire;

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::api::serving_cert::ServingCertificate;
use crate::cache::{MetricCache, PollRequests};
use crate::metrics::Metrics;
use crate::poller::shard::{Placement, Shard};
use membership::{Membership, MembershipConfig};
pub use peer_client::PeerClientError;

/// How long a replica that left keeps polling: long enough for its peers to read the live set
/// (every [`membership::REFRESH`]) and start its groups.
pub const HANDOVER: Duration = Duration::from_secs(3);

/// What the rest of the process runs to share the polling.
pub struct Sharing {
    /// For the poller ([`crate::poller::Poller::run_registry_shared`]).
    pub shard: Shard,
    /// The peer routes, served beside the metrics API.
    pub router: axum::Router,
    /// Renews this replica's Lease and reads the live set; run it with the stop signal.
    pub membership: Membership,
    /// Follows the peers and forwards cold misses; run it for the process's life.
    pub followers: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl Sharing {
    /// Joins the group of `config` (writes the Lease, reads the live set once) and builds the
    /// parts; `serving` is the install's serving certificate, shared by every replica.
    pub async fn join(
        client: kube::Client,
        config: MembershipConfig,
        cache: Arc<MetricCache>,
        poll_requests: PollRequests,
        serving: Arc<ServingCertificate>,
        metrics: &Metrics,
    ) -> Result<Self, PeerClientError> {
        let http = peer_client::peer_http_client(Arc::clone(&serving))?;
        let (mut membership, owners) = Membership::new(client, config);
        membership.join().await;
        let (placement, placement_rx) = watch::channel(Arc::new(Placement::default()));
        let (forward, asks) = mpsc::unbounded_channel();
        let router = peer_api::router(peer_api::PeerState {
            cache: Arc::clone(&cache),
            placement: placement_rx.clone(),
            poll_requests,
            epoch: random_epoch(),
            serving,
        });
        let followers = peer_client::Followers {
            client: http,
            cache,
            placement: placement_rx,
            metrics: metrics.sharing().clone(),
        };
        Ok(Self {
            shard: Shard {
                owners: owners.clone(),
                placement,
                forward,
            },
            router,
            membership,
            followers: Box::pin(followers.run(owners, asks)),
        })
    }
}

fn random_epoch() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}
