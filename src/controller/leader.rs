//! Leader election on a `coordination.k8s.io/v1` Lease, with the semantics of client-go's
//! `leaderelection` (LeaseLock): of several spillway replicas only the leader reconciles and
//! scales, while every replica serves the metrics API.
//!
//! A candidate judges expiry by its own clock, from when it last saw the lease record change,
//! never by the timestamps inside it, so clock skew between nodes does not matter. Every write
//! carries the resourceVersion last read, so of two candidates racing for a lease one wins.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

/// Why leader election cannot start, or why one attempt on the lease failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election timing: {0}")]
    InvalidConfig(String),
    #[error("lease request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("lease request did not finish within {0:?}")]
    Timeout(Duration),
}

/// The timings of client-go's `LeaderElectionConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderElectionConfig {
    /// How long candidates wait, after last seeing the lease change, before taking it over.
    /// Written to the lease rounded up to whole seconds.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal; shorter than
    /// `lease_duration`, so it steps down before anyone else may take over.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire the lease and the leader renews it.
    pub retry_period: Duration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Candidates wait a retry period plus up to this fraction of it, so they do not ask in step.
const JITTER: f64 = 0.2;

impl LeaderElectionConfig {
    /// The checks client-go makes: lease > renew deadline > retry period (with jitter) > 0.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let invalid = |message: String| Err(LeaderError::InvalidConfig(message));
        if self.retry_period.is_zero() {
            return invalid("retry period must be positive".to_owned());
        }
        if self.renew_deadline >= self.lease_duration {
            return invalid(format!(
                "renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.renew_deadline <= self.retry_period.mul_f64(1.0 + JITTER) {
            return invalid(format!(
                "renew deadline ({:?}) must be longer than the retry period ({:?}) plus {}%",
                self.renew_deadline,
                self.retry_period,
                JITTER * 100.0
            ));
        }
        Ok(())
    }

    /// `leaseDurationSeconds` as written: rounded up, so others never wait less than we assume.
    fn lease_seconds(&self) -> i32 {
        let seconds =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
    }
}

/// This replica's identity in the lease: the pod name (`POD_NAME`, from the downward API), or
/// the hostname and a random suffix, so two processes on one host never share an identity.
pub fn default_identity() -> String {
    identity_from(std::env::var("POD_NAME").ok(), hostname)
}

fn identity_from(pod_name: Option<String>, hostname: impl FnOnce() -> String) -> String {
    match pod_name.filter(|name| !name.is_empty()) {
        Some(name) => name,
        None => format!("{}_{:016x}", hostname(), random_u64()),
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "spillway".to_owned())
}

/// Randomness enough for an identity suffix and jitter, without a dependency: std seeds every
/// `RandomState` from the OS.
fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn jittered(period: Duration) -> Duration {
    let fraction = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
    period + period.mul_f64(JITTER * fraction)
}

/// The lease record as this candidate last read or wrote it, and when (by the local clock) it
/// last saw it change.
#[derive(Debug, Clone)]
struct Observed {
    spec: LeaseSpec,
    changed_at: Instant,
}

/// What to do with the lease, given what was observed of it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// No lease exists: create it naming us.
    Create,
    /// It names us: renew it, keeping acquireTime and leaseTransitions.
    Renew,
    /// It is free (released) or expired: take it over, counting a transition.
    TakeOver,
    /// Another candidate holds it and it has not expired.
    Wait { holder: String },
}

/// The holder a lease names; an empty identity means released.
fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|id| !id.is_empty())
}

/// Whether `observed` has expired at `now`: its holder has not changed the record for
/// `leaseDurationSeconds` of our clock (a missing duration counts as 0, as in client-go).
fn expired(observed: &Observed, now: Instant) -> bool {
    let seconds = observed.spec.lease_duration_seconds.unwrap_or(0).max(0);
    observed.changed_at + Duration::from_secs(seconds.unsigned_abs().into()) <= now
}

