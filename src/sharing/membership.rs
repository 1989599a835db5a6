//! Membership on Kubernetes' own coordination: each replica holds a `coordination.k8s.io/v1`
//! Lease of its own, labelled with the group it belongs to and annotated with the address its
//! peers reach it at, renewed every third of its duration. The live set is read back from the
//! API server every [`REFRESH`]: every Lease of the group that changed within its duration.
//!
//! Expiry is judged as the leader election judges it: by this replica's own clock, from when
//! it last saw the Lease change (its resourceVersion), so clock skew between nodes does not
//! matter. A Lease seen for the first time is dated by its `renewTime`, so a replica starting
//! next to a dead one's Lease does not count it live for a whole duration.
//!
//! When the API server cannot be read, the live set stays as last read: a replica is never
//! dropped because the API server restarts. A replica leaving on purpose deletes its Lease,
//! so its peers take its groups over at their next read instead of after the Lease expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::poller::shard::{Member, Owners};

/// The label naming the group a member Lease belongs to.
pub const GROUP_LABEL: &str = "spillway.dev/member-of";
/// The annotation holding the `host:port` peers reach the member at.
pub const ADDRESS_ANNOTATION: &str = "spillway.dev/peer-address";
/// How often the live set is read from the API server.
pub const REFRESH: Duration = Duration::from_secs(1);
/// The field manager of the member Lease's server-side apply.
const FIELD_MANAGER: &str = "spillway-membership";
/// A single Lease request waits at most this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Who this replica is and how long its Lease holds.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub namespace: String,
    /// The group's name: the replicas of one install (the controller's Lease name).
    pub group: String,
    pub me: Member,
    /// A Lease not renewed for this long is dead to its peers.
    pub lease_duration: Duration,
}

/// Errors of one Lease request.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("member Lease request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("member Lease request did not finish within {0:?}")]
    Timeout(Duration),
}

/// When a Lease was last seen to change.
#[derive(Debug, Clone)]
struct Observed {
    resource_version: String,
    changed_at: Instant,
}

/// This replica's Lease and its view of the others'; see the module doc.
pub struct Membership {
    api: Api<Lease>,
    config: MembershipConfig,
    lease_name: String,
    observed: HashMap<String, Observed>,
    owners: watch::Sender<Arc<Owners>>,
    renewed_at: Option<Instant>,
}

impl Membership {
    /// A member of `config.group`, publishing the live set on the returned channel (this
    /// replica alone, owning everything, until the set is first read).
    pub fn new(
        client: kube::Client,
        config: MembershipConfig,
    ) -> (Self, watch::Receiver<Arc<Owners>>) {
        let (owners, receiver) = watch::channel(Arc::new(Owners::alone(config.me.clone())));
        let membership = Self {
            api: Api::namespaced(client, &config.namespace),
            lease_name: member_lease_name(&config.group, &config.me.identity),
            config,
            observed: HashMap::new(),
            owners,
            renewed_at: None,
        };
        (membership, receiver)
    }

    /// The name of this replica's Lease.
    pub fn lease_name(&self) -> &str {
        &self.lease_name
    }

    /// Writes this replica's Lease and reads the live set once, so the poller starts with the
    /// groups it owns rather than all of them; a failure leaves it owning all until the next
    /// read succeeds.
    pub async fn join(&mut self) {
        self.step(Instant::now()).await;
    }