fn decide(observed: Option<&Observed>, identity: &str, now: Instant) -> Decision {
    let Some(observed) = observed else {
        return Decision::Create;
    };
    match holder(&observed.spec) {
        Some(id) if id == identity => Decision::Renew,
        None => Decision::TakeOver,
        Some(_) if expired(observed, now) => Decision::TakeOver,
        Some(id) => Decision::Wait {
            holder: id.to_owned(),
        },
    }
}

/// The record to write for `decision` (not `Wait`). Fields spillway does not manage
/// (strategy, preferredHolder) are kept.
fn claimed_spec(
    current: Option<&LeaseSpec>,
    decision: &Decision,
    identity: &str,
    lease_seconds: i32,
    now: Timestamp,
) -> LeaseSpec {
    let current = current.cloned().unwrap_or_default();
    let transitions = current.lease_transitions.unwrap_or(0);
    let (acquire_time, transitions) = match decision {
        Decision::Renew => (
            current.acquire_time.clone().unwrap_or(MicroTime(now)),
            transitions,
        ),
        Decision::TakeOver => (MicroTime(now), transitions.saturating_add(1)),
        Decision::Create | Decision::Wait { .. } => (MicroTime(now), 0),
    };
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(lease_seconds),
        acquire_time: Some(acquire_time),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..current
    }
}

/// The record a leader leaves on graceful shutdown: no holder and a one-second lease, as
/// client-go's `ReleaseOnCancel` writes, so a successor takes over at its next try.
fn released_spec(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

/// The outcome of one attempt to acquire or renew.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// The lease names us, as written by this attempt.
    Holding,
    /// Another candidate holds the lease (`Some`), or won a race for it this round (`None`).
    NotHolding { holder: Option<String> },
}

/// Why the leader stopped leading.
#[derive(Debug)]
enum StepDown {
    Shutdown,
    DeadlinePassed,
    TakenBy(String),
}

/// One candidate for the leadership that a Lease records.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    /// `namespace/name`, for logs.
    lease_ref: String,
    identity: String,
    config: LeaderElectionConfig,
    leading: watch::Sender<bool>,
    /// The lease as last read or written: its resourceVersion makes the next write conditional.
    lease: Option<Lease>,
    observed: Option<Observed>,
}

impl LeaderElector {
    /// A candidate named `identity` (see [`default_identity`]) for the Lease
    /// `namespace/lease_name`; nothing is sent until [`run`](Self::run).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        lease_name: &str,
        identity: impl Into<String>,
        config: LeaderElectionConfig,
    ) -> Result<Self, LeaderError> {
        config.validate()?;
        let identity = identity.into();
        if identity.is_empty() {
            return Err(LeaderError::InvalidConfig(
                "the identity must not be empty".to_owned(),
            ));
        }
        Ok(Self {
            api: Api::namespaced(client, namespace),
            name: lease_name.to_owned(),
            lease_ref: format!("{namespace}/{lease_name}"),
            identity,
            config,
            leading: watch::channel(false).0,
            lease: None,
            observed: None,
        })
    }

    /// Whether this candidate leads now; subscribe before [`run`](Self::run) consumes it.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Whether this candidate leads now (the `spillway_leader` gauge).
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Campaigns, leads and campaigns again after losing the lease, until `shutdown`
    /// completes; then stops leading and releases the lease if it names us.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let span = tracing::info_span!("leader_election", lease = %self.lease_ref, identity = %self.identity);
        self.campaign(shutdown).instrument(span).await;
    }

    async fn campaign(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_error = None;
        loop {
            // Candidate: try every retry period until the lease names us.
            let mut renewed_at = loop {
                let started = Instant::now();
                let deadline = started + self.config.renew_deadline;
                let result = tokio::select! {
                    () = &mut shutdown => None,
                    result = self.try_acquire_or_renew(deadline) => Some(result),
                };
                match result {
                    None => return self.release().await,
                    Some(Ok(Attempt::Holding)) => break started,
                    Some(Ok(Attempt::NotHolding { .. })) => last_error = None,
                    Some(Err(err)) => {
                        // Logged once per distinct error, not every retry period.
                        let message = err.to_string();
                        if last_error.as_ref() != Some(&message) {
                            tracing::warn!(error = %message, "cannot acquire the lease; retrying");
                        }
                        last_error = Some(message);
                    }
                }
                tokio::select! {
                    () = &mut shutdown => return self.release().await,
                    () = tokio::time::sleep(jittered(self.config.retry_period)) => {}
                }
            };
            last_error = None;
            self.leading.send_replace(true);
            let transitions = self
                .observed
                .as_ref()
                .and_then(|o| o.spec.lease_transitions)
                .unwrap_or(0);
            tracing::info!(transitions, "became leader");

            // Leader: renew every retry period; without success for the renew deadline
            // (counted from the start of the last successful attempt, so before anyone else
            // can see the lease expire), step down.
            let reason = loop {
                let deadline = renewed_at + self.config.renew_deadline;
                let next = (Instant::now() + self.config.retry_period).min(deadline);
                tokio::select! {
                    () = &mut shutdown => break StepDown::Shutdown,
                    () = tokio::time::sleep_until(next) => {}
                }
                if Instant::now() >= deadline {
                    break StepDown::DeadlinePassed;
                }
                let started = Instant::now();
                let result = tokio::select! {
                    () = &mut shutdown => None,
                    result = self.try_acquire_or_renew(deadline) => Some(result),
                };
                match result {
                    None => break StepDown::Shutdown,
                    Some(Ok(Attempt::Holding)) => renewed_at = started,
                    Some(Ok(Attempt::NotHolding {
                        holder: Some(holder),
                    })) => break StepDown::TakenBy(holder),
                    Some(Ok(Attempt::NotHolding { holder: None })) => {
                        tracing::debug!("lost a write race on the lease; retrying");
                    }
                    Some(Err(LeaderError::Timeout(_))) => break StepDown::DeadlinePassed,
                    Some(Err(err)) => tracing::warn!(error = %err, "cannot renew the lease"),
                }
            };
            // Stop leading first: a released lease may be taken at once.
            self.leading.send_replace(false);
            match reason {
                StepDown::Shutdown => {
                    tracing::info!(reason = "shutting down", "lost leadership");
                    return self.release().await;
                }
                StepDown::DeadlinePassed => tracing::info!(
                    reason = "renew deadline passed",
                    renew_deadline = ?self.config.renew_deadline,
                    "lost leadership"
                ),
                StepDown::TakenBy(holder) => {
                    tracing::info!(reason = "lease taken", %holder, "lost leadership");
                }
            }
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`, abandoned at `deadline`.
    async fn try_acquire_or_renew(&mut self, deadline: Instant) -> Result<Attempt, LeaderError> {
        let budget = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout_at(deadline, self.acquire_or_renew())
            .await
            .map_err(|_| LeaderError::Timeout(budget))?
    }

    async fn acquire_or_renew(&mut self) -> Result<Attempt, LeaderError> {
        // Fast path: the leader writes over the version it last wrote, without reading first.
        if self.is_leader()
            && let Some(lease) = self.lease.clone()
        {
            let spec = self.claim(lease.spec.as_ref(), &Decision::Renew);
            match self.replace(lease, spec).await {
                Ok(()) => return Ok(Attempt::Holding),
                Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {
                    tracing::debug!(reason = %status.reason, "lease changed since our last write; reading it");
                }
                Err(err) => return Err(err.into()),
            }
        }

        let current = self.api.get_opt(&self.name).await?;
        self.observe(current, Instant::now());
        let decision = decide(self.observed.as_ref(), &self.identity, Instant::now());
        let written = match (&decision, self.lease.clone()) {
            (Decision::Wait { holder }, _) => {
                return Ok(Attempt::NotHolding {
                    holder: Some(holder.clone()),
                });
            }
            (Decision::Create, _) | (_, None) => {
                let spec = self.claim(None, &Decision::Create);
                self.create(spec).await
            }
            (_, Some(lease)) => {
                let spec = self.claim(lease.spec.as_ref(), &decision);
                self.replace(lease, spec).await
            }
        };
        match written {
            Ok(()) => Ok(Attempt::Holding),
            // Someone else wrote first (409 on replace, AlreadyExists on create).
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                tracing::debug!(reason = %status.reason, "another candidate won this round");
                Ok(Attempt::NotHolding { holder: None })
            }
            Err(err) => Err(err.into()),
        }
    }

    fn claim(&self, current: Option<&LeaseSpec>, decision: &Decision) -> LeaseSpec {
        claimed_spec(
            current,
            decision,
            &self.identity,
            self.config.lease_seconds(),
            Timestamp::now(),
        )
    }

    async fn create(&mut self, spec: LeaseSpec) -> Result<(), kube::Error> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        let stored = self.api.create(&PostParams::default(), &lease).await?;
        self.observe(Some(stored), Instant::now());
        Ok(())
    }

    /// Writes `spec` over `lease`, conditional on the resourceVersion `lease` carries.
    async fn replace(&mut self, mut lease: Lease, spec: LeaseSpec) -> Result<(), kube::Error> {
        lease.spec = Some(spec);
        let stored = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        self.observe(Some(stored), Instant::now());
        Ok(())
    }

    /// Records the lease as read or written at `now`; the expiry clock restarts only when the
    /// record changed.
    fn observe(&mut self, lease: Option<Lease>, now: Instant) {
        let Some(lease) = lease else {
            self.lease = None;
            self.observed = None;
            return;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let previous = self.observed.take();
        let changed = previous.as_ref().is_none_or(|o| o.spec != spec);
        if let Some(id) = holder(&spec)
            && id != self.identity
            && previous.as_ref().and_then(|o| holder(&o.spec)) != Some(id)
        {
            tracing::info!(holder = id, "new leader observed");
        }
        self.observed = match previous {
            Some(previous) if !changed => Some(previous),
            _ => Some(Observed {
                spec,
                changed_at: now,
            }),
        };
        self.lease = Some(lease);
    }

    /// Gives the lease up if it names us, so a successor need not wait for it to expire.
    async fn release(&mut self) {
        let names_us = self
            .observed
            .as_ref()
            .is_some_and(|o| holder(&o.spec) == Some(self.identity.as_str()));
        if !names_us {
            return;
        }
        let timeout = self.config.renew_deadline;
        match tokio::time::timeout(timeout, self.write_release()).await {
            Ok(Ok(true)) => tracing::info!("released the lease"),
            Ok(Ok(false)) => tracing::info!("the lease no longer names us; nothing to release"),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot release the lease; successors wait for it to expire");
            }
            Err(_) => tracing::warn!(
                ?timeout,
                "releasing the lease timed out; successors wait for it to expire"
            ),
        }
    }

    /// Writes the released record; re-reads once if our version is stale (a renewal cut short
    /// by shutdown may have landed), and never overwrites another holder.
    async fn write_release(&mut self) -> Result<bool, kube::Error> {
        for _ in 0..2 {
            let Some(lease) = self.lease.clone() else {
                return Ok(false);
            };
            let current = lease.spec.clone().unwrap_or_default();
            if holder(&current) != Some(self.identity.as_str()) {
                return Ok(false);
            }
            match self
                .replace(lease, released_spec(&current, Timestamp::now()))
                .await
            {
                Ok(()) => return Ok(true),
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    let fresh = self.api.get_opt(&self.name).await?;
                    self.observe(fresh, Instant::now());
                }
                Err(err) => return Err(err),
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: &str = "spillway-0";
    const THEM: &str = "spillway-1";

    fn record(holder: Option<&str>, lease_seconds: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: lease_seconds,
            lease_transitions: Some(4),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decide_by_holder_and_local_expiry() {
        let seen = Instant::now();
        let wait = Decision::Wait {
            holder: THEM.to_owned(),
        };
        // (holder, leaseDurationSeconds, seconds since the record last changed, decision)
        let cases = [
            (Some(US), Some(15), 0, Decision::Renew),
            (Some(US), Some(15), 60, Decision::Renew),
            (Some(THEM), Some(15), 0, wait.clone()),
            (Some(THEM), Some(15), 14, wait.clone()),
            (Some(THEM), Some(15), 15, Decision::TakeOver),
            (Some(THEM), Some(15), 16, Decision::TakeOver),
            (Some(THEM), None, 0, Decision::TakeOver),
            (Some(""), Some(15), 0, Decision::TakeOver),
            (None, Some(15), 0, Decision::TakeOver),
            (Some(""), Some(1), 0, Decision::TakeOver),
        ];
        for (holder, seconds, elapsed, expected) in cases {
            let observed = Observed {
                spec: record(holder, seconds),
                changed_at: seen,
            };
            let now = seen + Duration::from_secs(elapsed);
            assert_eq!(
                decide(Some(&observed), US, now),
                expected,
                "holder {holder:?}, lease {seconds:?} s, {elapsed} s since it changed"
            );
        }
        assert_eq!(decide(None, US, seen), Decision::Create);
    }

    #[test]
    fn expiry_ignores_the_timestamps_in_the_record() {
        // A renewTime decades in the past (a skewed clock) does not expire a lease we just saw
        // change; only our own clock since then counts.
        let observed = Observed {
            spec: record(Some(THEM), Some(15)),
            changed_at: Instant::now(),
        };
        assert!(!expired(&observed, observed.changed_at));
        assert!(expired(
            &observed,
            observed.changed_at + Duration::from_secs(15)
        ));
    }

    #[test]
    fn claims_count_transitions_and_keep_acquire_time() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let current = LeaseSpec {
            strategy: Some("OldestEmulationVersion".to_owned()),
            ..record(Some(THEM), Some(15))
        };

        let renewed = claimed_spec(Some(&current), &Decision::Renew, US, 15, now);
        assert_eq!(renewed.holder_identity.as_deref(), Some(US));
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, current.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(renewed.strategy, current.strategy);

        let taken = claimed_spec(Some(&current), &Decision::TakeOver, US, 3, now);
        assert_eq!(taken.holder_identity.as_deref(), Some(US));
        assert_eq!(taken.lease_transitions, Some(5));
        assert_eq!(taken.lease_duration_seconds, Some(3));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.renew_time, Some(MicroTime(now)));

        let created = claimed_spec(None, &Decision::Create, US, 15, now);
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.acquire_time, Some(MicroTime(now)));

        let released = released_spec(&renewed, now);
        assert_eq!(holder(&released), None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(4));
    }

    #[test]
    fn config_is_validated_like_client_go() {
        let seconds = Duration::from_secs;
        let config = |lease, renew, retry| LeaderElectionConfig {
            lease_duration: lease,
            renew_deadline: renew,
            retry_period: retry,
        };
        assert!(LeaderElectionConfig::default().validate().is_ok());
        assert!(
            config(seconds(3), seconds(2), Duration::from_millis(500))
                .validate()
                .is_ok()
        );
        assert!(
            config(seconds(10), seconds(10), seconds(2))
                .validate()
                .is_err()
        );
        assert!(
            config(seconds(15), seconds(2), seconds(2))
                .validate()
                .is_err()
        );
        assert!(
            config(seconds(15), seconds(10), Duration::ZERO)
                .validate()
                .is_err()
        );
        assert_eq!(
            config(Duration::from_millis(2500), seconds(2), seconds(1)).lease_seconds(),
            3
        );
    }

    #[test]
    fn identity_is_the_pod_name_or_a_unique_hostname() {
        let host = || "node-a".to_owned();
        assert_eq!(
            identity_from(Some("spillway-7c9f".to_owned()), host),
            "spillway-7c9f"
        );
        let first = identity_from(None, host);
        let second = identity_from(Some(String::new()), host);
        assert!(first.starts_with("node-a_"), "{first}");
        assert_ne!(first, second);
    }
}