    /// Renews and reads every [`REFRESH`] until `stop` completes, then deletes this replica's
    /// Lease (its peers take its groups over at their next read).
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let mut ticks = tokio::time::interval(REFRESH);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = ticks.tick() => self.step(Instant::now()).await,
            }
        }
        self.leave().await;
    }

    /// One renewal (when due) and one read of the live set.
    async fn step(&mut self, now: Instant) {
        let renew_every = (self.config.lease_duration / 3).max(Duration::from_secs(1));
        if self
            .renewed_at
            .is_none_or(|at| now.saturating_duration_since(at) >= renew_every)
        {
            match self.renew().await {
                Ok(()) => self.renewed_at = Some(now),
                Err(err) => {
                    tracing::warn!(lease = %self.lease_name, error = %err, "cannot renew the member Lease; peers take this replica's groups over once it expires")
                }
            }
        }
        match self.read_live(now).await {
            Ok(members) => {
                let owners = Arc::new(Owners::known(self.config.me.clone(), members));
                self.owners.send_if_modified(|current| {
                    if **current == *owners {
                        return false;
                    }
                    tracing::info!(
                        members = ?owners.members().iter().map(|m| &m.identity).collect::<Vec<_>>(),
                        "live replicas changed"
                    );
                    *current = owners;
                    true
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the member Leases; keeping the live set as last read")
            }
        }
    }

    async fn renew(&self) -> Result<(), MembershipError> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.lease_name.clone()),
                namespace: Some(self.config.namespace.clone()),
                labels: Some([(GROUP_LABEL.to_owned(), label_value(&self.config.group))].into()),
                annotations: Some(
                    [(
                        ADDRESS_ANNOTATION.to_owned(),
                        self.config.me.address.clone(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.me.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
                ),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..LeaseSpec::default()
            }),
        };
        let mut value = serde_json::to_value(&lease).map_err(kube::Error::SerdeError)?;
        value["apiVersion"] = "coordination.k8s.io/v1".into();
        value["kind"] = "Lease".into();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        bounded(
            self.api
                .patch(&self.lease_name, &params, &Patch::Apply(value)),
        )
        .await?;
        Ok(())
    }

    /// The members whose Leases changed within their duration, as seen at `now`.
    async fn read_live(&mut self, now: Instant) -> Result<Vec<Member>, MembershipError> {
        let selector = format!("{GROUP_LABEL}={}", label_value(&self.config.group));
        let leases = bounded(self.api.list(&ListParams::default().labels(&selector))).await?;
        let wall = Timestamp::now();
        let mut live = Vec::new();
        let mut seen = HashMap::new();
        for lease in leases.items {
            let Some(name) = lease.metadata.name.clone() else {
                continue;
            };
            let spec = lease.spec.clone().unwrap_or_default();
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.lease_duration, Duration::from_secs);
            let version = lease.metadata.resource_version.clone().unwrap_or_default();
            let observed = match self.observed.get(&name) {
                Some(o) if o.resource_version == version => o.clone(),
                Some(_) => Observed {
                    resource_version: version,
                    changed_at: now,
                },
                None => Observed {
                    resource_version: version,
                    // First sight: dated by its renewTime, at most a duration (and a second) back.
                    changed_at: {
                        let age = spec
                            .renew_time
                            .as_ref()
                            .and_then(|t| wall.duration_since(t.0).try_into().ok())
                            .unwrap_or(Duration::ZERO)
                            .min(duration + Duration::from_secs(1));
                        now.checked_sub(age).unwrap_or(now)
                    },
                },
            };
            let alive = now.saturating_duration_since(observed.changed_at) < duration;
            seen.insert(name, observed);
            let address = lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ADDRESS_ANNOTATION))
                .cloned();
            if let (true, Some(identity), Some(address)) = (alive, spec.holder_identity, address) {
                live.push(Member { identity, address });
            }
        }
        self.observed = seen;
        Ok(live)
    }

    /// Deletes this replica's Lease.
    pub async fn leave(&self) {
        match bounded(self.api.delete(&self.lease_name, &DeleteParams::default())).await {
            Ok(_) => {
                tracing::info!(lease = %self.lease_name, "left the replicas sharing the polling")
            }
            Err(MembershipError::Api(kube::Error::Api(status))) if status.code == 404 => {}
            Err(err) => {
                tracing::warn!(lease = %self.lease_name, error = %err, "cannot delete the member Lease; peers take this replica's groups over once it expires")
            }
        }
    }
}

async fn bounded<T>(
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, MembershipError> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| MembershipError::Timeout(REQUEST_TIMEOUT))?
        .map_err(MembershipError::Api)
}

/// `value` as a label value: itself when it fits in 63 characters, else a prefix and a hash.
fn label_value(value: &str) -> String {
    if value.len() <= 63 {
        return value.to_owned();
    }
    format!(
        "{}-{:016x}",
        &value[..46].trim_end_matches(['-', '.']),
        hash(value)
    )
}

/// The member Lease of `identity` in `group`: `<group>-member-<identity>` made a valid name
/// (lower case, `[a-z0-9.-]`, at most 253 characters; a hash keeps long ones apart).
pub fn member_lease_name(group: &str, identity: &str) -> String {
    let raw = format!("{group}-member-{identity}");
    let clean: String = raw
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    let clean = clean.trim_matches(['-', '.']).to_owned();
    if clean == raw && clean.len() <= 253 {
        return clean;
    }
    // Changed or too long: two identities that clean to the same name stay apart.
    let prefix: String = clean.chars().take(235).collect();
    format!(
        "{}-{:016x}",
        prefix.trim_end_matches(['-', '.']),
        hash(&raw)
    )
}

fn hash(text: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lease_names_are_valid_and_distinct() {
        assert_eq!(
            member_lease_name("spillway-controller", "spillway-7d9f-abcde"),
            "spillway-controller-member-spillway-7d9f-abcde"
        );
        let a = member_lease_name("g", "Host_0001");
        let b = member_lease_name("g", "host-0001");
        assert_ne!(a, b, "cleaning must not merge two identities");
        assert!(
            a.chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '.')),
            "{a}"
        );
        let long = member_lease_name("g", &"x".repeat(400));
        assert!(long.len() <= 253, "{}", long.len());
        assert!(label_value(&"y".repeat(100)).len() <= 63);
        assert_eq!(label_value("spillway-controller"), "spillway-controller");
    }
}
